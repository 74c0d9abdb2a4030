"""`sampt eval`: DAVIS J&F of a results folder against a ground-truth folder.

Both folders hold one sub-folder per sequence with one PNG per frame. PNGs are palette images
whose indices are object ids (0 background, 255 void in the ground truth), or grayscale
images: a sequence whose PNGs are all grayscale with only the values 0 and 255 (DAVIS 2016
annotations, binary results) is one object, 255 read as id 1; other grayscale PNGs hold ids.
Each folder is read on its own, so a 0/255 ground truth can be scored against palette
results and vice versa.

The objects of a sequence are the ground truth's ids; a prediction id that is not one of them
is an error naming the file, as the official evaluation stops on it. Prediction frames are
matched to ground-truth frames by file stem; only the evaluated frames (all but the first and
last with the official protocol) must exist in the results.

Outputs, written atomically into ``out_dir`` (default ``pred_dir``), in the official format:
``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.metrics.jf import (
    DEFAULT_BOUND_TH,
    GLOBAL_COLUMNS,
    VOID_ID,
    DavisJF,
    ground_truth_object_ids,
    official_sequence_rows,
)
from sampt.writers import write_text_atomic

log = logging.getLogger(__name__)

#: Official float format of the DAVIS result tables.
OFFICIAL_FLOAT_FORMAT = "%.3f"
#: PIL modes read as grayscale (values are taken as they are).
_GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L")


def read_index_png(path: Path) -> tuple[np.ndarray, bool]:
    """Read one mask PNG.

    Args:
        path: a palette (mode ``P``) or grayscale PNG.

    Returns:
        ``((H, W) uint8 values, is_grayscale)``: palette indices, or grayscale values.

    Raises:
        InputFormatError: unreadable file, colour image, or values above 255.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.array(image)
    except (OSError, ValueError) as err:
        raise InputFormatError(f"cannot read mask PNG {path}: {err}") from err
    if mode == "P":
        return values.astype(np.uint8), False
    if mode not in _GRAYSCALE_MODES:
        raise InputFormatError(
            f"mask {path} has image mode {mode!r}; expected a palette PNG (mode 'P') with object "
            "indices or an 8-bit grayscale PNG (mode 'L')"
        )
    if values.ndim != 2:
        raise InputFormatError(f"mask {path} has shape {values.shape}; expected a single-channel (H, W) image")
    if values.size and int(values.max()) > 255:
        raise InputFormatError(f"mask {path} has value {int(values.max())}; object ids must be in 0..255")
    return values.astype(np.uint8), True


def read_sequence_masks(paths: Sequence[Path], what: str = "mask") -> np.ndarray:
    """Read the PNGs of one sequence into ``(T, H, W) uint8`` object ids.

    A sequence whose PNGs are all grayscale with only 0/255 values is one object: 255 -> 1.

    Raises:
        InputFormatError: unreadable file or a frame whose size differs from the first one.
    """
    frames = []
    all_grayscale = True
    for path in paths:
        values, is_grayscale = read_index_png(path)
        if frames and values.shape != frames[0].shape:
            raise InputFormatError(
                f"{what} {path} is {values.shape[1]}x{values.shape[0]} (WxH) but {paths[0]} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames of a sequence must have one size"
            )
        all_grayscale &= is_grayscale
        frames.append(values)
    masks = np.stack(frames)
    if all_grayscale and np.isin(masks, (0, 255)).all():
        masks = (masks == 255).astype(np.uint8)
    return masks


def _png_frames(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the PNG files of one sequence folder."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}


def list_sequences(gt_dir: Path) -> list[str]:
    """Sorted names of the sub-folders of ``gt_dir`` (one per sequence)."""
    return sorted(p.name for p in gt_dir.iterdir() if p.is_dir())


def _evaluate_one(
    metric: DavisJF, sequence: str, gt_dir: Path, pred_dir: Path, skip_first_and_last: bool
) -> None:
    """Read one sequence from both folders, validate it, and update ``metric`` with it."""
    gt_folder, pred_folder = gt_dir / sequence, pred_dir / sequence
    if not gt_folder.is_dir():
        raise DatasetLayoutError(f"ground-truth sequence folder {gt_folder} does not exist")
    gt_frames = _png_frames(gt_folder)
    if not gt_frames:
        raise DatasetLayoutError(f"ground-truth sequence folder {gt_folder} holds no PNG file (one per frame expected)")
    if not pred_folder.is_dir():
        raise DatasetLayoutError(
            f"prediction folder {pred_folder} for sequence {sequence!r} does not exist (expected "
            f"<pred>/<sequence>/<frame>.png; pass `sequences` / --sequences to evaluate a subset)"
        )
    stems = sorted(gt_frames)
    gt = read_sequence_masks([gt_frames[s] for s in stems], what="ground truth")

    evaluated = list(range(len(stems)))
    if skip_first_and_last:
        if len(stems) < 3:
            raise InputFormatError(
                f"ground-truth sequence {gt_folder} has {len(stems)} frames; the official protocol "
                "drops the first and last, so at least 3 are needed (or disable skip_first_and_last)"
            )
        evaluated = evaluated[1:-1]
    pred_frames = _png_frames(pred_folder)
    missing = [str(pred_folder / f"{stems[t]}.png") for t in evaluated if stems[t] not in pred_frames]
    if missing:
        raise DatasetLayoutError(
            f"prediction frame {missing[0]} is missing ({len(missing)} evaluated frame(s) of "
            f"sequence {sequence!r} missing in total)"
        )
    pred_paths = [pred_frames[stems[t]] for t in evaluated]
    pred_evaluated = read_sequence_masks(pred_paths, what="prediction")
    if pred_evaluated.shape[1:] != gt.shape[1:]:
        raise InputFormatError(
            f"prediction {pred_paths[0]} is {pred_evaluated.shape[2]}x{pred_evaluated.shape[1]} (WxH) but the "
            f"ground truth {gt_frames[stems[0]]} is {gt.shape[2]}x{gt.shape[1]}; predictions must be at "
            "the ground truth's size"
        )

    object_ids = ground_truth_object_ids(gt)
    allowed = np.zeros(256, dtype=bool)
    allowed[[0, *object_ids]] = True
    for path, frame in zip(pred_paths, pred_evaluated):
        present = np.unique(frame)
        unknown = present[~allowed[present]]
        if unknown.size:
            raise InputFormatError(
                f"prediction {path} holds object id(s) {unknown.tolist()} that are "
                f"not objects of the ground truth of sequence {sequence!r} (its ids: {object_ids})"
            )
    if not object_ids:
        log.warning("ground truth of sequence %r has no object (only 0/%d values); skipped", sequence, VOID_ID)
        return

    # First/last frames are never evaluated with the official protocol: they stay empty here.
    pred = np.zeros_like(gt)
    pred[evaluated] = pred_evaluated
    metric.update(sequence, object_ids, gt, pred)


def format_global_csv(row: dict[str, float], float_format: str = OFFICIAL_FLOAT_FORMAT) -> str:
    """The official global table: header ``J&F-Mean,J-Mean,...,F-Decay``, one line of values."""
    missing = [name for name in GLOBAL_COLUMNS if name not in row]
    if missing:
        raise ValueError(f"format_global_csv: row lacks column(s) {missing}; expected {list(GLOBAL_COLUMNS)}")
    values = ",".join(float_format % float(row[name]) for name in GLOBAL_COLUMNS)
    return ",".join(GLOBAL_COLUMNS) + "\n" + values + "\n"


def format_per_sequence_csv(object_rows: Sequence[dict[str, Any]], float_format: str = OFFICIAL_FLOAT_FORMAT) -> str:
    """The official per-sequence table: ``Sequence,J-Mean,F-Mean``, one row per object."""
    lines = ["Sequence,J-Mean,F-Mean"]
    for name, j_mean, f_mean in official_sequence_rows(object_rows):
        lines.append(f"{name},{float_format % j_mean},{float_format % f_mean}")
    return "\n".join(lines) + "\n"




def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    out_dir: Optional[str | os.PathLike] = None,
    split_name: str = "val",
    skip_first_and_last: bool = True,
    sequences: Optional[Sequence[str]] = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate a results folder against a ground-truth folder with :class:`DavisJF`.

    Args:
        gt_dir: folder of ground-truth sequence folders (``<gt>/<sequence>/<frame>.png``).
        pred_dir: folder of result sequence folders (``<pred>/<sequence>/<frame>.png``).
        out_dir: where the two CSV files go; None = ``pred_dir``.
        split_name: the ``<split>`` in ``global_results-<split>.csv``.
        skip_first_and_last: official protocol (drop the first and last frame).
        sequences: sequences to evaluate; None = every sub-folder of ``gt_dir``.

    Returns:
        ``(global_row, per_object_rows)``: ``{"J&F-Mean": float, ...}`` in official column
        order, and per-object rows ``{"sequence", "object_id", "J-Mean", ..., "F-Decay"}``.
    """
    gt_path, pred_path = Path(gt_dir), Path(pred_dir)
    if not gt_path.is_dir():
        raise DatasetLayoutError(f"ground-truth folder {gt_path} does not exist (expected <gt>/<sequence>/<frame>.png)")
    if not pred_path.is_dir():
        raise DatasetLayoutError(f"prediction folder {pred_path} does not exist (expected <pred>/<sequence>/<frame>.png)")
    names = list_sequences(gt_path) if sequences is None else list(sequences)
    if not names:
        raise DatasetLayoutError(f"ground-truth folder {gt_path} holds no sequence folder (expected <gt>/<sequence>/<frame>.png)")

    metric = DavisJF(skip_first_and_last=skip_first_and_last)
    for sequence in tqdm(names, desc="J&F", unit="seq", file=sys.stderr):
        _evaluate_one(metric, sequence, gt_path, pred_path, skip_first_and_last)
    if metric.update_count == 0:
        raise InputFormatError(f"no sequence of {gt_path} has an object to evaluate (ground truth is all 0/255)")
    table = metric.compute()
    global_row = {name: float(table[name]) for name in GLOBAL_COLUMNS}
    object_rows = metric.per_object_table()

    target = pred_path if out_dir is None else Path(out_dir)
    write_text_atomic(target / f"global_results-{split_name}.csv", format_global_csv(global_row))
    write_text_atomic(target / f"per-sequence_results-{split_name}.csv", format_per_sequence_csv(object_rows))
    log.info(
        "J&F of %d object(s) in %d sequence(s), skip_first_and_last=%s, bound_th=%s; tables in %s",
        len(object_rows), len(names), skip_first_and_last, metric.bound_th, target,
    )
    return global_row, object_rows


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``sampt eval``."""
    parser = argparse.ArgumentParser(
        prog="sampt eval",
        description="DAVIS J&F (semi-supervised protocol) of a results folder against a ground-truth folder.",
    )
    parser.add_argument("--gt", required=True, help="ground-truth folder: <gt>/<sequence>/<frame>.png")
    parser.add_argument("--pred", required=True, help="results folder: <pred>/<sequence>/<frame>.png")
    parser.add_argument("--out", default=None, help="folder for the CSV tables (default: --pred)")
    parser.add_argument("--split", default="val", help="split name used in the CSV file names (default: val)")
    parser.add_argument(
        "--no-skip-first-and-last",
        dest="skip_first_and_last",
        action="store_false",
        help="also evaluate the first and last frame (not the official protocol)",
    )
    parser.add_argument("--sequences", nargs="+", default=None, help="evaluate only these sequences")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """``sampt eval``: evaluate, write the tables, print the global table as CSV to stdout."""
    args = build_parser().parse_args(argv)
    global_row, _ = evaluate_folders(
        args.gt,
        args.pred,
        out_dir=args.out,
        split_name=args.split,
        skip_first_and_last=args.skip_first_and_last,
        sequences=args.sequences,
    )
    # Protocol choices go with every result; stderr keeps stdout a clean CSV.
    print(f"sampt eval: skip_first_and_last={args.skip_first_and_last}, bound_th={DEFAULT_BOUND_TH}", file=sys.stderr)
    sys.stdout.write(format_global_csv(global_row))
    sys.stdout.flush()
    return global_row


if __name__ == "__main__":
    main()
