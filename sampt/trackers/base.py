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

import functools
import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from sampt.frames import FrameSource

#: ``progress(n)``: ``n`` more frame steps done, out of ``2 T`` per call (forward and backward).
TrackingProgress = Callable[[int], None]


def _recording_init_options(init):
    """Wrap a tracker's ``__init__`` so the instance remembers the arguments it was built with."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        outermost = "_init_options" not in self.__dict__ and not self.__dict__.get("_recording_init", False)
        if outermost:
            object.__setattr__(self, "_recording_init", True)
        init(self, *args, **kwargs)
        if outermost:
            bound = inspect.signature(init).bind(self, *args, **kwargs)
            bound.apply_defaults()
            options = dict(bound.arguments)
            options.pop(next(iter(options)))  # self
            object.__setattr__(self, "_init_options", options)
            object.__setattr__(self, "_recording_init", False)

    return wrapper


class PointTracker(nn.Module, ABC):
    """Base class of point trackers (see the module docstring for shapes).

    Every instance has ``init_options``: the constructor arguments it was built with, defaults
    included (part of what identifies a result: see ``sampt.fingerprint``).
    """

    #: True for trackers whose ``forward`` also takes ``query_masks=(B, M, H, W) bool``, the
    #: objects' masks on their query frames (SuperGlue matches keypoints inside them); the
    #: pipeline then passes them (M objects, queries grouped per object in order).
    uses_query_masks: bool = False

    @property
    def init_options(self) -> dict[str, Any]:
        return dict(self.__dict__.get("_init_options", {}))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init_options(cls.__dict__["__init__"])

    @abstractmethod
    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries`` (B, N, 3) through ``video`` (B, T, 3, H, W) uint8.

        Returns ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)``.
        """

    def streams(self, frames: "FrameSource") -> bool:
        """True when :meth:`track_frames` reads ``frames`` in bounded windows (memory independent
        of the video's length); False when it reads the whole video into one tensor (this
        default). The pipeline and the memory plan both ask it."""
        return False

    def track_frames(self, frames: "FrameSource", queries: torch.Tensor, device: Optional[torch.device] = None,
                     query_masks: Optional[torch.Tensor] = None, progress: Optional[TrackingProgress] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries (N, 3)`` through a frame source (``sampt.frames``).

        Returns ``(trajectories (T, N, 2) float32, visibilities (T, N) bool)`` on the CPU, equal
        to :meth:`forward` on the whole video. This default reads the whole video into one
        tensor on ``device``; trackers that stream (:meth:`streams`) override it to read windows.
        ``query_masks (M, H, W)`` go to trackers with ``uses_query_masks``.
        """
        video = frames.to_tensor()[None].to(device)
        extra = {} if query_masks is None else {"query_masks": query_masks[None].to(device)}
        trajectories, visibilities = self(video, queries[None].to(device), **extra)
        if progress is not None:
            progress(2 * frames.num_frames)
        return trajectories[0].float().cpu(), visibilities[0].bool().cpu()

    def memory_plan(self, frames: "FrameSource", num_points: int) -> dict[str, Any]:
        """What :meth:`track_frames` holds for ``frames``: ``{"streams": bool, "bytes": memory,
        "disk_bytes": temporary disk}`` beyond the source itself. This default: nothing more for
        a streaming tracker or a clip already in memory, else the whole uint8 video (override
        with a better figure)."""
        whole = 0 if self.streams(frames) or frames.in_memory else frames.num_frames * frames.frame_bytes
        return {"streams": self.streams(frames), "bytes": whole, "disk_bytes": 0}

    def required_checkpoints(self) -> list[str]:
        """Registry names of the checkpoints :meth:`prepare` will resolve: every constructor
        argument named ``*checkpoint`` holding a name whose ``*checkpoint_path`` twin is unset."""
        options = self.init_options
        return [value for key, value in options.items()
                if key.endswith("checkpoint") and isinstance(value, str) and options.get(f"{key}_path") is None]

    def weight_files(self) -> dict[str, str]:
        """The weight files :meth:`prepare` loaded: ``weights_paths`` (a dict by part, for
        trackers with several files) or ``{"weights": weights_path}``; empty before loading."""
        paths = self.__dict__.get("weights_paths")
        if isinstance(paths, dict):
            return {part: path for part, path in paths.items() if path is not None}
        path = self.__dict__.get("weights_path")
        return {} if path is None else {"weights": path}

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


def tracker_classes() -> dict[str, type[PointTracker]]:
    """Every point tracker class by its name, the one way trackers are named: configs give it as
    ``class_path`` (the short name or the full import path), scripts to :func:`build_tracker`."""
    import sampt.trackers  # noqa: F401  (imports every built-in tracker)

    found: dict[str, type[PointTracker]] = {}
    pending = list(PointTracker.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls) and cls.__module__.startswith("sampt."):
            found[cls.__name__] = cls
    return dict(sorted(found.items()))


def build_tracker(name: str, **kwargs) -> PointTracker:
    """The tracker class ``name`` (e.g. ``"CoTrackerTracker"``) built with ``kwargs``; a
    ``ValueError`` lists the valid names when it is unknown."""
    classes = tracker_classes()
    if name not in classes:
        raise ValueError(f"unknown point tracker {name!r}; valid names: {', '.join(classes)}")
    return classes[name](**kwargs)
