"""SAM-PT's simulated annotator (the original's ``SamPtInteractive``), run on the interaction engine.

Each object is corrected in its own session (the original runs one mask at a time,
``masks_batch_size=1``), against its ground truth, frame by frame:

1. The object starts from its query points (they count as interactions), tracked through the video;
   with ``disable_point_tracking`` it starts with no point and every point prompts its own frame only.
2. On the current frame the mask is predicted (positive points, then all points with that low-res
   mask, then the box refinement: the engine's ``per_prompt`` decode rule) and compared with the
   ground truth. While its IoU is below the pass's threshold and the frame's budget lasts:

   * every visible point is categorised at its rounded position: a positive point is correct on a
     true positive or false negative pixel, a negative one on a true negative or false positive;
   * the first incorrect negative point is removed from this frame on; else the first incorrect
     positive point; else a point is added in the largest cluster of false negatives (positive) or
     of false positives (negative), whichever region is larger, and tracked from this frame on;
   * the frame is predicted again; the mean J and F over all frames are recomputed (the engine
     re-decodes only the frames whose prompts changed).

3. A pass ends after the last frame. Online mode runs one pass at one threshold; offline mode runs
   the fixed ladder of thresholds, continuing with the points of the previous pass. The run ends when
   the ladder or the budget (``interactions_max``) is exhausted; the point set of the pass with the
   best mean J is kept when it beats the final one.

Documented differences from the original (options where they matter):

* The largest cluster is the largest 8-connected component of the error region (the original runs
  DBSCAN on a random subset of its pixels); when it has fewer than ``cluster_min_pixels`` pixels the
  whole region is used, as in the original. The point is the first of ``kmedoids_candidates``
  k-medoids of a random subset of ``kmedoids_subset`` of its pixels (``correction_point="kmedoids"``,
  seeded) or, deterministically, its pixel farthest from the region's border (``"interior"``).
* A rounded point position outside the frame is clamped to it (the original would index past it).
* With ``disable_point_tracking`` the original does not recompute the overall J/F after a
  correction (its curve stays flat); ``original_flat_baseline_curve=True`` reproduces that, the
  default recomputes it (a frame's change costs one decode).

Shapes: ground truth ``(T, H, W) bool`` at the frames' input resolution (the simulation decides
there, as the original did); points ``(x, y)`` in input pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from sampt.metrics.functional_jf import boundary_f_measure, region_similarity
from sampt.methods.interactive.engine import InteractiveSession

#: The original's fixed ladder of offline thresholds.
OFFLINE_IOU_THRESHOLDS = (0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95)

CORRECTION_POINT_RULES = ("kmedoids", "interior")


@dataclass(frozen=True)
class SimulationOptions:
    """The simulated annotator's rules (the original's ``SamPtInteractive`` arguments).

    Attributes:
        interactions_max: the budget of interactions per object; query points count.
        interactions_max_per_frame: corrections on one frame before moving on.
        online: one pass at ``online_iou_threshold`` (True) or the ladder ``offline_iou_thresholds``.
        online_iou_threshold: the frame IoU an online pass asks for.
        offline_iou_thresholds: the offline ladder, one pass per threshold.
        disable_point_tracking: the per-frame SAM baseline: no query points, each correction
            prompts its own frame only; one pass at threshold 1.0 with a budget of
            ``interactions_max_per_frame`` per frame.
        correction_point: ``kmedoids`` (the original's choice, seeded) or ``interior``.
        cluster_min_pixels: a largest cluster smaller than this falls back to the whole region.
        kmedoids_candidates / kmedoids_subset: k and the subset size of the k-medoids choice.
        original_flat_baseline_curve: reproduce the original's constant overall scores in the
            no-tracking baseline (see the module docstring).
    """

    interactions_max: int = 300
    interactions_max_per_frame: int = 3
    online: bool = False
    online_iou_threshold: float = 0.9
    offline_iou_thresholds: tuple[float, ...] = OFFLINE_IOU_THRESHOLDS
    disable_point_tracking: bool = False
    correction_point: str = "kmedoids"
    cluster_min_pixels: int = 180
    kmedoids_candidates: int = 3
    kmedoids_subset: int = 720
    original_flat_baseline_curve: bool = False

    def __post_init__(self) -> None:
        if self.interactions_max < 1 or self.interactions_max_per_frame < 1:
            raise ValueError("simulation.interactions_max and interactions_max_per_frame must be >= 1, got "
                             f"{self.interactions_max} and {self.interactions_max_per_frame}")
        if self.correction_point not in CORRECTION_POINT_RULES:
            raise ValueError(f"simulation.correction_point must be one of {', '.join(CORRECTION_POINT_RULES)}, "
                             f"got {self.correction_point!r}")
        if not self.online and not self.offline_iou_thresholds:
            raise ValueError("simulation.offline_iou_thresholds is empty (offline mode needs at least one threshold)")
        for value in (self.online_iou_threshold, *self.offline_iou_thresholds):
            if not 0 < value <= 1:
                raise ValueError(f"simulation IoU thresholds must be in (0, 1], got {value}")
        if self.kmedoids_candidates < 1 or self.kmedoids_subset < 1:
            raise ValueError("simulation.kmedoids_candidates and kmedoids_subset must be >= 1")

    def thresholds(self) -> list[float]:
        if self.disable_point_tracking:
            return [1.0]
        return [self.online_iou_threshold] if self.online else list(self.offline_iou_thresholds)


# -- choosing a correction point -----------------------------------------------------------

def largest_cluster(region: np.ndarray, min_pixels: int) -> np.ndarray:
    """``(H, W) bool`` the largest 8-connected component of ``region``, or ``region`` itself when
    that component has fewer than ``min_pixels`` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    if count <= 1:
        return region
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_pixels:
        return region
    return labels == largest


def correction_point(region: np.ndarray, options: SimulationOptions, rng: np.random.Generator) -> tuple[float, float]:
    """``(x, y)`` where the annotator clicks to correct ``region`` ``(H, W) bool`` (not empty)."""
    cluster = largest_cluster(region, options.cluster_min_pixels)
    if options.correction_point == "interior":
        # The pixel farthest from the cluster's border (first in raster order among equals).
        distance = cv2.distanceTransform(np.pad(cluster, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        return float(x), float(y)
    from sampt.methods.sam_pt.query_points import kmedoids_points

    x, y = kmedoids_points(cluster, options.kmedoids_candidates, rng, subsample_size=options.kmedoids_subset)[0]
    return float(x), float(y)


# -- scores over the video -----------------------------------------------------------------

class FrameScores:
    """J and F of one object on every frame, recomputed only where the engine's results changed."""

    def __init__(self, session: InteractiveSession, object_row: int, ground_truth: np.ndarray):
        self.session = session
        self.row = object_row
        self.ground_truth = ground_truth
        num_frames = ground_truth.shape[0]
        self.j = np.zeros(num_frames)
        self.f = np.zeros(num_frames)
        self._revision = [-1] * num_frames

    def frame(self, t: int) -> tuple[np.ndarray, float, float]:
        """``(mask (H, W) bool, J, F)`` of frame ``t`` under the current point set."""
        revision = self.session.revision(t)
        mask = self.session.masks(t)[self.row].numpy()
        if revision != self._revision[t]:
            self.j[t] = region_similarity(self.ground_truth[t], mask)
            self.f[t] = boundary_f_measure(self.ground_truth[t], mask)
            self._revision[t] = revision
        return mask, float(self.j[t]), float(self.f[t])

    def overall(self) -> tuple[float, float]:
        """Mean J and mean F over all frames."""
        for t in range(len(self.j)):
            if self.session.revision(t) != self._revision[t]:
                self.frame(t)
        return float(self.j.mean()), float(self.f.mean())


# -- one object ----------------------------------------------------------------------------

@dataclass
class ObjectSimulation:
    """What the simulated annotator did for one object.

    Attributes:
        session: the engine session holding the final point set (its history is the interactions).
        history: one JSON-able entry per correction (the original's fields, plus the point's
            engine id and position and the call's seconds).
        curve: ``(interactions used, mean J, mean F)`` after the query points and after each
            correction, for the curve of J&F against interactions.
        passes: per finished pass its threshold, interactions used and mean J and F.
        kept_pass: the threshold of the pass whose point set was restored at the end, or None.
        interactions_used: interactions of the final point set (query points included).
    """

    session: InteractiveSession
    history: list[dict[str, Any]]
    curve: list[tuple[int, float, float]]
    passes: list[dict[str, Any]]
    kept_pass: Optional[float]
    interactions_used: int


def simulate_object(session: InteractiveSession, object_id: int, first_frame: int,
                    query_points: Sequence[tuple[float, float, bool]], ground_truth: np.ndarray,
                    options: SimulationOptions, rng: np.random.Generator,
                    on_interaction: Optional[Callable[[dict[str, Any]], None]] = None) -> ObjectSimulation:
    """Run the simulated annotator for one object in ``session`` (an empty lazy session).

    Args:
        session: the engine session (``decode_rule="per_prompt"``, ``eager=False`` recommended).
        object_id: the object's id in the session.
        first_frame: the object's query frame.
        query_points: ``(x, y, positive)`` on ``first_frame`` (ignored without point tracking).
        ground_truth: ``(T, H, W) bool`` the object's masks at the session's frame size.
        on_interaction: called with each history entry as it happens (progress, logging).
    """
    num_frames = session.num_frames
    if ground_truth.shape != (num_frames, session.height, session.width):
        raise ValueError(f"ground truth of object {object_id} is {ground_truth.shape}, expected "
                         f"{(num_frames, session.height, session.width)} (frames at input size)")
    tracking = not options.disable_point_tracking
    session.add_object(object_id, first_frame, list(query_points) if tracking else [], backward=True)
    row = session.object_ids.index(object_id)
    scores = FrameScores(session, row, ground_truth)
    budget = options.interactions_max_per_frame * num_frames if not tracking else options.interactions_max
    used = len(query_points) if tracking else 0
    thresholds = options.thresholds()
    history: list[dict[str, Any]] = []
    passes: list[dict[str, Any]] = []
    mean_j, mean_f = scores.overall()
    curve = [(used, mean_j, mean_f)]
    threshold = thresholds.pop(0)
    t, on_frame, pass_j, pass_f = 0, 0, [], []
    while used < budget:
        if t == num_frames:
            passes.append({"threshold": threshold, "interactions": used, "history_length": len(session.history),
                           "mean_j": float(np.mean(pass_j)), "mean_f": float(np.mean(pass_f))})
            if not thresholds:
                break
            threshold = thresholds.pop(0)
            t, on_frame, pass_j, pass_f = 0, 0, [], []
        mask, j_before, f_before = scores.frame(t)
        if j_before >= threshold:
            pass_j.append(j_before)
            pass_f.append(f_before)
            t, on_frame = t + 1, 0
            continue
        tic = time.perf_counter()
        action = _correct(session, object_id, t, mask, ground_truth[t], tracking, options, rng)
        _, j_after, f_after = scores.frame(t)
        if tracking or not options.original_flat_baseline_curve:
            next_j, next_f = scores.overall()
        else:
            next_j, next_f = mean_j, mean_f
        used += 1
        on_frame += 1
        entry = {**action, "frame": t, "iou_before": j_before, "iou_after": j_after,
                 "boundary_before": f_before, "boundary_after": f_after,
                 "interaction": used, "threshold": threshold,
                 "overall_j_before": mean_j, "overall_j_after": next_j,
                 "overall_f_before": mean_f, "overall_f_after": next_f,
                 "jf_before": (mean_j + mean_f) / 2, "jf_after": (next_j + next_f) / 2,
                 "seconds": time.perf_counter() - tic}
        history.append(entry)
        curve.append((used, next_j, next_f))
        if on_interaction is not None:
            on_interaction(entry)
        mean_j, mean_f = next_j, next_f
        if j_after >= threshold or on_frame >= options.interactions_max_per_frame:
            pass_j.append(j_after)
            pass_f.append(f_after)
            t, on_frame = t + 1, 0

    final_j, _ = scores.overall()
    kept = None
    if passes:
        best = max(passes, key=lambda p: p["mean_j"])
        if best["mean_j"] > final_j:
            # Back to that pass's point set: undo is a state switch, no tracking.
            while len(session.history) > best["history_length"]:
                session.undo()
            kept = best["threshold"]
            used = best["interactions"]
    return ObjectSimulation(session, history, curve, passes, kept, used)


def _correct(session: InteractiveSession, object_id: int, t: int, mask: np.ndarray, ground_truth: np.ndarray,
             tracking: bool, options: SimulationOptions, rng: np.random.Generator) -> dict[str, Any]:
    """One correction on frame ``t``; returns what was done (action, type, point)."""
    height, width = mask.shape
    false_negative, false_positive = ~mask & ground_truth, mask & ~ground_truth
    visible = {point.point_id: (x, y) for point, x, y in session.visible_points(t) if point.object_id == object_id}
    incorrect_negative, incorrect_positive = [], []
    for index, point in enumerate(session.points(object_id)):
        if point.point_id not in visible:
            continue
        x, y = visible[point.point_id]
        col, line = min(max(int(round(x)), 0), width - 1), min(max(int(round(y)), 0), height - 1)
        inside = bool(ground_truth[line, col])  # TP or FN for a positive point, TN or FP for a negative one
        if point.positive and not inside:
            incorrect_positive.append((index, point))
        elif not point.positive and inside:
            incorrect_negative.append((index, point))
    for wrong, kind in ((incorrect_negative, "negative"), (incorrect_positive, "positive")):
        if wrong:
            index, point = wrong[0]
            session.remove_point(point.point_id, t)
            return {"action": "remove", "type": kind, "point_index": index, "point_id": point.point_id,
                    "x": visible[point.point_id][0], "y": visible[point.point_id][1]}
    positive = int(false_negative.sum()) > int(false_positive.sum())
    region = false_negative if positive else false_positive
    x, y = correction_point(region, options, rng)
    index = len(session.points(object_id))
    report = session.add_point(object_id, t, x, y, positive=positive, track=tracking)
    return {"action": "add", "type": "positive" if positive else "negative", "point_index": index,
            "point_id": report.point_ids[0], "x": x, "y": y}


def curve_rows(video: str, object_id: int, simulation: ObjectSimulation) -> list[dict[str, Any]]:
    """The J/F-vs-interactions curve as CSV rows."""
    return [{"video": video, "object": object_id, "interactions": n, "J": j, "F": f, "J&F": (j + f) / 2}
            for n, j, f in simulation.curve]

