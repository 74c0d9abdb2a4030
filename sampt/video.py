"""The per-video data that flows from the data modules through the pipeline to the writers.

Everything here is explicit per-video state: modules hold no video state of their own.
Conventions: frames are a ``sampt.frames.FrameSource`` of ``(3, H, W) uint8`` RGB frames at the
*input* resolution (read on demand; a tensor given instead is wrapped); points are
``(x, y)`` pixels of the frames they refer to; queries are ``(t, x, y)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from sampt.frames import FrameSource, as_frame_source
from sampt.io.png import davis_palette  # noqa: F401  (re-exported: the palette lives with the PNG rule)


@dataclass
class ObjectQuery:
    """One object to segment through a video.

    Exactly one of ``mask`` and ``points`` is set.

    Attributes:
        object_id: the dataset's id of the object (palette index in the written PNGs).
        query_frame: index of the frame the query refers to.
        mask: ``(H, W) bool`` query mask at input resolution, on ``query_frame``.
        points: ``(N, 2) float32`` (x, y) query points in input pixels, on ``query_frame``;
            the first ``num_positive`` are positive, the rest negative.
        num_positive: number of positive points in ``points``.
        output_mask: ``(h, w) bool`` query mask at output resolution, pasted verbatim on the
            query frame by the VOS merge (SAM-PT replaces the query frame by its given mask).
    """

    object_id: int
    query_frame: int
    mask: Optional[torch.Tensor] = None
    points: Optional[torch.Tensor] = None
    num_positive: int = 0
    output_mask: Optional[torch.Tensor] = None


@dataclass
class VideoItem:
    """One video as yielded by every data module.

    Attributes:
        name: sequence name (unique within the dataset split).
        frames: the T RGB frames at input resolution, a ``FrameSource`` (``frames[a:b]`` gives
            ``(b - a, 3, H, W) uint8``); a ``(T, 3, H, W) uint8`` tensor is wrapped in ``TensorFrames``.
        frame_names: file stems of the T frames (used for output file names).
        objects: the objects to segment.
        output_size: ``(h, w)`` of predictions (evaluation / saving resolution).
        ground_truth: optional ``(T, h, w) uint8`` index masks at output size.
        palette: optional palette (768 ints) to write index PNGs with.
        save_frames: optional subset of ``frame_names`` to write (YouTube-VOS); None = all.
        meta: anything else a data module wants to pass to writers (dataset, split, ids).
        fps: frames per second of the T frames (a video file's rate over the frame stride), the
            overlay videos' rate; None when unknown (folders of frames).
    """

    name: str
    frames: Union[FrameSource, torch.Tensor]
    frame_names: Sequence[str]
    objects: list[ObjectQuery]
    output_size: tuple[int, int]
    ground_truth: Optional[torch.Tensor] = None
    palette: Optional[Sequence[int]] = None
    save_frames: Optional[Sequence[str]] = None
    meta: dict[str, Any] = field(default_factory=dict)
    fps: Optional[float] = None

    def __post_init__(self) -> None:
        self.frames = as_frame_source(self.frames)

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

