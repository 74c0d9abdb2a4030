"""Tiny synthetic datasets in the YouTube-VOS 2018 and MOSE layouts, for tests and quick runs.

``synthetic_video`` draws coloured rectangles that move and may appear mid-video;
``write_youtube_vos`` and ``write_mose`` lay such videos out exactly as the official downloads
are laid out (see ``datamodules.ytvos`` and ``datamodules.mose``), including what makes those
datasets awkward: objects that first appear after frame 0, non-contiguous object ids, and frame
names that do not start at ``00000``.

Each video is a dict with
    ``frames``: ``(T, H, W, 3) uint8`` RGB,
    ``masks``: ``(T, H, W) uint8`` full index masks (the "true" segmentation of every frame),
    ``frame_names`` (optional): the T frame stems (default ``00000``, ``00001``, ...),
    ``categories`` (optional, YouTube-VOS): ``{object id: category name}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from sampt.video import davis_palette
from sampt.writers import atomic_open, write_index_png

PathLike = Union[str, Path]


def synthetic_video(num_frames: int, height: int, width: int, appear: Optional[dict[int, int]] = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Moving rectangles on a smooth background.

    Args:
        appear: ``{object id: first frame}``; default ``{1: 0}``. Later ids are drawn on top.

    Returns:
        ``(frames (T, H, W, 3) uint8, masks (T, H, W) uint8)``.
    """
    appear = {1: 0} if appear is None else appear
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([xs * 200 // max(1, width - 1), ys * 200 // max(1, height - 1),
                           np.full_like(xs, 60)], axis=-1).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    masks = np.zeros((num_frames, height, width), np.uint8)
    for object_id, first in sorted(appear.items()):
        box_h, box_w = max(2, height // 4), max(2, width // 4)
        y0 = int(rng.integers(0, height - box_h))
        x0 = int(rng.integers(0, width - box_w))
        colour = rng.integers(0, 256, size=3).astype(np.uint8)
        for t in range(first, num_frames):
            x = min(width - box_w, x0 + (t - first))  # one pixel per frame to the right
            frames[t, y0:y0 + box_h, x:x + box_w] = colour
            masks[t, y0:y0 + box_h, x:x + box_w] = object_id
    return frames, masks


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(handle, format="JPEG", quality=95)


def _video_fields(name: str, video: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    frames = np.asarray(video["frames"], dtype=np.uint8)
    masks = np.asarray(video["masks"], dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or masks.shape != frames.shape[:3]:
        raise ValueError(f"video {name!r}: frames must be (T, H, W, 3) and masks (T, H, W), got "
                         f"{frames.shape} and {masks.shape}")
    names = list(video.get("frame_names") or [f"{t:05d}" for t in range(len(frames))])
    if len(names) != len(frames):
        raise ValueError(f"video {name!r}: {len(names)} frame names for {len(frames)} frames")
    return frames, masks, names


def _first_appearances(masks: np.ndarray, frame_indices: Sequence[int]) -> dict[int, int]:
    """``{object id: first of frame_indices whose mask contains it}``."""
    first: dict[int, int] = {}
    for t in frame_indices:
        for object_id in np.unique(masks[t]).tolist():
            if object_id != 0 and object_id not in first:
                first[object_id] = t
    return first


def _write_query_masks(folder: Path, masks: np.ndarray, names: Sequence[str], first: dict[int, int],
                       palette: Sequence[int]) -> None:
    """One PNG per frame where objects first appear, holding only those objects (as YouTube-VOS)."""
    for t in sorted(set(first.values())):
        new_ids = [i for i, f in first.items() if f == t]
        query = np.where(np.isin(masks[t], new_ids), masks[t], 0).astype(np.uint8)
        write_index_png(folder / f"{names[t]}.png", query, palette)


def write_youtube_vos(root: PathLike, videos: dict[str, dict], split: str = "valid", annotated_every: int = 5,
                      palette: Optional[Sequence[int]] = None) -> Path:
    """Write ``videos`` in the YouTube-VOS 2018 layout under ``root``.

    * ``all_frames/<split>_all_frames/JPEGImages/<video>/<frame>.jpg``: every frame;
    * ``<split>/JPEGImages/<video>/<frame>.jpg``: every ``annotated_every``-th frame (from the
      video's first frame);
    * ``<split>/Annotations/<video>/<frame>.png``: on the annotated frame where an object first
      appears, a palette PNG with only the objects first appearing there;
    * ``<split>/meta.json``: ``{"videos": {video: {"objects": {"<id>": {"category": ...,
      "frames": [the annotated frames from the object's first appearance on]}}}}}``.

    Returns ``root``.
    """
    root = Path(root)
    palette = list(palette) if palette is not None else davis_palette()
    meta: dict = {"videos": {}}
    for name, video in videos.items():
        frames, masks, names = _video_fields(name, video)
        annotated = list(range(0, len(frames), annotated_every))
        for t in range(len(frames)):
            _write_jpeg(root / "all_frames" / f"{split}_all_frames" / "JPEGImages" / name / f"{names[t]}.jpg", frames[t])
        for t in annotated:
            _write_jpeg(root / split / "JPEGImages" / name / f"{names[t]}.jpg", frames[t])
        first = _first_appearances(masks, annotated)
        _write_query_masks(root / split / "Annotations" / name, masks, names, first, palette)
        categories = video.get("categories") or {}
        meta["videos"][name] = {"objects": {
            str(object_id): {
                "category": categories.get(object_id, "object"),
                "frames": [names[t] for t in annotated if t >= first[object_id]],
            }
            for object_id in sorted(first)
        }}
    with atomic_open(root / split / "meta.json", "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
    return root


def write_mose(root: PathLike, split: str, videos: dict[str, dict], palette: Optional[Sequence[int]] = None) -> Path:
    """Write ``videos`` in the MOSE layout under ``root``.

    * ``<split>/JPEGImages/<video>/<frame>.jpg``: every frame;
    * ``<split>/Annotations/<video>/<frame>.png``: ``train``: the full index mask of every frame;
      ``valid``: query masks only (the first-frame mask, plus a PNG on each later frame where an
      object first appears, holding only the new objects).

    Returns ``root``.
    """
    root = Path(root)
    palette = list(palette) if palette is not None else davis_palette()
    for name, video in videos.items():
        frames, masks, names = _video_fields(name, video)
        for t in range(len(frames)):
            _write_jpeg(root / split / "JPEGImages" / name / f"{names[t]}.jpg", frames[t])
        annotation_dir = root / split / "Annotations" / name
        if split == "train":
            for t in range(len(frames)):
                write_index_png(annotation_dir / f"{names[t]}.png", masks[t], palette)
        else:
            first = _first_appearances(masks, range(len(frames)))
            _write_query_masks(annotation_dir, masks, names, first, palette)
    return root
