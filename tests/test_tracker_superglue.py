"""SAM-PT's SuperGlue tracker against the original code's outputs (shared/vectors/superglue).

The random weights are rebuilt with ``shared/vectors/trackers/init_weights.py`` (checked against
the README's sha256), saved as plain state dicts - the format of ``superpoint_v1.pth`` and
``superglue_outdoor.pth`` - and loaded through the tracker's checkpoint paths and ``prepare()``.
Tolerances are the README's: keypoints, matches, draws, trajectories and visibilities exactly;
scores 5e-5; matching scores 1e-3; descriptors 1e-5 (their float64 sums 1e-3).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import REPO, VECTORS, run_sam_pt_with_tracker
from sampt.checkpoints import CHECKPOINTS
from sampt.errors import CheckpointError
from sampt.trackers.base import build_tracker
from sampt.trackers.superglue import SuperGlueTracker, convex_hull_mask, rgb_to_gray_uint8, resized_size

REF = VECTORS / "superglue"
SCORE_TOL = 5e-5
MATCH_SCORE_TOL = 1e-3
DESC_TOL = 1e-5
DESC_SUM_TOL = 1e-3
SUPERPOINT_SHA256 = "5b505e36dc9e8e39cc2549d50b114ffd8864f36120e9c1f2efefe58d7f9f4e32"
SUPERGLUE_SHA256 = "0d248cf619b9bfeb768a4250a988d448efef2570e5b4676842eb0026534fc8a8"

pytestmark = pytest.mark.usefixtures("two_threads")  # the matching scores' tolerance holds at 2 threads


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0


@pytest.fixture(scope="module")
def init_weights():
    spec = importlib.util.spec_from_file_location("trackers_init_weights", VECTORS / "trackers" / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(init_weights, tmp_path_factory):
    """The reference weights as official-format files: ``{"superpoint": path, "superglue": path, ...}``."""
    root = tmp_path_factory.mktemp("superglue_weights")
    superpoint = init_weights.build_weights(str(REF / "layout_superpoint.json"))
    superglue = init_weights.build_weights(str(REF / "layout_superglue.json"))
    # The comparisons below are only meaningful with exactly the reference weights.
    assert init_weights.sha256_of(superpoint) == SUPERPOINT_SHA256
    assert init_weights.sha256_of(superglue) == SUPERGLUE_SHA256
    assert superglue["bin_score"].ndim == 0 and superglue["kenc.encoder.1.num_batches_tracked"].dtype == torch.int64
    paths = {"root": root, "superpoint_state": superpoint, "superglue_state": superglue}
    for name, state in (("superpoint", superpoint), ("superglue", superglue)):
        paths[name] = str(root / f"{name}.pth")
        torch.save(state, paths[name])  # the official files are bare state dicts
    return paths


@pytest.fixture(scope="module")
def vectors():
    return torch.load(REF / "vectors_superglue.pt", weights_only=True)


@pytest.fixture(scope="module")
def video():
    return torch.load(VECTORS / "trackers" / "video.pt", weights_only=True)


@pytest.fixture(scope="module")
def tracker(weights):
    tracker = build_tracker("SuperGlueTracker", superpoint_checkpoint_path=weights["superpoint"],
                             superglue_checkpoint_path=weights["superglue"])
    tracker.prepare()
    return tracker


@pytest.fixture(scope="module")
def run(tracker, vectors, video):
    """The SAM-PT wrapper on the reference inputs: ``(trajectories, visibilities, details)``."""
    details: dict = {}
    trajectories, visibilities = tracker(video["video"], vectors["queries"],
                                         query_masks=vectors["masks"].float(), details=details)
    return trajectories, visibilities, details


# ------------------------------------------------------------------------- weights and registry
def test_official_layouts_load_through_prepare(tracker, weights):
    assert isinstance(tracker, SuperGlueTracker)
    assert tracker.weights_paths == {"superpoint": weights["superpoint"], "superglue": weights["superglue"]}
    assert tracker.weights_path == weights["superglue"]
    for key, value in weights["superpoint_state"].items():
        assert torch.equal(tracker.superpoint.state_dict()[key], value), key
    for key, value in weights["superglue_state"].items():
        assert torch.equal(tracker.superglue.state_dict()[key], value), key
    assert tracker.superglue.bin_score.ndim == 0
    assert not tracker.train().superglue.kenc.encoder[1].training  # batch norms stay in eval mode


def test_registry_entries():
    for name, filename in (("superpoint_v1", "superpoint_v1.pth"), ("superglue_outdoor", "superglue_outdoor.pth"),
                           ("superglue_indoor", "superglue_indoor.pth")):
        entry = CHECKPOINTS[name]
        assert entry.filename == filename and entry.component == "tracker"
        assert entry.url.startswith("https://github.com/magicleap/SuperGluePretrainedNetwork/raw/")
        assert entry.url.endswith(f"/models/weights/{filename}")


def _expect_checkpoint_error(tmp_path, state, which: str, *fragments: str):
    path = tmp_path / f"broken_{which}.pth"
    torch.save(state, path)
    kwargs = {"superpoint_checkpoint": None, "superglue_checkpoint": None, f"{which}_checkpoint_path": str(path)}
    with pytest.raises(CheckpointError) as err:
        SuperGlueTracker(**kwargs).prepare()
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_renamed_missing_and_misshaped_keys_raise_checkpoint_error(weights, tmp_path):
    superglue = dict(weights["superglue_state"])
    superglue["bin_scores"] = superglue.pop("bin_score")
    _expect_checkpoint_error(tmp_path, superglue, "superglue", "SuperGlue", "bin_score", "bin_scores")

    superglue = dict(weights["superglue_state"])
    del superglue["gnn.layers.3.mlp.1.running_var"]
    _expect_checkpoint_error(tmp_path, superglue, "superglue", "gnn.layers.3.mlp.1.running_var")

    superglue = dict(weights["superglue_state"])
    superglue["bin_score"] = superglue["bin_score"].reshape(1)  # the official bin_score is 0-d
    _expect_checkpoint_error(tmp_path, superglue, "superglue", "bin_score (1,) vs ()")

    superpoint = dict(weights["superpoint_state"])
    superpoint["convPb.weight"] = superpoint["convPb.weight"][:64]
    _expect_checkpoint_error(tmp_path, superpoint, "superpoint", "SuperPoint", "convPb.weight")

    # Each file must fit its own model.
    _expect_checkpoint_error(tmp_path, weights["superglue_state"], "superpoint", "SuperPoint", "conv1a.weight")

    missing = tmp_path / "does_not_exist.pth"
    with pytest.raises(CheckpointError, match="does_not_exist.pth"):
        SuperGlueTracker(superpoint_checkpoint_path=str(missing)).prepare()


# ------------------------------------------------------------------------------ bare models
def test_grayscale_truncates_like_torchvision(run, vectors, video):
    expected = vectors["sampt_wrapper"]["grayscale"]
    gray = rgb_to_gray_uint8(video["video"][0])
    assert gray.dtype == torch.uint8 and expected["dtype"] == "uint8"
    assert gray.double().sum().item() == expected["sum_float64"]
    assert torch.equal(gray[:, ::8, ::8], expected["sample_every8"])
    assert torch.equal(run[2]["grayscale"], gray)


def _check_features(features, keypoints, scores, first8, total, what):
    assert torch.equal(features.keypoints, keypoints), f"{what}: keypoints differ"
    assert _max_err(features.scores, scores) <= SCORE_TOL, what
    assert features.descriptors.shape == (256, len(keypoints))
    assert _max_err(features.descriptors[:8], first8) <= DESC_TOL, what
    assert abs(features.descriptors.double().sum().item() - total) <= DESC_SUM_TOL, what


def test_superpoint_matches_the_original(tracker, vectors, video):
    # Frames 0 and 7 in one batch (the wrapper's run covers every frame, one at a time).
    images = rgb_to_gray_uint8(video["video"][0, [0, 7]]).float()[:, None] / 255
    with torch.no_grad():
        first, last = tracker.superpoint(images)
    calls = vectors["sampt_wrapper"]["matching_calls"]
    assert list(calls[0]["descriptors0_shape"]) == [256, len(calls[0]["keypoints0"][0])]
    _check_features(first, calls[0]["keypoints0"][0], calls[0]["scores0"][0],
                    calls[0]["descriptors0_first8"], calls[0]["descriptors0_sum_float64"], "frame 0")
    assert list(calls[6]["descriptors1_shape"]) == [256, len(calls[6]["keypoints1"][0])]
    _check_features(last, calls[6]["keypoints1"][0], calls[6]["scores1"][0],
                    calls[6]["descriptors1_first8"], calls[6]["descriptors1_sum_float64"], "frame 7")


def test_superglue_matches_the_original_given_the_stored_keypoints(tracker, run, vectors, video):
    # Stored keypoints and scores; the full descriptors are not stored, so they are the wrapper
    # run's SuperPoint descriptors (checked against the stored ones in the wrapper tests).
    height, width = video["video"].shape[-2:]
    calls = vectors["sampt_wrapper"]["matching_calls"]
    descriptors0 = run[2]["matching_calls"][0]["descriptors0"]
    for i, (call, mine) in enumerate(zip(calls, run[2]["matching_calls"]), start=1):
        with torch.no_grad():
            out = tracker.superglue(calls[0]["keypoints0"][0][None], calls[0]["scores0"][0][None],
                                    descriptors0[None], call["keypoints1"][0][None], call["scores1"][0][None],
                                    mine["descriptors1"][None], (height, width), (height, width))
        assert torch.equal(out.matches0, call["matches0"]), f"pair (0, {i}): matches0 differ"
        assert torch.equal(out.matches1, call["matches1"]), f"pair (0, {i}): matches1 differ"
        assert _max_err(out.matching_scores0, call["matching_scores0"]) <= MATCH_SCORE_TOL
        assert _max_err(out.matching_scores1, call["matching_scores1"]) <= MATCH_SCORE_TOL


# --------------------------------------------------------------------------- SAM-PT wrapper
def test_wrapper_trajectories_and_visibilities_are_exact(run, vectors):
    trajectories, visibilities, _ = run
    expected = vectors["sampt_wrapper"]
    assert trajectories.dtype == torch.float32 and visibilities.dtype == torch.bool
    assert torch.equal(trajectories, expected["trajectories"])
    assert torch.equal(visibilities, expected["visibilities"] > 0.5)
    assert not visibilities[:, 0].any()  # the reference frame stays not visible, as in the original
    assert torch.equal(trajectories[0, 0], vectors["queries"][0, :, 1:])


def test_wrapper_matching_calls_are_the_original_ones(run, vectors):
    calls = run[2]["matching_calls"]
    expected = vectors["sampt_wrapper"]["matching_calls"]
    assert [(c["reference_frame"], c["target_frame"]) for c in calls] == [(0, i) for i in range(1, 8)]
    first = expected[0]
    assert _max_err(calls[0]["scores0"], first["scores0"][0]) <= SCORE_TOL
    assert _max_err(calls[0]["descriptors0"][:8], first["descriptors0_first8"]) <= DESC_TOL
    assert abs(calls[0]["descriptors0"].double().sum().item() - first["descriptors0_sum_float64"]) <= DESC_SUM_TOL
    for i, (mine, ref) in enumerate(zip(calls, expected), start=1):
        assert torch.equal(mine["keypoints0"], first["keypoints0"][0]), i  # frame 0 detected once
        assert torch.equal(mine["keypoints1"], ref["keypoints1"][0]), i
        assert _max_err(mine["scores1"], ref["scores1"][0]) <= SCORE_TOL
        assert _max_err(mine["descriptors1"][:8], ref["descriptors1_first8"]) <= DESC_TOL
        assert abs(mine["descriptors1"].double().sum().item() - ref["descriptors1_sum_float64"]) <= DESC_SUM_TOL
        assert torch.equal(mine["matches0"], ref["matches0"][0]) and torch.equal(mine["matches1"], ref["matches1"][0])
        assert _max_err(mine["matching_scores0"], ref["matching_scores0"][0]) <= MATCH_SCORE_TOL
        assert _max_err(mine["matching_scores1"], ref["matching_scores1"][0]) <= MATCH_SCORE_TOL


def test_random_draws_are_the_original_ones_without_numpy_global_state(run, vectors, tracker, video):
    draws = run[2]["random_draws"]
    expected = vectors["sampt_wrapper"]["random_draws"]
    assert len(draws) == len(expected) == 28
    for k, (mine, ref) in enumerate(zip(draws, expected)):
        assert (mine["a"], mine["size"]) == (ref["a"], ref["size"]), k
        assert torch.equal(mine["result"], ref["result"]), k

    # An explicit generator; numpy's global one is neither used nor disturbed. Draws run frame by
    # frame, so the first 2 frames are the full run's.
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    short, short_vis = tracker(video["video"][:, :2], vectors["queries"], query_masks=vectors["masks"],
                               generator=np.random.RandomState(0))
    assert np.array_equal(np.random.get_state()[1], before)
    assert torch.equal(short, run[0][:, :2]) and torch.equal(short_vis, run[1][:, :2])


def _crop_case(video, vectors, frames: int):
    """A small crop of the clip (car and part of the top band) with queries built from its masks:
    per mask 16 pixel centres spread over the mask, then 1 pixel centre outside it."""
    clip = video["video"][:, :frames, :, 32:160, 160:384].contiguous()
    masks = vectors["masks"][:, 32:160, 160:384]
    rows = []
    for mask in masks:
        inside, outside = mask.nonzero().flip(1).float() + 0.5, (~mask).nonzero().flip(1).float() + 0.5
        pick = torch.linspace(0, len(inside) - 1, 16).long()
        rows.append(torch.cat([inside[pick], outside[len(outside) // 2 :][:1]]))
    points = torch.cat(rows)
    queries = torch.cat([torch.zeros(len(points), 1), points], 1)[None]
    return clip, queries, masks


def test_seed_option_changes_draws_not_candidates(tracker, vectors, video):
    clip, queries, masks = _crop_case(video, vectors, frames=2)
    seed0, vis0 = tracker(clip, queries, query_masks=masks)
    reseeded = SuperGlueTracker(superpoint_checkpoint=None, superglue_checkpoint=None, seed=1)
    reseeded.load_state_dict(tracker.state_dict())
    seed1, vis1 = reseeded(clip, queries, query_masks=masks)
    assert vis0[0, 1].any()
    assert torch.equal(vis1, vis0)  # visibility depends only on the candidate counts
    assert not torch.equal(seed1, seed0)
    again, _ = reseeded(clip, queries, query_masks=masks)  # every call starts from the seed
    assert torch.equal(again, seed1)


def test_resize_maps_keypoints_back_to_input_pixels(tracker, vectors, video):
    clip, queries, masks = _crop_case(video, vectors, frames=2)  # 128 x 224
    halved = SuperGlueTracker(superpoint_checkpoint=None, superglue_checkpoint=None, resize=[112])
    halved.load_state_dict(tracker.state_dict())
    details: dict = {}
    traj, vis = halved(clip, queries, query_masks=masks, details=details)
    assert details["matching_calls"][0]["keypoints1"][:, 1].max() < 64  # detected on the 64 x 112 image
    visible = traj[0, 1][vis[0, 1]]
    assert len(visible) and torch.equal(visible % 2, torch.zeros_like(visible))  # integer keypoints x 2
    assert torch.equal(traj[0, 0], queries[0, :, 1:])  # query positions stay in input pixels


def test_reference_frame_query_and_mask_fallback(tracker, vectors, video):
    clip3, queries, masks = _crop_case(video, vectors, frames=3)
    clip = clip3[:, :2]
    by_query = SuperGlueTracker(superpoint_checkpoint=None, superglue_checkpoint=None, reference_frame="query")
    by_query.load_state_dict(tracker.state_dict())
    # All queries on frame 0: "query" and "first" agree.
    first, _ = tracker(clip, queries, query_masks=masks)
    same, _ = by_query(clip, queries, query_masks=masks)
    assert torch.equal(first, same)

    # Mask 1 queried on frame 2: its points on frame 2 are the queries, elsewhere frame-t keypoints.
    late = queries.clone()
    late[0, 17:, 0] = 2
    details: dict = {}
    traj, vis = by_query(clip3, late, query_masks=masks, details=details)
    assert torch.equal(traj[0, 2, 17:], late[0, 17:, 1:]) and not vis[0, 2, 17:].any()
    assert torch.equal(traj[0, 0, :17], late[0, :17, 1:]) and not vis[0, 0, :17].any()
    calls = details["matching_calls"]
    assert [(c["reference_frame"], c["target_frame"]) for c in calls] == [(0, 1), (0, 2), (2, 0), (2, 1)]
    frame0_keypoints = calls[0]["keypoints0"]
    chosen = traj[0, 0, 17:][vis[0, 0, 17:]]
    assert len(chosen) and all((frame0_keypoints == p).all(1).any() for p in chosen)
    mixed = late.clone()
    mixed[0, 20, 0] = 1
    with pytest.raises(ValueError, match="mask 1 have different query frames"):
        by_query(clip3, mixed, query_masks=masks)

    # Without masks, the convex hull of each mask's positive points stands in for it.
    hulls = torch.stack([convex_hull_mask(queries[0, m * 17 : m * 17 + 16, 1:], *masks.shape[-2:]) for m in range(2)])
    assert (hulls[0] & masks[0]).sum() >= 0.85 * hulls[0].sum()  # the car is nearly convex (90% here)
    without, vis_without = tracker(clip, queries)
    with_hull, vis_hull = tracker(clip, queries, query_masks=hulls)
    assert torch.equal(without, with_hull) and torch.equal(vis_without, vis_hull)
    strict = SuperGlueTracker(superpoint_checkpoint=None, superglue_checkpoint=None, fallback_mask="none")
    with pytest.raises(ValueError, match="needs query_masks"):
        strict(clip, queries)


def test_convex_hull_mask_and_resize_rule():
    square = torch.tensor([[2.5, 2.5], [7.5, 2.5], [7.5, 7.5], [2.5, 7.5], [5.0, 5.0]])
    mask = convex_hull_mask(square, 10, 12)
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[2:8, 2:8] = True
    assert torch.equal(mask, expected)
    # Degenerate hull: just the points' pixels.
    assert convex_hull_mask(torch.tensor([[0.2, 0.7], [11.9, 9.9]]), 10, 12).nonzero().tolist() == [[0, 0], [9, 11]]
    assert resized_size(448, 256, [-1, -1]) == (448, 256)
    assert resized_size(448, 256, [224]) == (224, 128)
    assert resized_size(448, 256, [320, 240]) == (320, 240)


def test_bad_arguments_and_inputs(tracker, vectors, video):
    with pytest.raises(ValueError, match="reference_frame"):
        SuperGlueTracker(reference_frame="last")
    with pytest.raises(ValueError, match="resize"):
        SuperGlueTracker(resize=[1, 2, 3])
    with pytest.raises(ValueError, match="not a whole number of masks"):
        tracker(video["video"][:, :2], vectors["queries"][:, :20])
    with pytest.raises(ValueError, match="query_masks must be"):
        tracker(video["video"][:, :2], vectors["queries"], query_masks=vectors["masks"][:1])


# ----------------------------------------------------------------------------- end to end
def test_sampt_vos_run_with_the_superglue_tracker(davis2017_sample, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs use paths relative to the repository root
    prefix = "--model.init_args.method.init_args.tracker.init_args."
    run_sam_pt_with_tracker(davis2017_sample, tmp_path / "run", "superglue.yaml", "SuperGlueTracker",
                            prefix + "superpoint_checkpoint_path", str(weights["superpoint"]),
                            prefix + "superglue_checkpoint_path", str(weights["superglue"]),
                            # configs/test/tiny.yaml prompts with 4 positive + 1 negative points per mask
                            prefix + "positive_points_per_mask", "4")
