"""YouTube-VOS 2018, MOSE and generic data modules on tiny synthetic trees; the query-points parser."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sampt.datamodules.dummy_ytvos import synthetic_video, write_mose, write_youtube_vos
from sampt.datamodules.generic import Generic, natural_sort_key, parse_query_points_file
from sampt.datamodules.mose import MOSE
from sampt.datamodules.ytvos import Y18
from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.overlay import write_mp4
from sampt.video import VideoItem, davis_palette
from sampt.writers import write_index_png

HEIGHT, WIDTH = 24, 40


@pytest.fixture(scope="module")
def ytvos_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ytvos")
    # Frame names start at 00005 (not zero-based); ids 2 and 5 (non-contiguous); 5 appears at frame 5.
    frames_a, masks_a = synthetic_video(12, HEIGHT, WIDTH, appear={2: 0, 5: 5}, seed=1)
    # Object 3 appears on frame 3, which is not annotated: its first annotation is frame 5.
    frames_b, masks_b = synthetic_video(7, HEIGHT, WIDTH, appear={1: 0, 3: 3}, seed=2)
    videos = {
        "vidA": {"frames": frames_a, "masks": masks_a, "frame_names": [f"{5 + t:05d}" for t in range(12)],
                 "categories": {2: "duck", 5: "person"}},
        "vidB": {"frames": frames_b, "masks": masks_b},
    }
    write_youtube_vos(root, videos)
    return root, videos


def test_dummy_ytvos_layout_matches_the_real_one(ytvos_root):
    root, _ = ytvos_root
    meta = json.loads((root / "valid" / "meta.json").read_text())
    assert meta["videos"]["vidA"]["objects"]["5"] == {"category": "person", "frames": ["00010", "00015"]}
    assert meta["videos"]["vidA"]["objects"]["2"]["frames"] == ["00005", "00010", "00015"]
    assert sorted(p.name for p in (root / "valid" / "JPEGImages" / "vidA").iterdir()) == \
        ["00005.jpg", "00010.jpg", "00015.jpg"]
    assert len(list((root / "all_frames" / "valid_all_frames" / "JPEGImages" / "vidA").iterdir())) == 12
    # Query PNGs only where an object first appears, holding only the new object.
    assert sorted(p.name for p in (root / "valid" / "Annotations" / "vidA").iterdir()) == ["00005.png", "00010.png"]
    later = np.asarray(Image.open(root / "valid" / "Annotations" / "vidA" / "00010.png"))
    assert set(np.unique(later).tolist()) == {0, 5}


def test_y18_items(ytvos_root):
    root, videos = ytvos_root
    module = Y18(str(root), longest_size=64)
    module.setup("predict")
    assert module.dataset.video_names == ["vidA", "vidB"]
    assert module.video_lengths() == [12, 7]
    item = module.dataset[0]
    assert isinstance(item, VideoItem)
    assert item.name == "vidA"
    assert item.frame_names == [f"{5 + t:05d}" for t in range(12)]
    assert item.frames.shape == (12, 3, 38, 64) and item.frames.dtype == torch.uint8
    assert item.output_size == (HEIGHT, WIDTH)
    assert item.ground_truth is None
    assert item.palette[:768] == davis_palette()
    assert item.save_frames == ["00005", "00010", "00015"]
    masks = videos["vidA"]["masks"]
    assert [(o.object_id, o.query_frame) for o in item.objects] == [(2, 0), (5, 5)]
    for obj in item.objects:
        assert obj.mask.shape == (38, 64) and obj.mask.dtype == torch.bool
        np.testing.assert_array_equal(obj.output_mask.numpy(), masks[obj.query_frame] == obj.object_id)
        assert obj.points is None

    item_b = module.dataset[1]
    assert item_b.frame_names[0] == "00000"
    # Object 3 is present from frame 3 but annotated first on frame 5.
    assert [(o.object_id, o.query_frame) for o in item_b.objects] == [(1, 0), (3, 5)]
    assert item_b.save_frames == ["00000", "00005"]


def test_y18_frames_are_all_frames_at_original_size(ytvos_root):
    root, videos = ytvos_root
    item = Y18(str(root), longest_size=None, vid_ids=["vidA"]).dataset[0]
    assert item.frames.shape == (12, 3, HEIGHT, WIDTH)
    original = torch.from_numpy(videos["vidA"]["frames"]).permute(0, 3, 1, 2).float()
    assert (item.frames.to_tensor().float() - original).abs().mean() < 4  # JPEG round trip
    # The query mask at input size is the annotation itself when nothing is resized.
    np.testing.assert_array_equal(item.objects[1].mask.numpy(), videos["vidA"]["masks"][5] == 5)


def test_y18_options(ytvos_root):
    root, _ = ytvos_root
    assert Y18(str(root), save_all=True).dataset[0].save_frames is None
    short = Y18(str(root), max_frames=4, vid_ids=["vidA"], longest_size=None)
    item = short.dataset[0]
    assert len(item.frame_names) == 4 and item.frames.shape[0] == 4
    assert [o.object_id for o in item.objects] == [2]  # object 5 appears after the kept frames
    assert item.save_frames == ["00005"]
    assert Y18(str(root), max_videos=1).dataset.video_names == ["vidA"]
    assert Y18(str(root), vid_ids=["vidB"]).dataset.video_names == ["vidB"]
    with pytest.raises(DatasetLayoutError, match="nope"):
        Y18(str(root), vid_ids=["nope"]).setup()
    with pytest.raises(ValueError, match="max_frames"):
        Y18(str(root), max_frames=0)


def test_y18_dataloader_yields_items(ytvos_root):
    root, _ = ytvos_root
    module = Y18(str(root), longest_size=32)
    module.setup("predict")
    names = [item.name for item in module.predict_dataloader()]
    assert names == ["vidA", "vidB"]


def test_y18_layout_errors(tmp_path, ytvos_root):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        Y18(str(tmp_path / "missing")).setup()
    (tmp_path / "valid" / "Annotations").mkdir(parents=True)
    (tmp_path / "all_frames" / "valid_all_frames" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="meta.json"):
        Y18(str(tmp_path)).setup()
    (tmp_path / "valid" / "meta.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="meta.json"):
        Y18(str(tmp_path)).setup()


@pytest.fixture(scope="module")
def mose_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mose")
    frames, masks = synthetic_video(6, HEIGHT, WIDTH, appear={1: 0, 4: 3}, seed=3)
    videos = {"m1": {"frames": frames, "masks": masks}}
    write_mose(root, "train", videos)
    write_mose(root, "valid", videos)
    return root, videos


def test_mose_train_has_ground_truth(mose_root):
    root, videos = mose_root
    item = MOSE(str(root), split="train", longest_size=80).dataset[0]
    masks = videos["m1"]["masks"]
    assert item.ground_truth is not None and item.ground_truth.dtype == torch.uint8
    np.testing.assert_array_equal(item.ground_truth.numpy(), masks)
    assert [(o.object_id, o.query_frame) for o in item.objects] == [(1, 0), (4, 3)]
    assert item.frames.shape == (6, 3, 48, 80)
    assert item.output_size == (HEIGHT, WIDTH)
    assert item.save_frames is None


def test_mose_valid_first_appearance(mose_root):
    root, videos = mose_root
    assert sorted(p.name for p in (root / "valid" / "Annotations" / "m1").iterdir()) == ["00000.png", "00003.png"]
    item = MOSE(str(root), split="val").dataset[0]  # "val" is accepted as SAM-PT does
    assert item.ground_truth is None
    assert [(o.object_id, o.query_frame) for o in item.objects] == [(1, 0), (4, 3)]
    np.testing.assert_array_equal(item.objects[1].output_mask.numpy(), videos["m1"]["masks"][3] == 4)
    with pytest.raises(ValueError, match="split"):
        MOSE(str(root), split="test")


def test_mose_train_requires_dense_annotations(tmp_path):
    frames, masks = synthetic_video(3, HEIGHT, WIDTH, seed=4)
    write_mose(tmp_path, "train", {"m": {"frames": frames, "masks": masks}})
    (tmp_path / "train" / "Annotations" / "m" / "00001.png").unlink()
    with pytest.raises(DatasetLayoutError, match="00001.png"):
        MOSE(str(tmp_path), split="train").dataset[0]


# ------------------------------------------------------------------------------------------------
# Query-points parser

def test_parse_query_points_good(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("\n  2  \n\n0 ; 10,20 30.5,40   5,6\n 4;1,2  3 , 4 7,8\n\n")
    num_positive, objects = parse_query_points_file(path)
    assert num_positive == 2
    assert [t for t, _ in objects] == [0, 4]
    np.testing.assert_array_equal(objects[0][1], np.array([[10, 20], [30.5, 40], [5, 6]], np.float32))
    np.testing.assert_array_equal(objects[1][1], np.array([[1, 2], [3, 4], [7, 8]], np.float32))
    assert objects[0][1].dtype == np.float32


@pytest.mark.parametrize("content, line", [
    ("x\n0 ; 1,2\n", 1),
    ("0\n0 ; 1,2\n", 1),
    ("1\n0 ; 1,2\n\n2 : 3,4\n", 4),
    ("1\n0 ; 1,2\n-1 ; 3,4\n", 3),
    ("1\n0 ; 1,2\n1.5 ; 3,4\n", 3),
    ("1\n0 ; 1,2,3\n", 2),
    ("1\n0 ; 1;2\n", 2),
    ("1\n0 ; a,2\n", 2),
    ("1\n0 ; nan,2\n", 2),
    ("2\n0 ; 1,2\n", 2),
    ("1\n0 ; 1,2 3,4\n1 ; 1,2\n", 3),
    ("1\n0 ;\n", 2),
])
def test_parse_query_points_malformed_names_line(tmp_path, content, line):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InputFormatError, match=rf"bad\.txt, line {line}:"):
        parse_query_points_file(path)


def test_parse_query_points_empty_and_missing(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputFormatError, match="empty"):
        parse_query_points_file(tmp_path / "empty.txt")
    (tmp_path / "no_objects.txt").write_text("3\n")
    with pytest.raises(InputFormatError, match="no object"):
        parse_query_points_file(tmp_path / "no_objects.txt")
    with pytest.raises(DatasetLayoutError, match="missing.txt"):
        parse_query_points_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------
# Generic

def _write_frame_folder(folder, frames, names, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        Image.fromarray(frame).save(folder / f"{name}{suffix}")


def test_natural_sort():
    names = ["10.png", "2.png", "1.png", "frame_11.jpg", "frame_9.jpg"]
    assert sorted(names, key=natural_sort_key) == ["1.png", "2.png", "10.png", "frame_9.jpg", "frame_11.jpg"]


def test_generic_folder_with_masks(tmp_path):
    frames, masks = synthetic_video(11, HEIGHT, WIDTH, appear={3: 0, 7: 2}, seed=5)
    names = [str(t) for t in range(11)]  # 0..10: lexical order would put 10 after 1
    _write_frame_folder(tmp_path / "clip", frames, names)
    write_index_png(tmp_path / "masks" / "0.png", np.where(masks[0] == 3, 3, 0).astype(np.uint8))
    write_index_png(tmp_path / "masks" / "2.png", np.where(masks[2] == 7, 7, 0).astype(np.uint8))
    module = Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks"), longest_size=20)
    module.setup("predict")
    assert module.dataset.video_names == ["clip"]
    item = module.dataset[0]
    assert item.frame_names == names
    assert item.frames.shape == (11, 3, 12, 20)
    assert item.output_size == (HEIGHT, WIDTH)
    assert [(o.object_id, o.query_frame) for o in item.objects] == [(3, 0), (7, 2)]
    np.testing.assert_array_equal(item.objects[1].output_mask.numpy(), masks[2] == 7)
    assert item.objects[1].mask.shape == (12, 20)

    # PNG frames are lossless: at original size the frames are exactly the written ones, in order.
    full = Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks"), longest_size=None).dataset[0]
    np.testing.assert_array_equal(full.frames.to_tensor().permute(0, 2, 3, 1).numpy(), frames)

    # Stride 2: frames 0, 2, 4, ...; the mask of frame 2 is now frame index 1.
    strided = Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks"), frame_stride=2, max_frames=3,
                      longest_size=None, name="mine").dataset[0]
    assert strided.name == "mine"
    assert strided.frame_names == ["0", "2", "4"]
    assert [(o.object_id, o.query_frame) for o in strided.objects] == [(3, 0), (7, 1)]


def test_generic_mask_errors(tmp_path):
    frames, masks = synthetic_video(2, HEIGHT, WIDTH, seed=6)
    _write_frame_folder(tmp_path / "clip", frames, ["a", "b"], suffix=".jpg")
    write_index_png(tmp_path / "masks" / "a.png", np.zeros((HEIGHT + 1, WIDTH), np.uint8) + 1)
    with pytest.raises(InputFormatError, match="a.png"):
        Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks")).dataset[0]
    write_index_png(tmp_path / "masks" / "a.png", masks[0])
    write_index_png(tmp_path / "masks" / "zzz.png", masks[0])
    with pytest.raises(InputFormatError, match="zzz.png"):
        Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks")).dataset[0]
    with pytest.raises(ValueError, match="exactly one"):
        Generic(str(tmp_path / "clip"))
    with pytest.raises(ValueError, match="exactly one"):
        Generic(str(tmp_path / "clip"), query_masks="m", query_points="p")
    with pytest.raises(DatasetLayoutError, match="nothing_here"):
        Generic(str(tmp_path / "nothing_here"), query_masks=str(tmp_path / "masks")).setup()


def test_generic_grayscale_mask_is_object_1(tmp_path):
    frames, masks = synthetic_video(2, HEIGHT, WIDTH, seed=7)
    _write_frame_folder(tmp_path / "clip", frames, ["00000", "00001"])
    (tmp_path / "masks").mkdir()
    Image.fromarray(((masks[0] > 0) * 255).astype(np.uint8), mode="L").save(tmp_path / "masks" / "00000.png")
    item = Generic(str(tmp_path / "clip"), query_masks=str(tmp_path / "masks")).dataset[0]
    assert [o.object_id for o in item.objects] == [1]
    np.testing.assert_array_equal(item.objects[0].output_mask.numpy(), masks[0] > 0)


def test_generic_points_scaled_to_input(tmp_path):
    frames, _ = synthetic_video(6, HEIGHT, WIDTH, seed=8)
    _write_frame_folder(tmp_path / "clip", frames, [f"{t:03d}" for t in range(6)])
    (tmp_path / "q.txt").write_text("1\n0 ; 10,20 30,4\n4 ; 20,12 0,0\n")
    module = Generic(str(tmp_path / "clip"), query_points=str(tmp_path / "q.txt"), longest_size=80, frame_stride=2)
    item = module.dataset[0]
    assert item.frames.shape == (3, 3, 48, 80)
    assert item.output_size == (HEIGHT, WIDTH)
    assert [(o.object_id, o.query_frame, o.num_positive) for o in item.objects] == [(1, 0, 1), (2, 2, 1)]
    for obj in item.objects:
        assert obj.mask is None and obj.points.dtype == torch.float32
    torch.testing.assert_close(item.objects[0].points, torch.tensor([[20.0, 40.0], [60.0, 8.0]]))
    torch.testing.assert_close(item.objects[1].points, torch.tensor([[40.0, 24.0], [0.0, 0.0]]))

    (tmp_path / "odd.txt").write_text("1\n3 ; 1,1\n")
    with pytest.raises(InputFormatError, match="line 2.*frame_stride"):
        Generic(str(tmp_path / "clip"), query_points=str(tmp_path / "odd.txt"), frame_stride=2).dataset[0]
    (tmp_path / "late.txt").write_text("1\n\n5 ; 1,1\n")
    with pytest.raises(InputFormatError, match="line 3.*max_frames"):
        Generic(str(tmp_path / "clip"), query_points=str(tmp_path / "late.txt"), max_frames=4).dataset[0]
    (tmp_path / "outside.txt").write_text("1\n0 ; 41,1\n")
    with pytest.raises(InputFormatError, match="line 2.*outside"):
        Generic(str(tmp_path / "clip"), query_points=str(tmp_path / "outside.txt")).dataset[0]


def test_generic_video_file_stride_and_max_frames(tmp_path):
    # Frame t is a flat grey of value 20 * t: the decoded frames say which source frames were kept.
    images = [np.full((40, 64, 3), 20 * t, np.uint8) for t in range(9)]
    video = tmp_path / "clip.mp4"
    write_mp4(video, images, fps=10)
    (tmp_path / "q.txt").write_text("1\n4 ; 32,20\n")
    module = Generic(str(video), query_points=str(tmp_path / "q.txt"), longest_size=32, frame_stride=2,
                     max_frames=3)
    module.setup("predict")
    assert module.dataset.video_names == ["clip"]
    item = module.dataset[0]
    assert item.frame_names == ["00000", "00002", "00004"]
    assert item.meta["source_frame_indices"] == [0, 2, 4]
    assert item.frames.shape == (3, 3, 20, 32)
    assert item.output_size == (40, 64)
    means = item.frames.to_tensor().float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor([0.0, 40.0, 80.0]), atol=4.0, rtol=0)
    assert item.objects[0].query_frame == 2
    torch.testing.assert_close(item.objects[0].points, torch.tensor([[16.0, 10.0]]))

    everything = Generic(str(video), query_points=str(tmp_path / "q.txt"), longest_size=None).dataset[0]
    assert everything.frames.shape == (9, 3, 40, 64)
    assert everything.frame_names[-1] == "00008"

    (tmp_path / "not_a_video.mp4").write_bytes(b"garbage")
    with pytest.raises(InputFormatError, match="not_a_video.mp4"):
        Generic(str(tmp_path / "not_a_video.mp4"), query_points=str(tmp_path / "q.txt")).setup()
