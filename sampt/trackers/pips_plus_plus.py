"""PIPs++ (Zheng et al., 2023, "PointOdyssey"), re-implemented so the official checkpoint loads unchanged.

The network reproduces aharley/pips2 at the commit SAM-PT copied (``nets/pips2.py``): the same
``state_dict`` keys and shapes as its ``reference_model`` and the same order of operations.
Three layers:

* :class:`PipsPlusPlus` - the network: tracks refined over a window of any length by a 1-D
  ResNet over time, from correlations with the query feature and with the track's own
  features 2 and 4 frames earlier.
* :func:`pips_plus_plus_track_direction` - SAM-PT's one-direction loop: windows of at most
  ``max_sequence_length`` frames, each starting at the previous one's last frame.
* :class:`PipsPlusPlusTracker` - SAM-PT's PIPs++ wrapper behind :class:`PointTracker`.

SAM-PT's wrapper only runs when all queries share one query frame (see
:class:`PipsPlusPlusTracker` for what is kept and what is fixed). Checkpoint files are read
like PIPs' (:func:`sampt.trackers.pips.read_pips_checkpoint`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file
from sampt.trackers.base import PointTracker
from sampt.trackers.cotracker import FeatureEncoder
from sampt.trackers.pips import (
    CORR_LEVELS,
    CORR_RADIUS,
    ENCODER_CHUNK,
    LATENT_DIM,
    bilinear_sample_clamped,
    check_frame_size,
    correlation_maps,
    feature_pyramid,
    read_pips_checkpoint,
    resolve_pips_checkpoint,
    sample_correlation_maps,
)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
def posemb_sincos_xy(xy: torch.Tensor, channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(M, S, 2)`` -> ``(M, S, channels + 2)``: ``[sin x, cos x, sin y, cos y]`` at the
    frequencies ``temperature^(-k / (channels/4 - 1))``, then ``xy`` itself (the original
    ``posemb_sincos_2d_xy(..., cat_coords=True)``)."""
    m, s, _ = xy.shape
    omega = torch.arange(channels // 4, device=xy.device) / (channels // 4 - 1)
    omega = 1.0 / (temperature ** omega)
    x = xy[:, :, 0].flatten()[:, None] * omega[None, :]
    y = xy[:, :, 1].flatten()[:, None] * omega[None, :]
    pe = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).reshape(m, s, channels).type(xy.dtype)
    return torch.cat([pe, xy], dim=2)


class _Conv1dSame(nn.Module):
    """A stride-1 ``Conv1d`` (key ``conv``) with "same" zero padding, the extra pixel on the right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size)
        self.pad = (kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, "constant", 0))


class _ResidualBlock1d(nn.Module):
    """Pre-activation residual block over time; a wider output zero-pads the identity's channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, first: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.first = first
        self.norm1 = nn.InstanceNorm1d(in_channels)
        self.conv1 = _Conv1dSame(in_channels, out_channels, kernel_size)
        self.norm2 = nn.InstanceNorm1d(out_channels)
        self.conv2 = _Conv1dSame(out_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.first else F.relu(self.norm1(x))
        out = self.conv2(F.relu(self.norm2(self.conv1(out))))
        identity = x
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            identity = F.pad(identity, (0, 0, extra // 2, extra - extra // 2), "constant", 0)
        return out + identity


class _DeltaBlock1d(nn.Module):
    """Coordinate updates ``(N, S, 2)`` from correlations ``(N, S, 588)`` and flows ``(N, S, 2)``:
    a first convolution and 8 residual blocks (128 channels, doubling every second block from
    the third, to 1024), then ``dense``."""

    def __init__(self, base_channels: int = 128, blocks: int = 8, kernel_size: int = 3):
        super().__init__()
        in_channels = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2 * 3 + LATENT_DIM + 2  # 718
        self.first_block_conv = _Conv1dSame(in_channels, base_channels, kernel_size)
        layers = []
        out_channels = base_channels
        for i in range(blocks):
            cin = base_channels if i == 0 else base_channels * 2 ** ((i - 1) // 2)
            out_channels = cin * 2 if i > 0 and i % 2 == 0 else cin
            layers.append(_ResidualBlock1d(cin, out_channels, kernel_size, first=i == 0))
        self.basicblock_list = nn.ModuleList(layers)
        self.dense = nn.Linear(out_channels, 2)

    def forward(self, corrs: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        x = torch.cat([corrs, posemb_sincos_xy(flows, LATENT_DIM)], dim=2).permute(0, 2, 1)  # (N, C, S)
        # The original's first_block_norm and final_norm are defined but never applied.
        out = F.relu(self.first_block_conv(x))
        for block in self.basicblock_list:
            out = block(out)
        return self.dense(F.relu(out).permute(0, 2, 1))


class PipsPlusPlus(nn.Module):
    """PIPs++ network (checkpoint-compatible with pips2's ``reference_model``).

    Args:
        stride: encoder downsampling (8 for the official weights and SAM-PT).
    """

    latent_dim = LATENT_DIM

    def __init__(self, stride: int = 8):
        super().__init__()
        self.stride = stride
        self.fnet = FeatureEncoder(stride=stride, output_dim=LATENT_DIM)
        self.delta_block = _DeltaBlock1d()
        # In the checkpoint but unused by the forward pass (as in the original).
        self.norm = nn.GroupNorm(1, LATENT_DIM)

    def encode(self, rgbs: torch.Tensor) -> torch.Tensor:
        """Frames ``(F, 3, H, W)`` (uint8 or float in [0, 255]) -> maps ``(F, 128, H//s, W//s)``,
        ``ENCODER_CHUNK`` frames at a time (frames are normalised independently)."""
        return torch.cat([self.fnet(2 * (rgbs[i : i + ENCODER_CHUNK] / 255.0) - 1.0)
                          for i in range(0, rgbs.shape[0], ENCODER_CHUNK)])

    def track(self, fmaps: torch.Tensor, trajs_init: torch.Tensor, iters: int = 16,
              feat_init: Optional[Sequence[torch.Tensor]] = None):
        """Refine tracks through one window.

        Args:
            fmaps: ``(S, 128, h, w)`` encoder maps of the window, S >= 2.
            trajs_init: ``(S, N, 2)`` initial tracks, input pixels; frame 0 holds the queries and
                stays locked.
            iters: refinement iterations.
            feat_init: ``(feats1, feats2, feats4)`` of a previous window, each ``(S, N, 128)``
                (sliced to S frames), or None to sample the query feature in frame 0.

        Returns:
            ``(coord_predictions (iters + 1, S, N, 2) input pixels, (feats1, feats2, feats4))``.
            Entries ``0 .. iters-1`` are the iterations before frame 0 is re-locked; the last
            is the final result. ``feats2`` / ``feats4`` are the track's features 2 / 4 frames
            earlier (clipped at frame 0) from the last iteration.
        """
        s = trajs_init.shape[0]
        if s < 2:
            raise ValueError(f"PIPs++ windows need at least 2 frames, got {s}")
        coords = trajs_init / float(self.stride)
        if feat_init is not None:
            feats1, feats2, feats4 = feat_init
        else:
            query_feat = bilinear_sample_clamped(fmaps[:1], coords[:1])  # (1, N, C)
            feats1 = feats2 = feats4 = query_feat.repeat(s, 1, 1)
        coords_query = coords[0].clone()
        pyramid = feature_pyramid(fmaps)
        corr1 = correlation_maps(pyramid, feats1)  # the query feature: computed once
        back2 = (torch.arange(s, device=fmaps.device) - 2).clip(min=0)
        back4 = (torch.arange(s, device=fmaps.device) - 4).clip(min=0)
        predictions = []
        for itr in range(iters):
            if itr >= 1:
                feats2 = bilinear_sample_clamped(fmaps[back2], coords[back2])
                feats4 = bilinear_sample_clamped(fmaps[back4], coords[back4])
            corrs = torch.cat([
                sample_correlation_maps(corr1, coords),
                sample_correlation_maps(correlation_maps(pyramid, feats2), coords),
                sample_correlation_maps(correlation_maps(pyramid, feats4), coords),
            ], dim=2).transpose(0, 1)  # (N, S, 588)
            flows = (coords[1:] - coords[:-1]).transpose(0, 1)  # (N, S-1, 2)
            flows = torch.cat([flows, flows[:, -1:]], dim=1)  # the last flow repeated
            coords = coords + self.delta_block(corrs, flows).transpose(0, 1)
            predictions.append(coords * self.stride)
            coords[0] = coords_query
        predictions.append(coords * self.stride)
        return torch.stack(predictions), (feats1, feats2, feats4)

    def forward(self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int = 3,
                feat_init: Optional[Sequence[torch.Tensor]] = None):
        """The original ``Pips.forward`` (pips2) in inference: ``trajs_e0 (B, S, N, 2)`` input
        pixels, ``rgbs (B, S, 3, H, W)`` (uint8 or float in [0, 255]), ``feat_init`` a tuple of
        three ``(B, S, N, 128)`` or None.

        Returns ``(coord_predictions (iters + 1, B, S, N, 2), (feats1, feats2, feats4) each
        (B, S, N, 128))``.
        """
        outs = [
            self.track(self.encode(rgbs[b]), trajs_e0[b], iters,
                       None if feat_init is None else [f[b] for f in feat_init])
            for b in range(rgbs.shape[0])
        ]
        coords = torch.stack([c for c, _ in outs], dim=1)
        feats = tuple(torch.stack([f[i] for _, f in outs]) for i in range(3))
        return coords, feats


# --------------------------------------------------------------------------------------------
# SAM-PT's wrapper logic
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def pips_plus_plus_track_direction(model: PipsPlusPlus, features: Callable[[Sequence[int]], torch.Tensor],
                                   frames: Sequence[int], points: torch.Tensor, *, iters: int = 16,
                                   max_sequence_length: int = 128, calls: Optional[list] = None) -> torch.Tensor:
    """SAM-PT's one-direction PIPs++ loop (``PipsPlusPlusPointTracker._forward``).

    Args:
        model: the network.
        features: maps video frame indices to encoder maps ``(len, 128, h, w)``.
        frames: the video frames of this direction, in tracking order (``frames[0]`` holds the
            queries); at least 2.
        points: ``(N, 2)`` query positions, input pixels.
        calls: optional list receiving one dict per model call.

    Windows hold ``max_sequence_length`` frames (fewer only when the video is shorter); each
    next window starts at the previous one's last frame, and the last one is moved back to
    end at the last frame. Every window starts from the tracks so far, extended at zero
    velocity, and takes the previous window's features (sliced) as ``feat_init``.

    Returns ``(len(frames), N, 2)`` tracks in input pixels.
    """
    num = len(frames)
    trajs = points[None].repeat(num, 1, 1)  # zero-velocity start
    cur = 0
    feat_init = None
    while True:
        end = cur + max_sequence_length
        if end > num:
            cur = max(cur - (end - num), 0)
            end = num
        local = end - cur
        if feat_init is not None:
            feat_init = [f[:local] for f in feat_init]
        window = list(frames[cur:end])
        init = trajs[cur:end].clone()
        given = feat_init is not None
        coords, feat_init = model.track(features(window), init, iters, feat_init)
        if calls is not None:
            calls.append(dict(frames=window, trajs_e0=init, iters=iters, feat_init_given=given,
                              coord_predictions1=coords, feats1_first=feat_init[0][0],
                              feats2_last=feat_init[1], feats4_last=feat_init[2]))
        trajs[cur:end] = coords[-1]
        trajs[end:] = trajs[end - 1 : end]  # the future continues at zero velocity
        if end >= num:
            return trajs
        cur = cur + max_sequence_length - 1


class PipsPlusPlusTracker(PointTracker):
    """SAM-PT's PIPs++ point tracker.

    Behaviour of SAM-PT's ``PipsPlusPlusPointTracker`` with its config
    (``configs/model/point_tracker/pips_plus_plus.yaml``): no resize by default, frames
    normalised to [-1, 1] by the model, queries ``(t, x, y)`` input pixels. Queries are grouped
    by query frame t; each group is tracked forward on frames ``t .. T-1`` and backward on
    frames ``t .. 0`` (:func:`pips_plus_plus_track_direction`), and frames before t come from
    the backward pass. PIPs++ predicts no visibility: every point is visible in every frame.

    Where SAM-PT's wrapper runs - all queries in one frame t < T-1 - the results are the
    original's. Where it does not, this wrapper does what it evidently intends:

    * queries in several frames: the original indexes each group's result with the global query
      index and fails (``IndexError``); here each query gets its own group's track.
    * queries in the last frame T-1: the original drops frame T-1 and returns T-1 frames; here
      frame T-1 holds the query itself (what the backward pass computes there, exactly).

    Args:
        checkpoint: registry name (``pips_plus_plus_reference_model``: the official archive).
        checkpoint_path: explicit file (the archive, an extracted ``model-<step>.pth``, or a
            state dict) or the extracted ``reference_model/`` directory (largest step wins);
            takes precedence over ``checkpoint``.
        stride: encoder stride, 8.
        max_sequence_length: frames per model call, 128.
        iters: refinement iterations per call, 16.
        image_size: ``(height, width)`` to resize frames to (bilinear, ``align_corners=False``,
            no antialiasing, on ``rgb / 255``), or None (SAM-PT's config: input resolution).
            Tracks are scaled back to input pixels. The original scales query x by
            ``height / H`` and y by ``width / W`` (and back the same way), which is only right
            when the resize keeps the aspect ratio; here x scales by the widths and y by the
            heights, which agrees with the original whenever it is right.
        reuse_features: encode every frame once and share the maps between groups and
            directions (the same numbers; keeps ``T x 128 x h/8 x w/8`` floats alive). False
            encodes each call's frames, as the original does.
    """

    def __init__(self, checkpoint: Optional[str] = "pips_plus_plus_reference_model",
                 checkpoint_path: Optional[str] = None, stride: int = 8, max_sequence_length: int = 128,
                 iters: int = 16, image_size: Optional[Sequence[int]] = None, reuse_features: bool = True):
        super().__init__()
        if int(max_sequence_length) != max_sequence_length or max_sequence_length < 2:
            raise ValueError(
                f"PipsPlusPlusTracker max_sequence_length must be an integer >= 2, got {max_sequence_length}"
            )
        if int(iters) != iters or iters < 1:
            raise ValueError(f"PipsPlusPlusTracker iters must be an integer >= 1, got {iters}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"PipsPlusPlusTracker image_size must be (height, width) or null, got {image_size!r}")
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.max_sequence_length = int(max_sequence_length)
        self.iters = int(iters)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.reuse_features = reuse_features
        self.weights_path: Optional[str] = None  # set by prepare()
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = PipsPlusPlus(stride=stride).eval()

    def prepare(self) -> None:
        """Resolve (cache, download) and load the weights, once."""
        if self.weights_path is None:
            what = f"PIPs++ ({self.checkpoint_path or self.checkpoint})"
            path = resolve_pips_checkpoint(self.checkpoint, self.checkpoint_path, what)
            load_state_dict_file(self.model, path, what, read=read_pips_checkpoint)
            self.weights_path = path

    def extra_repr(self) -> str:
        return (f"max_sequence_length={self.max_sequence_length}, iters={self.iters}, "
                f"image_size={self.image_size}")

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict] = None):
        """Track ``queries (B, N, 3)`` through uint8 ``video (B, T, 3, H, W)``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool,
        all True)``. ``details`` (optional dict) receives batch element 0's model calls per
        query frame: ``details["groups"][t] = {"points", "forward_calls", "backward_calls"}``.
        """
        self.check_inputs(video, queries)
        height, width = video.shape[-2:] if self.image_size is None else self.image_size
        check_frame_size(height, width, self.model.stride, "PipsPlusPlusTracker")
        self.prepare()
        device = next(self.model.parameters()).device
        trajs = [self._track_one(video[b].to(device), queries[b].to(device).float(), details if b == 0 else None)
                 for b in range(video.shape[0])]
        trajectories = torch.stack(trajs).to(video.device)
        return trajectories, torch.ones(trajectories.shape[:-1], dtype=torch.bool, device=video.device)

    def _track_one(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict]) -> torch.Tensor:
        num_frames, _, height, width = video.shape
        queries = queries.clone()
        if self.image_size is not None:
            rgbs = F.interpolate(video.float() / 255.0, size=self.image_size, mode="bilinear") * 255.0
            queries[:, 1] *= self.image_size[1] / width
            queries[:, 2] *= self.image_size[0] / height
        else:
            rgbs = video
        if self.reuse_features:
            all_maps = self.model.encode(rgbs)
            features = lambda frames: all_maps[list(frames)]  # noqa: E731
        else:
            features = lambda frames: self.model.encode(rgbs[list(frames)])  # noqa: E731
        options = dict(iters=self.iters, max_sequence_length=self.max_sequence_length)
        out = torch.zeros((num_frames, queries.shape[0], 2), device=queries.device)
        if details is not None:
            details["groups"] = {}
        query_frames = queries[:, 0].long()
        for t in dict.fromkeys(query_frames.tolist()):  # groups in order of first appearance
            members = (query_frames == t).nonzero()[:, 0]
            points = queries[members, 1:]
            fwd_calls = [] if details is not None else None
            bwd_calls = [] if details is not None else None
            if num_frames == 1:
                track = points[None]
            else:
                # The original's order: forward ("left") on frames t .. T-1, then backward
                # ("right") on frames t .. 0, whose frame t is the locked query itself.
                track = None
                if t < num_frames - 1:
                    track = pips_plus_plus_track_direction(self.model, features, range(t, num_frames), points,
                                                           calls=fwd_calls, **options)
                if t > 0:
                    backward = pips_plus_plus_track_direction(self.model, features, range(t, -1, -1), points,
                                                              calls=bwd_calls, **options).flip(0)
                    track = backward if track is None else torch.cat([backward[:t], track])
            out[:, members] = track
            if details is not None:
                details["groups"][t] = dict(points=members, forward_calls=fwd_calls, backward_calls=bwd_calls)
        if self.image_size is not None:
            out[..., 0] *= width / self.image_size[1]
            out[..., 1] *= height / self.image_size[0]
        return out

