"""Query points from masks: counts, placement, fallbacks, degenerate masks, determinism."""
import warnings

import cv2
import kmedoids
import numpy as np
import pytest
import torch

from sampt.methods.sam_pt.query_points import POINT_SELECTION_METHODS, query_points_from_masks, sample_points


def textured_frame(height, width, seed=0):
    """``(3, H, W) uint8`` random texture: plenty of Shi-Tomasi corners everywhere."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def rectangle_mask(height, width, rows, cols):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def values_at(mask, points_xy):
    """Mask values at (x, y) points (x = column, y = row)."""
    xs = points_xy[:, 0].long()
    ys = points_xy[:, 1].long()
    return mask[ys, xs]


class GoodFeaturesSpy:
    """Wraps cv2.goodFeaturesToTrack to record the arguments the Shi-Tomasi method passes."""

    def __init__(self, monkeypatch, replacement=None):
        self.calls = []
        self._real = cv2.goodFeaturesToTrack
        self._replacement = replacement
        monkeypatch.setattr(cv2, "goodFeaturesToTrack", self)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self._replacement is not None:
            return self._replacement(**kwargs)
        return self._real(**kwargs)


# --------------------------------------------------------------------------------------------
# Counts and placement


@pytest.mark.parametrize("method", POINT_SELECTION_METHODS)
def test_points_lie_inside_the_mask_and_are_x_y(method):
    # An asymmetric mask (wide, in the upper right) so that swapping x and y lands outside it.
    height, width = 40, 90
    mask = rectangle_mask(height, width, rows=(3, 15), cols=(50, 85))
    points = sample_points(mask, 13, method, textured_frame(height, width), np.random.default_rng(1))
    assert points.shape == (13, 2)
    assert points.dtype == torch.float32
    assert bool(values_at(mask, points).all())
    # Shi-Tomasi returns integer pixel positions as well, so every point is a pixel of the mask.
    assert torch.equal(points, points.round())


@pytest.mark.parametrize("positive_method", POINT_SELECTION_METHODS)
@pytest.mark.parametrize("negative_method", ["random", "mixed", "kmedoids"])
def test_query_points_positives_inside_negatives_outside(positive_method, negative_method):
    height, width = 36, 48
    frames = torch.stack([textured_frame(height, width, seed) for seed in range(3)])
    masks = torch.stack([
        rectangle_mask(height, width, rows=(4, 20), cols=(6, 30)),
        rectangle_mask(height, width, rows=(10, 34), cols=(25, 46)),
    ])
    queries = query_points_from_masks(frames, masks, torch.tensor([2, 0]), positive_points_per_mask=6,
                                      negative_points_per_mask=5, positive_method=positive_method,
                                      negative_method=negative_method, rng=np.random.default_rng(0))
    assert queries.shape == (2, 11, 3)
    assert queries.dtype == torch.float32
    assert torch.equal(queries[0, :, 0], torch.full((11,), 2.0))
    assert torch.equal(queries[1, :, 0], torch.zeros(11))
    for object_index in range(2):
        positives = queries[object_index, :6, 1:]
        negatives = queries[object_index, 6:, 1:]
        assert bool(values_at(masks[object_index], positives).all())
        assert not bool(values_at(masks[object_index], negatives).any())


def test_no_negative_points_and_numpy_inputs():
    height, width = 20, 20
    frames = np.stack([textured_frame(height, width).numpy()])
    masks = np.zeros((1, height, width), bool)
    masks[0, 5:15, 5:15] = True
    queries = query_points_from_masks(frames, masks, [0], positive_points_per_mask=4, negative_points_per_mask=0,
                                      rng=np.random.default_rng(0))
    assert isinstance(queries, torch.Tensor)
    assert queries.shape == (1, 4, 3)


def test_query_points_read_the_shi_tomasi_frame_of_each_object(monkeypatch):
    # Only the query frame carries texture; if another frame were used no corner would be found.
    height, width = 30, 30
    frames = torch.zeros(3, 3, height, width, dtype=torch.uint8)
    frames[1] = textured_frame(height, width)
    mask = rectangle_mask(height, width, rows=(5, 25), cols=(5, 25))
    spy = GoodFeaturesSpy(monkeypatch)
    query_points_from_masks(frames, mask[None], [1], positive_points_per_mask=4, negative_points_per_mask=0,
                            positive_method="shi-tomasi", rng=np.random.default_rng(0))
    expected_gray = cv2.cvtColor(np.ascontiguousarray(frames[1].permute(1, 2, 0).numpy()), cv2.COLOR_RGB2GRAY)
    assert len(spy.calls) == 1
    assert np.array_equal(spy.calls[0]["image"], expected_gray)


# --------------------------------------------------------------------------------------------
# k-medoids


def test_kmedoids_finds_the_centres_of_two_blobs():
    # Two 5x5 blobs far apart: the optimal 2-medoid solution is the centre pixel of each blob.
    mask = torch.zeros(30, 60, dtype=torch.bool)
    mask[2:7, 40:45] = True  # centre (x=42, y=4)
    mask[20:25, 3:8] = True  # centre (x=5, y=22)
    points = sample_points(mask, 2, "kmedoids", rng=np.random.default_rng(3))
    assert sorted(map(tuple, points.tolist())) == [(5.0, 22.0), (42.0, 4.0)]


def test_kmedoids_subsamples_at_most_1800_pixels(monkeypatch):
    sizes = []
    real_fasterpam = kmedoids.fasterpam

    def spy(distances, *args, **kwargs):
        sizes.append(distances.shape)
        return real_fasterpam(distances, *args, **kwargs)

    monkeypatch.setattr(kmedoids, "fasterpam", spy)
    big = rectangle_mask(60, 60, rows=(0, 50), cols=(0, 50))  # 2500 pixels
    small = rectangle_mask(60, 60, rows=(0, 20), cols=(0, 30))  # 600 pixels
    points_big = sample_points(big, 8, "kmedoids", rng=np.random.default_rng(0))
    points_small = sample_points(small, 8, "kmedoids", rng=np.random.default_rng(0))
    assert sizes == [(1800, 1800), (600, 600)]
    assert bool(values_at(big, points_big).all()) and bool(values_at(small, points_small).all())
    # Medoids are data points of the subsample: all distinct pixels.
    assert len(set(map(tuple, points_big.tolist()))) == 8


@pytest.mark.parametrize("method", ["kmedoids", "random"])
def test_masks_smaller_than_k_repeat_their_pixels_in_order(method):
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2, 7] = mask[5, 1] = mask[5, 4] = True  # row-major order: (7,2), (1,5), (4,5) as (x, y)
    points = sample_points(mask, 7, method, rng=np.random.default_rng(0))
    cycle = [(7.0, 2.0), (1.0, 5.0), (4.0, 5.0)]
    assert [tuple(p) for p in points.tolist()] == (cycle * 3)[:7]


@pytest.mark.parametrize("method", POINT_SELECTION_METHODS)
def test_one_pixel_mask_gives_k_copies_of_that_pixel(method):
    height, width = 16, 24
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[11, 3] = True
    points = sample_points(mask, 5, method, textured_frame(height, width), np.random.default_rng(0))
    assert torch.equal(points, torch.tensor([[3.0, 11.0]] * 5))


# --------------------------------------------------------------------------------------------
# Shi-Tomasi


def test_shi_tomasi_on_a_flat_image_is_filled_by_kmedoids():
    # No gradient, no corner: every point comes from the k-medoids fill. With <= 1800 pixels
    # the fill consumes the generator exactly like a plain k-medoids call, so the two agree.
    height, width = 40, 40
    mask = rectangle_mask(height, width, rows=(5, 35), cols=(10, 30))  # 600 pixels
    flat = torch.full((3, height, width), 128, dtype=torch.uint8)
    shi_tomasi = sample_points(mask, 6, "shi-tomasi", flat, np.random.default_rng(11))
    plain = sample_points(mask, 6, "kmedoids", None, np.random.default_rng(11))
    assert torch.equal(shi_tomasi, plain)


def test_shi_tomasi_fill_uses_the_original_2000_pixel_subsample(monkeypatch):
    sizes = []
    real_fasterpam = kmedoids.fasterpam

    def spy(distances, *args, **kwargs):
        sizes.append(distances.shape[0])
        return real_fasterpam(distances, *args, **kwargs)

    monkeypatch.setattr(kmedoids, "fasterpam", spy)
    mask = rectangle_mask(60, 60, rows=(0, 50), cols=(0, 50))  # 2500 pixels
    sample_points(mask, 3, "shi-tomasi", torch.zeros(3, 60, 60, dtype=torch.uint8), np.random.default_rng(0))
    assert sizes == [2000]


def test_shi_tomasi_partial_corners_are_completed_by_kmedoids(monkeypatch):
    # A detector that finds only two corners: they come first, then 3 k-medoids points.
    found = np.array([[[12.0, 9.0]], [[20.0, 14.0]]], np.float32)
    GoodFeaturesSpy(monkeypatch, replacement=lambda **kwargs: found)
    mask = rectangle_mask(30, 30, rows=(5, 25), cols=(5, 25))
    points = sample_points(mask, 5, "shi-tomasi", textured_frame(30, 30), np.random.default_rng(0))
    assert points[:2].tolist() == [[12.0, 9.0], [20.0, 14.0]]
    assert bool(values_at(mask, points[2:]).all())
    assert len(set(map(tuple, points[2:].tolist()))) == 3


def test_shi_tomasi_parameters_and_six_percent_erosion(monkeypatch):
    spy = GoodFeaturesSpy(monkeypatch)
    # 100x100 square: extent = hypot(99, 99) = 140.0 -> kernel int(0.06 * 140.0) = 8. An even
    # 8x8 kernel is anchored at (4, 4): 4 pixels go on the top/left, 3 on the bottom/right.
    mask = rectangle_mask(120, 120, rows=(10, 110), cols=(10, 110))
    points = sample_points(mask, 8, "shi-tomasi", textured_frame(120, 120), np.random.default_rng(0))
    call = spy.calls[0]
    expected_eroded = np.zeros((120, 120), np.uint8)
    expected_eroded[14:107, 14:107] = 1
    assert np.array_equal(call["mask"], expected_eroded)
    # The corner spacing is the eroded mask's extent divided by k.
    assert call["minDistance"] == pytest.approx(np.hypot(92, 92) / 8)
    assert call["maxCorners"] == 8
    assert call["qualityLevel"] == 0.001
    assert call["blockSize"] == 3 and call["gradientSize"] == 3
    # A textured frame has corners everywhere: all 8 points come from the detector.
    assert bool(torch.from_numpy(expected_eroded).bool()[points[:, 1].long(), points[:, 0].long()].all())


def test_shi_tomasi_falls_back_to_two_percent_erosion(monkeypatch):
    spy = GoodFeaturesSpy(monkeypatch)
    # An 8-row band 200 wide: extent = hypot(7, 199) = 199.1; 6% -> 11x11 kernel erases the band,
    # 2% -> 3x3 kernel leaves rows 1..6 and columns 1..198 of the band.
    mask = rectangle_mask(20, 220, rows=(6, 14), cols=(10, 210))
    sample_points(mask, 4, "shi-tomasi", textured_frame(20, 220), np.random.default_rng(0))
    expected = np.zeros((20, 220), np.uint8)
    expected[7:13, 11:209] = 1
    assert np.array_equal(spy.calls[0]["mask"], expected)


def test_shi_tomasi_falls_back_to_one_percent_erosion(monkeypatch):
    spy = GoodFeaturesSpy(monkeypatch)
    # A 4-row band 300 wide: extent = hypot(3, 299) = 299.0; 6% -> 17 and 2% -> 5 erase the band,
    # 1% -> int(2.99) = 2: a 2x2 kernel anchored at (1, 1) removes the first row and column.
    mask = rectangle_mask(12, 320, rows=(4, 8), cols=(10, 310))
    sample_points(mask, 4, "shi-tomasi", textured_frame(12, 320), np.random.default_rng(0))
    expected = np.zeros((12, 320), np.uint8)
    expected[5:8, 11:310] = 1
    assert np.array_equal(spy.calls[0]["mask"], expected)


def test_shi_tomasi_tiny_mask_is_not_eroded(monkeypatch):
    spy = GoodFeaturesSpy(monkeypatch)
    # 4x4 square: every level rounds to a 0-size kernel, which OpenCV (and so the original)
    # treats as 3x3, leaving 2x2 = 4 < 10 pixels each time: the mask is used as it is.
    mask = rectangle_mask(12, 12, rows=(3, 7), cols=(5, 9))
    points = sample_points(mask, 3, "shi-tomasi", textured_frame(12, 12), np.random.default_rng(0))
    assert np.array_equal(spy.calls[0]["mask"], mask.numpy().astype(np.uint8))
    assert bool(values_at(mask, points).all())


def test_shi_tomasi_zero_size_kernel_erodes_by_three_by_three(monkeypatch):
    spy = GoodFeaturesSpy(monkeypatch)
    # 6x6 square: int(0.06 * 7.07) = 0 -> OpenCV's default 3x3 element leaves 4x4 = 16 >= 10
    # pixels, so the original already uses this "6%" erosion (a quirk kept on purpose).
    mask = rectangle_mask(12, 12, rows=(3, 9), cols=(2, 8))
    sample_points(mask, 3, "shi-tomasi", textured_frame(12, 12), np.random.default_rng(0))
    expected = np.zeros((12, 12), np.uint8)
    expected[4:8, 3:7] = 1
    assert np.array_equal(spy.calls[0]["mask"], expected)


# --------------------------------------------------------------------------------------------
# random and mixed


def test_random_points_are_distinct_and_uniform_over_the_mask():
    mask = torch.zeros(20, 40, dtype=torch.bool)
    mask[0:10, 0:10] = True  # 100 pixels
    mask[5:20, 20:40] = True  # 300 pixels
    points = sample_points(mask, 50, "random", rng=np.random.default_rng(0))
    assert len(set(map(tuple, points.tolist()))) == 50
    assert bool(values_at(mask, points).all())
    # One point per draw, 3000 draws: P(right blob) = 0.75, standard deviation ~0.008.
    rng = np.random.default_rng(1)
    in_right = [sample_points(mask, 1, "random", rng=rng)[0, 0].item() >= 20 for _ in range(3000)]
    assert abs(np.mean(in_right) - 0.75) < 0.04


def test_mixed_is_kmedoids_then_shi_tomasi_then_random():
    # k = 12: 12 // 4 = 3 k-medoids, 12 // 3 = 4 Shi-Tomasi, 5 random, drawn in this order from
    # the generator; replaying the three methods on one generator must give the same points.
    height, width = 40, 50
    mask = rectangle_mask(height, width, rows=(5, 35), cols=(8, 45))
    frame = textured_frame(height, width)
    mixed = sample_points(mask, 12, "mixed", frame, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    replay = torch.cat([
        sample_points(mask, 3, "kmedoids", frame, rng),
        sample_points(mask, 4, "shi-tomasi", frame, rng),
        sample_points(mask, 5, "random", frame, rng),
    ])
    assert torch.equal(mixed, replay)


def test_mixed_single_point_is_random_and_needs_no_frame():
    mask = rectangle_mask(30, 30, rows=(2, 28), cols=(2, 28))
    mixed = sample_points(mask, 1, "mixed", None, np.random.default_rng(9))
    random = sample_points(mask, 1, "random", None, np.random.default_rng(9))
    assert torch.equal(mixed, random)


# --------------------------------------------------------------------------------------------
# empty masks, determinism, errors


@pytest.mark.parametrize("method", POINT_SELECTION_METHODS)
def test_empty_mask_warns_with_the_object_index_and_gives_zero_points(method):
    height, width = 20, 20
    frames = textured_frame(height, width)[None].repeat(2, 1, 1, 1)
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 4:12, 4:12] = True
    with pytest.warns(UserWarning, match="object 1") as record:
        queries = query_points_from_masks(frames, masks, [0, 1], positive_points_per_mask=5,
                                          negative_points_per_mask=2, positive_method=method,
                                          rng=np.random.default_rng(0))
    assert len(record) == 1 and "object 0" not in str(record[0].message)
    assert torch.equal(queries[1, :5, 1:], torch.zeros(5, 2))
    assert torch.equal(queries[1, :, 0], torch.ones(7))
    # The empty mask's complement is the whole frame: its negatives are ordinary points.
    assert queries.shape == (2, 7, 3)
    assert bool(values_at(masks[0], queries[0, :5, 1:]).all())


def test_full_mask_warns_about_its_empty_complement():
    masks = torch.ones(1, 10, 10, dtype=torch.bool)
    with pytest.warns(UserWarning, match="complement of the query mask of object 0"):
        queries = query_points_from_masks(torch.zeros(1, 3, 10, 10, dtype=torch.uint8), masks, [0],
                                          positive_points_per_mask=2, negative_points_per_mask=3,
                                          negative_method="random", rng=np.random.default_rng(0))
    assert torch.equal(queries[0, 2:, 1:], torch.zeros(3, 2))


def test_non_empty_masks_do_not_warn():
    mask = rectangle_mask(20, 20, rows=(4, 12), cols=(4, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        query_points_from_masks(textured_frame(20, 20)[None], mask[None], [0], rng=np.random.default_rng(0))


def test_seeded_generator_makes_query_points_reproducible():
    height, width = 40, 40
    frames = torch.stack([textured_frame(height, width, seed) for seed in range(2)])
    masks = torch.stack([rectangle_mask(height, width, rows=(3, 30), cols=(5, 35)),
                         rectangle_mask(height, width, rows=(20, 38), cols=(1, 20))])
    kwargs = dict(positive_points_per_mask=8, negative_points_per_mask=8, positive_method="mixed",
                  negative_method="mixed")
    first = query_points_from_masks(frames, masks, [0, 1], rng=np.random.default_rng(42), **kwargs)
    second = query_points_from_masks(frames, masks, [0, 1], rng=np.random.default_rng(42), **kwargs)
    other = query_points_from_masks(frames, masks, [0, 1], rng=np.random.default_rng(43), **kwargs)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_unknown_method_names_the_option_and_the_valid_methods():
    mask = rectangle_mask(10, 10, rows=(2, 8), cols=(2, 8))
    frames = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="negative_method.*kmedoids, shi-tomasi, random, mixed"):
        query_points_from_masks(frames, mask[None], [0], negative_method="harris")
    with pytest.raises(ValueError, match="'grid'.*kmedoids, shi-tomasi, random, mixed"):
        sample_points(mask, 3, "grid")


def test_input_errors_are_clear():
    mask = rectangle_mask(10, 10, rows=(2, 8), cols=(2, 8))
    frames = torch.zeros(2, 3, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs the \\(3, H, W\\) uint8 frame"):
        sample_points(mask, 3, "shi-tomasi")
    with pytest.raises(ValueError, match="query_frames must be integer frame indices in \\[0, 2\\)"):
        query_points_from_masks(frames, mask[None], [2])
    with pytest.raises(ValueError, match="masks must be \\(M, H, W\\)"):
        query_points_from_masks(frames, mask[None, :5], [0])
    with pytest.raises(ValueError, match="one entry per mask"):
        query_points_from_masks(frames, mask[None], [0, 1])
    with pytest.raises(ValueError, match="positive_points_per_mask must be a non-negative integer"):
        query_points_from_masks(frames, mask[None], [0], positive_points_per_mask=-1)

