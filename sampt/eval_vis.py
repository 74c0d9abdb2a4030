"""`sampt eval-vis`: score a YouTube-VIS results JSON with video mask AP, and write such files.

Results files are lists of ``{"video_id": int, "score": float, "category_id": int,
"segmentations": [one RLE dict with string counts (or null) per frame]}``, the format the
YouTube-VIS / UVO tools read. The metric itself lives in :mod:`sampt.metrics.vis_ap`, imported
when a function needs it (it brings torch), so that ``sampt eval-vis --help`` starts light.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from sampt.errors import InputFormatError
from sampt.io.atomic import write_text_atomic


def _is_tensor(value) -> bool:
    """A torch tensor, told without importing torch (only loaded modules can make one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def masks_to_rles(masks: Any) -> list:
    """Encode one tube's masks as JSON-serialisable compressed RLEs.

    Args:
        masks: ``(T, H, W) bool`` (any dtype; non-zero = foreground), ndarray or tensor on any
            device.

    Returns:
        T dicts ``{"size": [H, W], "counts": str}``.
    """
    from sampt.metrics.vis_ap import encode_masks

    if _is_tensor(masks):
        masks = masks.detach().cpu().numpy()
    return [_json_rle(rle) for rle in encode_masks(np.asarray(masks))]


def _json_rle(rle: Mapping) -> dict:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}




def write_results_json(path: Union[str, os.PathLike], entries: Iterable[Mapping]) -> int:
    """Write YouTube-VIS results (atomically).

    Args:
        path: output JSON file.
        entries: dicts with ``video_id`` (int), ``score`` (float), optional ``category_id`` (int,
            default 1, UVO's single "object" category) and ``segmentations``: per-frame RLE
            dicts (str or bytes counts; None = absent, written as null) or ``(T, H, W) bool``
            masks (ndarray or tensor).

    Returns:
        The number of entries written.
    """
    serialised = []
    for index, entry in enumerate(entries):
        for key in ("video_id", "score", "segmentations"):
            if key not in entry:
                raise InputFormatError(f"write_results_json({os.fspath(path)!r}): entry {index} has no {key!r}")
        segmentations = entry["segmentations"]
        if isinstance(segmentations, np.ndarray) or _is_tensor(segmentations):
            rles: list = masks_to_rles(segmentations)
        else:
            rles = [None if rle is None else _json_rle(rle) for rle in segmentations]
        score = entry["score"]
        serialised.append({
            "video_id": int(entry["video_id"]),
            "score": float(score.item() if _is_tensor(score) else score),
            "category_id": int(entry.get("category_id", 1)),
            "segmentations": rles,
        })
    write_text_atomic(path, json.dumps(serialised))
    return len(serialised)


def format_stats_table(stats: Mapping[str, float]) -> str:
    """The 12 stats as a two-column text table (name, value; -1 = undefined)."""
    from sampt.metrics.vis_ap import STAT_NAMES

    lines = [f"{'metric':<6}  value"]
    lines += [f"{name:<6}  {stats[name]:.6f}" for name in STAT_NAMES]
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sampt eval-vis",
        description="Score a YouTube-VIS results JSON with video mask AP (YouTube-VIS / UVO protocol).",
    )
    parser.add_argument("--gt", required=True, help="ground-truth JSON (YouTube-VIS / UVO format)")
    parser.add_argument("--pred", required=True, help="results JSON: list of {video_id, score, category_id, "
                                                      "segmentations}")
    parser.add_argument("--out", default=None, help="also write the 12 stats to this JSON file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sampt eval-vis --gt JSON --pred JSON [--out FILE]``.

    Prints the 12 stats as a table and optionally writes ``{name: value}`` JSON to ``--out``.

    Raises:
        InputFormatError: a missing or malformed file (named in the message), results that
            reference unknown video ids or have the wrong number of frames.
    """
    args = _build_parser().parse_args(argv)
    from sampt.metrics.vis_ap import STAT_NAMES, evaluate_vis

    evaluation = evaluate_vis(args.gt, args.pred)
    stats = evaluation["stats"]
    print(format_stats_table(stats))
    if args.out:
        write_text_atomic(args.out, json.dumps({name: stats[name] for name in STAT_NAMES}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
