"""YouTube-VIS video mask AP: reference vectors, hand-computed cases, DDP, and `eval-vis`."""
from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils

from sampt.errors import InputFormatError
from sampt.eval_vis import main as eval_vis_main
from sampt.eval_vis import masks_to_rles, write_results_json
from sampt.metrics.vis_ap import STAT_NAMES, VideoAP, evaluate_vis, tube_iou

# CI clones the repository with ../shared beside it.
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "vis_ap"
if not VECTORS.is_dir():
    VECTORS = Path("/work/shared/vectors/vis_ap")
TOLERANCE = 1e-12
CASES = list(range(1, 9))


def _load_case(case: int) -> tuple:
    gt = json.loads((VECTORS / f"case{case}_gt.json").read_text())
    results = json.loads((VECTORS / f"case{case}_results.json").read_text())
    expected = json.loads((VECTORS / f"case{case}_expected.json").read_text())
    return gt, results, expected


def _max_stat_deviation(stats: dict, expected: dict) -> float:
    return max(abs(float(stats[name]) - expected[name]) for name in STAT_NAMES)


def _per_video(results: list) -> dict:
    """video id -> that video's results, in results-file order."""
    by_video: dict = {}
    for entry in results:
        by_video.setdefault(entry["video_id"], []).append(entry)
    return by_video


# ------------------------------------------------------------------------------------------
# Reference vectors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_functional_matches_reference_vectors(case):
    gt, results, expected = _load_case(case)
    evaluation = evaluate_vis(gt, copy.deepcopy(results))

    assert _max_stat_deviation(evaluation["stats"], expected["stats"]) <= TOLERANCE
    assert evaluation["stats_list"] == [evaluation["stats"][name] for name in expected["metric_order"]]

    blocks = {block["video_id"]: block for block in evaluation["ious"]}
    assert sorted(blocks) == [block["video_id"] for block in expected["ious"]]
    for expected_block in expected["ious"]:
        block = blocks[expected_block["video_id"]]
        assert block["gt_ids"] == expected_block["gt_ids"]
        assert block["dt_ids"] == expected_block["dt_ids"]
        assert block["dt_result_index"] == expected_block["dt_result_index"]
        assert block["dt_scores"] == expected_block["dt_scores"]
        expected_iou = np.array(expected_block["iou"], dtype=np.float64).reshape(
            len(expected_block["dt_ids"]), len(expected_block["gt_ids"]))
        assert block["iou"].shape == expected_iou.shape
        if expected_iou.size:
            assert np.abs(block["iou"] - expected_iou).max() <= TOLERANCE

    # Average areas used for the area ranges (GT from `areas`, detections from non-empty frames).
    for annotation_id, area in expected["avg_area"]["gt"].items():
        assert evaluation["avg_area"]["gt"][int(annotation_id)] == pytest.approx(area, abs=TOLERANCE)
    for detection_id, area in expected["avg_area"]["dt"].items():
        assert evaluation["avg_area"]["dt"][int(detection_id)] == pytest.approx(area, abs=TOLERANCE)

    # Mean interpolated precision / final recall per (IoU threshold, area range, maxDets).
    precision = evaluation["precision"][:, :, 0]  # (T, R, A, M), one category
    mean_precision = np.where(precision[:, 0] == -1, -1.0, precision.mean(axis=1))
    assert np.abs(mean_precision - np.array(expected["ap_per_iou_area_maxdet"]["values"])).max() <= TOLERANCE
    assert np.abs(evaluation["recall"][:, 0]
                  - np.array(expected["recall_per_iou_area_maxdet"]["values"])).max() <= TOLERANCE

    # Per-video matching at 100 detections.
    category_id = gt["categories"][0]["id"]
    for reference in expected["per_video_matching_maxdet100"]:
        match = evaluation["matches"][(reference["area"], category_id, reference["video_id"])]
        assert match.dt_ids.tolist() == reference["dtIds"]
        assert match.gt_ids.tolist() == reference["gtIds"]
        assert match.gt_ignore.astype(int).tolist() == reference["gtIgnore"]
        assert match.dt_matches.tolist() == reference["dtMatches"]
        assert match.dt_ignore.astype(int).tolist() == reference["dtIgnore"]


@pytest.mark.parametrize("case", CASES)
def test_metric_matches_reference_vectors(case):
    gt, results, expected = _load_case(case)
    metric = VideoAP(gt)
    # Videos in an order unlike the GT's, each video's detections in results-file order.
    for video_id, entries in sorted(_per_video(results).items(), reverse=True):
        metric.update(video_id, entries)
    stats = metric.compute()
    assert set(stats) == set(STAT_NAMES)
    assert all(value.dtype == torch.float64 and value.ndim == 0 for value in stats.values())
    assert _max_stat_deviation(stats, expected["stats"]) <= TOLERANCE


def test_metric_counts_a_repeated_video_once():
    gt, results, expected = _load_case(1)
    metric = VideoAP(gt)
    by_video = _per_video(results)
    for video_id in (5, 11, 5, 8, 11):
        metric.update(video_id, by_video[video_id])
    assert _max_stat_deviation(metric.compute(), expected["stats"]) <= TOLERANCE


def test_metric_accepts_binary_masks_like_rles():
    gt, results, expected = _load_case(2)
    metric = VideoAP(gt)
    for video_id, entries in _per_video(results).items():
        as_masks = [{"score": e["score"],
                     "segmentations": torch.from_numpy(np.stack([mask_utils.decode(rle) for rle in e["segmentations"]])
                                                       .astype(bool))}
                    for e in entries]
        metric.update(video_id, as_masks)
    assert _max_stat_deviation(metric.compute(), expected["stats"]) <= TOLERANCE


def test_metric_can_score_only_updated_videos():
    gt, results, _ = _load_case(1)
    video_5_only = copy.deepcopy(gt)
    video_5_only["videos"] = [v for v in gt["videos"] if v["id"] == 5]
    video_5_only["annotations"] = [a for a in gt["annotations"] if a["video_id"] == 5]
    entries = _per_video(results)[5]
    expected = evaluate_vis(video_5_only, entries)["stats"]

    metric = VideoAP(gt, evaluate_only_updated_videos=True)
    metric.update(5, entries)
    assert _max_stat_deviation(metric.compute(), expected) <= TOLERANCE
    everything = VideoAP(gt)
    everything.update(5, entries)
    # The other videos' GT are misses when every GT video counts.
    assert everything.compute()["AR100"].item() < metric.compute()["AR100"].item()


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------


def _square(height: int, width: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def _rle(mask: np.ndarray) -> dict:
    return masks_to_rles(mask[None])[0]


def _single_video_gt(tubes: list, height: int = 20, width: int = 30, iscrowd: list | None = None) -> dict:
    """GT with one video (id 1) whose annotations are ``tubes``: lists of (H, W) masks / None."""
    num_frames = len(tubes[0])
    annotations = []
    for index, tube in enumerate(tubes):
        annotations.append({
            "id": index + 1, "video_id": 1, "category_id": 1,
            "iscrowd": 0 if iscrowd is None else iscrowd[index],
            "segmentations": [None if m is None else _rle(m) for m in tube],
            "areas": [None if m is None else int(m.sum()) for m in tube],
        })
    return {"videos": [{"id": 1, "height": height, "width": width, "length": num_frames,
                        "file_names": [f"v/{t:05d}.jpg" for t in range(num_frames)]}],
            "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def test_tube_iou_sums_intersections_and_unions_over_frames():
    # Frame 0: 4x4 squares overlapping in a 2x4 band; frame 1: only the GT (16 px) is present;
    # frame 2: both absent. IoU = (8 + 0) / ((16 + 16 - 8) + 16) = 8 / 40.
    detection = [_rle(_square(10, 10, 0, 0, 4)), None, None]
    ground_truth = [_rle(_square(10, 10, 2, 0, 4)), _rle(_square(10, 10, 5, 5, 4)), None]
    empty = [_rle(np.zeros((10, 10), dtype=bool)), None, None]
    ious = tube_iou([detection, empty], [ground_truth, empty])
    assert ious.dtype == np.float64 and ious.shape == (2, 2)
    assert ious[0, 0] == 8 / 40
    assert ious[0, 1] == 0.0  # detection vs. an empty tube: no intersection
    assert ious[1, 0] == 0.0
    assert ious[1, 1] == 0.0  # both empty everywhere: union 0 -> IoU 0


def test_tube_intersections_match_decoded_masks():
    from sampt.metrics.vis_ap import tube_intersections

    # Random rectangles (some one pixel wide, some touching) and random absent frames, compared
    # with a brute-force count on the decoded masks: the bounding-box pre-filter must not drop any
    # overlapping pair.
    rng = np.random.default_rng(1)
    height, width, num_frames = 12, 16, 4

    def random_tube():
        masks = np.zeros((num_frames, height, width), dtype=bool)
        for t in range(num_frames):
            top, left = rng.integers(0, height), rng.integers(0, width)
            masks[t, top:top + rng.integers(1, 6), left:left + rng.integers(1, 6)] = True
        rles = masks_to_rles(masks)
        absent = rng.random(num_frames) < 0.25
        masks[absent] = False
        return [None if gone else rle for rle, gone in zip(rles, absent)], masks

    detections = [random_tube() for _ in range(12)]
    ground_truth = [random_tube() for _ in range(7)]
    brute_force = np.array([[int((d[1] & g[1]).sum()) for g in ground_truth] for d in detections])
    computed = tube_intersections([d[0] for d in detections], [g[0] for g in ground_truth])
    assert computed.dtype == np.int64
    assert np.array_equal(computed, brute_force)
    assert brute_force.any()  # the draw does contain overlapping pairs


def test_one_perfect_detection_gives_ap_one():
    tube = [_square(20, 30, 2, 3, 6), _square(20, 30, 3, 4, 6)]
    gt = _single_video_gt([tube])
    results = [{"video_id": 1, "score": 0.3, "category_id": 1, "segmentations": [_rle(m) for m in tube]}]
    stats = evaluate_vis(gt, results)["stats"]
    # Precision is tp / (tp + fp + eps), so a perfect AP is 1 - 2^-52, not exactly 1.
    for name in ("AP", "AP50", "AP75", "APs"):
        assert stats[name] == pytest.approx(1.0, abs=1e-15), name
    for name in ("AR1", "AR10", "AR100", "ARs"):
        assert stats[name] == 1.0, name
    for name in ("APm", "APl", "ARm", "ARl"):
        assert stats[name] == -1.0, name  # a 36 px object: no medium or large GT


def test_false_positive_ranked_first_halves_precision():
    tube = [_square(20, 30, 2, 3, 6)]
    gt = _single_video_gt([tube])
    results = [
        {"video_id": 1, "score": 0.9, "category_id": 1, "segmentations": [_rle(_square(20, 30, 12, 20, 5))]},
        {"video_id": 1, "score": 0.8, "category_id": 1, "segmentations": [_rle(tube[0])]},
    ]
    stats = evaluate_vis(gt, results)["stats"]
    # Recall 1 is first reached at rank 2 with precision 1/2 (+eps); every recall threshold > 0
    # takes that, and threshold 0 also takes the envelope value 1/2.
    assert stats["AP"] == pytest.approx(0.5, abs=1e-15)
    assert stats["AR1"] == 0.0  # the top-1 detection of the video is the false positive
    assert stats["AR10"] == 1.0


def test_crowd_match_is_neither_true_nor_false_positive():
    regular = [_square(20, 30, 0, 0, 4)]
    crowd = [_square(20, 30, 10, 10, 8)]
    gt = _single_video_gt([regular, crowd], iscrowd=[0, 1])
    results = [
        {"video_id": 1, "score": 0.9, "category_id": 1, "segmentations": [_rle(crowd[0])]},  # on the crowd
        {"video_id": 1, "score": 0.5, "category_id": 1, "segmentations": [_rle(regular[0])]},
    ]
    stats = evaluate_vis(gt, results)["stats"]
    assert stats["AP"] == pytest.approx(1.0, abs=1e-15)  # the crowd hit is ignored, not a false positive ahead of the TP


def test_categories_are_matched_separately():
    tube = [_square(20, 30, 2, 3, 6)]
    gt = _single_video_gt([tube])
    gt["categories"].append({"id": 2, "name": "other"})
    wrong_class = [{"video_id": 1, "score": 0.9, "category_id": 2, "segmentations": [_rle(tube[0])]}]
    stats = evaluate_vis(gt, wrong_class)["stats"]
    # Category 1 has one missed GT (zeros); category 2 has no GT (-1, left out of the means).
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
    right_class = [dict(wrong_class[0], category_id=1)]
    assert evaluate_vis(gt, right_class)["stats"]["AP"] == pytest.approx(1.0, abs=1e-15)
    metric = VideoAP(gt)
    metric.update(1, wrong_class)
    assert metric.compute()["AP"].item() == 0.0


def test_polygon_and_uncompressed_ground_truth():
    height, width = 20, 30
    square = _square(height, width, 4, 5, 8)
    polygon = [[5.0, 4.0, 13.0, 4.0, 13.0, 12.0, 5.0, 12.0]]  # rasterised by pycocotools
    polygon_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, height, width))).astype(bool)
    uncompressed = {"size": [height, width], "counts": _uncompressed_counts(square)}
    gt = _single_video_gt([[square, square]], height=height, width=width)
    gt["annotations"][0]["segmentations"] = [polygon, uncompressed]
    results = [{"video_id": 1, "score": 1.0, "category_id": 1,
                "segmentations": [_rle(polygon_mask), _rle(square)]}]
    block = evaluate_vis(gt, results)["ious"][0]
    assert block["iou"][0, 0] == 1.0


def _uncompressed_counts(mask: np.ndarray) -> list:
    """Column-major run lengths starting with a background run (COCO uncompressed RLE)."""
    counts, current, run = [], False, 0
    for value in mask.flatten(order="F"):
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return counts + [run]


def test_oracle_tracks_give_ap_one(tmp_path):
    for case in (1, 5):
        gt, _, _ = _load_case(case)
        oracle = [{"video_id": a["video_id"], "score": 1.0, "category_id": 1, "segmentations": a["segmentations"]}
                  for a in gt["annotations"] if not a["iscrowd"]]
        path = tmp_path / f"oracle{case}.json"
        write_results_json(path, oracle)
        stats = evaluate_vis(gt, json.loads(path.read_text()))["stats"]
        # With at most k detections per video, video v recalls min(k, n_v) of its n_v objects.
        per_video = [sum(1 for a in gt["annotations"] if a["video_id"] == v["id"] and not a["iscrowd"])
                     for v in gt["videos"]]
        for name, k in (("AR1", 1), ("AR10", 10)):
            assert stats[name] == pytest.approx(sum(min(k, n) for n in per_video) / sum(per_video), abs=1e-15)
        for name in set(STAT_NAMES) - {"AR1", "AR10"}:
            assert stats[name] == -1.0 or stats[name] == pytest.approx(1.0, abs=1e-15), (case, name, stats[name])
        assert stats["AP"] == pytest.approx(1.0, abs=1e-15) and stats["AR100"] == 1.0


def test_no_detections_give_zero_recall():
    gt, _, _ = _load_case(1)
    stats = evaluate_vis(gt, [])["stats"]
    assert stats["AR1"] == stats["AR10"] == stats["AR100"] == 0.0
    assert stats["AP"] == 0.0
    metric = VideoAP(gt)
    metric.update(11, [])
    assert metric.compute()["AR100"].item() == 0.0


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_unknown_video_and_wrong_frame_count_are_named(tmp_path):
    gt, results, _ = _load_case(1)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))

    unknown = copy.deepcopy(results)
    unknown[3]["video_id"] = 999
    pred_path = tmp_path / "unknown.json"
    pred_path.write_text(json.dumps(unknown))
    with pytest.raises(InputFormatError, match=r"unknown\.json.*video id 999"):
        eval_vis_main(["--gt", str(gt_path), "--pred", str(pred_path)])

    short = copy.deepcopy(results)
    short[0]["segmentations"] = short[0]["segmentations"][:-1]
    pred_path = tmp_path / "short.json"
    pred_path.write_text(json.dumps(short))
    with pytest.raises(InputFormatError, match=r"short\.json.*entry 0.*2 frames.*has 3"):
        eval_vis_main(["--gt", str(gt_path), "--pred", str(pred_path)])

    metric = VideoAP(gt_path)
    with pytest.raises(InputFormatError, match="video id 4"):
        metric.update(4, [])
    with pytest.raises(InputFormatError, match=r"masks must be \(T, H, W\)"):
        metric.update(11, [{"score": 1.0, "segmentations": np.zeros((5, 10, 10), dtype=bool)}])


def test_malformed_json_is_named(tmp_path):
    gt, results, _ = _load_case(1)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"video_id": 8, "score": ')
    with pytest.raises(InputFormatError, match=r"broken\.json.*not valid JSON"):
        eval_vis_main(["--gt", str(gt_path), "--pred", str(broken)])
    with pytest.raises(InputFormatError, match=r"broken\.json"):
        eval_vis_main(["--gt", str(broken), "--pred", str(gt_path)])
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text(json.dumps({"annotations": results}))
    with pytest.raises(InputFormatError, match=r"object\.json.*list"):
        eval_vis_main(["--gt", str(gt_path), "--pred", str(not_a_list)])
    missing = tmp_path / "missing.json"
    with pytest.raises(InputFormatError, match=r"missing\.json.*does not exist"):
        eval_vis_main(["--gt", str(gt_path), "--pred", str(missing)])


# ------------------------------------------------------------------------------------------
# Writers and CLI
# ------------------------------------------------------------------------------------------


def test_masks_to_rles_round_trip_and_json():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 9)) > 0.5
    rles = masks_to_rles(torch.from_numpy(masks))
    assert json.loads(json.dumps(rles)) == rles
    assert all(isinstance(rle["counts"], str) and rle["size"] == [7, 9] for rle in rles)
    decoded = np.stack([mask_utils.decode(rle) for rle in rles]).astype(bool)
    assert np.array_equal(decoded, masks)


def test_written_results_score_like_the_metric(tmp_path):
    gt, results, expected = _load_case(1)
    entries = [{"video_id": e["video_id"], "score": e["score"],
                "segmentations": np.stack([mask_utils.decode(rle) for rle in e["segmentations"]]).astype(bool)}
               for e in results]
    path = tmp_path / "sub" / "results.json"
    assert write_results_json(path, entries) == len(results)
    written = json.loads(path.read_text())
    assert [e["category_id"] for e in written] == [1] * len(results)
    assert not [p for p in path.parent.iterdir() if p.name != "results.json"]  # no temp file left
    assert _max_stat_deviation(evaluate_vis(gt, written)["stats"], expected["stats"]) <= TOLERANCE


def test_eval_vis_cli_prints_and_writes_stats(tmp_path, capsys):
    _, _, expected = _load_case(1)
    out_path = tmp_path / "stats.json"
    code = eval_vis_main(["--gt", str(VECTORS / "case1_gt.json"), "--pred", str(VECTORS / "case1_results.json"),
                          "--out", str(out_path)])
    assert code == 0
    printed = dict(line.split() for line in capsys.readouterr().out.strip().splitlines()[1:])
    assert list(printed) == list(STAT_NAMES)
    assert abs(float(printed["AP"]) - expected["stats"]["AP"]) <= 5e-7
    written = json.loads(out_path.read_text())
    assert _max_stat_deviation(written, expected["stats"]) <= TOLERANCE


# ------------------------------------------------------------------------------------------
# DDP (2 processes, gloo)
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        outputs = {}
        for case in (1, 5):
            gt, results, _ = _load_case(case)
            by_video = _per_video(results)
            videos = sorted(by_video)
            # Split the videos, and give the middle one to both ranks (DistributedSampler padding).
            middle = len(videos) // 2
            mine = videos[:middle + 1] if rank == 0 else videos[middle:]
            metric = VideoAP(gt)
            for video_id in mine:
                metric.update(video_id, by_video[video_id])
            outputs[f"split{case}"] = {k: v.item() for k, v in metric.compute().items()}

            # A rank without any update (after .to(), which resets torchmetrics' default dtype).
            lonely = VideoAP(gt).to("cpu")
            if rank == 0:
                for video_id in videos:
                    lonely.update(video_id, by_video[video_id])
            outputs[f"lonely{case}"] = {k: v.item() for k, v in lonely.compute().items()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outputs))
    finally:
        dist.destroy_process_group()


def test_metric_under_two_process_gloo_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for case in (1, 5):
        gt, results, expected = _load_case(case)
        single = VideoAP(gt)
        for video_id, entries in _per_video(results).items():
            single.update(video_id, entries)
        single_stats = {k: v.item() for k, v in single.compute().items()}
        assert _max_stat_deviation(single_stats, expected["stats"]) <= TOLERANCE
        for rank in (0, 1):
            outputs = json.loads((tmp_path / f"rank{rank}.json").read_text())
            for key in (f"split{case}", f"lonely{case}"):
                assert _max_stat_deviation(outputs[key], single_stats) <= TOLERANCE, (rank, key)
