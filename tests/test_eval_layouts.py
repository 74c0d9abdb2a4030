"""`sampt eval` on every layout it reads, against vos-benchmark (a test dependency) where the
protocols agree: index PNGs, sparse ground truth, SA-V per-object folders, mixed layouts,
RGB / grayscale results, LVOS meta ranges, workers, --strict and unknown result ids."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.eval_vos import evaluate_folders, main
from sampt.io.png import PNG_RULE, davis_palette, write_binary_png, write_index_png
from sampt.metrics.functional_jf import jf_statistics, per_frame_jf

# vos-benchmark is a test dependency (pyproject's test extra): the reference these tests compare with.
from vos_benchmark import benchmark as vos_benchmark
from vos_benchmark.evaluator import Evaluator

HEIGHT, WIDTH = 72, 96
STATS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def _polygon(rng: np.random.Generator, centre, scale) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = scale * rng.uniform(0.5, 1.0, 9)
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1).astype(np.int32)


def synthetic_video(seed: int, num_frames: int, num_objects: int, enters=None) -> tuple[np.ndarray, np.ndarray]:
    """``(gt, pred)`` ``(T, H, W) uint8`` index masks: moving polygons, a jittered prediction
    with a false positive; object k is absent before frame ``enters[k]`` and absent in frame 3."""
    rng = np.random.default_rng(seed)
    enters = enters or {}
    gt = np.zeros((num_frames, HEIGHT, WIDTH), np.uint8)
    pred = np.zeros_like(gt)
    starts = rng.uniform((15, 15), (WIDTH - 15, HEIGHT - 15), (num_objects, 2))
    for t in range(num_frames):
        for k in range(num_objects):
            if t < enters.get(k + 1, 0) or (t == 3 and k == num_objects - 1 and num_objects > 1):
                continue
            points = _polygon(rng, starts[k] + 2 * t, 9 + 3 * k)
            cv2.fillPoly(gt[t], [points], k + 1)
            cv2.fillPoly(pred[t], [points + rng.integers(-2, 3, points.shape).astype(np.int32)], k + 1)
        if t % 3 == 1:
            cv2.circle(pred[t], (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))), 3, 1, -1)
    return gt, pred


def write_index_tree(root: Path, videos: dict[str, np.ndarray], stems=None) -> Path:
    for name, masks in videos.items():
        for t, mask in enumerate(masks):
            if stems is None or t in stems:
                write_index_png(root / name / f"{t:05d}.png", mask)
    return root


def write_object_tree(root: Path, videos: dict[str, dict[int, np.ndarray]]) -> Path:
    for name, objects in videos.items():
        for object_id, masks in objects.items():
            for t, mask in enumerate(masks):
                write_binary_png(root / name / f"{object_id:03d}" / f"{t:05d}.png", mask)
    return root


def _rows(rows) -> dict:
    return {(r["sequence"], r["object_id"]): r for r in rows}


@pytest.fixture(scope="module")
def index_set(tmp_path_factory):
    """Three multi-object videos whose objects are all present in the first scored frame."""
    base = tmp_path_factory.mktemp("index_set")
    videos = {f"v{i}": synthetic_video(i, 7 + i, 1 + i) for i in range(3)}
    write_index_tree(base / "gt", {n: v[0] for n, v in videos.items()})
    write_index_tree(base / "pred", {n: v[1] for n, v in videos.items()})
    return base, videos


# ------------------------------------------------------------------------ same numbers as vos-benchmark
def test_index_layout_matches_vos_benchmark_to_1e12(index_set, tmp_path):
    base, videos = index_set
    pred_copy = tmp_path / "pred"  # vos-benchmark writes its results.csv into the results folder
    write_index_tree(pred_copy, {n: v[1] for n, v in videos.items()})
    *_, object_metrics = vos_benchmark.benchmark([str(base / "gt")], [str(pred_copy)], num_processes=1, verbose=False)
    global_row, rows = evaluate_folders(base / "gt", base / "pred", out_dir=tmp_path / "out", progress=False)
    ours = _rows(rows)
    assert len(ours) == sum(len(iou) for iou, _ in object_metrics[0].values()) == 1 + 2 + 3
    for sequence, (iou, boundary) in object_metrics[0].items():
        for object_id in iou:
            row = ours[(sequence, object_id)]
            assert abs(row["J-Mean"] - iou[object_id] / 100) <= 1e-12
            assert abs(row["F-Mean"] - boundary[object_id] / 100) <= 1e-12
    assert 0.3 < global_row["J&F-Mean"] < 0.99
    # The per-object table is vos-benchmark's results.csv, byte for byte.
    assert (tmp_path / "out" / "per-object_results-val.csv").read_bytes() == (pred_copy / "results.csv").read_bytes()


def test_workers_give_identical_results_and_files(index_set, tmp_path):
    base, _ = index_set
    _, one = evaluate_folders(base / "gt", base / "pred", out_dir=tmp_path / "w1", progress=False, workers=1)
    _, two = evaluate_folders(base / "gt", base / "pred", out_dir=tmp_path / "w2", progress=False, workers=2)
    assert one == two
    for name in ("global_results-val.csv", "per-sequence_results-val.csv", "per-object_results-val.csv", "results.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    document = json.loads((tmp_path / "w1" / "results.json").read_text())
    assert [(o["sequence"], o["object_id"]) for o in document["objects"]] == [(r["sequence"], r["object_id"]) for r in one]
    assert all(o[s] == r[s] for o, r in zip(document["objects"], one) for s in STATS)  # full precision
    assert document["protocol"] == {"dataset": "davis", "skip_first_and_last": True, "bound_th": 0.008}


def test_sav_protocol_counts_from_first_appearance_like_vos_benchmark(tmp_path):
    """Objects entering late (and predicted early): vos-benchmark's rule, used by SA-V."""
    videos = {"late": synthetic_video(7, 9, 3, enters={2: 4, 3: 6})}
    gt, pred = videos["late"]
    cv2.circle(pred[2], (10, 10), 4, 3, -1)  # object 3 predicted before it enters
    write_index_tree(tmp_path / "gt", {"late": gt})
    write_index_tree(tmp_path / "pred", {"late": pred})
    *_, metrics = vos_benchmark.benchmark([str(tmp_path / "gt")], [str(tmp_path / "pred")], num_processes=1,
                                          verbose=False)
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", dataset="sav",
                               progress=False)
    iou, boundary = metrics[0]["late"]
    assert sorted(iou) == [r["object_id"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert abs(row["J-Mean"] - iou[row["object_id"]] / 100) <= 1e-12
        assert abs(row["F-Mean"] - boundary[row["object_id"]] / 100) <= 1e-12
    # The DAVIS protocol scores every frame: object 2 gets J = 1 where it and its result are absent.
    _, davis_rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "d", progress=False)
    assert _rows(davis_rows)[("late", 2)]["J-Mean"] > _rows(rows)[("late", 2)]["J-Mean"]


def test_sparse_ground_truth_scores_annotated_frames_only(tmp_path):
    gt, pred = synthetic_video(3, 21, 2)
    annotated = {0, 5, 10, 15, 20}
    write_index_tree(tmp_path / "gt", {"sparse": gt}, stems=annotated)
    write_index_tree(tmp_path / "pred", {"sparse": pred})  # results for every frame
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", progress=False)
    scored = [5, 10, 15]  # the first and last *annotated* frames are skipped
    for row in rows:
        k = row["object_id"]
        j_values, f_values = per_frame_jf(gt[scored] == k, pred[scored] == k)
        assert [row[s] for s in STATS] == pytest.approx(jf_statistics(j_values) + jf_statistics(f_values), abs=1e-15)
    *_, metrics = vos_benchmark.benchmark([str(tmp_path / "gt")], [str(tmp_path / "pred")], num_processes=1,
                                          verbose=False)
    iou, _ = metrics[0]["sparse"]
    assert all(abs(r["J-Mean"] - iou[r["object_id"]] / 100) <= 1e-12 for r in rows)


# ------------------------------------------------------------------------------ per-object layouts
def _overlapping_objects(gt: np.ndarray, pred: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    ids = [int(k) for k in np.unique(gt) if k]
    gt_objects = {k: gt == k for k in ids}
    pred_objects = {k: pred == k for k in ids}
    pred_objects[1] = pred_objects[1] | cv2.dilate((pred == 2).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return gt_objects, pred_objects


def test_sav_per_object_layout_matches_the_sav_evaluator_rule(tmp_path):
    gt, pred = synthetic_video(11, 8, 2)
    gt_objects, pred_objects = _overlapping_objects(gt, pred)
    gt_objects[0] = np.zeros_like(gt_objects[1])  # SA-V ids start at 000; this one enters at frame 5
    gt_objects[0][5:, 50:60, 10:30] = True
    pred_objects[0] = np.zeros_like(gt_objects[0])
    pred_objects[0][4:, 52:62, 12:30] = True
    write_object_tree(tmp_path / "gt", {"vid": gt_objects})
    write_object_tree(tmp_path / "pred", {"vid": pred_objects})
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", dataset="sav",
                               progress=False)
    assert [r["object_id"] for r in rows] == [0, 1, 2]
    for row in rows:  # SA-V's sav_benchmark: vos-benchmark's Evaluator per object on mask > 0
        evaluator = Evaluator()
        for t in range(1, gt.shape[0] - 1):
            evaluator.feed_frame(pred_objects[row["object_id"]][t], gt_objects[row["object_id"]][t])
        iou, boundary = evaluator.conclude()
        assert abs(row["J-Mean"] - iou[True] / 100) <= 1e-12 and abs(row["F-Mean"] - boundary[True] / 100) <= 1e-12
    text = (tmp_path / "out" / "per-sequence_results-val.csv").read_text().splitlines()
    assert text[0] == "Sequence,J-Mean,F-Mean" and [line.split(",")[0] for line in text[1:]] == ["vid_0", "vid_1", "vid_2"]


def test_index_ground_truth_with_overlapping_per_object_results(tmp_path):
    gt, pred = synthetic_video(12, 7, 2)
    _, pred_objects = _overlapping_objects(gt, pred)
    write_index_tree(tmp_path / "gt", {"mix": gt})
    write_object_tree(tmp_path / "pred", {"mix": pred_objects})
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", progress=False)
    for row in rows:
        k = row["object_id"]
        j_values, f_values = per_frame_jf(gt[1:-1] == k, pred_objects[k][1:-1])
        assert [row[s] for s in STATS] == pytest.approx(jf_statistics(j_values) + jf_statistics(f_values), abs=1e-15)
    assert _rows(rows)[("mix", 1)]["J-Mean"] < 0.95  # the overlap costs object 1


def test_rgb_and_binary_grayscale_results_read_like_palette_results(tmp_path):
    gt, pred = synthetic_video(5, 6, 3)
    write_index_tree(tmp_path / "gt", {"c": gt})
    write_index_tree(tmp_path / "palette", {"c": pred})
    colours = np.asarray(davis_palette(), np.uint8).reshape(256, 3)
    for t, mask in enumerate(pred):
        (tmp_path / "rgb" / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours[mask], mode="RGB").save(tmp_path / "rgb" / "c" / f"{t:05d}.png")
    _, palette_rows = evaluate_folders(tmp_path / "gt", tmp_path / "palette", out_dir=tmp_path / "a", progress=False)
    _, rgb_rows = evaluate_folders(tmp_path / "gt", tmp_path / "rgb", out_dir=tmp_path / "b", progress=False)
    assert rgb_rows == palette_rows
    # One object: 0/255 grayscale results (and ground truth) are object 1.
    single_gt, single_pred = (gt == 2).astype(np.uint8), (pred == 2).astype(np.uint8)
    write_index_tree(tmp_path / "gt1", {"c": single_gt})
    write_index_tree(tmp_path / "p1", {"c": single_pred})
    for t in range(len(pred)):
        write_binary_png(tmp_path / "g1" / "c" / f"{t:05d}.png", single_gt[t])
        write_binary_png(tmp_path / "b1" / "c" / f"{t:05d}.png", single_pred[t])
    _, reference = evaluate_folders(tmp_path / "gt1", tmp_path / "p1", out_dir=tmp_path / "c", progress=False)
    for gt_dir, pred_dir in (("gt1", "b1"), ("g1", "p1"), ("g1", "b1")):
        _, rows = evaluate_folders(tmp_path / gt_dir, tmp_path / pred_dir, out_dir=tmp_path / "d", progress=False)
        assert rows == reference


def test_grayscale_id_ground_truth_starting_with_void_only_frames(tmp_path):
    """The 0/255 rule is per sequence: early void-only frames are re-read as ids, not object 1."""
    gt, pred = synthetic_video(6, 6, 2)
    gt[:2], pred[:2] = 0, 0  # nothing to segment in frames 0 and 1 ...
    gt[:2, :5, :5] = 255  # ... but void: 0/255-only frames, object 1 if the whole folder were so
    gt[2:, :3, :3] = 255
    write_index_tree(tmp_path / "palette_gt", {"s": gt})
    write_index_tree(tmp_path / "pred", {"s": pred})
    for t, mask in enumerate(gt):
        (tmp_path / "gray_gt" / "s").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(tmp_path / "gray_gt" / "s" / f"{t:05d}.png")
    _, reference = evaluate_folders(tmp_path / "palette_gt", tmp_path / "pred", out_dir=tmp_path / "a", progress=False)
    _, rows = evaluate_folders(tmp_path / "gray_gt", tmp_path / "pred", out_dir=tmp_path / "b", progress=False)
    assert rows == reference and [r["object_id"] for r in rows] == [1, 2]


def test_lvos_meta_frame_ranges(tmp_path):
    gt, pred = synthetic_video(8, 21, 2)
    for t in range(0, 21, 5):
        write_index_png(tmp_path / "gt" / "lv" / f"{t:08d}.png", gt[t])
    for t in range(21):
        write_index_png(tmp_path / "pred" / "lv" / f"{t:08d}.png", pred[t])
    meta = {"videos": {"lv": {"objects": {"1": {"frame_range": {"start": 0, "end": 20, "frame_nums": 4}},
                                          "2": {"frame_range": {"start": 5, "end": 20, "frame_nums": 3}}}}}}
    (tmp_path / "valid_meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputFormatError, match="--meta"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", dataset="lvos", progress=False)
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", dataset="lvos",
                               meta=tmp_path / "valid_meta.json", progress=False)
    for row, frames in zip(rows, ([0, 5, 10, 15], [5, 10, 15])):
        k = row["object_id"]
        j_values, f_values = per_frame_jf(gt[frames] == k, pred[frames] == k)
        assert [row[s] for s in STATS] == pytest.approx(jf_statistics(j_values) + jf_statistics(f_values), abs=1e-15)


# ----------------------------------------------------------------------------- reports and errors
def test_missing_results_first_by_default_all_with_strict(index_set, tmp_path):
    base, videos = index_set
    write_index_tree(tmp_path / "pred", {"v0": videos["v0"][1], "v1": videos["v1"][1]})
    for stem in ("00002", "00004"):
        (tmp_path / "pred" / "v1" / f"{stem}.png").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        evaluate_folders(base / "gt", tmp_path / "pred", progress=False)
    assert "v1/00002.png is missing" in str(info.value) and "--strict" in str(info.value)
    with pytest.raises(DatasetLayoutError) as info:
        evaluate_folders(base / "gt", tmp_path / "pred", progress=False, strict=True)
    listed = str(info.value)
    assert listed.startswith("3 result path(s) missing")
    for path in ("v1/00002.png", "v1/00004.png", str(tmp_path / "pred" / "v2")):
        assert path in listed


def test_result_ids_absent_from_ground_truth_are_reported(tmp_path, capsys):
    gt, pred = synthetic_video(9, 5, 2)
    pred[2, 0:3, 0:3] = 7
    write_index_tree(tmp_path / "gt", {"u": gt})
    write_index_tree(tmp_path / "pred", {"u": pred})
    _, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", progress=False)
    assert [r["object_id"] for r in rows] == [1, 2]
    assert "id 7" in capsys.readouterr().err
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["result_ids_not_in_ground_truth"] == [
        {"sequence": "u", "object_id": 7, "first_file": str(tmp_path / "pred" / "u" / "00002.png")}]
    with pytest.raises(InputFormatError, match=r"u: id 7 \(first in .*00002\.png\)"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "out", progress=False, strict=True)


def test_cli_help_states_the_rule_and_presets(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(PNG_RULE.split()) in text
    for source in ("davis2017-evaluation", "sav_evaluator.py", "lvos-evaluation", "--workers", "--strict"):
        assert source in text


def test_cli_with_workers_prints_the_global_table(index_set, tmp_path):
    """The command as users run it (a fresh interpreter without torch: forked workers)."""
    base, _ = index_set
    _, rows = evaluate_folders(base / "gt", base / "pred", out_dir=tmp_path / "inproc", progress=False)
    completed = subprocess.run([sys.executable, "-m", "sampt.cli", "eval", "--gt", str(base / "gt"), "--pred",
                                str(base / "pred"), "--out", str(tmp_path / "cli"), "--workers", "2"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout.splitlines()
    assert out == (tmp_path / "inproc" / "global_results-val.csv").read_text().splitlines()
    assert out[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert "workers=2" in completed.stderr and "J&F" in completed.stderr  # protocol line and progress bar
    document = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [o["J-Mean"] for o in document["objects"]] == [r["J-Mean"] for r in rows]


def test_eval_and_eval_vis_help_import_neither_torch_nor_lightning():
    code = ("import sys\nfrom sampt.cli import main\nfor tool in ('eval', 'eval-vis'):\n    try:\n"
            "        main([tool, '--help'])\n    except SystemExit:\n        pass\n"
            "import sampt.eval_vos, sampt.io.results\n"
            "print(sorted(m for m in ('torch', 'lightning', 'torchmetrics', 'torchvision') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"
