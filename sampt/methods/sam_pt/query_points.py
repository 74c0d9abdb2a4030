"""Query points from query masks (SAM-PT step 1).

Every object given by a mask on its query frame is turned into ``positive`` points inside the
mask and ``negative`` points inside its complement, by one of four selection methods:

- ``kmedoids``: the medoids of a k-medoids clustering (k = number of points) of a random
  subsample of at most 1800 of the mask's pixel coordinates (the ``kmedoids`` package,
  FasterPAM); a mask with fewer pixels than k repeats its pixels.
- ``shi-tomasi``: OpenCV ``goodFeaturesToTrack`` corners of the grayscale query frame inside
  the mask eroded by 6% of its extent (the diagonal of its bounding box), falling back to 2%,
  1% and no erosion while fewer than 10 pixels remain; missing corners are filled by k-medoids.
- ``random``: pixels drawn uniformly without replacement (repeated if the mask is too small).
- ``mixed``: ``k // 4`` k-medoids, ``k // 3`` Shi-Tomasi and the rest random points, in that
  order (so a single point is random).

Points are ``(x, y)`` pixel coordinates of the frame (x = column, y = row); queries are
``(t, x, y)``. An empty mask gives a warning and points at (0, 0), as in the original SAM-PT;
the pipeline's border rule then marks them not visible.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a seeded generator makes
the result reproducible. Everything runs on the CPU (OpenCV, NumPy); outputs are returned on the
masks' device.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import cv2
import kmedoids
import numpy as np
import torch

POINT_SELECTION_METHODS = ("kmedoids", "shi-tomasi", "random", "mixed")

#: At most this many mask pixels enter a k-medoids clustering (its cost is quadratic in them).
KMEDOIDS_SUBSAMPLE_SIZE = 1800
#: The original fills missing Shi-Tomasi corners with k-medoids on a slightly larger subsample.
SHI_TOMASI_FILL_SUBSAMPLE_SIZE = 2000
#: Erosion strengths tried in turn, as fractions of the mask's extent, before giving up eroding.
SHI_TOMASI_EROSION_FRACTIONS = (0.06, 0.02, 0.01)
#: An eroded mask with fewer pixels than this is considered eroded away.
SHI_TOMASI_MIN_ERODED_PIXELS = 10
SHI_TOMASI_QUALITY_LEVEL = 0.001
SHI_TOMASI_BLOCK_SIZE = 3
SHI_TOMASI_GRADIENT_SIZE = 3

ArrayLike = Union[torch.Tensor, np.ndarray]


def _to_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _check_method(method: str, option: str = "method") -> None:
    if method not in POINT_SELECTION_METHODS:
        valid = ", ".join(POINT_SELECTION_METHODS)
        raise ValueError(f"unknown point selection method {method!r} for {option}; valid methods: {valid}")


def _needs_frame(method: str, num_points: int) -> bool:
    if method == "shi-tomasi":
        return num_points > 0
    if method == "mixed":
        return num_points // 3 > 0
    return False


def _mask_pixels_yx(mask: np.ndarray) -> np.ndarray:
    """``(n, 2) int64`` (y, x) coordinates of the mask's pixels in row-major order."""
    return np.stack(np.nonzero(mask), axis=1).astype(np.int64)


def _repeat_to_length(pixels_yx: np.ndarray, num_points: int) -> np.ndarray:
    """Repeat the pixels in order until there are ``num_points`` rows (for masks smaller than k)."""
    repeats = num_points // len(pixels_yx) + 1
    return np.tile(pixels_yx, (repeats, 1))[:num_points]


def _yx_to_xy(points_yx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points_yx[:, ::-1]).astype(np.float32)


def kmedoids_points(mask: np.ndarray, num_points: int, rng: np.random.Generator,
                     subsample_size: int = KMEDOIDS_SUBSAMPLE_SIZE) -> np.ndarray:
    """``(num_points, 2) float32`` (x, y) medoids of the mask's pixels; the mask is non-empty."""
    pixels_yx = _mask_pixels_yx(mask)
    if len(pixels_yx) < num_points:
        return _yx_to_xy(_repeat_to_length(pixels_yx, num_points))
    subsample = pixels_yx[rng.permutation(len(pixels_yx))[:subsample_size]]
    coords = subsample.astype(np.float32)
    distances = np.hypot(coords[:, None, 0] - coords[None, :, 0], coords[:, None, 1] - coords[None, :, 1])
    # One core: these clusterings are small and the caller may run many of them in parallel.
    result = kmedoids.fasterpam(distances, num_points, init="random",
                                random_state=int(rng.integers(0, 2**31 - 1)), n_cpu=1)
    medoids_yx = subsample[np.asarray(result.medoids, dtype=np.int64)]
    if len(medoids_yx) < num_points:  # defensive: distinct pixels always give k medoids
        medoids_yx = _repeat_to_length(medoids_yx, num_points)
    return _yx_to_xy(medoids_yx)


def _bounding_box_diagonal(pixels_yx: np.ndarray) -> float:
    """The mask's extent: length of the diagonal of its pixel bounding box (0 for one pixel)."""
    span = pixels_yx.max(axis=0) - pixels_yx.min(axis=0)
    return float(np.hypot(span[0], span[1]))


def _erode_by_extent_fraction(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Erode with a square kernel of ``int(extent * fraction)`` pixels; ``(H, W) uint8``.

    A size of 0 gives an empty kernel, for which OpenCV erodes with its default 3x3 element;
    the original does the same, so small masks are eroded by 3x3 at the 2% and 1% levels.
    """
    kernel_size = int(_bounding_box_diagonal(_mask_pixels_yx(mask)) * fraction)
    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, iterations=1)


def _shi_tomasi_points(mask: np.ndarray, num_points: int, frame_hwc: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """``(num_points, 2) float32`` (x, y) corners inside the (eroded) mask, k-medoids filled."""
    eroded = None
    for fraction in SHI_TOMASI_EROSION_FRACTIONS:
        eroded = _erode_by_extent_fraction(mask, fraction)
        if int(eroded.sum()) >= SHI_TOMASI_MIN_ERODED_PIXELS:
            break
    else:
        eroded = mask.astype(np.uint8)
    # The original measures the corner spacing on the eroded mask it searches in.
    extent = _bounding_box_diagonal(_mask_pixels_yx(eroded))

    gray = cv2.cvtColor(np.ascontiguousarray(frame_hwc), cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(
        image=gray,
        maxCorners=num_points,
        qualityLevel=SHI_TOMASI_QUALITY_LEVEL,
        minDistance=extent / num_points,
        mask=eroded,
        blockSize=SHI_TOMASI_BLOCK_SIZE,
        gradientSize=SHI_TOMASI_GRADIENT_SIZE,
    )
    corners_xy = (np.zeros((0, 2), np.float32) if corners is None
                  else corners.reshape(-1, 2).astype(np.float32))
    num_missing = num_points - len(corners_xy)
    if num_missing > 0:
        fill_xy = kmedoids_points(mask, num_missing, rng, subsample_size=SHI_TOMASI_FILL_SUBSAMPLE_SIZE)
        corners_xy = np.concatenate([corners_xy, fill_xy], axis=0)
    return corners_xy


def _random_points(mask: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_points, 2) float32`` (x, y) distinct mask pixels drawn uniformly (repeated if too few)."""
    pixels_yx = _mask_pixels_yx(mask)
    if len(pixels_yx) < num_points:
        return _yx_to_xy(_repeat_to_length(pixels_yx, num_points))
    return _yx_to_xy(pixels_yx[rng.permutation(len(pixels_yx))[:num_points]])


def _mixed_points(mask: np.ndarray, num_points: int, frame_hwc: Optional[np.ndarray],
                  rng: np.random.Generator) -> np.ndarray:
    num_kmedoids, num_shi_tomasi = num_points // 4, num_points // 3
    num_random = num_points - num_kmedoids - num_shi_tomasi
    parts = []
    if num_kmedoids > 0:
        parts.append(kmedoids_points(mask, num_kmedoids, rng))
    if num_shi_tomasi > 0:
        parts.append(_shi_tomasi_points(mask, num_shi_tomasi, frame_hwc, rng))
    if num_random > 0:
        parts.append(_random_points(mask, num_random, rng))
    return np.concatenate(parts, axis=0)


def _sample_points_numpy(mask: np.ndarray, num_points: int, method: str, frame_hwc: Optional[np.ndarray],
                         rng: np.random.Generator, what: str) -> np.ndarray:
    if num_points == 0:
        return np.zeros((0, 2), np.float32)
    if not mask.any():
        warnings.warn(f"{what} is empty: its {num_points} {method} points are all placed at (0, 0) "
                      f"and will be treated as not visible", stacklevel=3)
        return np.zeros((num_points, 2), np.float32)
    if method == "kmedoids":
        return kmedoids_points(mask, num_points, rng)
    if method == "shi-tomasi":
        return _shi_tomasi_points(mask, num_points, frame_hwc, rng)
    if method == "random":
        return _random_points(mask, num_points, rng)
    return _mixed_points(mask, num_points, frame_hwc, rng)


def _check_count(value: int, option: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{option} must be a non-negative integer, got {value!r}")
    return int(value)


def sample_points(
        mask: ArrayLike,
        k: int,
        method: str,
        frame: Optional[ArrayLike] = None,
        rng: Optional[np.random.Generator] = None,
        *,
        what: str = "mask",
) -> torch.Tensor:
    """Select ``k`` points inside a mask with one of :data:`POINT_SELECTION_METHODS`.

    Args:
        mask: ``(H, W)`` bool (or 0/1) mask, torch tensor or numpy array.
        k: number of points.
        method: ``"kmedoids"``, ``"shi-tomasi"``, ``"random"`` or ``"mixed"``.
        frame: ``(3, H, W) uint8`` RGB frame the mask lies on; required by ``shi-tomasi`` and by
            ``mixed`` when ``k >= 3`` (it then has Shi-Tomasi points).
        rng: source of randomness (subsampling, random points, k-medoids initialisation);
            ``None`` uses a fresh unseeded generator.
        what: how warnings name the mask (e.g. ``"query mask of object 3"``).

    Returns:
        ``(k, 2) float32`` (x, y) points, on the mask's device (CPU for numpy input). For an
        empty mask all points are (0, 0) and a ``UserWarning`` is issued.

    Raises:
        ValueError: unknown method, negative k, wrong shapes, or a missing frame.
    """
    _check_method(method)
    k = _check_count(k, "k (number of points)")
    mask_np = _to_numpy(mask)
    if mask_np.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {tuple(mask_np.shape)}")
    mask_np = mask_np != 0
    frame_hwc = None
    if _needs_frame(method, k):
        if frame is None:
            raise ValueError(f"point selection method {method!r} needs the (3, H, W) uint8 frame of the mask")
        frame_np = _to_numpy(frame)
        if frame_np.shape != (3, *mask_np.shape) or frame_np.dtype != np.uint8:
            raise ValueError(f"frame must be (3, H, W) uint8 with (H, W) = {mask_np.shape}, "
                             f"got {tuple(frame_np.shape)} {frame_np.dtype}")
        frame_hwc = frame_np.transpose(1, 2, 0)
    rng = np.random.default_rng() if rng is None else rng
    points = _sample_points_numpy(mask_np, k, method, frame_hwc, rng, what)
    device = mask.device if isinstance(mask, torch.Tensor) else torch.device("cpu")
    return torch.from_numpy(points).to(device)


def query_points_from_masks(
        frames: ArrayLike,
        masks: ArrayLike,
        query_frames: Union[ArrayLike, Sequence[int]],
        positive_points_per_mask: int = 16,
        negative_points_per_mask: int = 1,
        positive_method: str = "kmedoids",
        negative_method: str = "mixed",
        rng: Optional[np.random.Generator] = None,
) -> torch.Tensor:
    """Query points ``(t, x, y)`` for every object given by a mask on its query frame.

    Args:
        frames: ``(T, 3, H, W) uint8`` RGB video, a tensor or a ``FrameSource`` (only the query
            frames are read, by Shi-Tomasi).
        masks: ``(M, H, W)`` bool (or 0/1) query masks, mask m lying on frame ``query_frames[m]``.
        query_frames: ``(M,)`` integer query frame indices in ``[0, T)``.
        positive_points_per_mask: P, points inside each mask.
        negative_points_per_mask: N, points inside each mask's complement.
        positive_method / negative_method: one of :data:`POINT_SELECTION_METHODS`.
        rng: source of randomness; ``None`` uses a fresh unseeded generator.

    Returns:
        ``(M, P + N, 3) float32`` queries ``(t, x, y)`` on the masks' device (CPU for numpy),
        the P positives first, then the N negatives. An empty mask (or a mask covering the whole
        frame, for the negatives) warns, naming the object index, and gives points at (0, 0).

    Raises:
        ValueError: unknown method names, negative counts, or inconsistent shapes.
    """
    _check_method(positive_method, "positive_method")
    _check_method(negative_method, "negative_method")
    num_positive = _check_count(positive_points_per_mask, "positive_points_per_mask")
    num_negative = _check_count(negative_points_per_mask, "negative_points_per_mask")

    from sampt.frames import FrameSource

    if not isinstance(frames, (torch.Tensor, FrameSource)):
        frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
    num_frames, _, height, width = frames.shape
    masks_np = _to_numpy(masks)
    if masks_np.ndim != 3 or masks_np.shape[1:] != (height, width):
        raise ValueError(f"masks must be (M, H, W) with (H, W) = ({height}, {width}) of the frames, "
                         f"got {tuple(masks_np.shape)}")
    masks_np = masks_np != 0
    query_frames_np = _to_numpy(query_frames).reshape(-1)
    if len(query_frames_np) != len(masks_np):
        raise ValueError(f"query_frames must have one entry per mask ({len(masks_np)}), got {len(query_frames_np)}")
    if len(query_frames_np) and (np.any(query_frames_np != np.round(query_frames_np))
                                 or query_frames_np.min() < 0 or query_frames_np.max() >= num_frames):
        raise ValueError(f"query_frames must be integer frame indices in [0, {num_frames}), "
                         f"got {query_frames_np.tolist()}")
    query_frames_np = query_frames_np.astype(np.int64)
    rng = np.random.default_rng() if rng is None else rng

    needs_frame = _needs_frame(positive_method, num_positive) or _needs_frame(negative_method, num_negative)
    queries = np.zeros((len(masks_np), num_positive + num_negative, 3), np.float32)
    for object_index, (mask, query_frame) in enumerate(zip(masks_np, query_frames_np)):
        frame_hwc = frames[query_frame].permute(1, 2, 0).cpu().numpy() if needs_frame else None
        positives = _sample_points_numpy(mask, num_positive, positive_method, frame_hwc, rng,
                                         what=f"query mask of object {object_index}")
        negatives = _sample_points_numpy(~mask, num_negative, negative_method, frame_hwc, rng,
                                         what=f"complement of the query mask of object {object_index} "
                                              f"(the mask covers the whole frame)")
        queries[object_index, :, 0] = query_frame
        queries[object_index, :, 1:] = np.concatenate([positives, negatives], axis=0)
    device = masks.device if isinstance(masks, torch.Tensor) else torch.device("cpu")
    return torch.from_numpy(queries).to(device)
