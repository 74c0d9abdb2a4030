"""SAM-PT: query points -> point tracking -> per-frame SAM prompting, as a plain module.

``SamPt`` holds the models and the options, never per-video state: ``run`` takes a
``VideoItem`` and streams one ``FrameOutput`` per frame to a consumer (the VOS merge, a VIS
encoder, a writer), so that float logits exist only for the frame being processed and memory
stays bounded for long videos with many objects.

Shapes: frames ``(T, 3, H, W) uint8`` at input resolution; M objects with P points each;
trajectories ``(T, M, P, 2) float32`` (x, y); visibilities ``(T, M, P) bool``; per-frame logits
``(M, h, w) float32`` at the output size ``(h, w)``.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from sampt.frames import FrameSource, TensorFrames, as_frame_source
from sampt.methods.base import FrameOutput, MethodResult
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.sam.model import ImageEmbedding, SamModel
from sampt.sam.prompting import PromptingConfig, SamPrompter, build_point_prompts
from sampt.trackers.base import PointTracker, TrackingProgress
from sampt.video import VideoItem
from sampt.visibility import VisibilityReason, mark_outside_frame

# With ``original_empty_mask_upsampling`` off, logits are kept finite before bilinear resizing:
# -inf times a zero interpolation weight is NaN. Any value far below SAM's logit range behaves
# like -inf here.
EMPTY_LOGIT = -1e8


def prompter_config(config: SamPtConfig, num_positive: Optional[int] = None,
                    num_negative: Optional[int] = None) -> PromptingConfig:
    """The SAM prompter's settings for objects with ``num_positive`` + ``num_negative`` points
    (default: the query section's counts)."""
    query, prompting = config.query, config.prompting
    return PromptingConfig(
        positive_points_per_mask=query.positive_points_per_mask if num_positive is None else num_positive,
        negative_points_per_mask=query.negative_points_per_mask if num_negative is None else num_negative,
        add_other_objects_positive_points_as_negative_points=(
            prompting.add_other_objects_positive_points_as_negative_points),
        max_other_objects_positive_points=prompting.max_other_objects_positive_points,
        masks_batch_size=prompting.masks_batch_size,
        iterative_refinement_iterations=prompting.iterative_refinement_iterations,
        sam_iou_threshold=prompting.sam_iou_threshold,
        refinement_box_in_frame_pixels=prompting.refinement_box_in_frame_pixels,
        decoder_batch_size=config.batching.decoder_batch_size,
    )


@dataclass
class Queries:
    """The points every object is tracked with.

    Attributes:
        points: ``(M, P, 3) float32`` (t, x, y) in input pixels.
        num_positive: the first ``num_positive`` points of each object are positive (an int; a
            list of one count per object where objects differ, as after interactive corrections).
        valid: ``(M, P) bool``; False for padding when objects were given different point counts.
        query_masks: ``(M, H, W) bool`` query masks at input resolution.
    """

    points: torch.Tensor
    num_positive: int
    valid: torch.Tensor
    query_masks: torch.Tensor

    @property
    def query_frames(self) -> torch.Tensor:
        return self.points[:, 0, 0].long()


@dataclass
class Tracks:
    """``trajectories (T, M, P, 2) float32`` input px, ``visibilities (T, M, P) bool``, and why
    each point is (not) visible: ``reasons (T, M, P) int8`` of ``VisibilityReason``."""

    trajectories: torch.Tensor
    visibilities: torch.Tensor
    reasons: torch.Tensor


def video_rng(seed: int, video_name: str) -> np.random.Generator:
    """A generator seeded by the run seed and the video name: results do not depend on which
    rank processes a video or in which order."""
    digest = np.frombuffer(video_name.encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    return np.random.default_rng([seed, int(digest.sum()), len(video_name), *digest[:16].tolist()])


def output_scale(input_hw: tuple[int, int], output_hw: tuple[int, int]) -> torch.Tensor:
    """``(2,)`` factors ``(sx, sy)`` mapping input (x, y) pixels to output pixels: the one place
    this is decided. The resize must be isotropic up to the rounding of the resized sides (1%),
    and each axis uses its own factor, so a point maps exactly as the frame does."""
    sy, sx = output_hw[0] / input_hw[0], output_hw[1] / input_hw[1]
    if abs(sy - sx) > 0.01 * max(sy, sx):
        raise ValueError(f"input frames {input_hw} and output size {output_hw} differ in aspect ratio; "
                         "SAM-PT resizes isotropically")
    return torch.tensor([sx, sy], dtype=torch.float32)


class SamPt:
    """The SAM-PT method. Stateless across videos.

    Args:
        sam: the SAM model (``sampt.sam.backends.build_sam``).
        tracker: a ``PointTracker``.
        config: ``SamPtConfig``.
    """

    def __init__(self, sam: SamModel, tracker: PointTracker, config: Optional[SamPtConfig] = None):
        self.sam = sam
        self.tracker = tracker
        self.config = config or SamPtConfig()

    @property
    def device(self) -> torch.device:
        return self.sam.device

    # -- 1. queries ----------------------------------------------------------------------------
    def make_queries(self, video: VideoItem, rng: np.random.Generator) -> Queries:
        """Query points from the objects' masks (VOS) or query masks from their points (demo)."""
        from sampt.methods.sam_pt.query_points import query_points_from_masks

        objects = video.objects
        if not objects:
            raise ValueError(f"video {video.name!r} has no objects to segment")
        with_masks = [o.mask is not None for o in objects]
        if all(with_masks):
            masks = torch.stack([o.mask.bool().cpu() for o in objects])
            query_frames = torch.tensor([o.query_frame for o in objects])
            points = query_points_from_masks(
                video.frames, masks, query_frames,
                positive_points_per_mask=self.config.query.positive_points_per_mask,
                negative_points_per_mask=self.config.query.negative_points_per_mask,
                positive_method=self.config.query.positive_point_selection_method,
                negative_method=self.config.query.negative_point_selection_method,
                rng=rng,
            )
            valid = torch.ones(points.shape[:2], dtype=torch.bool)
            return Queries(points.float(), self.config.query.positive_points_per_mask, valid, masks)
        if any(with_masks):
            raise ValueError(f"video {video.name!r}: give every object either a query mask or query points, not a mix")
        num_positive = objects[0].num_positive
        if any(o.num_positive != num_positive for o in objects):
            raise ValueError(f"video {video.name!r}: all objects must have the same number of positive points")
        longest = max(len(o.points) for o in objects)
        points = torch.zeros(len(objects), longest, 3)
        valid = torch.zeros(len(objects), longest, dtype=torch.bool)
        for m, o in enumerate(objects):
            points[m, :, 0] = o.query_frame
            points[m, : len(o.points), 1:] = o.points.float().cpu()
            valid[m, : len(o.points)] = True
        queries = Queries(points, num_positive, valid, torch.zeros(0))
        queries.query_masks = self.masks_from_points(video.frames, queries)
        return queries

    def masks_from_points(self, frames: torch.Tensor, queries: Queries) -> torch.Tensor:
        """SAM on each object's query frame prompted with its (valid) points alone -> ``(M, H, W) bool``."""
        num_negative = queries.points.shape[1] - queries.num_positive
        prompter = SamPrompter(self.sam, prompter_config(self.config, queries.num_positive, num_negative))
        masks = []
        embeddings: dict[int, ImageEmbedding] = {}  # objects sharing a query frame share it
        for m in range(queries.points.shape[0]):
            t = int(queries.points[m, 0, 0])
            if t not in embeddings:
                embeddings[t] = self.sam.embed_frames(frames[t : t + 1])[0]
            xy = queries.points[m : m + 1, :, 1:].to(self.device)
            prompts = build_point_prompts(xy, queries.valid[m : m + 1].to(self.device), prompter.config)
            prediction = prompter.predict_frame(embeddings[t], prompts)
            masks.append((prediction.logits[0] > self.sam.mask_threshold).cpu())
        return torch.stack(masks)

    # -- 2. tracking ---------------------------------------------------------------------------
    def track(self, frames: Union[FrameSource, torch.Tensor], queries: Queries,
              progress: Optional[TrackingProgress] = None) -> Tracks:
        """Track all objects' points, ``point_tracker_mask_batch_size`` objects per tracker call.

        ``frames`` is a ``FrameSource`` (or a tensor, wrapped): trackers that stream it
        (``tracker.streams(frames)``) read it window by window, the others whole.
        ``progress(n)``: n more frame steps of ``2 T`` per tracker call (see :meth:`tracking_steps`).
        """
        frames = as_frame_source(frames)
        num_frames, (height, width) = frames.num_frames, frames.size
        num_objects, num_points, _ = queries.points.shape
        trajectories = torch.zeros(num_frames, num_objects, num_points, 2)
        visibilities = torch.zeros(num_frames, num_objects, num_points, dtype=torch.bool)
        step = self.config.batching.point_tracker_mask_batch_size
        tracker_frames = frames
        if frames.in_memory or not self.tracker.streams(frames):
            # The whole video is read (and moved to the device) once for all tracker calls, not
            # once per call of point_tracker_mask_batch_size objects.
            tracker_frames = TensorFrames(frames.to_tensor().to(self.device), frames.describe())
        with torch.no_grad():
            for start in range(0, num_objects, step):
                chunk = queries.points[start : start + step]
                query_masks = None
                if self.tracker.uses_query_masks and queries.query_masks.numel():
                    # Trackers that match keypoints inside each object's mask (SuperGlue) get them.
                    query_masks = queries.query_masks[start : start + step]
                traj, vis = self.tracker.track_frames(tracker_frames, chunk.reshape(-1, 3), self.device,
                                                      query_masks=query_masks, progress=progress)
                m = chunk.shape[0]
                trajectories[:, start : start + m] = traj.reshape(num_frames, m, num_points, 2)
                visibilities[:, start : start + m] = vis.reshape(num_frames, m, num_points)
        reasons = torch.where(visibilities, VisibilityReason.VISIBLE, VisibilityReason.OCCLUDED).to(torch.int8)
        if self.config.patch_matching.use_patch_matching_filtering:
            visibilities, reasons = self._patch_filter(frames, queries, trajectories, visibilities, reasons)
        outside = mark_outside_frame(trajectories, height, width)
        reasons[outside] = VisibilityReason.OUTSIDE_FRAME
        visibilities = visibilities & ~outside & queries.valid[None]
        return Tracks(trajectories, visibilities, reasons)

    def tracking_steps(self, num_frames: int, num_objects: int) -> int:
        """The frame steps :meth:`track` reports to its ``progress`` for a video."""
        step = self.config.batching.point_tracker_mask_batch_size
        return 2 * num_frames * -(-num_objects // step)

    def _patch_filter(self, frames: FrameSource, queries, trajectories, visibilities, reasons):
        from sampt.methods.sam_pt.patch_matching import filter_visibilities, patch_similarity_over_frames

        num_frames, num_objects, num_points, _ = trajectories.shape
        flat_queries = queries.points.reshape(-1, 3)
        similarity = patch_similarity_over_frames(
            frames, trajectories.reshape(num_frames, -1, 2), flat_queries,
            patch_size=self.config.patch_matching.patch_size,
            color_order=self.config.patch_matching.patch_matching_color_order)
        filtered, filter_reasons = filter_visibilities(
            visibilities.reshape(num_frames, -1), similarity, flat_queries[:, 0].long(),
            threshold=self.config.patch_matching.patch_similarity_threshold)
        filtered = filtered.reshape(num_frames, num_objects, num_points)
        reasons = filter_reasons.reshape(num_frames, num_objects, num_points).to(torch.int8)
        return filtered, reasons

    # -- 3. SAM per frame ----------------------------------------------------------------------
    def segment(self, frames: Union[FrameSource, torch.Tensor], tracks: Tracks, num_positive: int, output_size: tuple[int, int],
                rng: np.random.Generator, timings: Optional[dict] = None,
                progress: Optional[Callable[[int], None]] = None) -> Iterator[tuple[FrameOutput, int]]:
        """Yield ``(FrameOutput, decoder_calls)`` frame by frame (``frame_batch_size`` frames of
        ``frames`` read and embedded at a time)."""
        timings = timings if timings is not None else defaultdict(float)
        num_frames = frames.shape[0]
        num_points = tracks.trajectories.shape[2]
        prompter = SamPrompter(self.sam, prompter_config(self.config, num_positive, num_points - num_positive))
        step = self.config.batching.frame_batch_size
        for start in range(0, num_frames, step):
            tic = time.perf_counter()
            embeddings = self.sam.embed_frames(frames[start : start + step])
            timings["image_encoder"] += time.perf_counter() - tic
            for offset, embedding in enumerate(embeddings):
                t = start + offset
                tic = time.perf_counter()
                prompts = build_point_prompts(tracks.trajectories[t].to(self.device),
                                              tracks.visibilities[t].to(self.device), prompter.config, rng)
                prediction = prompter.predict_frame(embedding, prompts)
                timings["mask_decoder"] += time.perf_counter() - tic
                tic = time.perf_counter()
                logits = resize_logits(prediction.logits, output_size,
                                       self.config.prompting.original_empty_mask_upsampling)
                timings["resize"] += time.perf_counter() - tic
                yield FrameOutput(t, logits, prediction.scores.cpu(), prediction.has_score.cpu()), \
                    prediction.num_decoder_calls
                if progress is not None:
                    progress(t)

    # -- everything ----------------------------------------------------------------------------
    def run(self, video: VideoItem, on_frame: Callable[[FrameOutput], None],
            on_queries: Optional[Callable[[Queries], None]] = None,
            progress: Optional[Callable[[int], None]] = None,
            tracking_progress: Optional[Callable[[int, int], None]] = None) -> MethodResult:
        """Run plain SAM-PT on one video, calling ``on_frame`` with each frame's output in order
        (SAM-PT-reinit is ``sampt.methods.sam_pt.reinit.run_with_reinit``; ``SamPtMethod`` picks).

        ``on_queries`` receives the queries (with the query masks, which for point queries are
        SAM's prediction) before the first frame is segmented; ``progress`` each segmented
        frame's index; ``tracking_progress(steps, total)`` the tracker's frame steps.
        """
        timings: dict[str, float] = defaultdict(float)
        rng = video_rng(self.config.seed, video.name)
        frames = video.frames
        scale = output_scale(tuple(frames.shape[-2:]), video.output_size)
        tic = time.perf_counter()
        queries = self.make_queries(video, rng)
        timings["query_points"] = time.perf_counter() - tic
        if on_queries is not None:
            on_queries(queries)
        tic = time.perf_counter()
        tracker_progress = None
        if tracking_progress is not None:
            total_steps = self.tracking_steps(frames.shape[0], queries.points.shape[0])
            tracker_progress = lambda steps: tracking_progress(steps, total_steps)  # noqa: E731
        tracks = self.track(frames, queries, tracker_progress)
        timings["tracking"] = time.perf_counter() - tic
        num_frames, num_objects = frames.shape[0], queries.points.shape[0]
        scores_per_frame = torch.full((num_frames, num_objects), float("-inf"))
        has_score = torch.zeros(num_frames, num_objects, dtype=torch.bool)
        calls = 0
        for output, frame_calls in self.segment(frames, tracks, queries.num_positive, video.output_size, rng,
                                                timings, progress):
            scores_per_frame[output.t], has_score[output.t] = output.scores, output.has_score
            calls += frame_calls
            tic = time.perf_counter()
            on_frame(output)
            timings["consumer"] += time.perf_counter() - tic
        return MethodResult(
            queries=queries,
            trajectories=tracks.trajectories * scale,
            visibilities=tracks.visibilities,
            reasons=tracks.reasons,
            scores_per_frame=scores_per_frame,
            scores=video_scores(scores_per_frame, has_score),
            timings=dict(timings),
            num_decoder_calls=calls,
            num_encoded_frames=num_frames + frames_encoded_for_queries(video),
        )


def frames_encoded_for_queries(video: VideoItem) -> int:
    """Frames ``SamPt.masks_from_points`` embeds: each query frame of point queries, once."""
    if all(o.mask is not None for o in video.objects):
        return 0
    return len({o.query_frame for o in video.objects})


def video_scores(scores_per_frame: torch.Tensor, has_score: torch.Tensor) -> torch.Tensor:
    """``(T, M)`` -> ``(M,)``: mean over the frames that produced a prediction (0 if none)."""
    counted = torch.where(has_score, scores_per_frame, torch.zeros_like(scores_per_frame))
    return counted.sum(0) / has_score.sum(0).clamp(min=1)


def resize_logits(logits: torch.Tensor, output_size: tuple[int, int],
                  original_empty_mask_upsampling: bool = False) -> torch.Tensor:
    """``(M, H, W)`` logits -> ``(M, h, w)`` float32 by bilinear interpolation.

    The result is finite (``-inf`` floored at ``EMPTY_LOGIT``) except, with
    ``original_empty_mask_upsampling``, where interpolating ``-inf`` gives NaN, as in the
    original (see ``SamPtConfig.original_empty_mask_upsampling``).
    """
    logits = logits.float()
    if original_empty_mask_upsampling and tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
        return torch.where(logits.isnan(), logits, logits.clamp(min=EMPTY_LOGIT))
    logits = logits.clamp(min=EMPTY_LOGIT)
    if tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
    return logits
