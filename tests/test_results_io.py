"""The one VOS results formatter (sampt.io.results): the Metric's rows and `sampt eval` give the
same files; the official CSV formatting; full-precision results.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sampt.eval_vos import evaluate_folders
from sampt.io.png import write_index_png
from sampt.io.results import (format_global_csv, format_per_object_csv, format_per_sequence_csv, result_file_names,
                              results_document, vos_protocol, write_vos_results)
from sampt.metrics.functional_jf import GLOBAL_COLUMNS
from sampt.metrics.jf import DavisJF


def _videos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    videos = {}
    for name, num_objects in (("alpha", 2), ("beta", 1)):
        gt = np.zeros((6, 40, 50), np.uint8)
        for k in range(num_objects):
            gt[:, 5 + 15 * k : 15 + 15 * k, 5 : 20 + 5 * k] = k + 1
        pred = gt.copy()
        pred[rng.uniform(size=gt.shape) < 0.05] = 0
        pred[2:, 30:35, 40:45] = 1
        videos[name] = (gt, pred)
    return videos


def test_metric_rows_and_sampt_eval_write_identical_files(tmp_path):
    videos = _videos()
    metric = DavisJF()
    for name, (gt, pred) in videos.items():
        metric.update(name, None, gt, pred)
        for t in range(gt.shape[0]):
            write_index_png(tmp_path / "gt" / name / f"{t:05d}.png", gt[t])
            write_index_png(tmp_path / "pred" / name / f"{t:05d}.png", pred[t])
    table = {k: float(v) for k, v in metric.compute().items()}
    rows = metric.per_object_table()
    extra = {"protocol": vos_protocol("davis", metric.skip_first_and_last, metric.bound_th)}
    paths = write_vos_results(tmp_path / "metric", rows, "val", extra)
    assert {k: p.name for k, p in paths.items()} == result_file_names("val")
    global_row, eval_rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "eval",
                                             progress=False)
    assert eval_rows == rows and global_row == table  # bitwise: one functional half
    for path in paths.values():
        assert (tmp_path / "eval" / path.name).read_bytes() == path.read_bytes()
    document = json.loads(paths["json"].read_text())
    assert document["global"] == table and document["num_objects"] == 3 and document["num_sequences"] == 2
    assert [o["J-Mean"] for o in document["objects"]] == [r["J-Mean"] for r in rows]  # full precision
    lines = paths["global_csv"].read_text().splitlines()
    assert lines == [",".join(GLOBAL_COLUMNS), ",".join("%.3f" % table[c] for c in GLOBAL_COLUMNS)]
    assert [line.split(",")[0] for line in paths["per_sequence_csv"].read_text().splitlines()] == [
        "Sequence", "alpha_1", "alpha_2", "beta_1"]


def test_official_csv_formatting_details():
    row = {name: 0.5 for name in GLOBAL_COLUMNS}
    row["J-Decay"], row["F-Decay"] = -0.0004, float("nan")
    # pandas' to_csv(float_format="%.3f"): "-0.000" stays signed, NaN is an empty field.
    assert format_global_csv(row).splitlines()[1] == "0.500,0.500,0.500,-0.000,0.500,0.500,"
    rows = [{"sequence": "a,b", "object_id": 1, "J-Mean": 0.12345, "F-Mean": 1.0}]
    assert format_per_sequence_csv(rows) == 'Sequence,J-Mean,F-Mean\n"a,b_1",0.123,1.000\n'
    with pytest.raises(ValueError, match="F-Decay"):
        format_global_csv({name: 0.0 for name in GLOBAL_COLUMNS[:-1]})


def test_per_object_table_layout_and_json_edge_cases(tmp_path):
    stats = {"J-Recall": 1.0, "J-Decay": 0.0, "F-Recall": 1.0, "F-Decay": float("nan")}
    rows = [{"sequence": "longer-name", "object_id": 3, "J-Mean": 0.5, "F-Mean": 0.75, **stats},
            {"sequence": "b", "object_id": 12, "J-Mean": 1.0, "F-Mean": 1.0, **stats}]
    assert format_per_object_csv(rows).splitlines() == [
        "sequence    ,obj,  J&F,    J,    F",
        "Global score,   , 81.2, 75.0, 87.5",
        "longer-name ,003, 62.5, 50.0, 75.0",
        "b           ,012, 100.0, 100.0, 100.0",
    ]
    document = results_document(rows, "val")
    assert document["objects"][0]["F-Decay"] is None and document["global"]["F-Decay"] is None
    paths = write_vos_results(tmp_path, rows, "test-dev", {"run": {"seed": np.int64(3)}})
    assert json.loads(paths["json"].read_text())["run"] == {"seed": 3}
    assert paths["global_csv"].name == "global_results-test-dev.csv"
    with pytest.raises(ValueError, match="global"):
        write_vos_results(tmp_path, rows, "val", {"global": 1})
    with pytest.raises(ValueError, match="no per-object row"):
        write_vos_results(tmp_path, [], "val")
