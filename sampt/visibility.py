"""Why a tracked point is (not) visible, and the frame-border rule.

The pipeline keeps a boolean visibility (what SAM is prompted with) and, next to it, an
``int8`` reason per point and frame so that writers and overlays can tell the cases apart.
"""
from __future__ import annotations

import enum

import torch


class VisibilityReason(enum.IntEnum):
    """Per point and frame: visible, or why not (stored as ``int8``)."""

    VISIBLE = 0
    #: The point tracker said the point is not visible.
    OCCLUDED = 1
    #: The point is within the frame-border margin or outside the frame.
    OUTSIDE_FRAME = 2
    #: Patch matching found the point's patch too different from its query patch, or an
    #: earlier (forward) / later (backward) frame of the trajectory was rejected.
    PATCH_REJECTED = 3
    #: Point re-initialisation found no mask to sample new points from; the object is stopped.
    REINIT_FAILED = 4
    #: An annotator removed the point from this frame on (the interaction engine).
    REMOVED_BY_USER = 5


#: Points closer to the border than this fraction of the frame size are not visible.
BORDER_MARGIN = 0.01


def reasons_from_visibility(visible: torch.Tensor) -> torch.Tensor:
    """``(...) bool`` tracker visibilities -> ``(...) int8`` reasons (VISIBLE or OCCLUDED)."""
    visible = visible.bool()
    return torch.where(visible, int(VisibilityReason.VISIBLE), int(VisibilityReason.OCCLUDED)).to(torch.int8)


def mark_outside_frame(trajectories: torch.Tensor, height: int, width: int,
                       margin: float = BORDER_MARGIN) -> torch.Tensor:
    """Which points are within ``margin`` of the frame border (or outside the frame).

    The original SAM-PT rule: ``x / width < margin`` or ``y / height < margin`` or
    ``x / width > 1 - margin`` or ``y / height > 1 - margin``, computed in the trajectories'
    dtype. NaN coordinates are not marked.

    Args:
        trajectories: ``(..., 2) float`` (x, y) pixel coordinates in a ``height`` x ``width`` frame.

    Returns:
        ``(...) bool`` on the trajectories' device, True where the point counts as outside.
    """
    if trajectories.shape[-1] != 2:
        raise ValueError(f"trajectories must end in (x, y) pairs, got shape {tuple(trajectories.shape)}")
    x_fraction = trajectories[..., 0] / width
    y_fraction = trajectories[..., 1] / height
    upper = 1.0 - margin
    return (x_fraction < margin) | (y_fraction < margin) | (x_fraction > upper) | (y_fraction > upper)


def apply_outside_frame(visible: torch.Tensor, reasons: torch.Tensor, trajectories: torch.Tensor,
                        height: int, width: int, margin: float = BORDER_MARGIN
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark border points not visible with reason OUTSIDE_FRAME, overriding earlier reasons.

    As in the original, the border rule is applied last and wins over every other reason.

    Args:
        visible: ``(...) bool`` visibilities.
        reasons: ``(...) int8`` reasons of the same shape.
        trajectories: ``(..., 2) float`` (x, y) points.

    Returns:
        ``(visible (...) bool, reasons (...) int8)``, new tensors.
    """
    outside = mark_outside_frame(trajectories, height, width, margin)
    visible = visible.bool() & ~outside
    reasons = reasons.clone()
    reasons[outside] = int(VisibilityReason.OUTSIDE_FRAME)
    return visible, reasons
