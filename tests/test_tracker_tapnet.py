"""TapNet against the original (SAM-PT's JAX model and wrapper) on ../shared/vectors/tapnet, the
official Haiku checkpoint format, and a SAM-PT run with it."""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, VECTORS, run_sam_pt_with_tracker
from sampt.checkpoints import get_checkpoint
from sampt.errors import CheckpointError
from sampt.trackers import tracker_classes
from sampt.trackers.tapnet import TapNetTracker, read_haiku_checkpoint, temporal_shift

FOLDER = VECTORS / "tapnet"
LAYOUT = FOLDER / "layout_tapnet.json"
WEIGHTS_SHA256 = "6ac9211adee49d26f649beffdd0731a9d0eeb4435f5a4eea7265f33336a66662"
# The README's recommended tolerances.
TRACK_TOL, LOGIT_TOL, PROB_TOL, FEATURE_TOL = 1e-3, 2e-4, 5e-5, 1e-5


def _init_weights_module():
    spec = importlib.util.spec_from_file_location("tapnet_init_weights", VECTORS / "trackers" / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _haiku_tree(weights, state_keys):
    """The official checkpoint layout: {"params": {module: {name: array}}, "state": {...}}."""
    init_weights = _init_weights_module()
    params = init_weights.to_haiku_tree({k: v for k, v in weights.items() if k not in state_keys})
    state = init_weights.to_haiku_tree({k: v for k, v in weights.items() if k in state_keys})
    return {"params": {m: dict(p) for m, p in params.items()}, "state": {m: dict(p) for m, p in state.items()}}


def _save_npy(path: Path, tree) -> Path:
    np.save(path, np.array(tree, dtype=object), allow_pickle=True)
    return path


@pytest.fixture(scope="module")
def layout():
    return json.loads(LAYOUT.read_text())


@pytest.fixture(scope="module")
def weights(layout):
    return _init_weights_module().build_weights(layout)


@pytest.fixture(scope="module")
def tree(weights, layout):
    return _haiku_tree(weights, set(layout["state_keys"]))


@pytest.fixture(scope="module")
def checkpoint_file(tree, tmp_path_factory) -> Path:
    return _save_npy(tmp_path_factory.mktemp("tapnet") / "checkpoint_wo_optstate.npy", tree)


@pytest.fixture(scope="module")
def tracker(checkpoint_file):
    tracker = TapNetTracker(checkpoint_path=str(checkpoint_file))
    tracker.prepare()
    return tracker


@pytest.fixture(scope="module")
def vectors():
    return torch.load(FOLDER / "vectors_tapnet.pt", weights_only=True)


@pytest.fixture(scope="module")
def clip():
    return torch.load(VECTORS / "trackers" / "video.pt", weights_only=True)


@pytest.fixture(scope="module")
def wrapper_result(tracker, clip):
    return tracker.track(clip["video"], clip["queries"])


def _max_abs(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------------------------------
# weights and the official checkpoint format
# ---------------------------------------------------------------------------------------------
def test_random_weights_match_the_readme_and_load_through_checkpoint_path(weights, tracker, checkpoint_file):
    assert _init_weights_module().sha256_of(weights) == WEIGHTS_SHA256
    assert tracker.weights_path == str(checkpoint_file)
    model = tracker.model
    stem = weights["tap_net/~/tsm_resnet_video/tsm_resnet_stem/w"]  # (kh, kw, in, out)
    assert torch.equal(model.tsm_resnet_video.stem.weight, stem.permute(3, 2, 0, 1))
    block = "tap_net/~/tsm_resnet_video/tsm_resnet_unit_1/block_0/batch_norm_1"
    assert torch.equal(model.tsm_resnet_video.units[1].blocks[0].batch_norm_1.var,
                       weights[f"{block}/~/var_ema/average"].reshape(-1))
    assert torch.equal(model.cost_volume_regression_1.weight,
                       weights["tap_net/~/cost_volume_regression_1/w"][0].permute(3, 2, 0, 1))
    assert torch.equal(model.occlusion_out.weight, weights["tap_net/~/occlusion_out/w"].t())


def _drop(tree, part, module, name):
    del tree[part][module][name]


def _rename(tree, part, module, name):
    tree[part][module][name + "_renamed"] = tree[part][module].pop(name)


def _reshape(tree, part, module, name):
    tree[part][module][name] = tree[part][module][name][..., :-1]


@pytest.mark.parametrize("change", [_drop, _rename, _reshape], ids=["missing", "renamed", "mis-shaped"])
@pytest.mark.parametrize("entry", [
    ("params", "tap_net/~/tsm_resnet_video/tsm_resnet_unit_2/block_1/conv_2", "w"),
    ("state", "tap_net/~/tsm_resnet_video/tsm_resnet_unit_0/block_0/batch_norm/~/mean_ema", "average"),
], ids=["param", "state"])
def test_a_checkpoint_that_does_not_fit_raises_naming_the_file(tree, tmp_path, change, entry):
    broken = {part: {m: dict(p) for m, p in modules.items()} for part, modules in tree.items()}
    change(broken, *entry)
    path = _save_npy(tmp_path / "broken.npy", broken)
    with pytest.raises(CheckpointError, match="broken.npy") as error:
        TapNetTracker(checkpoint_path=str(path)).prepare()
    assert "does not fit" in str(error.value)


def test_unreadable_and_missing_files_raise_checkpoint_errors(checkpoint_file, tmp_path):
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(checkpoint_file.read_bytes()[: 1 << 16])
    with pytest.raises(CheckpointError, match="truncated.npy"):
        TapNetTracker(checkpoint_path=str(truncated)).prepare()
    plain = _save_npy(tmp_path / "plain.npy", np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match="plain.npy"):
        read_haiku_checkpoint(plain, "TapNet")
    with pytest.raises(CheckpointError, match="absent.npy"):
        TapNetTracker(checkpoint_path=str(tmp_path / "absent.npy")).prepare()


class _AdamState:
    """Pickled under a module that is gone when the file is read, like optax's in checkpoint.npy."""

    def __init__(self, mu):
        self.mu = mu


def test_deepmind_checkpoint_with_unimportable_optimizer_state_loads(tree, tmp_path, tracker):
    # DeepMind's checkpoint.npy also holds opt_state objects of its training code's classes.
    fake = types.ModuleType("fake_optax_transform")
    fake._AdamState = _AdamState
    _AdamState.__module__, _AdamState.__qualname__ = "fake_optax_transform", "_AdamState"
    sys.modules["fake_optax_transform"] = fake
    try:
        full = dict(tree, opt_state=(_AdamState(np.ones(3)),), global_step=np.int64(100000))
        path = _save_npy(tmp_path / "tapnet_checkpoint.npy", full)
    finally:
        del sys.modules["fake_optax_transform"]
    other = TapNetTracker(checkpoint_path=str(path))
    other.prepare()
    for (name, a), b in zip(other.model.state_dict().items(), tracker.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_file_written_by_numpy_1_reads_cleanly(tree, tmp_path):
    # numpy 1.x (which wrote the official files) pickles with protocol 3 and names numpy.core.
    payload = pickle.dumps(np.array(tree, dtype=object), protocol=3).replace(b"cnumpy._core.", b"cnumpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct" in payload
    path = tmp_path / "numpy1.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": ()})
        handle.write(payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = read_haiku_checkpoint(path, "TapNet")
    key = "tap_net/~/cost_volume_occlusion_2/w"
    assert torch.equal(flat[key], torch.from_numpy(tree["params"][key.rsplit("/", 1)[0]]["w"]))


def test_reading_a_checkpoint_runs_no_code_it_names(tree, tmp_path):
    target = tmp_path / "created_by_the_file"

    class Payload:
        def __reduce__(self):
            import os

            return os.mkdir, (str(target),)

    path = _save_npy(tmp_path / "payload.npy", dict(tree, opt_state=Payload()))
    assert b"mkdir" in path.read_bytes()
    assert len(read_haiku_checkpoint(path, "TapNet")) == len(json.loads(LAYOUT.read_text())["tensors"])
    assert not target.exists()


def test_registry_entries_and_registration():
    assert tracker_classes()["TapNetTracker"] is TapNetTracker
    sampt_pt = get_checkpoint("tapnet")
    assert sampt_pt.filename == "checkpoint_wo_optstate.npy" and sampt_pt.component == "tracker"
    assert get_checkpoint("tapnet_deepmind").url == "https://storage.googleapis.com/dm-tapnet/checkpoint.npy"


# ---------------------------------------------------------------------------------------------
# the vectors
# ---------------------------------------------------------------------------------------------
def test_preprocessing_matches_the_wrapper(tracker, clip, vectors):
    inputs = vectors["model_forward"]["inputs"]
    frames, model_queries, _ = tracker.preprocess(clip["video"], clip["queries"])
    channels_last = frames.permute(0, 1, 3, 4, 2)
    assert channels_last.double().sum().item() == pytest.approx(inputs["video_sum_float64"].item(), abs=1e-3)
    assert _max_abs(channels_last[:, :, ::16, ::16], inputs["video_sample_every16"]) <= 1e-6
    assert torch.equal(model_queries, inputs["query_points_tyx"])


def test_bare_model_matches_the_original(tracker, clip, vectors):
    inputs, expected = vectors["model_forward"]["inputs"], vectors["model_forward"]["outputs"]
    frames, _, _ = tracker.preprocess(clip["video"], clip["queries"])
    with torch.no_grad():
        out = tracker.model(frames, inputs["query_points_tyx"], query_chunk_size=inputs["query_chunk_size"])
    grid = out["feature_grid"]
    assert list(grid.shape) == list(expected["feature_grid_shape"])
    assert _max_abs(grid[0, 0, :, :, :8], expected["feature_grid_frame0_ch0to7"]) <= FEATURE_TOL
    assert _max_abs(grid[0].mean(dim=(1, 2)), expected["feature_grid_chan_mean"]) <= FEATURE_TOL
    assert _max_abs(out["query_feats"], expected["query_feats"]) <= FEATURE_TOL
    assert _max_abs(out["tracks"], expected["tracks"]) <= TRACK_TOL
    assert _max_abs(out["occlusion"], expected["occlusion"]) <= LOGIT_TOL


def test_wrapper_matches_sampt(wrapper_result, vectors, tracker, clip):
    expected = vectors["sampt_wrapper"]["outputs"]
    assert vectors["sampt_wrapper"]["inputs"]["visibility_threshold"] == tracker.visibility_threshold
    assert torch.equal(vectors["sampt_wrapper"]["inputs"]["queries"], clip["queries"])
    assert wrapper_result["trajectories"].dtype == torch.float32
    assert _max_abs(wrapper_result["trajectories"], expected["trajectories"]) <= TRACK_TOL
    assert _max_abs(wrapper_result["visibility_probs"], expected["visibility_probs"]) <= PROB_TOL
    assert torch.equal(wrapper_result["visibilities"], expected["visibilities"])
    # forward() is the same computation behind the PointTracker interface.
    trajectories, visibilities = tracker(clip["video"], clip["queries"])
    assert torch.equal(trajectories, wrapper_result["trajectories"])
    assert torch.equal(visibilities, wrapper_result["visibilities"])


def test_query_frame_holds_the_query(wrapper_result, clip):
    queries = clip["queries"][0]
    frames = queries[:, 0].long()
    at_query = wrapper_result["trajectories"][0, frames, torch.arange(len(queries))]
    # Exactly the query after the wrapper's float32 scale and unscale, (x * 256/W) / (256/W).
    scale_xy = (torch.tensor([256, 256]) / torch.tensor(clip["video"].shape[-2:])).flip(0)
    assert torch.equal(at_query, queries[:, 1:] * scale_xy / scale_xy)
    assert _max_abs(at_query, queries[:, 1:]) <= 3.1e-5  # half a float32 ulp at 256..512 px


def test_temporal_shift_reorders_and_shifts_channels():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2 * 3, 8, 1, 1)  # B=2, T=3, C=8
    out = temporal_shift(x, num_frames=3, fraction=0.125).reshape(2, 3, 8)
    clip = x.reshape(2, 3, 8)
    assert torch.equal(out[:, :2, 0], clip[:, 1:, 7]) and (out[:, 2, 0] == 0).all()  # from frame t+1
    assert torch.equal(out[:, :, 1:7], clip[:, :, 1:7])
    assert torch.equal(out[:, 1:, 7], clip[:, :2, 0]) and (out[:, 0, 7] == 0).all()  # from frame t-1


def test_other_input_sizes_and_no_queries(checkpoint_file, clip):
    small = TapNetTracker(checkpoint_path=str(checkpoint_file), input_size=(64, 64))
    video = clip["video"][:, :2, :, :64, :96]
    trajectories, visibilities = small(video, torch.zeros(1, 0, 3))
    assert trajectories.shape == (1, 2, 0, 2) and visibilities.shape == (1, 2, 0)
    queries = torch.tensor([[[1.0, 40.5, 20.25]]])
    trajectories, visibilities = small(video, queries)
    assert trajectories.shape == (1, 2, 1, 2) and visibilities.dtype == torch.bool
    assert torch.isfinite(trajectories).all()
    assert _max_abs(trajectories[0, 1, 0], queries[0, 0, 1:]) <= 1e-5
    with pytest.raises(ValueError, match="uint8"):
        small(video.float(), queries)
    with pytest.raises(ValueError, match="input_size"):
        TapNetTracker(checkpoint_path=str(checkpoint_file), input_size=(256,))


# ---------------------------------------------------------------------------------------------
# SAM-PT end to end
# ---------------------------------------------------------------------------------------------
def test_sampt_runs_with_tapnet_from_its_config(davis2017_sample, checkpoint_file, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # config files use paths relative to the repository root
    run_sam_pt_with_tracker(davis2017_sample, tmp_path / "run", "tapnet.yaml", "TapNetTracker",
                            "--model.init_args.method.init_args.tracker.init_args.checkpoint_path",
                            str(checkpoint_file))
