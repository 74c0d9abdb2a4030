"""The VOS result files of a run, written the same way by ``sampt test`` and ``sampt eval``.

:func:`write_vos_results` takes the per-object rows (``DavisJF.per_object_table()`` or
``sampt eval``'s, ``{"sequence", "object_id", "J-Mean", "J-Recall", "J-Decay", "F-Mean",
"F-Recall", "F-Decay"}``) and writes into one folder:

* ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``: the official
  DAVIS tables, byte for byte as ``davis2017-evaluation`` writes them (pandas ``to_csv`` with
  ``float_format="%.3f"``, no index: minimal quoting, ``\\n`` line ends, NaN as an empty field);
  the per-sequence table has one row per object, named ``<sequence>_<object id>``;
* ``per-object_results-<split>.csv``: the table ``vos-benchmark`` writes (``results.csv``:
  padded columns ``sequence, obj, J&F, J, F`` in percent with one decimal, a ``Global score``
  row first);
* ``results.json``: everything at full precision (floats as Python's shortest round-trip
  repr): ``{"split", "global": {...}, "objects": [{..., "J&F-Mean"}], **extra}``; NaN is
  written as null so that the file is strict JSON.

The global values are means over the objects in row order (:func:`global_table`), so the same
rows give the same bytes whichever command wrote them. Standard library and numpy only.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from sampt.io.atomic import write_text_atomic
from sampt.metrics.functional_jf import GLOBAL_COLUMNS, OBJECT_STAT_COLUMNS, global_table, official_sequence_rows

PathLike = Union[str, os.PathLike]

#: Float format of the official DAVIS tables.
OFFICIAL_FLOAT_FORMAT = "%.3f"
#: Name of the full-precision results file.
RESULTS_JSON = "results.json"


def result_file_names(split: str) -> dict[str, str]:
    """``{kind: file name}`` of the files :func:`write_vos_results` writes for ``split``."""
    return {
        "global_csv": f"global_results-{split}.csv",
        "per_sequence_csv": f"per-sequence_results-{split}.csv",
        "per_object_csv": f"per-object_results-{split}.csv",
        "json": RESULTS_JSON,
    }


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return buffer.getvalue()


def _format_float(value: Any, float_format: str) -> str:
    value = float(value)
    return "" if math.isnan(value) else float_format % value


def format_global_csv(row: Mapping[str, float], float_format: str = OFFICIAL_FLOAT_FORMAT) -> str:
    """The official global table: header ``J&F-Mean,J-Mean,...,F-Decay``, one line of values."""
    missing = [name for name in GLOBAL_COLUMNS if name not in row]
    if missing:
        raise ValueError(f"format_global_csv: row lacks column(s) {missing}; expected {list(GLOBAL_COLUMNS)}")
    return _csv_text([list(GLOBAL_COLUMNS), [_format_float(row[name], float_format) for name in GLOBAL_COLUMNS]])


def format_per_sequence_csv(object_rows: Sequence[Mapping[str, Any]], float_format: str = OFFICIAL_FLOAT_FORMAT) -> str:
    """The official per-sequence table: ``Sequence,J-Mean,F-Mean``, one row per object."""
    lines = [["Sequence", "J-Mean", "F-Mean"]]
    for name, j_mean, f_mean in official_sequence_rows(object_rows):
        lines.append([name, _format_float(j_mean, float_format), _format_float(f_mean, float_format)])
    return _csv_text(lines)


def format_per_object_csv(object_rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-object table in ``vos-benchmark``'s ``results.csv`` layout (percent, 1 decimal)."""
    if not object_rows:
        raise ValueError("format_per_object_csv: no object row")
    table = global_table(object_rows)
    width = max(len("Global score"), *(len(str(row["sequence"])) for row in object_rows))
    global_j, global_f = 100 * table["J-Mean"], 100 * table["F-Mean"]
    lines = [
        f"{'sequence':<{width}},{'obj':>3}, {'J&F':>4}, {'J':>4}, {'F':>4}",
        f"{'Global score':<{width}},{'':>3}, {(global_j + global_f) / 2:.1f}, {global_j:.1f}, {global_f:.1f}",
    ]
    for row in object_rows:
        j_mean, f_mean = 100 * row["J-Mean"], 100 * row["F-Mean"]
        lines.append(f"{str(row['sequence']):<{width}},{int(row['object_id']):03}, "
                     f"{(j_mean + f_mean) / 2:>4.1f}, {j_mean:>4.1f}, {f_mean:>4.1f}")
    return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_value(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def vos_protocol(dataset: str = "davis", skip_first_and_last: bool = True, bound_th: float = 0.008) -> dict[str, Any]:
    """The ``"protocol"`` entry of ``results.json`` (pass it as ``extra={"protocol": ...}``)."""
    return {"dataset": str(dataset), "skip_first_and_last": bool(skip_first_and_last), "bound_th": float(bound_th)}


def results_document(
    object_rows: Sequence[Mapping[str, Any]], split: str, extra: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """The content of ``results.json`` (see the module docstring)."""
    objects = []
    for row in object_rows:
        entry = {"sequence": str(row["sequence"]), "object_id": int(row["object_id"])}
        entry.update({name: float(row[name]) for name in OBJECT_STAT_COLUMNS})
        entry["J&F-Mean"] = (entry["J-Mean"] + entry["F-Mean"]) / 2.0
        objects.append(entry)
    document: dict[str, Any] = {
        "split": split,
        "num_sequences": len({entry["sequence"] for entry in objects}),
        "num_objects": len(objects),
        "global": global_table(object_rows),
        "objects": objects,
    }
    for key, value in (extra or {}).items():
        if key in document:
            raise ValueError(f"results_document: extra key {key!r} would replace a results field")
        document[key] = value
    return _json_value(document)


def write_vos_results(
    out_dir: PathLike,
    per_object_rows: Sequence[Mapping[str, Any]],
    split: str,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Path]:
    """Write the VOS result files of a run into ``out_dir`` (atomically).

    Args:
        out_dir: destination folder (created if needed).
        per_object_rows: one row per (sequence, object) with the keys of
            ``DavisJF.per_object_table()``, in the order to report (sequence, then object id).
        split: the ``<split>`` of the CSV file names (and ``results.json``'s ``"split"``).
        extra: more top-level fields of ``results.json`` (e.g. ``{"protocol": {...}}``);
            they must not be named like a results field.

    Returns:
        ``{"global_csv", "per_sequence_csv", "per_object_csv", "json"}`` -> the paths written.

    Raises:
        ValueError: no rows, a row without a statistic, or an ``extra`` key that clashes.
    """
    if not per_object_rows:
        raise ValueError("write_vos_results: no per-object row (no object was evaluated)")
    for row in per_object_rows:
        missing = [key for key in ("sequence", "object_id", *OBJECT_STAT_COLUMNS) if key not in row]
        if missing:
            raise ValueError(f"write_vos_results: row {dict(row)!r} lacks {missing}")
    out = Path(out_dir)
    names = result_file_names(split)
    texts = {
        "global_csv": format_global_csv(global_table(per_object_rows)),
        "per_sequence_csv": format_per_sequence_csv(per_object_rows),
        "per_object_csv": format_per_object_csv(per_object_rows),
        "json": json.dumps(results_document(per_object_rows, split, extra), indent=2, allow_nan=False) + "\n",
    }
    paths = {}
    for kind, text in texts.items():
        paths[kind] = out / names[kind]
        write_text_atomic(paths[kind], text)
    return paths
