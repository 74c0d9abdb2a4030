"""PIPs against the original code's outputs (shared/vectors/pips: SAM-PT's PipsPointTracker).

The weights are built by shared/vectors/trackers/init_weights.py, written in the official file
format (``reference_model/model-<step>.pth`` = ``{"model_state_dict", "optimizer_state_dict"}``)
and loaded through the tracker's own ``checkpoint_path`` + ``prepare()``. Tolerances are the
README's: 1e-3 px for tracks, 1e-4 for visibility logits and features, booleans and the
sequence of model calls exact.
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import tarfile

import pytest
import torch
import yaml

from conftest import REPO, VECTORS, run_sam_pt_with_tracker
from sampt.checkpoints import CHECKPOINTS
from sampt.errors import CheckpointError
from sampt.trackers.base import build_tracker
from sampt.trackers.pips import (
    Pips,
    PipsTracker,
    link_next_frames,
    link_thresholds,
    read_pips_checkpoint,
)

REF = VECTORS / "pips"
PX_TOL = 1e-3
LOGIT_TOL = 1e-4
FEAT_TOL = 1e-4


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.double() - expected.double()).abs().max().item()


def _readme_sha256() -> str:
    return re.search(r"`weights_sha256` = `([0-9a-f]{64})`", (REF / "README.md").read_text()).group(1)


def _init_weights_module():
    spec = importlib.util.spec_from_file_location("tracker_init_weights", VECTORS / "trackers" / "init_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _optimizer_state() -> dict:
    # A real (small) Adam state: the official files carry one, and it must read weights-only.
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=1e-4)
    param.sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _save_official(path, state_dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": dict(state_dict), "optimizer_state_dict": _optimizer_state()}, path)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # PIPs is many small matmuls; on a shared 2-core machine two OpenMP threads mostly spin.
    # The README measured 1 vs 2 threads at 1.5e-5 px, far inside the tolerances.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vectors():
    return torch.load(REF / "vectors_pips.pt", weights_only=True)


@pytest.fixture(scope="module")
def clip():
    return torch.load(VECTORS / "trackers" / "video.pt", weights_only=True)


@pytest.fixture(scope="module")
def weights():
    init = _init_weights_module()
    state = init.build_weights(str(REF / "layout_pips.json"))
    # The comparisons below are only meaningful with exactly the reference weights.
    assert init.sha256_of(state) == _readme_sha256()
    return state


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory, weights):
    """The official layout: ``reference_model/model-<9-digit step>.pth``, plus an older step."""
    root = tmp_path_factory.mktemp("pips_ckpts") / "reference_model"
    _save_official(root / "model-000000100.pth", weights)
    # The loader takes the largest step; a broken smaller one proves it is not read.
    (root / "model-000000007.pth").write_bytes(b"not a checkpoint")
    return root


@pytest.fixture(scope="module")
def tracker(official_dir):
    tracker = PipsTracker(checkpoint_path=str(official_dir))
    tracker.prepare()
    return tracker


@pytest.fixture(scope="module")
def wrapper_run(tracker, clip):
    details = {}
    trajectories, visibilities = tracker(clip["video"], clip["queries"], details=details)
    return trajectories, visibilities, details


def _window_of(call: dict, video: torch.Tensor) -> list[int]:
    """The one (padded) 8-frame window of ``video (T, 3, H, W)`` whose uint8 sum the call recorded."""
    num_frames = video.shape[0]
    sums = video.double().flatten(1).sum(1)
    matches = []
    for start in range(num_frames - 1):
        window = list(range(start, min(start + 8, num_frames)))
        window += [num_frames - 1] * (8 - len(window))
        if sums[window].sum().item() == call["rgbs_sum_float64"]:
            matches.append(window)
    assert len(matches) == 1, matches
    return matches[0]


# ------------------------------------------------------------------------------------ weights
def test_state_dict_layout_is_the_official_one(tracker, official_dir):
    layout = json.loads((REF / "layout_pips.json").read_text())["tensors"]
    state = tracker.model.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(k, shape) for k, shape, _ in layout]
    # The directory form resolves to the largest step, as SAM-PT's loader does.
    assert tracker.weights_path == str(official_dir / "model-000000100.pth")


def test_every_official_file_form_loads_the_same(official_dir, weights, tmp_path):
    pth = official_dir / "model-000000100.pth"
    archive = tmp_path / "reference_model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(pth, arcname="reference_model/model-000000100.pth")
    bare = tmp_path / "bare.pth"
    torch.save(dict(weights), bare)
    for source in (pth, archive, bare):
        state = read_pips_checkpoint(source, "PIPs")
        assert list(state) == list(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
    loaded = PipsTracker(checkpoint_path=str(archive))
    loaded.prepare()
    assert torch.equal(loaded.model.vis_predictor[0].bias, weights["vis_predictor.0.bias"])


def test_missing_renamed_and_misshaped_keys_raise_checkpoint_error(weights, tmp_path):
    def broken(name, edit):
        state = dict(weights)
        edit(state)
        path = tmp_path / name / "model-000000001.pth"
        _save_official(path, state)
        return path

    missing = broken("missing", lambda s: s.pop("norm.weight"))
    renamed = broken("renamed", lambda s: s.__setitem__("vis_predictor.1.bias", s.pop("vis_predictor.0.bias")))
    misshaped = broken("misshaped", lambda s: s.__setitem__("norm.bias", torch.zeros(64)))
    expectations = {missing: "norm.weight", renamed: "vis_predictor", misshaped: "norm.bias"}
    for path, key in expectations.items():
        with pytest.raises(CheckpointError) as err:
            PipsTracker(checkpoint_path=str(path)).prepare()
        assert str(path) in str(err.value) and key in str(err.value)


def test_unreadable_files_and_empty_directories_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a torch file")
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    empty_archive = tmp_path / "empty.tar.gz"
    with tarfile.open(empty_archive, "w:gz") as tar:
        info = tarfile.TarInfo("reference_model/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    for path in (garbage, not_a_state_dict, empty_archive, tmp_path / "does_not_exist.pth"):
        with pytest.raises(CheckpointError) as err:
            read_pips_checkpoint(path, "PIPs")
        assert str(path) in str(err.value)
    empty_dir = tmp_path / "reference_model"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match="model-<step>.pth"):
        PipsTracker(checkpoint_path=str(empty_dir)).prepare()


# ------------------------------------------------------------------------------------ bare model
def test_every_model_call_matches_the_original(tracker, clip, vectors):
    """Each of the 13 recorded calls, rerun on the bare network from its own inputs."""
    model = tracker.model
    video = clip["video"][0]
    calls = vectors["sampt_wrapper"]["model_calls"]
    maps = model.encode(video)
    worst = {"coords": 0.0, "logits": 0.0, "ffeat": 0.0}
    with torch.no_grad():
        for index, call in enumerate(calls):
            backward = index >= 7  # calls 7-12 ran on the reversed video
            window = _window_of(call, video.flip(0) if backward else video)
            frames = [video.shape[0] - 1 - f for f in window] if backward else window
            feat_init = call["ffeat"][0] if call["feat_init_given"] else None
            coords, logits, ffeat = model.track(maps[frames], call["xys"][0], feat_init, iters=call["iters"])
            worst["coords"] = max(worst["coords"], _max_err(coords, call["coord_predictions"][:, 0]))
            worst["logits"] = max(worst["logits"], _max_err(logits, call["vis_e_logits"][0]))
            worst["ffeat"] = max(worst["ffeat"], _max_err(ffeat, call["ffeat"][0]))
        # The batched entry point with pixels in (as the original is called), on call 0.
        coords, logits, ffeat = model(calls[0]["xys"], clip["video"][:, :8], iters=6)
    assert worst["coords"] <= PX_TOL and worst["logits"] <= LOGIT_TOL and worst["ffeat"] <= FEAT_TOL, worst
    assert _max_err(coords, calls[0]["coord_predictions"]) <= PX_TOL
    assert _max_err(logits, calls[0]["vis_e_logits"]) <= LOGIT_TOL
    assert _max_err(ffeat, calls[0]["ffeat"]) <= FEAT_TOL


# ------------------------------------------------------------------------------------ wrapper
def test_wrapper_matches_the_original(wrapper_run, clip, vectors):
    trajectories, visibilities, _ = wrapper_run
    expected = vectors["sampt_wrapper"]
    assert trajectories.dtype == torch.float32 and visibilities.dtype == torch.bool
    assert _max_err(trajectories, expected["trajectories"]) <= PX_TOL
    assert torch.equal(visibilities, expected["visibilities"])
    queries = clip["queries"][0]
    frames = queries[:, 0].long()
    points = torch.arange(queries.shape[0])
    assert torch.equal(trajectories[0, frames, points], queries[:, 1:])
    assert visibilities[0, frames, points].all()


def test_wrapper_makes_the_original_sequence_of_model_calls(wrapper_run, clip, vectors):
    """Same number and kind of calls, same points and windows, same outputs, in the same order.

    The original's feature-initialising calls (feat_init_given False) run the whole network and
    discard the tracks; here they only sample the feature, recorded in the same place.
    """
    _, _, details = wrapper_run
    mine = details["forward_calls"] + details["backward_calls"]
    expected = vectors["sampt_wrapper"]["model_calls"]
    assert len(details["forward_calls"]) == 7 and len(mine) == len(expected) == 13
    video = clip["video"][0]
    for index, (call, ref) in enumerate(zip(mine, expected)):
        source = video.flip(0) if index >= 7 else video
        assert call["feat_init_given"] == ref["feat_init_given"], index
        assert source[call["window"]].double().sum().item() == ref["rgbs_sum_float64"], index
        assert _max_err(call["xys"], ref["xys"][0]) <= PX_TOL, index
        assert _max_err(call["ffeat"], ref["ffeat"][0]) <= FEAT_TOL, index
        if call["feat_init_given"]:
            assert _max_err(call["coord_predictions"], ref["coord_predictions"][:, 0]) <= PX_TOL, index
            assert _max_err(call["vis_e_logits"], ref["vis_e_logits"][0]) <= LOGIT_TOL, index
    # The README's window starts (in each pass's own frame order).
    assert [c["window"][0] for c in mine] == [0, 0, 3, 3, 4, 5, 6, 0, 0, 4, 4, 5, 6]


def _original_linking(candidates: list[float], initial: float = 0.9, step: float = 0.02) -> int:
    """The original's scan, literally, for one point: float32 thresholds, ``<=`` fails."""
    threshold = torch.tensor(initial, dtype=torch.float32)
    values = torch.tensor(candidates, dtype=torch.float32)
    index = len(candidates) - 1
    while values[index] <= threshold:
        index -= 1
        if index < 0:
            threshold = threshold - step
            index = len(candidates) - 1
    return index


def test_linking_matches_the_original_scan():
    generator = torch.Generator().manual_seed(0)
    thresholds = link_thresholds(0.9, 0.02)
    cases = torch.rand(7, 300, generator=generator) ** 3  # many windows with nothing above 0.9
    # Exact threshold values must fail (<=), and a frame just above must pass.
    cases[:, 0] = thresholds[0]
    cases[:, 1] = thresholds[5]
    cases[3, 1] = torch.nextafter(thresholds[5], torch.tensor(1.0))
    cases[:, 2] = 0.0
    for length in (1, 3, 7):
        chosen = link_next_frames(cases[:length], thresholds)
        expected = [_original_linking(cases[:length, i].tolist()) for i in range(cases.shape[1])]
        assert chosen.tolist() == expected
    assert thresholds[-1] < 0 <= thresholds[-2]


# ------------------------------------------------------------------------------------ options
def test_batches_feature_reuse_and_small_clips(tracker, clip):
    video = clip["video"][:, :4, :, 40:104, 100:196]  # 4 frames, 64 x 96
    queries = torch.tensor([[[0.0, 10.3, 20.7], [2.0, 50.5, 30.1], [3.0, 80.0, 60.0]]])
    single, single_vis = tracker(video, queries)
    other = queries.clone()
    other[0, :, 0] = torch.tensor([1.0, 1.0, 0.0])
    batch, batch_vis = tracker(torch.cat([video, video.flip(1)]), torch.cat([queries, other]))
    assert batch.shape == (2, 4, 3, 2) and batch_vis.shape == (2, 4, 3)
    assert torch.equal(batch[:1], single) and torch.equal(batch_vis[:1], single_vis)
    assert torch.equal(batch[1, other[0, :, 0].long(), torch.arange(3)], other[0, :, 1:])
    per_window = PipsTracker(checkpoint_path=tracker.weights_path, reuse_features=False)
    traj, vis = per_window(video, queries)
    assert _max_err(traj, single) <= PX_TOL and torch.equal(vis, single_vis)
    # Feature reuse encodes each frame once per direction; the original's way, 8 per window.
    encoded = {}
    for name, which in (("reuse", tracker), ("per_window", per_window)):
        sizes = encoded[name] = []
        original_encode = which.model.encode
        which.model.encode = lambda rgbs: sizes.append(rgbs.shape[0]) or original_encode(rgbs)
        try:
            which(video, queries)
        finally:
            del which.model.encode
    assert encoded["reuse"] == [4, 4]  # the first window of each pass holds all 4 frames
    assert len(encoded["per_window"]) > 2 and set(encoded["per_window"]) == {8}


def test_bad_inputs_and_options(tracker, clip):
    with pytest.raises(ValueError, match="at least 64x64"):
        tracker(clip["video"][:, :3, :, :60, :128], torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="uint8"):
        tracker(clip["video"].float(), clip["queries"])
    with pytest.raises(ValueError, match="query frame"):
        tracker(clip["video"], torch.tensor([[[8.0, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="iters"):
        PipsTracker(iters=0)
    with pytest.raises(ValueError, match="window_len"):
        Pips(window_len=1)
    with pytest.raises(ValueError, match="windows must have 8 frames"):
        tracker.model.track(torch.zeros(4, 128, 16, 16), torch.zeros(1, 2))


def test_registry_config_and_checkpoint_entry():
    config = yaml.safe_load((REPO / "configs/tracker/pips.yaml").read_text())["model"]["method"]["init_args"]["tracker"]
    assert config["class_path"] == "sampt.trackers.pips.PipsTracker"
    tracker = build_tracker("PipsTracker", **config["init_args"])
    assert isinstance(tracker, PipsTracker) and tracker.weights_path is None  # nothing loaded yet
    assert tracker.link_threshold == 0.9 and tracker.link_threshold_step == 0.02
    assert tracker.model.window_len == 8 and tracker.model.stride == 4 and tracker.iters == 6
    entry = CHECKPOINTS[config["init_args"]["checkpoint"]]
    assert entry.component == "tracker" and "glk6jmoa9yeervl/reference_model.tar.gz" in entry.url


# ------------------------------------------------------------------------------------ end to end
def test_sampt_cli_run_with_pips(davis2017_sample, official_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run_sam_pt_with_tracker(davis2017_sample, tmp_path / "run", "pips.yaml", "PipsTracker",
                            "--model.init_args.method.init_args.tracker.init_args.checkpoint_path",
                            str(official_dir / "model-000000100.pth"))
