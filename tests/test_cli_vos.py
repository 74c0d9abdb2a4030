"""`sampt test` end to end on DAVIS layouts with the tiny SAM and a static tracker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DAVIS_SAMPLE, REPO
from sampt.cli import main as sampt_main

TINY = ["--config", "configs/test/tiny_sam.yaml", "--config", "configs/test/tiny.yaml"]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # Config files use paths relative to the repository root, as a user runs them.
    monkeypatch.chdir(REPO)


def run_test(config, root, out, *extra):
    sampt_main(["test", "--config", config, *TINY, "--data.init_args.root", str(root),
                "--data.init_args.longest_size", "128", "--model.init_args.output_dir", str(out / "predictions"),
                "--trainer.logger.init_args.save_dir", str(out), *extra])


def read_csv(path):
    header, *rows = Path(path).read_text().strip().splitlines()
    return header.split(","), [row.split(",") for row in rows]


def test_d17_on_the_davis_sample(davis2017_sample, tmp_path):
    run_test("configs/d17.yaml", davis2017_sample, tmp_path)
    header, rows = read_csv(tmp_path / "global_results-val.csv")
    assert header == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    values = [float(v) for v in rows[0]]
    assert 0.0 <= values[0] <= 1.0 and values[0] == pytest.approx((values[1] + values[4]) / 2)
    _, per_sequence = read_csv(tmp_path / "per-sequence_results-val.csv")
    assert sorted(r[0] for r in per_sequence) == ["blackswan_1", "car-shadow_1"]
    for sequence in ("blackswan", "car-shadow"):
        pngs = sorted((tmp_path / "predictions" / sequence).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(5)]
        image = Image.open(pngs[0])
        assert image.mode == "P" and image.size == (854, 480)
        # The query frame is the given mask, pasted.
        gt = np.array(Image.open(DAVIS_SAMPLE / "Annotations/480p" / sequence / "00000.png")) > 0
        assert np.array_equal(np.array(image) == 1, gt)
    assert (tmp_path / "config.yaml").is_file() and "tiny_sam_vit.pt" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "overlays" / "blackswan.png").is_file()
    assert np.load(tmp_path / "trajectories" / "blackswan.npz")["trajectories"].shape == (5, 1, 5, 2)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_sampt_eval_on_the_saved_pngs_writes_the_same_result_files(davis2017_sample, tmp_path):
    run_test("configs/d17.yaml", davis2017_sample, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["eval", "--gt", str(davis2017_sample / "Annotations/480p"), "--pred",
                    str(tmp_path / "run/predictions"), "--out", str(tmp_path / "eval"), "--workers", "1"])
    assert exit_info.value.code == 0
    names = ["global_results-val.csv", "per-sequence_results-val.csv", "per-object_results-val.csv", "results.json"]
    for name in names:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "eval" / name).read_bytes(), name
    header, rows = read_csv(tmp_path / "run/global_results-val.csv")
    assert all(len(value.split(".")[1]) == 3 for value in rows[0])  # the official 3 decimals
    full = json.loads((tmp_path / "run/results.json").read_text())
    assert abs(full["global"]["J&F-Mean"] - float(rows[0][0])) <= 5e-4  # full precision kept in the JSON


def test_d16_on_the_2016_release_layout(davis2016_sample, tmp_path):
    run_test("configs/d16.yaml", davis2016_sample, tmp_path, "--data.init_args.max_videos", "1")
    _, rows = read_csv(tmp_path / "per-sequence_results-val.csv")
    assert [r[0] for r in rows] == ["blackswan_1"]


def test_object_appearing_later_is_background_before_its_query_frame(tmp_path):
    from sampt.datamodules.dummy_davis import synthetic_multi_object_sequence, write_davis_2017

    frames, masks = synthetic_multi_object_sequence(num_frames=6, height=48, width=64, seed=1, late_object_frame=3)
    write_davis_2017(tmp_path / "tree", {"late": (frames, masks)}, splits={"val": ["late"]})
    run_test("configs/d17.yaml", tmp_path / "tree", tmp_path / "run")
    written = np.stack([np.array(Image.open(tmp_path / "run/predictions/late" / f"{i:05d}.png")) for i in range(6)])
    assert not (written[:3] == 3).any()
    assert np.array_equal(written[3] == 3, masks[3] == 3)
    _, rows = read_csv(tmp_path / "run/per-sequence_results-val.csv")
    assert sorted(r[0] for r in rows) == ["late_1", "late_2", "late_3"]


def test_resume_skips_complete_sequences_and_redoes_partial_ones(davis2017_sample, tmp_path):
    run_test("configs/d17.yaml", davis2017_sample, tmp_path)
    first = (tmp_path / "global_results-val.csv").read_text()
    kept = tmp_path / "predictions/blackswan/00002.png"
    removed = tmp_path / "predictions/car-shadow/00003.png"
    kept_mtime = kept.stat().st_mtime_ns
    removed.unlink()
    run_test("configs/d17.yaml", davis2017_sample, tmp_path)
    assert kept.stat().st_mtime_ns == kept_mtime  # complete: read back, not rewritten
    assert removed.is_file()  # partial: recomputed
    assert (tmp_path / "global_results-val.csv").read_text() == first


def test_rerun_with_another_configuration_recomputes_and_says_what_changed(davis2017_sample, tmp_path, capsys):
    run_test("configs/d17.yaml", davis2017_sample, tmp_path, "--data.init_args.max_videos", "1")
    assert "1 videos: 1 computed" in capsys.readouterr().err
    marker = json.loads((tmp_path / "predictions/blackswan/.complete").read_text())
    assert marker["determined_by"]["method"]["sam_pt"]["seed"] == 0 and len(marker["fingerprint"]) == 64

    run_test("configs/d17.yaml", davis2017_sample, tmp_path, "--data.init_args.max_videos", "1")
    err = capsys.readouterr().err
    assert "1 videos: 0 computed, 1 reused from an earlier run" in err

    # Another seed: the old masks must not be reported as this configuration's result.
    run_test("configs/d17.yaml", davis2017_sample, tmp_path, "--data.init_args.max_videos", "1",
             "--seed_everything", "7")
    err = capsys.readouterr().err
    assert "blackswan: earlier results" in err and "method.sam_pt.seed" in err
    assert "1 computed, 0 reused" in err and "1 recomputed because their configuration changed" in err
    marker = json.loads((tmp_path / "predictions/blackswan/.complete").read_text())
    assert marker["determined_by"]["method"]["sam_pt"]["seed"] == 7

    # Told to refuse, a changed option stops the run and names the video and the option.
    with pytest.raises(SystemExit) as exit_info:
        run_test("configs/d17.yaml", davis2017_sample, tmp_path, "--data.init_args.max_videos", "1",
                 "--seed_everything", "7", "--model.init_args.method.init_args.sam_pt.query.positive_points_per_mask", "2",
                 "--model.init_args.on_stale_results", "error")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "blackswan" in err and "method.sam_pt.query.positive_points_per_mask" in err and "on_stale_results" in err
    assert json.loads((tmp_path / "predictions/blackswan/.complete").read_text())["fingerprint"] == marker["fingerprint"]


def test_videos_too_short_to_score_are_excluded_with_a_warning(tmp_path, capsys):
    from sampt.datamodules.dummy_davis import synthetic_multi_object_sequence, write_davis_2017

    videos = {name: synthetic_multi_object_sequence(num_frames=n, height=48, width=64, seed=n)
              for name, n in (("two", 2), ("four", 4))}
    frames, masks = videos["two"]
    videos["one"] = (frames[:1], masks[:1])
    write_davis_2017(tmp_path / "tree", videos, splits={"val": list(videos)})
    run_test("configs/d17.yaml", tmp_path / "tree", tmp_path / "run")
    err = capsys.readouterr().err
    assert "two has 2 frame(s)" in err and "one has 1 frame(s)" in err
    assert "2 excluded from J&F (fewer than 3 frames)" in err
    _, rows = read_csv(tmp_path / "run/per-sequence_results-val.csv")
    assert {r[0].rsplit("_", 1)[0] for r in rows} == {"four"}
    assert len(list((tmp_path / "run/predictions/two").glob("*.png"))) == 2  # predicted all the same


def test_offline_run_lists_every_missing_checkpoint_before_failing(davis2017_sample, tmp_path, monkeypatch, capsys):
    import urllib.error

    from sampt import checkpoints

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(checkpoints, "_urlopen", offline)
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["test", "--config", "configs/d17.yaml", "--data.init_args.root", str(davis2017_sample),
                    "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # Before any download: what the run needs, with sizes.
    assert "this run needs 2 checkpoint(s)" in err and "2564 MB  to download" in err and "97 MB  to download" in err
    # One error for both files, each with its placement command.
    for entry in (checkpoints.CHECKPOINTS["sam_vit_h"], checkpoints.CHECKPOINTS["cotracker_stride_4_wind_8"]):
        assert f"curl -L -o {tmp_path / 'empty_cache' / entry.filename} {entry.url}" in err
    assert not list((tmp_path / "run").rglob("version_*"))  # no TensorBoard folder for a run that never started


def test_stray_temporaries_of_an_interrupted_run_are_removed(davis2017_sample, tmp_path, capsys):
    stray = tmp_path / "predictions/blackswan/.00001.png.abc123.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a png")
    os.utime(stray, (1e9, 1e9))
    # Another run's folder next to this run's outputs: its temporaries are not this run's to remove.
    other = tmp_path / "other_run/predictions/.00000.png.def456.tmp"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"being written")
    os.utime(other, (1e9, 1e9))
    run_test("configs/d17.yaml", davis2017_sample, tmp_path, "--data.init_args.max_videos", "1")
    assert not stray.exists() and other.exists()
    err = capsys.readouterr().err
    assert "removed 1 temporary file(s)" in err
    assert f"predictions in {tmp_path / 'predictions'}" in err.strip().splitlines()[-1]


def test_oracle_gives_perfect_scores_through_sampt_eval(tmp_path, capsys):
    gt = DAVIS_SAMPLE / "Annotations" / "480p"
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["eval", "--gt", str(gt), "--pred", str(gt), "--out", str(tmp_path)])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("J&F-Mean,J-Mean")
    assert [float(v) for v in lines[1].split(",")][:3] == [1.0, 1.0, 1.0]
    assert (tmp_path / "global_results-val.csv").is_file()


def test_one_and_two_processes_give_identical_results(tmp_path):
    """DDP over 2 CPU processes (gloo), 3 videos (odd): same tables, same PNGs as 1 process."""
    from sampt.datamodules.dummy_davis import convert_davis_sample, synthetic_multi_object_sequence, write_davis_2017

    tree = tmp_path / "tree"
    convert_davis_sample(DAVIS_SAMPLE, tree, layout="2017", max_frames=4, copy=True)
    frames, masks = synthetic_multi_object_sequence(num_frames=4, height=48, width=64, seed=2)
    write_davis_2017(tmp_path / "extra", {"synthetic": (frames, masks)}, splits={"val": ["synthetic"]})
    for sub in ("JPEGImages/480p/synthetic", "Annotations/480p/synthetic"):
        (tree / sub).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp_path / "extra" / sub, tree / sub)
    split = tree / "ImageSets/2017/val.txt"
    split.write_text(split.read_text().strip() + "\nsynthetic\n")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"run{devices}"
        command = [sys.executable, "-m", "sampt.cli", "test", "--config", "configs/d17.yaml", *TINY,
                   "--data.init_args.root", str(tree), "--data.init_args.longest_size", "128",
                   "--model.init_args.output_dir", str(out / "predictions"),
                   "--trainer.logger.init_args.save_dir", str(out),
                   "--trainer.accelerator", "cpu", "--trainer.devices", str(devices)]
        if devices == 2:
            command += ["--trainer.strategy", "ddp"]
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert "Tip:" not in completed.stdout + completed.stderr  # no product tips on every run
        assert completed.stderr.strip().splitlines()[-1].startswith("sampt: predictions in")  # last line
        runs[devices] = out
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (runs[1] / name).read_text() == (runs[2] / name).read_text()
    _, rows = read_csv(runs[1] / "per-sequence_results-val.csv")
    assert len(rows) == 1 + 1 + 3  # blackswan, car-shadow, three synthetic objects
    pngs = sorted(p.relative_to(runs[1]) for p in (runs[1] / "predictions").rglob("*.png"))
    assert len(pngs) == 3 * 4
    assert pngs == sorted(p.relative_to(runs[2]) for p in (runs[2] / "predictions").rglob("*.png"))
    for png in pngs:
        assert np.array_equal(np.array(Image.open(runs[1] / png)), np.array(Image.open(runs[2] / png)))


def test_test_dev_writes_a_davis_submission_zip(tmp_path):
    """DAVIS 2017 test-dev: first-frame masks only, no J&F, a zip with the sequences at the top."""
    import zipfile

    from sampt.datamodules.dummy_davis import synthetic_multi_object_sequence, write_davis_2017

    frames, masks = synthetic_multi_object_sequence(num_frames=4, height=48, width=64, seed=3)
    write_davis_2017(tmp_path / "tree", {"seq": (frames, masks)}, splits={"test-dev": ["seq"]}, first_frame_only=True)
    run_test("configs/d17_test.yaml", tmp_path / "tree", tmp_path / "run")
    assert not (tmp_path / "run" / "global_results-test-dev.csv").exists()
    with zipfile.ZipFile(tmp_path / "run" / "submission.zip") as archive:
        names = archive.namelist()
        assert names == [f"seq/{i:05d}.png" for i in range(4)]
        with archive.open(names[0]) as member:
            assert Image.open(member).mode == "P"
