"""TAPIR and BootsTAPIR (Doersch et al., 2023 and 2024): one PyTorch network, two trackers.

BootsTAPIR is TAPIR with two additions, so one network class covers both (:data:`VARIANTS`):

* ``"tapir"`` - TAPIR as SAM-PT runs it (deepmind/tapnet's JAX model, ``pyramid_level=0``,
  no extra convolutions). The official JAX checkpoint ``tapir_checkpoint_panning.npy`` loads
  through :func:`haiku_to_torch`, and its PyTorch conversion ``tapir_checkpoint_panning.pt``
  loads as a plain state dict.
* ``"bootstapir"`` - BootsTAPIR as the official PyTorch port ships it (``tapnet/torch``,
  ``TAPIR(pyramid_level=1)``, five extra residual convolutions on the stride-8 features).
  ``bootstapir_checkpoint_v2.pt`` loads as a plain state dict. The JAX
  ``bootstapir_checkpoint_v2.npy`` is converted like TAPIR's; the names of its extra
  convolutions follow Haiku's naming rules (no copy of that file was available to check them;
  a mismatch fails loudly, as unexpected/missing keys).

The module and parameter names are those of the official PyTorch port
(``resnet_torch``, ``torch_cost_volume_track_mods``, ``torch_pips_mixer``, ``extra_convs``), so
its ``.pt`` files load unchanged. Three layers:

* :class:`TAPIR` - the network. ``forward(video, query_points)`` works on a ``(B, T, 256, 256,
  3)`` video in ``[-1, 1]`` with ``(t, y, x)`` queries in its pixels, and returns what the
  original returns (``tracks``, ``occlusion``, ``expected_dist`` and the ``unrefined_*`` lists).
* :func:`tapir_predict` - SAM-PT's TAPIR wrapper (``TapirPointTracker.forward``): resize the
  frames, scale the queries, call the network, map the tracks back and threshold the visibility.
* :class:`TapirTracker` - that wrapper behind :class:`PointTracker` (``variant`` picks TAPIR or BootsTAPIR).

Behaviour reproduced from the originals (each checked against reference outputs of the original
code, see ``tests/test_tracker_tapir.py``):

* Frames are resized to 256x256 with antialiased bilinear interpolation
  (``F.interpolate(..., antialias=True)``), then mapped to ``[-1, 1]``.
* Queries ``(t, x, y)`` are scaled by ``(256 / W, 256 / H)`` with no half-pixel shift and passed
  as ``(t, y, x)``; tracks are divided by the same factors. Coordinates are raster coordinates:
  ``(0, 0)`` is the top-left corner of the top-left pixel.
* Visibility is ``(1 - sigmoid(occlusion)) * (1 - sigmoid(expected_dist)) > threshold``.
* Only the initial (cost-volume) estimate is set to the query point on its own query frame; after
  refinement a point is neither locked to its query position there nor forced visible.
* The original draws a random permutation of the queries to form chunks of 64; every query is
  processed independently of the others, so the chunks here are taken in order and the global
  random state is left alone (results agree to float rounding).

BootsTAPIR's softmax temperature: DeepMind trained BootsTAPIR with ``softmax_temperature=10``
(``configs/tapir_bootstrap_config.py``) and its JAX demo runs it so; the official PyTorch demo
builds ``TAPIR(pyramid_level=1)`` and so leaves the constructor default 20. The default here is
10, the value the weights were trained and evaluated with; ``softmax_temperature=20`` reproduces
the PyTorch demo. (TAPIR itself uses 20 everywhere.)

Memory: the feature grids take 3 MB per frame (64x64x128 + 32x32x256 floats). Per chunk of
``query_chunk_size`` queries the cost volume heads hold ``16 x 32 x 32`` floats per query and
frame (64 KB) and the refinement ``49 x (128 + 256 [+ 256])`` sampled features per query and
frame; lower ``query_chunk_size`` for long videos with many points.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file, read_state_dict_file, resolve_checkpoint
from sampt.errors import CheckpointError
from sampt.trackers.base import PointTracker

HIRES_DIM = 128
LOWRES_DIM = 256
# Refinement correlates 7x7 neighbourhoods: offsets -3..3, ordered (dy, dx) with dy slowest.
_PATCH_RADIUS = 3


@dataclass(frozen=True)
class TapirVariant:
    """Architecture and tracker defaults of one member of the family (``description``: its name)."""

    pyramid_level: int
    extra_convs: bool
    softmax_temperature: float
    checkpoint: str
    visibility_threshold: float
    description: str


VARIANTS: dict[str, TapirVariant] = {
    "tapir": TapirVariant(
        pyramid_level=0, extra_convs=False, softmax_temperature=20.0,
        checkpoint="tapir_checkpoint_panning", visibility_threshold=0.1,
        description="TAPIR",
    ),
    "bootstapir": TapirVariant(
        pyramid_level=1, extra_convs=True, softmax_temperature=10.0,
        checkpoint="bootstapir_checkpoint_v2", visibility_threshold=0.5,
        description="BootsTAPIR",
    ),
}

# Registry checkpoints -> the variant whose architecture they fit.
CHECKPOINT_VARIANTS: dict[str, str] = {
    "tapir_checkpoint_panning": "tapir",
    "tapir_checkpoint_panning_pt": "tapir",
    "bootstapir_checkpoint_v2": "bootstapir",
    "bootstapir_checkpoint_v2_npy": "bootstapir",
}


# --------------------------------------------------------------------------------------------
# building blocks (key names of tapnet/torch)
# --------------------------------------------------------------------------------------------
class _BlockV2(nn.Module):
    """Pre-activation ResNet v2 block with instance norm.

    ``relu(norm(x))`` feeds both the 3x3 convolutions and the projection shortcut; a block
    without projection adds its raw input. Stride-2 convolutions pad ``(0, 2, 0, 2)``, which
    reproduces JAX's "SAME" padding.
    """

    def __init__(self, channels_in: int, channels_out: int, stride: int, use_projection: bool):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.padding = (1, 1, 1, 1) if stride == 1 else (0, 2, 0, 2)
        self.proj_conv = (
            nn.Conv2d(channels_in, channels_out, kernel_size=1, stride=stride, bias=False)
            if use_projection else None
        )
        self.bn_0 = nn.InstanceNorm2d(channels_in, eps=1e-5, affine=True)
        self.conv_0 = nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=stride, bias=False)
        self.conv_1 = nn.Conv2d(channels_out, channels_out, kernel_size=3, padding=1, bias=False)
        self.bn_1 = nn.InstanceNorm2d(channels_out, eps=1e-5, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = torch.relu(self.bn_0(x))
        if self.proj_conv is not None:
            shortcut = self.proj_conv(x)
        x = self.conv_0(F.pad(x, self.padding))
        x = self.conv_1(torch.relu(self.bn_1(x)))
        return x + shortcut


class _BlockGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            _BlockV2(channels_in if i == 0 else channels_out, channels_out, stride if i == 0 else 1, i == 0)
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _ResNet(nn.Module):
    """TAPIR's ResNet: 7x7/2 convolution, then groups of (64, 128, 256, 256) channels with
    strides (1, 2, 2, 1). Returns the stride-4 (group 1) and stride-8 (group 3) maps."""

    def __init__(self, blocks_per_group=(2, 2, 2, 2)):
        super().__init__()
        channels = (64, HIRES_DIM, 256, LOWRES_DIM)
        strides = (1, 2, 2, 1)
        self.initial_conv = nn.Conv2d(3, 64, kernel_size=7, stride=2, bias=False)
        self.block_groups = nn.ModuleList(
            _BlockGroup(channels[i - 1] if i else 64, channels[i], blocks_per_group[i], strides[i])
            for i in range(4)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (2, 4, 2, 4): JAX "SAME" for a 7x7 stride-2 kernel (the last padded row/column is unused).
        x = self.initial_conv(F.pad(x, (2, 4, 2, 4)))
        outputs = []
        for group in self.block_groups:
            x = group(x)
            outputs.append(x)
        return outputs[1], outputs[3]


class _ExtraConvBlock(nn.Module):
    """BootsTAPIR's extra block: ``x = LN(x); x = x + conv_1(gelu(conv(x)))`` (the residual is
    added to the layer-normed tensor)."""

    def __init__(self, channels: int = LOWRES_DIM, multiplier: int = 4):
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels * multiplier, kernel_size=3, padding=1)
        self.conv_1 = nn.Conv2d(channels * multiplier, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(F, C, h, w) -> (F, C, h, w)``."""
        x = self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv_1(F.gelu(self.conv(x), approximate="tanh"))


class _ExtraConvs(nn.Module):
    def __init__(self, num_layers: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(_ExtraConvBlock() for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _ChannelsMixer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.mlp2_up = nn.Linear(channels, channels * 4)
        self.mlp2_down = nn.Linear(channels * 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp2_down(F.gelu(self.mlp2_up(x), approximate="tanh"))


class _MixerBlock(nn.Module):
    """PIPs mixer block: a depthwise temporal convolution (channel multiplier 4, the four
    copies summed back) and a channel MLP, each pre-normed and residual."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.layer_norm = nn.LayerNorm(channels, bias=False)
        self.mlp1_up = nn.Conv1d(channels, channels * 4, kernel_size, padding=pad, groups=channels)
        self.mlp1_up_1 = nn.Conv1d(channels * 4, channels * 4, kernel_size, padding=pad, groups=channels * 4)
        self.layer_norm_1 = nn.LayerNorm(channels, bias=False)
        self.conv_channels_mixer = _ChannelsMixer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, T, C) -> (M, T, C)``."""
        y = self.layer_norm(x).transpose(1, 2)
        y = self.mlp1_up_1(F.gelu(self.mlp1_up(y), approximate="tanh")).transpose(1, 2)
        # Output channel 4c + m came from input channel c: sum the 4 copies of each channel.
        x = y[..., 0::4] + y[..., 1::4] + y[..., 2::4] + y[..., 3::4] + x
        return self.conv_channels_mixer(self.layer_norm_1(x)) + x


class _PipsMixer(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 512, num_blocks: int = 12,
                 kernel_size: int = 3):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(_MixerBlock(hidden_dim, kernel_size) for _ in range(num_blocks))
        self.layer_norm = nn.LayerNorm(hidden_dim, bias=False)
        self.linear_1 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        for block in self.blocks:
            x = block(x)
        return self.linear_1(self.layer_norm(x))


# --------------------------------------------------------------------------------------------
# sampling helpers
# --------------------------------------------------------------------------------------------
def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Unit vectors along dim 1 (channels), the originals' ``x / sqrt(max(sum(x^2), 1e-12))``."""
    return x / torch.sqrt(torch.clamp(torch.sum(torch.square(x), dim=1, keepdim=True), min=1e-12))


def _sample_query_features(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of ``grid (B, T, C, h, w)`` at ``points (B, N, 3)`` = ``(t, y, x)`` in grid
    units (raster ``y``/``x``, frame index ``t``), clamped at the border -> ``(B, N, C)``."""
    _, num_frames, _, height, width = grid.shape
    t = 2 * ((points[..., 0] + 0.5) / num_frames) - 1
    y = 2 * (points[..., 1] / height) - 1
    x = 2 * (points[..., 2] / width) - 1
    coords = torch.stack([x, y, t], dim=-1)[:, :, None, None, :]  # (B, N, 1, 1, 3)
    out = F.grid_sample(grid.transpose(1, 2), coords, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (B, C, N, 1, 1)
    return out[..., 0, 0].transpose(1, 2)


def _sample_neighbourhoods(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``grid (B, T, C, h, w)`` at ``coords (B, N, T, S, 2)`` = ``(y, x)`` in
    raster grid units, zero outside the grid -> ``(B, N, T, S, C)``.

    (The torch port normalises both coordinates by the grid height; that is the same here, where
    every grid is square.)
    """
    b, t, c, h, w = grid.shape
    _, n, _, s, _ = coords.shape
    coords = coords.permute(0, 2, 1, 3, 4).reshape(b * t, n, s, 2)
    norm = torch.stack([2 * (coords[..., 1] / w) - 1, 2 * (coords[..., 0] / h) - 1], dim=-1)
    out = F.grid_sample(grid.reshape(b * t, c, h, w), norm, mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (B*T, C, N, S)
    return out.reshape(b, t, c, n, s).permute(0, 3, 1, 4, 2)


def _soft_argmax(heatmaps: torch.Tensor, radius: float = 5.0) -> torch.Tensor:
    """``(B, N, T, h, w)`` softmaxed heatmaps -> ``(B, N, T, 2)`` ``(x, y)`` in cells.

    The softmax-weighted mean of the cell centres ``(i + 0.5)`` within ``radius`` (squared
    distance ``< radius^2``) of the argmax cell.
    """
    *lead, h, w = heatmaps.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=heatmaps.device), torch.arange(w, device=heatmaps.device),
                            indexing="ij")
    centres = torch.stack([xs + 0.5, ys + 0.5], dim=-1).to(heatmaps.dtype)  # (h, w, 2)
    argmax = heatmaps.reshape(*lead, h * w).argmax(dim=-1)
    peak = centres.reshape(h * w, 2)[argmax]  # (..., 2)
    near = (torch.square(centres - peak[..., None, None, :]).sum(dim=-1, keepdim=True) < radius**2)
    weights = near * heatmaps[..., None]  # (..., h, w, 1)
    total = torch.sum(centres * weights, dim=(-3, -2))
    mass = torch.clamp(torch.sum(weights, dim=(-3, -2)), min=1e-12)
    return total / mass


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
class TAPIR(nn.Module):
    """The TAPIR / BootsTAPIR network, key-compatible with ``tapnet/torch/tapir_model.TAPIR``.

    Args:
        pyramid_level: extra 2x2-average-pooled copies of the stride-8 grid correlated during
            refinement (TAPIR 0, BootsTAPIR 1).
        extra_convs: BootsTAPIR's five residual convolutions on the stride-8 features.
        softmax_temperature: multiplies the cost-volume heatmap before the softmax.
        num_pips_iter: refinement iterations.
        feature_chunk_size: frames per ResNet call (memory only; 0: all at once).
        initial_resolution: the frame size the network works at (frames must be this size).
    """

    def __init__(self, pyramid_level: int = 0, extra_convs: bool = False, softmax_temperature: float = 20.0,
                 num_pips_iter: int = 4, mixer_hidden_dim: int = 512, num_mixer_blocks: int = 12,
                 mixer_kernel_shape: int = 3, feature_chunk_size: int = 10,
                 initial_resolution: tuple[int, int] = (256, 256)):
        super().__init__()
        if initial_resolution[0] % 8 or initial_resolution[1] % 8:
            raise ValueError(f"initial_resolution must be multiples of 8, got {initial_resolution}")
        self.pyramid_level = int(pyramid_level)
        self.softmax_temperature = float(softmax_temperature)
        self.num_pips_iter = int(num_pips_iter)
        self.feature_chunk_size = int(feature_chunk_size)
        self.initial_resolution = (int(initial_resolution[0]), int(initial_resolution[1]))

        self.resnet_torch = _ResNet()
        self.torch_cost_volume_track_mods = nn.ModuleDict({
            "hid1": nn.Conv2d(1, 16, 3, 1, 1),
            "hid2": nn.Conv2d(16, 1, 3, 1, 1),
            "hid3": nn.Conv2d(16, 32, 3, 2, 0),
            "hid4": nn.Linear(32, 16),
            "occ_out": nn.Linear(16, 2),
        })
        dim = 4 + HIRES_DIM + LOWRES_DIM
        patch = (2 * _PATCH_RADIUS + 1) ** 2
        self.torch_pips_mixer = _PipsMixer(dim + (self.pyramid_level + 2) * patch, dim, mixer_hidden_dim,
                                           num_mixer_blocks, mixer_kernel_shape)
        self.extra_convs = _ExtraConvs() if extra_convs else None

    # ------------------------------------------------------------------ features
    def feature_grids(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, H, W, 3)`` frames in [-1, 1] -> L2-normalised grids ``(lowres (B, T, 256, H/8,
        W/8), hires (B, T, 128, H/4, W/4))`` (channels first)."""
        b, t, h, w, c = video.shape
        frames = video.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        step = self.feature_chunk_size if self.feature_chunk_size > 0 else max(b * t, 1)
        lowres, hires = [], []
        for start in range(0, b * t, step):
            hi, lo = self.resnet_torch(frames[start : start + step])
            if self.extra_convs is not None:
                lo = self.extra_convs(lo)
            lowres.append(_l2_normalise(lo))
            hires.append(_l2_normalise(hi))
        lowres = torch.cat(lowres)
        hires = torch.cat(hires)
        return lowres.reshape(b, t, *lowres.shape[1:]), hires.reshape(b, t, *hires.shape[1:])

    def query_features(self, lowres: torch.Tensor, hires: torch.Tensor,
                       query_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, N, 256), (B, N, 128)`` at ``query_points (B, N, 3)`` ``(t, y, x)`` in
        frame pixels (scaled to each grid, no half-pixel shift)."""
        height, width = self.initial_resolution
        out = []
        for grid in (lowres, hires):
            scale = query_points.new_tensor([1.0, grid.shape[-2], grid.shape[-1]])
            size = query_points.new_tensor([1.0, height, width])
            out.append(_sample_query_features(grid, query_points * scale / size))
        return out[0], out[1]

    # ------------------------------------------------------------------ initial estimate
    def tracks_from_cost_volume(self, query_lowres: torch.Tensor, lowres: torch.Tensor,
                                query_points: Optional[torch.Tensor]):
        """The cost-volume estimate: ``(points (B, N, T, 2) (x, y) frame pixels, occlusion and
        expected_dist logits (B, N, T))``. With ``query_points`` ``(t, y, x)`` the estimate on each
        point's query frame (``round(t)``) is the query point itself."""
        mods = self.torch_cost_volume_track_mods
        b, t, _, h, w = lowres.shape
        n = query_lowres.shape[1]
        cost = torch.einsum("bnc,btchw->tbnhw", query_lowres, lowres).reshape(t * b * n, 1, h, w)
        hidden = torch.relu(mods["hid1"](cost))
        heat = mods["hid2"](hidden).reshape(t, b, n, h * w).permute(1, 2, 0, 3)
        heat = F.softmax(heat * self.softmax_temperature, dim=-1).reshape(b, n, t, h, w)
        points = _soft_argmax(heat)
        height, width = self.initial_resolution
        points = points * points.new_tensor([width, height]) / points.new_tensor([w, h])
        if query_points is not None:
            frames = torch.arange(t, device=points.device)
            is_query = (torch.round(query_points[..., 0:1]) == frames)[..., None]  # (B, N, T, 1)
            points = torch.where(is_query, query_points[:, :, None, [2, 1]], points)

        occ = torch.relu(mods["hid3"](F.pad(hidden, (0, 2, 0, 2))))
        occ = torch.relu(mods["hid4"](torch.mean(occ, dim=(-2, -1))))
        occ = mods["occ_out"](occ).reshape(t, b, n, 2).permute(1, 2, 0, 3)
        return points, occ[..., 0], occ[..., 1]

    # ------------------------------------------------------------------ refinement
    def refine(self, queries: list[torch.Tensor], pyramid: list[torch.Tensor], points: torch.Tensor,
               occlusion: torch.Tensor, expected_dist: torch.Tensor, mixer_feats: Optional[torch.Tensor]):
        """One PIPs-mixer iteration at the initial resolution.

        ``queries[i] (B, N, C_i)`` and ``pyramid[i] (B, T, C_i, h_i, w_i)``: hires, lowres, then
        the pooled lowres levels. Returns updated ``(points, occlusion, expected_dist,
        mixer_feats (B, N, T, 384))``.
        """
        height, width = self.initial_resolution
        r = _PATCH_RADIUS
        offsets = torch.arange(-r, r + 1, device=points.device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        patch = torch.stack([dy, dx], dim=-1).reshape(-1, 2)
        corrs = []
        for level, (query, grid) in enumerate(zip(queries, pyramid)):
            gh, gw = grid.shape[-2:]
            yx = (points * points.new_tensor([gw, gh]) / points.new_tensor([width, height])).flip(-1)
            neighbourhood = _sample_neighbourhoods(grid, yx[:, :, :, None, :] + patch)  # (B, N, T, S, C)
            if mixer_feats is None:
                corrs.append(torch.einsum("bnfsc,bnc->bnfs", neighbourhood, query))
            else:
                running = mixer_feats[..., :HIRES_DIM] if level == 0 else mixer_feats[..., HIRES_DIM:]
                corrs.append(torch.einsum("bnfsc,bnfc->bnfs", neighbourhood, running))
        corrs = torch.cat(corrs, dim=-1)
        b, n, t, _ = corrs.shape
        if mixer_feats is None:
            mixer_feats = torch.cat([queries[0], queries[1]], dim=-1)[:, :, None].expand(b, n, t, -1)
        mlp_input = torch.cat([torch.zeros_like(points), occlusion[..., None], expected_dist[..., None],
                               mixer_feats, corrs], dim=-1)
        res = self.torch_pips_mixer(mlp_input.reshape(b * n, t, -1)).reshape(b, n, t, -1)
        # Refinement runs at the initial resolution: the position update's scale is 1.
        return (res[..., :2] + points, res[..., 2] + occlusion, res[..., 3] + expected_dist,
                res[..., 4:] + mixer_feats)

    # ------------------------------------------------------------------ whole video
    def forward(self, video: torch.Tensor, query_points: torch.Tensor, query_chunk_size: int = 64,
                internals: Optional[dict] = None) -> dict:
        """Track ``query_points (B, N, 3)`` ``(t, y, x)`` through ``video (B, T, H, W, 3)``.

        ``video`` is float in [-1, 1] at ``initial_resolution``; coordinates are its pixels.
        Returns ``tracks (B, N, T, 2)`` ``(x, y)``, ``occlusion`` and ``expected_dist`` logits
        ``(B, N, T)`` (those of the last refinement), and ``unrefined_tracks`` /
        ``unrefined_occlusion`` / ``unrefined_expected_dist``: lists with the cost-volume estimate
        and the earlier refinement iterations. ``internals`` (optional dict) receives the feature
        grids and query features.
        """
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, T, H, W, 3), got shape {tuple(video.shape)}")
        if tuple(video.shape[2:4]) != self.initial_resolution:
            raise ValueError(f"video frames must be {self.initial_resolution}, got {tuple(video.shape[2:4])}")
        if query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be >= 1, got {query_chunk_size}")
        b, t, n = video.shape[0], video.shape[1], query_points.shape[1]
        if n == 0:
            empty = video.new_zeros((b, 0, t))
            return dict(tracks=video.new_zeros((b, 0, t, 2)), occlusion=empty, expected_dist=empty,
                        unrefined_tracks=[video.new_zeros((b, 0, t, 2))] * self.num_pips_iter,
                        unrefined_occlusion=[empty] * self.num_pips_iter,
                        unrefined_expected_dist=[empty] * self.num_pips_iter)
        lowres, hires = self.feature_grids(video)
        query_lowres, query_hires = self.query_features(lowres, hires, query_points)
        if internals is not None:
            internals.update(lowres=lowres, hires=hires, query_feats_lowres=query_lowres,
                             query_feats_hires=query_hires)
        pyramid = [hires, lowres]
        for _ in range(self.pyramid_level):
            c, h, w = pyramid[-1].shape[2:]
            pooled = F.avg_pool2d(pyramid[-1].reshape(b * t, c, h, w), kernel_size=2, stride=2)
            pyramid.append(pooled.reshape(b, t, c, h // 2, w // 2))

        # steps[k] = chunks of (tracks, occlusion, expected_dist) after k refinement iterations.
        steps: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(self.num_pips_iter + 1)]
        for start in range(0, n, query_chunk_size):
            chunk = slice(start, start + query_chunk_size)
            q_lo, q_hi = query_lowres[:, chunk], query_hires[:, chunk]
            points, occ, expd = self.tracks_from_cost_volume(q_lo, lowres, query_points[:, chunk])
            steps[0].append((points, occ, expd))
            queries = [q_hi, q_lo] + [q_lo] * self.pyramid_level
            feats = None
            for i in range(self.num_pips_iter):
                points, occ, expd, feats = self.refine(queries, pyramid, points, occ, expd, feats)
                steps[i + 1].append((points, occ, expd))
        merged = [[torch.cat(parts, dim=1) for parts in zip(*chunks)] for chunks in steps]
        tracks, occs, expds = (list(per_step) for per_step in zip(*merged))
        return dict(tracks=tracks[-1], occlusion=occs[-1], expected_dist=expds[-1],
                    unrefined_tracks=tracks[:-1], unrefined_occlusion=occs[:-1],
                    unrefined_expected_dist=expds[:-1])


def build_tapir(variant: str = "tapir", softmax_temperature: Optional[float] = None, **kwargs) -> TAPIR:
    """A :class:`TAPIR` network in eval mode with ``variant``'s architecture (random weights)."""
    spec = _variant(variant)
    temperature = spec.softmax_temperature if softmax_temperature is None else softmax_temperature
    return TAPIR(pyramid_level=spec.pyramid_level, extra_convs=spec.extra_convs,
                 softmax_temperature=temperature, **kwargs).eval()


def _variant(name: str) -> TapirVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown TAPIR variant {name!r}; valid names: {sorted(VARIANTS)}") from None


# --------------------------------------------------------------------------------------------
# checkpoints: the official JAX (.npy, Haiku) and PyTorch (.pt) files
# --------------------------------------------------------------------------------------------
_NPY_MAGIC = b"\x93NUMPY"
_HAIKU_HEADS = {
    "cost_volume_regression_1": "hid1",
    "cost_volume_regression_2": "hid2",
    "cost_volume_occlusion_1": "hid3",
    "cost_volume_occlusion_2": "hid4",
    "occlusion_out": "occ_out",
}
_HAIKU_PARAMS = {"w": "weight", "b": "bias", "scale": "weight", "offset": "bias"}


def _haiku_module_to_torch(module: str) -> Optional[str]:
    """The torch module path of a Haiku module path, or None when it is not part of TAPIR."""
    m = re.fullmatch(r"tapir/~/resnet/~/initial_conv", module)
    if m:
        return "resnet_torch.initial_conv"
    m = re.fullmatch(r"tapir/~/resnet/~/block_group_(\d+)/~/block_(\d+)/~/(\w+)", module)
    if m:
        group, block, name = m.groups()
        name = {"shortcut_conv": "proj_conv"}.get(name, re.sub(r"^instancenorm_(\d)$", r"bn_\1", name))
        if name not in ("proj_conv", "conv_0", "conv_1", "bn_0", "bn_1"):
            return None
        return f"resnet_torch.block_groups.{group}.blocks.{block}.{name}"
    m = re.fullmatch(r"tapir/~/(\w+)", module)
    if m and m.group(1) in _HAIKU_HEADS:
        return f"torch_cost_volume_track_mods.{_HAIKU_HEADS[m.group(1)]}"
    m = re.fullmatch(r"tapir/~/pips_mlp_mixer/(linear|linear_1|layer_norm)", module)
    if m:
        return f"torch_pips_mixer.{m.group(1)}"
    m = re.fullmatch(r"tapir/~/pips_mlp_mixer/block(?:_(\d+))?/(\w+)", module)
    if m:
        index, name = int(m.group(1) or 0), m.group(2)
        if name in ("mlp2_up", "mlp2_down"):
            name = f"conv_channels_mixer.{name}"
        elif name not in ("layer_norm", "layer_norm_1", "mlp1_up", "mlp1_up_1"):
            return None
        return f"torch_pips_mixer.blocks.{index}.{name}"
    # BootsTAPIR's JAX ExtraConvs create, per layer i, layer_norm[_i], conv2_d[_2i], conv2_d_[2i+1]
    # inside the module "extra_convs" (Haiku's default names, numbered in creation order).
    m = re.fullmatch(r"tapir/~/extra_convs/(layer_norm|conv2_d)(?:_(\d+))?", module)
    if m:
        index = int(m.group(2) or 0)
        if m.group(1) == "layer_norm":
            return f"extra_convs.blocks.{index}.layer_norm"
        return f"extra_convs.blocks.{index // 2}.{'conv' if index % 2 == 0 else 'conv_1'}"
    return None


def _haiku_array_to_torch(array: np.ndarray) -> torch.Tensor:
    """Haiku layouts -> torch: Conv2D ``(kh, kw, in, out) -> (out, in, kh, kw)``, Linear
    ``(in, out) -> (out, in)``, DepthwiseConv1D ``(k, 1, C) -> (C, 1, k)``; vectors unchanged."""
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if tensor.ndim == 4:
        return tensor.permute(3, 2, 0, 1).contiguous()
    if tensor.ndim == 3:
        return tensor.permute(2, 1, 0).contiguous()
    if tensor.ndim == 2:
        return tensor.t().contiguous()
    return tensor.reshape(-1)


def haiku_to_torch(params: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Convert a Haiku parameter tree ``{module: {param: array}}`` of the JAX TAPIR to this
    module's state dict.

    Names: ``resnet/~/block_group_g/~/block_b/~/{conv_i, instancenorm_i, shortcut_conv}`` ->
    ``resnet_torch.block_groups.g.blocks.b.{conv_i, bn_i, proj_conv}``; the cost-volume heads
    ``cost_volume_regression_1/2``, ``cost_volume_occlusion_1/2``, ``occlusion_out`` ->
    ``hid1..hid4``, ``occ_out``; mixer ``block``, ``block_1``, ... -> ``blocks.0``, ``blocks.1``,
    ... with ``mlp2_up/down`` under ``conv_channels_mixer``; ``w``/``scale`` -> ``weight``,
    ``b``/``offset`` -> ``bias``. Parameters outside the architecture keep their Haiku name
    (``module/param``), so the strict loader reports them as unexpected keys.
    """
    state = {}
    for module, group in params.items():
        target = _haiku_module_to_torch(module)
        for name, array in group.items():
            if target is None or name not in _HAIKU_PARAMS:
                state[f"{module}/{name}"] = torch.from_numpy(np.array(array))
            else:
                state[f"{target}.{_HAIKU_PARAMS[name]}"] = _haiku_array_to_torch(array)
    return state


def read_haiku_checkpoint(path: os.PathLike | str, what: str) -> dict[str, Mapping[str, np.ndarray]]:
    """The Haiku parameter tree in an official JAX ``.npy`` checkpoint.

    The file is a pickled dict saved with ``np.save``: ``{"params": {module: {param: array}},
    "state": {...}}`` (TAPIR has no state). It must be read with ``allow_pickle=True``, which
    runs the file's pickle: only load files from a source you trust (DeepMind's bucket).
    """
    where = f"{what} checkpoint {os.fspath(path)}"
    try:
        loaded = np.load(path, allow_pickle=True)
        tree = loaded.item() if isinstance(loaded, np.ndarray) and loaded.dtype == object else None
    except Exception as error:
        raise CheckpointError(
            f"cannot read {where} as a JAX .npy checkpoint ({type(error).__name__}: {error})"
        ) from error
    if isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
        tree = tree["params"]
    if not isinstance(tree, Mapping) or not all(
        isinstance(group, Mapping) and all(isinstance(v, np.ndarray) for v in group.values())
        for group in tree.values()
    ):
        raise CheckpointError(
            f"{where} is not a Haiku parameter tree (expected np.save of {{'params': {{module: {{name: "
            "array}}}}, 'state': ...}})"
        )
    return tree


def read_tapir_checkpoint(path: os.PathLike | str, what: str) -> dict[str, torch.Tensor]:
    """The state dict of a TAPIR/BootsTAPIR file: an official JAX ``.npy`` checkpoint (recognised by
    its numpy magic bytes, converted by :func:`haiku_to_torch`) or a PyTorch state dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} checkpoint {os.fspath(path)} does not exist or is not a file")
    with open(path, "rb") as handle:
        magic = handle.read(len(_NPY_MAGIC))
    if magic == _NPY_MAGIC:
        return haiku_to_torch(read_haiku_checkpoint(path, what))
    return read_state_dict_file(path, what)


def load_tapir_checkpoint(model: TAPIR, path: os.PathLike | str, what: str = "TAPIR") -> None:
    """Load ``path`` (``.npy`` or ``.pt``, see :func:`read_tapir_checkpoint`) strictly into ``model``."""
    load_state_dict_file(model, path, what, read=read_tapir_checkpoint)


# --------------------------------------------------------------------------------------------
# SAM-PT's wrapper
# --------------------------------------------------------------------------------------------
def preprocess_video(video: torch.Tensor, resolution: tuple[int, int] = (256, 256)) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> float ``(B, T, h, w, 3)`` in [-1, 1]: antialiased bilinear resize
    (``align_corners=False``) of ``video / 255``, then ``* 2 - 1``."""
    b, t = video.shape[:2]
    frames = F.interpolate(video.flatten(0, 1) / 255, tuple(resolution), mode="bilinear",
                           align_corners=False, antialias=True)
    return (frames.unflatten(0, (b, t)) * 2 - 1).permute(0, 1, 3, 4, 2)


@torch.no_grad()
def tapir_predict(model: TAPIR, video: torch.Tensor, queries: torch.Tensor, visibility_threshold: float,
                  query_chunk_size: int = 64, details: Optional[dict] = None):
    """SAM-PT's ``TapirPointTracker.forward`` around ``model``.

    Args:
        video: uint8 ``(B, T, 3, H, W)``.
        queries: ``(B, N, 3)`` ``(t, x, y)`` in input pixels.
        details: optional dict receiving the model input (``model_video``, ``model_queries``),
            its raw outputs (``model_outputs``), ``internals`` and ``visibility_probs (B, T, N)``.

    Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``.
    """
    height, width = video.shape[-2:]
    size = model.initial_resolution
    # float32, as the original: [256 / H, 256 / W].
    rescale_hw = (torch.tensor(size) / torch.tensor([height, width])).to(video.device)
    frames = preprocess_video(video, size)
    q = queries.float().clone()
    q[:, :, 1:] *= rescale_hw.flip(0)
    q[:, :, 1:] = q[:, :, 1:].flip(-1)  # (t, y, x)
    internals = {} if details is not None else None
    out = model(frames, q, query_chunk_size=query_chunk_size, internals=internals)
    probs = ((1 - torch.sigmoid(out["occlusion"])) * (1 - torch.sigmoid(out["expected_dist"]))).permute(0, 2, 1)
    trajectories = out["tracks"].permute(0, 2, 1, 3) / rescale_hw.flip(-1)
    if details is not None:
        details.update(model_video=frames, model_queries=q, model_outputs=out, internals=internals,
                       visibility_probs=probs)
    return trajectories, probs > visibility_threshold


class TapirTracker(PointTracker):
    """TAPIR or BootsTAPIR behind SAM-PT's TAPIR wrapper (``variant: tapir`` or
    ``bootstapir``; see the module docstring for the behaviour).

    Args:
        variant: ``"tapir"`` or ``"bootstapir"`` (:data:`VARIANTS`): the architecture and the
            defaults of the arguments left at None.
        checkpoint: registry name (``sampt checkpoints``): ``tapir_checkpoint_panning`` (JAX
            ``.npy``, SAM-PT's), ``tapir_checkpoint_panning_pt``, ``bootstapir_checkpoint_v2``
            (``.pt``), ``bootstapir_checkpoint_v2_npy``. None: the variant's default.
        checkpoint_path: explicit ``.npy`` or ``.pt`` file; skips the registry lookup/download.
        visibility_threshold: a point is visible where ``(1 - sigmoid(occlusion)) * (1 -
            sigmoid(expected_dist))`` exceeds it (TAPIR: 0.1 as in SAM-PT; BootsTAPIR: 0.5 as
            DeepMind's demos).
        softmax_temperature: cost-volume softmax temperature (TAPIR 20; BootsTAPIR 10, its
            training value; 20 reproduces the official PyTorch demo).
        query_chunk_size: queries per cost-volume/refinement pass (memory only).
        feature_chunk_size: frames per ResNet call (memory only).
    """

    def __init__(self, variant: str = "tapir", checkpoint: Optional[str] = None,
                 checkpoint_path: Optional[str] = None, visibility_threshold: Optional[float] = None,
                 softmax_temperature: Optional[float] = None, query_chunk_size: int = 64,
                 feature_chunk_size: int = 10):
        super().__init__()
        spec = _variant(variant)
        checkpoint = spec.checkpoint if checkpoint is None else checkpoint
        if checkpoint_path is None and CHECKPOINT_VARIANTS.get(checkpoint, variant) != variant:
            raise ValueError(
                f"checkpoint {checkpoint!r} holds the {CHECKPOINT_VARIANTS[checkpoint]!r} architecture, not "
                f"{variant!r}; {variant!r} checkpoints: "
                f"{sorted(k for k, v in CHECKPOINT_VARIANTS.items() if v == variant)}"
            )
        if int(query_chunk_size) != query_chunk_size or query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be an integer >= 1, got {query_chunk_size}")
        self.variant = variant
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.visibility_threshold = float(
            spec.visibility_threshold if visibility_threshold is None else visibility_threshold
        )
        self.query_chunk_size = int(query_chunk_size)
        self.weights_path: Optional[str] = None  # set by prepare(); recorded (with its md5) next to results
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = build_tapir(variant, softmax_temperature, feature_chunk_size=feature_chunk_size)

    def prepare(self) -> None:
        """Resolve (cache, download) and load the weights, once."""
        if self.weights_path is None:
            path = os.fspath(resolve_checkpoint(self.checkpoint, self.checkpoint_path))
            load_tapir_checkpoint(self.model, path, f"{VARIANTS[self.variant].description} ({self.checkpoint})")
            self.weights_path = path

    def train(self, mode: bool = True) -> "TapirTracker":
        """Inference only: the network stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, checkpoint={self.checkpoint}, "
                f"visibility_threshold={self.visibility_threshold}, "
                f"softmax_temperature={self.model.softmax_temperature}")

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict] = None):
        """Track ``queries (B, N, 3)`` through uint8 ``video (B, T, 3, H, W)``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``;
        ``details`` (optional dict) receives the internals listed in :func:`tapir_predict`.
        """
        self.check_inputs(video, queries)
        self.prepare()
        b, t, _, _, _ = video.shape
        if queries.shape[1] == 0:
            return (torch.zeros((b, t, 0, 2), dtype=torch.float32, device=video.device),
                    torch.zeros((b, t, 0), dtype=torch.bool, device=video.device))
        device = next(self.model.parameters()).device
        traj, visible = tapir_predict(self.model, video.to(device), queries.to(device), self.visibility_threshold,
                                      self.query_chunk_size, details)
        return traj.to(video.device), visible.to(video.device)


