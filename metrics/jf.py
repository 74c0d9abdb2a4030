"""DAVIS J&F for semi-supervised video object segmentation.

Two halves:

* a functional half on numpy arrays that follows the official DAVIS 2017 evaluation
  (``davis2017-evaluation``) value for value: region similarity J (IoU), boundary F-measure F
  (boundaries as in ``seg2bmap``, matched within ``ceil(bound_th * image diagonal)`` pixels by
  a disk dilation done with OpenCV) and the per-object statistics mean / recall / decay;
* :class:`DavisJF`, a ``torchmetrics.Metric`` whose state is one entry per (sequence, object),
  so that DDP gathers entries (never means of means) and entries seen twice (a
  ``DistributedSampler`` pads by repeating videos) count once.

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
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

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

ArrayLike = Union[np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- functional half
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
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    # The last row/column have no south/east neighbours: compare along the image edge only.
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
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


def _f_measure_from_boundaries(
    gt_boundary: np.ndarray, pred_boundary: np.ndarray, kernel: np.ndarray
) -> float:
    """F-measure of two ``(H, W)`` bool boundary maps matched within the dilation ``kernel``."""
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    # Empty boundaries follow the official conventions (precision/recall of 1 or 0).
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
        gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
        precision = int(np.count_nonzero(pred_boundary & gt_dilated)) / float(n_pred)
        recall = int(np.count_nonzero(gt_boundary & pred_dilated)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Boundary F-measure F of one frame (official DAVIS 2017 definition).

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


def per_frame_jf(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
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
    num_frames, height, width = gt.shape
    intersection = np.count_nonzero(gt & pred, axis=(1, 2))
    union = np.count_nonzero(gt | pred, axis=(1, 2))
    j_values = np.ones(num_frames, dtype=np.float64)
    nonempty = union > 0
    j_values[nonempty] = intersection[nonempty] / union[nonempty]

    kernel = disk_kernel(boundary_tolerance_px(height, width, bound_th=bound_th))
    f_values = np.empty(num_frames, dtype=np.float64)
    for t in range(num_frames):
        f_values[t] = _f_measure_from_boundaries(boundary_map(gt[t]), boundary_map(pred[t]), kernel)
    return j_values, f_values


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

    def as_row(self) -> dict[str, Any]:
        """``{"sequence", "object_id", "J-Mean", ..., "F-Decay"}`` (plain Python values)."""
        row: dict[str, Any] = {"sequence": self.sequence, "object_id": self.object_id}
        row.update(zip(OBJECT_STAT_COLUMNS, self.stats))
        return row


def _to_index_array(masks: ArrayLike, what: str, sequence: str) -> np.ndarray:
    """A ``(T, H, W)`` integer index tensor/array as a numpy array (CPU), validated."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"sequence {sequence!r}: {what} must be (T, H, W) index masks, got shape {masks.shape}")
    if masks.dtype == bool:
        return masks.astype(np.uint8)
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"sequence {sequence!r}: {what} must hold integer object ids, got dtype {masks.dtype}")
    return masks


def ground_truth_object_ids(gt: ArrayLike) -> list[int]:
    """Sorted object ids of a ``(T, H, W)`` ground truth: values present other than 0 and 255."""
    values = np.unique(np.asarray(gt.detach().cpu() if isinstance(gt, torch.Tensor) else gt))
    return [int(v) for v in values if v != 0 and v != VOID_ID]


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

    results = []
    for object_id in ids:
        j_values, f_values = per_frame_jf(gt_np == object_id, pred_np == object_id, bound_th=bound_th)
        stats = jf_statistics(j_values) + jf_statistics(f_values)
        results.append(ObjectResult(sequence, object_id, j_values, f_values, stats))
    return results


def sequence_key(sequence: str) -> int:
    """Stable signed 64-bit hash of a sequence name (same on every process and run)."""
    digest = hashlib.blake2b(sequence.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# --------------------------------------------------------------------------------- Metric half
class DavisJF(Metric):
    """DAVIS J&F (semi-supervised protocol) as a torchmetrics ``Metric``.

    Each :meth:`update` evaluates one sequence and appends one entry per object to list
    states (concatenated across processes on sync). :meth:`compute` drops repeated
    (sequence, object) entries, orders entries by (sequence, object id) so that the result is
    bitwise the same whatever the split over processes, and averages per-object statistics.

    Args:
        skip_first_and_last: exclude the first and last frame of every sequence (official).
        bound_th: boundary tolerance as a fraction of the image diagonal (official 0.008).
        kwargs: passed to ``torchmetrics.Metric`` (e.g. ``dist_sync_fn``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    # Every state is a 1-D tensor per update; names travel as UTF-8 bytes plus lengths so that
    # every process can report every sequence after a sync (torchmetrics only syncs tensors).
    _STATE_DTYPES: dict[str, torch.dtype] = {
        "sequence_hash": torch.int64,
        "object_id": torch.int64,
        "name_length": torch.int64,
        "name_bytes": torch.uint8,
        **{f"stat_{i}": torch.float64 for i in range(len(OBJECT_STAT_COLUMNS))},
    }

    def __init__(self, skip_first_and_last: bool = True, bound_th: float = DEFAULT_BOUND_TH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(skip_first_and_last, bool):
            raise ValueError(f"DavisJF: skip_first_and_last must be a bool, got {skip_first_and_last!r}")
        if not bound_th > 0:
            raise ValueError(f"DavisJF: bound_th must be > 0, got {bound_th!r}")
        self.skip_first_and_last = skip_first_and_last
        self.bound_th = float(bound_th)
        for name in self._STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._object_rows: list[dict[str, Any]] = []

    def update(
        self,
        sequence: str,
        object_ids: Optional[Sequence[int]],
        gt: ArrayLike,
        pred: ArrayLike,
    ) -> None:
        """Evaluate one sequence and store one entry per object.

        Args:
            sequence: sequence name (the dedup key together with the object id).
            object_ids: ids to evaluate, or None for the ground truth's ids (non-zero, non-255
                values present in any frame of ``gt``). Prediction ids outside them are ignored.
            gt: ``(T, H, W)`` uint8 index masks (tensor or numpy), 255 = void (background).
            pred: ``(T, H, W)`` uint8 index masks at the same size.
        """
        if not isinstance(sequence, str) or not sequence:
            raise ValueError(f"DavisJF.update: sequence must be a non-empty str, got {sequence!r}")
        results = evaluate_sequence(
            sequence,
            gt,
            pred,
            object_ids=object_ids,
            skip_first_and_last=self.skip_first_and_last,
            bound_th=self.bound_th,
        )
        if not results:
            return
        count = len(results)
        name = np.frombuffer(sequence.encode("utf-8"), dtype=np.uint8)
        device = self.device
        self.sequence_hash.append(torch.full((count,), sequence_key(sequence), dtype=torch.int64, device=device))
        self.object_id.append(torch.tensor([r.object_id for r in results], dtype=torch.int64, device=device))
        self.name_length.append(torch.full((count,), name.size, dtype=torch.int64, device=device))
        self.name_bytes.append(torch.from_numpy(np.tile(name, count)).to(device))
        for i in range(len(OBJECT_STAT_COLUMNS)):
            values = torch.tensor([r.stats[i] for r in results], dtype=torch.float64, device=device)
            getattr(self, f"stat_{i}").append(values)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        # torchmetrics stands in an empty list state by a float32 tensor; a process that saw no
        # object would then gather a different dtype than the others. Give it the right one.
        for name, dtype in self._STATE_DTYPES.items():
            if isinstance(getattr(self, name), list) and len(getattr(self, name)) == 0:
                setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _state_tensor(self, name: str) -> torch.Tensor:
        """A list state (local: list of tensors; after a sync: one tensor) as one 1-D tensor."""
        value = getattr(self, name)
        if isinstance(value, torch.Tensor):
            return value.reshape(-1)
        if len(value) == 0:
            return torch.zeros(0, dtype=self._STATE_DTYPES[name])
        return dim_zero_cat(value)

    def _entries(self) -> list[dict[str, Any]]:
        """Deduplicated per-object rows, ordered by (sequence, object id)."""
        states = {name: self._state_tensor(name) for name in self._STATE_DTYPES}
        if states["sequence_hash"].numel() == 0:
            return []
        hashes = states["sequence_hash"].cpu().tolist()
        ids = states["object_id"].cpu().tolist()
        lengths = states["name_length"].cpu().tolist()
        name_bytes = states["name_bytes"].cpu().numpy().tobytes()
        stats = torch.stack([states[f"stat_{i}"] for i in range(len(OBJECT_STAT_COLUMNS))], dim=1)
        stats_list = stats.cpu().tolist()

        entries: dict[tuple[int, int], dict[str, Any]] = {}
        offset = 0
        for entry_hash, object_id, length, values in zip(hashes, ids, lengths, stats_list):
            name = name_bytes[offset : offset + length].decode("utf-8")
            offset += length
            key = (entry_hash, object_id)
            if key in entries:
                if entries[key]["stats"] != values:
                    warnings.warn(
                        f"DavisJF: sequence {name!r} object {object_id} was evaluated more than once with "
                        "different results; keeping the first",
                        stacklevel=3,
                    )
                continue
            entries[key] = {"sequence": name, "object_id": object_id, "stats": values}
        rows = []
        for entry in sorted(entries.values(), key=lambda e: (e["sequence"], e["object_id"])):
            row = {"sequence": entry["sequence"], "object_id": entry["object_id"]}
            row.update(zip(OBJECT_STAT_COLUMNS, entry["stats"]))
            rows.append(row)
        return rows

    def compute(self) -> dict[str, torch.Tensor]:
        """Global table: ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}``.

        Each value is a ``() float64`` tensor on the metric's device: the mean over unique
        (sequence, object) entries of the per-object statistic; NaN when no object was seen.
        """
        rows = self._entries()
        self._object_rows = rows
        if not rows:
            warnings.warn("DavisJF.compute() called without any evaluated object; returning NaN", stacklevel=2)
            table = {name: float("nan") for name in GLOBAL_COLUMNS}
        else:
            table = {}
            for name in OBJECT_STAT_COLUMNS:
                table[name] = float(np.mean(np.array([row[name] for row in rows], dtype=np.float64)))
            table["J&F-Mean"] = (table["J-Mean"] + table["F-Mean"]) / 2.0
        return {name: torch.tensor(table[name], dtype=torch.float64, device=self.device) for name in GLOBAL_COLUMNS}

    def per_object_table(self) -> list[dict[str, Any]]:
        """Per-object rows ``{"sequence", "object_id", "J-Mean", ..., "F-Decay"}`` over all processes.

        Ordered by (sequence, object id), duplicates removed. Under DDP call it on every process
        (it runs :meth:`compute`, which syncs).
        """
        self.compute()
        return [dict(row) for row in self._object_rows]

    def per_sequence_table(self) -> list[dict[str, Any]]:
        """Per-sequence rows ``{"sequence", "num_objects", "J&F-Mean", "J-Mean", "F-Mean"}``.

        Sequence values are means over the sequence's objects (for logging; the official
        per-sequence CSV is per object, see :meth:`per_object_table`).
        """
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in self.per_object_table():
            grouped.setdefault(row["sequence"], []).append(row)
        table = []
        for name, rows in grouped.items():
            j_mean = float(np.mean([r["J-Mean"] for r in rows]))
            f_mean = float(np.mean([r["F-Mean"] for r in rows]))
            table.append(
                {"sequence": name, "num_objects": len(rows), "J&F-Mean": (j_mean + f_mean) / 2.0, "J-Mean": j_mean, "F-Mean": f_mean}
            )
        return table

    def reset(self) -> None:
        super().reset()
        self._object_rows = []


def official_sequence_rows(object_rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Rows of the official per-sequence CSV: ``(f"{sequence}_{object_id}", J-Mean, F-Mean)``."""
    return [(f"{row['sequence']}_{row['object_id']}", row["J-Mean"], row["F-Mean"]) for row in object_rows]
