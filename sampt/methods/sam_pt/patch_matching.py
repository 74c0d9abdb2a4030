"""Patch-matching filter: drop tracked points whose appearance drifted from their query patch.

Each point's ``patch_size x patch_size`` CIELAB patch, sampled bilinearly around the tracked
position, is compared with the patch around its query point on its query frame:
``similarity = exp(-||difference|| / (2 * patch_size**2))`` over all channels and patch pixels.
A visible point with similarity ``<= threshold`` becomes not visible; so do all frames after it
(forward of the query frame) or before it (backward), as in the original SAM-PT.

The original converts frames to LAB with the channel order reversed (it feeds BGR to an
RGB->LAB conversion); ``color_order="bgr"`` (the default) reproduces that, ``"rgb"`` is the
colourimetrically correct conversion.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch.nn import functional as F

from sampt.visibility import VisibilityReason, reasons_from_visibility

COLOR_ORDERS = ("bgr", "rgb")
DEFAULT_PATCH_SIZE = 3
DEFAULT_SIMILARITY_THRESHOLD = 0.01


# sRGB (D65) -> CIE XYZ and the D65 2-degree reference white, as in skimage.color.rgb2lab.
_XYZ_FROM_LINEAR_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE_XYZ = (0.95047, 1.0, 1.08883)
#: Frames converted at a time, to bound the float temporaries of long videos.
_LAB_FRAMES_PER_CHUNK = 16


def rgb_to_lab(frames: torch.Tensor, color_order: str = "bgr") -> torch.Tensor:
    """Convert RGB frames to CIELAB (D65, 2 degrees) with the formulas of skimage's ``rgb2lab``.

    sRGB gamma is removed, the linear RGB is mapped to XYZ, divided by the reference white and
    mapped to L*a*b*. Computed in float32 with torch on the frames' device (OpenCV's float Lab
    conversion uses interpolated tables and differs from the formulas by up to ~0.5).

    Args:
        frames: ``(T, 3, H, W) uint8`` RGB frames.
        color_order: order in which the channels are handed to the RGB->LAB conversion:
            ``"bgr"`` reverses them (the original SAM-PT's quirk, default), ``"rgb"`` does not.

    Returns:
        ``(T, 3, H, W) float32``: L in [0, 100], a and b roughly in [-128, 127].
    """
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"unknown patch_matching_color_order {color_order!r}; valid orders: "
                         f"{', '.join(COLOR_ORDERS)}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
    device = frames.device
    xyz_from_rgb = torch.tensor(_XYZ_FROM_LINEAR_RGB, dtype=torch.float32, device=device)
    white = torch.tensor(_D65_WHITE_XYZ, dtype=torch.float32, device=device)
    xyz_from_rgb = xyz_from_rgb / white[:, None]  # fold the white-point normalisation in
    # uint8 input has 256 possible values: remove the sRGB gamma once per value.
    levels = torch.arange(256, dtype=torch.float32, device=device) / 255.0
    linear_of_level = torch.where(levels > 0.04045, ((levels + 0.055) / 1.055) ** 2.4, levels / 12.92)
    lab = torch.empty(frames.shape, dtype=torch.float32, device=device)
    for start in range(0, frames.shape[0], _LAB_FRAMES_PER_CHUNK):
        chunk_frames = frames[start:start + _LAB_FRAMES_PER_CHUNK]
        if color_order == "bgr":
            chunk_frames = chunk_frames.flip(1)
        linear = linear_of_level[chunk_frames.long()]
        xyz = torch.einsum("ij,tjhw->tihw", xyz_from_rgb, linear)
        f = torch.where(xyz > 0.008856, xyz.clamp(min=0.0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
        chunk = lab[start:start + _LAB_FRAMES_PER_CHUNK]
        chunk[:, 0] = 116.0 * f[:, 1] - 16.0
        chunk[:, 1] = 500.0 * (f[:, 0] - f[:, 1])
        chunk[:, 2] = 200.0 * (f[:, 1] - f[:, 2])
    return lab


def _patch_offsets(patch_size: int, device: torch.device) -> torch.Tensor:
    """``(patch_size**2, 2) int64`` offsets of a square patch centred on 0."""
    half = patch_size // 2
    steps = torch.arange(-half, half + 1, device=device)
    grid = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 2)


def _sample_patches(frames_lab: torch.Tensor, points_xy: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Bilinear patches around points, one frame per row of points.

    Args:
        frames_lab: ``(F, C, H, W) float32``.
        points_xy: ``(F, N, 2)`` (x, y) pixel coordinates; integer coordinates are pixel centres.

    Returns:
        ``(F, N, patch_size**2, C) float32``; samples outside the frame are 0.
    """
    height, width = frames_lab.shape[-2:]
    patches_xy = points_xy[:, :, None, :] + _patch_offsets(patch_size, points_xy.device)[None, None]
    # Pixel (i, j) covers [i, i + 1) in grid_sample's align_corners=False convention.
    centred_xy = patches_xy + 0.5
    size_wh = torch.tensor([width, height], device=points_xy.device)
    normalised_xy = centred_xy / size_wh[None, None, :] * 2 - 1
    sampled = F.grid_sample(frames_lab, normalised_xy.to(frames_lab.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    return sampled.permute(0, 2, 3, 1)


def patch_similarity(frames_lab: torch.Tensor, trajectories: torch.Tensor, query_points: torch.Tensor,
                     patch_size: int = DEFAULT_PATCH_SIZE) -> torch.Tensor:
    """Similarity of each tracked point's patch to its query patch.

    Args:
        frames_lab: ``(T, 3, H, W) float32`` LAB frames (see :func:`rgb_to_lab`).
        trajectories: ``(T, N, 2) float`` tracked (x, y) per frame.
        query_points: ``(N, 3) float`` queries (t, x, y); t indexes ``frames_lab``.
        patch_size: odd side of the square patch.

    Returns:
        ``(T, N) float32`` in (0, 1]: ``exp(-||patch - query patch|| / (2 * patch_size**2))``.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size!r}")
    num_frames = frames_lab.shape[0]
    if trajectories.ndim != 3 or trajectories.shape[0] != num_frames or trajectories.shape[2] != 2:
        raise ValueError(f"trajectories must be (T={num_frames}, N, 2), got {tuple(trajectories.shape)}")
    num_points = trajectories.shape[1]
    if query_points.shape != (num_points, 3):
        raise ValueError(f"query_points must be (N={num_points}, 3) (t, x, y), got {tuple(query_points.shape)}")

    frames_lab = frames_lab.to(torch.float32)
    trajectories = trajectories.to(device=frames_lab.device, dtype=torch.float32)
    query_points = query_points.to(device=frames_lab.device, dtype=torch.float32)
    query_frames = query_points[:, 0].long()
    if num_points and (query_frames.min() < 0 or query_frames.max() >= num_frames):
        raise ValueError(f"query frames must lie in [0, {num_frames}), got {query_frames.tolist()}")

    num_channels = frames_lab.shape[1]
    query_patches = frames_lab.new_zeros((num_points, patch_size ** 2, num_channels))
    # One grid_sample per distinct query frame rather than one frame copy per point.
    for query_frame in torch.unique(query_frames).tolist():
        selected = query_frames == query_frame
        query_patches[selected] = _sample_patches(frames_lab[query_frame:query_frame + 1],
                                                  query_points[selected][None, :, 1:], patch_size)[0]
    trajectory_patches = _sample_patches(frames_lab, trajectories, patch_size)

    difference = (trajectory_patches - query_patches[None]).flatten(start_dim=2)
    return torch.exp(-torch.linalg.vector_norm(difference, dim=-1) / (2 * patch_size ** 2))


def patch_similarity_over_frames(frames, trajectories: torch.Tensor, query_points: torch.Tensor,
                                 patch_size: int = DEFAULT_PATCH_SIZE, color_order: str = "rgb",
                                 chunk_frames: int = _LAB_FRAMES_PER_CHUNK) -> torch.Tensor:
    """:func:`patch_similarity` of ``rgb_to_lab(frames)``, reading ``frames`` (a ``FrameSource``
    or a tensor) ``chunk_frames`` at a time, so the LAB video is never held whole.

    Each frame's similarities depend on that frame and the query frames only, so the result
    equals the whole-video computation.
    """
    from sampt.frames import as_frame_source

    frames = as_frame_source(frames)
    num_frames = frames.num_frames
    if trajectories.ndim != 3 or trajectories.shape[0] != num_frames or trajectories.shape[2] != 2:
        raise ValueError(f"trajectories must be (T={num_frames}, N, 2), got {tuple(trajectories.shape)}")
    query_points = query_points.to(torch.float32).cpu()
    query_frames = query_points[:, 0].long()
    if len(query_frames) and (query_frames.min() < 0 or query_frames.max() >= num_frames):
        raise ValueError(f"query frames must lie in [0, {num_frames}), got {query_frames.tolist()}")
    distinct = torch.unique(query_frames).tolist()
    query_lab = rgb_to_lab(frames.gather(distinct).cpu(), color_order=color_order)
    local_queries = query_points.clone()
    local_queries[:, 0] = torch.searchsorted(torch.tensor(distinct, dtype=torch.long), query_frames).float()
    # Each chunk goes after the query frames' LAB so that patch_similarity finds the query
    # patches there (re-sampled per chunk: a few frames, cheap next to the chunk itself).
    similarity = torch.empty(trajectories.shape[:2], dtype=torch.float32)
    for start, chunk in frames.chunks(chunk_frames):
        stop = start + chunk.shape[0]
        stacked = torch.cat([query_lab, rgb_to_lab(chunk.cpu(), color_order=color_order)])
        stacked_traj = torch.cat([trajectories.new_zeros((len(distinct),) + tuple(trajectories.shape[1:])),
                                  trajectories[start:stop]])
        similarity[start:stop] = patch_similarity(stacked, stacked_traj, local_queries, patch_size)[len(distinct):]
    return similarity


def filter_visibilities(visibilities: torch.Tensor, similarity: torch.Tensor,
                        query_frames: Union[torch.Tensor, np.ndarray],
                        threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Reject dissimilar points and the rest of their trajectory away from the query frame.

    A visible point with ``similarity <= threshold`` (or NaN) on frame f is rejected. Then, per
    point, like the original's loops: the first rejected frame f after the query frame q rejects
    every frame after f, and the last rejected frame f before q rejects every frame before f.
    A rejection on the query frame itself does not spread. Rejection overrides occlusion.

    Args:
        visibilities: ``(T, N) bool`` tracker visibilities.
        similarity: ``(T, N) float`` from :func:`patch_similarity`.
        query_frames: ``(N,) int`` query frame of each point.
        threshold: ``patch_similarity_threshold``.

    Returns:
        ``(visible (T, N) bool, reasons (T, N) int8)`` with reasons VISIBLE, OCCLUDED or
        PATCH_REJECTED (see :class:`sampt.visibility.VisibilityReason`), on the visibilities'
        device.
    """
    if visibilities.ndim != 2 or similarity.shape != visibilities.shape:
        raise ValueError(f"visibilities and similarity must both be (T, N), got {tuple(visibilities.shape)} "
                         f"and {tuple(similarity.shape)}")
    device = visibilities.device
    visible = visibilities.bool()
    query_frames = torch.as_tensor(query_frames, device=device).long().reshape(-1)
    num_frames, num_points = visible.shape
    if query_frames.shape[0] != num_points:
        raise ValueError(f"query_frames must have one entry per point ({num_points}), got {query_frames.shape[0]}")

    rejected = visible & ~(similarity.to(device) > threshold)
    frame_index = torch.arange(num_frames, device=device)[:, None]
    after_query = frame_index > query_frames[None, :]
    before_query = frame_index < query_frames[None, :]
    # Every frame from the first rejection after q on; from the last rejection before q back.
    rejected_forward = torch.cumsum((rejected & after_query).int(), dim=0) > 0
    rejected_backward = torch.cumsum((rejected & before_query).int().flip(0), dim=0).flip(0) > 0

    reasons = reasons_from_visibility(visible)
    reasons[rejected | rejected_forward | rejected_backward] = int(VisibilityReason.PATCH_REJECTED)
    return reasons == int(VisibilityReason.VISIBLE), reasons


def apply_patch_matching_filter(frames: torch.Tensor, trajectories: torch.Tensor, visibilities: torch.Tensor,
                                query_points: torch.Tensor, patch_size: int = DEFAULT_PATCH_SIZE,
                                threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                                color_order: str = "bgr") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole filter for one tracker call: LAB conversion, similarity, rejection.

    Args:
        frames: ``(T, 3, H, W) uint8`` RGB frames the points were tracked on.
        trajectories: ``(T, N, 2) float`` tracked (x, y).
        visibilities: ``(T, N) bool`` tracker visibilities.
        query_points: ``(N, 3) float`` (t, x, y), t indexing ``frames``.

    Returns:
        ``(visible (T, N) bool, reasons (T, N) int8)`` as :func:`filter_visibilities`.
    """
    frames_lab = rgb_to_lab(frames, color_order)
    similarity = patch_similarity(frames_lab, trajectories, query_points, patch_size)
    return filter_visibilities(visibilities, similarity.to(visibilities.device),
                               query_points[:, 0].long(), threshold)
