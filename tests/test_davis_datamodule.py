"""DAVIS 2016 / 2017 data modules, their image helpers and the unpadded distributed sampler.

Trees are written in the official layouts by ``sampt.datamodules.dummy_davis`` (from the shared
real sample, or from synthetic multi-object videos): no download needed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sampt.datamodules.base import UnpaddedDistributedSampler
from sampt.datamodules.davis import D16, D17, parse_sequence_list
from sampt.datamodules.dummy_davis import (convert_davis_sample, synthetic_multi_object_sequence, write_davis_2016,
                                           write_davis_2017)
from sampt.io.png import read_index_png
from sampt.datamodules.io import (longest_side_shape, read_rgb, resize_frames_longest_side,
                                  resize_masks_nearest)
from sampt.errors import DatasetLayoutError
from sampt.video import ObjectQuery, VideoItem, davis_palette

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-sample"
SAMPLE_FRAMES = 3


def _sample_root() -> Path:
    if SAMPLE.is_dir():
        return SAMPLE
    return Path("/work/shared/data/davis-sample")


@pytest.fixture(scope="module")
def sample_trees(tmp_path_factory):
    """The real 2-sequence sample laid out as the DAVIS 2016 release and as a DAVIS 2017 tree."""
    base = tmp_path_factory.mktemp("davis_sample")
    return {
        "2016": convert_davis_sample(_sample_root(), base / "davis2016", layout="2016", max_frames=SAMPLE_FRAMES),
        "2017": convert_davis_sample(_sample_root(), base / "davis2017", layout="2017", max_frames=SAMPLE_FRAMES),
    }


@pytest.fixture(scope="module")
def synthetic():
    """Name -> (frames (T, H, W, 3), masks (T, H, W)); object 3 of each appears after frame 0."""
    return {
        "boxes": synthetic_multi_object_sequence(num_frames=5, height=48, width=64, seed=0, late_object_frame=2),
        "circles": synthetic_multi_object_sequence(num_frames=4, height=48, width=64, seed=1, late_object_frame=1),
    }


def _items(module) -> list[VideoItem]:
    module.setup("test")
    return list(module.test_dataloader())


def _gray_mask(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path).convert("L")) >= 128).astype(np.uint8)


# ----------------------------------------------------------------------------------- real sample

def test_d16_on_the_2016_release_layout_reads_the_real_sample(sample_trees):
    items = _items(D16(str(sample_trees["2016"]), longest_size=1024))
    assert [item.name for item in items] == ["blackswan", "car-shadow"]
    for item in items:
        assert item.frames.dtype == torch.uint8
        assert tuple(item.frames.shape) == (SAMPLE_FRAMES, 3, 576, 1024)  # 854x480 -> longest side 1024
        assert item.output_size == (480, 854)
        assert list(item.frame_names) == ["00000", "00001", "00002"]
        expected = np.stack([_gray_mask(_sample_root() / "Annotations" / "480p" / item.name / f"{n}.png")
                             for n in item.frame_names])
        assert item.ground_truth.dtype == torch.uint8
        assert np.array_equal(item.ground_truth.numpy(), expected)
        assert len(item.objects) == 1
        query = item.objects[0]
        assert (query.object_id, query.query_frame) == (1, 0)
        assert query.output_mask.dtype == torch.bool and np.array_equal(query.output_mask.numpy(), expected[0] == 1)
        assert query.mask.dtype == torch.bool and tuple(query.mask.shape) == (576, 1024)
        nearest = F.interpolate(torch.from_numpy(expected[0]).float()[None, None], (576, 1024), mode="nearest")[0, 0]
        assert torch.equal(query.mask, nearest.bool())
        assert list(item.palette) == davis_palette()
        assert item.meta["dataset"] == "D16" and item.meta["split"] == "val"
        assert item.meta["frame_resolution"] == "480p"
        assert Path(item.meta["frame_dir"]) == sample_trees["2016"] / "JPEGImages" / "480p" / item.name


def test_d16_and_d17_on_the_2017_layout_match_the_2016_release(sample_trees):
    reference = _items(D16(str(sample_trees["2016"]), longest_size=None))
    for module in (D16(str(sample_trees["2017"]), longest_size=None), D17(str(sample_trees["2017"]), longest_size=None)):
        items = _items(module)
        assert [i.name for i in items] == [r.name for r in reference]
        for item, ref in zip(items, reference):
            assert torch.equal(item.frames.to_tensor(), ref.frames.to_tensor())
            assert torch.equal(item.ground_truth, ref.ground_truth)
            assert [(o.object_id, o.query_frame) for o in item.objects] == [(1, 0)]
            assert torch.equal(item.objects[0].mask, ref.objects[0].mask)
            assert item.meta["dataset"] == module.dataset_name


def test_parse_sequence_list_reads_both_formats(tmp_path):
    frame_list = tmp_path / "frames.txt"
    frame_list.write_text("/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\n"
                          "/JPEGImages/480p/bear/00001.jpg /Annotations/480p/bear/00001.png\n\n"
                          "/JPEGImages/480p/cows/00000.jpg /Annotations/480p/cows/00000.png\n")
    names = tmp_path / "names.txt"
    names.write_text("dog\nbike-packing\n")
    assert parse_sequence_list(frame_list) == ["bear", "cows"]
    assert parse_sequence_list(names) == ["dog", "bike-packing"]
    broken = tmp_path / "broken.txt"
    broken.write_text("/Annotations/bear.png\n")
    with pytest.raises(DatasetLayoutError, match="broken.txt:1"):
        parse_sequence_list(broken)


# ------------------------------------------------------------------------------ synthetic D17

def test_d17_multi_object_with_late_object(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", synthetic)
    items = {item.name: item for item in _items(D17(str(root), longest_size=None))}
    assert sorted(items) == ["boxes", "circles"]
    for name, (frames, masks) in synthetic.items():
        item = items[name]
        assert item.output_size == masks.shape[1:]
        assert np.array_equal(item.ground_truth.numpy(), masks)
        assert [o.object_id for o in item.objects] == [1, 2, 3]
        expected_query = {object_id: int(np.argmax((masks == object_id).any(axis=(1, 2))))
                          for object_id in (1, 2, 3)}
        assert expected_query[3] > 0
        for query in item.objects:
            assert query.query_frame == expected_query[query.object_id]
            assert np.array_equal(query.output_mask.numpy(), masks[query.query_frame] == query.object_id)
            assert torch.equal(query.mask, query.output_mask)  # input size = output size here
        for t, frame_name in enumerate(item.frame_names):
            assert torch.equal(item.frames[t], read_rgb(root / "JPEGImages" / "480p" / name / f"{frame_name}.jpg"))
        # JPEG (4:2:0) is lossy on the noisy textures: close to, not equal to, what was written
        error = np.abs(item.frames.to_tensor().permute(0, 2, 3, 1).numpy().astype(int) - frames.astype(int)).mean()
        assert error < 20
        assert error < np.abs(item.frames.to_tensor().permute(0, 2, 3, 1).numpy().astype(int) - frames[::-1].astype(int)).mean()
        assert list(item.palette) == davis_palette()


def test_d16_merges_all_objects_of_a_2017_tree(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", synthetic, splits_2016={"val": ["boxes"]})
    (item,) = _items(D16(str(root), longest_size=None))
    masks = synthetic["boxes"][1]
    assert item.name == "boxes"
    assert np.array_equal(item.ground_truth.numpy(), (masks > 0).astype(np.uint8))
    assert [(o.object_id, o.query_frame) for o in item.objects] == [(1, 0)]
    assert np.array_equal(item.objects[0].output_mask.numpy(), masks[0] > 0)


def test_d17_test_dev_has_first_frame_masks_only(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "test-dev", synthetic, splits={"test-dev": list(synthetic)},
                            first_frame_only=True)
    items = _items(D17(str(root), split="test-dev", longest_size=None))
    assert len(items) == 2
    for item in items:
        masks = synthetic[item.name][1]
        assert item.ground_truth is None
        assert len(item.frame_names) == len(masks)
        assert [(o.object_id, o.query_frame) for o in item.objects] == [(1, 0), (2, 0)]
        assert item.meta["split"] == "test-dev"
    # The parent folder of an extracted test-dev download works as root too.
    (item,) = _items(D17(str(tmp_path), split="test-dev", vid_ids=["boxes"], longest_size=None))
    assert item.name == "boxes"


# ----------------------------------------------------------------------------- input resolution

def _upscaled(synthetic, factor=2):
    return {name: np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)
            for name, (frames, _) in synthetic.items()}


@pytest.mark.parametrize("high_res_dir", ["Full-Resolution", "1080p"])
def test_high_resolution_frames_are_preferred(tmp_path, synthetic, caplog, high_res_dir):
    root = write_davis_2017(tmp_path / "d17", synthetic, full_resolution_frames=_upscaled(synthetic),
                            full_resolution_dir=high_res_dir)
    # Shift one high-resolution annotation so that it differs from the upsampled 480p one: the
    # query mask must come from the frames' own resolution, as SAM-PT reads it.
    shifted = root / "Annotations" / high_res_dir / "boxes" / "00000.png"
    indices = read_index_png(shifted)
    image = Image.fromarray(np.roll(indices, 3, axis=1), mode="P")
    image.putpalette(davis_palette())
    image.save(shifted)
    with caplog.at_level(logging.WARNING, logger="sampt.datamodules.davis"):
        items = _items(D17(str(root), longest_size=None))
    assert not [r for r in caplog.records if "480p" in r.getMessage()]
    for item in items:
        masks = synthetic[item.name][1]
        height, width = masks.shape[1:]
        assert item.meta["frame_resolution"] == high_res_dir
        assert Path(item.meta["frame_dir"]) == root / "JPEGImages" / high_res_dir / item.name
        assert tuple(item.frames.shape[-2:]) == (2 * height, 2 * width)
        assert item.output_size == (height, width)
        assert tuple(item.ground_truth.shape[-2:]) == (height, width)
        for query in item.objects:
            on_disk = torch.from_numpy(read_index_png(root / "Annotations" / high_res_dir / item.name /
                                                      f"{item.frame_names[query.query_frame]:s}.png"))
            assert torch.equal(query.mask, on_disk == query.object_id)
            assert tuple(query.output_mask.shape) == (height, width)
            upsampled = resize_masks_nearest(query.output_mask, (2 * height, 2 * width))
            assert torch.equal(query.mask, upsampled) == (item.name != "boxes" or query.query_frame != 0)


def test_d16_release_with_1080p_frames(tmp_path, synthetic):
    frames, masks = synthetic["boxes"]
    root = write_davis_2016(tmp_path / "davis2016", {"boxes": (frames, masks)},
                            frames_1080p=_upscaled({"boxes": synthetic["boxes"]}, 2))
    assert (root / "ImageSets" / "480p" / "val.txt").read_text().splitlines()[0] == \
        "/JPEGImages/480p/boxes/00000.jpg /Annotations/480p/boxes/00000.png"
    (item,) = _items(D16(str(root), longest_size=64))
    assert item.meta["frame_resolution"] == "1080p"
    assert tuple(item.frames.shape[-2:]) == (48, 64)  # 96x128 frames, longest side 64
    assert np.array_equal(item.ground_truth.numpy(), (masks > 0).astype(np.uint8))
    high_res = torch.from_numpy(_gray_mask(root / "Annotations" / "1080p" / "boxes" / "00000.png"))
    assert torch.equal(item.objects[0].mask, resize_masks_nearest(high_res.bool(), (48, 64)))


def test_full_resolution_wins_over_1080p(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", synthetic, full_resolution_frames=_upscaled(synthetic, 2),
                            full_resolution_dir="1080p")
    write_davis_2017(root, synthetic, full_resolution_frames=_upscaled(synthetic, 3))
    item = D17(str(root), longest_size=None, vid_ids=["boxes"]).dataset[0]
    assert item.meta["frame_resolution"] == "Full-Resolution"
    assert tuple(item.frames.shape[-2:]) == (144, 192)


def test_480p_fallback_warns_once_per_data_module(sample_trees, caplog):
    module = D17(str(sample_trees["2017"]), longest_size=64)
    with caplog.at_level(logging.WARNING, logger="sampt.datamodules.davis"):
        module.setup("test")
        module.setup("predict")
        list(module.test_dataloader())
        module.video_lengths()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "480p" in warnings[0].getMessage() and "Full-Resolution" in warnings[0].getMessage()


def test_longest_size_matches_segment_anything_resize(sample_trees):
    from segment_anything.utils.transforms import ResizeLongestSide

    item = D16(str(sample_trees["2016"]), longest_size=200, vid_ids=["car-shadow"]).dataset[0]
    assert tuple(item.frames.shape) == (SAMPLE_FRAMES, 3, 112, 200)  # int(480 * 200 / 854 + 0.5) = 112
    for t, name in enumerate(item.frame_names):
        frame = np.asarray(Image.open(_sample_root() / "JPEGImages" / "480p" / "car-shadow" / f"{name}.jpg")
                           .convert("RGB"))
        expected = ResizeLongestSide(200).apply_image(frame)
        assert np.array_equal(item.frames[t].permute(1, 2, 0).numpy(), expected)
    assert tuple(item.objects[0].mask.shape) == (112, 200)
    assert item.output_size == (480, 854)

    original = D16(str(sample_trees["2016"]), longest_size=None, vid_ids=["car-shadow"]).dataset[0]
    assert tuple(original.frames.shape) == (SAMPLE_FRAMES, 3, 480, 854)
    assert torch.equal(original.frames[1], read_rgb(_sample_root() / "JPEGImages" / "480p" / "car-shadow" / "00001.jpg"))
    assert torch.equal(original.objects[0].mask, original.objects[0].output_mask)


def test_quick_run_options(sample_trees):
    root = str(sample_trees["2017"])
    assert [i.name for i in _items(D17(root, vid_ids=["car-shadow"], longest_size=None))] == ["car-shadow"]
    assert [i.name for i in _items(D17(root, max_videos=1, longest_size=None))] == ["blackswan"]
    module = D17(root, max_frames=2, longest_size=None)
    items = _items(module)
    assert module.video_lengths() == [2, 2]
    for item in items:
        assert item.num_frames == 2 and len(item.frame_names) == 2
        assert tuple(item.ground_truth.shape) == (2, 480, 854)
    full = D17(root, longest_size=None)
    full.setup()
    assert full.video_lengths() == [SAMPLE_FRAMES, SAMPLE_FRAMES]


def test_options_are_readable_by_jsonargparse(sample_trees):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(D17, "data")
    config = parser.parse_string(f"data:\n  root: {sample_trees['2017']}\n  split: val\n  longest_size: null\n"
                                 f"  vid_ids: [blackswan]\n  max_frames: 2\n")
    module = parser.instantiate(config).data
    assert isinstance(module, D17)
    assert module.longest_size is None and module.vid_ids == ["blackswan"] and module.max_frames == 2


# -------------------------------------------------------------------------------------- errors

def test_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "no-such-davis"
    with pytest.raises(DatasetLayoutError) as info:
        D17(str(missing)).setup()
    assert str(missing) in str(info.value)
    assert "ImageSets/2017/<split>.txt" in str(info.value) and "Annotations/480p" in str(info.value)
    with pytest.raises(DatasetLayoutError, match="ImageSets/480p"):
        D16(str(missing)).setup()


def test_missing_split_file_names_path_and_available_splits(sample_trees):
    with pytest.raises(DatasetLayoutError) as info:
        D17(str(sample_trees["2017"]), split="test-dev").setup()
    message = str(info.value)
    assert str(sample_trees["2017"] / "ImageSets" / "2017" / "test-dev.txt") in message
    assert "ImageSets/2017/val.txt" in message  # what is there
    assert "JPEGImages/480p/<sequence>" in message  # the expected tree


def test_unknown_vid_id_lists_valid_names(sample_trees):
    with pytest.raises(DatasetLayoutError) as info:
        D17(str(sample_trees["2017"]), vid_ids=["blackswan", "no-such-video"]).setup()
    assert "no-such-video" in str(info.value) and "car-shadow" in str(info.value)


def test_invalid_options_raise_value_error(sample_trees):
    for options in ({"max_frames": 0}, {"max_videos": -1}, {"longest_size": 0}):
        with pytest.raises(ValueError, match=next(iter(options))):
            D17(str(sample_trees["2017"]), **options)


def test_annotation_size_mismatch_names_the_file(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", {"boxes": synthetic["boxes"]})
    bad = root / "Annotations" / "480p" / "boxes" / "00002.png"
    Image.fromarray(np.zeros((40, 64), np.uint8), mode="P").save(bad)
    with pytest.raises(DatasetLayoutError, match="00002.png"):
        D17(str(root), longest_size=None).dataset[0]


def test_frame_and_annotation_size_mismatch_names_the_files(tmp_path, synthetic):
    frames, masks = synthetic["boxes"]
    root = write_davis_2017(tmp_path / "d17", {"boxes": (frames, masks)})
    for t in range(len(masks)):
        smaller = Image.fromarray(masks[t, :40], mode="P")
        smaller.save(root / "Annotations" / "480p" / "boxes" / f"{t:05d}.png")
    with pytest.raises(DatasetLayoutError) as info:
        D17(str(root), longest_size=None).dataset[0]
    assert "00000.png" in str(info.value) and "00000.jpg" in str(info.value)


def test_frames_of_different_sizes_name_the_file(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", {"boxes": synthetic["boxes"]})
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "JPEGImages" / "480p" / "boxes" / "00003.jpg")
    with pytest.raises(DatasetLayoutError, match="00003.jpg"):
        D17(str(root), longest_size=None).dataset[0]


@pytest.mark.parametrize("corrupt", ["JPEGImages/480p/boxes/00001.jpg", "Annotations/480p/boxes/00001.png"])
def test_corrupt_image_names_the_file(tmp_path, synthetic, corrupt):
    root = write_davis_2017(tmp_path / "d17", {"boxes": synthetic["boxes"]})
    (root / corrupt).write_bytes(b"this is not an image")
    with pytest.raises(DatasetLayoutError) as info:
        D17(str(root), longest_size=None).dataset[0]
    assert str(root / corrupt) in str(info.value)


def test_truncated_jpeg_names_the_file(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", {"boxes": synthetic["boxes"]})
    frame = root / "JPEGImages" / "480p" / "boxes" / "00000.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    with pytest.raises(DatasetLayoutError, match="00000.jpg"):
        D17(str(root), longest_size=None).dataset[0]


def test_missing_frame_folder_is_reported_at_setup(tmp_path, synthetic):
    root = write_davis_2017(tmp_path / "d17", {"boxes": synthetic["boxes"]}, splits={"val": ["boxes", "ghost"]})
    with pytest.raises(DatasetLayoutError, match="ghost"):
        D17(str(root)).setup()


# ----------------------------------------------------------------------------------- io helpers

def test_resize_helpers():
    assert longest_side_shape(480, 854, 1024) == (576, 1024)
    assert longest_side_shape(1080, 1920, 1024) == (576, 1024)
    assert longest_side_shape(854, 480, 100) == (100, 56)
    assert longest_side_shape(480, 854, None) == (480, 854)
    masks = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8)
    up = resize_masks_nearest(masks, (4, 4))
    assert up.dtype == torch.uint8 and up.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]
    assert resize_masks_nearest(masks[0] > 1, (4, 2)).tolist() == [[False, False], [False, False],
                                                                    [True, True], [True, True]]
    frames = torch.randint(0, 256, (2, 3, 10, 20), dtype=torch.uint8)
    resized = resize_frames_longest_side(frames, 10)
    assert resized.dtype == torch.uint8 and tuple(resized.shape) == (2, 3, 5, 10)
    assert resize_frames_longest_side(frames, None) is frames


# ------------------------------------------------------------------------- distributed sampling

@pytest.mark.parametrize("num_items", [1, 4, 5, 7])
def test_unpadded_sampler_gives_every_index_exactly_once(num_items):
    ranks = [list(UnpaddedDistributedSampler(num_items, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(num_items))
    assert abs(len(ranks[0]) - len(ranks[1])) <= 1
    assert [len(UnpaddedDistributedSampler(num_items, num_replicas=2, rank=r)) for r in range(2)] == \
        [len(r) for r in ranks]


def test_unpadded_sampler_balances_lengths():
    # Round robin would give rank 0 videos 0, 2, 4, 6 (210 frames) and rank 1 only 35 frames.
    lengths = [100, 10, 10, 10, 10, 10, 90, 5]
    ranks = [list(UnpaddedDistributedSampler(len(lengths), num_replicas=2, rank=r, lengths=lengths))
             for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in rank) for rank in ranks]
    assert abs(loads[0] - loads[1]) <= 10
    assert (0 in ranks[0]) != (6 in ranks[0])  # the two long videos go to different ranks


def test_data_module_lengths_split_videos_across_two_ranks(tmp_path, synthetic):
    sequences = {f"video{i}": synthetic_multi_object_sequence(num_frames=2 + i, height=16, width=16, seed=i,
                                                              late_object_frame=1) for i in range(3)}
    module = D17(str(write_davis_2017(tmp_path / "d17", sequences)), longest_size=None)
    module.setup()
    lengths = module.video_lengths()
    assert lengths == [2, 3, 4]
    ranks = [list(UnpaddedDistributedSampler(len(module.dataset), 2, r, lengths=lengths)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == [0, 1, 2]
    names = [module.dataset[i].name for r in ranks for i in r]
    assert sorted(names) == sorted(sequences)


# -------------------------------------------------------------------------------- data loading

@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_yields_video_items(tmp_path, synthetic, num_workers):
    module = D17(str(write_davis_2017(tmp_path / "d17", synthetic)), longest_size=32, num_workers=num_workers)
    module.setup("predict")
    items = list(module.predict_dataloader())
    assert [type(item) for item in items] == [VideoItem, VideoItem]
    for item in items:
        assert item.frames.dtype == torch.uint8 and item.frames.shape[1:] == (3, 24, 32)
        assert all(isinstance(o, ObjectQuery) and o.mask.shape == (24, 32) for o in item.objects)
        assert item.output_size == (48, 64)
