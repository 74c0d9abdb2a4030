"""YouTube-VIS video mask AP (the UVO / YouTube-VIS protocol), as functions and as a torchmetric.

The semantics follow the YouTube-VIS evaluation code that SAM-PT ships (``ytvoseval.py``); see
``shared/vectors/vis_ap/README.md`` for the full list. In short:

- **Tube IoU** between a detection and a ground-truth (GT) object: the sum over all frames of the
  per-frame intersections divided by the sum over all frames of the per-frame unions (an absent
  frame, ``None`` / JSON ``null``, is an empty mask); 0 when the union sum is 0. Areas are exact
  integer pixel counts, so each IoU is a single float64 division of two integers.
- **Area** of an object, used for the area ranges small ``[0, 128^2]``, medium
  ``[128^2, 256^2]``, large ``[256^2, 1e10]`` (inclusive at both ends): for a GT, the mean of
  its ``areas`` entries that are neither ``null`` nor 0; for a detection, the mean of its
  non-zero per-frame mask areas (0 when it is empty everywhere).
- **iscrowd** GTs are ignored regions with the plain tube IoU; any number of detections can
  match them and such detections are neither true nor false positives.
- COCO-style greedy matching per video and category at IoU thresholds
  ``linspace(0.5, 0.95, 10)`` (IoU >= threshold), at most 100 detections per video and category
  (stable sort by descending score, ties in input order); per-video lists are concatenated in
  ascending video-id order before the global stable score sort; precision with
  ``eps = np.spacing(1)``, interpolated at ``linspace(0, 1, 101)`` recall thresholds.
- Twelve numbers, raw in [0, 1] and -1 where undefined (no non-ignored GT in an area range):
  ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl``.

Deliberate differences from the reference (none of which changes a number on valid inputs):
results and GT masks whose size differs from their video's ``(height, width)``, sequences of the
wrong length, unknown video ids and missing fields raise :class:`~sampt.errors.InputFormatError`
instead of asserting or silently scoring 0; an empty results list is scored (everything a miss)
instead of failing; a GT annotation with id 0 is matched like any other (the reference treats its
matches as false positives); a GT without an ``areas`` field takes its areas from its masks.

Functional half: :func:`load_ground_truth`, :func:`load_results`, :func:`tube_intersections`,
:func:`tube_iou`, :func:`evaluate_video`, :func:`accumulate`, :func:`summarize`,
:func:`evaluate_vis`. Metric half: :class:`VideoAP`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from sampt.errors import InputFormatError

# Exactly the reference's parameter arrays: numpy linspace values (ten recall thresholds are one
# ulp above i/100, and the 0.9 IoU threshold is 0.8999999999999999), not exact decimals.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
# Video ranges (average per-frame area), not COCO's image ranges 32^2 / 96^2.
AREA_RANGES = ((0.0, 1e5**2), (0.0, 128.0**2), (128.0**2, 256.0**2), (256.0**2, 1e5**2))
AREA_RANGE_LABELS = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# (is_precision, iou threshold or None = all, area label, maxDets) per stat, in STAT_NAMES order.
_STAT_DEFINITIONS = (
    (True, None, "all", 100),
    (True, 0.5, "all", 100),
    (True, 0.75, "all", 100),
    (True, None, "small", 100),
    (True, None, "medium", 100),
    (True, None, "large", 100),
    (False, None, "all", 1),
    (False, None, "all", 10),
    (False, None, "all", 100),
    (False, None, "small", 100),
    (False, None, "medium", 100),
    (False, None, "large", 100),
)

RleDict = dict  # pycocotools RLE: {"size": [H, W], "counts": str | bytes}
FrameSegmentation = Optional[RleDict]  # None = object absent on that frame


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class VisVideo:
    """One video of the GT ``videos`` list: id, frame size ``(height, width)``, frame count."""

    video_id: int
    height: int
    width: int
    num_frames: int


@dataclass
class VisGroundTruthObject:
    """One GT annotation (a tube) of a video.

    Attributes:
        annotation_id: the annotation ``id``.
        video_id, category_id: as in the file.
        iscrowd: crowd region (ignored in matching, never a miss).
        avg_area: float64 mean of the truthy entries of the ``areas`` field (0 if none).
        rles: per-frame compressed RLE (``None`` where absent), length = the video's frame count.
        area_sum: total pixel count of ``rles`` over all frames (used for tube unions).
    """

    annotation_id: int
    video_id: int
    category_id: int
    iscrowd: bool
    avg_area: float
    rles: list
    area_sum: int


@dataclass
class VisGroundTruth:
    """A loaded YouTube-VIS / UVO GT file.

    Attributes:
        videos: video id -> :class:`VisVideo`, in file order.
        category_ids: evaluated category ids, ascending.
        objects_by_video: video id -> that video's GT objects in file order (all categories).
        source: name of the file (or "ground truth") used in error messages.
    """

    videos: dict
    category_ids: list
    objects_by_video: dict
    source: str = "ground truth"

    @property
    def video_ids(self) -> list:
        """All GT video ids, ascending (the reference's evaluation and concatenation order)."""
        return sorted(self.videos)


@dataclass
class VisDetection:
    """One detection (a predicted tube).

    Attributes:
        detection_id: 1-based index in the results list (the reference's detection id).
        video_id, category_id, score: as given.
        rles: per-frame compressed RLE (``None`` where absent).
        avg_area: float64 mean of the non-zero per-frame areas (0 if none).
    """

    detection_id: int
    video_id: int
    category_id: int
    score: float
    rles: list
    avg_area: float


def _read_json(path: Union[str, os.PathLike], what: str) -> Any:
    """Read a JSON file; raise InputFormatError naming ``path`` when it is missing or malformed."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise InputFormatError(f"{what} file {os.fspath(path)!r} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputFormatError(f"{what} file {os.fspath(path)!r} is not valid JSON: {error}") from error


def _as_int(value: Any, where: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputFormatError(f"{source}: {where} must be an integer, got {value!r}")
    return int(value)


def _to_compressed_rle(segmentation: Any, height: int, width: int, where: str, source: str) -> FrameSegmentation:
    """Convert one frame's segmentation to a compressed RLE dict, or ``None`` if absent.

    Accepts compressed RLE (``counts`` str/bytes), uncompressed RLE (``counts`` list) and
    polygons (list of ``[x0, y0, x1, y1, ...]``), like the reference's ``annToRLE``. Falsy values
    (``None``, ``[]``, ``{}``) mean the object is absent on that frame.
    """
    if not segmentation:
        return None
    try:
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
            rle = segmentation
        else:
            raise InputFormatError(
                f"{source}: {where} must be an RLE dict with 'size' and 'counts', a polygon list or "
                f"null, got {type(segmentation).__name__}"
            )
        size = [int(s) for s in rle["size"]]
    except InputFormatError:
        raise
    except Exception as error:  # pycocotools raises a variety of errors on malformed input
        raise InputFormatError(f"{source}: {where} is not a valid segmentation: {error}") from error
    if size != [height, width]:
        raise InputFormatError(
            f"{source}: {where} has mask size {size} but its video is (height, width) = "
            f"{[height, width]}"
        )
    return rle


def _frame_areas(rles: Sequence[FrameSegmentation]) -> np.ndarray:
    """Per-frame pixel counts of ``rles``: ``(T,) int64``, 0 for absent frames."""
    areas = np.zeros(len(rles), dtype=np.int64)
    present = [index for index, rle in enumerate(rles) if rle is not None]
    if present:
        areas[present] = mask_utils.area([rles[index] for index in present])
    return areas


def _detection_avg_area(rles: Sequence[FrameSegmentation]) -> float:
    """Mean of the non-zero per-frame areas (0 if none), computed as the reference does."""
    present = [rle for rle in rles if rle is not None]
    if not present:
        return 0.0
    nonzero = [area for area in mask_utils.area(present) if area]
    return float(np.array(nonzero).mean()) if nonzero else 0.0


def _ground_truth_avg_area(areas: Sequence[Any]) -> float:
    """Mean of the truthy entries of a GT ``areas`` field (0 if none), as the reference does."""
    truthy = [area for area in areas if area]
    return float(np.array(truthy).mean()) if truthy else 0.0


def load_ground_truth(gt: Union[Mapping, str, os.PathLike], source: Optional[str] = None) -> VisGroundTruth:
    """Load YouTube-VIS / UVO ground truth (a JSON dict or the path of a JSON file).

    Every video of ``videos`` is evaluated. The evaluated categories are the ids of
    ``categories`` (or, if that list is absent, the annotations' category ids).

    Raises:
        InputFormatError: malformed file, missing fields, sequences whose length differs from
            the video's frame count, masks whose size differs from the video's.
    """
    if not isinstance(gt, Mapping):
        source = source or os.fspath(gt)
        gt = _read_json(gt, "ground-truth")
    source = source or "ground truth"
    if not isinstance(gt, Mapping) or not isinstance(gt.get("videos"), list):
        raise InputFormatError(f"{source}: expected a JSON object with a 'videos' list (YouTube-VIS format)")
    annotations = gt.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputFormatError(f"{source}: 'annotations' must be a list")

    videos: dict = {}
    for index, video in enumerate(gt["videos"]):
        where = f"videos[{index}]"
        if not isinstance(video, Mapping) or "id" not in video:
            raise InputFormatError(f"{source}: {where} must be an object with an 'id'")
        video_id = _as_int(video["id"], f"{where}.id", source)
        if video_id in videos:
            raise InputFormatError(f"{source}: video id {video_id} appears twice in 'videos'")
        try:
            height = _as_int(video["height"], f"{where}.height", source)
            width = _as_int(video["width"], f"{where}.width", source)
        except KeyError as error:
            raise InputFormatError(f"{source}: {where} has no {error.args[0]!r}") from error
        if "length" in video:
            num_frames = _as_int(video["length"], f"{where}.length", source)
        elif isinstance(video.get("file_names"), list):
            num_frames = len(video["file_names"])
        else:
            raise InputFormatError(f"{source}: {where} has neither 'length' nor 'file_names'")
        videos[video_id] = VisVideo(video_id, height, width, num_frames)

    if isinstance(gt.get("categories"), list):
        category_ids = sorted({_as_int(c.get("id") if isinstance(c, Mapping) else None,
                                       f"categories[{i}].id", source)
                               for i, c in enumerate(gt["categories"])})
    else:
        category_ids = sorted({_as_int(a.get("category_id"), f"annotations[{i}].category_id", source)
                               for i, a in enumerate(annotations) if isinstance(a, Mapping)})

    objects_by_video: dict = {video_id: [] for video_id in videos}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, Mapping):
            raise InputFormatError(f"{source}: {where} must be an object")
        for key in ("id", "video_id", "category_id", "iscrowd", "segmentations"):
            if key not in annotation:
                raise InputFormatError(f"{source}: {where} has no {key!r} field")
        video_id = _as_int(annotation["video_id"], f"{where}.video_id", source)
        if video_id not in videos:
            raise InputFormatError(f"{source}: {where} refers to video id {video_id}, not in 'videos'")
        video = videos[video_id]
        segmentations = annotation["segmentations"]
        if not isinstance(segmentations, list) or len(segmentations) != video.num_frames:
            length = len(segmentations) if isinstance(segmentations, list) else type(segmentations).__name__
            raise InputFormatError(
                f"{source}: {where}.segmentations must be a list of {video.num_frames} per-frame "
                f"masks (the length of video {video_id}), got {length}"
            )
        rles = [
            _to_compressed_rle(seg, video.height, video.width, f"{where}.segmentations[{t}]", source)
            for t, seg in enumerate(segmentations)
        ]
        frame_areas = _frame_areas(rles)
        # The reference trusts the file's `areas` for the area ranges, not the masks.
        areas = annotation.get("areas")
        avg_area = _ground_truth_avg_area(areas) if isinstance(areas, list) else _ground_truth_avg_area(
            frame_areas.tolist())
        objects_by_video[video_id].append(
            VisGroundTruthObject(
                annotation_id=_as_int(annotation["id"], f"{where}.id", source),
                video_id=video_id,
                category_id=_as_int(annotation["category_id"], f"{where}.category_id", source),
                iscrowd=bool(annotation["iscrowd"]),
                avg_area=avg_area,
                rles=rles,
                area_sum=int(frame_areas.sum()),
            )
        )
    return VisGroundTruth(videos=videos, category_ids=category_ids, objects_by_video=objects_by_video,
                          source=source)


def _default_category(gt: VisGroundTruth, where: str, source: str) -> int:
    if len(gt.category_ids) == 1:
        return gt.category_ids[0]
    raise InputFormatError(
        f"{source}: {where} has no 'category_id' and the ground truth has {len(gt.category_ids)} "
        f"categories {gt.category_ids}"
    )


def _segmentations_to_rles(segmentations: Any, video: VisVideo, where: str, source: str) -> list:
    """Per-frame RLEs (None where absent) of a detection given as RLE list or ``(T, H, W)`` masks."""
    if isinstance(segmentations, (np.ndarray, torch.Tensor)):
        masks = segmentations.detach().cpu().numpy() if isinstance(segmentations, torch.Tensor) else segmentations
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (video.height, video.width):
            raise InputFormatError(
                f"{source}: {where} masks must be (T, H, W) = ({video.num_frames}, {video.height}, "
                f"{video.width}) for video {video.video_id}, got {tuple(masks.shape)}"
            )
        if masks.shape[0] != video.num_frames:
            raise InputFormatError(
                f"{source}: {where} has {masks.shape[0]} frames but video {video.video_id} has "
                f"{video.num_frames}"
            )
        return encode_masks(masks)
    if not isinstance(segmentations, (list, tuple)):
        raise InputFormatError(
            f"{source}: {where} must be a list of per-frame RLE dicts or a (T, H, W) mask array, "
            f"got {type(segmentations).__name__}"
        )
    if len(segmentations) != video.num_frames:
        raise InputFormatError(
            f"{source}: {where} has {len(segmentations)} frames but video {video.video_id} has "
            f"{video.num_frames}"
        )
    return [
        _to_compressed_rle(seg, video.height, video.width, f"{where}[{t}]", source)
        for t, seg in enumerate(segmentations)
    ]


def encode_masks(masks: np.ndarray) -> list:
    """Encode ``(T, H, W)`` boolean masks as T compressed RLE dicts (``counts`` as bytes)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InputFormatError(f"masks must be (T, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, T) uint8 in Fortran order.
    return list(mask_utils.encode(np.asfortranarray(np.moveaxis(masks != 0, 0, -1), dtype=np.uint8)))


def load_results(results: Union[Sequence[Mapping], str, os.PathLike], gt: VisGroundTruth,
                 source: Optional[str] = None) -> list:
    """Load a YouTube-VIS results list (or the path of its JSON file) as :class:`VisDetection`.

    Each entry needs ``video_id``, ``score`` and ``segmentations`` (one RLE dict or ``null`` per
    frame; a ``(T, H, W)`` mask array is accepted too); ``category_id`` defaults to the GT's
    single category. Detections of categories the GT does not evaluate are dropped, like the
    reference does. Extra keys (``bbox``, ``areas``) are ignored.

    Raises:
        InputFormatError: unknown video id, wrong frame count or mask size, missing fields.
    """
    if not isinstance(results, (list, tuple)):
        source = source or os.fspath(results)
        results = _read_json(results, "results")
        if not isinstance(results, list):
            raise InputFormatError(f"results file {source!r} must contain a JSON list of detections")
    source = source or "results"
    evaluated_categories = set(gt.category_ids)
    detections = []
    for index, entry in enumerate(results):
        where = f"entry {index}"
        if not isinstance(entry, Mapping):
            raise InputFormatError(f"{source}: {where} must be an object, got {type(entry).__name__}")
        for key in ("video_id", "score", "segmentations"):
            if key not in entry:
                raise InputFormatError(f"{source}: {where} has no {key!r} field")
        video_id = _as_int(entry["video_id"], f"{where}.video_id", source)
        if video_id not in gt.videos:
            raise InputFormatError(
                f"{source}: {where} refers to video id {video_id}, which is not in the ground truth "
                f"{gt.source!r} ({len(gt.videos)} videos)"
            )
        try:
            score = float(entry["score"])
        except (TypeError, ValueError) as error:
            raise InputFormatError(f"{source}: {where}.score must be a number, got {entry['score']!r}") from error
        if "category_id" in entry:
            category_id = _as_int(entry["category_id"], f"{where}.category_id", source)
        else:
            category_id = _default_category(gt, where, source)
        rles = _segmentations_to_rles(entry["segmentations"], gt.videos[video_id], f"{where}.segmentations",
                                      source)
        if category_id not in evaluated_categories:
            continue
        detections.append(VisDetection(index + 1, video_id, category_id, score, rles, _detection_avg_area(rles)))
    return detections


# --------------------------------------------------------------------------------------------
# Tube IoU
# --------------------------------------------------------------------------------------------


def tube_intersections(dt_rles: Sequence[Sequence[FrameSegmentation]],
                       gt_rles: Sequence[Sequence[FrameSegmentation]]) -> np.ndarray:
    """Summed per-frame intersections of every (detection, GT) pair of one video.

    Args:
        dt_rles: D sequences of T per-frame compressed RLEs (``None`` = absent).
        gt_rles: G sequences of T per-frame compressed RLEs (``None`` = absent).

    Returns:
        ``(D, G) int64``: sum over frames of ``|d_t ∩ g_t|``.
    """
    num_dt, num_gt = len(dt_rles), len(gt_rles)
    intersections = np.zeros((num_dt, num_gt), dtype=np.int64)
    if num_dt == 0 or num_gt == 0:
        return intersections
    num_frames = len(dt_rles[0])
    if any(len(seq) != num_frames for seq in list(dt_rles) + list(gt_rles)):
        raise ValueError("tube_intersections: all per-frame sequences must have the same length")
    for t in range(num_frames):
        dt_present = [d for d in range(num_dt) if dt_rles[d][t] is not None]
        gt_present = [g for g in range(num_gt) if gt_rles[g][t] is not None]
        if not dt_present or not gt_present:
            continue
        # Only pairs whose bounding boxes overlap can intersect; empty masks have a 0x0 box.
        dt_boxes = mask_utils.toBbox([dt_rles[d][t] for d in dt_present])
        gt_boxes = mask_utils.toBbox([gt_rles[g][t] for g in gt_present])
        overlap_x = np.minimum(dt_boxes[:, None, 0] + dt_boxes[:, None, 2], gt_boxes[None, :, 0] + gt_boxes[None, :, 2]) \
            - np.maximum(dt_boxes[:, None, 0], gt_boxes[None, :, 0])
        overlap_y = np.minimum(dt_boxes[:, None, 1] + dt_boxes[:, None, 3], gt_boxes[None, :, 1] + gt_boxes[None, :, 3]) \
            - np.maximum(dt_boxes[:, None, 1], gt_boxes[None, :, 1])
        for i, j in zip(*np.nonzero((overlap_x > 0) & (overlap_y > 0))):
            d, g = dt_present[i], gt_present[j]
            intersections[d, g] += int(mask_utils.area(mask_utils.merge([dt_rles[d][t], gt_rles[g][t]],
                                                                         intersect=True)))
    return intersections


def iou_from_sums(intersections: np.ndarray, dt_area_sums: np.ndarray, gt_area_sums: np.ndarray) -> np.ndarray:
    """Tube IoU from exact integer sums.

    Args:
        intersections: ``(D, G) int64`` summed intersections.
        dt_area_sums: ``(D,) int64`` summed per-frame detection areas.
        gt_area_sums: ``(G,) int64`` summed per-frame GT areas.

    Returns:
        ``(D, G) float64`` intersection / union (union = |d| + |g| - |d ∩ g| summed), 0 where the
        union is 0. Exact integers below 2^53, so one correctly rounded division per entry.
    """
    intersections = np.asarray(intersections, dtype=np.int64)
    unions = (np.asarray(dt_area_sums, dtype=np.int64)[:, None] + np.asarray(gt_area_sums, dtype=np.int64)[None, :]
              - intersections)
    ious = np.zeros(intersections.shape, dtype=np.float64)
    positive = unions > 0
    ious[positive] = intersections[positive].astype(np.float64) / unions[positive].astype(np.float64)
    return ious


def tube_iou(dt_rles: Sequence[Sequence[FrameSegmentation]],
             gt_rles: Sequence[Sequence[FrameSegmentation]]) -> np.ndarray:
    """Tube IoU of every (detection, GT) pair of one video.

    Args:
        dt_rles: D sequences of T per-frame compressed RLEs (``None`` = absent).
        gt_rles: G sequences of T per-frame compressed RLEs (``None`` = absent).

    Returns:
        ``(D, G) float64``: summed intersections / summed unions (0 if the union sum is 0).
    """
    dt_areas = np.array([_frame_areas(seq).sum() for seq in dt_rles], dtype=np.int64)
    gt_areas = np.array([_frame_areas(seq).sum() for seq in gt_rles], dtype=np.int64)
    return iou_from_sums(tube_intersections(dt_rles, gt_rles), dt_areas, gt_areas)


# --------------------------------------------------------------------------------------------
# Per-video evaluation, accumulation, summary
# --------------------------------------------------------------------------------------------


@dataclass
class VideoCategoryEntry:
    """Everything the matching needs for one (video, category).

    Attributes:
        video_id, category_id: the key.
        gt_ids: ``(G,) int64`` GT annotation ids in file order.
        gt_iscrowd: ``(G,) bool``.
        gt_avg_area: ``(G,) float64``.
        dt_ids: ``(D,) int64`` detection ids, sorted by descending score (stable), D <= 100.
        dt_scores: ``(D,) float64`` in that order.
        dt_avg_area: ``(D,) float64`` in that order.
        ious: ``(D, G) float64`` tube IoUs (rows: sorted detections, columns: GT file order).
    """

    video_id: int
    category_id: int
    gt_ids: np.ndarray
    gt_iscrowd: np.ndarray
    gt_avg_area: np.ndarray
    dt_ids: np.ndarray
    dt_scores: np.ndarray
    dt_avg_area: np.ndarray
    ious: np.ndarray


@dataclass
class VideoMatch:
    """Matching of one (video, category, area range): the reference's ``evaluateVid`` output.

    Attributes:
        dt_scores: ``(D,) float64`` descending.
        dt_matched: ``(T, D) bool`` matched to some GT at each IoU threshold.
        dt_matches: ``(T, D) int64`` matched GT id (0 if unmatched).
        dt_ignore: ``(T, D) bool``.
        gt_ids: ``(G,) int64`` non-ignored first.
        gt_ignore: ``(G,) bool`` in that order.
        dt_ids: ``(D,) int64``.
    """

    dt_scores: np.ndarray
    dt_matched: np.ndarray
    dt_matches: np.ndarray
    dt_ignore: np.ndarray
    gt_ids: np.ndarray
    gt_ignore: np.ndarray
    dt_ids: np.ndarray


def _sorted_top_detections(scores: Sequence[float], max_detections: int) -> np.ndarray:
    """Indices of the top ``max_detections`` by descending score, ties in input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:max_detections]


def evaluate_video(entry: VideoCategoryEntry, area_range: Sequence[float],
                   iou_thresholds: np.ndarray = IOU_THRESHOLDS,
                   max_detections: int = MAX_DETECTIONS[-1]) -> Optional[VideoMatch]:
    """Greedy COCO matching of one (video, category) for one area range.

    Returns ``None`` when the video has neither GT nor detections of that category.
    """
    num_gt = len(entry.gt_ids)
    if num_gt == 0 and len(entry.dt_ids) == 0:
        return None
    low, high = area_range
    gt_out_of_range = (entry.gt_avg_area < low) | (entry.gt_avg_area > high)
    gt_ignore_file_order = entry.gt_iscrowd | gt_out_of_range
    # Ignored GTs last, stable; the detections are already sorted, keep the first max_detections.
    gt_order = np.argsort(gt_ignore_file_order.astype(np.int64), kind="mergesort")
    gt_ignore = gt_ignore_file_order[gt_order]
    gt_iscrowd = entry.gt_iscrowd[gt_order].tolist()
    gt_ids = entry.gt_ids[gt_order]
    num_dt = min(len(entry.dt_ids), max_detections)
    ious = entry.ious[:num_dt][:, gt_order] if num_gt else np.zeros((num_dt, 0))

    num_thresholds = len(iou_thresholds)
    dt_matched = np.zeros((num_thresholds, num_dt), dtype=bool)
    dt_matches = np.zeros((num_thresholds, num_dt), dtype=np.int64)
    dt_ignore = np.zeros((num_thresholds, num_dt), dtype=bool)
    gt_ignore_list = gt_ignore.tolist()
    iou_rows = ious.tolist()
    for t_index, threshold in enumerate(iou_thresholds.tolist()):
        gt_taken = [False] * num_gt
        for d in range(num_dt):
            best_iou = min(threshold, 1 - 1e-10)
            best = -1
            row = iou_rows[d]
            for g in range(num_gt):
                if gt_taken[g] and not gt_iscrowd[g]:
                    continue
                # Matched to a regular GT already: ignored GTs (sorted last) cannot replace it.
                if best > -1 and not gt_ignore_list[best] and gt_ignore_list[g]:
                    break
                if row[g] < best_iou:
                    continue
                best_iou = row[g]  # ">=": an equal IoU later in the order wins, as in the reference
                best = g
            if best == -1:
                continue
            dt_matched[t_index, d] = True
            dt_ignore[t_index, d] = gt_ignore_list[best]
            dt_matches[t_index, d] = gt_ids[best]
            gt_taken[best] = True
    dt_area = entry.dt_avg_area[:num_dt]
    dt_out_of_range = (dt_area < low) | (dt_area > high)
    dt_ignore |= (~dt_matched) & dt_out_of_range[None, :]
    return VideoMatch(
        dt_scores=entry.dt_scores[:num_dt].astype(np.float64),
        dt_matched=dt_matched,
        dt_matches=dt_matches,
        dt_ignore=dt_ignore,
        gt_ids=gt_ids,
        gt_ignore=gt_ignore,
        dt_ids=entry.dt_ids[:num_dt],
    )


def accumulate(matches: Mapping, video_ids: Sequence[int], category_ids: Sequence[int],
               iou_thresholds: np.ndarray = IOU_THRESHOLDS, recall_thresholds: np.ndarray = RECALL_THRESHOLDS,
               max_detections: Sequence[int] = MAX_DETECTIONS,
               num_area_ranges: int = len(AREA_RANGES)) -> tuple:
    """Precision / recall tables from per-video matches.

    Args:
        matches: ``(category_id, area_index, video_id) -> VideoMatch or None``.
        video_ids: all evaluated video ids (concatenated in ascending order).
        category_ids: evaluated category ids.

    Returns:
        ``precision (T, R, K, A, M) float64`` and ``recall (T, K, A, M) float64``, -1 where a
        (category, area range) has no non-ignored GT.
    """
    num_t, num_r = len(iou_thresholds), len(recall_thresholds)
    num_k, num_a, num_m = len(category_ids), num_area_ranges, len(max_detections)
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    ordered_videos = sorted(video_ids)
    for k, category_id in enumerate(category_ids):
        for a in range(num_a):
            video_matches = [matches.get((category_id, a, v)) for v in ordered_videos]
            video_matches = [m for m in video_matches if m is not None]
            if not video_matches:
                continue
            num_positive = int(sum(np.count_nonzero(~m.gt_ignore) for m in video_matches))
            if num_positive == 0:
                continue
            for m_index, max_det in enumerate(max_detections):
                scores = np.concatenate([m.dt_scores[:max_det] for m in video_matches])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([m.dt_matched[:, :max_det] for m in video_matches], axis=1)[:, order]
                ignored = np.concatenate([m.dt_ignore[:, :max_det] for m in video_matches], axis=1)[:, order]
                true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
                false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
                num_dt = true_positives.shape[1]
                for t in range(num_t):
                    tp, fp = true_positives[t], false_positives[t]
                    rc = tp / num_positive
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m_index] = rc[-1] if num_dt else 0
                    # Monotone precision envelope, then the first point reaching each threshold.
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if num_dt else pr
                    positions = np.searchsorted(rc, recall_thresholds, side="left")
                    interpolated = np.zeros(num_r)
                    reached = positions < num_dt
                    interpolated[reached] = pr[positions[reached]]
                    precision[t, :, k, a, m_index] = interpolated
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray,
              iou_thresholds: np.ndarray = IOU_THRESHOLDS,
              max_detections: Sequence[int] = MAX_DETECTIONS) -> dict:
    """The 12 numbers (``STAT_NAMES`` order) from :func:`accumulate`'s tables: float, -1 = undefined."""
    stats = {}
    for name, (is_precision, iou_threshold, area_label, max_det) in zip(STAT_NAMES, _STAT_DEFINITIONS):
        a = AREA_RANGE_LABELS.index(area_label)
        m = list(max_detections).index(max_det)
        values = precision[:, :, :, a, m] if is_precision else recall[:, :, a, m]
        if iou_threshold is not None:
            values = values[np.where(iou_threshold == iou_thresholds)[0]]
        defined = values[values > -1]
        stats[name] = float(np.mean(defined)) if defined.size else -1.0
    return stats


def _ground_truth_columns(objects: Sequence[VisGroundTruthObject]) -> tuple:
    return (np.array([o.annotation_id for o in objects], dtype=np.int64),
            np.array([o.iscrowd for o in objects], dtype=bool),
            np.array([o.avg_area for o in objects], dtype=np.float64))


def _evaluate_entries(entries: Mapping, video_ids: Sequence[int], category_ids: Sequence[int]) -> tuple:
    """Match, accumulate and summarize ``(video_id, category_id) -> VideoCategoryEntry``."""
    matches = {}
    for (video_id, category_id), entry in entries.items():
        for a, area_range in enumerate(AREA_RANGES):
            matches[(category_id, a, video_id)] = evaluate_video(entry, area_range)
    precision, recall = accumulate(matches, video_ids, category_ids)
    return summarize(precision, recall), precision, recall, matches


def evaluate_vis(gt_json: Union[Mapping, str, os.PathLike], results: Union[Sequence[Mapping], str, os.PathLike],
                 gt_source: Optional[str] = None, results_source: Optional[str] = None) -> dict:
    """Score YouTube-VIS results against GT, like the reference evaluation.

    Args:
        gt_json: GT dict (or JSON path) in YouTube-VIS / UVO format.
        results: list of ``{video_id, score, category_id, segmentations}`` (or JSON path).

    Returns:
        ``{"stats": {name: float}, "stats_list": [12 floats], "ious": [per (video, category):
        {video_id, category_id, gt_ids, dt_ids, dt_result_index, dt_scores, iou (D, G) float64
        ndarray}], "precision": (T, R, K, A, M) ndarray, "recall": (T, K, A, M) ndarray,
        "matches": {(area label, category_id, video_id): VideoMatch at 100 detections},
        "avg_area": {"gt": {id: area}, "dt": {id: area}}}``; ``dt_ids`` are 1-based results
        indices, rows sorted by score and truncated to 100 per video and category.
    """
    gt = load_ground_truth(gt_json, gt_source)
    detections = load_results(results, gt, results_source)
    detections_by_key: dict = {}
    for detection in detections:
        detections_by_key.setdefault((detection.video_id, detection.category_id), []).append(detection)
    entries = {}
    iou_blocks = []
    for video_id in gt.video_ids:
        for category_id in gt.category_ids:
            objects = [o for o in gt.objects_by_video[video_id] if o.category_id == category_id]
            dets = detections_by_key.get((video_id, category_id), [])
            top = [dets[i] for i in _sorted_top_detections([d.score for d in dets], MAX_DETECTIONS[-1])]
            gt_ids, gt_iscrowd, gt_avg_area = _ground_truth_columns(objects)
            ious = tube_iou([d.rles for d in top], [o.rles for o in objects])
            entries[(video_id, category_id)] = VideoCategoryEntry(
                video_id=video_id, category_id=category_id, gt_ids=gt_ids, gt_iscrowd=gt_iscrowd,
                gt_avg_area=gt_avg_area,
                dt_ids=np.array([d.detection_id for d in top], dtype=np.int64),
                dt_scores=np.array([d.score for d in top], dtype=np.float64),
                dt_avg_area=np.array([d.avg_area for d in top], dtype=np.float64),
                ious=ious,
            )
            iou_blocks.append({
                "video_id": video_id, "category_id": category_id, "gt_ids": gt_ids.tolist(),
                "dt_ids": [d.detection_id for d in top], "dt_result_index": [d.detection_id - 1 for d in top],
                "dt_scores": [d.score for d in top], "iou": ious,
            })
    stats, precision, recall, matches = _evaluate_entries(entries, gt.video_ids, gt.category_ids)
    return {
        "stats": stats,
        "stats_list": [stats[name] for name in STAT_NAMES],
        "ious": iou_blocks,
        "precision": precision,
        "recall": recall,
        "matches": {(AREA_RANGE_LABELS[a], category_id, video_id): match
                    for (category_id, a, video_id), match in matches.items() if match is not None},
        "avg_area": {
            "gt": {o.annotation_id: o.avg_area for objs in gt.objects_by_video.values() for o in objs},
            "dt": {d.detection_id: d.avg_area for d in detections},
        },
    }


# --------------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------------

# Per-video record layout (one float64 vector per update call; every value is an exact integer
# below 2^53 or a float64 score/area, so float64 carries all of them losslessly):
#   [video_id, num_detections, num_gt, then per detection:
#    score, category_id, area_sum, avg_area, intersection with each of the video's num_gt GTs]
_RECORD_HEADER = 3
_DETECTION_FIELDS = 4


class VideoAP(Metric):
    """YouTube-VIS video mask AP over videos, DDP-safe (each video counted once).

    ``update`` reduces one video's predictions to exact integer intersection sums with that
    video's GT (plus score, category and areas) and appends them as one float64 record to a
    ``cat``-reduced list state. ``compute`` gathers the records of all ranks, keeps the first
    record of each video id (a ``DistributedSampler`` may give a padded video to two ranks) and
    runs the reference matching / accumulation. Results equal :func:`evaluate_vis` on the same
    predictions written as a results file.

    Args:
        ground_truth: GT dict or path of the GT JSON (YouTube-VIS / UVO format).
        evaluate_only_updated_videos: score only videos passed to ``update`` (for partial runs);
            by default every GT video counts, a video never updated as all misses.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ground_truth: Union[Mapping, str, os.PathLike],
                 evaluate_only_updated_videos: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ground_truth = load_ground_truth(ground_truth)
        self.evaluate_only_updated_videos = evaluate_only_updated_videos
        self.add_state("records", default=[], dist_reduce_fx="cat")

    def update(self, video_id: int, predictions: Sequence[Mapping]) -> None:
        """Add one video's predicted tubes.

        Args:
            video_id: id of the video in the GT ``videos`` list.
            predictions: list of ``{"score": float, "segmentations": per-frame RLE dicts (string
                or bytes counts, None = absent) or (T, H, W) bool masks (ndarray or tensor),
                optional "category_id": int}``; T and (H, W) are the GT video's.
        """
        source = "VideoAP.update"
        gt = self.ground_truth
        video_id = _as_int(video_id, "video_id", source)
        if video_id not in gt.videos:
            raise InputFormatError(
                f"{source}: video id {video_id} is not in the ground truth {gt.source!r}")
        video = gt.videos[video_id]
        objects = gt.objects_by_video[video_id]
        evaluated = set(gt.category_ids)
        parsed = []
        for index, prediction in enumerate(predictions):
            where = f"prediction {index} of video {video_id}"
            if not isinstance(prediction, Mapping) or "score" not in prediction or "segmentations" not in prediction:
                raise InputFormatError(f"{source}: {where} must be a dict with 'score' and 'segmentations'")
            category_id = (_as_int(prediction["category_id"], f"{where}.category_id", source)
                           if "category_id" in prediction else _default_category(gt, where, source))
            score = prediction["score"]
            score = float(score.item() if isinstance(score, torch.Tensor) else score)
            rles = _segmentations_to_rles(prediction["segmentations"], video, f"{where}.segmentations", source)
            if category_id in evaluated:
                parsed.append((score, category_id, rles))
        # Only the first 100 per category (stable score order) can ever be used.
        kept = []
        for category_id in sorted({p[1] for p in parsed}):
            of_category = [i for i, p in enumerate(parsed) if p[1] == category_id]
            top = _sorted_top_detections([parsed[i][0] for i in of_category], MAX_DETECTIONS[-1])
            kept.extend(of_category[i] for i in top)
        kept.sort()
        num_gt = len(objects)
        record = np.zeros(_RECORD_HEADER + len(kept) * (_DETECTION_FIELDS + num_gt), dtype=np.float64)
        record[:_RECORD_HEADER] = (video_id, len(kept), num_gt)
        rows = record[_RECORD_HEADER:].reshape(len(kept), _DETECTION_FIELDS + num_gt)
        for row, index in zip(rows, kept):
            score, category_id, rles = parsed[index]
            same_category = [g for g, o in enumerate(objects) if o.category_id == category_id]
            intersections = tube_intersections([rles], [objects[g].rles for g in same_category])
            row[0], row[1] = score, category_id
            row[2] = float(_frame_areas(rles).sum())
            row[3] = _detection_avg_area(rles)
            row[_DETECTION_FIELDS + np.array(same_category, dtype=np.int64)] = intersections[0]
        self.records.append(torch.from_numpy(record).to(self.device))

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        # torchmetrics stands in an empty tensor of the metric's default dtype (float32) for a rank
        # without updates; all ranks must send float64 for the gather to be consistent.
        if isinstance(self.records, list) and not self.records:
            self.records = [torch.zeros(0, dtype=torch.float64, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)

    def _parse_records(self) -> dict:
        """video id -> (D, 4 + G) float64 array of detection rows, first record per video only."""
        records = self.records
        if isinstance(records, list):
            if not records:
                return {}
            records = dim_zero_cat(records)
        flat = records.detach().to(device="cpu", dtype=torch.float64).numpy()
        by_video: dict = {}
        position = 0
        while position < flat.size:
            video_id, num_dt, num_gt = (int(v) for v in flat[position:position + _RECORD_HEADER])
            position += _RECORD_HEADER
            length = num_dt * (_DETECTION_FIELDS + num_gt)
            rows = flat[position:position + length].reshape(num_dt, _DETECTION_FIELDS + num_gt)
            position += length
            if video_id not in by_video:  # a padded duplicate from another rank is dropped
                by_video[video_id] = rows
        return by_video

    def _entries(self) -> tuple:
        gt = self.ground_truth
        rows_by_video = self._parse_records()
        video_ids = sorted(rows_by_video) if self.evaluate_only_updated_videos else gt.video_ids
        entries = {}
        for video_id in video_ids:
            objects = gt.objects_by_video[video_id]
            rows = rows_by_video.get(video_id, np.zeros((0, _DETECTION_FIELDS + len(objects))))
            if rows.shape[1] != _DETECTION_FIELDS + len(objects):
                raise RuntimeError(f"VideoAP: corrupt record for video {video_id} (GT changed between ranks?)")
            for category_id in gt.category_ids:
                columns = [g for g, o in enumerate(objects) if o.category_id == category_id]
                gt_ids, gt_iscrowd, gt_avg_area = _ground_truth_columns([objects[g] for g in columns])
                of_category = rows[rows[:, 1] == category_id]
                order = _sorted_top_detections(of_category[:, 0], MAX_DETECTIONS[-1])
                top = of_category[order]
                intersections = top[:, _DETECTION_FIELDS + np.array(columns, dtype=np.int64)].astype(np.int64) \
                    if columns else np.zeros((len(top), 0), dtype=np.int64)
                ious = iou_from_sums(intersections, top[:, 2].astype(np.int64),
                                     np.array([objects[g].area_sum for g in columns], dtype=np.int64))
                entries[(video_id, category_id)] = VideoCategoryEntry(
                    video_id=video_id, category_id=category_id, gt_ids=gt_ids, gt_iscrowd=gt_iscrowd,
                    gt_avg_area=gt_avg_area, dt_ids=np.arange(1, len(top) + 1, dtype=np.int64),
                    dt_scores=top[:, 0].copy(), dt_avg_area=top[:, 3].copy(), ious=ious,
                )
        return entries, video_ids

    def compute(self) -> dict:
        """The 12 stats (``STAT_NAMES``) as 0-d float64 tensors; -1 where undefined."""
        entries, video_ids = self._entries()
        stats, _, _, _ = _evaluate_entries(entries, video_ids, self.ground_truth.category_ids)
        return {name: torch.tensor(stats[name], dtype=torch.float64, device=self.device) for name in STAT_NAMES}
