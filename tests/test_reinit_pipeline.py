"""SAM-PT-reinit's window loop (sampt.methods.sam_pt.reinit).

Most tests inject a ``TableSegmenter``: instead of SAM it returns, for object m on frame t, a mask
of exactly ``areas[t, m]`` pixels (a block filled in raster order from (row 5, col 5)), so the
re-initialisation frames follow from hand-made area sequences. Each window it segments gets a
number k, written into its logits (value 1 + k inside the mask): the emitted frames then tell
which window (and so which pass) produced them. The real SAM path is checked against plain
SAM-PT with the tiny SAM, and end to end through ``sampt test``.
"""
from __future__ import annotations

import json
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from sampt.methods.sam_pt.method import SamPtMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import EMPTY_LOGIT, SamPt
from sampt.methods.sam_pt.reinit import WindowSegmentation, WindowSegmenter, run_with_reinit
from sampt.trackers.trivial import StaticTracker
from sampt.video import ObjectQuery, VideoItem
from sampt.visibility import VisibilityReason


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny models run fastest single-threaded, above all on a shared, busy CI machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


HEIGHT, WIDTH = 40, 40
BLOCK_ROW, BLOCK_COL, BLOCK_WIDTH = 5, 5, 30
MEDIAN = "reinit-at-median-of-area-diff"
SIMILAR = "reinit-on-similar-mask-area"
HORIZON_SYNC = "reinit-on-horizon-and-sync-masks"


def block_mask(area: int) -> torch.Tensor:
    """``(H, W) bool`` with exactly ``area`` pixels, filled row by row from (5, 5), 30 wide."""
    mask = torch.zeros(HEIGHT * WIDTH, dtype=torch.bool).reshape(HEIGHT, WIDTH)
    rows, rest = divmod(int(area), BLOCK_WIDTH)
    mask[BLOCK_ROW:BLOCK_ROW + rows, BLOCK_COL:BLOCK_COL + BLOCK_WIDTH] = True
    mask[BLOCK_ROW + rows, BLOCK_COL:BLOCK_COL + rest] = True
    return mask


class TableSegmenter(WindowSegmenter):
    """Masks of chosen areas; an object without a visible point gets no prompt (empty, no score)."""

    def __init__(self, areas: torch.Tensor):
        self.areas = areas  # (T, M)
        self.windows: list[tuple[list[int], list[int]]] = []  # (frame indices, objects) per window

    def segment(self, frame_indices, frames, object_indices, tracks, num_positive, rng, timings):
        k = len(self.windows)
        self.windows.append((list(frame_indices), list(object_indices)))
        n, m_w = len(frame_indices), len(object_indices)
        assert frames.shape == (n, 3, HEIGHT, WIDTH) and tracks.trajectories.shape[:2] == (n, m_w)
        prompted = tracks.visibilities.any(dim=2)  # (n, M_w)
        areas = torch.stack([self.areas[t, object_indices] for t in frame_indices]).float()
        areas = torch.where(prompted, areas, torch.zeros_like(areas))
        logits = torch.full((n, m_w, HEIGHT, WIDTH), -10.0)
        for i in range(n):
            for j in range(m_w):
                logits[i, j][block_mask(int(areas[i, j]))] = 1.0 + k
        scores = torch.where(prompted, torch.full((n, m_w), 0.5 + k), torch.full((n, m_w), float("-inf")))
        return WindowSegmentation(logits, prompted & (areas > 0), scores, prompted, areas,
                                  num_decoder_calls=n * m_w, num_encoded_frames=n)

    def frame_logits(self, compact_logits):
        return compact_logits.float()


def make_video(num_frames: int, query_frames: list[int], query_area: int = 200) -> VideoItem:
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (num_frames, 3, HEIGHT, WIDTH), generator=generator, dtype=torch.uint8)
    objects = [ObjectQuery(m + 1, q, block_mask(query_area)) for m, q in enumerate(query_frames)]
    return VideoItem("table", frames, [f"{t:05d}" for t in range(num_frames)], objects, (HEIGHT, WIDTH))


def run_table(tiny_sam, video, areas, **options):
    config = SamPtConfig.from_flat(positive_points_per_mask=4, negative_points_per_mask=1, positive_point_selection_method="random",
                         negative_point_selection_method="random", use_point_reinit=True,
                         **{"reinit_horizon": 4, "reinit_point_tracker_horizon": 4, **options})
    pipeline = SamPt(tiny_sam, StaticTracker(), config)
    segmenter = TableSegmenter(areas)
    outputs, windows = [], []
    result = run_with_reinit(pipeline, video, outputs.append, segmenter=segmenter, on_window=windows.append)
    assert [o.t for o in outputs] == list(range(video.num_frames))
    return result, outputs, windows, segmenter


def window_ids(outputs, m):
    """Per frame: number of the window whose mask was emitted for object m (None: empty)."""
    ids = []
    for output in outputs:
        value = float(output.logits[m, BLOCK_ROW, BLOCK_COL])
        ids.append(None if value == EMPTY_LOGIT else int(round(value - 1)))
    return ids


def summary(windows, direction):
    return [(w.start, w.end, w.tracker_end, w.objects, w.next_query_frames) for w in windows
            if w.direction == direction]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, expected", [
    # areas 400, 30, 200, 100, 300, 300, 50, 500, 500, 500; first entry of each window skipped.
    # median: lower median of (200, 100) is frame 3; of (300, 50) frame 6.
    (MEDIAN, [(0, 4, 6, [0], [3]), (3, 7, 9, [0], [6]), (6, 10, 10, [0], [None])]),
    # similar area: closest to 400 among (200, 100) is frame 2; to 200 among (300, 300) the first,
    # frame 4; to 300 among (50, 500) frame 7.
    (SIMILAR, [(0, 4, 6, [0], [2]), (2, 6, 8, [0], [4]), (4, 8, 10, [0], [7]), (7, 10, 10, [0], [None])]),
    # fixed entry reinit_horizon - 2 = 2: frames s + 3.
    (HORIZON_SYNC, [(0, 4, 6, [0], [3]), (3, 7, 9, [0], [6]), (6, 10, 10, [0], [None])]),
])
def test_windows_and_next_query_frames_follow_the_areas(tiny_sam, variant, expected):
    areas = torch.tensor([400, 30, 200, 100, 300, 300, 50, 500, 500, 500], dtype=torch.float32)[:, None]
    result, outputs, windows, segmenter = run_table(tiny_sam, make_video(10, [0]), areas,
                                                    reinit_point_tracker_horizon=6, reinit_variant=variant)
    assert summary(windows, "forward") == expected
    # Queried on frame 0: the backward pass has nothing to contribute and computes nothing.
    assert summary(windows, "backward") == []
    # Each frame comes from the last window that covers it.
    starts = [w[0] for w in expected]
    expected_ids = [max(k for k, s in enumerate(starts) if s <= t) for t in range(10)]
    assert window_ids(outputs, 0) == expected_ids
    assert result.scores_per_frame[:, 0].tolist() == [0.5 + k for k in expected_ids]
    assert math.isclose(float(result.scores[0]), float(np.mean([0.5 + k for k in expected_ids])), rel_tol=1e-6)
    # New query points were sampled from the mask on the chosen frame and then tracked (static).
    for start, *_ in expected[1:]:
        positives = result.trajectories[start, 0, :4]
        mask = block_mask(int(areas[start, 0]))
        assert all(bool(mask[int(y), int(x)]) for x, y in positives.tolist())
    # The original queries are reported (the VOS merge pastes the given query mask on frame 0).
    assert result.queries.query_frames.tolist() == [0]
    assert result.num_decoder_calls == sum(w[1] - w[0] for w in expected)


def test_sync_objects_are_segmented_together(tiny_sam):
    areas = torch.full((10, 2), 200.0)
    result, outputs, windows, segmenter = run_table(tiny_sam, make_video(10, [0, 2]), areas,
                                                    reinit_variant=HORIZON_SYNC)
    # Object 0 is re-initialised on object 1's query frame (2 = min(s + 1 + 2, q)), after which
    # both share every window: they are each other's negatives from then on.
    assert summary(windows, "forward") == [(0, 4, 4, [0], [2]), (2, 6, 6, [0, 1], [5, 5]),
                                           (5, 9, 9, [0, 1], [8, 8]), (8, 10, 10, [0, 1], [None, None])]
    # Backward: object 1 from its mirrored query frame 7 to the (reversed) end; object 0's
    # one-frame window would be discarded and is skipped.
    assert summary(windows, "backward") == [(7, 10, 10, [1], [None])]
    backward_window = segmenter.windows[0]
    assert backward_window == ([2, 1, 0], [1])
    assert window_ids(outputs, 1)[:2] == [0, 0]  # frames before its query frame: backward pass
    assert window_ids(outputs, 1)[2:] == [2, 2, 2, 3, 3, 3, 4, 4]
    assert window_ids(outputs, 0) == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4]


def test_backward_pass_fills_frames_before_a_mid_video_query_frame(tiny_sam):
    areas = torch.full((10, 1), 100.0)
    result, outputs, windows, segmenter = run_table(tiny_sam, make_video(10, [5]), areas)
    # Backward (reversed video): query frame 9 - 5 = 4; equal areas -> the earliest candidate.
    assert summary(windows, "backward") == [(4, 8, 8, [0], [6]), (6, 10, 10, [0], [None])]
    assert [w[0] for w in segmenter.windows[:2]] == [[5, 4, 3, 2], [3, 2, 1, 0]]
    assert summary(windows, "forward") == [(5, 9, 9, [0], [7]), (7, 10, 10, [0], [None])]
    # Frames 0-3 from the second backward window, 4 from the first, 5-6 and 7-9 forward.
    assert window_ids(outputs, 0) == [1, 1, 1, 1, 0, 2, 2, 3, 3, 3]
    assert torch.isfinite(result.scores_per_frame).all()
    assert not torch.isnan(result.trajectories).any()
    assert result.visibilities.all()


def test_vanishing_mask_reinitialises_at_the_origin_like_the_original(tiny_sam):
    areas = torch.tensor([200, 200] + [0] * 8, dtype=torch.float32)[:, None]
    with pytest.warns(UserWarning, match="empty"):
        result, outputs, windows, _ = run_table(tiny_sam, make_video(10, [0]), areas)
    # Every candidate is missing, yet the median variant re-initialises on entry (3 - 1) // 2.
    assert summary(windows, "forward") == [(0, 4, 4, [0], [2]), (2, 6, 6, [0], [4]), (4, 8, 8, [0], [6]),
                                           (6, 10, 10, [0], [None])]
    # The positive points sampled from the empty mask are all (0, 0): not visible by the border
    # rule. (The negative point comes from the mask's complement, the whole frame, and stays.)
    assert torch.all(result.trajectories[2:, 0, :4] == 0)
    assert not result.visibilities[2:, 0, :4].any()
    assert torch.all(result.reasons[2:, 0, :4] == VisibilityReason.OUTSIDE_FRAME)
    assert result.visibilities[:2].all()
    assert window_ids(outputs, 0) == [0, 0] + [None] * 8
    assert not (result.reasons == VisibilityReason.REINIT_FAILED).any()


def test_vanishing_mask_stops_the_object_with_reinit_stop_when_missing(tiny_sam):
    areas = torch.tensor([200, 200] + [0] * 8, dtype=torch.float32)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no re-initialisation on an empty mask
        result, outputs, windows, _ = run_table(tiny_sam, make_video(10, [0]), areas, reinit_stop_when_missing=True)
    forward = [w for w in windows if w.direction == "forward"]
    assert len(forward) == 1 and forward[0].stopped == [True] and forward[0].next_query_frames == [None]
    # Frames 2-3 are the window's (empty) masks; from e = 4 on the object is stopped.
    assert window_ids(outputs, 0) == [0, 0] + [None] * 8
    assert torch.all(result.reasons[4:, 0] == VisibilityReason.REINIT_FAILED)
    assert not result.visibilities[4:].any()
    # Points stay where they were last tracked (the static tracker keeps the query points).
    assert torch.equal(result.trajectories[4:, 0], result.trajectories[3:4, 0].expand(6, -1, -1))
    assert torch.isneginf(result.scores_per_frame[4:, 0]).all()
    assert result.scores_per_frame[:4, 0].tolist() == [0.5] * 4
    assert math.isclose(float(result.scores[0]), 0.5)


def test_reinit_horizon_longer_than_tracker_horizon_is_rejected(tiny_sam):
    with pytest.raises(ValueError, match=r"reinit_horizon \(8\) must not exceed reinit_point_tracker_horizon \(4\)"):
        SamPtConfig.from_flat(use_point_reinit=True, reinit_horizon=8, reinit_point_tracker_horizon=4)
    config = SamPtConfig.from_flat(use_point_reinit=True, reinit_horizon=4, reinit_point_tracker_horizon=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reinit.reinit_horizon = 8  # options cannot change after validation
    with pytest.raises(ValueError, match="must not exceed"):
        config.replace(reinit_horizon=8)


# ---------------------------------------------------------------------------------------------
# The real SAM stage (tiny random SAM)
def sam_video(num_frames: int = 6) -> VideoItem:
    generator = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (num_frames, 3, 48, 64), generator=generator, dtype=torch.uint8)
    first = torch.zeros(48, 64, dtype=torch.bool)
    first[10:30, 10:30] = True
    second = torch.zeros(48, 64, dtype=torch.bool)
    second[20:40, 35:60] = True
    return VideoItem("sam", frames, [f"{t:05d}" for t in range(num_frames)],
                     [ObjectQuery(1, 0, first), ObjectQuery(2, 0, second)], (24, 32))


def sam_run(tiny_sam, video, **options):
    config = SamPtConfig.from_flat(positive_points_per_mask=4, negative_points_per_mask=1, iterative_refinement_iterations=2,
                         sam_iou_threshold=-1.0, **options)
    outputs = []
    result = SamPtMethod.from_models(tiny_sam, StaticTracker(), config).run(video, outputs.append)
    return result, outputs


def test_one_window_equals_plain_sam_pt_exactly(tiny_sam):
    """A window covering the whole video is plain SAM-PT: the stored low-res logits re-upscale to
    bit-identical frame logits, and the calls are the same."""
    video = sam_video()
    plain, plain_outputs = sam_run(tiny_sam, video)
    reinit, reinit_outputs = sam_run(tiny_sam, video, use_point_reinit=True, reinit_horizon=8,
                                     reinit_point_tracker_horizon=8)
    assert [o.t for o in reinit_outputs] == list(range(video.num_frames))
    for a, b in zip(plain_outputs, reinit_outputs):
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.has_score, b.has_score)
    assert (plain_outputs[2].logits > 0).any()  # the comparison is not between empty masks
    assert torch.equal(plain.trajectories, reinit.trajectories)
    assert torch.equal(plain.scores, reinit.scores)
    assert reinit.num_decoder_calls == plain.num_decoder_calls
    assert reinit.num_encoded_frames == plain.num_encoded_frames == video.num_frames


def test_embedding_cache_saves_encoder_calls_without_changing_outputs(tiny_sam):
    video = sam_video(8)
    options = dict(use_point_reinit=True, reinit_horizon=4, reinit_point_tracker_horizon=4)
    cached, cached_outputs = sam_run(tiny_sam, video, **options)
    uncached, uncached_outputs = sam_run(tiny_sam, video, reinit_embedding_cache_mib=0, **options)
    for a, b in zip(cached_outputs, uncached_outputs):
        assert torch.equal(a.logits, b.logits)
    assert cached.num_decoder_calls == uncached.num_decoder_calls
    assert cached.num_encoded_frames == video.num_frames  # every frame encoded once
    assert uncached.num_encoded_frames > video.num_frames  # overlapping windows re-encode


# ---------------------------------------------------------------------------------------------
def test_sampt_test_with_the_reinit_config(davis2017_sample, tmp_path, monkeypatch):
    from sampt.cli import main
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the tiny SAM config names its checkpoint relative to the repository
    out = tmp_path / "run"
    main(["test", "--config", "configs/d17.yaml", "--config", "configs/test/tiny_sam.yaml",
          "--config", "configs/test/tiny.yaml", "--config", "configs/model/sam_pt_reinit.yaml",
          "--data.init_args.root", str(davis2017_sample), "--data.init_args.max_frames", "6",
          "--data.init_args.longest_size", "256",
          "--model.init_args.method.init_args.sam_pt.reinit.reinit_horizon", "4", "--model.init_args.method.init_args.sam_pt.reinit.reinit_point_tracker_horizon", "4",
          "--model.output_dir", str(out / "predictions"), "--trainer.logger.init_args.save_dir", str(out)])
    for sequence in ("blackswan", "car-shadow"):
        pngs = sorted(p.name for p in (out / "predictions" / sequence).glob("*.png"))
        assert pngs == [f"{t:05d}.png" for t in range(5)]
    header, values = (out / "global_results-val.csv").read_text().splitlines()
    assert header.startswith("J&F-Mean,J-Mean")
    assert all(0.0 <= float(v) <= 1.0 for v in values.split(",")[:3])
    protocol = json.loads((out / "protocol.json").read_text())["protocol"]["method"]["sam_pt"]
    assert protocol["reinit"]["use_point_reinit"] is True
    assert protocol["reinit"]["reinit_horizon"] == 4 and protocol["reinit"]["reinit_variant"] == MEDIAN
    assert protocol["query"]["positive_points_per_mask"] == 4  # the test config stays in effect
    tracks = np.load(out / "trajectories" / "blackswan.npz")
    assert tracks["trajectories"].shape[0] == 5 and "reasons" in tracks


def test_point_queries_with_padding_are_resampled_to_full_point_sets(tiny_sam):
    """Objects given by points (demo mode) may have different point counts: padded points are
    never prompted; after a re-initialisation every point is a real, sampled one."""
    video = make_video(8, [0, 0])
    video.objects = [
        ObjectQuery(1, 0, points=torch.tensor([[10.0, 8.0], [20.0, 9.0], [38.0, 38.0]]), num_positive=2),
        ObjectQuery(2, 0, points=torch.tensor([[12.0, 10.0], [25.0, 8.0]]), num_positive=2),
    ]
    areas = torch.full((8, 2), 150.0)
    result, outputs, windows, _ = run_table(tiny_sam, video, areas)
    assert result.queries.valid.tolist() == [[True, True, True], [True, True, False]]
    forward = summary(windows, "forward")
    assert forward[0][:4] == (0, 4, 4, [0, 1]) and forward[0][4] == [2, 2]
    assert not result.visibilities[:2, 1, 2].any()  # the padded point
    # From frame 2 on it is a sampled negative point, visible unless the border rule says not.
    from sampt.visibility import mark_outside_frame

    on_border = mark_outside_frame(result.trajectories[2:, 1, 2], HEIGHT, WIDTH)
    assert torch.equal(result.visibilities[2:, 1, 2], ~on_border)
    mask = block_mask(150)
    for m in range(2):  # re-sampled positives lie in the mask of frame 2, the negative outside
        assert all(bool(mask[int(y), int(x)]) for x, y in result.trajectories[2, m, :2].tolist())
        x, y = result.trajectories[2, m, 2].tolist()
        assert not bool(mask[int(y), int(x)])


def test_real_sam_windows_with_patch_filter_and_lk(tiny_sam):
    """Several windows, both passes, the LK tracker and the patch-matching filter together."""
    from sampt.trackers.lk import LucasKanadeTracker

    video = sam_video(7)
    video.objects[1].query_frame = 3
    config = SamPtConfig.from_flat(positive_points_per_mask=4, negative_points_per_mask=1, iterative_refinement_iterations=1,
                         sam_iou_threshold=-1.0, use_point_reinit=True, reinit_horizon=3,
                         reinit_point_tracker_horizon=4, use_patch_matching_filtering=True)
    outputs, windows = [], []
    result = run_with_reinit(SamPt(tiny_sam, LucasKanadeTracker(), config), video, outputs.append,
                             on_window=windows.append)
    assert [o.t for o in outputs] == list(range(7))
    assert all(o.logits.shape == (2, 24, 32) for o in outputs)
    assert {w.direction for w in windows} == {"forward", "backward"}
    assert not torch.isnan(result.trajectories).any()
    assert set(result.reasons.unique().tolist()) <= {int(r) for r in VisibilityReason}
    assert result.num_encoded_frames == video.num_frames  # the cache holds this short clip
