"""DAVIS J&F: official reference vectors, hand-made cases, dedup, and the Metric under DDP."""
from __future__ import annotations

import math
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sampt.metrics.jf import (
    GLOBAL_COLUMNS,
    DavisJF,
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_px,
    decay_bin_edges,
    disk_kernel,
    evaluate_sequence,
    jf_statistics,
    per_frame_jf,
    region_similarity,
    sequence_key,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "jf" / "jf_official.npz"
if not VECTORS.exists():  # the repository may be checked out elsewhere than /work/main
    VECTORS = Path("/work/shared/vectors/jf/jf_official.npz")
TOLERANCE = 1e-9
NUM_VECTOR_SEQUENCES = 6


@pytest.fixture(scope="module")
def vectors():
    with np.load(VECTORS) as data:
        return {key: data[key] for key in data.files}


# ------------------------------------------------------------------------------ official vectors
@pytest.mark.parametrize("index", range(NUM_VECTOR_SEQUENCES))
def test_per_frame_values_match_official(vectors, index):
    gt, pred = vectors[f"seq{index}_gt"], vectors[f"seq{index}_pred"]
    j_values, f_values = per_frame_jf(gt, pred)
    assert j_values.shape == f_values.shape == (gt.shape[0],)
    np.testing.assert_allclose(j_values, vectors[f"seq{index}_J"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(f_values, vectors[f"seq{index}_F"], rtol=0, atol=TOLERANCE)
    # The single-frame functions agree with the batched one.
    for t in range(gt.shape[0]):
        assert abs(region_similarity(gt[t], pred[t]) - vectors[f"seq{index}_J"][t]) <= TOLERANCE
        assert abs(boundary_f_measure(gt[t], pred[t]) - vectors[f"seq{index}_F"][t]) <= TOLERANCE


@pytest.mark.parametrize("index", range(NUM_VECTOR_SEQUENCES))
def test_statistics_match_official(vectors, index):
    for measure in ("J", "F"):
        official = vectors[f"seq{index}_{measure}_stats"]
        np.testing.assert_allclose(jf_statistics(vectors[f"seq{index}_{measure}"]), official, rtol=0, atol=TOLERANCE)


def test_metric_reproduces_official_statistics(vectors):
    """The Metric on all six sequences, every frame kept: per-object stats and global means."""
    metric = DavisJF(skip_first_and_last=False)
    for index in range(NUM_VECTOR_SEQUENCES):
        gt = vectors[f"seq{index}_gt"].astype(np.uint8)
        pred = torch.from_numpy(vectors[f"seq{index}_pred"].astype(np.uint8))
        metric.update(f"seq{index}", None, gt, pred)
    table = metric.compute()
    rows = metric.per_object_table()
    assert [(r["sequence"], r["object_id"]) for r in rows] == [(f"seq{i}", 1) for i in range(NUM_VECTOR_SEQUENCES)]
    for index, row in enumerate(rows):
        j_stats, f_stats = vectors[f"seq{index}_J_stats"], vectors[f"seq{index}_F_stats"]
        got = [row[k] for k in ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")]
        np.testing.assert_allclose(got, np.concatenate([j_stats, f_stats]), rtol=0, atol=TOLERANCE)
    j_means = np.array([vectors[f"seq{i}_J_stats"][0] for i in range(NUM_VECTOR_SEQUENCES)])
    f_means = np.array([vectors[f"seq{i}_F_stats"][0] for i in range(NUM_VECTOR_SEQUENCES)])
    assert all(v.dtype == torch.float64 for v in table.values())
    assert abs(table["J-Mean"].item() - j_means.mean()) <= TOLERANCE
    assert abs(table["F-Mean"].item() - f_means.mean()) <= TOLERANCE
    assert abs(table["J&F-Mean"].item() - (j_means.mean() + f_means.mean()) / 2) <= TOLERANCE


# ------------------------------------------------------------------------------ building blocks
def test_boundary_map_of_a_single_pixel():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = True
    expected = np.zeros((4, 4), dtype=bool)
    # The pixel differs from its east neighbour; its north, west and north-west neighbours
    # differ from it as their south, east and south-east neighbour.
    expected[[0, 0, 1, 1], [0, 1, 0, 1]] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_boundary_map_on_the_image_border():
    mask = np.zeros((3, 5), dtype=bool)
    mask[2, :] = True  # the whole last row: only east neighbours are compared there
    boundary = boundary_map(mask)
    assert not boundary[2].any()
    assert boundary[1, :4].all() and boundary[1, 4]  # row above sees the mask south of it


def test_tolerance_and_disk():
    assert boundary_tolerance_px(480, 854) == math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert boundary_tolerance_px(10, 10, bound_th=3) == 3
    kernel = disk_kernel(2)
    assert kernel.shape == (5, 5)
    assert kernel.sum() == 13  # lattice points with x^2 + y^2 <= 4
    assert kernel[0, 2] == 1 and kernel[0, 1] == 0


def test_decay_bin_edges_round_halves_up():
    for num_frames in (3, 4, 6, 10, 48, 300):
        expected = [math.floor(x + 0.5) - 1 for x in np.linspace(1, num_frames, 5)]
        assert decay_bin_edges(num_frames).tolist() == expected
    assert decay_bin_edges(3).tolist() == [0, 1, 1, 2, 2]


def test_statistics_by_hand():
    values = np.array([1.0, 0.8, 0.6, 0.4, 0.2])
    mean, recall, decay = jf_statistics(values)
    assert mean == pytest.approx(0.6)
    assert recall == pytest.approx(3 / 5)
    # Edges for T=5: [0, 1, 2, 3, 4]; first quarter = frames 0..1, last = frames 3..4.
    assert decay == pytest.approx((1.0 + 0.8) / 2 - (0.4 + 0.2) / 2)
    with pytest.raises(ValueError):
        jf_statistics([])


def test_sequence_key_is_stable_and_distinct():
    assert sequence_key("blackswan") == sequence_key("blackswan")
    assert sequence_key("blackswan") != sequence_key("car-shadow")
    assert -(2**63) <= sequence_key("x") < 2**63


# ------------------------------------------------------------------------------ hand-made cases
def _multi_object_sequence(num_frames: int = 6, height: int = 20, width: int = 24):
    """Three objects; object 3 appears from frame 2 on; a void band; pred misses object 2."""
    gt = np.zeros((num_frames, height, width), dtype=np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 10:16, 4:12] = 2
    gt[2:, 3:9, 14:20] = 3
    gt[:, 18:, :] = 255
    pred = np.zeros_like(gt)
    pred[:, 2:8, 2:8] = 1  # perfect
    pred[:, 4:10, 15:21] = 3  # shifted, also on frames 0-1 where object 3 is absent
    pred[:, 0, :] = 7  # an id the ground truth does not have: ignored by the metric
    return gt, pred


def test_multi_object_and_absent_object():
    gt, pred = _multi_object_sequence()
    metric = DavisJF()
    metric.update("toy", None, torch.from_numpy(gt), torch.from_numpy(pred))
    rows = metric.per_object_table()
    assert [r["object_id"] for r in rows] == [1, 2, 3]  # 255 is void, not an object
    by_id = {r["object_id"]: r for r in rows}
    assert by_id[1]["J-Mean"] == 1.0 and by_id[1]["F-Mean"] == 1.0 and by_id[1]["J-Decay"] == 0.0
    assert by_id[2]["J-Mean"] == 0.0 and by_id[2]["F-Mean"] == 0.0 and by_id[2]["J-Recall"] == 0.0
    # Object 3 on kept frames 1..4: frame 1 has empty gt and a non-empty prediction (J = 0).
    inter = np.count_nonzero((gt[2:5] == 3) & (pred[2:5] == 3), axis=(1, 2))
    union = np.count_nonzero((gt[2:5] == 3) | (pred[2:5] == 3), axis=(1, 2))
    expected_j3 = np.concatenate([[0.0], inter / union]).mean()
    assert by_id[3]["J-Mean"] == pytest.approx(expected_j3, abs=1e-12)
    table = metric.compute()
    j_mean = np.mean([r["J-Mean"] for r in rows])
    f_mean = np.mean([r["F-Mean"] for r in rows])
    assert table["J-Mean"].item() == pytest.approx(j_mean, abs=1e-15)
    assert table["J&F-Mean"].item() == pytest.approx((j_mean + f_mean) / 2, abs=1e-15)
    sequences = metric.per_sequence_table()
    assert len(sequences) == 1 and sequences[0]["num_objects"] == 3


def test_explicit_object_ids_and_void_only_sequence():
    gt, pred = _multi_object_sequence()
    metric = DavisJF()
    metric.update("toy", [3, 1], gt, pred)
    assert [r["object_id"] for r in metric.per_object_table()] == [1, 3]
    empty = DavisJF()
    empty.update("void", None, np.full((4, 5, 5), 255, np.uint8), np.zeros((4, 5, 5), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = empty.compute()
    assert all(math.isnan(v.item()) for v in table.values())
    assert any("without any evaluated object" in str(w.message) for w in caught)


def test_skip_first_and_last_drops_frames():
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[0] = 0  # wrong only on the first and last frame
    pred[-1] = 0
    results = evaluate_sequence("s", gt, pred)
    assert len(results) == 1 and results[0].j_per_frame.tolist() == [1.0, 1.0, 1.0]
    official = DavisJF()
    official.update("s", None, gt, pred)
    assert official.compute()["J&F-Mean"].item() == 1.0
    every_frame = DavisJF(skip_first_and_last=False)
    every_frame.update("s", None, gt, pred)
    assert every_frame.compute()["J-Mean"].item() == pytest.approx(3 / 5)


def test_repeated_sequence_counts_once():
    gt, pred = _multi_object_sequence()
    other_gt = np.zeros((4, 10, 10), np.uint8)
    other_gt[:, 2:5, 2:5] = 1
    other_pred = np.zeros_like(other_gt)
    other_pred[:, 2:5, 2:4] = 1
    once, twice = DavisJF(), DavisJF()
    once.update("toy", None, gt, pred)
    once.update("other", None, other_gt, other_pred)
    twice.update("other", None, other_gt, other_pred)
    twice.update("toy", None, gt, pred)
    twice.update("other", None, other_gt, other_pred)
    assert len(twice.per_object_table()) == 4
    assert twice.per_object_table() == once.per_object_table()
    once_table, twice_table = once.compute(), twice.compute()
    for name in GLOBAL_COLUMNS:
        assert torch.equal(once_table[name], twice_table[name])
    twice.reset()
    assert twice.update_count == 0 and twice.sequence_hash == []


def test_input_validation_names_the_sequence():
    metric = DavisJF()
    gt = np.zeros((4, 6, 6), np.uint8)
    with pytest.raises(ValueError, match="bike"):
        metric.update("bike", None, gt, np.zeros((4, 6, 7), np.uint8))
    with pytest.raises(ValueError, match="bike.*2 frames"):
        metric.update("bike", None, gt[:2], gt[:2])
    with pytest.raises(ValueError, match="bike.*integer"):
        metric.update("bike", None, gt, gt.astype(np.float32))
    with pytest.raises(ValueError, match="bike.*1..254"):
        metric.update("bike", [0, 1], gt, gt)
    with pytest.raises(ValueError, match="sequence"):
        metric.update("", None, gt, gt)
    with pytest.raises(ValueError, match="bound_th"):
        DavisJF(bound_th=0)


# ------------------------------------------------------------------------------ DDP (gloo, 2 CPU processes)
def _ddp_sequences() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five small synthetic sequences with 1-3 objects (deterministic)."""
    rng = np.random.default_rng(1234)
    sequences = {}
    for index in range(5):
        num_frames, height, width = 5 + index, 18 + index, 22
        gt = np.zeros((num_frames, height, width), np.uint8)
        pred = np.zeros_like(gt)
        for object_id in range(1, 2 + index % 3):
            for t in range(num_frames):
                y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
                gt[t, y : y + 6, x : x + 6] = object_id
                dy, dx = rng.integers(-2, 3, size=2)
                pred[t, max(y + dy, 0) : y + dy + 6, max(x + dx, 0) : x + dx + 6] = object_id
        sequences[f"video-{index}"] = (gt, pred)
    return sequences


RANK_SEQUENCES = {0: ["video-3", "video-0", "video-2"], 1: ["video-1", "video-2", "video-4"]}


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        sequences = _ddp_sequences()
        split = DavisJF()
        for name in RANK_SEQUENCES[rank]:
            split.update(name, None, *sequences[name])
        split_table = split.compute()
        split_rows = split.per_object_table()
        # Rank 1 sees nothing at all: its empty states must still gather with the right dtypes.
        lopsided = DavisJF()
        if rank == 0:
            for name in sequences:
                lopsided.update(name, None, *sequences[name])
        lopsided_table = lopsided.compute()
        torch.save(
            {"split": split_table, "split_rows": split_rows, "lopsided": lopsided_table},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_equal_one_process(tmp_path):
    single = DavisJF()
    for name, (gt, pred) in _ddp_sequences().items():
        single.update(name, None, gt, pred)
    single_table = single.compute()
    single_rows = single.per_object_table()
    assert len(single_rows) == 1 + 2 + 3 + 1 + 2

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key in ("split", "lopsided"):
            for name in GLOBAL_COLUMNS:
                assert result[key][name].dtype == torch.float64
                assert torch.equal(result[key][name], single_table[name]), (rank, key, name)
        assert result["split_rows"] == single_rows
