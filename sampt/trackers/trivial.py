"""Trackers that need no image analysis: for tests of the pipeline and as baselines.

* :class:`StaticTracker` ("static"): every point stays at its query position, visible on every frame.
* :class:`ReplayTracker` ("replay"): returns trajectories and visibilities given at construction.

Shapes follow :mod:`sampt.trackers.base`: video ``(B, T, 3, H, W) uint8``, queries ``(B, N, 3)``
rows ``(t, x, y)``; outputs ``(B, T, N, 2) float32`` and ``(B, T, N) bool`` on the video's device.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from sampt.trackers.base import PointTracker

ArrayLike = Union[torch.Tensor, np.ndarray]


class StaticTracker(PointTracker):
    """Points never move: each stays at its query ``(x, y)`` and is visible on every frame."""

    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, T, 3, H, W) uint8``, ``queries (B, N, 3)`` ->
        ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)``."""
        self.check_inputs(video, queries)
        batch, num_frames = video.shape[:2]
        positions = queries[..., 1:].to(device=video.device, dtype=torch.float32)  # (B, N, 2)
        trajectories = positions[:, None].expand(batch, num_frames, -1, -1).clone()
        visibilities = torch.ones(trajectories.shape[:3], dtype=torch.bool, device=video.device)
        return trajectories, visibilities


class ReplayTracker(PointTracker):
    """Returns fixed, precomputed tracks: lets pipeline tests control exactly what SAM is prompted with.

    Args:
        trajectories: ``(T, N, 2)`` or ``(B, T, N, 2)`` (x, y) positions in input pixels (tensor or
            numpy array; converted to float32).
        visibilities: ``(T, N)`` or ``(B, T, N)`` (converted to bool), batched iff ``trajectories`` is.

    Unbatched tracks are returned for every video of a batch. A call whose video or queries do not
    match the stored ``T``, ``N`` (and ``B`` when batched) raises ``ValueError`` naming both shapes.
    The queries themselves are not checked against the stored positions on purpose, so that tests can
    feed deliberately inconsistent tracks.
    """

    def __init__(self, trajectories: ArrayLike, visibilities: ArrayLike):
        super().__init__()
        trajectories = torch.as_tensor(trajectories)
        visibilities = torch.as_tensor(visibilities)
        if trajectories.ndim not in (3, 4) or trajectories.shape[-1] != 2:
            raise ValueError(
                f"ReplayTracker trajectories must be (T, N, 2) or (B, T, N, 2), got shape {tuple(trajectories.shape)}"
            )
        if tuple(visibilities.shape) != tuple(trajectories.shape[:-1]):
            raise ValueError(
                f"ReplayTracker visibilities must have shape {tuple(trajectories.shape[:-1])} to match "
                f"trajectories {tuple(trajectories.shape)}, got {tuple(visibilities.shape)}"
            )
        self.batched = trajectories.ndim == 4
        # Non-persistent buffers: follow .to(device) but never end up in a model checkpoint.
        self.register_buffer("trajectories", trajectories.to(torch.float32).clone(), persistent=False)
        self.register_buffer("visibilities", visibilities.to(torch.bool).clone(), persistent=False)

    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, T, 3, H, W) uint8``, ``queries (B, N, 3)`` -> the stored
        ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)`` on the video's device."""
        self.check_inputs(video, queries)
        batch, num_frames = video.shape[:2]
        num_points = queries.shape[1]
        stored = tuple(self.trajectories.shape[:-1])
        expected = (batch, num_frames, num_points) if self.batched else (num_frames, num_points)
        if stored != expected:
            layout = "(B, T, N)" if self.batched else "(T, N)"
            raise ValueError(
                f"ReplayTracker holds tracks of {layout} = {stored}, but was called with a video of "
                f"{num_frames} frames (batch {batch}) and {num_points} query points, i.e. {layout} = {expected}"
            )
        trajectories = self.trajectories.to(video.device)
        visibilities = self.visibilities.to(video.device)
        if not self.batched:
            trajectories = trajectories[None].expand(batch, -1, -1, -1)
            visibilities = visibilities[None].expand(batch, -1, -1)
        return trajectories.clone(), visibilities.clone()
