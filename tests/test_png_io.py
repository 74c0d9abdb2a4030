"""The one mask-PNG rule (sampt.io.png): palette, grayscale ids / 0-255, RGB, per-object PNGs,
its use by the DAVIS 2017 data module, and the PNG writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sampt.writers
from sampt.datamodules.davis import D17
from sampt.datamodules.dummy_davis import synthetic_multi_object_sequence, write_davis_2017
from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.io import png
from sampt.io.png import (PNG_RULE, IndexSequenceReader, davis_palette, decode_mask_png, read_index_png,
                          read_index_pngs, read_object_png, write_binary_png, write_index_png)
from sampt.video import davis_palette as video_palette


def _save(path: Path, array: np.ndarray, mode: str, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode=mode)
    if palette:
        image.putpalette(davis_palette())
    image.save(path)
    return path


def test_palette_is_the_davis_palette():
    palette = davis_palette()
    assert palette == video_palette()
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0] and palette[765:768] == [224, 224, 192]


def test_palette_and_grayscale_id_pngs_read_as_ids(tmp_path):
    ids = np.array([[0, 1, 2], [2, 255, 0]], np.uint8)
    palette_png = _save(tmp_path / "p.png", ids, "P", palette=True)
    gray_png = _save(tmp_path / "g.png", ids, "L")
    assert np.array_equal(read_index_png(palette_png), ids)
    assert np.array_equal(read_index_png(gray_png), ids)  # L 0/1/2: ids, not "no object"
    decoded = decode_mask_png(palette_png)
    assert decoded.kind == "palette" and decoded.palette == davis_palette()
    assert decode_mask_png(gray_png).kind == "grayscale" and decode_mask_png(gray_png).palette is None


def test_binary_grayscale_rule_is_per_sequence(tmp_path):
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    ids = np.array([[0, 2], [255, 1]], np.uint8)
    a, b = _save(tmp_path / "a.png", binary, "L"), _save(tmp_path / "b.png", ids, "L")
    # A sequence of 0/255 PNGs only: one object, 255 read as 1.
    masks, palette = read_index_pngs([a, a])
    assert palette is None and all(np.array_equal(m, binary // 255) for m in masks)
    # One PNG with other values makes the whole sequence ids (255 = void there).
    masks, _ = read_index_pngs([a, b])
    assert np.array_equal(masks[0], binary) and np.array_equal(masks[1], ids)
    # The frame-by-frame reader says which frames it must read again.
    reader = IndexSequenceReader("gt")
    first, histogram = reader.read(a)
    assert np.array_equal(first, binary // 255) and histogram[1] == 2 and histogram[255] == 0
    assert reader.take_stale() == []
    second, _ = reader.read(b)
    assert np.array_equal(second, ids) and reader.take_stale() == [a]
    again, histogram = reader.read(a)
    assert np.array_equal(again, binary) and histogram[255] == 2 and not reader.binary


def test_rgb_colours_are_davis_palette_ids(tmp_path):
    ids = np.array([[0, 1, 2], [3, 255, 17]], np.uint8)
    colours = np.asarray(davis_palette(), np.uint8).reshape(256, 3)[ids]
    rgb = _save(tmp_path / "rgb.png", colours, "RGB")
    assert np.array_equal(read_index_png(rgb), ids)
    assert decode_mask_png(rgb).kind == "rgb"
    colours[0, 0] = (1, 2, 3)
    bad = _save(tmp_path / "bad.png", colours, "RGB")
    with pytest.raises(InputFormatError, match=r"bad\.png.*\(1, 2, 3\).*DAVIS palette"):
        read_index_png(bad)


def test_errors_name_the_file_and_state_the_rule(tmp_path):
    rgba = _save(tmp_path / "rgba.png", np.zeros((2, 2, 4), np.uint8), "RGBA")
    with pytest.raises(InputFormatError) as info:
        read_index_png(rgba, what="result")
    assert "rgba.png" in str(info.value) and "'RGBA'" in str(info.value) and PNG_RULE in str(info.value)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputFormatError, match="broken.png"):
        read_index_png(broken)
    with pytest.raises(DatasetLayoutError, match="missing.png"):
        read_index_png(tmp_path / "missing.png", error=DatasetLayoutError)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(deep)
    with pytest.raises(InputFormatError, match="300"):
        read_index_png(deep)
    Image.fromarray(np.array([[0, 7]], np.uint16)).save(deep)
    assert read_index_png(deep).tolist() == [[0, 7]]


def test_per_object_pngs_any_non_zero_is_the_object(tmp_path):
    mask = np.array([[0, 3], [3, 0]], np.uint8)
    assert read_object_png(_save(tmp_path / "p.png", mask, "P", palette=True)).tolist() == [[False, True], [True, False]]
    assert read_object_png(_save(tmp_path / "g.png", mask * 85, "L")).tolist() == [[False, True], [True, False]]
    two = _save(tmp_path / "two.png", np.array([[0, 1], [2, 0]], np.uint8), "P", palette=True)
    with pytest.raises(InputFormatError, match=r"two\.png.*\[0, 1, 2\].*one object"):
        read_object_png(two)


def test_writers_round_trip_through_the_reader_and_stay_in_writers(tmp_path):
    ids = np.array([[0, 1], [2, 5]], np.uint8)
    write_index_png(tmp_path / "i.png", ids)
    write_binary_png(tmp_path / "b.png", ids == 2)
    assert np.array_equal(read_index_png(tmp_path / "i.png"), ids)
    assert np.array_equal(read_index_png(tmp_path / "b.png"), (ids == 2).astype(np.uint8))
    # The writers module re-exports the one implementation.
    assert sampt.writers.write_index_png is write_index_png and sampt.writers.write_binary_png is write_binary_png
    assert png.check_palette(None) == davis_palette()


def test_d17_reads_grayscale_id_annotations_like_their_palette_twin(tmp_path):
    """Issue 11 item 5: L-mode 0/1/2 annotations give D17 the same objects as palette ones."""
    sequence = synthetic_multi_object_sequence(num_frames=4, height=32, width=40, seed=3, late_object_frame=2)
    palette_root = write_davis_2017(tmp_path / "palette", {"toy": sequence})
    gray_root = write_davis_2017(tmp_path / "gray", {"toy": sequence})
    for path in sorted((gray_root / "Annotations" / "480p" / "toy").glob("*.png")):
        ids = np.array(Image.open(path))
        Image.fromarray(ids, mode="L").save(path)
        assert Image.open(path).mode == "L" and set(np.unique(ids)) <= {0, 1, 2, 3}
    items = []
    for root in (palette_root, gray_root):
        module = D17(str(root), longest_size=None)
        module.setup("test")
        items.append(next(iter(module.test_dataloader())))
    palette_item, gray_item = items
    assert [o.object_id for o in gray_item.objects] == [o.object_id for o in palette_item.objects] == [1, 2, 3]
    assert [o.query_frame for o in gray_item.objects] == [o.query_frame for o in palette_item.objects]
    for a, b in zip(gray_item.objects, palette_item.objects):
        assert np.array_equal(a.output_mask.numpy(), b.output_mask.numpy())
    assert np.array_equal(gray_item.ground_truth.numpy(), palette_item.ground_truth.numpy())
    assert np.array_equal(gray_item.ground_truth.numpy(), sequence[1])
