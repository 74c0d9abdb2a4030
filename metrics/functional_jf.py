"""DAVIS J&F, functional half: numpy (and OpenCV's dilation) only, no torch.

It follows the official DAVIS 2017 evaluation (``davis2017-evaluation``) value for value:
region similarity J (IoU), boundary F-measure F (boundaries as in ``seg2bmap``, matched within
``ceil(bound_th * image diagonal)`` pixels by a disk dilation done with OpenCV) and the
per-object statistics mean / recall / decay. :class:`sampt.metrics.jf.DavisJF` (the
torchmetrics half) and ``sampt eval`` both compute through it.

Speed without changing a value: J and F of an object only depend on the pixels around its
ground-truth and predicted masks, so :class:`FrameScorer` crops each frame to the union of the
two masks' bounding boxes plus one pixel (what ``seg2bmap`` looks at) before computing the
boundaries and dilating them. Every count is the full frame's count, so J and F are the same
floats as the full-frame computation's (the tests check both against the official vectors).

Protocol facts, in one place:

* the first and the last frame of every sequence are excluded before any statistic
  (``skip_first_and_last``, the official semi-supervised protocol);
* the objects of a sequence are the ground truth's ids: values other than 0 (background) and
  255 (void) that occur in any ground-truth frame; void pixels count as background;
* each object is one entry of the global means:
  ``J&F-Mean = (mean of per-object J means + mean of per-object F means) / 2``.

One deliberate difference from the official code: it casts the decay bin edges to uint8,
which wraps for sequences of more than 256 evaluated frames (none in DAVIS); here they are
int64, so long videos get a meaningful decay instead of NaN.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

#: Column order of the official global results table.
GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)
#: Per-object statistics, in the order they are stored.
OBJECT_STAT_COLUMNS: tuple[str, ...] = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
#: Pixel value that marks void (unlabelled) ground-truth pixels in DAVIS 2017 annotations.
VOID_ID = 255
#: Default boundary tolerance as a fraction of the image diagonal (official value).
DEFAULT_BOUND_TH = 0.008

ArrayLike = Any  # numpy arrays, or torch tensors (read through .detach().cpu().numpy())


def _as_numpy(array: ArrayLike) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


# ------------------------------------------------------------------------------ single frames
def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J (intersection over union) of one frame.

    Args:
        gt: ``(H, W)`` bool (or 0/1) ground-truth mask of one object.
        pred: ``(H, W)`` bool (or 0/1) predicted mask of the same object.

    Returns:
        IoU as a float; 1.0 when both masks are empty (official convention).
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"region_similarity expects two (H, W) masks of equal shape, got {gt.shape} and {pred.shape}")
    union = int(np.count_nonzero(gt | pred))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(gt & pred)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask, with the semantics of DAVIS ``seg2bmap``.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour;
    on the last row only the east neighbour is compared, on the last column only the south
    one, and the bottom-right pixel is never a boundary. (The boundary sits half a pixel
    towards the origin from the true segment edge.)

    Args:
        mask: ``(H, W)`` bool mask.

    Returns:
        ``(H, W)`` bool boundary map.
    """
    mask = np.asarray(mask, dtype=bool)
    boundary = np.zeros(mask.shape, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        return boundary
    core = mask[:-1, :-1]
    boundary[:-1, :-1] = (core != mask[:-1, 1:]) | (core != mask[1:, :-1]) | (core != mask[1:, 1:])
    # The last row/column have no south/east neighbours: compare along the image edge only.
    boundary[-1, :-1] = mask[-1, :-1] != mask[-1, 1:]
    boundary[:-1, -1] = mask[:-1, -1] != mask[1:, -1]
    return boundary


def boundary_tolerance_px(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Boundary matching tolerance in pixels: ``ceil(bound_th * sqrt(H^2 + W^2))``.

    A ``bound_th >= 1`` is taken as a tolerance in pixels directly (official behaviour).
    """
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk_kernel(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1) uint8`` disk structuring element: ones where ``x^2 + y^2 <= r^2``."""
    offsets = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def _f_measure_from_boundaries(gt_boundary: np.ndarray, pred_boundary: np.ndarray, kernel: np.ndarray) -> float:
    """F-measure of two bool boundary maps (same shape) matched within the dilation ``kernel``."""
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    # Empty boundaries follow the official conventions (precision/recall of 1 or 0).
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    elif np.array_equal(gt_boundary, pred_boundary):
        # Each boundary pixel lies in the other's dilation (the disk holds its centre).
        precision, recall = 1.0, 1.0
    else:
        import cv2

        gt_dilated = cv2.dilate(gt_boundary.view(np.uint8), kernel).view(bool)
        pred_dilated = cv2.dilate(pred_boundary.view(np.uint8), kernel).view(bool)
        precision = int(np.count_nonzero(pred_boundary & gt_dilated)) / float(n_pred)
        recall = int(np.count_nonzero(gt_boundary & pred_dilated)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the non-zero pixels of an ``(H, W)`` bool mask; w = h = 0 when empty."""
    import cv2

    return cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))


def object_jf(gt: np.ndarray, pred: np.ndarray, kernel: np.ndarray) -> tuple[float, float]:
    """J and F of one object in one frame, computed on the crop around both masks.

    Args:
        gt: ``(H, W)`` bool ground-truth mask of the object (the whole frame).
        pred: ``(H, W)`` bool predicted mask of the object.
        kernel: the dilation disk for the frame's size (:func:`disk_kernel` of
            :func:`boundary_tolerance_px`).

    Returns:
        ``(J, F)``, bitwise equal to :func:`region_similarity` and :func:`boundary_f_measure`.
    """
    gx, gy, gw, gh = _bounding_box(gt)
    px, py, pw, ph = _bounding_box(pred)
    if gw == 0 and pw == 0:
        return 1.0, 1.0
    if gw == 0:
        x0, y0, x1, y1 = px, py, px + pw, py + ph
    elif pw == 0:
        x0, y0, x1, y1 = gx, gy, gx + gw, gy + gh
    else:
        x0, y0 = min(gx, px), min(gy, py)
        x1, y1 = max(gx + gw, px + pw), max(gy + gh, py + ph)
    height, width = gt.shape
    # One pixel around the masks: seg2bmap marks the pixels left of / above an edge, and a
    # crop edge that is not the frame's then only holds background, as the frame does there.
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
    g, p = gt[y0:y1, x0:x1], pred[y0:y1, x0:x1]
    intersection = int(np.count_nonzero(g & p))
    union = int(np.count_nonzero(g)) + int(np.count_nonzero(p)) - intersection
    j_value = intersection / union
    return j_value, _f_measure_from_boundaries(boundary_map(g), boundary_map(p), kernel)


class FrameScorer:
    """J and F of objects in frames of one size (holds the frame size's dilation disk).

    Args:
        height, width: the frame size (the tolerance depends on its diagonal).
        bound_th: boundary tolerance (see :func:`boundary_tolerance_px`).
    """

    def __init__(self, height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> None:
        self.size = (int(height), int(width))
        self.kernel = disk_kernel(boundary_tolerance_px(height, width, bound_th=bound_th))

    def object(self, gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
        """``(J, F)`` of one object: two ``(H, W)`` bool masks."""
        return object_jf(gt, pred, self.kernel)

    def frame(self, gt: np.ndarray, pred: np.ndarray, object_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(J, F)``, each ``(K,) float64``, of K objects in one pair of ``(H, W)`` index masks."""
        j_values = np.empty(len(object_ids), dtype=np.float64)
        f_values = np.empty(len(object_ids), dtype=np.float64)
        for index, object_id in enumerate(object_ids):
            j_values[index], f_values[index] = object_jf(gt == object_id, pred == object_id, self.kernel)
        return j_values, f_values


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Boundary F-measure F of one frame (official DAVIS 2017 definition, on the full frame).

    Args:
        gt: ``(H, W)`` bool ground-truth mask of one object.
        pred: ``(H, W)`` bool predicted mask of the same object.
        bound_th: tolerance as a fraction of the image diagonal (or pixels when >= 1).

    Returns:
        F in [0, 1]; 1.0 when both masks are empty.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"boundary_f_measure expects two (H, W) masks of equal shape, got {gt.shape} and {pred.shape}")
    kernel = disk_kernel(boundary_tolerance_px(*gt.shape, bound_th=bound_th))
    return _f_measure_from_boundaries(boundary_map(gt), boundary_map(pred), kernel)


def per_frame_jf(gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of one object through a sequence.

    Args:
        gt: ``(T, H, W)`` bool ground-truth masks of one object.
        pred: ``(T, H, W)`` bool predicted masks of the same object.
        bound_th: boundary tolerance (see :func:`boundary_f_measure`).

    Returns:
        ``(J, F)``, each ``(T,) float64``.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"per_frame_jf expects two (T, H, W) masks of equal shape, got {gt.shape} and {pred.shape}")
    scorer = FrameScorer(gt.shape[1], gt.shape[2], bound_th)
    values = np.array([scorer.object(g, p) for g, p in zip(gt, pred)], dtype=np.float64).reshape(-1, 2)
    return values[:, 0].copy(), values[:, 1].copy()


# --------------------------------------------------------------------------------- statistics
def decay_bin_edges(num_frames: int) -> np.ndarray:
    """``(5,) int64`` quarter edges ``round(linspace(1, T, 5)) - 1`` (halves round up, as official)."""
    # The official code adds 1e-10 before np.round, i.e. rounds .5 up instead of to even.
    return (np.round(np.linspace(1, num_frames, 5) + 1e-10) - 1).astype(np.int64)


def jf_statistics(values: ArrayLike) -> tuple[float, float, float]:
    """Mean, recall and decay of per-frame values of one object (official ``db_statistics``).

    Args:
        values: ``(T,)`` float per-frame J or F, T >= 1.

    Returns:
        ``(mean, recall, decay)``: recall is the fraction of frames with value > 0.5; decay is
        the mean of the first quarter of frames minus the mean of the last quarter, the
        quarters being the inclusive index ranges between :func:`decay_bin_edges`.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("jf_statistics needs at least one per-frame value, got none")
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    edges = decay_bin_edges(values.size)
    first_quarter = values[edges[0] : edges[1] + 1]
    last_quarter = values[edges[3] : edges[4] + 1]
    decay = float(np.mean(first_quarter) - np.mean(last_quarter))
    return mean, recall, decay


@dataclass(frozen=True)
class ObjectResult:
    """J and F of one object of one sequence, on the evaluated frames.

    Attributes:
        sequence: sequence name.
        object_id: the ground truth's id of the object.
        j_per_frame: ``(T',) float64`` J on the evaluated frames.
        f_per_frame: ``(T',) float64`` F on the evaluated frames.
        stats: the six values named by :data:`OBJECT_STAT_COLUMNS`.
    """

    sequence: str
    object_id: int
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray
    stats: tuple[float, float, float, float, float, float]

    @classmethod
    def from_values(cls, sequence: str, object_id: int, j_values: ArrayLike, f_values: ArrayLike) -> "ObjectResult":
        """The result of per-frame values (statistics computed here)."""
        j_array = np.asarray(j_values, dtype=np.float64).reshape(-1)
        f_array = np.asarray(f_values, dtype=np.float64).reshape(-1)
        return cls(sequence, int(object_id), j_array, f_array, jf_statistics(j_array) + jf_statistics(f_array))

    def as_row(self) -> dict[str, Any]:
        """``{"sequence", "object_id", "J-Mean", ..., "F-Decay"}`` (plain Python values)."""
        row: dict[str, Any] = {"sequence": self.sequence, "object_id": self.object_id}
        row.update(zip(OBJECT_STAT_COLUMNS, self.stats))
        return row


# ---------------------------------------------------------------------------------- sequences
def _to_index_array(masks: ArrayLike, what: str, sequence: str) -> np.ndarray:
    """A ``(T, H, W)`` integer index tensor/array as a numpy array (CPU), validated."""
    masks = _as_numpy(masks)
    if masks.ndim != 3:
        raise ValueError(f"sequence {sequence!r}: {what} must be (T, H, W) index masks, got shape {masks.shape}")
    if masks.dtype == bool:
        return masks.astype(np.uint8)
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"sequence {sequence!r}: {what} must hold integer object ids, got dtype {masks.dtype}")
    return masks


def ground_truth_object_ids(gt: ArrayLike) -> list[int]:
    """Sorted object ids of a ``(T, H, W)`` ground truth: values present other than 0 and 255."""
    values = _as_numpy(gt)
    if values.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(values.reshape(-1), minlength=256))
    else:
        present = np.unique(values)
    return [int(v) for v in present if v != 0 and v != VOID_ID]


def evaluate_sequence(
    sequence: str,
    gt: ArrayLike,
    pred: ArrayLike,
    object_ids: Optional[Sequence[int]] = None,
    skip_first_and_last: bool = True,
    bound_th: float = DEFAULT_BOUND_TH,
) -> list[ObjectResult]:
    """J and F of every object of one sequence.

    Args:
        sequence: sequence name (used in error messages and results).
        gt: ``(T, H, W)`` uint8 index masks (0 background, 255 void, else object ids).
        pred: ``(T, H, W)`` uint8 index masks; ids not among ``object_ids`` are ignored.
        object_ids: ids to evaluate; None = the ground truth's ids (:func:`ground_truth_object_ids`).
        skip_first_and_last: drop the first and last frame before evaluating (official protocol).
        bound_th: boundary tolerance (see :func:`boundary_f_measure`).

    Returns:
        One :class:`ObjectResult` per object, in increasing id order.
    """
    gt_np = _to_index_array(gt, "ground truth", sequence)
    pred_np = _to_index_array(pred, "prediction", sequence)
    if gt_np.shape != pred_np.shape:
        raise ValueError(
            f"sequence {sequence!r}: prediction shape {tuple(pred_np.shape)} does not match "
            f"ground-truth shape {tuple(gt_np.shape)} (expected (T, H, W) at the same size)"
        )
    if object_ids is None:
        ids = ground_truth_object_ids(gt_np)
    else:
        ids = sorted({int(i) for i in object_ids})
        bad = [i for i in ids if not 0 < i < VOID_ID]
        if bad:
            raise ValueError(f"sequence {sequence!r}: object ids must be in 1..254, got {bad}")
    if skip_first_and_last:
        if gt_np.shape[0] < 3:
            raise ValueError(
                f"sequence {sequence!r} has {gt_np.shape[0]} frames; skip_first_and_last needs at least 3"
            )
        gt_np, pred_np = gt_np[1:-1], pred_np[1:-1]
    elif gt_np.shape[0] < 1:
        raise ValueError(f"sequence {sequence!r} has no frames")

    scorer = FrameScorer(gt_np.shape[1], gt_np.shape[2], bound_th)
    j_values = np.empty((len(ids), gt_np.shape[0]), dtype=np.float64)
    f_values = np.empty((len(ids), gt_np.shape[0]), dtype=np.float64)
    for t in range(gt_np.shape[0]):  # frame-major: each frame's masks are touched once
        j_values[:, t], f_values[:, t] = scorer.frame(gt_np[t], pred_np[t], ids)
    return [ObjectResult.from_values(sequence, object_id, j_values[k], f_values[k]) for k, object_id in enumerate(ids)]


def sequence_key(sequence: str) -> int:
    """Stable signed 64-bit hash of a sequence name (same on every process and run)."""
    digest = hashlib.blake2b(sequence.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# ------------------------------------------------------------------------------------ tables
def global_table(object_rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The global results from per-object rows, in :data:`GLOBAL_COLUMNS` order.

    Each statistic is the mean over the rows (objects) in the given order;
    ``J&F-Mean = (J-Mean + F-Mean) / 2``. No row gives NaN everywhere.
    """
    if not object_rows:
        return {name: float("nan") for name in GLOBAL_COLUMNS}
    table = {name: float(np.mean(np.array([row[name] for row in object_rows], dtype=np.float64)))
             for name in OBJECT_STAT_COLUMNS}
    table["J&F-Mean"] = (table["J-Mean"] + table["F-Mean"]) / 2.0
    return {name: table[name] for name in GLOBAL_COLUMNS}


def official_sequence_rows(object_rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """Rows of the official per-sequence CSV: ``(f"{sequence}_{object_id}", J-Mean, F-Mean)``."""
    return [(f"{row['sequence']}_{row['object_id']}", row["J-Mean"], row["F-Mean"]) for row in object_rows]
