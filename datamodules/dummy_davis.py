"""Writers of small DAVIS trees in the official on-disk layouts, so tests need no download.

* ``write_davis_2017``: a DAVIS 2017 tree (``ImageSets/2017``, palette PNG annotations, optional
  ``Full-Resolution`` / ``1080p`` frames, optional test-dev style first-frame-only annotations).
* ``write_davis_2016``: the DAVIS 2016 release (``ImageSets/480p`` frame lists, 0/255 grayscale).
* ``convert_davis_sample``: lays the shared 2-sequence DAVIS sample out as either tree.
* ``synthetic_multi_object_sequence``: textured moving objects, one appearing after frame 0.

Arrays follow the numpy image convention: frames ``(T, H, W, 3) uint8`` RGB, masks
``(T, H, W) uint8`` object indices (0 background). Every file is written atomically.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from sampt.errors import DatasetLayoutError
from sampt.writers import atomic_open, write_text_atomic
from sampt.video import davis_palette

from .io import list_frame_files, resize_masks_nearest

PathLike = Union[str, os.PathLike]
SequenceArrays = tuple[np.ndarray, np.ndarray]  # frames (T, H, W, 3) uint8, masks (T, H, W) uint8






def _save_image(image: Image.Image, path: Path, image_format: str, **options) -> None:
    with atomic_open(path, "wb") as stream:
        image.save(stream, format=image_format, **options)


def _write_palette_png(indices: np.ndarray, path: Path) -> None:
    image = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8), mode="P")
    image.putpalette(davis_palette())
    _save_image(image, path, "PNG")


def _write_gray_png(indices: np.ndarray, path: Path) -> None:
    binary = np.where(np.asarray(indices) > 0, 255, 0).astype(np.uint8)
    _save_image(Image.fromarray(binary, mode="L"), path, "PNG")


def _write_jpeg(frame: np.ndarray, path: Path, quality: int) -> None:
    _save_image(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB"), path, "JPEG",
                 quality=quality)


def _check_sequence(name: str, frames: np.ndarray, masks: Optional[np.ndarray]) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"sequence {name!r}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if masks is not None and (masks.shape != frames.shape[:3] or masks.dtype != np.uint8):
        raise ValueError(f"sequence {name!r}: masks must be (T, H, W) = {frames.shape[:3]} uint8, "
                         f"got {masks.shape} {masks.dtype}")


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_masks_nearest(torch.from_numpy(np.ascontiguousarray(masks)), size).numpy()


def write_davis_2017(root: PathLike, sequences: Mapping[str, SequenceArrays],
                     splits: Optional[Mapping[str, Sequence[str]]] = None,
                     splits_2016: Optional[Mapping[str, Sequence[str]]] = None,
                     full_resolution_frames: Optional[Mapping[str, np.ndarray]] = None,
                     full_resolution_dir: str = "Full-Resolution",
                     first_frame_only: bool = False, jpeg_quality: int = 95) -> Path:
    """Write a DAVIS 2017 tree.

    Args:
        root: the tree's folder (created).
        sequences: name -> (frames ``(T, H, W, 3) uint8``, masks ``(T, H, W) uint8``), written as
            ``JPEGImages/480p/<name>/%05d.jpg`` and palette ``Annotations/480p/<name>/%05d.png``.
        splits: split -> sequence names, written as ``ImageSets/2017/<split>.txt``; default
            ``{"val": all names}``.
        splits_2016: split -> names for ``ImageSets/2016/<split>.txt`` (none by default).
        full_resolution_frames: name -> ``(T, H2, W2, 3) uint8`` frames written to
            ``JPEGImages/<full_resolution_dir>``, with the masks resized (nearest) to H2 x W2 in
            ``Annotations/<full_resolution_dir>``, as in the Full-Resolution download.
        full_resolution_dir: ``"Full-Resolution"`` (DAVIS 2017) or ``"1080p"``.
        first_frame_only: write only the first frame's annotation (the test-dev layout).
        jpeg_quality: JPEG quality of the frames.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for name, (frames, masks) in sequences.items():
        _check_sequence(name, frames, masks)
        high_res = None if full_resolution_frames is None else full_resolution_frames.get(name)
        if high_res is not None:
            _check_sequence(name, high_res, None)
            if len(high_res) != len(frames):
                raise ValueError(f"sequence {name!r}: {len(high_res)} full-resolution frames for {len(frames)} frames")
            high_res_masks = _resize_masks(masks, high_res.shape[1:3])
        annotated = range(1) if first_frame_only else range(len(frames))
        for t in range(len(frames)):
            _write_jpeg(frames[t], root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", jpeg_quality)
            if high_res is not None:
                _write_jpeg(high_res[t], root / "JPEGImages" / full_resolution_dir / name / f"{t:05d}.jpg",
                            jpeg_quality)
            if t in annotated:
                _write_palette_png(masks[t], root / "Annotations" / "480p" / name / f"{t:05d}.png")
                if high_res is not None:
                    _write_palette_png(high_res_masks[t],
                                       root / "Annotations" / full_resolution_dir / name / f"{t:05d}.png")
    if splits is None:
        splits = {"val": list(sequences)}
    for split, names in splits.items():
        write_text_atomic(root / "ImageSets" / "2017" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    for split, names in (splits_2016 or {}).items():
        write_text_atomic(root / "ImageSets" / "2016" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    return root


def _frame_list_2016(names: Sequence[str], frame_counts: Mapping[str, int], resolution: str) -> str:
    # The 2016 release lists frames, not sequences: "<frame path> <annotation path>" per line.
    return "".join(f"/JPEGImages/{resolution}/{n}/{t:05d}.jpg /Annotations/{resolution}/{n}/{t:05d}.png\n"
                   for n in names for t in range(frame_counts[n]))


def write_davis_2016(root: PathLike, sequences: Mapping[str, SequenceArrays],
                     splits: Optional[Mapping[str, Sequence[str]]] = None,
                     frames_1080p: Optional[Mapping[str, np.ndarray]] = None, jpeg_quality: int = 95) -> Path:
    """Write the DAVIS 2016 release layout.

    Args:
        root: the tree's folder (created).
        sequences: name -> (frames ``(T, H, W, 3) uint8``, masks ``(T, H, W) uint8``); every
            non-zero mask pixel is the object, written as 255 in grayscale
            ``Annotations/480p/<name>/%05d.png``.
        splits: split -> names, written as frame lists in ``ImageSets/480p/<split>.txt``
            (and ``ImageSets/1080p`` with ``frames_1080p``); default ``{"val": all names}``.
        frames_1080p: name -> ``(T, H2, W2, 3) uint8`` frames for ``JPEGImages/1080p`` (masks
            resized with nearest neighbour into ``Annotations/1080p``).
        jpeg_quality: JPEG quality of the frames.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for name, (frames, masks) in sequences.items():
        _check_sequence(name, frames, masks)
        high_res = None if frames_1080p is None else frames_1080p.get(name)
        if high_res is not None:
            _check_sequence(name, high_res, None)
            high_res_masks = _resize_masks(masks, high_res.shape[1:3])
        for t in range(len(frames)):
            _write_jpeg(frames[t], root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", jpeg_quality)
            _write_gray_png(masks[t], root / "Annotations" / "480p" / name / f"{t:05d}.png")
            if high_res is not None:
                _write_jpeg(high_res[t], root / "JPEGImages" / "1080p" / name / f"{t:05d}.jpg", jpeg_quality)
                _write_gray_png(high_res_masks[t], root / "Annotations" / "1080p" / name / f"{t:05d}.png")
    if splits is None:
        splits = {"val": list(sequences)}
    counts = {name: len(frames) for name, (frames, _) in sequences.items()}
    for split, names in splits.items():
        write_text_atomic(root / "ImageSets" / "480p" / f"{split}.txt", _frame_list_2016(names, counts, "480p"))
        if frames_1080p:
            write_text_atomic(root / "ImageSets" / "1080p" / f"{split}.txt",
                               _frame_list_2016(names, counts, "1080p"))
    return root


def _link_or_copy(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if copy:
        shutil.copyfile(source, target)
    else:
        os.symlink(source.resolve(), target)


def convert_davis_sample(sample_root: PathLike, out_root: PathLike, layout: Literal["2017", "2016"] = "2017",
                         max_frames: Optional[int] = None, copy: bool = False) -> Path:
    """Lay out a DAVIS 2016 style sample (``JPEGImages/480p`` + 0/255 ``Annotations/480p``) as a tree.

    Args:
        sample_root: e.g. ``shared/data/davis-sample`` (every sequence folder is converted).
        out_root: the tree to write (created).
        layout: ``"2017"``: palette annotations (object 1), ``ImageSets/2017/val.txt`` and
            ``ImageSets/2016/val.txt``; ``"2016"``: the 2016 release (grayscale annotations,
            ``ImageSets/480p/val.txt`` frame list).
        max_frames: keep only the first frames of each sequence.
        copy: copy frames (and 2016 annotations) instead of symlinking them.

    Returns:
        ``out_root`` as a Path.
    """
    sample_root, out_root = Path(sample_root), Path(out_root)
    if layout not in ("2017", "2016"):
        raise ValueError(f"layout must be '2017' or '2016', got {layout!r}")
    frame_root = sample_root / "JPEGImages" / "480p"
    annotation_root = sample_root / "Annotations" / "480p"
    if not frame_root.is_dir() or not annotation_root.is_dir():
        raise DatasetLayoutError(f"{sample_root} must hold JPEGImages/480p/<sequence>/*.jpg and "
                                 f"Annotations/480p/<sequence>/*.png")
    names = sorted(p.name for p in frame_root.iterdir() if p.is_dir())
    counts = {}
    for name in names:
        frame_paths = list_frame_files(frame_root / name)[:max_frames]
        counts[name] = len(frame_paths)
        for t, frame_path in enumerate(frame_paths):
            if frame_path.name != f"{t:05d}{frame_path.suffix}":
                raise DatasetLayoutError(f"{frame_path}: expected frames named 00000.jpg, 00001.jpg, ...")
            _link_or_copy(frame_path, out_root / "JPEGImages" / "480p" / name / frame_path.name, copy)
            annotation = annotation_root / name / f"{frame_path.stem}.png"
            target = out_root / "Annotations" / "480p" / name / annotation.name
            if not annotation.is_file():
                continue  # unannotated frame stays unannotated
            if layout == "2016":
                _link_or_copy(annotation, target, copy)
            else:
                with Image.open(annotation) as image:
                    gray = np.asarray(image.convert("L"))
                _write_palette_png((gray >= 128).astype(np.uint8), target)
    if layout == "2017":
        listing = "".join(f"{n}\n" for n in names)
        write_text_atomic(out_root / "ImageSets" / "2017" / "val.txt", listing)
        write_text_atomic(out_root / "ImageSets" / "2016" / "val.txt", listing)
    else:
        write_text_atomic(out_root / "ImageSets" / "480p" / "val.txt", _frame_list_2016(names, counts, "480p"))
    return out_root


def synthetic_multi_object_sequence(num_frames: int = 6, height: int = 48, width: int = 64, seed: int = 0,
                                    late_object_frame: Optional[int] = None) -> SequenceArrays:
    """A textured video with three moving objects; object 3 enters at ``late_object_frame``.

    Object 1 is an ellipse moving right, object 2 a rectangle moving down, object 3 a rectangle
    moving left that is absent before ``late_object_frame`` (default ``max(1, num_frames // 2)``).
    Later ids are drawn on top. Each object and the background carry their own random texture
    so that point trackers have something to follow.

    Returns:
        frames ``(T, H, W, 3) uint8`` and masks ``(T, H, W) uint8`` with ids 0 (background), 1, 2, 3.
    """
    if num_frames < 2 or height < 16 or width < 16:
        raise ValueError(f"need num_frames >= 2 and height, width >= 16; got {num_frames}, {height}, {width}")
    if late_object_frame is None:
        late_object_frame = max(1, num_frames // 2)
    if not 0 < late_object_frame < num_frames:
        raise ValueError(f"late_object_frame must be in [1, {num_frames - 1}], got {late_object_frame}")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    background = np.stack([
        80 + 60 * np.sin(cols / 5.0) + rng.integers(-20, 20, (height, width)),
        90 + 50 * np.cos(rows / 7.0) + rng.integers(-20, 20, (height, width)),
        np.full((height, width), 110) + rng.integers(-30, 30, (height, width)),
    ], axis=-1)
    textures = {obj: np.clip(rng.normal(colour, 25, (height, width, 3)), 0, 255)
                for obj, colour in ((1, (220, 60, 60)), (2, (60, 200, 80)), (3, (70, 90, 230)))}

    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    span = max(num_frames - 1, 1)
    for t in range(num_frames):
        progress = t / span
        image = background.astype(np.float64).copy()
        mask = np.zeros((height, width), dtype=np.uint8)
        centre_y, centre_x = height * 0.3, width * (0.2 + 0.5 * progress)
        shapes = {
            1: ((rows - centre_y) / (height * 0.18)) ** 2 + ((cols - centre_x) / (width * 0.15)) ** 2 <= 1.0,
            2: ((rows >= height * (0.1 + 0.4 * progress)) & (rows < height * (0.1 + 0.4 * progress) + height * 0.3)
                & (cols >= width * 0.6) & (cols < width * 0.85)),
            3: ((rows >= height * 0.62) & (rows < height * 0.92)
                & (cols >= width * (0.55 - 0.3 * progress)) & (cols < width * (0.55 - 0.3 * progress) + width * 0.3)),
        }
        for object_id, inside in shapes.items():
            if object_id == 3 and t < late_object_frame:
                continue
            image[inside] = textures[object_id][inside]
            mask[inside] = object_id
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
        masks[t] = mask
    return frames, masks
