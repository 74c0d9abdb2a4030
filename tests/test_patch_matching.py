"""Patch-matching filter, CIELAB conversion, visibility reasons and the frame-border rule."""
import math

import cv2
import numpy as np
import pytest
import torch

from sampt.methods.sam_pt.patch_matching import apply_patch_matching_filter, filter_visibilities, patch_similarity, rgb_to_lab
from sampt.visibility import VisibilityReason, apply_outside_frame, mark_outside_frame, reasons_from_visibility

VISIBLE = int(VisibilityReason.VISIBLE)
OCCLUDED = int(VisibilityReason.OCCLUDED)
REJECTED = int(VisibilityReason.PATCH_REJECTED)


# --------------------------------------------------------------------------------------------
# CIELAB


def lab_from_formula(rgb_uint8):
    """Textbook sRGB (D65) -> CIELAB in float64: gamma, XYZ, white point, cube-root law."""
    c = rgb_uint8.astype(np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    r, g, b = linear[..., 0], linear[..., 1], linear[..., 2]
    x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883

    def f(t):
        return np.where(t > 216 / 24389, np.cbrt(t), (24389 / 27 * t + 16) / 116)

    return np.stack([116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))], axis=-1)


def as_frames(rgb_hwc):
    """``(T, H, W, 3) uint8`` numpy -> ``(T, 3, H, W) uint8`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb_hwc)).permute(0, 3, 1, 2).contiguous()


def test_lab_matches_the_formula_on_random_colours():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    lab = rgb_to_lab(as_frames(rgb), color_order="rgb").permute(0, 2, 3, 1).numpy()
    assert lab.dtype == np.float32
    # float32 arithmetic against float64; 7.787 vs 24389/27/116 in the linear part is < 1e-3 too.
    assert np.abs(lab - lab_from_formula(rgb)).max() < 2e-3


def test_lab_of_reference_colours():
    # Widely published sRGB -> CIELAB (D65) values.
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]]], np.uint8)
    lab = rgb_to_lab(as_frames(rgb), color_order="rgb")[0, :, 0, :].T
    expected = torch.tensor([[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86],
                             [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(lab, expected, atol=0.02)


def test_lab_agrees_with_opencv():
    # OpenCV's float conversion is table based: agreement within a fraction of a LAB unit.
    rgb = np.random.default_rng(1).integers(0, 256, (1, 24, 24, 3), dtype=np.uint8)
    ours = rgb_to_lab(as_frames(rgb), color_order="rgb")[0].permute(1, 2, 0).numpy()
    opencv = cv2.cvtColor(rgb[0].astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    assert np.abs(ours - opencv).max() < 0.5


def test_default_colour_order_reverses_the_channels_like_the_original():
    rgb = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    frames = as_frames(rgb)
    assert torch.equal(rgb_to_lab(frames), rgb_to_lab(frames.flip(1), color_order="rgb"))
    # A pure red frame is converted as if it were pure blue.
    red = as_frames(np.array([[[[255, 0, 0]]]], np.uint8))
    blue = as_frames(np.array([[[[0, 0, 255]]]], np.uint8))
    assert torch.equal(rgb_to_lab(red), rgb_to_lab(blue, color_order="rgb"))
    assert not torch.allclose(rgb_to_lab(red), rgb_to_lab(red, color_order="rgb"))


def test_unknown_colour_order():
    with pytest.raises(ValueError, match="patch_matching_color_order 'hsv'.*bgr, rgb"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), color_order="hsv")


# --------------------------------------------------------------------------------------------
# patch similarity


def test_similarity_is_one_for_an_unchanged_patch():
    frames_lab = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 100
    frames_lab[:] = frames_lab[0]
    query_points = torch.tensor([[1.0, 7.0, 9.0], [3.0, 12.5, 4.25]])
    trajectories = query_points[None, :, 1:].repeat(4, 1, 1)
    similarity = patch_similarity(frames_lab, trajectories, query_points)
    assert similarity.shape == (4, 2)
    assert torch.allclose(similarity, torch.ones(4, 2))


def test_similarity_formula_on_constant_patches():
    # Frame 0 is all zeros, frame t has value 4 * t in channel 1 only: each of the 3 x 3 patch
    # pixels differs by 4t, so ||diff|| = sqrt(9 * (4t)^2) = 12 t and the similarity is
    # exp(-12 t / (2 * 3^2)).
    frames_lab = torch.zeros(3, 3, 16, 16)
    for t in range(3):
        frames_lab[t, 1] = 4.0 * t
    query_points = torch.tensor([[0.0, 8.0, 8.0]])
    trajectories = torch.tensor([[[8.0, 8.0]], [[6.0, 9.0]], [[9.0, 5.0]]])
    similarity = patch_similarity(frames_lab, trajectories, query_points)
    expected = torch.tensor([[math.exp(-12 * t / 18)] for t in range(3)])
    assert torch.allclose(similarity, expected)
    # A 5 x 5 patch: ||diff|| = sqrt(25 * (4t)^2) = 20 t, divided by 2 * 5^2.
    similarity_5 = patch_similarity(frames_lab, trajectories, query_points, patch_size=5)
    assert torch.allclose(similarity_5, torch.tensor([[math.exp(-20 * t / 50)] for t in range(3)]))


def test_integer_coordinates_sample_pixel_centres():
    # One bright pixel at (x=5, y=7) of the query frame; the tracked frame is black. Sampling at
    # pixel centres sees exactly that pixel once (||diff|| = 1); half-pixel offsets would spread
    # it over 4 samples of 1/4 each (||diff|| = 1/2).
    frames_lab = torch.zeros(2, 3, 12, 12)
    frames_lab[0, 0, 7, 5] = 1.0
    query_points = torch.tensor([[0.0, 5.0, 7.0]])
    trajectories = torch.tensor([[[5.0, 7.0]], [[5.0, 7.0]]])
    similarity = patch_similarity(frames_lab, trajectories, query_points)
    assert similarity[1, 0].item() == pytest.approx(math.exp(-1 / 18))
    # Half a pixel to the right, bilinear sampling splits the pixel between two samples.
    shifted = torch.tensor([[[5.0, 7.0]], [[5.0, 7.0]]])
    shifted_query = torch.tensor([[0.0, 5.5, 7.0]])
    similarity = patch_similarity(frames_lab, shifted, shifted_query)
    assert similarity[1, 0].item() == pytest.approx(math.exp(-math.sqrt(0.5) / 18))


def test_patch_size_must_be_odd():
    with pytest.raises(ValueError, match="patch_size must be a positive odd integer"):
        patch_similarity(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 2), torch.zeros(1, 3), patch_size=4)


# --------------------------------------------------------------------------------------------
# filtering visibilities


def reference_filter(visible, similarity, query_frames, threshold):
    """The original's per-point loops, written out plainly (reasons as in VisibilityReason)."""
    num_frames, num_points = len(visible), len(visible[0])
    reasons = [[VISIBLE if visible[t][n] else OCCLUDED for n in range(num_points)] for t in range(num_frames)]
    rejected = [[bool(visible[t][n]) and not similarity[t][n] > threshold for n in range(num_points)]
                for t in range(num_frames)]
    for t in range(num_frames):
        for n in range(num_points):
            if rejected[t][n]:
                reasons[t][n] = REJECTED
    for n in range(num_points):
        q = int(query_frames[n])
        for t in range(q + 1, num_frames):  # first rejection after q: every later frame too
            if rejected[t][n]:
                for later in range(t + 1, num_frames):
                    reasons[later][n] = REJECTED
                break
        for t in range(q - 1, -1, -1):  # last rejection before q: every earlier frame too
            if rejected[t][n]:
                for earlier in range(0, t):
                    reasons[earlier][n] = REJECTED
                break
    return torch.tensor(reasons, dtype=torch.int8)


def test_forward_rejection_spreads_to_every_later_frame():
    # Query frame 2; frame 5 looks different: frames 5, 6, 7 are rejected, 0 .. 4 stay visible.
    visible = torch.ones(8, 1, dtype=torch.bool)
    similarity = torch.ones(8, 1)
    similarity[5] = 0.001
    visible_out, reasons = filter_visibilities(visible, similarity, torch.tensor([2]))
    assert visible_out[:, 0].tolist() == [True] * 5 + [False] * 3
    assert reasons[:, 0].tolist() == [VISIBLE] * 5 + [REJECTED] * 3
    assert reasons.dtype == torch.int8 and visible_out.dtype == torch.bool


def test_backward_rejection_spreads_to_every_earlier_frame():
    # Query frame 5; frames 2 and 1 look different: the last one before q (2) rejects 0 .. 2.
    visible = torch.ones(8, 1, dtype=torch.bool)
    similarity = torch.ones(8, 1)
    similarity[2] = similarity[1] = 0.0
    visible_out, reasons = filter_visibilities(visible, similarity, torch.tensor([5]))
    assert visible_out[:, 0].tolist() == [False] * 3 + [True] * 5


def test_rejection_on_the_query_frame_does_not_spread():
    visible = torch.ones(5, 1, dtype=torch.bool)
    similarity = torch.ones(5, 1)
    similarity[2] = 0.0
    visible_out, _ = filter_visibilities(visible, similarity, torch.tensor([2]))
    assert visible_out[:, 0].tolist() == [True, True, False, True, True]


def test_occluded_frames_do_not_trigger_but_are_overridden():
    # Query frame 0. Frame 3 is occluded with a dissimilar patch: not a trigger, stays OCCLUDED.
    # Frame 5 is visible and dissimilar: frames 5 .. 7 are rejected, the occluded frame 6 too.
    visible = torch.ones(8, 1, dtype=torch.bool)
    visible[3] = visible[6] = False
    similarity = torch.ones(8, 1)
    similarity[3] = similarity[5] = 0.0
    visible_out, reasons = filter_visibilities(visible, similarity, torch.tensor([0]))
    assert reasons[:, 0].tolist() == [VISIBLE, VISIBLE, VISIBLE, OCCLUDED, VISIBLE, REJECTED, REJECTED, REJECTED]


def test_threshold_is_inclusive_and_nan_is_rejected():
    visible = torch.ones(3, 3, dtype=torch.bool)
    similarity = torch.tensor([[1.0, 1.0, 1.0], [0.01, 0.0101, math.nan], [1.0, 1.0, 1.0]])
    visible_out, _ = filter_visibilities(visible, similarity, torch.zeros(3, dtype=torch.long), threshold=0.01)
    assert visible_out.tolist() == [[True, True, True], [False, True, False], [False, True, False]]


def test_vectorised_filter_matches_the_loops_on_random_data():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        num_frames, num_points = 9, 12
        visible = torch.rand(num_frames, num_points, generator=generator) > 0.2
        similarity = torch.rand(num_frames, num_points, generator=generator) ** 6  # many below 0.01
        query_frames = torch.randint(0, num_frames, (num_points,), generator=generator)
        visible_out, reasons = filter_visibilities(visible, similarity, query_frames)
        expected = reference_filter(visible.tolist(), similarity.tolist(), query_frames.tolist(), 0.01)
        assert torch.equal(reasons, expected)
        assert torch.equal(visible_out, expected == VISIBLE)


def coloured_video(num_frames, changed_frames, size=32, centre=(16, 12)):
    """Grey video; on ``changed_frames`` a 7x7 square around ``centre`` (x, y) turns red."""
    video = np.full((num_frames, size, size, 3), 128, np.uint8)
    x, y = centre
    for t in changed_frames:
        video[t, y - 3:y + 4, x - 3:x + 4] = (255, 0, 0)
    return as_frames(video)


@pytest.mark.parametrize("color_order", ["bgr", "rgb"])
def test_a_patch_changing_colour_is_rejected_with_all_later_frames(color_order):
    # Point 0 sits on the square that turns red on frames 3 and 4 only (and is grey again on 5):
    # frames 3 .. 5 are rejected. Point 1, far from it, stays visible throughout.
    frames = coloured_video(6, changed_frames=[3, 4])
    query_points = torch.tensor([[1.0, 16.0, 12.0], [1.0, 4.0, 27.0]])
    trajectories = query_points[None, :, 1:].repeat(6, 1, 1)
    visible, reasons = apply_patch_matching_filter(frames, trajectories, torch.ones(6, 2, dtype=torch.bool),
                                                   query_points, color_order=color_order)
    assert visible[:, 0].tolist() == [True, True, True, False, False, False]
    assert reasons[3:, 0].tolist() == [REJECTED] * 3
    assert bool(visible[:, 1].all())


def test_a_patch_changing_colour_before_the_query_frame_rejects_all_earlier_frames():
    frames = coloured_video(6, changed_frames=[1])
    query_points = torch.tensor([[4.0, 16.0, 12.0]])
    trajectories = query_points[None, :, 1:].repeat(6, 1, 1)
    visible, _ = apply_patch_matching_filter(frames, trajectories, torch.ones(6, 1, dtype=torch.bool), query_points)
    assert visible[:, 0].tolist() == [False, False, True, True, True, True]


def test_a_point_tracked_off_its_patch_is_rejected():
    # The video is static; the trajectory jumps from the red square onto grey background at frame 2.
    frames = coloured_video(4, changed_frames=range(4))
    query_points = torch.tensor([[0.0, 16.0, 12.0]])
    trajectories = torch.tensor([[[16.0, 12.0]], [[17.0, 12.0]], [[16.0, 24.0]], [[16.0, 12.0]]])
    visible, _ = apply_patch_matching_filter(frames, trajectories, torch.ones(4, 1, dtype=torch.bool), query_points)
    assert visible[:, 0].tolist() == [True, True, False, False]


# --------------------------------------------------------------------------------------------
# visibility reasons and the frame border


def test_reasons_enum_values():
    assert [int(reason) for reason in VisibilityReason] == [0, 1, 2, 3, 4, 5]
    assert reasons_from_visibility(torch.tensor([True, False])).tolist() == [VISIBLE, OCCLUDED]


def test_outside_frame_rule_is_one_percent_of_width_and_height():
    # Width 100, height 200: x / 100 and y / 200 must lie within [0.01, 0.99].
    points = torch.tensor([
        [0.99, 100.0],  # x / w = 0.0099 < 0.01      -> outside
        [1.0, 100.0],  # exactly 0.01 is inside
        [99.0, 100.0],  # exactly 0.99 is inside
        [99.5, 100.0],  # 0.995 > 0.99              -> outside
        [50.0, 1.9],  # y / h = 0.0095            -> outside
        [50.0, 2.0],  # 0.01                       inside
        [50.0, 198.0],  # 0.99                       inside
        [50.0, 198.5],  # 0.9925                  -> outside
        [-3.0, 100.0],  # left of the frame       -> outside
        [math.nan, math.nan],  # no position: not marked
    ])
    expected = [True, False, False, True, True, False, False, True, True, False]
    assert mark_outside_frame(points, height=200, width=100).tolist() == expected
    # Any leading shape: (T, M, P, 2) -> (T, M, P).
    batched = points.reshape(1, 2, 5, 2)
    assert mark_outside_frame(batched, 200, 100).shape == (1, 2, 5)


def test_outside_frame_overrides_other_reasons():
    trajectories = torch.tensor([[[0.0, 0.0], [50.0, 50.0], [50.0, 50.0]]])
    visible = torch.tensor([[True, True, False]])
    reasons = torch.tensor([[VISIBLE, VISIBLE, REJECTED]], dtype=torch.int8)
    visible_out, reasons_out = apply_outside_frame(visible, reasons, trajectories, 100, 100)
    assert visible_out.tolist() == [[False, True, False]]
    assert reasons_out.tolist() == [[int(VisibilityReason.OUTSIDE_FRAME), VISIBLE, REJECTED]]
    assert reasons.tolist() == [[VISIBLE, VISIBLE, REJECTED]]  # inputs untouched
