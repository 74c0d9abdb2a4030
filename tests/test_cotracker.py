"""CoTracker v1 and CoTracker3 offline against the original code's outputs (shared/vectors/cotracker).

The weights are built by the reference folder's ``init_weights.py``, saved to files the way
official checkpoints are (bare and wrapped in {"model": ...}) and loaded through the same code
path. Tolerances are those of the folder's README.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import VECTORS
from sampt.checkpoints import read_state_dict_file
from sampt.errors import CheckpointError
from sampt.trackers.base import build_tracker, tracker_classes
from sampt.trackers.cotracker import (
    CoTrackerTracker,
    CoTrackerV1,
    build_cotracker_v1,
    cotracker_v1_predict,
)
from sampt.trackers.cotracker3 import (
    CoTracker3Tracker,
    CoTrackerThreeOffline,
    build_cotracker3_offline,
    cotracker3_predict,
)

REF = VECTORS / "cotracker"
PX_TOL = 1e-3  # trajectories, any case, model or input pixels
PROB_TOL = 1e-4  # probabilities
FEAT_TOL = 1e-4  # encoder outputs and query features

pytestmark = [pytest.mark.skipif(not REF.is_dir(), reason=f"reference folder {REF} is not present"),
              pytest.mark.usefixtures("two_threads")]


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.double() - expected.double()).abs().max().item()


def _assert_close(actual, expected, tol, what):
    err = _max_err(actual, expected)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:g}"


def _assert_bool_equal(actual, expected, what):
    assert actual.dtype == torch.bool and actual.shape == expected.shape
    mismatches = int((actual != expected).sum())
    assert mismatches == 0, f"{what}: {mismatches} booleans differ"


def _layout(name: str) -> list[tuple[str, list[int]]]:
    return [(key, shape) for key, shape, _ in json.loads((REF / name).read_text())]


def _weights_sha256(state_dict: dict, layout: list) -> str:
    digest = hashlib.sha256()
    for key, _ in layout:
        digest.update(key.encode("utf-8"))
        digest.update(state_dict[key].contiguous().float().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def _build_weights(layout_name: str, expected_sha: str) -> dict:
    spec = importlib.util.spec_from_file_location("cotracker_init_weights", REF / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.build_state_dict(str(REF / layout_name))
    # The comparisons below are only meaningful with exactly the reference weights.
    assert _weights_sha256(state, _layout(layout_name)) == expected_sha
    return state


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return torch.load(REF / "video.pt", weights_only=True)["video"]  # (1, 16, 3, 240, 427) uint8


@pytest.fixture(scope="module")
def vectors_v1() -> dict:
    return torch.load(REF / "vectors_v1.pt", weights_only=True)


@pytest.fixture(scope="module")
def vectors_v3() -> dict:
    return torch.load(REF / "vectors_v3_offline.pt", weights_only=True)


@pytest.fixture(scope="module")
def v1_files(tmp_path_factory, vectors_v1):
    """The v1 reference weights saved as an official checkpoint would be: bare and wrapped."""
    state = _build_weights("state_dict_v1.json", vectors_v1["meta"]["weights_sha256"])
    root = tmp_path_factory.mktemp("cotracker_v1")
    torch.save(state, root / "bare.pth")
    torch.save({"model": state}, root / "wrapped.pth")
    return {"bare": str(root / "bare.pth"), "wrapped": str(root / "wrapped.pth"), "state": state, "root": root}


@pytest.fixture(scope="module")
def v3_file(tmp_path_factory, vectors_v3):
    state = _build_weights("state_dict_v3_offline.json", vectors_v3["meta"]["weights_sha256"])
    path = tmp_path_factory.mktemp("cotracker_v3") / "scaled_offline.pth"
    torch.save({"model": state}, path)
    return str(path)


@pytest.fixture(scope="module")
def v1_model(v1_files) -> CoTrackerV1:
    return build_cotracker_v1(v1_files["wrapped"])


@pytest.fixture(scope="module")
def v1_model_run(v1_model, video, vectors_v1):
    """The end-to-end network call of ``model_forward`` (encoder included), with internals."""
    case = vectors_v1["model_forward"]
    rgbs = F.interpolate(video.float().reshape(16, 3, 240, 427), (384, 512), mode="bilinear",
                         align_corners=False).reshape(1, 16, 3, 384, 512)
    debug: dict = {}
    with torch.no_grad():
        traj, vis, feat = v1_model(rgbs, case["inputs"]["queries"], iters=case["inputs"]["iters"], debug=debug)
    # Per-frame encoder maps as the windows saw them (windows start at 0, 4, 8; S = 8), reused by
    # the predictor tests so the 16 frames are encoded once.
    fmaps = debug["window_fmaps"]
    features = torch.cat([fmaps[0], fmaps[1][4:], fmaps[2][4:]])[None]
    return {"rgbs": rgbs, "traj": traj, "vis": vis, "feat": feat, "debug": debug, "features": features}


# ------------------------------------------------------------------------------------ layout
def test_state_dict_layouts_match_the_checkpoints():
    for stride, window in [(4, 8), (4, 12), (8, 16)]:
        got = [(k, list(v.shape)) for k, v in CoTrackerV1(stride=stride, window_len=window).state_dict().items()]
        assert got == _layout("state_dict_v1.json")
    got = [(k, list(v.shape)) for k, v in CoTrackerThreeOffline(window_len=60).state_dict().items()]
    assert got == _layout("state_dict_v3_offline.json")


def test_bare_and_wrapped_checkpoints_load_the_same(v1_files):
    bare = read_state_dict_file(v1_files["bare"], "CoTracker v1")
    wrapped = read_state_dict_file(v1_files["wrapped"], "CoTracker v1")
    assert list(bare) == list(wrapped) == list(v1_files["state"])
    assert all(torch.equal(bare[k], wrapped[k]) for k in bare)


# ------------------------------------------------------------------------------------ errors
def test_missing_and_unexpected_keys_raise_checkpoint_error(v1_files, v3_file):
    root = v1_files["root"]
    state = dict(v1_files["state"])
    state["updateformer.virtual_tracks"] = state.pop("updateformer.flow_head.bias")
    renamed = root / "renamed_key.pth"
    torch.save({"model": state}, renamed)
    with pytest.raises(CheckpointError) as err:
        build_cotracker_v1(str(renamed))
    message = str(err.value)
    assert str(renamed) in message and "CoTracker v1" in message
    assert "updateformer.flow_head.bias" in message and "updateformer.virtual_tracks" in message

    # A v3 checkpoint does not fit the v1 network, and vice versa.
    with pytest.raises(CheckpointError, match="CoTracker v1") as err:
        build_cotracker_v1(v3_file)
    assert v3_file in str(err.value)
    with pytest.raises(CheckpointError, match="CoTracker3 offline") as err:
        build_cotracker3_offline(v1_files["wrapped"])
    assert v1_files["wrapped"] in str(err.value)


def test_wrong_shape_unreadable_and_missing_files_raise_checkpoint_error(v1_files):
    root = v1_files["root"]
    state = dict(v1_files["state"])
    state["vis_predictor.0.weight"] = torch.zeros(2, 128)
    wrong_shape = root / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(CheckpointError, match="vis_predictor.0.weight") as err:
        build_cotracker_v1(str(wrong_shape))
    assert str(wrong_shape) in str(err.value)

    garbage = root / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        read_state_dict_file(garbage, "CoTracker v1")
    assert str(garbage) in str(err.value)

    missing = root / "does_not_exist.pth"
    with pytest.raises(CheckpointError) as err:
        CoTrackerTracker(checkpoint_path=str(missing)).prepare()
    assert str(missing) in str(err.value)


def test_registry_and_bad_arguments(v1_files):
    assert tracker_classes()["CoTrackerTracker"] is CoTrackerTracker and "CoTracker3Tracker" in tracker_classes()
    with pytest.raises(ValueError, match="cotracker_stride_4_wind_8"):
        CoTrackerTracker(checkpoint="cotracker_stride_2_wind_4", checkpoint_path=v1_files["bare"])
    with pytest.raises(ValueError, match="cotracker3_offline"):
        CoTracker3Tracker(checkpoint="cotracker3_online", checkpoint_path=v1_files["bare"])


# ------------------------------------------------------------------------------------ v1
def test_v1_model_forward(v1_model_run, vectors_v1):
    case = vectors_v1["model_forward"]
    rgbs = v1_model_run["rgbs"]
    assert rgbs.double().sum().item() == pytest.approx(case["inputs"]["rgbs_sum_float64"].item(), rel=1e-12)
    _assert_close(rgbs[0, :, :, ::64, ::64], case["inputs"]["rgbs_sample_every64"], 1e-4, "model input")

    out, ref_debug, debug = case["outputs"], case["debug"], v1_model_run["debug"]
    _assert_close(v1_model_run["traj"], out["traj_e"], PX_TOL, "traj_e")
    _assert_close(v1_model_run["vis"], out["vis_e"], PROB_TOL, "vis_e")
    _assert_close(v1_model_run["feat"], out["feat_init"], FEAT_TOL, "feat_init")
    # Never-computed entries (frames before a track's first window) stay exactly zero.
    assert torch.equal(v1_model_run["traj"] == 0, out["traj_e"] == 0)
    assert int((out["traj_e"] == 0).sum()) > 0

    assert torch.equal(debug["sort_inds"], ref_debug["sort_inds"])
    assert debug["wind_inds"] == ref_debug["wind_inds"].tolist()
    fmap0 = debug["window_fmaps"][0]
    _assert_close(fmap0[0, :8], ref_debug["fnet_window0_frame0_ch0to7"], FEAT_TOL, "encoder frame 0")
    _assert_close(fmap0.mean(dim=(2, 3)), ref_debug["fnet_window0_chan_mean"], FEAT_TOL, "encoder mean")
    _assert_close(fmap0.std(dim=(2, 3)), ref_debug["fnet_window0_chan_std"], FEAT_TOL, "encoder std")
    for w, (coords, vis) in enumerate(zip(ref_debug["window_coords_per_iter"], ref_debug["window_vis_sigmoid"])):
        _assert_close(debug["window_coords_per_iter"][w], coords[:, 0], PX_TOL, f"window {w} coords per iteration")
        _assert_close(debug["window_vis_sigmoid"][w], vis[0], PROB_TOL, f"window {w} visibility")


@pytest.mark.parametrize("case_name", ["predictor_forward", "predictor_forward_backward_tracking"])
def test_v1_predictor(case_name, v1_model, v1_model_run, video, vectors_v1):
    case = vectors_v1[case_name]
    details: dict = {}
    tracks, visible = cotracker_v1_predict(
        v1_model, video.float(), case["inputs"]["queries"],
        backward_tracking=case["inputs"]["backward_tracking"],
        features=v1_model_run["features"], details=details,
    )
    _assert_close(tracks, case["outputs"]["tracks"], PX_TOL, f"{case_name} tracks")
    _assert_bool_equal(visible, case["outputs"]["visibilities"], f"{case_name} visibilities")
    for key, expected in case["internal"].items():
        tol = PROB_TOL if key.endswith("vis") else PX_TOL
        _assert_close(details[key], expected, tol, f"{case_name} {key}")


def test_v1_sampt_wrapper(v1_files, video, vectors_v1):
    case = vectors_v1["sampt_wrapper"]
    tracker = build_tracker("CoTrackerTracker", checkpoint="cotracker_stride_4_wind_8", checkpoint_path=v1_files["bare"])
    details: dict = {}
    traj, visible = tracker(video, case["inputs"]["queries"], details=details)
    assert traj.dtype == torch.float32
    _assert_close(traj, case["outputs"]["trajectories"], PX_TOL, "trajectories")
    _assert_bool_equal(visible, case["outputs"]["visibilities"], "visibilities")
    _assert_close(details["visibility_probs"], case["outputs"]["visibility_probs"], PROB_TOL, "probabilities")
    for key, expected in case["internal"].items():
        tol = PROB_TOL if key.endswith("vis") else PX_TOL
        _assert_close(details[key], expected, tol, f"sampt_wrapper {key}")


def test_v1_short_clip_is_padded(v1_files, video, vectors_v1):
    case = vectors_v1["short_clip"]
    num_frames = case["inputs"]["num_frames"]
    # Encoder inside the network (the wrapper test covers reused features); batch of two.
    tracker = CoTrackerTracker(checkpoint_path=v1_files["bare"], reuse_features=False)
    clip = video[:, :num_frames].repeat(2, 1, 1, 1, 1)
    queries = case["inputs"]["queries"].repeat(2, 1, 1)
    details: dict = {}
    traj, visible = tracker(clip, queries, details=details)
    for b in range(clip.shape[0]):
        _assert_close(traj[b : b + 1], case["outputs"]["trajectories"], PX_TOL, "short clip trajectories")
        _assert_bool_equal(visible[b : b + 1], case["outputs"]["visibilities"], "short clip visibilities")
    _assert_close(details["visibility_probs"], case["outputs"]["visibility_probs"], PROB_TOL, "probabilities")
    for key, expected in case["internal"].items():
        tol = PROB_TOL if key.endswith("vis") else PX_TOL
        _assert_close(details[key], expected, tol, f"short_clip {key}")


def test_v1_stride_8_window_16_tracks_every_frame(v1_files):
    # Same weights, other architecture constants; 20 frames > one 16-frame window.
    tracker = CoTrackerTracker(checkpoint="cotracker_stride_8_wind_16", checkpoint_path=v1_files["bare"],
                               interp_shape=(128, 128))
    assert tracker.model.stride == 8 and tracker.model.window_len == 16
    gen = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (1, 20, 3, 48, 72), generator=gen, dtype=torch.uint8)
    queries = torch.tensor([[[0.0, 10.0, 10.0], [9.0, 30.5, 20.0], [19.0, 60.0, 40.0]]])
    traj, visible = tracker(clip, queries)
    assert traj.shape == (1, 20, 3, 2) and traj.dtype == torch.float32
    assert visible.shape == (1, 20, 3) and visible.dtype == torch.bool
    assert torch.isfinite(traj).all()
    # Forward and backward passes together cover every frame: nothing is left at exactly 0.
    assert (traj != 0).all()


def test_tracker_rejects_bad_inputs(v1_files):
    tracker = CoTrackerTracker(checkpoint_path=v1_files["bare"], interp_shape=(32, 32))
    with pytest.raises(ValueError, match="uint8"):
        tracker(torch.zeros(1, 4, 3, 16, 16), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="query frame"):
        tracker(torch.zeros(1, 4, 3, 16, 16, dtype=torch.uint8), torch.tensor([[[4.0, 1.0, 1.0]]]))


# ------------------------------------------------------------------------------------ v3
@pytest.fixture(scope="module")
def v3_model(v3_file) -> CoTrackerThreeOffline:
    return build_cotracker3_offline(v3_file)


@pytest.fixture(scope="module")
def v3_inputs(v3_model, video, vectors_v3):
    rgbs = F.interpolate(video.float().reshape(16, 3, 240, 427), (384, 512), mode="bilinear",
                         align_corners=True).reshape(1, 16, 3, 384, 512)
    with torch.no_grad():
        features = v3_model.encode(rgbs[0])[None]
    return {"rgbs": rgbs, "features": features}


def test_v3_time_embedding_buffer_matches_checkpoint(v3_model, v3_file):
    # The buffer is part of the checkpoint; the model's own value must agree with it bit for bit.
    fresh = CoTrackerThreeOffline(window_len=60)
    assert torch.equal(fresh.time_emb, read_state_dict_file(v3_file, "CoTracker3")["time_emb"])


def test_v3_model_forward(v3_model, v3_inputs, vectors_v3):
    case = vectors_v3["v3_model_forward"]
    rgbs = v3_inputs["rgbs"]
    assert rgbs.double().sum().item() == pytest.approx(case["inputs"]["video_sum_float64"].item(), rel=1e-12)
    _assert_close(rgbs[0, :, :, ::64, ::64], case["inputs"]["video_sample_every64"], 1e-4, "model input")
    with torch.no_grad():
        coords, vis, conf = v3_model(rgbs, case["inputs"]["queries"], iters=case["inputs"]["iters"],
                                     features=v3_inputs["features"])
    _assert_close(coords, case["outputs"]["coords"], PX_TOL, "coords")
    _assert_close(vis, case["outputs"]["vis"], PROB_TOL, "vis")
    _assert_close(conf, case["outputs"]["confidence"], PROB_TOL, "confidence")


@pytest.mark.parametrize("case_name", ["v3_predictor_forward", "v3_predictor_forward_backward_tracking"])
def test_v3_predictor(case_name, v3_model, v3_inputs, video, vectors_v3):
    case = vectors_v3[case_name]
    details: dict = {}
    tracks, visible = cotracker3_predict(
        v3_model, video.float(), case["inputs"]["queries"],
        backward_tracking=case["inputs"]["backward_tracking"],
        features=v3_inputs["features"], details=details,
    )
    _assert_close(details["model_queries"], vectors_v3["v3_model_forward"]["inputs"]["queries"], PX_TOL, "queries")
    _assert_close(tracks, case["outputs"]["tracks"], PX_TOL, f"{case_name} tracks")
    _assert_bool_equal(visible, case["outputs"]["visibilities"], f"{case_name} visibilities")
    for key, expected in case.get("internal", {}).items():
        tol = PROB_TOL if key.endswith("vis") else PX_TOL
        _assert_close(details[key], expected, tol, f"{case_name} {key}")


def test_v3_tracker_matches_reference_backward_tracking(v3_file, video, vectors_v3):
    # With the predictor's support grid (6x6 at t = 0 only) and threshold, the tracker makes the
    # reference backward-tracking calls; it differs only at the query frames, which the
    # predictor overwrites with the query itself.
    case = vectors_v3["v3_predictor_forward_backward_tracking"]
    tracker = build_tracker("CoTracker3Tracker", checkpoint_path=v3_file, support_grid_size=6,
                             support_grid_every_n_frames=100, visibility_threshold=0.9)
    queries = case["inputs"]["queries"]
    traj, visible = tracker(video, queries)
    not_query_frame = torch.ones(traj.shape[:3], dtype=torch.bool)
    not_query_frame[0, queries[0, :, 0].long(), torch.arange(queries.shape[1])] = False
    err = (traj - case["outputs"]["tracks"]).abs().amax(dim=-1)[not_query_frame].max().item()
    assert err <= PX_TOL, f"tracker trajectories: max abs error {err:.3g}"
    assert torch.equal(visible[not_query_frame], case["outputs"]["visibilities"][not_query_frame])


def test_v3_tracker_feature_reuse_and_short_clip(v3_file, video):
    queries = torch.tensor([[[0.0, 200.0, 100.0], [2.0, 300.5, 120.25], [4.0, 250.0, 60.0]]])
    clip = video[:, :5]
    # A small model resolution keeps this consistency check cheap.
    reuse = CoTracker3Tracker(checkpoint_path=v3_file, reuse_features=True, interp_shape=(96, 128))
    fresh = CoTracker3Tracker(checkpoint_path=v3_file, reuse_features=False, interp_shape=(96, 128))
    traj_a, vis_a = reuse(clip, queries)
    traj_b, vis_b = fresh(clip, queries)
    assert traj_a.shape == (1, 5, 3, 2) and vis_a.shape == (1, 5, 3) and vis_a.dtype == torch.bool
    _assert_close(traj_a, traj_b, PX_TOL, "feature reuse")
    assert torch.equal(vis_a, vis_b)
