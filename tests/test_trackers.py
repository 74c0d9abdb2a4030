"""Tests of the static, replay, Lucas-Kanade and RAFT point trackers.

Synthetic clips: a smooth random texture (the "object") pasted onto a different static texture,
moving with a known affine motion per frame, so that the true position of every point on every
frame is known exactly. RAFT has no pretrained weights here, so its chaining logic is tested with
the exact flow of the synthetic motion plugged in, and the real network (random initialisation) is
run end to end for shapes, finiteness and checkpoint loading.
"""
from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sampt.errors import CheckpointError
from sampt.trackers.base import PointTracker, build_tracker, tracker_classes
from sampt.trackers.lk import LucasKanadeTracker, points_inside_frame
from sampt.trackers.raft import RaftTracker, _flow_size
from sampt.trackers.trivial import ReplayTracker, StaticTracker

DAVIS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-sample"
if not DAVIS_ROOT.is_dir():
    DAVIS_ROOT = Path("/work/shared/data/davis-sample")


@pytest.fixture(autouse=True)
def _few_threads():
    """The CI machine is shared: keep torch and OpenCV on one thread each."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


# ---------------------------------------------------------------- synthetic clips with known motion


def smooth_texture(height: int, width: int, seed: int, sigma: float) -> np.ndarray:
    """``(height, width) float32`` random texture in [0, 255], smoothed so that LK can follow it."""
    noise = np.random.default_rng(seed).uniform(0, 255, (height, width)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (texture - texture.min()) / (texture.max() - texture.min()) * 255


def object_motion(num_frames: int, start: tuple[float, float], velocity: tuple[float, float],
                  degrees_per_frame: float, object_size: int) -> list[np.ndarray]:
    """Per frame, the ``(2, 3)`` affine map from object-texture pixels to frame pixels: the texture
    centre moves from ``start`` by ``velocity`` per frame while the texture rotates about it."""
    centre = (object_size - 1) / 2
    maps = []
    for t in range(num_frames):
        angle = math.radians(degrees_per_frame * t)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        position = np.asarray(start, dtype=np.float64) + t * np.asarray(velocity, dtype=np.float64)
        maps.append(np.concatenate([rotation, (position - rotation @ [centre, centre])[:, None]], axis=1))
    return maps


def render_clip(maps: list[np.ndarray], height: int, width: int, object_size: int, seed: int = 0) -> torch.Tensor:
    """``(1, T, 3, H, W) uint8`` clip of the textured square object moving by ``maps``."""
    texture = smooth_texture(object_size, object_size, seed, sigma=2.0)
    background = smooth_texture(height, width, seed + 1, sigma=3.0) * 0.5 + 64
    frames = []
    for affine in maps:
        warped = cv2.warpAffine(texture, affine, (width, height), flags=cv2.INTER_LINEAR)
        coverage = cv2.warpAffine(np.ones_like(texture), affine, (width, height), flags=cv2.INTER_LINEAR)
        image = background * (1 - coverage) + warped * coverage
        frames.append(np.repeat(np.clip(image, 0, 255).round().astype(np.uint8)[None], 3, axis=0))
    return torch.from_numpy(np.stack(frames))[None]


def true_tracks(maps: list[np.ndarray], query_frame: int, points: np.ndarray) -> np.ndarray:
    """``(T, N, 2)`` true positions of ``points (N, 2)`` given on ``query_frame``."""
    query_map = maps[query_frame]
    in_texture = np.linalg.solve(query_map[:, :2], (points - query_map[:, 2]).T).T
    return np.stack([in_texture @ affine[:, :2].T + affine[:, 2] for affine in maps])


def true_flow(maps: list[np.ndarray], source: int, target: int, height: int, width: int,
              grid_height: int, grid_width: int) -> np.ndarray:
    """``(2, h, w)`` exact flow source -> target of the object motion on an ``h x w`` grid covering the
    ``H x W`` frame, in grid pixels (the motion is applied to the whole plane)."""
    ys, xs = np.mgrid[0:grid_height, 0:grid_width].astype(np.float64)
    frame_points = np.stack([(xs.ravel() + 0.5) * width / grid_width - 0.5,
                             (ys.ravel() + 0.5) * height / grid_height - 0.5], axis=1)
    moved = true_tracks([maps[source], maps[target]], 0, frame_points)[1]
    flow = (moved - frame_points) * [grid_width / width, grid_height / height]
    return flow.T.reshape(2, grid_height, grid_width)


def make_queries(query_frames, points) -> torch.Tensor:
    """``(1, N, 3) float32`` queries from ``N`` frame indices (or one for all) and ``(N, 2)`` points."""
    points = np.asarray(points, dtype=np.float32)
    frames = np.broadcast_to(np.asarray(query_frames, dtype=np.float32), (len(points),))
    return torch.from_numpy(np.concatenate([frames[:, None], points], axis=1))[None]


class ExactFlowRaft(RaftTracker):
    """RAFT tracker whose flow is the exact flow of the synthetic motion (on a grid ``grid_scale``
    times coarser than the frames), to test the chaining independently of RAFT's accuracy."""

    def __init__(self, maps: list[np.ndarray], grid_scale: float = 1.0, **kwargs):
        super().__init__(model="raft_small", **kwargs)
        self.maps = maps
        self.grid_scale = grid_scale
        self.requested_pairs: list[tuple[int, int]] = []

    def compute_flows(self, video, sources, targets):
        height, width = video.shape[-2:]
        grid_height, grid_width = int(height / self.grid_scale), int(width / self.grid_scale)
        self.requested_pairs += list(zip(sources, targets))
        flows = [true_flow(self.maps, s, d, height, width, grid_height, grid_width) for s, d in zip(sources, targets)]
        flows = torch.tensor(np.stack(flows), dtype=torch.float32, device=video.device)
        return flows[None].expand(video.shape[0], -1, -1, -1, -1)


GRID_OFFSETS = np.array([(dx, dy) for dx in (-16.0, -5.0, 6.0, 15.0) for dy in (-15.0, -4.0, 5.0, 16.0)])
MOTIONS = {
    "translation": dict(velocity=(2.0, 1.0), degrees_per_frame=0.0),
    "rotation": dict(velocity=(2.0, -1.0), degrees_per_frame=1.0),
}


def moving_object_case(motion: str, num_frames: int = 11, query_frame: int = 5):
    """A 128x160 clip of an 80 px object; 16 points on the object at a middle query frame.
    Returns ``(video, queries (1, 16, 3), true tracks (T, 16, 2), maps)``."""
    maps = object_motion(num_frames, start=(70.0, 60.0), object_size=80, **MOTIONS[motion])
    video = render_clip(maps, 128, 160, 80)
    centre = maps[query_frame][:, 2] + maps[query_frame][:, :2] @ [39.5, 39.5]
    points = centre + GRID_OFFSETS
    return video, make_queries(query_frame, points), true_tracks(maps, query_frame, points), maps


# ---------------------------------------------------------------- interface


def tiny_raft(**kwargs) -> RaftTracker:
    torch.manual_seed(0)
    return RaftTracker(model="raft_small", num_flow_updates=2, **kwargs)


TRACKER_FACTORIES = {
    "static": StaticTracker,
    "lk": LucasKanadeTracker,
    "raft": tiny_raft,
}


def test_trackers_are_named_by_their_class():
    classes = tracker_classes()
    for cls in (StaticTracker, LucasKanadeTracker, RaftTracker):
        assert classes[cls.__name__] is cls
    assert isinstance(build_tracker("LucasKanadeTracker", fb_threshold=0.5), LucasKanadeTracker)
    with pytest.raises(ValueError, match="unknown point tracker 'lk'; valid names: .*LucasKanadeTracker"):
        build_tracker("lk")


@pytest.mark.parametrize("name", sorted(TRACKER_FACTORIES))
def test_interface_shapes_dtypes_and_query_frames(name):
    tracker = TRACKER_FACTORIES[name]()
    assert isinstance(tracker, PointTracker)
    generator = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, 5, 3, 40, 56), dtype=torch.uint8, generator=generator)
    video = torch.from_numpy(cv2.GaussianBlur(video.numpy().reshape(-1, 40, 56), (0, 0), 1.5)).reshape(video.shape)
    queries = torch.tensor(
        [[[0, 10.0, 12.0], [2, 30.5, 20.25], [4, 50.0, 35.0]], [[1, 5.0, 5.0], [3, 20.0, 30.0], [4, 40.0, 10.0]]]
    )
    trajectories, visibilities = tracker(video, queries)
    assert trajectories.shape == (2, 5, 3, 2) and trajectories.dtype == torch.float32
    assert visibilities.shape == (2, 5, 3) and visibilities.dtype == torch.bool
    assert torch.isfinite(trajectories).all()
    # The query frame of every point holds its query position, visible.
    for b in range(2):
        for n in range(3):
            t = int(queries[b, n, 0])
            torch.testing.assert_close(trajectories[b, t, n], queries[b, n, 1:])
            assert visibilities[b, t, n]


@pytest.mark.parametrize("name", sorted(TRACKER_FACTORIES))
def test_no_points_and_single_frame_videos(name):
    tracker = TRACKER_FACTORIES[name]()
    video = torch.randint(0, 256, (1, 3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    trajectories, visibilities = tracker(video, torch.zeros(1, 0, 3))
    assert trajectories.shape == (1, 3, 0, 2) and visibilities.shape == (1, 3, 0)
    query = torch.tensor([[[0.0, 3.0, 4.0]]])
    trajectories, visibilities = tracker(video[:, :1], query)
    assert torch.equal(trajectories, query[:, None, :, 1:]) and visibilities.all()


@pytest.mark.parametrize("name", sorted(TRACKER_FACTORIES))
def test_rejects_malformed_inputs(name):
    tracker = TRACKER_FACTORIES[name]()
    video = torch.zeros(1, 3, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        tracker(video.float(), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="query frame"):
        tracker(video, torch.tensor([[[3.0, 1.0, 1.0]]]))


# ---------------------------------------------------------------- trivial trackers


def test_static_tracker_keeps_points_at_their_query_position():
    video = torch.zeros(1, 4, 3, 8, 8, dtype=torch.uint8)
    queries = torch.tensor([[[2.0, 1.5, 3.0], [0.0, 7.0, 0.0]]])
    trajectories, visibilities = StaticTracker()(video, queries)
    assert torch.equal(trajectories, queries[:, None, :, 1:].expand(1, 4, 2, 2))
    assert visibilities.all()


def test_replay_tracker_returns_its_tracks_broadcast_over_the_batch():
    tracks = torch.arange(3 * 2 * 2, dtype=torch.float64).reshape(3, 2, 2)
    visible = np.array([[True, False], [False, True], [True, True]])
    tracker = ReplayTracker(tracks, visible)
    video = torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8)
    trajectories, visibilities = tracker(video, torch.zeros(2, 2, 3))
    assert trajectories.dtype == torch.float32 and visibilities.dtype == torch.bool
    assert torch.equal(trajectories, tracks.float()[None].expand(2, -1, -1, -1))
    assert torch.equal(visibilities, torch.from_numpy(visible)[None].expand(2, -1, -1))
    # Returned tensors are copies: editing them must not change what is replayed next time.
    trajectories += 1
    assert torch.equal(tracker(video, torch.zeros(2, 2, 3))[0], tracks.float()[None].expand(2, -1, -1, -1))
    assert tracker.state_dict() == {}


def test_replay_tracker_batched_tracks_and_shape_errors():
    tracks = torch.rand(2, 4, 3, 2)
    visible = torch.rand(2, 4, 3) > 0.5
    tracker = ReplayTracker(tracks, visible)
    video = torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8)
    trajectories, visibilities = tracker(video, torch.zeros(2, 3, 3))
    assert torch.equal(trajectories, tracks) and torch.equal(visibilities, visible)
    with pytest.raises(ValueError, match=r"\(B, T, N\) = \(2, 4, 3\).*5 frames"):
        tracker(torch.zeros(2, 5, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="4 query points"):
        tracker(video, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="batch 1"):
        tracker(video[:1], torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="visibilities must have shape"):
        ReplayTracker(torch.zeros(4, 3, 2), torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        ReplayTracker(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.bool))


# ---------------------------------------------------------------- Lucas-Kanade


@pytest.mark.parametrize("motion", sorted(MOTIONS))
def test_lk_tracks_known_motion_forward_and_backward_within_one_pixel(motion):
    video, queries, truth, _ = moving_object_case(motion)
    trajectories, visibilities = LucasKanadeTracker()(video, queries)
    errors = np.linalg.norm(trajectories[0].numpy() - truth, axis=-1)
    print(f"LK {motion}: max error {errors.max():.3f} px, mean {errors.mean():.3f} px")
    assert errors.max() < 1.0
    # Both directions from the middle query frame were actually tracked (the object moves > 8 px).
    assert np.linalg.norm(truth[0] - truth[5], axis=-1).min() > 8
    assert np.linalg.norm(truth[-1] - truth[5], axis=-1).min() > 8
    assert visibilities.all()


def test_lk_downscaled_analysis_still_tracks_within_one_pixel():
    video, queries, truth, _ = moving_object_case("translation")
    upsampled = torch.nn.functional.interpolate(video[0].float(), scale_factor=2, mode="bilinear", align_corners=False)
    video_2x = upsampled.round().clamp(0, 255).to(torch.uint8)[None]
    queries_2x = queries.clone()
    queries_2x[..., 1:] = (queries[..., 1:] + 0.5) * 2 - 0.5
    trajectories, _ = LucasKanadeTracker(downscale=2.0)(video_2x, queries_2x)
    errors = np.linalg.norm(trajectories[0].numpy() - ((truth + 0.5) * 2 - 0.5), axis=-1)
    assert errors.max() < 1.0


def lk_exit_case():
    """Object moving right by 6 px per frame out of a 128x128 frame; points tracked from frame 0."""
    maps = object_motion(14, start=(60.0, 64.0), velocity=(6.0, 0.0), degrees_per_frame=0.0, object_size=80)
    video = render_clip(maps, 128, 128, 80)
    points = maps[0][:, 2] + 39.5 + GRID_OFFSETS
    return video, make_queries(0, points), true_tracks(maps, 0, points), maps


def test_lk_reports_points_leaving_the_frame_as_not_visible():
    video, queries, truth, _ = lk_exit_case()
    trajectories, visibilities = LucasKanadeTracker()(video, queries)
    truly_inside = points_inside_frame(torch.from_numpy(truth), 128, 128).numpy()
    assert (~truly_inside).sum() > 30  # the case really has points leaving the frame
    visible = visibilities[0].numpy()
    assert not (visible & ~truly_inside).any()
    # Away from the border (LK's window still sees the object) points are followed and visible.
    well_inside = (truth[..., 0] < 128 - 1 - 12)
    assert visible[well_inside].all()
    errors = np.linalg.norm(trajectories[0].numpy() - truth, axis=-1)
    assert errors[well_inside].max() < 1.0


def test_lk_batching_over_points_and_videos_matches_one_point_at_a_time():
    video, queries, _, _ = moving_object_case("rotation")
    queries[0, :, 0] = torch.arange(16) % 11  # query frames spread over the clip
    tracker = LucasKanadeTracker()
    together = tracker(video, queries)
    for n in range(queries.shape[1]):
        alone = tracker(video, queries[:, n : n + 1])
        torch.testing.assert_close(alone[0][:, :, 0], together[0][:, :, n], rtol=0, atol=1e-5)
        assert torch.equal(alone[1][:, :, 0], together[1][:, :, n])
    other_video = video.flip(-1)
    batched = tracker(torch.cat([video, other_video]), torch.cat([queries, queries]))
    torch.testing.assert_close(batched[0][:1], together[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batched[0][1:], tracker(other_video, queries)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "option, value", [("window_size", 2), ("max_level", -1), ("fb_threshold", 0.0), ("downscale", 0.5)]
)
def test_lk_rejects_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        LucasKanadeTracker(**{option: value})


def load_davis(sequence: str, num_frames: int) -> tuple[torch.Tensor, np.ndarray]:
    """First frames of a DAVIS sample sequence: ``(1, T, 3, H, W) uint8`` and ``(T, H, W) bool`` masks."""
    frame_paths = sorted((DAVIS_ROOT / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:num_frames]
    frames, masks = [], []
    for path in frame_paths:
        frames.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        annotation = DAVIS_ROOT / "Annotations" / "480p" / sequence / f"{path.stem}.png"
        masks.append(cv2.imread(str(annotation), cv2.IMREAD_GRAYSCALE) > 127)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None], np.stack(masks)


def grid_of_mask_points(mask: np.ndarray, count: int, margin: int = 4) -> np.ndarray:
    """``(count, 2)`` (x, y) mask pixels at least ``margin`` px inside the mask, evenly spread in raster order."""
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    ys, xs = np.nonzero(eroded)
    picks = np.linspace(0, len(xs) - 1, count).round().astype(int)
    return np.stack([xs[picks], ys[picks]], axis=1).astype(np.float32)


def test_lk_positive_points_stay_inside_the_davis_masks():
    hits = visible_count = total = 0
    for sequence in ("blackswan", "car-shadow"):
        video, masks = load_davis(sequence, num_frames=20)
        assert video.shape == (1, 20, 3, 480, 854)
        points = grid_of_mask_points(masks[0], 16)
        trajectories, visibilities = LucasKanadeTracker()(video, make_queries(0, points))
        x = trajectories[0, 1:, :, 0].round().long().clamp(0, 853).numpy()
        y = trajectories[0, 1:, :, 1].round().long().clamp(0, 479).numpy()
        inside = masks[1:][np.arange(19)[:, None], y, x]
        visible = visibilities[0, 1:].numpy()
        print(f"LK on {sequence}: {visible.mean():.3f} of (point, frame) visible, "
              f"{inside[visible].mean():.3f} of visible ones inside the ground-truth mask")
        hits += int(inside[visible].sum())
        visible_count += int(visible.sum())
        total += visible.size
    print(f"LK on DAVIS sample: in-mask fraction of visible points {hits / visible_count:.3f}, "
          f"visible fraction {visible_count / total:.3f}")
    assert visible_count / total > 0.6  # the check below must not pass by hiding points
    assert hits / visible_count > 0.9


# ---------------------------------------------------------------- RAFT chaining with exact flow


@pytest.mark.parametrize("grid_scale", [1.0, 2.0])
@pytest.mark.parametrize("motion", sorted(MOTIONS))
def test_raft_chaining_with_exact_flow_follows_the_motion(motion, grid_scale):
    video, queries, truth, maps = moving_object_case(motion)
    tracker = ExactFlowRaft(maps, grid_scale=grid_scale, batch_size=3)
    trajectories, visibilities = tracker(video, queries)
    errors = np.linalg.norm(trajectories[0].numpy() - truth, axis=-1)
    # The flow is exact and affine, so bilinear sampling and chaining lose nothing.
    assert errors.max() < 1e-3
    assert visibilities.all()
    # Each needed pair is computed once: forward from the query frame, backward before it.
    assert sorted(tracker.requested_pairs) == sorted([(t, t + 1) for t in range(5, 10)] + [(t + 1, t) for t in range(5)])


def test_raft_reports_points_leaving_the_frame_as_not_visible():
    video, queries, truth, maps = lk_exit_case()
    trajectories, visibilities = ExactFlowRaft(maps)(video, queries)
    truly_inside = points_inside_frame(torch.from_numpy(truth), 128, 128)
    assert (~truly_inside).sum() > 30
    assert torch.equal(visibilities[0], truly_inside)
    torch.testing.assert_close(trajectories[0], torch.from_numpy(truth).float(), rtol=0, atol=1e-3)


def test_raft_batching_over_points_and_videos_matches_one_point_at_a_time():
    video, queries, _, _ = moving_object_case("rotation", num_frames=4, query_frame=1)
    queries = queries[:, :5].clone()
    queries[0, :, 0] = torch.tensor([0.0, 1.0, 3.0, 2.0, 1.0])
    tracker = tiny_raft(batch_size=2)
    together = tracker(video, queries)
    for n in range(queries.shape[1]):
        alone = tracker(video, queries[:, n : n + 1])
        torch.testing.assert_close(alone[0][:, :, 0], together[0][:, :, n], rtol=0, atol=1e-3)
    batched = tracker(torch.cat([video, video.flip(-2)]), torch.cat([queries, queries]))
    torch.testing.assert_close(batched[0][:1], together[0], rtol=0, atol=1e-3)


# ---------------------------------------------------------------- the real RAFT network


def test_raft_random_network_end_to_end_on_odd_sized_clip():
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (1, 3, 3, 60, 90), dtype=torch.uint8, generator=generator)
    queries = torch.tensor([[[1.0, 10.0, 20.0], [0.0, 89.0, 59.0], [2.0, 45.5, 30.5]]])
    tracker = tiny_raft(downscale=1.5)
    flows = tracker.compute_flows(video, [0], [1])
    assert flows.shape == (1, 1, 2, 128, 128) and torch.isfinite(flows).all()  # raised to RAFT's minimum
    trajectories, visibilities = tracker(video, queries)
    assert trajectories.shape == (1, 3, 3, 2) and torch.isfinite(trajectories).all()
    assert torch.equal(visibilities, points_inside_frame(trajectories, 60, 90))
    # Random weights still give some motion: the chain really adds flow.
    assert not torch.equal(trajectories, queries[:, None, :, 1:].expand(1, 3, 3, 2))


def test_raft_flow_size_is_a_multiple_of_8_and_at_least_128():
    assert _flow_size(480, 1.0) == 480 and _flow_size(854, 1.0) == 856
    assert _flow_size(480, 2.0) == 240 and _flow_size(854, 2.0) == 424
    assert _flow_size(60, 1.0) == 128


def test_raft_network_stays_in_eval_mode():
    tracker = tiny_raft()
    tracker.train()
    assert tracker.training and not tracker.raft.training


def test_raft_loads_a_local_checkpoint(tmp_path):
    torch.manual_seed(3)
    source = RaftTracker(model="raft_small")
    path = tmp_path / "raft_small.pth"
    torch.save(source.raft.state_dict(), path)
    loaded = RaftTracker(model="raft_small", checkpoint_path=str(path))
    loaded.prepare()
    for name, value in source.raft.state_dict().items():
        assert torch.equal(loaded.raft.state_dict()[name], value), name


def test_raft_checkpoint_errors_name_the_file(tmp_path):
    state = RaftTracker(model="raft_small").raft.state_dict()
    missing = tmp_path / "missing_key.pth"
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i != 0}, missing)
    with pytest.raises(CheckpointError, match="missing_key.pth.*missing keys: feature_encoder"):
        RaftTracker(model="raft_small", checkpoint_path=str(missing)).prepare()
    unexpected = tmp_path / "unexpected_key.pth"
    torch.save({**state, "extra.weight": torch.zeros(1)}, unexpected)
    with pytest.raises(CheckpointError, match="unexpected_key.pth.*unexpected keys: extra.weight"):
        RaftTracker(model="raft_small", checkpoint_path=str(unexpected)).prepare()
    wrong_shape = tmp_path / "wrong_shape.pth"
    first = next(iter(state))
    torch.save({**state, first: torch.zeros(1)}, wrong_shape)
    with pytest.raises(CheckpointError, match="wrong_shape.pth.*shape mismatches"):
        RaftTracker(model="raft_small", checkpoint_path=str(wrong_shape)).prepare()
    with pytest.raises(CheckpointError, match="small_into_large.pth"):
        torch.save(state, tmp_path / "small_into_large.pth")
        RaftTracker(model="raft_large", checkpoint_path=str(tmp_path / "small_into_large.pth")).prepare()
    with pytest.raises(CheckpointError, match="nowhere.pth.*does not exist"):
        RaftTracker(model="raft_small", checkpoint_path=str(tmp_path / "nowhere.pth")).prepare()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        RaftTracker(model="raft_small", checkpoint_path=str(garbage)).prepare()


def test_raft_published_weights_resolve_through_the_registry(monkeypatch, tmp_path):
    """torchvision's weights are registry checkpoints: found in the cache (md5 recorded on first
    use, as they publish none), and offline the error names the file and its URL."""
    import sampt.checkpoints as checkpoints

    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path))
    torch.manual_seed(4)
    state = RaftTracker(model="raft_small").raft.state_dict()
    torch.save(state, tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    tracker = RaftTracker(model="raft_small", checkpoint="raft_small_C_T_V2")
    with pytest.warns(UserWarning):
        tracker.prepare()
    assert tracker.weights_path == str(tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    assert all(torch.equal(tracker.raft.state_dict()[name], value) for name, value in state.items())

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(checkpoints, "_urlopen", offline)
    with pytest.raises(CheckpointError, match=r"raft_large_C_T_SKHT_V2-ff5fadd5\.pth"):
        RaftTracker(model="raft_large", checkpoint="raft_large_C_T_SKHT_V2").prepare()


def test_raft_rejects_unknown_checkpoints_and_models():
    with pytest.raises(CheckpointError, match="raft_small_C_T_V2"):
        RaftTracker(model="raft_small", checkpoint="raft_tiny").prepare()
    with pytest.raises(ValueError, match="raft_small"):
        RaftTracker(model="raft_medium")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["lk", "raft", "static"])
def test_tracker_configs_instantiate_through_jsonargparse(name):
    import yaml
    from jsonargparse import ArgumentParser

    path = Path(__file__).resolve().parents[1] / "configs" / "tracker" / f"{name}.yaml"
    section = yaml.safe_load(path.read_text())["model"]["method"]["init_args"]["tracker"]
    init_args = dict(section.get("init_args") or {})
    if name == "raft":
        # The shipped config names torchvision's published weights (loaded by prepare(), which
        # is not called here: they cannot be downloaded on this machine).
        from sampt.checkpoints import CHECKPOINTS

        assert init_args["checkpoint"] in CHECKPOINTS
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--tracker", type=PointTracker)
    config = parser.parse_object({"tracker": section})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    tracker = instantiate(config).tracker
    assert type(tracker) is {"lk": LucasKanadeTracker, "raft": RaftTracker, "static": StaticTracker}[name]
    for option, value in init_args.items():
        if hasattr(tracker, option):
            assert getattr(tracker, option) == value, option


# ---------------------------------------------------------------- benchmark script


def test_benchmark_script_runs_and_reports_every_tracker(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trackers.py"
    spec = importlib.util.spec_from_file_location("bench_trackers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--frames", "3", "--height", "64", "--width", "96", "--points", "5", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--trackers", "lk", "static", "raft_small"]
    assert bench.main(argv) == 0
    report = capsys.readouterr().out
    for name in ("lk", "static", "raft_small"):
        line = next(line for line in report.splitlines() if line.startswith(name + " "))
        seconds, points_per_second, frames_per_second, peak_mb = map(float, line.split()[1:5])
        assert seconds > 0 and peak_mb >= 0 and line.split()[5] == "random"
        assert points_per_second / frames_per_second == pytest.approx(5 / 3, rel=1e-2)
    # Every registered tracker has a benchmark setting.
    import sampt.trackers

    assert {entry[0] for entry in bench.TRACKER_SETTINGS.values()} == set(sampt.trackers.tracker_classes()) - {"ReplayTracker"}
    assert "torch " + torch.__version__ in report
    with pytest.raises(SystemExit):
        bench.main(argv + ["--query-frame", "3"])


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(TRACKER_FACTORIES))
def test_trackers_follow_the_input_device_on_cuda(name):
    video, queries, _, _ = moving_object_case("translation", num_frames=4, query_frame=1)
    tracker = TRACKER_FACTORIES[name]()
    on_cpu = tracker(video, queries)
    tracker = tracker.to("cuda")
    on_gpu = tracker(video.cuda(), queries.cuda())
    assert on_gpu[0].device.type == "cuda" and on_gpu[1].device.type == "cuda"
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], rtol=0, atol=0.05)
