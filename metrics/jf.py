"""DAVIS J&F for semi-supervised video object segmentation: the torchmetrics half.

The computation lives in :mod:`sampt.metrics.functional_jf` (numpy only, also used by
``sampt eval`` without torch); its names are re-exported here. :class:`DavisJF` is a
``torchmetrics.Metric`` whose state is one entry per (sequence, object), so that DDP gathers
entries (never means of means) and entries seen twice (a ``DistributedSampler`` pads by
repeating videos) count once. See the functional module for the protocol facts.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from .functional_jf import (  # re-exported: the functional half's public names
    DEFAULT_BOUND_TH,
    GLOBAL_COLUMNS,
    OBJECT_STAT_COLUMNS,
    VOID_ID,
    ArrayLike,
    FrameScorer,
    ObjectResult,
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_px,
    decay_bin_edges,
    disk_kernel,
    evaluate_sequence,
    global_table,
    ground_truth_object_ids,
    jf_statistics,
    object_jf,
    official_sequence_rows,
    per_frame_jf,
    region_similarity,
    sequence_key,
)

__all__ = ["DavisJF", "DEFAULT_BOUND_TH", "GLOBAL_COLUMNS", "OBJECT_STAT_COLUMNS", "VOID_ID", "ArrayLike",
           "FrameScorer", "ObjectResult", "boundary_f_measure", "boundary_map", "boundary_tolerance_px",
           "decay_bin_edges", "disk_kernel", "evaluate_sequence", "global_table", "ground_truth_object_ids",
           "jf_statistics", "object_jf", "official_sequence_rows", "per_frame_jf", "region_similarity",
           "sequence_key"]


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
        table = global_table(rows)
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
