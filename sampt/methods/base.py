"""The interface every video object segmentation method implements.

A :class:`VosMethod` holds models and options, never per-video state. ``run`` takes one
``VideoItem`` and calls ``on_frame`` with a :class:`FrameOutput` per frame, in order, so a
consumer (the VOS merge and PNG writer, a VIS encoder, an overlay) sees each frame's float
logits only while that frame is processed and memory stays bounded for long videos. The
Lightning modules (``sampt.lightning``) drive any method through this interface; a method
imports nothing from Lightning.

Shapes: per-frame logits ``(M, h, w) float32`` at the video's output size for its M objects;
trajectories ``(T, M, P, 2) float32`` (x, y) at the output size; visibilities ``(T, M, P) bool``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from sampt.video import VideoItem


@dataclass
class FrameOutput:
    """What a method streams for frame ``t``.

    Attributes:
        t: frame index.
        logits: ``(M, h, w) float32`` at output size; very negative (``EMPTY_LOGIT``) where a
            mask is empty, NaN where the original's upsampling of an empty mask gives NaN (see
            ``PromptingOptions.original_empty_mask_upsampling``).
        scores: ``(M,) float32`` predicted mask quality; ``-inf`` for objects without a prediction.
        has_score: ``(M,) bool``.
    """

    t: int
    logits: torch.Tensor
    scores: torch.Tensor
    has_score: torch.Tensor


@dataclass
class MethodResult:
    """Per-video results small enough to keep whole.

    Attributes:
        queries: what the objects were queried with (for SAM-PT its ``Queries``: points,
            query frames and query masks).
        trajectories: ``(T, M, P, 2) float32`` at *output* resolution (P = 0 for methods
            without points).
        visibilities / reasons: ``(T, M, P)`` bool / int8 ``VisibilityReason``.
        scores_per_frame: ``(T, M) float32``, ``-inf`` where an object had no prediction.
        scores: ``(M,)`` the video score of each object.
        timings: seconds per stage; ``num_decoder_calls``: mask-decoder calls;
        ``num_encoded_frames``: frames run through the image encoder.
        extras: anything else the method wants written by its own :meth:`VosMethod.write_extras`
            (the simulated annotator's histories and curves).
    """

    queries: Any
    trajectories: torch.Tensor
    visibilities: torch.Tensor
    reasons: torch.Tensor
    scores_per_frame: torch.Tensor
    scores: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    num_decoder_calls: int = 0
    num_encoded_frames: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class VosMethod(nn.Module, ABC):
    """A video object segmentation method (see the module docstring)."""

    @abstractmethod
    def prepare(self, device: Optional[Union[str, torch.device]] = None) -> None:
        """Resolve and load every weight file (once) and move the models to ``device``."""

    @abstractmethod
    def run(self, video: VideoItem, on_frame: Callable[[FrameOutput], None],
            on_queries: Optional[Callable[[Any], None]] = None,
            progress: Optional[Callable[[int], None]] = None,
            tracking_progress: Optional[Callable[[int, int], None]] = None) -> MethodResult:
        """Segment ``video``'s objects, calling ``on_frame`` for frames 0..T-1 in order.

        ``on_queries`` receives the queries (with ``query_frames`` and ``query_masks`` at input
        resolution) before the first frame; ``progress`` the index of each finished frame;
        ``tracking_progress(steps, total)`` the point tracker's progress, for methods that track.
        """

    def memory_plan(self, video: VideoItem) -> dict[str, Any]:
        """What :meth:`run` will hold for ``video`` beyond the models, by part, in bytes (and
        whether its tracker streams the frames); logged with the plan at the start of a video."""
        return {}

    def required_checkpoints(self) -> list[str]:
        """Registry names of the checkpoints :meth:`prepare` will resolve (listed and fetched
        together before a run starts)."""
        return []

    @abstractmethod
    def weight_files(self) -> dict[str, Union[str, PathLike]]:
        """The weight files loaded by :meth:`prepare`, by role (``{"sam": ..., "tracker": ...}``)."""

    @abstractmethod
    def description(self) -> dict[str, Any]:
        """The resolved configuration: every option that changes the predictions (it goes into
        each result's fingerprint and into ``protocol.json``)."""

    def write_extras(self, video: VideoItem, result: MethodResult, run_dir: Path, experiment: Any = None,
                     step: int = 0) -> list[Path]:
        """Write the method's own per-video outputs (from ``result.extras``) under ``run_dir``,
        atomically, and log them to ``experiment`` (a TensorBoard ``SummaryWriter`` or None).
        Returns the files written; the default writes nothing."""
        return []

    def describe_model(self) -> str:
        """One line naming the models (e.g. ``SAM-HQ vit_h + CoTrackerTracker``) for logs."""
        return type(self).__name__
