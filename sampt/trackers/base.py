"""The point-tracker interface every tracker implements.

A tracker maps a video and query points to trajectories and visibilities:

    video:        (B, T, 3, H, W) uint8 RGB
    queries:      (B, N, 3) float32, rows (t, x, y): query frame index and pixel position
    ->
    trajectories: (B, T, N, 2) float32, (x, y) in the same pixels as the queries
    visibilities: (B, T, N) bool

Every point is tracked forward from its query frame to the last frame *and* backward from its
query frame to frame 0. Trackers hold no per-video state between calls.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from sampt.registry import Registry

TRACKERS: Registry["PointTracker"] = Registry("point tracker")


class PointTracker(nn.Module, ABC):
    """Base class of point trackers (see the module docstring for shapes)."""

    @abstractmethod
    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries`` (B, N, 3) through ``video`` (B, T, 3, H, W) uint8.

        Returns ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)``.
        """

    def prepare(self) -> None:
        """Resolve and load weights, once, before the first video (no-op for weight-free trackers).

        Called by the Lightning module's ``setup`` so that a missing checkpoint fails with a
        clear ``CheckpointError`` when a run starts rather than while a config is parsed.
        """

    @staticmethod
    def check_inputs(video: torch.Tensor, queries: torch.Tensor) -> None:
        """Raise ``ValueError`` with the offending shape/dtype when inputs break the interface."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        if video.dtype != torch.uint8:
            raise ValueError(f"video must be uint8, got {video.dtype}")
        if queries.ndim != 3 or queries.shape[-1] != 3 or queries.shape[0] != video.shape[0]:
            raise ValueError(
                f"queries must be (B, N, 3) with B = {video.shape[0]}, got shape {tuple(queries.shape)}"
            )
        t = queries[..., 0]
        if (t < 0).any() or (t > video.shape[1] - 1).any() or (t != t.round()).any():
            raise ValueError(f"query frame indices must be integers in [0, {video.shape[1] - 1}]")


def build_tracker(name: str, **kwargs) -> PointTracker:
    """Build a registered tracker by name (``TRACKERS.names()`` lists them; the package
    ``sampt.trackers``, imported before this module, registers the built-in ones)."""
    return TRACKERS.build(name, **kwargs)
