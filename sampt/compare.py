"""``sampt compare RUN [RUN ...]``: the VOS scores of several runs side by side.

A run is a folder holding ``results.json`` (what ``sampt test`` and ``sampt eval`` write next to
the official CSVs) or that file itself. The table gives, per run, the model line of its
``protocol.json`` (``SAM-PT: SAM ... + tracker``, ``SAM 2 video: ...``) and the global J&F, J and
F, with the number of objects. Scores are only comparable on the same objects: runs whose
(sequence, object) sets or splits differ are refused, naming what differs, unless
``--allow-different-objects`` is given (then the table says so). Standard library only.

    sampt compare outputs/d17_sam_pt outputs/d17_sam2_video
    sampt compare runs/* --format csv > table.csv
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from sampt.errors import SamptError

#: Columns of the table: (header, key of results.json's "global").
SCORE_COLUMNS = (("J&F", "J&F-Mean"), ("J", "J-Mean"), ("J-Recall", "J-Recall"), ("F", "F-Mean"),
                 ("F-Recall", "F-Recall"))


class CompareError(SamptError):
    """Runs that cannot be read or compared."""


@dataclass
class RunScores:
    name: str
    path: Path
    model: str
    split: str
    scores: dict[str, float]
    objects: frozenset[tuple[str, int]]


def read_run(path: Path, name: Optional[str] = None) -> RunScores:
    """One run's scores from ``<path>/results.json`` (or ``path`` itself) and its model line."""
    path = Path(path)
    results = path / "results.json" if path.is_dir() else path
    if not results.is_file():
        raise CompareError(f"{path}: no results.json here (expected the output folder of `sampt test` or `sampt eval`)")
    try:
        document = json.loads(results.read_text())
        scores = {key: float(document["global"][key]) for _, key in SCORE_COLUMNS}
        objects = frozenset((str(o["sequence"]), int(o["object_id"])) for o in document["objects"])
        split = str(document.get("split", ""))
    except (ValueError, KeyError, TypeError) as error:
        raise CompareError(f"{results}: not a VOS results.json (expected 'global' with "
                           f"{', '.join(key for _, key in SCORE_COLUMNS)} and 'objects'): {error}") from error
    model = "-"
    protocol = results.parent / "protocol.json"
    if protocol.is_file():
        try:
            model = str(json.loads(protocol.read_text())["protocol"]["model"])
        except (ValueError, KeyError, TypeError):
            model = "(unreadable protocol.json)"
    return RunScores(name or results.parent.name, results.parent, model, split, scores, objects)


def _some_objects(objects, shown: int = 5) -> str:
    """``seq_1, seq_2, ... (+n more)``: the first few (sequence, object) pairs."""
    listed = ", ".join(f"{s}_{o}" for s, o in sorted(objects)[:shown])
    return listed + (f" (+{len(objects) - shown} more)" if len(objects) > shown else "")


def check_comparable(runs: Sequence[RunScores]) -> list[str]:
    """What differs between the runs' splits and object sets (empty when they are comparable)."""
    problems = []
    first = runs[0]
    for run in runs[1:]:
        if run.split != first.split:
            problems.append(f"{run.name} is split {run.split!r}, {first.name} split {first.split!r}")
        missing, extra = first.objects - run.objects, run.objects - first.objects
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} of {first.name}'s objects: {_some_objects(missing)}")
            if extra:
                parts.append(f"has {len(extra)} objects {first.name} lacks: {_some_objects(extra)}")
            problems.append(f"{run.name} " + "; ".join(parts))
    return problems


def format_table(runs: Sequence[RunScores], fmt: str = "table", note: str = "") -> str:
    """The runs as an aligned text table, a Markdown table or CSV (scores in percent, 1 decimal)."""
    header = ["run", "model", *[title for title, _ in SCORE_COLUMNS], "objects"]
    rows = [[run.name, run.model, *[f"{100 * run.scores[key]:.1f}" for _, key in SCORE_COLUMNS], str(len(run.objects))]
            for run in runs]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *rows])
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        numeric = set(range(2, len(header)))

        def line(row):
            return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        lines = [line(header), line(["-" * w for w in widths]), *[line(row) for row in rows]]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sampt compare", description="The VOS scores (J&F, J, F) of several runs side by side.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (holding results.json) or results.json files")
    parser.add_argument("--names", nargs="+", default=None, help="a name per run (default: the folder names)")
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    parser.add_argument("--allow-different-objects", action="store_true",
                        help="compare runs evaluated on different objects or splits (the table says so)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.names is not None and len(args.names) != len(args.runs):
        raise CompareError(f"--names gives {len(args.names)} names for {len(args.runs)} runs")
    names = args.names or [None] * len(args.runs)
    runs = [read_run(path, name) for path, name in zip(args.runs, names)]
    problems = check_comparable(runs)
    note = ""
    if problems:
        if not args.allow_different_objects:
            raise CompareError("the runs are not scored on the same objects, so their means are not comparable: "
                               + "; ".join(problems) + " (--allow-different-objects compares them anyway)")
        note = "note: not the same objects: " + "; ".join(problems)
    print(format_table(runs, args.format, note), end="")
    return 0
