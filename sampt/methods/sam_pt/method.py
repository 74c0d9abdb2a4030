"""``SamPtMethod``: SAM-PT behind the ``VosMethod`` interface.

It owns the SAM model (built from its ``SamConfig`` in :meth:`prepare`, so that parsing or
printing a config never touches the checkpoint cache), the point tracker and the options, and
picks how frames are produced: plain SAM-PT (``pipeline.SamPt.run``: track once, segment every
frame) or SAM-PT-reinit (``reinit.run_with_reinit``: window by window, re-sampling points from
the predicted masks) when ``sam_pt.reinit.use_point_reinit`` is on.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

from sampt.frames import TensorFrames
from sampt.methods.base import FrameOutput, MethodResult, VosMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import SamPt
from sampt.sam.backends import SamConfig
from sampt.sam.model import SamModel
from sampt.trackers.base import PointTracker
from sampt.video import VideoItem


class SamPtMethod(VosMethod):
    """SAM-PT (and SAM-PT-reinit).

    Args:
        sam: which SAM to build and its checkpoint (``configs/sam/*.yaml``).
        tracker: the point tracker (``configs/tracker/*.yaml``).
        sam_pt: SAM-PT's options in sections (``configs/model/*.yaml``).
    """

    def __init__(self, sam: SamConfig, tracker: PointTracker, sam_pt: SamPtConfig = SamPtConfig()):
        super().__init__()
        self.sam_config: Optional[SamConfig] = sam
        self.tracker = tracker
        self.config = sam_pt
        self.sam: Optional[SamModel] = None

    @classmethod
    def from_models(cls, sam: SamModel, tracker: PointTracker, sam_pt: SamPtConfig = SamPtConfig()) -> "SamPtMethod":
        """A method around an already built SAM (scripts, tests, notebooks)."""
        method = cls(SamConfig(), tracker, sam_pt)
        method.sam_config = None  # the model is given, not described by a config
        method.sam = sam
        return method

    @property
    def pipeline(self) -> SamPt:
        if self.sam is None:
            raise RuntimeError("SamPtMethod.prepare() builds SAM before the first video")
        return SamPt(self.sam, self.tracker, self.config)

    def required_checkpoints(self) -> list[str]:
        sam = [] if self.sam is not None else self.sam_config.required_checkpoints()
        return sam + self.tracker.required_checkpoints()

    def prepare(self, device: Optional[Union[str, torch.device]] = None) -> None:
        if self.sam is None:
            self.sam = self.sam_config.build()
        self.tracker.prepare()
        if device is not None:
            self.to(device)

    def run(self, video: VideoItem, on_frame: Callable[[FrameOutput], None],
            on_queries: Optional[Callable[[Any], None]] = None,
            progress: Optional[Callable[[int], None]] = None,
            tracking_progress: Optional[Callable[[int, int], None]] = None) -> MethodResult:
        pipeline = self.pipeline
        if self.config.reinit.use_point_reinit:
            from sampt.methods.sam_pt.reinit import run_with_reinit

            return run_with_reinit(pipeline, video, on_frame, on_queries, progress)
        return pipeline.run(video, on_frame, on_queries, progress, tracking_progress)

    def memory_plan(self, video: VideoItem) -> dict[str, Any]:
        num_frames, size = video.num_frames, tuple(video.frames.size)
        query = self.config.query
        num_points = query.positive_points_per_mask + query.negative_points_per_mask
        if video.objects and video.objects[0].points is not None:
            num_points = max(len(o.points) for o in video.objects)
        tracked = min(len(video.objects), self.config.batching.point_tracker_mask_batch_size) * num_points
        frame_bytes = 3 * size[0] * size[1]
        embedding_bytes = 256 * 64 * 64 * 4  # one frame's SAM image embedding (float32)
        reinit = self.config.reinit
        plan: dict[str, Any] = {}
        if reinit.use_point_reinit:
            # Reinit reads each window's frames from the source and gives the tracker that clip
            # in memory; a zero-stride view stands for it (the plan needs its shape only).
            horizon = min(num_frames, reinit.reinit_point_tracker_horizon)
            window = TensorFrames(torch.zeros(1, dtype=torch.uint8).expand(horizon, 3, *size), "a reinit window")
            tracker = self.tracker.memory_plan(window, tracked)
            max_query_frame = max((o.query_frame for o in video.objects), default=0)
            plan.update(
                tracker_window=horizon,
                reinit_window_bytes=horizon * frame_bytes,
                # the LRU cache of recent frames' embeddings, at most reinit_embedding_cache_mib
                reinit_cache_bytes=min(reinit.reinit_embedding_cache_mib * 2**20, num_frames * embedding_bytes),
                # low-res logits (256 x 256 float32) of frames segmented but not yet emitted
                reinit_pending_bytes=(reinit.reinit_horizon + max_query_frame) * len(video.objects) * 2**18,
            )
        else:
            tracker = self.tracker.memory_plan(video.frames, tracked)
        return {
            "tracker": type(self.tracker).__name__,
            "tracker_streams": tracker["streams"],
            "tracker_bytes": tracker["bytes"],
            "tracker_disk": {"bytes": tracker.get("disk_bytes", 0), "dir": tracker.get("disk_dir")},
            # trajectories (float32 x, y), visibilities and reasons, with a copy while merged
            "tracks_bytes": 2 * num_frames * len(video.objects) * num_points * 10,
            # a SAM batch: its frames and image embeddings
            "sam_bytes": self.config.batching.frame_batch_size * (frame_bytes + embedding_bytes),
            **plan,
        }

    def weight_files(self) -> dict[str, Any]:
        files = {} if getattr(self.sam, "weights_path", None) is None else {"sam": self.sam.weights_path}
        for part, path in self.tracker.weight_files().items():
            files["tracker" if part == "weights" else f"tracker_{part}"] = path
        return files

    def description(self) -> dict[str, Any]:
        return {
            "method": "sam_pt",
            "sam": self.sam_config if self.sam_config is not None else {"variant": self.sam.variant},
            "tracker": {"class": type(self.tracker), "options": self.tracker.init_options},
            "sam_pt": self.config,
        }

    def describe_model(self) -> str:
        variant = self.sam.variant if self.sam is not None else self.sam_config.backend
        return f"SAM-PT: SAM {variant} + {type(self.tracker).__name__}"
