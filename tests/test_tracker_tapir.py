"""TAPIR and BootsTAPIR against the original code's outputs (shared/vectors/tapir, /bootstapir).

The weights are the reference folders' random weights (``trackers/init_weights.py``, checked
against the READMEs' sha256), written in the official file formats - TAPIR as the JAX ``.npy``
Haiku tree and as a torch state dict, BootsTAPIR as the official torch port's state dict - and
loaded through the trackers' own ``checkpoint_path`` + ``prepare()`` path. Tolerances are the
READMEs'.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, VECTORS, run_sam_pt_with_tracker
from sampt.errors import CheckpointError
from sampt.trackers.base import tracker_classes
from sampt.trackers.tapir import (
    TapirTracker,
    _haiku_module_to_torch,
    haiku_to_torch,
    read_tapir_checkpoint,
)

TAPIR_REF = VECTORS / "tapir"
BOOTS_REF = VECTORS / "bootstapir"
SHARED_TRACKERS = VECTORS / "trackers"
TAPIR_SHA = "1bf6c7798d734a65ba1dc03f386a0a26b3652155f5a632c56f7d1973dfe3ed16"
BOOTS_SHA = "a490ac25a245300cf4dd16ce0ad4706f1045c00c2ded11e1ac8718bb4b2dffe1"

PX_TOL = 1e-3  # trajectories, tracks, unrefined tracks (pixels)
LOGIT_TOL = 2e-4  # occlusion / expected_dist logits
PROB_TOL = 5e-5  # visibility probabilities
FEAT_TOL = 1e-5  # L2-normalised features

pytestmark = pytest.mark.skipif(
    not (TAPIR_REF.is_dir() and BOOTS_REF.is_dir()), reason="reference folders are not present"
)


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.double() - expected.double()).abs().max().item()


def _assert_close(actual, expected, tol, what):
    err = _max_err(actual, expected)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:g}"


def _assert_bool_equal(actual, expected, what):
    assert actual.dtype == torch.bool and actual.shape == expected.shape
    flips = int((actual != expected).sum())
    assert flips == 0, f"{what}: {flips} booleans differ"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared machine the network's many small ops (the mixer) spend far
    longer in thread synchronisation than in arithmetic when threads compete for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _init_weights_module():
    spec = importlib.util.spec_from_file_location("tracker_init_weights", SHARED_TRACKERS / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def init_weights():
    return _init_weights_module()


@pytest.fixture(scope="module")
def clip():
    return torch.load(SHARED_TRACKERS / "video.pt", weights_only=True)


@pytest.fixture(scope="module")
def tapir_vectors():
    return torch.load(TAPIR_REF / "vectors_tapir.pt", weights_only=True)


@pytest.fixture(scope="module")
def boots_vectors():
    return torch.load(BOOTS_REF / "vectors_bootstapir.pt", weights_only=True)


@pytest.fixture(scope="module")
def tapir_files(init_weights, tmp_path_factory):
    """The TAPIR reference weights as the official JAX ``.npy`` and as a torch state dict."""
    weights = init_weights.build_weights(str(TAPIR_REF / "layout_tapir.json"))
    assert init_weights.sha256_of(weights) == TAPIR_SHA
    root = tmp_path_factory.mktemp("tapir_weights")
    tree = init_weights.to_haiku_tree(weights)
    npy = root / "tapir_checkpoint_panning.npy"
    np.save(npy, {"params": tree, "state": {}}, allow_pickle=True)
    pt = root / "tapir_checkpoint_panning.pt"
    torch.save(haiku_to_torch(tree), pt)
    return {"npy": npy, "pt": pt, "tree": tree, "root": root}


@pytest.fixture(scope="module")
def boots_file(init_weights, tmp_path_factory):
    """The BootsTAPIR reference weights as the official torch port's state dict."""
    weights = init_weights.build_weights(str(BOOTS_REF / "layout_bootstapir.json"))
    assert init_weights.sha256_of(weights) == BOOTS_SHA
    path = tmp_path_factory.mktemp("bootstapir_weights") / "bootstapir_checkpoint_v2.pt"
    torch.save(dict(weights), path)
    return path


def _run(tracker, clip):
    details: dict = {}
    trajectories, visibilities = tracker(clip["video"], clip["queries"], details=details)
    return {"trajectories": trajectories, "visibilities": visibilities, **details}


@pytest.fixture(scope="module")
def tapir_npy_tracker(tapir_files):
    tracker = TapirTracker(variant="tapir", checkpoint_path=str(tapir_files["npy"]))
    tracker.prepare()
    return tracker


@pytest.fixture(scope="module")
def tapir_run(tapir_npy_tracker, clip):
    return _run(tapir_npy_tracker, clip)


@pytest.fixture(scope="module")
def boots_runs(boots_file, clip):
    """BootsTAPIR with the defaults (temperature 10, threshold 0.5) and as the torch demo (20)."""
    default = TapirTracker(variant="bootstapir", checkpoint_path=str(boots_file))
    demo = TapirTracker(variant="bootstapir", checkpoint_path=str(boots_file), softmax_temperature=20.0)
    return {10: _run(default, clip), 20: _run(demo, clip), "tracker": default}


def _check_model_input(run, case):
    video = run["model_video"]
    assert video.shape == (1, 8, 256, 256, 3) and video.dtype == torch.float32
    assert video.double().sum().item() == pytest.approx(case["inputs"]["video_sum_float64"].item(), abs=1e-3)
    _assert_close(video[:, :, ::16, ::16], case["inputs"]["video_sample_every16"], 1e-6, "model video")
    _assert_close(run["model_queries"], case["inputs"]["query_points_tyx"], 1e-6, "model queries (t, y, x)")


def _check_model_outputs(outputs, expected, what):
    _assert_close(outputs["tracks"], expected["tracks"], PX_TOL, f"{what} tracks")
    for key in ("occlusion", "expected_dist"):
        _assert_close(outputs[key], expected[key], LOGIT_TOL, f"{what} {key}")
    for key, tol in (("unrefined_tracks", PX_TOL), ("unrefined_occlusion", LOGIT_TOL),
                     ("unrefined_expected_dist", LOGIT_TOL)):
        assert len(outputs[key]) == len(expected[key]) == 4
        for i, (actual, ref) in enumerate(zip(outputs[key], expected[key])):
            _assert_close(actual, ref, tol, f"{what} {key}[{i}]")


def _check_internals(internals, expected, what):
    # Grids are (B, T, C, h, w) here; the references are frame 0, channels 0-7, (h, w, C).
    _assert_close(internals["lowres"][0, 0, :8].permute(1, 2, 0), expected["lowres_frame0_ch0to7"], FEAT_TOL,
                  f"{what} lowres grid")
    _assert_close(internals["hires"][0, 0, :8].permute(1, 2, 0), expected["hires_frame0_ch0to7"], FEAT_TOL,
                  f"{what} hires grid")
    b, t, c, h, w = internals["lowres"].shape
    assert [b, t, h, w, c] == list(expected["lowres_shape"])
    b, t, c, h, w = internals["hires"].shape
    assert [b, t, h, w, c] == list(expected["hires_shape"])
    for key in ("query_feats_lowres", "query_feats_hires"):
        _assert_close(internals[key], expected[key], FEAT_TOL, f"{what} {key}")


def _check_wrapper(run, expected, threshold, what):
    assert run["trajectories"].dtype == torch.float32
    _assert_close(run["trajectories"], expected["trajectories"], PX_TOL, f"{what} trajectories")
    _assert_close(run["visibility_probs"], expected["visibility_probs"], PROB_TOL, f"{what} probabilities")
    _assert_bool_equal(run["visibility_probs"] > threshold, expected["visibilities"], f"{what} visibilities")


# ------------------------------------------------------------------------------------ TAPIR
def test_tapir_model_forward(tapir_run, tapir_vectors):
    case = tapir_vectors["model_forward"]
    _check_model_input(tapir_run, case)
    _check_model_outputs(tapir_run["model_outputs"], case["outputs"], "TAPIR")
    _check_internals(tapir_run["internals"], case["internal"], "TAPIR")


def test_tapir_sampt_wrapper(tapir_run, tapir_vectors):
    case = tapir_vectors["sampt_wrapper"]
    assert case["inputs"]["visibility_threshold"] == 0.1
    _check_wrapper(tapir_run, case["outputs"], 0.1, "TAPIR wrapper")
    _assert_bool_equal(tapir_run["visibilities"], case["outputs"]["visibilities"], "TAPIR tracker visibilities")


def test_tapir_no_query_frame_lock(tapir_run, clip):
    """After refinement a point is neither at its query position on its query frame nor forced
    visible there (the original's behaviour)."""
    queries = clip["queries"][0]
    frames = queries[:, 0].long()
    points = torch.arange(len(queries))
    at_query = tapir_run["trajectories"][0, frames, points]
    assert (at_query - queries[:, 1:]).abs().max() > 0.1
    assert not tapir_run["visibilities"][0, frames[0], 0]
    # The initial cost-volume estimate, by contrast, is the query point on its query frame.
    initial = tapir_run["model_outputs"]["unrefined_tracks"][0][0, points, frames]
    assert torch.equal(initial, tapir_run["model_queries"][0, :, [2, 1]])


def test_tapir_pt_checkpoint_loads_the_same_weights(tapir_files, tapir_npy_tracker):
    tracker = TapirTracker(variant="tapir", checkpoint_path=str(tapir_files["pt"]))
    tracker.prepare()
    assert tracker.weights_path == str(tapir_files["pt"])
    reference = tapir_npy_tracker.model.state_dict()
    loaded = tracker.model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key


def test_haiku_conversion_layouts(tapir_files):
    """Haiku layouts map onto torch's: conv (kh, kw, in, out), linear (in, out), depthwise (k, 1, C)."""
    tree = tapir_files["tree"]
    state = haiku_to_torch(tree)
    conv = tree["tapir/~/resnet/~/block_group_1/~/block_0/~/conv_0"]["w"]  # (3, 3, 64, 128)
    assert torch.equal(state["resnet_torch.block_groups.1.blocks.0.conv_0.weight"][5, 7, 2, 1],
                       torch.tensor(conv[2, 1, 7, 5]))
    linear = tree["tapir/~/pips_mlp_mixer/linear"]["w"]  # (486, 512)
    assert torch.equal(state["torch_pips_mixer.linear.weight"][11, 300], torch.tensor(linear[300, 11]))
    depthwise = tree["tapir/~/pips_mlp_mixer/block_3/mlp1_up_1"]["w"]  # (3, 1, 2048)
    assert torch.equal(state["torch_pips_mixer.blocks.3.mlp1_up_1.weight"][1000, 0, 2], torch.tensor(depthwise[2, 0, 1000]))
    assert torch.equal(state["resnet_torch.block_groups.2.blocks.0.proj_conv.weight"][:, :, 0, 0],
                       torch.tensor(tree["tapir/~/resnet/~/block_group_2/~/block_0/~/shortcut_conv"]["w"][0, 0]).t())
    assert torch.equal(state["torch_cost_volume_track_mods.occ_out.bias"], torch.tensor(tree["tapir/~/occlusion_out"]["b"]))
    assert torch.equal(state["resnet_torch.block_groups.0.blocks.1.bn_1.bias"],
                       torch.tensor(tree["tapir/~/resnet/~/block_group_0/~/block_1/~/instancenorm_1"]["offset"]))


def test_bootstapir_jax_extra_convs_names_cover_the_torch_layout():
    """The JAX BootsTAPIR's extra convolutions (Haiku default names in creation order: per layer i
    ``layer_norm[_i]``, ``conv2_d[_2i]``, ``conv2_d_{2i+1}``) map one to one onto the torch keys."""
    layout = json.loads((BOOTS_REF / "layout_bootstapir.json").read_text())["tensors"]
    torch_modules = {key.rsplit(".", 1)[0] for key, _, _ in layout if key.startswith("extra_convs.")}
    haiku_modules = ["tapir/~/extra_convs/" + ("layer_norm" if i == 0 else f"layer_norm_{i}") for i in range(5)]
    haiku_modules += ["tapir/~/extra_convs/" + ("conv2_d" if i == 0 else f"conv2_d_{i}") for i in range(10)]
    mapped = [_haiku_module_to_torch(name) for name in haiku_modules]
    assert sorted(mapped) == sorted(torch_modules)
    assert _haiku_module_to_torch("tapir/~/extra_convs/conv2_d_3") == "extra_convs.blocks.1.conv_1"


# ------------------------------------------------------------------------------------ BootsTAPIR
def test_bootstapir_default_is_the_trained_temperature(boots_runs):
    model = boots_runs["tracker"].model
    assert model.softmax_temperature == 10.0 and boots_runs["tracker"].visibility_threshold == 0.5
    assert model.pyramid_level == 1 and model.extra_convs is not None


def test_bootstapir_model_forward(boots_runs, boots_vectors):
    case = boots_vectors["model_forward"]
    run = boots_runs[20]
    _check_model_input(run, case)
    _check_model_outputs(run["model_outputs"], case["outputs"], "BootsTAPIR (T=20)")
    _check_internals(run["internals"], case["internal"], "BootsTAPIR")
    _check_model_outputs(boots_runs[10]["model_outputs"], boots_vectors["softmax_temperature_10"]["model_forward"]["outputs"],
                         "BootsTAPIR (T=10)")


@pytest.mark.parametrize("temperature", [20, 10])
@pytest.mark.parametrize("threshold", ["0.5", "0.1"])
def test_bootstapir_sampt_style_wrapper(boots_runs, boots_vectors, temperature, threshold):
    case = boots_vectors["sampt_style_wrapper"] if temperature == 20 else \
        boots_vectors["softmax_temperature_10"]["sampt_style_wrapper"]
    run = boots_runs[temperature]
    _check_wrapper(run, case[f"thr_{threshold}"], float(threshold), f"BootsTAPIR T={temperature} thr {threshold}")
    if threshold == "0.5":  # the tracker's own threshold
        _assert_bool_equal(run["visibilities"], case["thr_0.5"]["visibilities"], "BootsTAPIR tracker visibilities")


# ------------------------------------------------------------------------------------ interface
def test_batches_chunks_and_degenerate_inputs(tapir_files, clip):
    """Each video and each query is tracked independently: a batch of two, queries in chunks of
    5 (the last one ragged), equal one-by-one runs; no queries and one-frame videos work."""
    tracker = TapirTracker(checkpoint_path=str(tapir_files["npy"]))
    chunked = TapirTracker(checkpoint_path=str(tapir_files["npy"]), query_chunk_size=5)
    video = clip["video"][:, :2]
    queries = clip["queries"][:, :8].clone()
    queries[0, 4:, 0] = 1.0
    other = video.flip(-1)
    traj, vis = chunked(torch.cat([video, other]), torch.cat([queries, queries]))
    assert traj.shape == (2, 2, 8, 2) and vis.shape == (2, 2, 8) and vis.dtype == torch.bool
    for b, single_video in enumerate((video, other)):
        details: dict = {}
        single_traj, _ = tracker(single_video, queries, details=details)
        # Float rounding only (other batch sizes take other convolution paths).
        _assert_close(traj[b : b + 1], single_traj, PX_TOL, f"batch element {b}")
        probs = details["visibility_probs"]
        assert torch.equal(vis[b : b + 1], probs > 0.1) or (probs - 0.1).abs().min() < PROB_TOL
    assert (traj[0] - traj[1]).abs().max() > 1.0  # the two videos are tracked separately

    empty_traj, empty_vis = tracker(video, torch.zeros(1, 0, 3))
    assert empty_traj.shape == (1, 2, 0, 2) and empty_vis.shape == (1, 2, 0)
    one_traj, one_vis = tracker(video[:, :1], queries[:, :2].clone().fill_(0.0) + torch.tensor([0.0, 100.0, 50.0]))
    assert one_traj.shape == (1, 1, 2, 2) and torch.isfinite(one_traj).all() and one_vis.shape == (1, 1, 2)


def test_registry_configs_and_bad_arguments(tapir_files, boots_file):
    assert tracker_classes()["TapirTracker"] is TapirTracker
    for name, weights in (("tapir", tapir_files["npy"]), ("bootstapir", boots_file)):
        settings = yaml.safe_load((REPO / "configs" / "tracker" / f"{name}.yaml").read_text())["model"]["method"]["init_args"]["tracker"]
        assert settings["class_path"] == "sampt.trackers.tapir.TapirTracker"
        tracker = TapirTracker(**{**settings["init_args"], "checkpoint_path": str(weights)})
        assert tracker.variant == name
        expected = TapirTracker(variant=name)
        assert tracker.visibility_threshold == expected.visibility_threshold
        assert tracker.model.softmax_temperature == expected.model.softmax_temperature
        assert tracker.checkpoint == expected.checkpoint
        tracker.prepare()  # the config's variant fits its weights
    with pytest.raises(ValueError, match="bootstapir"):
        TapirTracker(variant="tapnext")
    with pytest.raises(ValueError, match="tapir_checkpoint_panning"):
        TapirTracker(variant="tapir", checkpoint="bootstapir_checkpoint_v2")
    with pytest.raises(ValueError, match="query_chunk_size"):
        TapirTracker(query_chunk_size=0)


def test_checkpoint_errors_name_the_file(tapir_files, boots_file):
    root, tree = tapir_files["root"], tapir_files["tree"]

    def write_npy(name, params):
        path = root / name
        np.save(path, {"params": params, "state": {}}, allow_pickle=True)
        return path

    renamed = {("tapir/~/renamed_head" if k == "tapir/~/occlusion_out" else k): v for k, v in tree.items()}
    missing = {k: v for k, v in tree.items() if k != "tapir/~/pips_mlp_mixer/block_5/mlp2_up"}
    misshaped = dict(tree, **{"tapir/~/cost_volume_regression_1": {"w": np.zeros((3, 3, 1, 8), np.float32),
                                                                   "b": np.zeros(8, np.float32)}})
    for name, params, expected in (("renamed.npy", renamed, "tapir/~/renamed_head"),
                                   ("missing.npy", missing, "blocks.5.conv_channels_mixer.mlp2_up"),
                                   ("misshaped.npy", misshaped, "hid1.weight")):
        path = write_npy(name, params)
        with pytest.raises(CheckpointError) as err:
            TapirTracker(checkpoint_path=str(path)).prepare()
        assert str(path) in str(err.value) and expected in str(err.value)

    # BootsTAPIR weights do not fit TAPIR (extra convs, wider mixer input).
    with pytest.raises(CheckpointError, match="extra_convs"):
        TapirTracker(variant="tapir", checkpoint_path=str(boots_file)).prepare()

    not_a_tree = root / "array.npy"
    np.save(not_a_tree, np.zeros(3))
    garbage = root / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY this is not a checkpoint")
    for path in (not_a_tree, garbage, root / "does_not_exist.npy"):
        with pytest.raises(CheckpointError) as err:
            read_tapir_checkpoint(path, "TAPIR")
        assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------ end to end
def test_sampt_cli_run_with_tapir(davis2017_sample, tapir_files, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run_sam_pt_with_tracker(davis2017_sample, tmp_path / "run", "tapir.yaml", "TapirTracker",
                            "--model.init_args.method.init_args.tracker.init_args.checkpoint_path",
                            str(tapir_files["npy"]))
