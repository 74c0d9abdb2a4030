"""SAM-PT-reinit: SAM-PT with point re-initialisation, run window by window.

Behaviour (the original SAM-PT's ``_forward_w_reinit``, quirks included; frame-choice rules in
:mod:`sampt.methods.sam_pt.reinit_rules`):

* **Forward pass.** For start frames ``s`` from the earliest query frame to the end, the objects
  whose *current* query frame is ``s`` are tracked together on ``[s, min(s + tracker_horizon, T))``
  with their current query points (query frame 0 of that clip); the first ``reinit_horizon``
  frames are kept: the window ``W = [s, e)``. SAM segments ``W`` exactly like plain SAM-PT (the
  objects of the window are each other's negatives; objects of other windows are not).
  Trajectories, visibilities, logits and scores of the window's objects are (over)written on
  ``W``. If ``e < T`` each object gets a new query frame ``s + 1 + entry`` (``select_reinit_entries``
  on the mask areas of ``s+1 .. e-1``) and new query points sampled from its predicted mask on
  that frame, at input resolution, with the configured point-selection methods and the video's
  random generator. When every entry is missing the original still re-initialises (its validity
  check never fires), possibly on an empty mask: the points are then all (0, 0), which the
  border rule makes not visible. With ``reinit_stop_when_missing`` such an object is stopped
  instead: from ``e`` on its logits are empty, it has no score, its points are not visible with
  reason ``REINIT_FAILED`` (kept at their last tracked position so overlays can mark them) and it
  is never tracked again.
* **Backward pass.** The same on the time-reversed video with mirrored query frames
  (``t -> T - 1 - t``), from the *original* query points.
* **Combination.** Per object, frames before its query frame come from the backward pass,
  frames from its query frame on from the forward pass. The video score is the mean of the
  per-frame scores that exist (frames where the object was prompted; see ``video_scores``).

Differences from the original that do not change any kept output: the backward pass runs
*first* (so frames can be streamed to ``on_frame`` in order while the forward pass runs: frame
``t`` is final once the forward pass starts a window after ``t``); a backward window whose every
frame would be discarded (the one-frame window on the reversed video's last frame, for objects
queried on frame 0) is not computed; the random generator is the per-video one, so sampled
points differ from the original's global NumPy state. The video score counts only prompted
frames (as plain SAM-PT's ``video_scores``); the original's ``nanmean`` would give ``-inf`` as
soon as one frame had no visible point.

Memory, bounded for long videos: float logits at frame size exist only for the frame being
segmented or emitted. To emit the frames in order, each frame keeps, per object, SAM's final
*low-resolution* logits (``(1, 4h', 4w')`` float32, ``h' x w'`` the image-embedding grid:
``(1, 256, 256)`` for the 1024-px SAMs, i.e. **262,144 bytes per object-frame**, plus a 1-byte
flag), re-upscaled with ``SamModel.upscale_logits`` and ``resize_logits`` when the frame is
emitted: bit-identical to the logits plain SAM-PT emits (tested). Scores, trajectories and
visibilities are kept for the whole video (a few bytes per point-frame). A frame is kept from
the first window that writes it until it is emitted: at most ``reinit_horizon`` frames of the
forward pass, plus, for objects queried after frame 0, the frames before their query frame
(from the backward pass); each kept frame has a row for every object of the video. So the peak
is about ``(reinit_horizon + max query frame) * M * 256 KiB`` (e.g. 24 frames x 5 objects = 30 MiB).
Image embeddings of recent frames are cached (LRU, at most ``reinit_embedding_cache_mib`` on the
SAM device): consecutive windows overlap, so without the cache most frames would be encoded
about twice per pass.

Shapes: frames ``(T, 3, H, W) uint8`` input resolution; M objects, P points; trajectories
``(T, M, P, 2) float32`` (x, y); visibilities ``(T, M, P) bool``; emitted logits ``(M, h, w)``
float32 at the output size.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from sampt.methods.base import FrameOutput, MethodResult
from sampt.methods.sam_pt.pipeline import (Queries, SamPt, Tracks, frames_encoded_for_queries, output_scale,
                                          prompter_config, resize_logits, video_rng, video_scores)
from sampt.methods.sam_pt.query_points import sample_points
from sampt.methods.sam_pt.reinit_rules import all_missing, select_reinit_entries
from sampt.sam.model import ImageEmbedding, SamModel
from sampt.sam.prompting import SamPrompter, build_point_prompts
from sampt.video import VideoItem
from sampt.visibility import VisibilityReason

FORWARD = "forward"
BACKWARD = "backward"
_NOT_TRACKED = -1  # current query frame of a stopped object


# ---------------------------------------------------------------------------------------------
# Per-window segmentation (injectable, so the control flow can be tested with chosen masks)
# ---------------------------------------------------------------------------------------------
@dataclass
class WindowSegmentation:
    """What segmenting one window gives, for its n frames and its M_w objects.

    Attributes:
        compact_logits: ``(n, M_w, *C) float32`` (CPU) a compact form of each mask's logits that
            ``WindowSegmenter.frame_logits`` expands; only meaningful where ``kept``.
        kept: ``(n, M_w) bool`` False where the mask is empty by rule (no prompt point, or SAM's
            predicted IoU below ``sam_iou_threshold``): its logits are ``-inf`` everywhere.
        scores: ``(n, M_w) float32`` SAM's predicted IoU, ``-inf`` where no prompt.
        has_score: ``(n, M_w) bool`` whether the object was prompted.
        areas: ``(n, M_w) float32`` mask areas (logits > 0) in input pixels; 0 where not kept.
        num_decoder_calls: mask-decoder calls made; num_encoded_frames: frames run through the
            image encoder (cache misses).
    """

    compact_logits: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor
    has_score: torch.Tensor
    areas: torch.Tensor
    num_decoder_calls: int = 0
    num_encoded_frames: int = 0


class WindowSegmenter(ABC):
    """Segments the frames of one window from the window's tracks."""

    @property
    def device(self) -> torch.device:
        """Where ``frame_logits`` computes (emitted logits are built there)."""
        return torch.device("cpu")

    @abstractmethod
    def segment(self, frame_indices: Sequence[int], frames: torch.Tensor, object_indices: Sequence[int],
                tracks: Tracks, num_positive: int, rng: np.random.Generator,
                timings: dict[str, float]) -> WindowSegmentation:
        """Segment a window.

        Args:
            frame_indices: the n frames' indices in the *original* video, in pass order.
            frames: ``(n, 3, H, W) uint8`` those frames.
            object_indices: the window's M_w objects (indices into the video's objects).
            tracks: ``(n, M_w, P)`` tracks of the window (input pixels).
            num_positive: the first ``num_positive`` points of each object are positive.
            rng: the video's generator (drawn from only when other objects' negatives are capped).
            timings: seconds per stage, added to.
        """

    @abstractmethod
    def frame_logits(self, compact_logits: torch.Tensor) -> torch.Tensor:
        """``(K, *C)`` compact logits -> ``(K, H, W) float32`` logits at input resolution."""


class EmbeddingCache:
    """LRU cache of image embeddings by frame index, bounded in bytes (0 disables it)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self._capacity: Optional[int] = None

    @staticmethod
    def nbytes(embedding: ImageEmbedding) -> int:
        tensors = [embedding.features, *(embedding.interm_features or [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def get(self, frame: int) -> Optional[ImageEmbedding]:
        embedding = self._entries.get(frame)
        if embedding is not None:
            self._entries.move_to_end(frame)
        return embedding

    def put(self, frame: int, embedding: ImageEmbedding) -> None:
        if self._capacity is None:
            self._capacity = self.max_bytes // max(1, self.nbytes(embedding))
        if self._capacity <= 0:
            return
        self._entries[frame] = embedding
        self._entries.move_to_end(frame)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class SamWindowSegmenter(WindowSegmenter):
    """SAM-PT's SAM stage on a window: the plain pipeline's prompting, with cached embeddings.

    Compact logits are SAM's final low-resolution logits ``(1, 4h', 4w')`` float32.

    Args:
        pipeline: the ``SamPt`` whose SAM and options are used.
        embedding_cache_bytes: bound of the embedding cache (0: no cache).
    """

    def __init__(self, pipeline: SamPt, embedding_cache_bytes: int):
        self.pipeline = pipeline
        self.sam: SamModel = pipeline.sam
        self.cache = EmbeddingCache(embedding_cache_bytes)
        self._prompters: dict[tuple[int, int], SamPrompter] = {}
        self._sizes: Optional[tuple[tuple[int, int], tuple[int, int]]] = None

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def _prompter(self, num_positive: int, num_points: int) -> SamPrompter:
        key = (num_positive, num_points - num_positive)
        if key not in self._prompters:
            self._prompters[key] = SamPrompter(self.sam, prompter_config(self.pipeline.config, *key))
        return self._prompters[key]

    def _embeddings(self, frame_indices: Sequence[int], frames: torch.Tensor, timings: dict[str, float]
                    ) -> tuple[list[ImageEmbedding], int]:
        embeddings: list[Optional[ImageEmbedding]] = [self.cache.get(int(t)) for t in frame_indices]
        missing = [i for i, e in enumerate(embeddings) if e is None]
        step = self.pipeline.config.batching.frame_batch_size
        for start in range(0, len(missing), step):
            rows = missing[start:start + step]
            tic = time.perf_counter()
            computed = self.sam.embed_frames(frames[rows])
            timings["image_encoder"] += time.perf_counter() - tic
            for row, embedding in zip(rows, computed):
                embeddings[row] = embedding
                self.cache.put(int(frame_indices[row]), embedding)
        if self._sizes is None and embeddings:
            self._sizes = (embeddings[0].input_size, embeddings[0].original_size)
        return embeddings, len(missing)

    def segment(self, frame_indices, frames, object_indices, tracks, num_positive, rng, timings):
        num_frames = len(frame_indices)
        num_objects, num_points = tracks.trajectories.shape[1:3]
        prompter = self._prompter(num_positive, num_points)
        device = self.sam.device
        embeddings, encoded = self._embeddings(frame_indices, frames, timings)
        kept = torch.zeros(num_frames, num_objects, dtype=torch.bool)
        scores = torch.full((num_frames, num_objects), float("-inf"))
        has_score = torch.zeros(num_frames, num_objects, dtype=torch.bool)
        areas = torch.zeros(num_frames, num_objects)
        compact: Optional[torch.Tensor] = None
        calls = 0
        for i, embedding in enumerate(embeddings):
            tic = time.perf_counter()
            prompts = build_point_prompts(tracks.trajectories[i].to(device), tracks.visibilities[i].to(device),
                                          prompter.config, rng)
            prediction = prompter.predict_frame(embedding, prompts)
            low_res = {m: prediction.low_res_logits[m] for m in range(num_objects) if prediction.has_score[m]}
            calls += prediction.num_decoder_calls
            # The prompter empties a mask by filling it with -inf: that is the one rule to follow.
            frame_kept = ~torch.isneginf(prediction.logits.flatten(1)).all(dim=1)
            kept[i] = frame_kept.cpu()
            scores[i], has_score[i] = prediction.scores.float().cpu(), prediction.has_score.cpu()
            areas[i] = (prediction.logits > 0).flatten(1).sum(dim=1).float().cpu()
            for m, logits in low_res.items():
                if compact is None:
                    compact = torch.zeros(num_frames, num_objects, *logits.shape, dtype=torch.float32)
                compact[i, m] = logits.float().cpu()
            timings["mask_decoder"] += time.perf_counter() - tic
        if compact is None:  # no object was prompted on any frame of the window
            side = 4 * int(self.sam.prompt_encoder.image_embedding_size[0])
            compact = torch.zeros(num_frames, num_objects, 1, side, side)
        return WindowSegmentation(compact, kept, scores, has_score, areas, calls, encoded)

    def frame_logits(self, compact_logits: torch.Tensor) -> torch.Tensor:
        if self._sizes is None:
            raise RuntimeError("frame_logits called before any frame was segmented")
        input_size, original_size = self._sizes
        sizes = ImageEmbedding(features=None, interm_features=None, input_size=input_size,
                               original_size=original_size)
        return self.sam.upscale_logits(compact_logits.to(self.sam.device), sizes)[:, 0].float()


# ---------------------------------------------------------------------------------------------
# The reinit loop
# ---------------------------------------------------------------------------------------------
@dataclass
class WindowRecord:
    """One processed window, reported to ``on_window`` (for tests, logs and benchmarks).

    Attributes:
        direction: ``"forward"`` or ``"backward"``.
        start, end, tracker_end: ``W = [start, end)`` and the tracked clip ``[start, tracker_end)``
            in the *pass's* frame order (backward: index into the reversed video).
        objects: the window's objects (indices into the video's objects).
        next_query_frames: per object, its new query frame (pass order), or None when the window
            reaches the end of the video or the object was stopped.
        stopped: per object, whether ``reinit_stop_when_missing`` stopped it here.
        areas: ``(n, M_w) float32`` the window's mask areas (input pixels).
    """

    direction: str
    start: int
    end: int
    tracker_end: int
    objects: list[int]
    next_query_frames: list[Optional[int]]
    stopped: list[bool]
    areas: torch.Tensor


@dataclass
class _FrameSlot:
    """A frame's masks, kept until the frame is emitted (rows for all M objects)."""

    compact: torch.Tensor  # (M, *C) float32
    kept: torch.Tensor  # (M,) bool


@dataclass
class _VideoState:
    """Per-video results being assembled by both passes (original frame order)."""

    trajectories: torch.Tensor  # (T, M, P, 2) float32
    visibilities: torch.Tensor  # (T, M, P) bool
    reasons: torch.Tensor  # (T, M, P) int8
    scores: torch.Tensor  # (T, M) float32
    has_score: torch.Tensor  # (T, M) bool
    slots: dict[int, _FrameSlot] = field(default_factory=dict)
    decoder_calls: int = 0
    encoded_frames: int = 0


class _Emitter:
    """Emits frames 0..T-1 in order as soon as they are final."""

    def __init__(self, state: _VideoState, segmenter: WindowSegmenter, output_size: tuple[int, int],
                 height: int, width: int, on_frame: Callable[[FrameOutput], None],
                 progress: Optional[Callable[[int], None]], timings: dict[str, float],
                 original_empty_mask_upsampling: bool):
        self.state, self.segmenter = state, segmenter
        self.output_size, self.height, self.width = output_size, height, width
        self.on_frame, self.progress, self.timings = on_frame, progress, timings
        self.original_empty_mask_upsampling = original_empty_mask_upsampling
        self.next_frame = 0

    def emit_before(self, end: int) -> None:
        while self.next_frame < end:
            self._emit(self.next_frame)
            self.next_frame += 1

    def _emit(self, t: int) -> None:
        tic = time.perf_counter()
        slot = self.state.slots.pop(t, None)
        num_objects = self.state.scores.shape[1]
        device = self.segmenter.device
        logits = torch.full((num_objects, self.height, self.width), float("-inf"), device=device)
        if slot is not None and bool(slot.kept.any()):
            rows = torch.nonzero(slot.kept)[:, 0]
            logits[rows.to(device)] = self.segmenter.frame_logits(slot.compact[rows]).to(device)
        output = FrameOutput(t, resize_logits(logits, self.output_size, self.original_empty_mask_upsampling),
                             self.state.scores[t].clone(), self.state.has_score[t].clone())
        self.timings["emit"] += time.perf_counter() - tic
        tic = time.perf_counter()
        self.on_frame(output)
        self.timings["consumer"] += time.perf_counter() - tic
        if self.progress is not None:
            self.progress(t)


class _ReinitPass:
    """One pass (forward or backward) of the reinit loop over a video."""

    def __init__(self, pipeline: SamPt, frames: torch.Tensor, queries: Queries, direction: str,
                 segmenter: WindowSegmenter, state: _VideoState, rng: np.random.Generator,
                 timings: dict[str, float], on_window: Optional[Callable[[WindowRecord], None]],
                 before_window: Optional[Callable[[int], None]] = None):
        self.pipeline, self.frames, self.queries = pipeline, frames, queries
        self.direction, self.segmenter, self.state = direction, segmenter, state
        self.rng, self.timings, self.on_window, self.before_window = rng, timings, on_window, before_window
        self.config = pipeline.config
        self.num_frames = int(frames.shape[0])
        self.original_query_frames = queries.query_frames.clone()

    # -- frame order of the pass --------------------------------------------------------------
    def to_video(self, t: int) -> int:
        """Pass frame index -> original frame index."""
        return t if self.direction == FORWARD else self.num_frames - 1 - t

    def clip(self, start: int, end: int) -> torch.Tensor:
        """``(end - start, 3, H, W) uint8`` frames of the pass's ``[start, end)``."""
        if self.direction == FORWARD:
            return self.frames[start:end]
        return self.frames[self.num_frames - end:self.num_frames - start].flip(0)

    def keeps(self, t: int) -> torch.Tensor:
        """``(M,) bool``: objects whose output at pass frame ``t`` comes from this pass."""
        video_t = self.to_video(t)
        if self.direction == FORWARD:
            return self.original_query_frames <= video_t
        return self.original_query_frames > video_t

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        config, num_frames = self.config, self.num_frames
        current = self.queries.points.clone()
        if self.direction == BACKWARD:
            current[:, :, 0] = num_frames - 1 - current[:, :, 0]
        current_frames = current[:, 0, 0].long()
        valid = self.queries.valid.clone()
        for start in range(int(current_frames.min()), num_frames):
            if self.before_window is not None:
                self.before_window(start)
            objects = torch.nonzero(current_frames == start)[:, 0]
            if len(objects) == 0:
                continue
            end = min(start + config.reinit.reinit_horizon, num_frames)
            tracker_end = min(start + config.reinit.reinit_point_tracker_horizon, num_frames)
            keep = torch.stack([self.keeps(t)[objects] for t in range(start, end)])  # (n, M_w)
            if end == num_frames and not bool(keep.any()):
                continue  # every output of this last window would be discarded
            window = self._track(start, end, tracker_end, current[objects], valid[objects])
            segmentation = self.segmenter.segment(
                [self.to_video(t) for t in range(start, end)], self.clip(start, end), objects.tolist(),
                window, self.queries.num_positive, self.rng, self.timings)
            self.state.decoder_calls += segmentation.num_decoder_calls
            self.state.encoded_frames += segmentation.num_encoded_frames
            self._write(start, objects, keep, window, segmentation)

            next_frames: list[Optional[int]] = [None] * len(objects)
            stopped = [False] * len(objects)
            if end < num_frames:
                later = current_frames[current_frames > start]
                offset = int(later.min()) - start - 1 if len(later) else None
                areas = segmentation.areas.T  # (M_w, n)
                entries = select_reinit_entries(areas[:, 1:], areas[:, 0], config.reinit.reinit_variant,
                                                config.reinit.reinit_horizon, offset)
                stop = (all_missing(areas[:, 1:], config.reinit.reinit_horizon) if config.reinit.reinit_stop_when_missing
                        else torch.zeros(len(objects), dtype=torch.bool))
                tic = time.perf_counter()
                for row, m in enumerate(objects.tolist()):
                    if bool(stop[row]):
                        current_frames[m] = _NOT_TRACKED
                        self._stop(m, row, end, window)
                        stopped[row] = True
                        continue
                    entry = int(entries[row])
                    new_frame = start + 1 + entry
                    current[m] = self._sample(m, new_frame, segmentation, entry + 1, row)
                    valid[m] = True
                    current_frames[m] = new_frame
                    next_frames[row] = new_frame
                self.timings["reinit_sampling"] += time.perf_counter() - tic
            if self.on_window is not None:
                self.on_window(WindowRecord(self.direction, start, end, tracker_end, objects.tolist(),
                                            next_frames, stopped, segmentation.areas.clone()))

    def _track(self, start: int, end: int, tracker_end: int, points: torch.Tensor, valid: torch.Tensor) -> Tracks:
        tic = time.perf_counter()
        relative = points.clone()
        relative[:, :, 0] = 0.0  # query frame 0 of the tracked clip
        clip_queries = Queries(relative, self.queries.num_positive, valid, torch.zeros(0))
        tracks = self.pipeline.track(self.clip(start, tracker_end), clip_queries)
        kept = end - start
        self.timings["tracking"] += time.perf_counter() - tic
        return Tracks(tracks.trajectories[:kept], tracks.visibilities[:kept], tracks.reasons[:kept])

    def _write(self, start: int, objects: torch.Tensor, keep: torch.Tensor, window: Tracks,
               segmentation: WindowSegmentation) -> None:
        state = self.state
        num_objects = state.scores.shape[1]
        for i in range(keep.shape[0]):
            rows = torch.nonzero(keep[i])[:, 0]
            if len(rows) == 0:
                continue
            t = self.to_video(start + i)
            targets = objects[rows]
            state.trajectories[t, targets] = window.trajectories[i, rows]
            state.visibilities[t, targets] = window.visibilities[i, rows]
            state.reasons[t, targets] = window.reasons[i, rows]
            state.scores[t, targets] = segmentation.scores[i, rows]
            state.has_score[t, targets] = segmentation.has_score[i, rows]
            slot = state.slots.get(t)
            if slot is None:
                compact_shape = tuple(segmentation.compact_logits.shape[2:])
                slot = _FrameSlot(torch.zeros(num_objects, *compact_shape), torch.zeros(num_objects, dtype=torch.bool))
                state.slots[t] = slot
            slot.compact[targets] = segmentation.compact_logits[i, rows]
            slot.kept[targets] = segmentation.kept[i, rows]

    def _stop(self, m: int, window_row: int, end: int, window: Tracks) -> None:
        """Object ``m`` has no mask to re-initialise on: empty from pass frame ``end`` on.

        Its points stay where they were last tracked (frame ``end - 1``), not visible, with
        reason ``REINIT_FAILED``.
        """
        state = self.state
        last_positions = window.trajectories[-1, window_row]
        for t in range(end, self.num_frames):
            if not bool(self.keeps(t)[m]):
                continue
            video_t = self.to_video(t)
            state.trajectories[video_t, m] = last_positions
            state.visibilities[video_t, m] = False
            state.reasons[video_t, m] = int(VisibilityReason.REINIT_FAILED)
            state.scores[video_t, m] = float("-inf")
            state.has_score[video_t, m] = False
            slot = state.slots.get(video_t)
            if slot is not None:
                slot.kept[m] = False

    def _sample(self, m: int, new_frame: int, segmentation: WindowSegmentation, window_row: int,
                object_row: int) -> torch.Tensor:
        """``(P, 3)`` new query points of object ``m`` (pass frame order) from its mask on ``new_frame``."""
        config = self.config
        num_points = self.queries.points.shape[1]
        num_positive = self.queries.num_positive
        if bool(segmentation.kept[window_row, object_row]):
            logits = self.segmenter.frame_logits(segmentation.compact_logits[window_row, object_row][None])[0]
            mask = (logits > 0).cpu()
        else:
            mask = torch.zeros(self.frames.shape[-2:], dtype=torch.bool)
        frame = self.frames[self.to_video(new_frame)].cpu()
        what = f"re-initialisation mask of object {m} on frame {self.to_video(new_frame)} ({self.direction} pass)"
        positives = sample_points(mask, num_positive, config.query.positive_point_selection_method, frame, self.rng,
                                  what=what)
        negatives = sample_points(~mask, num_points - num_positive, config.query.negative_point_selection_method, frame,
                                  self.rng, what=f"complement of the {what}")
        points = torch.zeros(num_points, 3)
        points[:, 0] = new_frame
        points[:, 1:] = torch.cat([positives, negatives], dim=0).float()
        return points


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def run_with_reinit(pipeline: SamPt, video: VideoItem, on_frame: Callable[[FrameOutput], None],
                    on_queries: Optional[Callable[[Queries], None]] = None,
                    progress: Optional[Callable[[int], None]] = None, *,
                    segmenter: Optional[WindowSegmenter] = None,
                    on_window: Optional[Callable[[WindowRecord], None]] = None) -> MethodResult:
    """SAM-PT-reinit on one video (see the module doc); ``SamPt.run`` calls it when
    ``use_point_reinit`` is set.

    Args:
        pipeline: the ``SamPt`` (models and options).
        video: the video; frames ``(T, 3, H, W) uint8``.
        on_frame: called once per frame with its ``FrameOutput``, in frame order ``0 .. T-1``.
        on_queries: receives the (original) queries before the first frame is emitted.
        progress: called with ``t`` after frame ``t`` was emitted.
        segmenter: segments a window (default: SAM as in plain SAM-PT, ``SamWindowSegmenter``);
            tests inject one that returns chosen masks.
        on_window: receives a ``WindowRecord`` after each processed window.

    Returns:
        ``MethodResult`` with trajectories at output resolution, the original queries,
        ``num_decoder_calls`` and ``num_encoded_frames`` summed over both passes.

    Raises:
        ValueError: invalid reinit options (e.g. ``reinit_horizon > reinit_point_tracker_horizon``).
    """
    config = pipeline.config
    if config.reinit.reinit_embedding_cache_mib < 0:
        raise ValueError(f"reinit_embedding_cache_mib must be >= 0, got {config.reinit.reinit_embedding_cache_mib}")
    timings: dict[str, float] = defaultdict(float)
    rng = video_rng(config.seed, video.name)
    frames = video.frames
    num_frames, _, height, width = frames.shape
    scale = output_scale((int(height), int(width)), video.output_size)
    tic = time.perf_counter()
    queries = pipeline.make_queries(video, rng)
    timings["query_points"] = time.perf_counter() - tic
    encoded_for_queries = frames_encoded_for_queries(video)
    if on_queries is not None:
        on_queries(queries)
    if segmenter is None:
        segmenter = SamWindowSegmenter(pipeline, config.reinit.reinit_embedding_cache_mib * 2**20)

    num_objects, num_points, _ = queries.points.shape
    state = _VideoState(
        trajectories=torch.full((num_frames, num_objects, num_points, 2), float("nan")),
        visibilities=torch.zeros(num_frames, num_objects, num_points, dtype=torch.bool),
        reasons=torch.full((num_frames, num_objects, num_points), int(VisibilityReason.OCCLUDED), dtype=torch.int8),
        scores=torch.full((num_frames, num_objects), float("-inf")),
        has_score=torch.zeros(num_frames, num_objects, dtype=torch.bool),
    )
    emitter = _Emitter(state, segmenter, tuple(video.output_size), int(height), int(width), on_frame, progress,
                       timings, config.prompting.original_empty_mask_upsampling)
    # Backward first: its outputs (frames before each object's query frame) are then complete
    # when the forward pass starts, and the forward pass can emit frames as they become final.
    _ReinitPass(pipeline, frames, queries, BACKWARD, segmenter, state, rng, timings, on_window).run()
    _ReinitPass(pipeline, frames, queries, FORWARD, segmenter, state, rng, timings, on_window,
                before_window=emitter.emit_before).run()
    emitter.emit_before(num_frames)
    return MethodResult(
        queries=queries,
        trajectories=state.trajectories * scale,
        visibilities=state.visibilities,
        reasons=state.reasons,
        scores_per_frame=state.scores,
        scores=video_scores(state.scores, state.has_score),
        timings=dict(timings),
        num_decoder_calls=state.decoder_calls,
        num_encoded_frames=state.encoded_frames + encoded_for_queries,
    )
