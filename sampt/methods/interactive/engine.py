"""The interaction engine: SAM-PT on one video, corrected point by point.

An ``InteractiveSession`` holds one video's frames, a SAM model, a point tracker and the current
point set. Each call changes the point set and brings the masks up to date at the least cost:

* ``add_object(object_id, frame, points)``: a new object whose first frame may be any frame
  (it has no mask before it); ``remove_object(object_id)``.
* ``add_point(object_id, frame, x, y, positive)``: only the new point is tracked, over the frames
  from its frame on (from the object's first frame with ``backward=True``); it is visible at its
  own (x, y) on its own frame whatever the tracker says there. ``track=False`` places it on its
  frame only (the original's ``disable_point_tracking`` baseline; the page's "this frame only").
* ``remove_point(point_id, frame)``: the point's visibility is cleared from ``frame`` on (as in
  the original SAM-PT), its track before ``frame`` is kept; ``tracks()`` gives those frames the
  reason ``REMOVED_BY_USER``.
* ``undo()`` / ``redo()``: restore an earlier point set; no tracker call (tracks are kept).

With ``eager=True`` (the default) every call brings every frame's masks up to date. With
``eager=False`` a call only changes (and tracks) the points: a frame's masks are decoded when
they are asked for (``logits(t)``, ``masks(t)``, ``index_mask(t)``, ``scores(t)``) or by
``propagate()``, which brings all frames up to date in order with a per-frame callback and a stop
check (the web page and the simulated annotator work this way: a click costs one frame's decode).

The masks are a pure function of the point set: on every frame each object's prompt is built
exactly as ``SamPt.segment`` builds it (``build_point_prompts``), and only the (frame, object)
pairs whose prompt changed are decoded again. Image embeddings come from a bounded LRU cache
(``embedding_cache_mib``), so a correction costs mask-decoder calls, not image-encoder calls.
The result equals running SAM-PT from scratch on the final point set (tests check this), given:

* the prompting mode is fixed per session, not per point set: the "positive points first, then
  all points with that low-res mask" two-step decode is used iff the config's
  ``negative_points_per_mask > 0`` (SAM-PT from scratch decides it by the presence of negative
  slots, so the two agree whenever the final point set has a negative point or the config has none);
* trackers track each point independently of the others (LK, static and replay trackers do);
* ``decode_rule="sam_pt"`` (the default; ``per_prompt`` decodes as the original's interactive
  simulation does instead, for the simulated-annotator protocol).

Not supported (``ValueError`` at construction): point re-initialisation, patch-matching filtering,
a cap on the other objects' negatives (it draws random subsets), trackers that need query masks.

Shapes: frames ``(T, 3, H, W) uint8``; points in frame pixels ``(x, y)``; per-frame logits
``(M, H, W) float32`` for the M objects in ascending id order; tracks ``(T, M, P, 2)``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import prompter_config
from sampt.sam.model import ImageEmbedding, SamModel
from sampt.sam.prompting import PointPrompt, SamPrompter, build_point_prompts
from sampt.trackers.base import PointTracker
from sampt.visibility import VisibilityReason, mark_outside_frame

PathLike = Union[str, Path]

#: How prompts are decoded (see ``InteractiveSession``).
DECODE_RULES = ("sam_pt", "per_prompt")


# -- records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One annotator point.

    Attributes:
        point_id: unique in the session, in order of creation.
        object_id: the object it belongs to.
        frame: the frame it was placed on; (x, y) in that frame's pixels.
        positive: positive (inside the object) or negative.
        backward: also tracked towards earlier frames (down to the object's first frame).
        removed_from: visibility cleared from this frame on (None: never removed).
        track: tracked through the video; False: a prompt on its own frame only.
    """

    point_id: int
    object_id: int
    frame: int
    x: float
    y: float
    positive: bool
    backward: bool = False
    removed_from: Optional[int] = None
    track: bool = True


@dataclass(frozen=True)
class TrackedPoint:
    """A point with its track: ``trajectory (T, 2) float32`` and ``tracked (T,) bool``, the
    tracker's visibility after the border rule and the direction rule (before removal)."""

    point: Point
    trajectory: torch.Tensor
    tracked: torch.Tensor

    def visibility(self, first_frame: int) -> torch.Tensor:
        """``(T,) bool``: where this point prompts SAM."""
        visible = self.tracked.clone()
        visible[:first_frame] = False
        if self.point.removed_from is not None:
            visible[self.point.removed_from:] = False
        return visible


@dataclass(frozen=True)
class _State:
    """One point set: objects (id -> first frame) and tracked points (id -> TrackedPoint).
    Never mutated, so history entries can share it."""

    objects: dict
    points: dict
    next_point_id: int


@dataclass(frozen=True)
class Interaction:
    """One call that changed the point set, as JSON-able ``arguments`` (see ``InteractiveSession.apply``)."""

    kind: str
    arguments: dict


@dataclass
class CallReport:
    """What one call did and cost.

    Attributes:
        kind: ``add_object``, ``remove_object``, ``add_point``, ``remove_point``, ``undo``, ``redo``.
        seconds: wall time of the whole call.
        tracker_seconds / encoder_seconds / decoder_seconds: time in the tracker, the image
            encoder (cache misses) and the prompt decoding.
        frames_resegmented: frames on which at least one object's prompt changed, ascending.
        prompts_decoded: (frame, object) prompts that went through SAM's decoder.
        decoder_calls: mask-decoder forward calls.
        frames_encoded: image-encoder frames computed (embedding cache misses).
        embedding_cache_hits: embeddings served from the cache.
        point_ids: points this call created (add_point, add_object).
        cancelled: ``propagate`` stopped early by its ``should_stop``.
    """

    kind: str
    seconds: float = 0.0
    tracker_seconds: float = 0.0
    encoder_seconds: float = 0.0
    decoder_seconds: float = 0.0
    frames_resegmented: list = field(default_factory=list)
    prompts_decoded: int = 0
    decoder_calls: int = 0
    frames_encoded: int = 0
    embedding_cache_hits: int = 0
    point_ids: list = field(default_factory=list)
    cancelled: bool = False


@dataclass(frozen=True)
class _ObjectResult:
    """SAM's final low-res logits ``(1, 1, h, w)`` and predicted IoU for one object on one frame;
    ``low_res`` None for an object without a prompt there (empty mask, no score)."""

    low_res: Optional[torch.Tensor]
    score: Optional[torch.Tensor]


# -- embedding cache -------------------------------------------------------------------------

def embedding_bytes(embedding: ImageEmbedding) -> int:
    tensors = [embedding.features, *(embedding.interm_features or [])]
    return sum(t.numel() * t.element_size() for t in tensors)


class EmbeddingCache:
    """Image embeddings by frame index, least recently used dropped first beyond ``capacity_mib``.

    ``misses`` counts frames embedded (image-encoder work), ``hits`` frames served from the cache.
    """

    def __init__(self, sam: SamModel, frames: torch.Tensor, capacity_mib: float, frame_batch_size: int = 1):
        if capacity_mib < 0:
            raise ValueError(f"embedding_cache_mib must be >= 0, got {capacity_mib}")
        self.sam = sam
        self.frames = frames
        self.capacity_bytes = int(capacity_mib * 2 ** 20)
        self.frame_batch_size = frame_batch_size
        self._entries: "OrderedDict[int, ImageEmbedding]" = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def cached_frames(self) -> list[int]:
        return list(self._entries)

    def get_many(self, frame_indices: Sequence[int]) -> dict[int, ImageEmbedding]:
        """Embeddings of ``frame_indices``; missing ones are computed ``frame_batch_size`` at a time."""
        found: dict[int, ImageEmbedding] = {}
        missing = []
        for t in frame_indices:
            if t in self._entries:
                self._entries.move_to_end(t)
                found[t] = self._entries[t]
                self.hits += 1
            else:
                missing.append(t)
        for start in range(0, len(missing), self.frame_batch_size):
            chunk = missing[start : start + self.frame_batch_size]
            tic = time.perf_counter()
            embeddings = self.sam.embed_frames(self.frames[chunk])
            self.seconds += time.perf_counter() - tic
            self.misses += len(chunk)
            for t, embedding in zip(chunk, embeddings):
                found[t] = embedding
                self._put(t, embedding)
        return found

    def _put(self, t: int, embedding: ImageEmbedding) -> None:
        size = embedding_bytes(embedding)
        if size > self.capacity_bytes:
            return
        self._entries[t] = embedding
        self._bytes += size
        while self._bytes > self.capacity_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= embedding_bytes(dropped)


# -- the session -----------------------------------------------------------------------------

class InteractiveSession:
    """Interactive SAM-PT on one video (see the module docstring).

    Args:
        frames: ``(T, 3, H, W) uint8`` RGB frames.
        sam: the SAM model.
        tracker: a ``PointTracker`` (each point tracked independently of the others).
        config: SAM-PT options (prompting, batching, border rule via the pipeline's defaults).
        embedding_cache_mib: bound of the image-embedding cache (0: no cache).
        frame_names: T frame stems for the exports (default ``00000``, ``00001``, ...).
        name: the video's name, for the exports.
        decode_rule: ``sam_pt`` decodes every prompt as SAM-PT does (the two-step decode iff the
            config has negative points); ``per_prompt`` decodes as the original's interactive
            simulation does: a prompt without a positive point gives an empty mask, and the
            two-step decode is used iff the prompt itself has a negative point.
        eager: bring every frame up to date on each call (True) or only when a frame's masks are
            asked for / by ``propagate`` (False).
        embedding_cache: share another session's cache of the same frames and SAM (the simulated
            annotator runs one session per object); replaces ``embedding_cache_mib``.
    """

    def __init__(self, frames: torch.Tensor, sam: SamModel, tracker: PointTracker,
                 config: Optional[SamPtConfig] = None, embedding_cache_mib: float = 1024,
                 frame_names: Optional[Sequence[str]] = None, name: str = "video", decode_rule: str = "sam_pt",
                 eager: bool = True, embedding_cache: Optional[EmbeddingCache] = None):
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (T, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
        config = config or SamPtConfig()
        if config.reinit.use_point_reinit:
            raise ValueError("the interactive session runs plain SAM-PT; use_point_reinit is not supported")
        if config.patch_matching.use_patch_matching_filtering:
            raise ValueError("the interactive session does not support use_patch_matching_filtering")
        if config.prompting.max_other_objects_positive_points is not None:
            raise ValueError("the interactive session does not support max_other_objects_positive_points "
                             "(its random subsets would make the masks depend on the order of interactions)")
        if tracker.uses_query_masks:
            raise ValueError(f"tracker {type(tracker).__name__} needs query masks; the interactive session "
                             "tracks single points")
        self.frames = frames.cpu()
        self.sam = sam
        self.tracker = tracker
        self.config = config
        self.name = name
        self.num_frames, _, self.height, self.width = (int(s) for s in frames.shape)
        if frame_names is None:
            frame_names = [f"{t:05d}" for t in range(self.num_frames)]
        if len(frame_names) != self.num_frames:
            raise ValueError(f"{len(frame_names)} frame names for {self.num_frames} frames")
        self.frame_names = list(frame_names)
        if embedding_cache is not None and (embedding_cache.sam is not sam or embedding_cache.frames is not frames
                                            and not torch.equal(embedding_cache.frames, self.frames)):
            raise ValueError("embedding_cache belongs to another SAM or other frames")
        self.cache = embedding_cache or EmbeddingCache(sam, self.frames, embedding_cache_mib,
                                                       config.batching.frame_batch_size)
        # The decode mode is the config's, fixed for the session (see the module docstring).
        if decode_rule not in DECODE_RULES:
            raise ValueError(f"decode_rule must be one of {', '.join(DECODE_RULES)}, got {decode_rule!r}")
        self.decode_rule = decode_rule
        self._prompter = SamPrompter(sam, prompter_config(config))
        self._one_step = SamPrompter(sam, dataclasses.replace(prompter_config(config), negative_points_per_mask=0))
        self._two_step = SamPrompter(sam, dataclasses.replace(prompter_config(config), negative_points_per_mask=1))
        self._state = _State({}, {}, 0)
        self._undo: list[tuple[Interaction, _State]] = []  # (interaction, state before it)
        self._redo: list[tuple[Interaction, _State]] = []  # (interaction, state after it)
        self._prompts: list[dict[int, PointPrompt]] = [{} for _ in range(self.num_frames)]
        self._results: list[dict[int, _ObjectResult]] = [{} for _ in range(self.num_frames)]
        self._input_size: Optional[tuple[int, int]] = None
        self.eager = eager
        # Frames whose stored results may not match the current point set (lazy mode).
        self._dirty: set[int] = set()
        self._revisions = [0] * self.num_frames
        self.log: list[CallReport] = []
        #: Decoding done on demand by ``logits(t)`` & co. in lazy mode (not in ``log``).
        self.on_demand = CallReport("on_demand")

    # -- reading the state -------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        """The objects, in ascending id order: the order of every per-object array."""
        return sorted(self._state.objects)

    def first_frame(self, object_id: int) -> int:
        self._check_object(object_id)
        return self._state.objects[object_id]

    def points(self, object_id: Optional[int] = None) -> list[Point]:
        """The points (of one object), in order of creation."""
        if object_id is not None:
            self._check_object(object_id)
        return [p.point for p in self._state.points.values() if object_id is None or p.point.object_id == object_id]

    def tracked_point(self, point_id: int) -> TrackedPoint:
        if point_id not in self._state.points:
            raise ValueError(f"unknown point {point_id}; points are {sorted(self._state.points)}")
        return self._state.points[point_id]

    def visible_points(self, t: int) -> list[tuple[Point, float, float]]:
        """Points prompting SAM on frame ``t``, with their tracked ``(x, y)`` there."""
        t = self._check_frame(t)
        visible = []
        for tracked in self._state.points.values():
            if tracked.visibility(self._state.objects[tracked.point.object_id])[t]:
                x, y = tracked.trajectory[t].tolist()
                visible.append((tracked.point, x, y))
        return visible

    @property
    def history(self) -> list[Interaction]:
        """The interactions that make the current point set, oldest first (undone ones excluded)."""
        return [interaction for interaction, _ in self._undo]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def revision(self, t: int) -> int:
        """A counter of frame ``t``'s results, raised whenever they change (brings ``t`` up to
        date first): a consumer caching something computed from a frame's masks compares it."""
        t = self._check_frame(t)
        self._bring_up_to_date([t], self.on_demand)
        return self._revisions[t]

    def is_up_to_date(self, t: int) -> bool:
        """Whether frame ``t``'s stored masks match the current point set (always, when eager)."""
        return self._check_frame(t) not in self._dirty

    def propagate(self, frames: Optional[Iterable[int]] = None, on_frame: Optional[Any] = None,
                  should_stop: Optional[Any] = None) -> CallReport:
        """Bring ``frames`` (default: all) up to date in ascending order.

        ``on_frame(t)`` is called after each frame (also for frames already up to date), and
        ``should_stop()`` before each one; when it returns True the call ends with
        ``report.cancelled`` (frames done so far stay done, the rest stay pending). Logged.
        """
        tic = time.perf_counter()
        report = CallReport("propagate")
        order = sorted({self._check_frame(t) for t in (range(self.num_frames) if frames is None else frames)})
        step = max(1, self.config.batching.frame_batch_size)
        for start in range(0, len(order), step):
            if should_stop is not None and should_stop():
                report.cancelled = True
                break
            chunk = order[start : start + step]
            self._bring_up_to_date(chunk, report)
            if on_frame is not None:
                for t in chunk:
                    on_frame(t)
        return self._finish(report, tic)

    def logits(self, t: int) -> torch.Tensor:
        """``(M, H, W) float32`` mask logits of frame ``t``; ``-inf`` where an object has no mask
        (no prompt, or a predicted IoU below ``sam_iou_threshold``)."""
        t = self._check_frame(t)
        self._bring_up_to_date([t], self.on_demand)
        logits = torch.full((len(self.object_ids), self.height, self.width), float("-inf"))
        threshold = self.config.prompting.sam_iou_threshold
        for m, object_id in enumerate(self.object_ids):
            result = self._results[t].get(object_id)
            if result is None or result.low_res is None or not bool(result.score >= threshold):
                continue
            logits[m] = self._upscale(result.low_res)[0, 0].float().cpu()
        return logits

    def masks(self, t: int) -> torch.Tensor:
        """``(M, H, W) bool`` masks of frame ``t``."""
        return self.logits(t) > self.sam.mask_threshold

    def scores(self, t: int) -> torch.Tensor:
        """``(M,) float32`` SAM's predicted IoU per object on frame ``t`` (``-inf``: no prompt)."""
        t = self._check_frame(t)
        self._bring_up_to_date([t], self.on_demand)
        scores = torch.full((len(self.object_ids),), float("-inf"))
        for m, object_id in enumerate(self.object_ids):
            result = self._results[t].get(object_id)
            if result is not None and result.score is not None:
                scores[m] = float(result.score)
        return scores

    def index_mask(self, t: int) -> torch.Tensor:
        """``(H, W) uint8`` index mask of frame ``t`` with the object ids: per pixel the object
        with the highest logit above 0, else background (the VOS merge without forced query frames)."""
        ids = self.object_ids
        if any(not 0 < i < 256 for i in ids):
            raise ValueError(f"object ids must be in 1..255 for an index mask, got {ids}")
        logits = self.logits(t)
        values = torch.tensor([0, *ids], dtype=torch.uint8)
        background = logits.new_zeros((1, self.height, self.width))
        return values[torch.cat([background, logits]).argmax(dim=0)]

    def tracks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
        """All points as ``(trajectories (T, M, P, 2), visibilities (T, M, P), reasons (T, M, P) int8,
        point_ids)``: per object its positives then its negatives, in order of creation, padded with
        NaN (not visible) to the longest; ``point_ids[m]`` lists the ids of object m's P slots
        (-1 for padding)."""
        layout = self._layout(self._state)
        num_slots = max((len(ids) for ids in layout), default=0)
        num_objects = len(layout)
        trajectories = torch.full((self.num_frames, num_objects, num_slots, 2), float("nan"))
        visibilities = torch.zeros(self.num_frames, num_objects, num_slots, dtype=torch.bool)
        reasons = torch.full((self.num_frames, num_objects, num_slots), int(VisibilityReason.OCCLUDED),
                             dtype=torch.int8)
        point_ids = []
        for m, ids in enumerate(layout):
            point_ids.append(ids + [-1] * (num_slots - len(ids)))
            for slot, point_id in enumerate(ids):
                tracked = self._state.points[point_id]
                visible = tracked.visibility(self._state.objects[tracked.point.object_id])
                trajectories[:, m, slot] = tracked.trajectory
                visibilities[:, m, slot] = visible
                outside = mark_outside_frame(tracked.trajectory, self.height, self.width)
                reasons[visible, m, slot] = int(VisibilityReason.VISIBLE)
                reasons[outside, m, slot] = int(VisibilityReason.OUTSIDE_FRAME)
                removed_from = tracked.point.removed_from
                if removed_from is not None:
                    removed = torch.zeros(self.num_frames, dtype=torch.bool)
                    removed[removed_from:] = True
                    reasons[removed & tracked.tracked, m, slot] = int(VisibilityReason.REMOVED_BY_USER)
        return trajectories, visibilities, reasons, point_ids

    # -- interactions ------------------------------------------------------------------------
    def add_object(self, object_id: int, frame: int,
                   points: Iterable[tuple[float, float, bool]] = (), backward: bool = False) -> CallReport:
        """A new object starting at ``frame`` (no mask before it), with optional first points
        ``(x, y, positive)`` on that frame (tracked together, in one tracker call)."""
        object_id = int(object_id)
        if object_id in self._state.objects:
            raise ValueError(f"object {object_id} already exists")
        if object_id < 0:
            raise ValueError(f"object ids must be >= 0, got {object_id}")
        frame = self._check_frame(frame)
        points = [(float(x), float(y), bool(positive)) for x, y, positive in points]
        for x, y, _ in points:
            self._check_inside(x, y)
        interaction = Interaction("add_object", {"object_id": object_id, "frame": int(frame),
                                                 "points": [list(p) for p in points], "backward": bool(backward)})
        return self._run(interaction)

    def remove_object(self, object_id: int) -> CallReport:
        """Remove an object and all its points."""
        self._check_object(object_id)
        return self._run(Interaction("remove_object", {"object_id": int(object_id)}))

    def add_point(self, object_id: int, frame: int, x: float, y: float, positive: bool = True,
                  backward: bool = False, track: bool = True) -> CallReport:
        """A positive or negative point for ``object_id`` at ``(x, y)`` of ``frame``, tracked from
        there forward (and backward with ``backward``, down to the object's first frame); with
        ``track=False`` a prompt on ``frame`` only. ``report.point_ids`` holds its id."""
        self._check_object(object_id)
        frame = self._check_frame(frame)
        self._check_inside(x, y)
        first = self._state.objects[object_id]
        if frame < first:
            raise ValueError(f"frame {frame} is before object {object_id}'s first frame {first}")
        arguments = {"object_id": int(object_id), "frame": int(frame), "x": float(x), "y": float(y),
                     "positive": bool(positive), "backward": bool(backward)}
        if not track:
            arguments["track"] = False  # only written when set: older histories replay unchanged
        interaction = Interaction("add_point", arguments)
        return self._run(interaction)

    def remove_point(self, point_id: int, frame: int) -> CallReport:
        """Clear point ``point_id``'s visibility from ``frame`` on (its track before stays)."""
        tracked = self.tracked_point(point_id)
        frame = self._check_frame(frame)
        if tracked.point.removed_from is not None and tracked.point.removed_from <= frame:
            raise ValueError(f"point {point_id} is already removed from frame {tracked.point.removed_from} on")
        return self._run(Interaction("remove_point", {"point_id": int(point_id), "frame": int(frame)}))

    def undo(self) -> CallReport:
        """Go back to the point set before the last interaction."""
        if not self._undo:
            raise ValueError("nothing to undo")
        tic = time.perf_counter()
        interaction, before = self._undo.pop()
        report = CallReport("undo")
        self._redo.append((interaction, self._state))
        self._switch(before, report)
        return self._finish(report, tic)

    def redo(self) -> CallReport:
        """Re-apply the last undone interaction (its tracks are reused, not recomputed)."""
        if not self._redo:
            raise ValueError("nothing to redo")
        tic = time.perf_counter()
        interaction, after = self._redo.pop()
        report = CallReport("redo")
        self._undo.append((interaction, self._state))
        self._switch(after, report)
        return self._finish(report, tic)

    def apply(self, interaction: Union[Interaction, dict]) -> CallReport:
        """Apply one recorded interaction (an ``Interaction`` or its ``asdict`` form)."""
        if isinstance(interaction, dict):
            interaction = Interaction(interaction["kind"], dict(interaction["arguments"]))
        arguments = interaction.arguments
        if interaction.kind == "add_object":
            return self.add_object(arguments["object_id"], arguments["frame"],
                                   [tuple(p) for p in arguments.get("points", [])], arguments.get("backward", False))
        if interaction.kind == "remove_object":
            return self.remove_object(arguments["object_id"])
        if interaction.kind == "add_point":
            return self.add_point(arguments["object_id"], arguments["frame"], arguments["x"], arguments["y"],
                                  arguments.get("positive", True), arguments.get("backward", False),
                                  arguments.get("track", True))
        if interaction.kind == "remove_point":
            return self.remove_point(arguments["point_id"], arguments["frame"])
        raise ValueError(f"unknown interaction kind {interaction.kind!r}; expected add_object, remove_object, "
                         "add_point or remove_point")

    # -- exports -----------------------------------------------------------------------------
    def history_json(self) -> dict:
        """The history and the call log as JSON-able data."""
        return {"video": self.name, "num_frames": self.num_frames, "frame_size": [self.height, self.width],
                "interactions": [asdict(i) for i in self.history],
                "calls": [asdict(r) for r in self.log]}

    def write_history(self, path: PathLike) -> None:
        """Write ``history_json()`` to ``path`` (JSON; replay with ``apply`` on each interaction)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.history_json(), indent=1), encoding="utf-8")

    def write_query_points(self, path: PathLike) -> None:
        """Write the objects' first-frame points in SAM-PT's query-points file format
        (``datamodules.generic.parse_query_points_file``), in frame pixels.

        The format has one query frame per object and the same positive and negative counts for
        every object, so only the points placed on each object's first frame (and not removed
        there) are written; a ``ValueError`` says when the objects' counts differ. Later
        corrections are in the history (``write_history``).
        """
        if not self._state.objects:
            raise ValueError("no objects to write")
        lines, counts = [], set()
        for object_id in self.object_ids:
            first = self._state.objects[object_id]
            initial = [p for p in self.points(object_id)
                       if p.frame == first and (p.removed_from is None or p.removed_from > first)]
            positives = [p for p in initial if p.positive]
            negatives = [p for p in initial if not p.positive]
            counts.add((len(positives), len(negatives)))
            xy = " ".join(f"{p.x:g},{p.y:g}" for p in positives + negatives)
            lines.append(f"{first} ; {xy}")
        if len(counts) != 1:
            raise ValueError(f"the query-points format needs the same numbers of positive and negative first-frame "
                             f"points for every object; the objects have (positive, negative) = {sorted(counts)}")
        (num_positive, num_negative), = counts
        if num_positive + num_negative == 0:
            raise ValueError("the objects have no first-frame points to write")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([str(num_positive), *lines]) + "\n", encoding="utf-8")

    def write_vos_outputs(self, out_dir: PathLike, overlay: bool = False, palette: Optional[Sequence[int]] = None,
                          fps: float = 10.0) -> dict[str, Any]:
        """Write what the VOS module writes for this video under ``out_dir``: index PNGs
        ``<name>/<frame>.png`` (with completion marker), tracks ``<name>_tracks.npz`` / ``.csv``,
        the history ``<name>_history.json`` and, with ``overlay``, ``<name>_overlay.mp4``.
        Returns the paths written by kind."""
        from sampt.writers import write_sequence_pngs, write_trajectories

        out_dir = Path(out_dir)
        index_masks = torch.stack([self.index_mask(t) for t in range(self.num_frames)])
        pngs = write_sequence_pngs(out_dir, self.name, self.frame_names, index_masks, palette)
        trajectories, visibilities, reasons, _ = self.tracks()
        npz, csv = out_dir / f"{self.name}_tracks.npz", out_dir / f"{self.name}_tracks.csv"
        write_trajectories(npz, csv, trajectories, visibilities, self.object_ids, reasons, self.frame_names)
        history = out_dir / f"{self.name}_history.json"
        self.write_history(history)
        written: dict[str, Any] = {"pngs": pngs, "tracks_npz": npz, "tracks_csv": csv, "history": history}
        if overlay:
            from sampt.overlay import render_overlay_video, write_mp4

            positives = [sum(self._state.points[i].point.positive for i in ids) for ids in self._layout(self._state)]
            images = render_overlay_video(self.frames, index_masks, palette, trajectories, visibilities, reasons,
                                          num_positive=positives, object_ids=self.object_ids)
            path = out_dir / f"{self.name}_overlay.mp4"
            write_mp4(path, images, fps=fps)
            written["overlay"] = path
        return written

    # -- internals ---------------------------------------------------------------------------
    def _check_frame(self, t: int) -> int:
        if isinstance(t, bool) or int(t) != t or not 0 <= int(t) < self.num_frames:
            raise ValueError(f"frame {t!r} is out of range: the video has frames 0..{self.num_frames - 1}")
        return int(t)

    def _check_inside(self, x: float, y: float) -> None:
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError(f"point ({x:g}, {y:g}) is outside the frame: x must be in [0, {self.width}), "
                             f"y in [0, {self.height})")

    def _check_object(self, object_id: int) -> None:
        if object_id not in self._state.objects:
            raise ValueError(f"unknown object {object_id!r}; objects are {self.object_ids}")

    def _run(self, interaction: Interaction) -> CallReport:
        tic = time.perf_counter()
        report = CallReport(interaction.kind)
        new_state = self._apply_to_state(self._state, interaction, report)
        self._undo.append((interaction, self._state))
        self._redo.clear()
        self._switch(new_state, report)
        return self._finish(report, tic)

    def _finish(self, report: CallReport, tic: float) -> CallReport:
        report.seconds = time.perf_counter() - tic
        self.log.append(report)
        return report

    def _apply_to_state(self, state: _State, interaction: Interaction, report: CallReport) -> _State:
        arguments = interaction.arguments
        objects, points = dict(state.objects), dict(state.points)
        next_id = state.next_point_id
        if interaction.kind == "add_object":
            objects[arguments["object_id"]] = arguments["frame"]
            new = [Point(next_id + i, arguments["object_id"], arguments["frame"], x, y, positive,
                         arguments["backward"]) for i, (x, y, positive) in enumerate(arguments["points"])]
            for tracked in self._track(new, objects, report):
                points[tracked.point.point_id] = tracked
            next_id += len(new)
        elif interaction.kind == "remove_object":
            del objects[arguments["object_id"]]
            points = {i: p for i, p in points.items() if p.point.object_id != arguments["object_id"]}
        elif interaction.kind == "add_point":
            new = Point(next_id, arguments["object_id"], arguments["frame"], arguments["x"], arguments["y"],
                        arguments["positive"], arguments["backward"], track=arguments.get("track", True))
            points[next_id] = self._track([new], objects, report)[0]
            next_id += 1
        elif interaction.kind == "remove_point":
            old = points[arguments["point_id"]]
            points[arguments["point_id"]] = replace(old, point=replace(old.point, removed_from=arguments["frame"]))
        return _State(objects, points, next_id)

    def _track(self, new_points: list[Point], first_frames: dict, report: CallReport) -> list[TrackedPoint]:
        """Track only ``new_points`` (one tracker call for those with ``track``), over the frames
        from the earliest one they need on: a point's own frame, or its object's first frame when
        it is also tracked backward. Frames not tracked hold NaN and are not visible.

        The border rule of ``SamPt.track`` applies, then the direction rule; a point is visible at
        its own (x, y) on its own frame whatever the tracker says there (as in the original's
        simulation, which overwrites the tracker's output on the query frame).
        """
        if not new_points:
            return []
        report.point_ids.extend(p.point_id for p in new_points)
        trajectories = torch.full((self.num_frames, len(new_points), 2), float("nan"))
        visibilities = torch.zeros(self.num_frames, len(new_points), dtype=torch.bool)
        tracked_ids = [i for i, p in enumerate(new_points) if p.track]
        if tracked_ids:
            start = min(first_frames[new_points[i].object_id] if new_points[i].backward else new_points[i].frame
                        for i in tracked_ids)
            queries = torch.tensor([[[new_points[i].frame - start, new_points[i].x, new_points[i].y]
                                     for i in tracked_ids]], dtype=torch.float32)
            tic = time.perf_counter()
            with torch.no_grad():
                traj, vis = self.tracker(self.frames[start:][None].to(self.sam.device), queries.to(self.sam.device))
            report.tracker_seconds += time.perf_counter() - tic
            traj, vis = traj[0].float().cpu(), vis[0].bool().cpu()
            vis &= ~mark_outside_frame(traj, self.height, self.width)
            trajectories[start:, tracked_ids] = traj
            visibilities[start:, tracked_ids] = vis
        tracked = []
        for i, point in enumerate(new_points):
            trajectory, visible = trajectories[:, i].clone(), visibilities[:, i].clone()
            if not point.backward:
                visible[: point.frame] = False
            trajectory[point.frame] = torch.tensor([point.x, point.y])
            visible[point.frame] = True
            tracked.append(TrackedPoint(point, trajectory, visible))
        return tracked

    @staticmethod
    def _layout(state: _State) -> list[list[int]]:
        """Per object (ascending id), its point ids: positives then negatives, each in creation order."""
        layout = []
        for object_id in sorted(state.objects):
            own = [p.point for p in state.points.values() if p.point.object_id == object_id]
            layout.append([p.point_id for p in own if p.positive] + [p.point_id for p in own if not p.positive])
        return layout

    def _frame_prompts(self, state: _State, frames: Sequence[int]) -> dict[int, dict[int, PointPrompt]]:
        """Each object's prompt on each of ``frames``, built as ``SamPt.segment`` builds it: the
        objects' points laid out positives-first in slots padded to the longest (not visible)."""
        object_ids = sorted(state.objects)
        if not object_ids:
            return {t: {} for t in frames}
        own = {o: [p for p in state.points.values() if p.point.object_id == o] for o in object_ids}
        positives = {o: [p for p in own[o] if p.point.positive] for o in object_ids}
        negatives = {o: [p for p in own[o] if not p.point.positive] for o in object_ids}
        num_positive = max(len(v) for v in positives.values())
        num_negative = max(len(v) for v in negatives.values())
        num_slots = num_positive + num_negative
        frames = list(frames)
        index = torch.tensor(frames, dtype=torch.long)
        # Only the asked frames: a lazy session asks for one frame at a time.
        xy = torch.zeros(len(frames), len(object_ids), num_slots, 2)
        visible = torch.zeros(len(frames), len(object_ids), num_slots, dtype=torch.bool)
        for m, o in enumerate(object_ids):
            slots = [(s, p) for s, p in enumerate(positives[o])] + \
                    [(num_positive + s, p) for s, p in enumerate(negatives[o])]
            for slot, tracked in slots:
                xy[:, m, slot] = tracked.trajectory[index]
                visible[:, m, slot] = tracked.visibility(state.objects[o])[index]
        # Untracked frames hold NaN; hidden points' positions never reach SAM, keep them finite.
        xy = torch.where(visible[..., None], xy, torch.zeros(()))
        config = prompter_config(self.config, num_positive, num_negative)
        prompts = {}
        for row, t in enumerate(frames):
            frame_prompts = build_point_prompts(xy[row].to(self.sam.device), visible[row].to(self.sam.device), config)
            prompts[t] = dict(zip(object_ids, frame_prompts))
            for o in object_ids:
                if t < state.objects[o]:
                    # Before its first frame an object does not exist (the VOS merge's rule),
                    # even where other objects' positives would prompt it as negatives.
                    prompts[t][o] = PointPrompt(xy.new_zeros(0, 2).to(self.sam.device),
                                                torch.zeros(0, dtype=torch.int64, device=self.sam.device))
        return prompts

    def _candidate_frames(self, old: _State, new: _State) -> list[int]:
        """Frames where a prompt may differ between two point sets: where a point that differs
        is visible in either (plus every frame when the object list changes and objects are
        grouped by position, ``masks_batch_size``)."""
        changed = torch.zeros(self.num_frames, dtype=torch.bool)
        for point_id in set(old.points) | set(new.points):
            before, after = old.points.get(point_id), new.points.get(point_id)
            if before is after:
                continue
            for state, tracked in ((old, before), (new, after)):
                if tracked is not None:
                    changed |= tracked.visibility(state.objects[tracked.point.object_id])
        objects_changed = sorted(old.objects) != sorted(new.objects)
        if objects_changed and self.config.prompting.masks_batch_size is not None:
            changed[:] = True
        if objects_changed:
            # A removed object's stored results must go even where it had no prompt.
            for t in range(self.num_frames):
                if any(o not in new.objects for o in self._results[t]):
                    changed[t] = True
        return torch.nonzero(changed)[:, 0].tolist()

    def _switch(self, new_state: _State, report: CallReport) -> None:
        """Make ``new_state`` current; when eager, decode exactly the prompts that changed."""
        frames = self._candidate_frames(self._state, new_state)
        self._state = new_state
        self._dirty.update(frames)
        if self.eager:
            self._bring_up_to_date(sorted(self._dirty), report)

    def _bring_up_to_date(self, frames: Sequence[int], report: CallReport) -> None:
        """Decode the changed prompts of those ``frames`` that are pending; costs go to ``report``."""
        frames = [t for t in frames if t in self._dirty]
        if not frames:
            return
        new_state = self._state
        self._dirty.difference_update(frames)
        new_prompts = self._frame_prompts(new_state, frames)
        work: dict[int, list[int]] = {}
        for t in frames:
            for object_id in list(self._prompts[t]):
                if object_id not in new_state.objects:
                    del self._prompts[t][object_id]
                    self._results[t].pop(object_id, None)
                    self._revisions[t] += 1
            changed = [o for o, prompt in new_prompts[t].items() if not _same_prompt(self._prompts[t].get(o), prompt)]
            for object_id in changed:
                self._prompts[t][object_id] = new_prompts[t][object_id]
                if len(new_prompts[t][object_id]) == 0:
                    self._results[t][object_id] = _ObjectResult(None, None)
            to_decode = [o for o in changed if len(new_prompts[t][o]) > 0]
            if changed:
                report.frames_resegmented.append(t)
                self._revisions[t] += 1
            if to_decode:
                work[t] = to_decode
        hits, misses, encoder = self.cache.hits, self.cache.misses, self.cache.seconds
        embeddings = self.cache.get_many(list(work))
        report.embedding_cache_hits += self.cache.hits - hits
        report.frames_encoded += self.cache.misses - misses
        report.encoder_seconds += self.cache.seconds - encoder
        tic = time.perf_counter()
        for t, object_ids in work.items():
            embedding = embeddings[t]
            self._input_size = embedding.input_size
            for prompter, group in self._decode_groups(t, object_ids):
                prediction = prompter.predict_frame(embedding, [self._prompts[t][o] for o in group])
                report.decoder_calls += prediction.num_decoder_calls
                report.prompts_decoded += len(group)
                for row, object_id in enumerate(group):
                    self._results[t][object_id] = _ObjectResult(prediction.low_res_logits[row : row + 1].clone(),
                                                                prediction.scores[row].clone())
        report.decoder_seconds += time.perf_counter() - tic

    def _decode_groups(self, t: int, object_ids: list[int]) -> list[tuple[SamPrompter, list[int]]]:
        """Which prompter decodes which of frame ``t``'s changed, non-empty prompts (``decode_rule``)."""
        if self.decode_rule == "sam_pt":
            return [(self._prompter, object_ids)]
        with_negative, positive_only = [], []
        for object_id in object_ids:
            labels = self._prompts[t][object_id].labels
            if not (labels == 1).any():
                self._results[t][object_id] = _ObjectResult(None, None)  # the original's rule: no positive, no mask
            elif (labels == 0).any():
                with_negative.append(object_id)
            else:
                positive_only.append(object_id)
        groups = ((self._two_step, with_negative), (self._one_step, positive_only))
        return [(prompter, group) for prompter, group in groups if group]

    def _upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        embedding = ImageEmbedding(None, None, self._input_size, (self.height, self.width))
        return self.sam.upscale_logits(low_res.to(self.sam.device), embedding)


def _same_prompt(a: Optional[PointPrompt], b: PointPrompt) -> bool:
    """Equal prompts; no stored prompt counts as the empty prompt (no result, empty mask)."""
    if a is None:
        return len(b) == 0
    return torch.equal(a.labels, b.labels) and torch.equal(a.coords, b.coords)
