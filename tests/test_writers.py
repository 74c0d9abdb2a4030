"""Output writers (PNGs, completion markers, server zips, trajectories) and overlays."""
from __future__ import annotations

import csv
import io
import os
import zipfile

import av
import numpy as np
import pytest
import torch
from PIL import Image

from sampt.overlay import (iter_overlay_video, overlay_strip, render_overlay, render_overlay_video, write_gif,
                           write_mp4, write_png)
from sampt.video import davis_palette
from sampt.visibility import VisibilityReason
from sampt.writers import (
    COMPLETION_MARKER,
    REASON_NAMES,
    atomic_open,
    save_config,
    sequence_is_complete,
    write_binary_png,
    write_index_png,
    write_object_pngs,
    write_sequence_pngs,
    write_trajectories,
    zip_annotations,
)


def _temp_leftovers(folder) -> list[str]:
    return [name for root, _, files in os.walk(folder) for name in files if name.endswith(".tmp")]


def _custom_palette() -> list[int]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=768).tolist()


def _random_index_masks(num_frames=3, height=6, width=7, ids=(0, 2, 5)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.choice(np.array(ids, dtype=np.uint8), size=(num_frames, height, width))


def test_index_png_round_trip_keeps_values_and_palette(tmp_path):
    mask = _random_index_masks()[0]
    palette = _custom_palette()
    path = tmp_path / "sub" / "00000.png"
    write_index_png(path, torch.from_numpy(mask), palette)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:768] == palette
        np.testing.assert_array_equal(np.asarray(image), mask)
    assert _temp_leftovers(tmp_path) == []
    # Files get ordinary permissions, not mkstemp's private 0600.
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_index_png_rejects_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_index_png(tmp_path / "x.png", np.zeros((4, 4), np.int32))


def test_binary_png_is_grayscale_0_255(tmp_path):
    mask = np.array([[0, 1], [1, 0]], bool)
    write_binary_png(tmp_path / "b.png", mask)
    with Image.open(tmp_path / "b.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), mask * 255)


def test_atomic_open_leaves_destination_untouched_on_error(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(path, "old: 1\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("new: 2\n")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old: 1\n"
    assert _temp_leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_sequence_pngs_marker_and_resume(tmp_path):
    names = ["00005", "00010", "00015"]
    masks = _random_index_masks()
    written = write_sequence_pngs(tmp_path, "vid", names, masks, davis_palette())
    assert [p.name for p in written] == [f"{n}.png" for n in names]
    assert (tmp_path / "vid" / COMPLETION_MARKER).is_file()
    assert sequence_is_complete(tmp_path, "vid", names)
    # Other expected frames (e.g. save_all changed) or a lost PNG => recompute.
    assert not sequence_is_complete(tmp_path, "vid", names[:2])
    (tmp_path / "vid" / "00010.png").unlink()
    assert not sequence_is_complete(tmp_path, "vid", names)
    assert not sequence_is_complete(tmp_path, "other", names)


def test_partial_sequence_is_not_complete(tmp_path):
    names = ["a", "b", "c"]
    masks = _random_index_masks()
    write_sequence_pngs(tmp_path, "vid", names, masks)

    # A rerun that dies after the first PNG: the old marker must not vouch for the new frames.
    class Boom(Exception):
        pass

    import sampt.writers as writers
    original = writers.write_index_png
    calls = []

    def failing(path, mask, palette=None):
        calls.append(path)
        if len(calls) == 2:
            raise Boom()
        original(path, mask, palette)

    writers.write_index_png = failing
    try:
        with pytest.raises(Boom):
            write_sequence_pngs(tmp_path, "vid", names, masks)
    finally:
        writers.write_index_png = original
    assert not sequence_is_complete(tmp_path, "vid", names)


def test_save_frames_subset_and_unknown_name(tmp_path):
    names = ["00000", "00001", "00002"]
    masks = _random_index_masks()
    write_sequence_pngs(tmp_path, "v", names, masks, save_frames=["00002", "00000"])
    assert sorted(p.name for p in (tmp_path / "v").glob("*.png")) == ["00000.png", "00002.png"]
    assert sequence_is_complete(tmp_path, "v", ["00000", "00002"])
    with pytest.raises(ValueError, match="00009"):
        write_sequence_pngs(tmp_path, "v", names, masks, save_frames=["00009"])


def test_zip_members_and_palettes(tmp_path):
    palette = _custom_palette()
    masks = _random_index_masks()
    write_sequence_pngs(tmp_path / "Annotations", "vidA", ["00000", "00005", "00010"], masks, palette)
    write_sequence_pngs(tmp_path / "Annotations", "vidB", ["00003"], masks[:1], palette)
    zip_path = tmp_path / "submission.zip"
    members = zip_annotations(tmp_path, zip_path)
    expected = ["Annotations/vidA/00000.png", "Annotations/vidA/00005.png", "Annotations/vidA/00010.png",
                "Annotations/vidB/00003.png"]
    assert members == expected
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == expected  # no markers, no folder prefix above Annotations/
        with Image.open(io.BytesIO(archive.read("Annotations/vidA/00005.png"))) as image:
            assert image.mode == "P"
            assert image.getpalette()[:768] == palette
            np.testing.assert_array_equal(np.asarray(image), masks[1])
    # Deterministic: the same PNGs give the same bytes (DDP vs. one process).
    first = zip_path.read_bytes()
    zip_annotations(tmp_path / "Annotations", tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == first
    assert _temp_leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="Annotations"):
        zip_annotations(tmp_path / "vidA_missing", tmp_path / "x.zip")


def test_object_pngs(tmp_path):
    masks = _random_index_masks()
    write_object_pngs(tmp_path, "v", ["a", "b", "c"], masks, [2, 5])
    with Image.open(tmp_path / "v" / "5" / "b.png") as image:
        np.testing.assert_array_equal(np.asarray(image), (masks[1] == 5) * 255)


def test_trajectories_npz_and_csv(tmp_path):
    rng = np.random.default_rng(3)
    trajectories = rng.uniform(0, 50, size=(2, 2, 3, 2)).astype(np.float32)
    trajectories[:, 1, 2] = np.nan  # object 2 has only two points
    visibilities = rng.uniform(size=(2, 2, 3)) > 0.5
    reasons = np.where(visibilities, 0, 3).astype(np.int8)
    write_trajectories(tmp_path / "t.npz", tmp_path / "t.csv", torch.from_numpy(trajectories),
                       torch.from_numpy(visibilities), [4, 9], reasons, frame_names=["f0", "f1"])
    data = np.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(data["trajectories"], trajectories)
    np.testing.assert_array_equal(data["visibilities"], visibilities)
    np.testing.assert_array_equal(data["object_ids"], [4, 9])
    np.testing.assert_array_equal(data["reasons"], reasons)
    assert list(data["frame_names"]) == ["f0", "f1"]
    assert list(data["reason_names"]) == list(REASON_NAMES)

    with open(tmp_path / "t.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == ["frame", "object", "point", "x", "y", "visible", "reason"]
    assert len(rows) == 2 * (3 + 2)  # NaN padding skipped
    for row in rows:
        t, m = int(row["frame"]), [4, 9].index(int(row["object"]))
        p = int(row["point"])
        assert float(row["x"]) == pytest.approx(trajectories[t, m, p, 0], abs=1e-3)
        assert float(row["y"]) == pytest.approx(trajectories[t, m, p, 1], abs=1e-3)
        assert int(row["visible"]) == int(visibilities[t, m, p])
        assert row["reason"] == ("visible" if visibilities[t, m, p] else "patch_rejected")

    write_trajectories(None, tmp_path / "plain.csv", trajectories, visibilities, [4, 9])
    header = (tmp_path / "plain.csv").read_text().splitlines()[0]
    assert header == "frame,object,point,x,y,visible"
    with pytest.raises(ValueError, match="object ids"):
        write_trajectories(None, tmp_path / "bad.csv", trajectories, visibilities, [4])


def test_save_config(tmp_path):
    save_config(tmp_path / "cfg" / "config.yaml", "a: 1\n")
    assert (tmp_path / "cfg" / "config.yaml").read_text() == "a: 1\n"


# ----------------------------------------------------------------------------------------------
# Overlays

def _grey_frame(height=40, width=60, value=100) -> torch.Tensor:
    return torch.full((3, height, width), value, dtype=torch.uint8)


def test_mask_blend_uses_palette_colour_and_resizes():
    palette = davis_palette()
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :15] = 2  # left half at half resolution
    image = render_overlay(_grey_frame(), mask, palette, alpha=0.5)
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    colour = np.array(palette[6:9])
    # Inside the object (away from its contour): blended 50/50 with the grey frame.
    np.testing.assert_allclose(image[20, 10], np.round(0.5 * 100 + 0.5 * colour), atol=1)
    # Background untouched.
    np.testing.assert_array_equal(image[20, 50], [100, 100, 100])
    # The contour is drawn in the object's colour at the mask border (x = 29 after resizing).
    np.testing.assert_array_equal(image[20, 29], colour)


def test_visible_point_filled_hidden_point_hollow():
    palette = davis_palette()
    points = np.array([[[15.0, 20.0], [45.0, 20.0]]], np.float32)
    visible = np.array([[True, False]])
    image = render_overlay(_grey_frame(), None, palette, points, visible, object_ids=[3], point_radius=5)
    colour = palette[9:12]
    np.testing.assert_array_equal(image[20, 15], colour)  # filled
    np.testing.assert_array_equal(image[20, 45], [100, 100, 100])  # hollow: centre unchanged
    # ... but the ring itself is drawn around it.
    ring = image[20, 38:53]
    assert (ring != 100).any()


def test_negative_points_are_marked_differently():
    palette = davis_palette()
    points = np.array([[[15.0, 20.0], [45.0, 20.0]]], np.float32)
    visible = np.array([[True, True]])
    image = render_overlay(_grey_frame(), None, palette, points, visible, num_positive=1, point_radius=6)
    positive_patch = image[14:27, 9:22].astype(int)
    negative_patch = image[14:27, 39:52].astype(int)
    assert not np.array_equal(positive_patch, negative_patch)
    # The positive's centre has the object colour, the negative's centre carries the cross.
    np.testing.assert_array_equal(image[20, 15], palette[3:6])
    assert not np.array_equal(image[20, 45], palette[3:6])


def test_reasons_pick_marker_shapes():
    points = np.array([[[15.0, 20.0]]], np.float32)
    hidden = np.array([[False]])

    def draw(reason):
        return render_overlay(_grey_frame(), None, None, points, hidden, point_radius=6,
                              reasons=np.array([[int(reason)]]))

    circle = draw(VisibilityReason.OCCLUDED)
    square = draw(VisibilityReason.PATCH_REJECTED)
    diamond = draw(VisibilityReason.REINIT_FAILED)
    assert not np.array_equal(circle, square)
    assert not np.array_equal(circle, diamond)
    assert not np.array_equal(square, diamond)
    # All three are hollow: the centre keeps the frame's colour.
    for image in (circle, square, diamond):
        np.testing.assert_array_equal(image[20, 15], [100, 100, 100])
    # Outside-the-frame points are drawn like occluded ones.
    np.testing.assert_array_equal(draw(VisibilityReason.OUTSIDE_FRAME), circle)


def test_overlay_strip_and_video_sequences():
    frames = torch.stack([_grey_frame(value=v) for v in (10, 60, 110, 160, 210)])
    masks = np.zeros((5, 40, 60), np.uint8)
    strip = overlay_strip(frames, masks, max_frames=3, height=20)
    assert strip.shape == (20, 3 * 30, 3)
    # Tiles are frames 0, 2, 4 in order.
    assert [int(strip[10, 15 + 30 * k, 0]) for k in range(3)] == [10, 110, 210]
    video = render_overlay_video(frames, masks, trajectories=np.zeros((5, 1, 1, 2)) + 5,
                                 visibilities=np.ones((5, 1, 1), bool))
    assert len(video) == 5 and video[0].shape == (40, 60, 3)


def test_gif_and_mp4_read_back(tmp_path):
    images = [np.full((33, 47, 3), 40 * k, np.uint8) for k in range(5)]
    write_gif(tmp_path / "o.gif", images, fps=5)
    with Image.open(tmp_path / "o.gif") as gif:
        assert gif.n_frames == 5
        assert gif.size == (47, 33)
        gif.seek(3)
        assert abs(int(np.asarray(gif.convert("RGB"))[10, 10, 0]) - 120) <= 2
    write_gif(tmp_path / "small.gif", images, fps=5, max_side=20)
    with Image.open(tmp_path / "small.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (20, 14)
    write_mp4(tmp_path / "o.mp4", images, fps=5)
    with av.open(str(tmp_path / "o.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 5
    assert decoded[0].shape[:2] == (34, 48)  # padded to even size for yuv420p
    assert abs(int(decoded[4][10, 10, 0]) - 160) <= 6
    write_png(tmp_path / "o.png", images[2])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), images[2])
    assert _temp_leftovers(tmp_path) == []


def test_mp4_from_a_generator_equals_the_list_and_a_bad_image_leaves_no_file(tmp_path):
    """A streamed video's overlay is encoded as its images are drawn: a generator gives the same
    file as the list, consumed once; an image of another size stops it with nothing written."""
    frames = torch.stack([_grey_frame(value=v) for v in (10, 60, 110, 160)])
    masks = np.zeros((4, 40, 60), np.uint8)
    masks[:, 10:20, 10:30] = 1
    drawn = []

    def images():
        for image in iter_overlay_video(frames, masks):
            drawn.append(1)
            yield image

    write_mp4(tmp_path / "list.mp4", render_overlay_video(frames, masks))
    write_mp4(tmp_path / "gen.mp4", images())
    assert len(drawn) == 4
    assert (tmp_path / "gen.mp4").read_bytes() == (tmp_path / "list.mp4").read_bytes()

    def bad():
        yield np.zeros((40, 60, 3), np.uint8)
        yield np.zeros((42, 60, 3), np.uint8)

    with pytest.raises(ValueError, match="one size"):
        write_mp4(tmp_path / "bad.mp4", bad())
    with pytest.raises(ValueError, match="at least one image"):
        write_mp4(tmp_path / "none.mp4", iter(()))
    assert not (tmp_path / "bad.mp4").exists() and not (tmp_path / "none.mp4").exists()
    assert _temp_leftovers(tmp_path) == []
