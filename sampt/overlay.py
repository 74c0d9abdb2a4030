"""Overlays of predicted masks and tracked points on frames, and GIF / MP4 / PNG writers for them.

Drawing conventions (one legend for every overlay sampt writes):
  - masks: blended in the palette colour of their object id, outlined in the same colour;
  - points: drawn in their object's palette colour with a white rim;
      * positive points are circles, negative points carry an ``x``;
      * visible points are filled, points not visible are hollow;
      * the shape says why a point is not visible when ``reasons`` are given
        (``sampt.visibility.VisibilityReason``): occluded / outside the frame = circle,
        patch-matching rejected = square, re-initialisation failed = diamond.
Images are ``(H, W, 3) uint8`` RGB throughout.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from sampt.video import davis_palette
from sampt.visibility import VisibilityReason
from sampt.writers import atomic_open

ArrayLike = Union[np.ndarray, torch.Tensor]

_RIM_COLOUR = (255, 255, 255)
#: Frames per second of an overlay gif/mp4 whose frames' own rate is not known (image folders).
DEFAULT_FPS = 10.0
# cv2 draws with sub-pixel precision when coordinates are given in 1/2**_SHIFT pixels.
_SHIFT = 4


def _to_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def palette_table(palette: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(256, 3) uint8`` colour table from a flat palette list (missing entries black; None =
    DAVIS): row k is object id k's colour, in overlays and on the app's page alike."""
    flat = np.zeros(768, dtype=np.uint8)
    values = np.asarray(davis_palette() if palette is None else list(palette), dtype=np.int64)[:768]
    flat[: values.size] = np.clip(values, 0, 255)
    return flat.reshape(256, 3)


def default_point_radius(height: int, width: int) -> int:
    """Marker radius in pixels that stays legible from thumbnails to full HD."""
    return max(3, int(round(min(height, width) / 80)))


def _frame_hwc(frame: ArrayLike) -> np.ndarray:
    array = _to_numpy(frame)
    if array.ndim != 3 or array.shape[0] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frame must be (3, H, W) uint8, got shape {array.shape} dtype {array.dtype}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _blend_masks(image: np.ndarray, index_mask: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    height, width = image.shape[:2]
    if index_mask.shape != (height, width):
        # Nearest neighbour keeps ids intact (no blended, invented ids at object borders).
        index_mask = cv2.resize(index_mask, (width, height), interpolation=cv2.INTER_NEAREST)
    foreground = index_mask > 0
    blended = image.astype(np.float32)
    blended[foreground] = (1 - alpha) * blended[foreground] + alpha * colours[index_mask[foreground]]
    out = np.ascontiguousarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))
    thickness = max(1, int(round(min(height, width) / 240)))
    for object_id in np.unique(index_mask):
        if object_id == 0:
            continue
        binary = (index_mask == object_id).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        colour = tuple(int(c) for c in colours[object_id])
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def _shape_polygon(x: float, y: float, radius: float, reason: int) -> Optional[np.ndarray]:
    """Corner points of the square / diamond markers, or None for a circle."""
    if reason == VisibilityReason.PATCH_REJECTED:
        offsets = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * radius * 0.9
    elif reason == VisibilityReason.REINIT_FAILED:
        offsets = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64) * radius * 1.25
    else:
        return None
    return np.round((offsets + [x, y]) * (1 << _SHIFT)).astype(np.int32)


def _draw_point(image: np.ndarray, x: float, y: float, colour: tuple, radius: int, visible: bool,
                negative: bool, reason: int) -> None:
    centre = (int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT))))
    rim = max(1, int(round(radius / 3)))
    polygon = _shape_polygon(x, y, radius, reason)
    if polygon is None:
        scaled_radius = radius << _SHIFT
        if visible:
            cv2.circle(image, centre, scaled_radius + (rim << _SHIFT), _RIM_COLOUR, -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(image, centre, scaled_radius, colour, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.circle(image, centre, scaled_radius, _RIM_COLOUR, rim + 2, cv2.LINE_AA, _SHIFT)
            cv2.circle(image, centre, scaled_radius, colour, rim, cv2.LINE_AA, _SHIFT)
    else:
        if visible:
            cv2.fillPoly(image, [polygon], colour, cv2.LINE_AA, _SHIFT)
            cv2.polylines(image, [polygon], True, _RIM_COLOUR, rim, cv2.LINE_AA, _SHIFT)
        else:
            cv2.polylines(image, [polygon], True, _RIM_COLOUR, rim + 2, cv2.LINE_AA, _SHIFT)
            cv2.polylines(image, [polygon], True, colour, rim, cv2.LINE_AA, _SHIFT)
    if negative:
        arm = int(round(radius * 0.7 * (1 << _SHIFT)))
        # On a filled marker the cross must contrast with the object's colour.
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        cross_colour = (0, 0, 0) if luminance > 110 else (255, 255, 255)
        cross_colour = cross_colour if visible else colour
        for dx, dy in ((arm, arm), (arm, -arm)):
            cv2.line(image, (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy),
                     cross_colour, rim, cv2.LINE_AA, _SHIFT)


def render_overlay(
    frame: ArrayLike,
    index_mask: Optional[ArrayLike],
    palette: Optional[Sequence[int]] = None,
    points: Optional[ArrayLike] = None,
    visible: Optional[ArrayLike] = None,
    reasons: Optional[ArrayLike] = None,
    alpha: float = 0.5,
    num_positive: Optional[Union[int, Sequence[int]]] = None,
    object_ids: Optional[Sequence[int]] = None,
    point_radius: Optional[int] = None,
) -> np.ndarray:
    """Draw masks and tracked points on one frame.

    Args:
        frame: ``(3, H, W) uint8`` RGB.
        index_mask: ``(h, w) uint8`` object ids (0 = background), resized to ``(H, W)`` with
            nearest neighbour; None = no masks.
        palette: flat palette list (None = DAVIS); object id k is drawn in colour k.
        points: ``(M, P, 2) float`` (x, y) in frame pixels; NaN points are skipped. None = none.
        visible: ``(M, P) bool`` (None = all visible).
        reasons: optional ``(M, P) int`` ``VisibilityReason`` codes; they pick the marker shape
            of points that are not visible.
        alpha: mask opacity in [0, 1].
        num_positive: the first ``num_positive`` points of each object are positive, the rest
            negative; an int for all objects or one per object; None = all positive.
        object_ids: the M objects' ids (palette indices of their points); None = 1..M.
        point_radius: marker radius in pixels; None = ``default_point_radius``.

    Returns ``(H, W, 3) uint8`` RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = _frame_hwc(frame)
    colours = palette_table(palette)
    if index_mask is not None:
        mask = _to_numpy(index_mask)
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise ValueError(f"index_mask must be (h, w) uint8, got shape {mask.shape} dtype {mask.dtype}")
        image = _blend_masks(image, mask, colours.astype(np.float32), alpha)
    else:
        image = image.copy()
    if points is None:
        return image

    pts = _to_numpy(points).astype(np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"points must be (M, P, 2), got shape {pts.shape}")
    num_objects, num_points = pts.shape[:2]
    vis = np.ones((num_objects, num_points), bool) if visible is None else _to_numpy(visible).astype(bool)
    why = None if reasons is None else _to_numpy(reasons).astype(np.int64)
    if vis.shape != (num_objects, num_points) or (why is not None and why.shape != vis.shape):
        raise ValueError(f"visible / reasons must be (M, P) = {(num_objects, num_points)}")
    ids = list(range(1, num_objects + 1)) if object_ids is None else [int(i) for i in object_ids]
    if len(ids) != num_objects:
        raise ValueError(f"{len(ids)} object ids for {num_objects} objects")
    if num_positive is None:
        positives = [num_points] * num_objects
    elif isinstance(num_positive, (int, np.integer)):
        positives = [int(num_positive)] * num_objects
    else:
        positives = [int(n) for n in num_positive]
    radius = point_radius or default_point_radius(*image.shape[:2])

    for m in range(num_objects):
        colour = tuple(int(c) for c in colours[ids[m] % 256])
        # Draw not-visible points first so visible ones stay on top where they overlap.
        order = sorted(range(num_points), key=lambda p: bool(vis[m, p]))
        for p in order:
            x, y = pts[m, p]
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            reason = int(why[m, p]) if why is not None else (
                int(VisibilityReason.VISIBLE) if vis[m, p] else int(VisibilityReason.OCCLUDED))
            _draw_point(image, x, y, colour, radius, bool(vis[m, p]), p >= positives[m], reason)
    return image


def iter_overlay_video(
    frames: Union[ArrayLike, Sequence[ArrayLike]],
    index_masks: Optional[ArrayLike],
    palette: Optional[Sequence[int]] = None,
    trajectories: Optional[ArrayLike] = None,
    visibilities: Optional[ArrayLike] = None,
    reasons: Optional[ArrayLike] = None,
    frame_indices: Optional[Sequence[int]] = None,
    **kwargs,
) -> Iterator[np.ndarray]:
    """``render_overlay`` on every frame (or on ``frame_indices``), one image at a time, so that
    a long video's overlay is encoded without holding its images.

    Args:
        frames: ``(T, 3, H, W) uint8``, a list of ``(3, H, W) uint8`` or a frame source.
        index_masks: ``(T, h, w) uint8``, anything indexed by frame that gives an ``(h, w) uint8``
            mask or None (e.g. masks read back from their PNGs), or None for no masks.
        trajectories: ``(T, M, P, 2)`` (x, y) in frame pixels, or None.
        visibilities / reasons: ``(T, M, P)``, or None.
        kwargs: passed to ``render_overlay`` (alpha, num_positive, object_ids, point_radius).

    Yields ``(H, W, 3) uint8`` images.
    """
    indices = range(len(frames)) if frame_indices is None else frame_indices
    for t in indices:
        yield render_overlay(
            frames[t],
            None if index_masks is None else index_masks[t],
            palette,
            None if trajectories is None else trajectories[t],
            None if visibilities is None else visibilities[t],
            None if reasons is None else reasons[t],
            **kwargs,
        )


def render_overlay_video(*args, **kwargs) -> list[np.ndarray]:
    """:func:`iter_overlay_video`'s images as a list (same arguments)."""
    return list(iter_overlay_video(*args, **kwargs))


def strip_frame_indices(num_frames: int, max_frames: int = 8) -> list[int]:
    """The up to ``max_frames`` evenly spaced frames :func:`overlay_strip` shows."""
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, min(max_frames, num_frames))})


def overlay_strip(
    frames: Union[ArrayLike, Sequence[ArrayLike]],
    index_masks: Optional[ArrayLike],
    palette: Optional[Sequence[int]] = None,
    trajectories: Optional[ArrayLike] = None,
    visibilities: Optional[ArrayLike] = None,
    reasons: Optional[ArrayLike] = None,
    max_frames: int = 8,
    height: Optional[int] = 240,
    **kwargs,
) -> np.ndarray:
    """A horizontal strip of up to ``max_frames`` evenly spaced overlays (for TensorBoard).

    Args: as ``render_overlay_video``; ``height`` rescales each tile to that height (None =
    frame height). Returns ``(height, total_width, 3) uint8`` RGB (``dataformats="HWC"``).
    """
    num_frames = len(frames)
    if num_frames == 0:
        raise ValueError("overlay_strip needs at least one frame")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    indices = strip_frame_indices(num_frames, max_frames)
    if height is not None and kwargs.get("point_radius") is None:
        # Size markers for the tile, not the full frame, so they stay visible after shrinking.
        frame_height, frame_width = (int(s) for s in frames[0].shape[-2:])
        factor = frame_height / height
        tile_radius = default_point_radius(height, max(1, int(round(frame_width / factor))))
        kwargs["point_radius"] = max(default_point_radius(frame_height, frame_width), int(round(tile_radius * factor)))
    tiles = render_overlay_video(frames, index_masks, palette, trajectories, visibilities, reasons,
                                 frame_indices=indices, **kwargs)
    if height is not None:
        resized = []
        for tile in tiles:
            width = max(1, int(round(tile.shape[1] * height / tile.shape[0])))
            resized.append(cv2.resize(tile, (width, height), interpolation=cv2.INTER_AREA))
        tiles = resized
    return np.concatenate(tiles, axis=1)


def _check_images(images: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    images = [_to_numpy(image) for image in images]
    if not images:
        raise ValueError(f"{what} needs at least one image")
    shape = images[0].shape
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape != shape:
            raise ValueError(f"{what} images must all be (H, W, 3) uint8 of one size, got {image.shape} {image.dtype}")
    return images


def write_png(path: Union[str, Path], image: ArrayLike) -> None:
    """Write one ``(H, W, 3) uint8`` RGB image as PNG, atomically."""
    (image,) = _check_images([image], "write_png")
    with atomic_open(path, "wb") as handle:
        Image.fromarray(image, mode="RGB").save(handle, format="PNG")


def write_gif(path: Union[str, Path], images: Sequence[ArrayLike], fps: float = DEFAULT_FPS,
              max_side: Optional[int] = None) -> None:
    """Write ``(H, W, 3) uint8`` RGB images as a looping animated GIF, atomically.

    ``max_side`` shrinks the frames so their longest side is at most that (GIFs of full-size
    frames get large quickly); None keeps the size.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = _check_images(images, "write_gif")
    height, width = images[0].shape[:2]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        images = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
    # Per-frame adaptive palettes: the default web palette with dithering bands the overlays.
    pil_frames = [Image.fromarray(image, mode="RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
                  for image in images]
    duration_ms = max(20, int(round(1000.0 / fps)))
    with atomic_open(path, "wb") as handle:
        pil_frames[0].save(handle, format="GIF", save_all=True, append_images=pil_frames[1:],
                           duration=duration_ms, loop=0, disposal=1)


def write_mp4(path: Union[str, Path], images: Iterable[ArrayLike], fps: float = DEFAULT_FPS) -> None:
    """Write ``(H, W, 3) uint8`` RGB images as an H.264 (or MPEG-4 part 2) MP4, atomically.

    ``images`` may be a generator (:func:`iter_overlay_video`): each image is encoded as it
    comes, so a long video is written in the memory of one frame. Odd widths/heights are padded
    by one black pixel: yuv420p needs even dimensions.
    """
    import av  # heavy; only needed when a video is actually written
    from fractions import Fraction

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    remaining = iter(images)
    first = next(remaining, None)
    if first is None:
        raise ValueError("write_mp4 needs at least one image")
    (first,) = _check_images([first], "write_mp4")
    height, width = first.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_open(path, "wb") as handle:
        with av.open(handle, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = width + pad_w, height + pad_h
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "20", "preset": "veryfast"}
            for image in itertools.chain([first], remaining):
                (image,) = _check_images([image], "write_mp4")
                if image.shape != first.shape:
                    raise ValueError(f"write_mp4 images must all be one size: {image.shape}, the first {first.shape}")
                if pad_h or pad_w:
                    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
