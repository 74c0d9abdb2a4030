"""Image reading and resizing shared by the data modules.

Frames are read with PIL and returned as ``(3, H, W) uint8`` RGB tensors; annotation PNGs as
``(H, W) uint8`` index tensors. Resizing follows SAM-PT's VOS evaluation, which feeds SAM
frames resized with ``segment_anything``'s ``ResizeLongestSide`` (PIL bilinear, antialiased when
shrinking; new side ``int(side * scale + 0.5)``) and resizes query masks with
``torch.nn.functional.interpolate(mode="nearest")``. Both choices are reproduced here so that
inputs match SAM-PT's bit for bit, given the same decoded JPEG.

Annotation PNGs are read with the one rule of :mod:`sampt.io.png` (palette indices, grayscale
ids, a 0/255 grayscale sequence as object 1, RGB colours through the DAVIS palette):
:func:`read_annotation_pngs` is what every data module calls.

Every failure to read a file raises ``error`` (``DatasetLayoutError`` unless the caller asks
for another ``SamptError``) naming the file, never a bare PIL exception.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sampt.errors import DatasetLayoutError, SamptError
from sampt.io import png as _png

PathLike = Union[str, os.PathLike]

#: File name endings accepted as video frames.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")

def _open_image(path: Path, error: type[SamptError]) -> Image.Image:
    if not path.is_file():
        raise error(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()  # decode now so that truncated / corrupt files fail here, naming the file
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise error(f"cannot read image {path}: {exc}") from exc
    return image


def image_size(path: PathLike, error: type[SamptError] = DatasetLayoutError) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only (cheap)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise error(f"cannot read image {path}: {exc}") from exc
    return height, width


def read_rgb(path: PathLike, error: type[SamptError] = DatasetLayoutError) -> torch.Tensor:
    """Read an image file as ``(3, H, W) uint8`` RGB (grayscale / palette / RGBA are converted)."""
    image = _open_image(Path(path), error)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_annotation_pngs(paths: Sequence[PathLike], error: type[SamptError] = DatasetLayoutError
                         ) -> tuple[list[torch.Tensor], Optional[list[int]]]:
    """Read the annotation PNGs of one sequence folder with the one rule (``sampt.io.png.PNG_RULE``).

    Args:
        paths: the sequence's annotation PNGs (e.g. its annotated frames), read together: a
            folder of 0/255 grayscale PNGs is one object (id 1), other grayscale values are ids.

    Returns:
        ``(masks, palette)``: one ``(H, W) uint8`` index tensor per path (sizes unchecked) and the
        first palette PNG's 768-int palette, or None when no PNG has a palette.
    """
    masks, palette = _png.read_index_pngs([Path(p) for p in paths], error=error, what="annotation")
    return [torch.from_numpy(np.require(mask, requirements=["C", "W"])) for mask in masks], palette


def longest_side_shape(height: int, width: int, longest_size: Optional[int]) -> tuple[int, int]:
    """``(height, width)`` after scaling so that the longer side is ``longest_size``.

    The rounding (``int(side * scale + 0.5)``) is SAM's ``ResizeLongestSide.get_preprocess_shape``.
    ``longest_size=None`` keeps the size.
    """
    if longest_size is None:
        return height, width
    scale = longest_size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_rgb(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize one ``(3, H, W) uint8`` frame to ``size = (h, w)`` with PIL bilinear.

    PIL's bilinear filter widens its support when shrinking (antialiasing), which is what SAM-PT
    feeds SAM (``ResizeLongestSide.apply_image``); cv2 / torch bilinear would not match it.
    """
    height, width = size
    if tuple(frame.shape[-2:]) == (height, width):
        return frame
    image = Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous().to(frame.device)


def resize_frames_longest_side(frames: torch.Tensor, longest_size: Optional[int]) -> torch.Tensor:
    """Resize ``(T, 3, H, W) uint8`` frames so the longest side is ``longest_size`` (None: keep).

    Returns:
        ``(T, 3, H', W') uint8`` with ``(H', W') = longest_side_shape(H, W, longest_size)``.
    """
    size = longest_side_shape(int(frames.shape[-2]), int(frames.shape[-1]), longest_size)
    if size == tuple(frames.shape[-2:]):
        return frames
    return torch.stack([resize_rgb(frame, size) for frame in frames]) if len(frames) else \
        frames.new_zeros((0, 3) + size)


def resize_masks_nearest(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(..., H, W)`` masks (bool or integer indices) to ``size``.

    Uses ``torch.nn.functional.interpolate(mode="nearest")`` as SAM-PT does for query masks
    (source pixel ``floor(dst * in / out)``, the same rule as cv2.INTER_NEAREST).

    Returns:
        ``(..., h, w)`` with the input's dtype and device.
    """
    height, width = size
    if tuple(masks.shape[-2:]) == (height, width):
        return masks
    leading = masks.shape[:-2]
    flat = masks.reshape((1, -1) + tuple(masks.shape[-2:]))
    # float32 holds every uint8 index exactly; nearest never mixes values.
    resized = F.interpolate(flat.to(torch.float32), size=(height, width), mode="nearest")
    return resized.to(masks.dtype).reshape(tuple(leading) + (height, width))


def list_frame_files(directory: PathLike, suffixes: Sequence[str] = FRAME_SUFFIXES) -> list[Path]:
    """The image files of a frame directory, sorted by name (other files are ignored)."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in suffixes and p.is_file())
