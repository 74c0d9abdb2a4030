"""`sampt compare`: runs written by the project's results writer, side by side."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sampt.cli import main as sampt_main
from sampt.io.results import write_vos_results

STATS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def write_run(folder, seed, objects, model):
    rng = np.random.default_rng(seed)
    rows = [{"sequence": s, "object_id": o, **{k: float(rng.random()) for k in STATS}} for s, o in objects]
    write_vos_results(folder, rows, "val")
    (folder / "protocol.json").write_text(json.dumps({"protocol": {"model": model}}))
    return rows


OBJECTS = [("blackswan", 1), ("car-shadow", 1), ("car-shadow", 2)]


def test_runs_side_by_side_with_their_models_and_means(tmp_path, capsys):
    a = write_run(tmp_path / "sam_pt", 0, OBJECTS, "SAM-PT: SAM sam2/sam2.1_hiera_large + CoTrackerTracker")
    b = write_run(tmp_path / "sam2_video", 1, OBJECTS, "SAM 2 video: sam2.1_hiera_large")
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["compare", str(tmp_path / "sam_pt"), str(tmp_path / "sam2_video"), "--format", "csv"])
    assert exit_info.value.code == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header == "run,model,J&F,J,J-Recall,F,F-Recall,objects"
    for line, written, name in zip(rows, (a, b), ("sam_pt", "sam2_video")):
        cells = next(iter(__import__("csv").reader([line])))
        j, f = np.mean([r["J-Mean"] for r in written]), np.mean([r["F-Mean"] for r in written])
        assert cells[0] == name and cells[-1] == "3"
        assert float(cells[2]) == pytest.approx(100 * (j + f) / 2, abs=0.05)
        assert float(cells[3]) == pytest.approx(100 * j, abs=0.05) and float(cells[5]) == pytest.approx(100 * f, abs=0.05)
    assert "CoTrackerTracker" in rows[0] and "SAM 2 video" in rows[1]


def test_runs_on_different_objects_are_refused_unless_allowed(tmp_path, capsys):
    write_run(tmp_path / "full", 0, OBJECTS, "A")
    write_run(tmp_path / "partial", 1, OBJECTS[:2], "B")
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["compare", str(tmp_path / "full"), str(tmp_path / "partial")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "partial lacks 1 of full's objects: car-shadow_2" in err and "--allow-different-objects" in err
    with pytest.raises(SystemExit):
        sampt_main(["compare", str(tmp_path / "full"), str(tmp_path / "partial"), "--allow-different-objects",
                    "--format", "markdown", "--names", "ours", "theirs"])
    out = capsys.readouterr().out
    assert out.startswith("| run | model | J&F |") and "| theirs | B |" in out and "note: not the same objects" in out


def test_a_folder_without_results_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["compare", str(tmp_path)])
    assert exit_info.value.code == 2 and f"{tmp_path}: no results.json here" in capsys.readouterr().err
