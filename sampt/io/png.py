"""Mask PNGs: the one rule by which sampt reads annotations and results, and its writers.

The rule (quoted in errors and in ``sampt eval --help`` as :data:`PNG_RULE`):

* **palette PNG** (mode ``P``): a pixel's palette index is its object id (DAVIS 2017,
  YouTube-VOS, MOSE, LVOS annotations; what :func:`write_index_png` writes);
* **grayscale PNG** (mode ``L``, 16-bit ``I;16`` / ``I``, and ``1`` read as 0/255): the value is the object id,
  except that a sequence folder whose PNGs are *all* grayscale holding only the values 0 and
  255 is one binary object, 255 read as id 1 (DAVIS 2016 annotations, binary results,
  :func:`write_binary_png`). So ``L`` PNGs with values 0/1/2 are objects 1 and 2, and a 0/255
  ``L`` PNG is object 1. Values above 255 are an error;
* **RGB PNG** (mode ``RGB``): a colour is the object whose colour it is in the DAVIS palette
  (:func:`davis_palette`: the DAVIS / YouTube-VOS / PASCAL VOC palette, (0, 0, 0) = 0,
  (128, 0, 0) = 1, (0, 128, 0) = 2, ...), i.e. colourised index masks saved without their
  palette; a colour outside that palette is an error naming the file and the colour;
* 0 is background; in the ground truth 255 is void (scored as background, never an object);
* in per-object folders (``<video>/<object id>/<frame>.png``, SA-V's layout) every non-zero
  pixel is the object, whatever the mode; a PNG there holding two non-zero values is an error.

Other modes (``RGBA``, ``LA``, CMYK, ...) are errors that say what was expected.

The rule is applied per sequence folder, each side (ground truth, results) on its own, so
0/255 ground truth can be scored against palette results and vice versa. Three entry points
apply it: :class:`IndexSequenceReader` (frame by frame, for the scorer),
:func:`read_index_pngs` (a list of paths at once, for the data modules) and
:func:`read_object_png` (per-object layouts). :func:`decode_mask_png` decodes one file
without interpreting grayscale.

numpy and Pillow only: importable by the light commands (no torch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from sampt.errors import InputFormatError, SamptError
from sampt.io.atomic import atomic_open

PathLike = Union[str, os.PathLike]

#: The reading rule, in words, for error messages and ``--help``.
PNG_RULE = (
    "mask PNGs are read with one rule: a palette PNG's indices are object ids; a grayscale PNG's "
    "values are object ids, except that a sequence whose PNGs are all grayscale with only 0 and "
    "255 is one object (255 read as id 1); an RGB PNG's colours are looked up in the DAVIS palette "
    "((128,0,0) = 1, (0,128,0) = 2, ...); 0 is background and 255 is void in the ground truth; in "
    "per-object folders (<video>/<object id>/<frame>.png) any non-zero pixel is the object"
)

#: Pixel value of void (unlabelled) ground-truth pixels.
VOID_ID = 255

_GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")
_EXPECTED_MODES = "a palette PNG (mode 'P'), a grayscale PNG (mode 'L') or an RGB PNG"


class MaskPng(NamedTuple):
    """One decoded mask PNG, before the sequence rule.

    Attributes:
        values: ``(H, W) uint8``: palette indices, grayscale values, or the DAVIS-palette ids
            of an RGB PNG's colours.
        kind: ``"palette"``, ``"grayscale"`` or ``"rgb"``.
        palette: the PNG's palette as 768 ints (zero-padded) for palette PNGs, else None.
    """

    values: np.ndarray
    kind: str
    palette: Optional[list[int]]


# ------------------------------------------------------------------------------------- palette
def davis_palette() -> list[int]:
    """The DAVIS / YouTube-VOS / PASCAL VOC palette as a flat list of 768 ints.

    Index ``i``'s colour interleaves the bits of ``i``: bit ``3k`` goes to red, ``3k+1`` to
    green, ``3k+2`` to blue, each at bit ``7-k`` of its channel.
    """
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.reshape(-1).tolist()


_PALETTE_CODES: Optional[tuple[np.ndarray, np.ndarray]] = None


def _palette_lookup() -> tuple[np.ndarray, np.ndarray]:
    """Sorted 24-bit colour codes of the DAVIS palette and the index of each."""
    global _PALETTE_CODES
    if _PALETTE_CODES is None:
        colours = np.asarray(davis_palette(), dtype=np.int64).reshape(256, 3)
        codes = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
        order = np.argsort(codes)
        _PALETTE_CODES = (codes[order], order.astype(np.uint8))
    return _PALETTE_CODES


def rgb_to_ids(rgb: np.ndarray, path: PathLike = "<array>", error: type[SamptError] = InputFormatError) -> np.ndarray:
    """``(H, W, 3) uint8`` colours -> ``(H, W) uint8`` DAVIS-palette ids (see :data:`PNG_RULE`)."""
    rgb = np.asarray(rgb)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, ids = np.unique(codes, return_inverse=True)
    known, indices = _palette_lookup()
    position = np.clip(np.searchsorted(known, colours), 0, 255)
    unknown = colours[known[position] != colours]
    if unknown.size:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5].tolist())
        raise error(
            f"mask {path} is an RGB PNG with colour(s) {shown}{' ...' if unknown.size > 5 else ''} that are "
            f"not in the DAVIS palette; {PNG_RULE}"
        )
    return indices[position][ids.reshape(codes.shape)]


# -------------------------------------------------------------------------------------- decode
def decode_mask_png(
    path: PathLike, error: type[SamptError] = InputFormatError, what: str = "mask", allow_rgb: bool = True
) -> MaskPng:
    """Decode one mask PNG (no grayscale interpretation; see :class:`IndexSequenceReader`).

    Args:
        path: the PNG file.
        error: the ``SamptError`` subclass raised on failure (named file, what was expected).
        what: how the file is called in messages (``"ground truth"``, ``"result"``, ...).
        allow_rgb: accept RGB PNGs (the rule); False rejects them (legacy readers).

    Raises:
        ``error``: missing or unreadable file, an unsupported mode, values above 255 or an RGB
        colour outside the DAVIS palette.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.asarray(image)
            palette = image.getpalette() if mode == "P" else None
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise error(f"cannot read {what} PNG {path}: {exc}") from exc
    if mode == "P":
        # Pillow may store fewer than 256 entries; writers expect a full 768-int palette.
        return MaskPng(values, "palette", (list(palette or []) + [0] * 768)[:768])
    if mode in _GRAYSCALE_MODES:
        if values.ndim != 2:
            raise error(f"{what} {path} has shape {values.shape}; expected a single-channel (H, W) image")
        if values.dtype == bool:  # mode "1": 0/255 as Pillow converts it to "L"
            return MaskPng(np.where(values, np.uint8(255), np.uint8(0)), "grayscale", None)
        if values.dtype != np.uint8:
            if values.size and (int(values.max()) > 255 or int(values.min()) < 0):
                raise error(f"{what} {path} holds value {int(values.max())}; object ids must be in 0..255")
            values = values.astype(np.uint8)
        return MaskPng(values, "grayscale", None)
    if mode == "RGB" and allow_rgb:
        return MaskPng(rgb_to_ids(values, path, error), "rgb", None)
    expected = _EXPECTED_MODES if allow_rgb else "a palette PNG (mode 'P') or a grayscale PNG (mode 'L')"
    raise error(f"{what} {path} has image mode {mode!r}; expected {expected}; {PNG_RULE}")


def value_histogram(values: np.ndarray) -> np.ndarray:
    """``(256,) int64`` pixel count of each value of an ``(H, W) uint8`` image."""
    if values.size < (1 << 24):  # float32 counts are exact below 2**24
        import cv2  # imported on first use: the light commands' start-up does not pay for it

        return cv2.calcHist([np.ascontiguousarray(values)], [0], None, [256], [0, 256]).reshape(-1).astype(np.int64)
    return np.bincount(values.reshape(-1), minlength=256)


def _is_binary_grayscale(png: MaskPng, histogram: np.ndarray) -> bool:
    return png.kind == "grayscale" and int(histogram.sum()) == int(histogram[0] + histogram[VOID_ID])


class IndexSequenceReader:
    """Reads the index PNGs of one sequence folder, frame by frame, under the one rule.

    While every PNG read so far is grayscale with only 0 and 255, the sequence is taken as one
    binary object and 255 is returned as 1. The first PNG that is not (another value, a
    palette or an RGB PNG) makes the whole sequence an id sequence: the frames already returned
    as binary are then listed in :attr:`stale` so that the caller reads them again
    (:meth:`read` then returns their values as ids). Frames are returned as ``(H, W) uint8``
    object ids together with their value histogram (after the rule).

    Args:
        what: how the files are called in messages.
        error: the ``SamptError`` subclass raised on failure.
        allow_rgb: accept RGB PNGs (the rule).

    Raises:
        ``error``: what :func:`decode_mask_png` raises, and a frame whose size differs from the
        sequence's first one.
    """

    def __init__(self, what: str = "mask", error: type[SamptError] = InputFormatError, allow_rgb: bool = True) -> None:
        self.what = what
        self.error = error
        self.allow_rgb = allow_rgb
        self.binary = True  # hypothesis: all grayscale 0/255 so far (true until contradicted)
        self.palette: Optional[list[int]] = None
        self.size: Optional[tuple[int, int]] = None
        self._first: Optional[Path] = None
        self._read_as_binary: list[Path] = []
        self.stale: list[Path] = []

    def read(self, path: PathLike) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (H, W) uint8, histogram (256,) int64)`` of one PNG of the sequence."""
        path = Path(path)
        png = decode_mask_png(path, self.error, self.what, allow_rgb=self.allow_rgb)
        size = (int(png.values.shape[0]), int(png.values.shape[1]))
        if self.size is None:
            self.size, self._first = size, path
        elif size != self.size:
            raise self.error(
                f"{self.what} {path} is {size[1]}x{size[0]} (WxH) but {self._first} is "
                f"{self.size[1]}x{self.size[0]}; all frames of a sequence must have one size"
            )
        if self.palette is None and png.palette is not None:
            self.palette = png.palette
        histogram = value_histogram(png.values)
        if self.binary and not _is_binary_grayscale(png, histogram):
            self.binary = False
            self.stale.extend(self._read_as_binary)
            self._read_as_binary = []
        if not self.binary:
            return png.values, histogram
        self._read_as_binary.append(path)
        binary = np.zeros(256, dtype=histogram.dtype)
        binary[0], binary[1] = histogram[0], histogram[VOID_ID]
        return (png.values != 0).view(np.uint8), binary

    def take_stale(self) -> list[Path]:
        """The paths returned as binary before the sequence turned out to hold ids (then cleared)."""
        stale, self.stale = self.stale, []
        return stale


def read_index_pngs(
    paths: Sequence[PathLike],
    error: type[SamptError] = InputFormatError,
    what: str = "mask",
    allow_rgb: bool = True,
) -> tuple[list[np.ndarray], Optional[list[int]]]:
    """Read the index PNGs of one sequence folder under the rule (see :data:`PNG_RULE`).

    Args:
        paths: the sequence's PNGs (any subset of its frames, e.g. the annotated ones).
        error: the ``SamptError`` subclass raised on failure.
        what: how the files are called in messages.
        allow_rgb: accept RGB PNGs (the rule).

    Returns:
        ``(masks, palette)``: one ``(H, W) uint8`` id array per path, and the first palette PNG's
        768-int palette or None.

    Raises:
        ``error``: an unreadable PNG, or (with the rule) PNGs of different sizes.
    """
    paths = [Path(p) for p in paths]
    reader = IndexSequenceReader(what, error, allow_rgb)
    masks = [reader.read(path)[0] for path in paths]
    stale = set(reader.take_stale())
    for index, path in enumerate(paths):
        if path in stale:
            masks[index] = reader.read(path)[0]
    return masks, reader.palette


def read_index_png(path: PathLike, error: type[SamptError] = InputFormatError, what: str = "mask") -> np.ndarray:
    """One index PNG read as a sequence of one frame: ``(H, W) uint8`` object ids."""
    return read_index_pngs([path], error, what)[0][0]


def read_object_png(path: PathLike, error: type[SamptError] = InputFormatError, what: str = "mask") -> np.ndarray:
    """One PNG of a per-object folder: ``(H, W) bool``, every non-zero pixel is the object.

    Raises:
        ``error``: unreadable file, or a PNG holding two different non-zero values (a per-object
        PNG holds one object; an index PNG in a per-object folder is a layout mistake).
    """
    png = decode_mask_png(path, error, what)
    present = np.flatnonzero(value_histogram(png.values))
    if np.count_nonzero(present) > 1:
        raise error(
            f"{what} {path} holds the values {present.tolist()}; a PNG of a per-object folder "
            "(<video>/<object id>/<frame>.png) holds one object (0 = background, any other value = the object)"
        )
    return png.values != 0


# ------------------------------------------------------------------------------------- writers
def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def check_palette(palette: Optional[Sequence[int]]) -> list[int]:
    """A flat palette of up to 256 RGB triples as a list of ints; None = :func:`davis_palette`."""
    if palette is None:
        return davis_palette()
    palette = [int(v) for v in palette]
    if len(palette) % 3 != 0 or not 3 <= len(palette) <= 768 or min(palette) < 0 or max(palette) > 255:
        raise ValueError(
            f"palette must be a flat list of up to 256 RGB triples with values in 0..255, got {len(palette)} values"
        )
    return palette


def write_index_png(path: PathLike, index_mask: Any, palette: Optional[Sequence[int]] = None) -> None:
    """Write an index mask as a palette ('P' mode) PNG, atomically.

    Args:
        path: destination ``.png``.
        index_mask: ``(h, w) uint8`` object ids (0 = background), ndarray or tensor.
        palette: flat list of ``3 * K`` ints (K <= 256); None = the DAVIS palette.
    """
    from PIL import Image

    mask = _to_numpy(index_mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"index_mask must be (h, w) uint8, got shape {mask.shape} dtype {mask.dtype} for {path}")
    image = Image.fromarray(np.ascontiguousarray(mask), mode="P")
    image.putpalette(check_palette(palette))
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def write_binary_png(path: PathLike, mask: Any) -> None:
    """Write a binary mask as an 8-bit grayscale 0/255 PNG, atomically.

    Args:
        mask: ``(h, w)`` bool (or any dtype; nonzero = foreground), ndarray or tensor.
    """
    from PIL import Image

    mask = _to_numpy(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {mask.shape} for {path}")
    image = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), mode="L")
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")
