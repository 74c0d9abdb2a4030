"""`sampt eval` core: folder evaluation on real DAVIS annotations and on small synthetic folders."""
from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.eval_vos import evaluate_folders, format_global_csv, main, read_sequence_masks
from sampt.metrics.jf import GLOBAL_COLUMNS

DAVIS_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-sample" / "Annotations" / "480p"
if not DAVIS_SAMPLE.is_dir():  # the repository may be checked out elsewhere than /work/main
    DAVIS_SAMPLE = Path("/work/shared/data/davis-sample/Annotations/480p")
GLOBAL_HEADER = "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"


def _palette() -> list[int]:
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]
    palette[6:9] = [0, 128, 0]
    palette[9:12] = [128, 128, 0]
    palette[765:768] = [224, 224, 192]
    return palette


def _write_palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_palette())
    image.save(path)


def _write_sequence(folder: Path, masks: np.ndarray, grayscale: bool = False) -> None:
    for t, frame in enumerate(masks):
        path = folder / f"{t:05d}.png"
        if grayscale:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame.astype(np.uint8), mode="L").save(path)
        else:
            _write_palette_png(path, frame)


# ------------------------------------------------------------------------------ independent reference
def _reference_boundary(mask: np.ndarray) -> np.ndarray:
    """seg2bmap written differently: replicate the last row/column, compare with E, S, SE."""
    padded = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    east, south, south_east = padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    return (mask != east) | (mask != south) | (mask != south_east)


def _reference_f(gt: np.ndarray, pred: np.ndarray) -> float:
    """Boundary F with a Euclidean distance transform instead of a disk dilation."""
    radius = math.ceil(0.008 * math.hypot(*gt.shape))
    gt_b, pred_b = _reference_boundary(gt), _reference_boundary(pred)
    if not gt_b.any() or not pred_b.any():
        return 1.0 if not gt_b.any() and not pred_b.any() else 0.0
    # Distance of every pixel to the nearest boundary pixel of the other mask (exact L2).
    dist_to_gt = cv2.distanceTransform((~gt_b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist_to_pred = cv2.distanceTransform((~pred_b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = np.mean(dist_to_gt[pred_b] <= radius + 1e-3)
    recall = np.mean(dist_to_pred[gt_b] <= radius + 1e-3)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _reference_stats(values: list[float]) -> tuple[float, float, float]:
    count = len(values)
    edges = [math.floor(1 + k * (count - 1) / 4 + 0.5) - 1 for k in range(5)]
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[3] : edges[4] + 1]
    return sum(values) / count, sum(v > 0.5 for v in values) / count, sum(first) / len(first) - sum(last) / len(last)


# ------------------------------------------------------------------------------ real DAVIS annotations
def test_oracle_on_real_davis_is_exactly_one(tmp_path):
    pred_dir = tmp_path / "pred"
    shutil.copytree(DAVIS_SAMPLE, pred_dir)
    global_row, rows = evaluate_folders(DAVIS_SAMPLE, pred_dir)
    assert list(global_row) == list(GLOBAL_COLUMNS)
    for name in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        assert global_row[name] == 1.0
    assert global_row["J-Decay"] == 0.0 and global_row["F-Decay"] == 0.0
    assert [(r["sequence"], r["object_id"]) for r in rows] == [("blackswan", 1), ("car-shadow", 1)]
    # The tables land next to the predictions by default, in the official format.
    assert (pred_dir / "global_results-val.csv").read_text() == (
        GLOBAL_HEADER + "\n" + "1.000,1.000,1.000,0.000,1.000,1.000,0.000\n"
    )
    assert (pred_dir / "per-sequence_results-val.csv").read_text().splitlines() == [
        "Sequence,J-Mean,F-Mean",
        "blackswan_1,1.000,1.000",
        "car-shadow_1,1.000,1.000",
    ]
    assert not [p for p in pred_dir.iterdir() if p.name.endswith(".tmp")]


def test_shifted_ground_truth_matches_independent_computation(tmp_path):
    """Prediction = the previous frame's annotation, written as palette PNGs with id 1."""
    pred_dir, out_dir = tmp_path / "pred", tmp_path / "out"
    expected_rows = {}
    for sequence in ("blackswan", "car-shadow"):
        paths = sorted((DAVIS_SAMPLE / sequence).glob("*.png"))
        gt = np.stack([np.array(Image.open(p)) == 255 for p in paths])
        shifted = np.concatenate([gt[:1], gt[:-1]])
        for path, frame in zip(paths, shifted):
            _write_palette_png(pred_dir / sequence / path.name, frame.astype(np.uint8))
        j_values, f_values = [], []
        for t in range(1, len(paths) - 1):
            union = np.logical_or(gt[t], shifted[t]).sum()
            inter = np.logical_and(gt[t], shifted[t]).sum()
            j_values.append(1.0 if union == 0 else inter / union)
            f_values.append(_reference_f(gt[t], shifted[t]))
        expected_rows[sequence] = _reference_stats(j_values) + _reference_stats(f_values)

    global_row, rows = evaluate_folders(DAVIS_SAMPLE, pred_dir, out_dir=out_dir, split_name="shifted")
    names = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    for row in rows:
        assert [row[n] for n in names] == pytest.approx(expected_rows[row["sequence"]], abs=1e-12)
    expected_global = np.mean(list(expected_rows.values()), axis=0)
    for index, name in enumerate(names):
        assert global_row[name] == pytest.approx(expected_global[index], abs=1e-12)
    assert global_row["J&F-Mean"] == pytest.approx((expected_global[0] + expected_global[3]) / 2, abs=1e-12)
    assert 0.3 < global_row["J&F-Mean"] < 1.0
    with open(out_dir / "per-sequence_results-shifted.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["Sequence"] for r in table] == ["blackswan_1", "car-shadow_1"]
    assert float(table[0]["J-Mean"]) == pytest.approx(expected_rows["blackswan"][0], abs=5e-4)
    assert not (pred_dir / "global_results-shifted.csv").exists()


# ------------------------------------------------------------------------------ synthetic folders
def _two_object_gt(num_frames: int = 5) -> np.ndarray:
    gt = np.zeros((num_frames, 16, 20), np.uint8)
    gt[:, 2:7, 2:8] = 1
    gt[:, 9:14, 10:17] = 2
    gt[:, 15, :] = 255  # void
    return gt


def test_multi_object_palette_folders_and_cli(tmp_path, capsys):
    gt = _two_object_gt()
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[:, 9:14, 10:17] = 0  # object 2 never predicted
    _write_sequence(tmp_path / "gt" / "toy", gt)
    _write_sequence(tmp_path / "pred" / "toy", pred)
    out_dir = tmp_path / "tables"
    returned = main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(out_dir)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == GLOBAL_HEADER
    values = dict(zip(GLOBAL_COLUMNS, map(float, printed[1].split(","))))
    assert values["J-Mean"] == pytest.approx(0.5) and values["F-Mean"] == pytest.approx(0.5)
    assert returned["J&F-Mean"] == pytest.approx(0.5, abs=1e-12)
    assert (out_dir / "global_results-val.csv").read_text().splitlines() == printed
    assert (out_dir / "per-sequence_results-val.csv").read_text().splitlines()[1:] == [
        "toy_1,1.000,1.000",
        "toy_2,0.000,0.000",
    ]


def test_no_skip_first_and_last_needs_every_frame(tmp_path):
    gt = _two_object_gt()
    _write_sequence(tmp_path / "gt" / "toy", gt)
    _write_sequence(tmp_path / "pred" / "toy", np.where(gt == 255, 0, gt))
    (tmp_path / "pred" / "toy" / "00000.png").unlink()
    # The official protocol never reads the first frame ...
    row, _ = evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "a")
    assert row["J&F-Mean"] == 1.0
    # ... evaluating every frame does.
    with pytest.raises(DatasetLayoutError, match=r"toy[/\\]00000\.png"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", out_dir=tmp_path / "b", skip_first_and_last=False)


def test_prediction_id_absent_from_ground_truth_is_reported_and_strict_fails(tmp_path, capsys):
    gt = _two_object_gt()
    pred = np.where(gt == 255, 0, gt)
    pred[2, 0:2, 0:2] = 3
    _write_sequence(tmp_path / "gt" / "toy", gt)
    _write_sequence(tmp_path / "pred" / "toy", pred)
    row, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    assert [r["object_id"] for r in rows] == [1, 2] and row["J&F-Mean"] == 1.0  # id 3 is not scored
    assert re.search(r"toy: id 3 \(first in .*00002\.png\)", capsys.readouterr().err)
    with pytest.raises(InputFormatError, match=r"toy: id 3 \(first in .*00002\.png\)"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", strict=True)


def test_missing_prediction_folder_frame_and_size_mismatch(tmp_path):
    gt = _two_object_gt()
    _write_sequence(tmp_path / "gt" / "toy", gt)
    (tmp_path / "pred").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"pred[/\\]toy"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    _write_sequence(tmp_path / "pred" / "toy", np.zeros((2, 16, 20), np.uint8))  # frames 0 and 1 only
    with pytest.raises(DatasetLayoutError, match=r"00002\.png"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    _write_sequence(tmp_path / "pred" / "toy", np.zeros((5, 16, 21), np.uint8))
    with pytest.raises(InputFormatError, match=r"00001\.png.*21x16"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(DatasetLayoutError, match="nowhere"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "pred")


def test_frames_are_matched_by_stem(tmp_path):
    gt = _two_object_gt(4)
    _write_sequence(tmp_path / "gt" / "toy", gt)
    # Same stems, written in reverse order with an extra unrelated frame: matching is by name.
    pred_folder = tmp_path / "pred" / "toy"
    for t in reversed(range(4)):
        _write_palette_png(pred_folder / f"{t:05d}.png", np.where(gt[t] == 255, 0, gt[t]))
    _write_palette_png(pred_folder / "99999.png", np.full((16, 20), 1, np.uint8))
    row, _ = evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    assert row["J&F-Mean"] == 1.0


def test_grayscale_reading_rules(tmp_path):
    binary = np.zeros((3, 6, 6), np.uint8)
    binary[:, 1:4, 1:4] = 255
    _write_sequence(tmp_path / "bin", binary, grayscale=True)
    masks = read_sequence_masks(sorted((tmp_path / "bin").glob("*.png")))
    assert set(np.unique(masks)) == {0, 1}  # 0/255 grayscale: one object, id 1
    ids = binary // 255 * 2  # grayscale holding ids 0/2: kept as they are
    _write_sequence(tmp_path / "ids", ids, grayscale=True)
    assert set(np.unique(read_sequence_masks(sorted((tmp_path / "ids").glob("*.png"))))) == {0, 2}
    palette = binary.copy()  # palette 255 stays 255 (void)
    _write_sequence(tmp_path / "pal", palette)
    assert set(np.unique(read_sequence_masks(sorted((tmp_path / "pal").glob("*.png"))))) == {0, 255}
    rgba_path = tmp_path / "rgba" / "00000.png"
    rgba_path.parent.mkdir()
    Image.fromarray(np.zeros((6, 6, 4), np.uint8), mode="RGBA").save(rgba_path)
    with pytest.raises(InputFormatError, match=r"00000\.png.*'RGBA'"):
        read_sequence_masks([rgba_path])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputFormatError, match="broken.png"):
        read_sequence_masks([broken])


def test_sequence_subset_and_format(tmp_path):
    gt = _two_object_gt()
    for name in ("a", "b"):
        _write_sequence(tmp_path / "gt" / name, gt)
    _write_sequence(tmp_path / "pred" / "b", np.where(gt == 255, 0, gt))
    with pytest.raises(DatasetLayoutError, match=r"pred[/\\]a"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    row, rows = evaluate_folders(tmp_path / "gt", tmp_path / "pred", sequences=["b"])
    assert [r["sequence"] for r in rows] == ["b", "b"] and row["J&F-Mean"] == 1.0
    text = format_global_csv(dict(row, **{"J-Decay": -0.0123}), float_format="%.4f")
    assert text.splitlines() == [GLOBAL_HEADER, "1.0000,1.0000,1.0000,-0.0123,1.0000,1.0000,0.0000"]
    with pytest.raises(ValueError, match="F-Decay"):
        format_global_csv({k: 0.0 for k in GLOBAL_COLUMNS[:-1]})
