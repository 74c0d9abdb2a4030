"""The SAM-PT pipeline as a plain module: queries, tracking, border rule, streaming, merging."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sampt.merge import VosMerger
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import EMPTY_LOGIT, SamPt, output_scale, resize_logits, video_rng
from sampt.trackers.base import PointTracker
from sampt.trackers.trivial import ReplayTracker, StaticTracker
from sampt.video import ObjectQuery, VideoItem
from sampt.visibility import VisibilityReason


def textured_video(num_frames=5, height=48, width=80, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(num_frames, 3, height, width), dtype=np.uint8)
    return torch.from_numpy(frames)


def box_mask(height, width, top, left, size):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def make_video(query_frames=(0, 2), output_size=(96, 160)):
    frames = textured_video()
    _, _, height, width = frames.shape
    objects = [
        ObjectQuery(object_id=3, query_frame=query_frames[0], mask=box_mask(height, width, 8, 8, 16)),
        ObjectQuery(object_id=7, query_frame=query_frames[1], mask=box_mask(height, width, 20, 44, 20)),
    ]
    return VideoItem(name="synthetic", frames=frames, frame_names=[f"{i:05d}" for i in range(5)],
                     objects=objects, output_size=output_size)


class RecordingTracker(StaticTracker):
    """Static tracks, remembering the queries it was asked to track."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, video, queries):
        self.calls.append(queries.clone())
        return super().forward(video, queries)


CONFIG = SamPtConfig.from_flat(positive_points_per_mask=4, negative_points_per_mask=1, iterative_refinement_iterations=1,
                     sam_iou_threshold=-1.0, point_tracker_mask_batch_size=1)


def test_queries_follow_the_masks_and_their_query_frames(tiny_sam):
    video = make_video()
    pipeline = SamPt(tiny_sam, StaticTracker(), CONFIG)
    queries = pipeline.make_queries(video, video_rng(0, video.name))
    assert queries.points.shape == (2, 5, 3)
    assert queries.query_frames.tolist() == [0, 2]
    for m, obj in enumerate(video.objects):
        xy = queries.points[m, :, 1:].round().long()
        inside = obj.mask[xy[:, 1], xy[:, 0]]
        assert inside[:4].all() and not inside[4:].any()  # positives inside, the negative outside
    again = pipeline.make_queries(video, video_rng(0, video.name))
    assert torch.equal(again.points, queries.points)  # seeded per video


def test_tracks_both_ways_from_a_mid_video_query_frame(tiny_sam):
    tracker = RecordingTracker()
    pipeline = SamPt(tiny_sam, tracker, CONFIG)
    video = make_video(query_frames=(0, 2))
    outputs = []
    result = pipeline.run(video, outputs.append)
    # One tracker call per object (batch size 1); object 1 is queried on frame 2.
    assert len(tracker.calls) == 2 and (tracker.calls[1][0, :, 0] == 2).all()
    # Its points exist and prompt SAM on frames 0 and 1 too, i.e. before its query frame.
    assert result.visibilities[:2, 1].any()
    assert [o.t for o in outputs] == list(range(5))
    assert all(o.has_score[1] for o in outputs)


def test_border_points_are_not_visible(tiny_sam):
    video = make_video()
    height, width = video.frames.shape[-2:]
    # Object 0's points: one sits 0.5 % of the width from the left border on frame 1.
    trajectories = torch.full((5, 10, 2), 20.0)
    trajectories[1, 0, 0] = 0.005 * width
    trajectories[3, 6, 1] = 0.995 * height
    visibilities = torch.ones(5, 10, dtype=torch.bool)
    visibilities[2, 2] = False
    pipeline = SamPt(tiny_sam, ReplayTracker(trajectories, visibilities),
                     CONFIG.replace(point_tracker_mask_batch_size=2))
    queries = pipeline.make_queries(video, video_rng(0, video.name))
    tracks = pipeline.track(video.frames, queries)
    assert not tracks.visibilities[1, 0, 0] and tracks.reasons[1, 0, 0] == VisibilityReason.OUTSIDE_FRAME
    assert not tracks.visibilities[3, 1, 1] and tracks.reasons[3, 1, 1] == VisibilityReason.OUTSIDE_FRAME
    assert not tracks.visibilities[2, 0, 2] and tracks.reasons[2, 0, 2] == VisibilityReason.OCCLUDED
    assert tracks.visibilities.sum() == 5 * 10 - 3


def test_streams_one_frame_at_a_time_and_keeps_no_pixels(tiny_sam):
    """The memory rule: float logits exist per frame only; the result holds no per-pixel arrays."""
    video = make_video()
    pipeline = SamPt(tiny_sam, StaticTracker(), CONFIG)
    shapes = []
    result = pipeline.run(video, lambda output: shapes.append(tuple(output.logits.shape)))
    assert shapes == [(2, 96, 160)] * 5
    for name, value in vars(result).items():
        if isinstance(value, torch.Tensor):
            assert value.numel() <= 5 * 2 * 10 * 2, f"{name} holds {tuple(value.shape)}"
    # Trajectories are returned at the output resolution (2x the input here).
    assert torch.allclose(result.trajectories[:, 0, 0], result.queries.points[0, 0, 1:].expand(5, 2) * 2)
    assert result.scores.shape == (2,) and torch.isfinite(result.scores).all()


def test_point_queries_make_their_query_masks_with_sam(tiny_sam):
    frames = textured_video()
    objects = [ObjectQuery(object_id=1, query_frame=1, points=torch.tensor([[20.0, 20.0], [30.0, 24.0], [70.0, 40.0]]),
                           num_positive=2)]
    video = VideoItem(name="clip", frames=frames, frame_names=list("abcde"), objects=objects, output_size=(48, 80))
    pipeline = SamPt(tiny_sam, StaticTracker(), CONFIG)
    queries = pipeline.make_queries(video, video_rng(0, "clip"))
    assert queries.num_positive == 2 and queries.points.shape == (1, 3, 3)
    assert torch.equal(queries.points[0, :, 1:], objects[0].points)  # the given points are tracked
    assert queries.query_masks.shape == (1, 48, 80) and queries.query_masks.dtype == torch.bool


def test_resize_logits_keeps_empty_masks_finite():
    logits = torch.full((2, 10, 16), float("-inf"))
    logits[1, 2:5, 3:9] = 4.0
    resized = resize_logits(logits, (25, 40))
    assert torch.isfinite(resized).all()
    assert (resized[0] < EMPTY_LOGIT / 2).all() and (resized[1] > 0).any()


@pytest.mark.parametrize("original", [True, False])
def test_empty_mask_upsampling_follows_the_chosen_rule(original):
    # Object 5's mask is empty (SAM-PT's -inf logits), object 9 covers the frame; frames are
    # upsampled 10x16 -> 25x40 as when the input is smaller than the output (YouTube-VOS).
    logits = torch.full((2, 10, 16), float("-inf"))
    logits[1] = 4.0
    resized = resize_logits(logits, (25, 40), original_empty_mask_upsampling=original)
    merger = VosMerger([5, 9], [0, 0], torch.zeros(2, 10, 16, dtype=torch.bool), (25, 40))
    merged = merger(1, resized)
    if original:
        # The original's own rule, computed independently: raw bilinear resize, softmax, argmax.
        raw = F.interpolate(logits[None], size=(25, 40), mode="bilinear", align_corners=False)[0]
        expected = torch.cat([torch.zeros(1, 25, 40), raw]).softmax(0).argmax(0)
        expected = torch.tensor([0, 5, 9], dtype=torch.uint8)[expected]
        assert torch.equal(merged, expected)
        assert (merged[0] == 0).all() and (merged[:, 0] == 0).all() and (merged[1:, 1:] == 9).all()
    else:
        assert torch.isfinite(resized).all() and (merged == 9).all()


def test_output_scale_must_be_isotropic():
    assert output_scale((240, 427), (480, 854)).tolist() == [2.0, 2.0]
    # Rounded sides: each axis keeps its own factor.
    assert output_scale((135, 240), (480, 854)).tolist() == pytest.approx([854 / 240, 480 / 135])
    with pytest.raises(ValueError, match="aspect ratio"):
        output_scale((240, 427), (480, 480))


def test_vos_merge_rules():
    query_masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    query_masks[0, :2, :2] = True
    query_masks[1, 2:, 2:] = True
    merger = VosMerger([5, 9], [0, 2], query_masks, (4, 4))
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, 0, :] = 2.0
    logits[1, 0, 2:] = 3.0  # stronger than object 5 there
    logits[1, 1, :] = 1.0
    # Frame 0: object 5's query frame (its mask), object 9 not yet present (background).
    assert merger(0, logits).tolist() == [[5, 5, 0, 0], [5, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # Frame 1: object 9 still before its query frame: only object 5's logits > 0 count.
    assert merger(1, logits).tolist() == [[5, 5, 5, 5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # Frame 2: object 9's query frame is pasted; object 5 keeps its logits elsewhere.
    assert merger(2, logits).tolist() == [[5, 5, 5, 5], [0, 0, 0, 0], [0, 0, 9, 9], [0, 0, 9, 9]]
    # Frame 3: per-pixel argmax; ties between objects go to the first object.
    logits[1, 0, :2] = 2.0
    assert merger(3, logits).tolist() == [[5, 5, 9, 9], [9, 9, 9, 9], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="1..255"):
        VosMerger([0], [0], query_masks[:1], (4, 4))


def test_tracker_interface_rejects_bad_inputs():
    tracker = StaticTracker()
    video = torch.zeros(1, 3, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        tracker(video.float(), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="query frame"):
        tracker(video, torch.tensor([[[5.0, 1.0, 1.0]]]))
    assert issubclass(ReplayTracker, PointTracker)
