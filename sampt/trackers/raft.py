"""A point tracker that chains RAFT optical flow (torchvision) from frame to frame.

Registered as ``"raft"``. Behaviour follows SAM-PT's RAFT tracker: the flow between consecutive
frames is sampled bilinearly at each point's current position and added to it, forward from the
query frame to the last frame (flow ``t -> t+1``) and backward from the query frame to frame 0
(flow ``t+1 -> t``). A point is visible where it lies inside the frame (``0 <= x <= W - 1``,
``0 <= y <= H - 1``, the same definition as :mod:`sampt.trackers.lk`); RAFT itself gives no
occlusion estimate. Points outside the frame keep moving with the flow at the nearest border pixel.

RAFT needs frames whose height and width are multiples of 8, and at least 128 (its correlation
pyramid divides the 1/8-resolution features three more times). Frames are therefore resized to
the nearest multiple of 8 of ``input size / downscale`` (at least 128) before the flow is
computed; flows are mapped back to input pixels per axis, so any input size works.

Only a chunk of ``batch_size`` flows is held at a time and flows are computed only for frame pairs
that some point needs, so memory stays linear in the number of frames.

Weights: torchvision's published weights by enum name (``weights="C_T_SKHT_V2"``; downloaded by
torchvision to the torch hub cache on first use and checked against the hash prefix in the file
name), a local state dict (``checkpoint_path``, e.g. a copy of that download for offline
machines), or neither (random initialisation, for tests and benchmarks).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.models import optical_flow

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.trackers.base import PointTracker
from sampt.trackers.lk import points_inside_frame

_ARCHITECTURES = {
    "raft_large": (optical_flow.raft_large, optical_flow.Raft_Large_Weights),
    "raft_small": (optical_flow.raft_small, optical_flow.Raft_Small_Weights),
}
# RAFT's correlation pyramid needs 1/8-resolution features of at least 16 x 16.
_MIN_SIDE = 128


def _flow_size(size: int, downscale: float) -> int:
    """Side of the frames RAFT sees for an input side ``size``: nearest multiple of 8, >= 128."""
    return max(_MIN_SIDE, 8 * int(round(size / downscale / 8)))


class RaftTracker(PointTracker):
    """Chains torchvision RAFT flow at the points' positions (see the module docstring).

    Args:
        model: ``"raft_large"`` or ``"raft_small"``.
        checkpoint: registry name of torchvision's published weights (``raft_large_C_T_SKHT_V2``,
            ``raft_small_C_T_V2``; see ``sampt checkpoints``), resolved like every checkpoint
            (cache, download, checks); None with no ``checkpoint_path``: random initialisation.
        checkpoint_path: local ``.pth`` state dict of the model (takes precedence), loaded strictly
            with ``weights_only=True``; errors raise :class:`~sampt.errors.CheckpointError`.
        Weights load in :meth:`prepare` (called before the first video, or by the first call).
        num_flow_updates: RAFT's recurrent refinement iterations per flow.
        batch_size: number of frame pairs (per video) whose flows are computed in one RAFT call.
        downscale: compute flows on frames downscaled by this factor (>= 1); flows are rescaled.
    """

    def __init__(
        self,
        model: str = "raft_large",
        checkpoint: Optional[str] = None,
        checkpoint_path: Optional[str] = None,
        num_flow_updates: int = 12,
        batch_size: int = 4,
        downscale: float = 1.0,
    ):
        super().__init__()
        if model not in _ARCHITECTURES:
            raise ValueError(f"RaftTracker model must be one of {sorted(_ARCHITECTURES)}, got {model!r}")
        if int(num_flow_updates) != num_flow_updates or num_flow_updates < 1:
            raise ValueError(f"RaftTracker num_flow_updates must be an integer >= 1, got {num_flow_updates}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"RaftTracker batch_size must be an integer >= 1, got {batch_size}")
        if not downscale >= 1:
            raise ValueError(f"RaftTracker downscale must be >= 1, got {downscale}")
        builder, _ = _ARCHITECTURES[model]
        self.model_name = model
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.num_flow_updates = int(num_flow_updates)
        self.batch_size = int(batch_size)
        self.downscale = float(downscale)
        self.weights_path: Optional[str] = None
        self.raft = builder(weights=None, progress=False)
        self.raft.eval()

    def prepare(self) -> None:
        """Load the weights: ``checkpoint_path`` if given, else the registry's ``checkpoint``
        (cache, then download with the same checks and errors as every checkpoint); with
        neither, RAFT keeps its random initialisation (tests, benchmarks)."""
        if self.weights_path is not None or (self.checkpoint is None and self.checkpoint_path is None):
            return
        path = os.fspath(resolve_checkpoint(self.checkpoint, self.checkpoint_path))
        load_state_dict_file(self.raft, path, f"RAFT ({self.model_name})")
        self.weights_path = path

    def train(self, mode: bool = True) -> "RaftTracker":
        """The tracker is inference-only: RAFT's batch norm layers always stay in eval mode."""
        super().train(mode)
        self.raft.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, num_flow_updates={self.num_flow_updates}, "
            f"batch_size={self.batch_size}, downscale={self.downscale}"
        )

    def compute_flows(self, video: torch.Tensor, sources: Sequence[int], targets: Sequence[int]) -> torch.Tensor:
        """Optical flow from frame ``sources[k]`` to frame ``targets[k]`` of each video.

        Args:
            video: ``(B, T, 3, H, W) uint8``, or a ``FrameSource`` (one video, B = 1: only the
                frames of the pairs are read).
            sources, targets: K frame indices each.

        Returns:
            ``(B, K, 2, h, w) float32`` flow (dx, dy) on an ``h x w`` grid that covers the whole
            frame, in pixels of that grid (any ``h, w``: the caller rescales). Override to plug in
            another flow estimator.
        """
        from sampt.frames import FrameSource

        streamed = isinstance(video, FrameSource)
        batch = 1 if streamed else video.shape[0]
        height, width = video.shape[-2:]
        size = (_flow_size(height, self.downscale), _flow_size(width, self.downscale))
        num_pairs = len(sources)
        parameter = next(self.raft.parameters())

        def prepare(indices: Sequence[int]) -> torch.Tensor:
            selected = video.gather(indices)[None].to(parameter.device) if streamed else video[:, list(indices)]
            frames = selected.flatten(0, 1).float()  # (B*K, 3, H, W)
            if frames.shape[-2:] != size:
                # Antialias when shrinking so fine texture does not alias into false motion.
                frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
            return frames / 127.5 - 1.0  # RAFT's training normalisation, [-1, 1]

        first = prepare(sources).to(parameter.dtype)
        second = prepare(targets).to(parameter.dtype)
        flows = self.raft(first, second, num_flow_updates=self.num_flow_updates)[-1]
        return flows.float().reshape(batch, num_pairs, 2, *size)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries (B, N, 3)`` rows ``(t, x, y)`` through ``video (B, T, 3, H, W) uint8``.

        Returns ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)`` in input
        pixels on the video's device; each query frame holds the query position.
        """
        self.check_inputs(video, queries)
        self.prepare()
        parameter_device = next(self.raft.parameters()).device
        if parameter_device != video.device:
            raise ValueError(
                f"RaftTracker's network is on {parameter_device} but the video is on {video.device}; "
                "move the tracker with .to(video.device)"
            )
        batch, num_frames, _, height, width = video.shape
        queries = queries.to(device=video.device, dtype=torch.float32)
        query_frames = queries[..., 0].round().long()  # (B, N)
        query_positions = queries[..., 1:]  # (B, N, 2)
        trajectories = query_positions[:, None].repeat(1, num_frames, 1, 1)  # (B, T, N, 2)
        if queries.shape[1] == 0:
            return trajectories, points_inside_frame(trajectories, height, width)

        # Forward: pair (t, t+1) moves the points whose query frame is <= t.
        forward_pairs = [(t, t + 1) for t in range(int(query_frames.min()), num_frames - 1)]
        self._chain(video, forward_pairs, query_positions, query_frames, trajectories, forward=True)
        # Backward: pair (t+1, t) moves the points whose query frame is > t.
        backward_pairs = [(t + 1, t) for t in range(int(query_frames.max()) - 1, -1, -1)]
        self._chain(video, backward_pairs, query_positions, query_frames, trajectories, forward=False)

        visibilities = points_inside_frame(trajectories, height, width)
        return trajectories, visibilities

    def streams(self, frames) -> bool:
        return True  # track_frames reads frame pairs as it goes, from any source

    @torch.no_grad()
    def track_frames(self, frames, queries, device=None, query_masks=None, progress=None):
        """:meth:`forward` over a frame source, reading only the ``batch_size`` frame pairs of
        each flow batch (see ``PointTracker``)."""
        self.prepare()
        device = next(self.raft.parameters()).device
        num_frames, (height, width) = frames.num_frames, frames.size
        queries = queries.to(device=device, dtype=torch.float32)[None]
        query_frames = queries[..., 0].round().long()
        trajectories = queries[..., 1:][:, None].repeat(1, num_frames, 1, 1)
        if queries.shape[1]:
            forward_pairs = [(t, t + 1) for t in range(int(query_frames.min()), num_frames - 1)]
            self._chain(frames, forward_pairs, queries[..., 1:], query_frames, trajectories, True, progress)
            backward_pairs = [(t + 1, t) for t in range(int(query_frames.max()) - 1, -1, -1)]
            self._chain(frames, backward_pairs, queries[..., 1:], query_frames, trajectories, False, progress)
        if progress is not None:
            progress(2 * num_frames - (len(forward_pairs) + len(backward_pairs) if queries.shape[1] else 0))
        visibilities = points_inside_frame(trajectories, height, width)
        return trajectories[0].cpu(), visibilities[0].cpu()

    def _chain(
        self,
        video: torch.Tensor,
        pairs: list[tuple[int, int]],
        query_positions: torch.Tensor,
        query_frames: torch.Tensor,
        trajectories: torch.Tensor,
        forward: bool,
        progress=None,
    ) -> None:
        """Move the points along ``pairs`` (consecutive, in chaining order), writing each pair's
        target frame of ``trajectories (B, T, N, 2)`` for the points that have started."""
        height, width = video.shape[-2:]
        positions = query_positions.clone()  # (B, N, 2) current positions, input pixels
        for chunk_start in range(0, len(pairs), self.batch_size):
            chunk = pairs[chunk_start : chunk_start + self.batch_size]
            flows = self.compute_flows(video, [s for s, _ in chunk], [d for _, d in chunk])
            for k, (source, target) in enumerate(chunk):
                started = query_frames <= source if forward else query_frames > target  # (B, N)
                displacement = _sample_flow(flows[:, k], positions, height, width)
                positions = torch.where(started[..., None], positions + displacement, positions)
                trajectories[:, target] = torch.where(started[..., None], positions, trajectories[:, target])
            if progress is not None:
                progress(len(chunk))


def _sample_flow(flow: torch.Tensor, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly sample ``flow (B, 2, h, w)`` (pixels of its own grid, covering the whole frame) at
    ``points (B, N, 2)`` (x, y) input pixels; returns ``(B, N, 2)`` displacements in input pixels.

    Pixel centres: input pixel centre x maps to normalised ``(x + 0.5) / W * 2 - 1`` on any grid of the
    same field of view. Outside the frame the border value is used.
    """
    flow_height, flow_width = flow.shape[-2:]
    input_size = points.new_tensor([width, height])
    grid = (points + 0.5) / input_size * 2 - 1  # (B, N, 2)
    sampled = F.grid_sample(
        flow, grid[:, :, None, :].to(flow.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, 2, N, 1)
    displacement = sampled[..., 0].permute(0, 2, 1)  # (B, N, 2) in flow-grid pixels
    return displacement * points.new_tensor([width / flow_width, height / flow_height])
