"""CoTracker v1 (Karaev et al., 2023), re-implemented so the official checkpoints load unchanged.

The network reproduces facebookresearch/co-tracker at the commit SAM-PT pins: the same
``state_dict`` keys and shapes (``cotracker_stride_4_wind_8.pth``, ``..._4_wind_12.pth``,
``..._8_wind_16.pth``), the same order of operations, and the same quirks (the transposed 7x7
correlation window, the interleaved track-mask/visibility input, never-computed frames left at
exactly ``(0, 0)``). Three layers:

* :class:`CoTrackerV1` - the network. ``forward(rgbs, queries)`` works in model pixels.
* :func:`cotracker_v1_predict` - the original ``CoTrackerPredictor`` logic (6x6 support grid,
  threshold 0.9, query-frame overwrite, optional zero-test backward pass).
* :class:`CoTrackerTracker` - SAM-PT's CoTracker wrapper behind :class:`PointTracker`.

Memory is linear in the number of frames T: the network slides a window of ``window_len`` frames
with step ``window_len // 2`` and keeps only that window's feature maps; the outputs are
``(T, N)``-sized. With ``reuse_features=True`` the tracker additionally keeps the encoder maps of
every frame (``128 x H/stride x W/stride`` float32, 6.3 MB per frame at 384x512, stride 4) so the
backward pass need not re-encode the video: in memory for a clip in memory, in a temporary file
for a streamed one (``CoTrackerTracker.track_frames``).

Building blocks shared with CoTracker3 (the convolutional encoder, checkpoint loading, sampling
helpers) live here and are imported by :mod:`sampt.trackers.cotracker3`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.trackers.base import PointTracker

log = logging.getLogger(__name__)

# Registry names of the v1 checkpoints -> (stride, window_len) the network is built with.
V1_CHECKPOINTS: dict[str, tuple[int, int]] = {
    "cotracker_stride_4_wind_8": (4, 8),
    "cotracker_stride_4_wind_12": (4, 12),
    "cotracker_stride_8_wind_16": (8, 16),
}

LATENT_DIM = 128


# --------------------------------------------------------------------------------------------
# encoder (shared with CoTracker3; same keys as the original BasicEncoder with instance norm)
# --------------------------------------------------------------------------------------------
class _ResidualBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        self.downsample = None
        if stride != 1:
            # Index 0 is the conv: its keys are downsample.0.weight / .bias in the checkpoints.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), nn.InstanceNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class FeatureEncoder(nn.Module):
    """CNN mapping frames ``(F, 3, H, W)`` in [-1, 1] to maps ``(F, 128, H/stride, W/stride)``.

    Four residual stages at 1/2, 1/4, 1/8 and 1/16 resolution are resized (bilinear,
    align_corners=True) to 1/stride, concatenated (416 channels) and fused by two convolutions.
    Every frame is processed independently (instance normalisation), so frames may be encoded
    in any grouping.
    """

    def __init__(self, stride: int = 4, output_dim: int = LATENT_DIM):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(_ResidualBlock(64, 64, 1), _ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(_ResidualBlock(64, 96, 2), _ResidualBlock(96, 96, 1))
        self.layer3 = nn.Sequential(_ResidualBlock(96, 128, 2), _ResidualBlock(128, 128, 1))
        self.layer4 = nn.Sequential(_ResidualBlock(128, 128, 2), _ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(64 + 96 + 128 + 128, output_dim * 2, kernel_size=3, padding=1)
        self.norm2 = nn.InstanceNorm2d(output_dim * 2)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_hw = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        x = F.relu(self.norm1(self.conv1(x)))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        pyramid = [F.interpolate(t, out_hw, mode="bilinear", align_corners=True) for t in (a, b, c, d)]
        x = F.relu(self.norm2(self.conv2(torch.cat(pyramid, dim=1))))
        return self.conv3(x)


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` with the timm key names ``fc1`` / ``fc2``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, tanh_gelu: bool):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh" if tanh_gelu else "none")
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --------------------------------------------------------------------------------------------
# v1 transformer
# --------------------------------------------------------------------------------------------
class _FusedQkvAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection and ``proj`` (timm 0.9 layout)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class AttnBlock(nn.Module):
    """Pre-norm transformer block; ``attention`` is the self-attention class, whose parameter
    names differ between CoTracker versions (v1: ``_FusedQkvAttention``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attention: type = _FusedQkvAttention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, tanh_gelu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _V1UpdateFormer(nn.Module):
    """Alternating attention over time (per track) and over tracks (per frame)."""

    def __init__(self, depth: int = 6, input_dim: int = 456, hidden: int = 384, heads: int = 8,
                 output_dim: int = LATENT_DIM + 2):
        super().__init__()
        self.input_transform = nn.Linear(input_dim, hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.time_blocks = nn.ModuleList([AttnBlock(hidden, heads) for _ in range(depth)])
        self.space_blocks = nn.ModuleList([AttnBlock(hidden, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, S, input_dim) -> (B, N, S, output_dim)``."""
        x = self.input_transform(x)
        batch, n, s, c = x.shape
        every = len(self.time_blocks) // len(self.space_blocks)
        j = 0
        for i, time_block in enumerate(self.time_blocks):
            x = time_block(x.reshape(batch * n, s, c)).reshape(batch, n, s, c)
            if i % every == 0:
                xs = x.permute(0, 2, 1, 3).reshape(batch * s, n, c)
                xs = self.space_blocks[j](xs)
                x = xs.reshape(batch, s, n, c).permute(0, 2, 1, 3)
                j += 1
        return self.flow_head(x)


# --------------------------------------------------------------------------------------------
# embeddings and sampling helpers
# --------------------------------------------------------------------------------------------
def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(M,)`` positions -> ``(M, dim)`` float32 ``[sin(p w_k), cos(p w_k)]``, ``w_k = 1e4^(-k/(dim/2))``.

    Computed in float64 and rounded once, as the original's numpy code does.
    """
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64, device=positions.device) / (dim / 2.0))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def _flow_embedding(flows: torch.Tensor, channels: int = 64) -> torch.Tensor:
    """``(M, S, 2)`` displacements -> ``(M, S, 2 + 2*channels)``: the flow itself, then interleaved
    sin/cos of x and of y at frequencies ``k * 1000/channels``, ``k = 0, 2, ..``."""
    freqs = torch.arange(0, channels, 2, device=flows.device, dtype=torch.float32) * (1000.0 / channels)
    parts = [flows]
    for axis in (0, 1):
        angles = flows[..., axis : axis + 1] * freqs
        # stack(..., -1).flatten interleaves: even slots sin, odd slots cos.
        parts.append(torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2))
    return torch.cat(parts, dim=-1)


def bilinear_corners_and_weights(x: torch.Tensor, y: torch.Tensor, height: int, width: int):
    """Corner indices (clamped to the map) and weights for bilinear sampling at ``(x, y)``.

    Indices are clamped but weights use the unclamped corners, so outside points take the border
    value - the convention of the original ``bilinear_sample2d``.
    """
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    x1 = x0 + 1
    y1 = y0 + 1
    ix0 = x0.long().clamp(0, width - 1)
    ix1 = x1.long().clamp(0, width - 1)
    iy0 = y0.long().clamp(0, height - 1)
    iy1 = y1.long().clamp(0, height - 1)
    weights = (
        (x1 - x) * (y1 - y),  # (y0, x0)
        (x - x0) * (y1 - y),  # (y0, x1)
        (x1 - x) * (y - y0),  # (y1, x0)
        (x - x0) * (y - y0),  # (y1, x1)
    )
    corners = ((iy0, ix0), (iy0, ix1), (iy1, ix0), (iy1, ix1))
    return corners, weights


def _sample_point_features(fmaps: torch.Tensor, frames: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample frame ``frames[n]`` of ``fmaps (F, C, h, w)`` at ``xy[n]`` -> ``(N, C)``."""
    _, _, height, width = fmaps.shape
    corners, weights = bilinear_corners_and_weights(xy[:, 0], xy[:, 1], height, width)
    out = None
    for (iy, ix), w in zip(corners, weights):
        term = w[:, None] * fmaps[frames, :, iy, ix]
        out = term if out is None else out + term
    return out


def _sample_pos_embedding(xy: torch.Tensor, height: int, width: int, dim: int) -> torch.Tensor:
    """The 2-D sin/cos table of a ``(height, width)`` grid sampled bilinearly at ``xy (N, 2)``.

    The first ``dim/2`` channels encode x and the rest y. Only the four corner entries of each
    point are evaluated, instead of building the ``(height, width, dim)`` table.
    """
    corners, weights = bilinear_corners_and_weights(xy[:, 0], xy[:, 1], height, width)
    out = None
    for (iy, ix), w in zip(corners, weights):
        table_entry = torch.cat([sincos_1d(ix, dim // 2), sincos_1d(iy, dim // 2)], dim=1)
        term = w[:, None] * table_entry
        out = term if out is None else out + term
    return out


def _grid_sample_pixels(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` (zeros padding, align_corners=True) with pixel coordinates ``(..., 2)``."""
    height, width = img.shape[-2:]
    gx = 2 * coords[..., 0:1] / (width - 1) - 1
    gy = 2 * coords[..., 1:2] / (height - 1) - 1
    return F.grid_sample(img, torch.cat([gx, gy], dim=-1), align_corners=True)


def support_grid(size: int, interp_shape: Sequence[int], device=None) -> torch.Tensor:
    """``(size*size, 2)`` float32 points ``(x, y)`` in model pixels, x varying fastest.

    Margin ``W // 64`` from the border, then evenly spaced: the original
    ``get_points_on_a_grid`` of CoTracker v1.
    """
    height, width = interp_shape
    if size == 1:
        return torch.tensor([[width / 2, height / 2]], dtype=torch.float32, device=device)
    step = width // 64
    idx = torch.linspace(0.0, size - 1, size, device=device)
    gy = idx[:, None].expand(size, size).reshape(-1)
    gx = idx[None, :].expand(size, size).reshape(-1)
    gy = step + gy / float(size - 1) * (height - step * 2)
    gx = step + gx / float(size - 1) * (width - step * 2)
    return torch.stack([gx, gy], dim=-1)


def grid_queries(grid: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """``(len(frames) * K, 3)`` support queries ``(t, x, y)``: the ``(K, 2)`` grid on each frame."""
    return torch.cat([torch.cat([torch.full_like(grid[:, :1], float(t)), grid], dim=1) for t in frames])


def mirror_query_frames(queries: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Queries ``(..., 3)`` for the time-reversed video: ``t -> T - 1 - t``."""
    mirrored = queries.clone()
    mirrored[..., 0] = num_frames - 1 - mirrored[..., 0]
    return mirrored


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
class CoTrackerV1(nn.Module):
    """CoTracker v1 network (checkpoint-compatible with ``cotracker_stride_*_wind_*.pth``).

    Args:
        stride: encoder downsampling (4 or 8).
        window_len: frames per sliding window S (8, 12 or 16); windows advance by S/2.
    """

    corr_levels = 4
    corr_radius = 3
    input_dim = 456

    def __init__(self, stride: int = 4, window_len: int = 8):
        super().__init__()
        if window_len < 2 or window_len % 2:
            raise ValueError(f"window_len must be an even number >= 2, got {window_len}")
        self.stride = stride
        self.window_len = window_len
        self.fnet = FeatureEncoder(stride=stride)
        self.updateformer = _V1UpdateFormer(input_dim=self.input_dim)
        self.norm = nn.GroupNorm(1, LATENT_DIM)
        self.ffeat_updater = nn.Sequential(nn.Linear(LATENT_DIM, LATENT_DIM), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(LATENT_DIM, 1))

    # ------------------------------------------------------------------ encoder
    def encode(self, rgbs: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Frames ``(F, 3, H, W)`` float in [0, 255] -> feature maps ``(F, 128, H/s, W/s)``."""
        out = [self.fnet(2 * (rgbs[i : i + chunk] / 255.0) - 1.0) for i in range(0, rgbs.shape[0], chunk)]
        return torch.cat(out, dim=0)

    # ------------------------------------------------------------------ one window
    def _correlation_features(self, pyramid: list[torch.Tensor], track_feats: torch.Tensor,
                              coords: torch.Tensor) -> torch.Tensor:
        """Local correlation of each track's features with its frame's maps.

        pyramid[l]: ``(S, C, h_l, w_l)``; track_feats ``(S, N, C)``; coords ``(S, N, 2)`` feature
        units -> ``(S, N, levels * 49)``.
        """
        s, n, c = track_feats.shape
        r = self.corr_radius
        offsets = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        # The original stacks meshgrid(dy, dx, "ij") as (x, y): the first offset axis moves x.
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)
        norm = torch.sqrt(torch.tensor(c).float())
        out = []
        for level, fmap in enumerate(pyramid):
            h, w = fmap.shape[-2:]
            corr = torch.matmul(track_feats, fmap.reshape(s, c, h * w)) / norm  # (S, N, h*w)
            pts = coords.reshape(s * n, 1, 1, 2) / 2**level + delta[None]
            sampled = _grid_sample_pixels(corr.reshape(s * n, 1, h, w), pts)
            out.append(sampled.reshape(s, n, -1))
        return torch.cat(out, dim=-1)

    def _forward_window(self, fmaps: torch.Tensor, coords: torch.Tensor, feats: torch.Tensor,
                        vis_init: torch.Tensor, track_mask: torch.Tensor, iters: int,
                        coords_log: Optional[list] = None):
        """Refine the tracks of one window.

        fmaps ``(S, C, h, w)``; coords ``(S, N, 2)`` feature units; feats ``(S, N, C)``;
        vis_init, track_mask ``(S, N)`` float. Returns ``(coords (S, N, 2) model pixels,
        visibility logits (S, N))``.
        """
        s, n, _ = coords.shape
        h, w = fmaps.shape[-2:]
        pyramid = [fmaps]
        for _ in range(self.corr_levels - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))

        pos_embed = _sample_pos_embedding(coords[0], h, w, self.input_dim)[:, None]  # (N, 1, D)
        time_embed = sincos_1d(torch.linspace(0, s - 1, s, device=coords.device), self.input_dim)[None]
        # The original concatenates mask and visibility along the *track* axis and reshapes to
        # (N, S, 2), which interleaves them across tracks and frames. The checkpoints were
        # trained with that layout, so it is reproduced exactly.
        mask_vis = torch.cat([track_mask, vis_init], dim=1).t().reshape(n, s, 2)

        preds = None
        for _ in range(iters):
            corr = self._correlation_features(pyramid, feats, coords).transpose(0, 1)  # (N, S, L)
            flows = (coords - coords[0:1]).transpose(0, 1)  # (N, S, 2)
            x = torch.cat([_flow_embedding(flows), corr, feats.transpose(0, 1), mask_vis], dim=2)
            x = x + pos_embed + time_embed
            delta = self.updateformer(x[None])[0]  # (N, S, 130)
            feats_flat = feats.transpose(0, 1).reshape(n * s, LATENT_DIM)
            feats_flat = self.ffeat_updater(self.norm(delta[..., 2:].reshape(n * s, LATENT_DIM))) + feats_flat
            feats = feats_flat.reshape(n, s, LATENT_DIM).transpose(0, 1)
            coords = coords + delta[..., :2].transpose(0, 1)
            preds = coords * self.stride
            if coords_log is not None:
                coords_log.append(preds)
        vis = self.vis_predictor(feats.reshape(s * n, LATENT_DIM)).reshape(s, n)
        return preds, vis

    # ------------------------------------------------------------------ whole video
    def forward(self, rgbs: torch.Tensor, queries: torch.Tensor, iters: int = 6,
                features: Optional[torch.Tensor] = None, debug: Optional[dict] = None):
        """Track ``queries`` through ``rgbs``.

        Args:
            rgbs: ``(B, T, 3, H, W)`` float in [0, 255] at model resolution.
            queries: ``(B, N, 3)`` float32 ``(t, x, y)`` in model pixels.
            iters: refinement iterations per window.
            features: optional precomputed encoder maps ``(B, T, 128, H/s, W/s)`` of ``rgbs``
                (see :meth:`encode`); when absent each window encodes its new frames.
            debug: optional dict filled with per-window internals (batch element 0).

        Returns:
            ``(trajectories (B, T, N, 2) float32 model pixels, visibility probabilities (B, T, N),
            query features (B, S, N, 128) in query-frame-sorted order)``. Frames before a
            track's first window are exactly ``(0, 0)`` with probability 0.5.
        """
        outs = [
            self._forward_single(
                rgbs[b], queries[b], iters,
                None if features is None else features[b],
                debug if b == 0 else None,
            )
            for b in range(rgbs.shape[0])
        ]
        return tuple(torch.stack(parts) for parts in zip(*outs))

    def _forward_single(self, rgbs, queries, iters, features, debug, frames_done=None):
        """One video: rgbs ``(T, 3, H, W)``, queries ``(N, 3)``, features ``(T, C, h, w)`` or None.

        Returns ``(traj (T, N, 2), probabilities (T, N), query features (S, N, C))``.
        ``frames_done(t)`` (optional) is called as windows finish: frames ``0..t-1`` are final.
        """
        num_frames = rgbs.shape[0]
        n = queries.shape[0]
        s, half, stride = self.window_len, self.window_len // 2, self.stride
        device = rgbs.device

        query_frames = queries[:, 0].long()
        # Tracks are processed in order of their query frame so each window handles a prefix.
        # The original's (unstable) sort is kept: ties come out in the same order, so float
        # summation order - and thus the last bits - match it as well.
        sort_inds = torch.sort(query_frames).indices
        inv_sort = torch.argsort(sort_inds)
        sorted_frames = query_frames[sort_inds]
        coords_init = (queries[sort_inds, 1:] / float(stride))[None].repeat(s, 1, 1)  # (S, N, 2)
        vis_init = torch.full((s, n), 10.0, device=device)
        frame_ids = torch.arange(num_frames, device=device)
        track_mask = (frame_ids[:, None] >= sorted_frames[None, :]).float()  # (T, N)

        traj = torch.zeros((num_frames, n, 2), device=device)
        vis_logits = torch.zeros((num_frames, n), device=device)
        feat_init = None
        if features is None:
            features = _WindowEncoder(self, rgbs)
        prev_count = 0
        coords = vis = None
        if debug is not None:
            debug.update(sort_inds=sort_inds, wind_inds=[], window_coords_per_iter=[],
                         window_vis_sigmoid=[], window_fmaps=[])

        start = 0
        while start < num_frames - half:
            if frames_done is not None and start:
                frames_done(start)  # later windows overwrite only frames from start on
            # Frames past the end repeat the last frame (the original pads the window).
            window_frames = frame_ids[start : start + s].tolist()
            window_frames += [num_frames - 1] * (s - len(window_frames))
            fmaps = features[window_frames]
            if debug is not None:
                debug["window_fmaps"].append(fmaps)

            active = int((sorted_frames < start + s).sum())
            if active == 0:
                start += half
                continue
            if active > prev_count:
                new_frames = sorted_frames[prev_count:active] - start
                sampled = _sample_point_features(fmaps, new_frames, coords_init[0, prev_count:active])
                sampled = sampled[None].repeat(s, 1, 1)
                feat_init = sampled if feat_init is None else torch.cat([feat_init, sampled], dim=1)
            if prev_count > 0:
                # Tracks from the previous window start from its second half, then hold still.
                carried = coords[half:] / float(stride)
                coords_init[:half, :prev_count] = carried
                coords_init[half:, :prev_count] = carried[-1:].expand(s - half, -1, -1)
                carried_vis = vis[half:]
                vis_init[:half, :prev_count] = carried_vis
                vis_init[half:, :prev_count] = carried_vis[-1:].expand(s - half, -1)

            window_mask = track_mask[start : start + s, :active]
            if window_mask.shape[0] < s:
                window_mask = torch.cat([window_mask, window_mask.new_zeros(s - window_mask.shape[0], active)])
            log = [] if debug is not None else None
            coords, vis = self._forward_window(
                fmaps, coords_init[:, :active].clone(), feat_init[:, :active].clone(),
                vis_init[:, :active].clone(), window_mask, iters, log,
            )
            if debug is not None:
                debug["wind_inds"].append(active)
                debug["window_coords_per_iter"].append(torch.stack(log))
                debug["window_vis_sigmoid"].append(torch.sigmoid(vis))
            valid = min(s, num_frames - start)
            traj[start : start + valid, :active] = coords[:valid]
            vis_logits[start : start + valid, :active] = vis[:valid]
            track_mask[: start + s, :active] = 0.0
            start += half
            prev_count = active
        if frames_done is not None:
            frames_done(num_frames)

        if feat_init is None:
            feat_init = torch.zeros((s, n, LATENT_DIM), device=device)
        elif feat_init.shape[1] < n:
            feat_init = torch.cat([feat_init, feat_init.new_zeros(s, n - feat_init.shape[1], LATENT_DIM)], 1)
        return traj[:, inv_sort], torch.sigmoid(vis_logits[:, inv_sort]), feat_init


def build_cotracker_v1(checkpoint_path: Optional[str], stride: int = 4, window_len: int = 8) -> CoTrackerV1:
    """A :class:`CoTrackerV1` in eval mode with the weights of ``checkpoint_path`` (None: random)."""
    model = CoTrackerV1(stride=stride, window_len=window_len)
    if checkpoint_path is not None:
        load_state_dict_file(model, checkpoint_path, f"CoTracker v1 (stride {stride}, window {window_len})")
    return model.eval()


# --------------------------------------------------------------------------------------------
# predictor and SAM-PT wrapper logic
# --------------------------------------------------------------------------------------------
def _resize_video(video: torch.Tensor, interp_shape: Sequence[int], align_corners: bool) -> torch.Tensor:
    """``(B, T, 3, H, W)`` -> float ``(B, T, 3, h, w)`` at ``interp_shape`` (bilinear, no antialias)."""
    b, t, c, h, w = video.shape
    out = F.interpolate(video.float().reshape(b * t, c, h, w), tuple(interp_shape), mode="bilinear",
                        align_corners=align_corners)
    return out.reshape(b, t, c, *interp_shape)


def _padded_frames(indices: Sequence[int], num_frames: int) -> list[int]:
    """The frame each index of a time-padded clip reads: a clip shorter than the window is
    padded by repeating its last frame."""
    return [min(int(i), num_frames - 1) for i in indices]


def _pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x (B, T, ...)`` padded in time to ``length`` frames (see :func:`_padded_frames`)."""
    if x.shape[1] >= length:
        return x
    return x[:, _padded_frames(range(length), x.shape[1])]


@torch.no_grad()
def cotracker_v1_predict(model: CoTrackerV1, video: torch.Tensor, queries: torch.Tensor, *,
                         backward_tracking: bool = False, interp_shape: Sequence[int] = (384, 512),
                         support_grid_size: int = 6, iters: int = 6, threshold: float = 0.9,
                         features: Optional[torch.Tensor] = None, details: Optional[dict] = None):
    """The original ``CoTrackerPredictor(video, queries=..., grid_size=0)`` of CoTracker v1.

    Args:
        video: ``(B, T, 3, H, W)`` float (or uint8) in [0, 255], input pixels.
        queries: ``(B, N, 3)`` float32 ``(t, x, y)`` in input pixels.
        backward_tracking: also run on the reversed video and fill every coordinate that is
            exactly 0.0 in the forward result (x and y independently) with the backward one.
        features: optional encoder maps ``(B, T, 128, h/s, w/s)`` of the resized video.
        details: optional dict receiving the model calls' inputs and raw outputs.

    Returns:
        ``(tracks (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``; visibility is
        ``probability > threshold`` and True at each query frame, where the track is the query.
    """
    _, num_frames, _, height, width = video.shape
    rgbs = _resize_video(video, interp_shape, align_corners=False)
    queries = queries.float().clone()
    queries[:, :, 1] *= interp_shape[1] / width
    queries[:, :, 2] *= interp_shape[0] / height
    n = queries.shape[1]
    grid = grid_queries(support_grid(support_grid_size, interp_shape, device=queries.device), [0])
    model_queries = torch.cat([queries, grid[None].expand(queries.shape[0], -1, -1)], dim=1)

    tracks, probs, _ = model(rgbs, model_queries, iters=iters, features=features)
    if details is not None:
        details.update(model_queries=model_queries, model_traj=tracks.clone(), model_vis=probs.clone())
    if backward_tracking:
        bwd_queries = mirror_query_frames(model_queries, num_frames)
        bwd_tracks, bwd_probs, _ = model(rgbs.flip(1), bwd_queries, iters=iters,
                                         features=None if features is None else features.flip(1))
        if details is not None:
            details.update(bwd_queries=bwd_queries, bwd_traj=bwd_tracks, bwd_vis=bwd_probs)
        tracks, probs = _merge_backward_zero_rule(tracks, probs, bwd_tracks.flip(1), bwd_probs.flip(1))
    tracks = tracks[:, :, :n].clone()
    visible = probs[:, :, :n] > threshold
    for b in range(tracks.shape[0]):
        frames = queries[b, :, 0].long()
        points = torch.arange(n, device=tracks.device)
        tracks[b, frames, points] = queries[b, :, 1:]
        visible[b, frames, points] = True
    tracks[:, :, :, 0] *= width / float(interp_shape[1])
    tracks[:, :, :, 1] *= height / float(interp_shape[0])
    return tracks, visible


def _merge_backward_zero_rule(tracks, probs, bwd_tracks, bwd_probs):
    """Fill never-computed entries (coordinates exactly 0.0) from the time-flipped backward run.

    x and y are tested independently; the probability follows the x test. This is the rule of
    the original v1 predictor and of SAM-PT's wrapper.
    """
    zero = tracks == 0
    tracks = torch.where(zero, bwd_tracks, tracks)
    probs = torch.where(zero[..., 0], bwd_probs, probs)
    return tracks, probs


class _ResizedFrames:
    """The frames of a ``FrameSource`` as CoTracker v1's model reads them, resized when indexed.

    Looks like the ``(T', 3, h, w)`` float video ``CoTrackerV1._forward_single`` takes (``shape``,
    ``device``, indexing by a list of frames): ``T' >= window_len`` (short clips repeat their
    last frame, :func:`_padded_frames`), and ``reverse`` gives the time-reversed video of the
    backward pass. Only the frames a window encodes are ever read and resized.
    """

    def __init__(self, frames, interp_shape: Sequence[int], device: torch.device, reverse: bool, min_length: int):
        self.frames, self.interp_shape, self.device, self.reverse = frames, tuple(interp_shape), device, reverse
        self.shape = torch.Size((max(frames.num_frames, min_length), 3) + self.interp_shape)

    def __getitem__(self, indices: Sequence[int]) -> torch.Tensor:
        last = self.frames.num_frames - 1
        padded = _padded_frames(indices, self.frames.num_frames)
        video_frames = [last - i for i in padded] if self.reverse else padded
        selected = self.frames.gather(video_frames).to(self.device)
        return _resize_video(selected[None], self.interp_shape, align_corners=False)[0]


class _WindowEncoder:
    """Encoder maps as ``CoTrackerV1._forward_single`` reads them window by window, when no
    precomputed ``features`` are given: each window encodes the frames not already encoded, in
    one batch, and the last half-window is kept for the next.

    ``spill`` (a binary file) additionally receives frame ``f``'s map at offset
    ``f * frame_bytes``, so a backward pass can read the maps back (:class:`_SpilledFeatures`)
    instead of encoding every frame again; after a write error it is dropped and
    ``write_error`` says why.
    """

    def __init__(self, model, rgbs, spill=None, num_frames: Optional[int] = None):
        self.model, self.rgbs, self.spill = model, rgbs, spill
        self.num_frames = rgbs.shape[0] if num_frames is None else num_frames
        self.cache: dict[int, torch.Tensor] = {}
        self.write_error: Optional[OSError] = None
        self.map_shape: Optional[tuple[int, ...]] = None

    def __getitem__(self, window_frames: Sequence[int]) -> torch.Tensor:
        todo = sorted({f for f in window_frames if f not in self.cache})
        if todo:
            new = self.model.encode(self.rgbs[todo], chunk=len(todo))
            self.map_shape = tuple(new.shape[1:])
            self.cache.update({f: new[i] for i, f in enumerate(todo)})
            self._write(todo, new)
        fmaps = torch.stack([self.cache[f] for f in window_frames])
        for f in [f for f in self.cache if f < window_frames[0] + self.model.window_len // 2]:
            del self.cache[f]  # not needed by any later window
        return fmaps

    def _write(self, frames: Sequence[int], maps: torch.Tensor) -> None:
        if self.spill is None:
            return
        try:
            for f, fmap in zip(frames, maps):
                if f < self.num_frames:  # padding frames repeat the last one
                    data = fmap.detach().cpu().contiguous().numpy().tobytes()
                    self.spill.seek(f * len(data))
                    self.spill.write(data)
        except OSError as exc:
            self.write_error, self.spill = exc, None


class _SpilledFeatures:
    """The spilled maps as the backward pass reads them: index ``i`` is frame
    ``T - 1 - i`` of the video, with short clips padded (:func:`_padded_frames`)."""

    def __init__(self, spill, num_frames: int, map_shape: Sequence[int], device: torch.device):
        self.spill, self.num_frames, self.map_shape, self.device = spill, num_frames, tuple(map_shape), device
        self.frame_bytes = 4 * int(np.prod(self.map_shape))

    def __getitem__(self, indices: Sequence[int]) -> torch.Tensor:
        last = self.num_frames - 1
        out = np.empty((len(indices),) + self.map_shape, dtype=np.float32)
        for k, i in enumerate(_padded_frames(indices, self.num_frames)):
            self.spill.seek((last - i) * self.frame_bytes)
            self.spill.readinto(memoryview(out[k]).cast("B"))
        return torch.from_numpy(out).to(self.device)


class CoTrackerTracker(PointTracker):
    """SAM-PT's CoTracker v1 point tracker.

    Frames are resized to ``interp_shape`` (bilinear, align_corners=False) and query coordinates
    scaled; a ``support_grid_size``^2 grid of extra points is queried every
    ``support_grid_every_n_frames`` frames; clips shorter than the window are padded by repeating
    the last frame; a second pass on the reversed video fills the frames before each query frame
    (every coordinate still exactly 0.0 after the forward pass); visibility is
    ``probability > visibility_threshold``.

    Args:
        checkpoint: registry name (``cotracker_stride_4_wind_8``, ``cotracker_stride_4_wind_12``,
            ``cotracker_stride_8_wind_16``); also picks the default stride and window.
        checkpoint_path: explicit checkpoint file; skips the registry lookup/download.
        stride, window_len: override the values implied by ``checkpoint``.
        reuse_features: encode every frame once and reuse the maps for the backward pass
            (faster). A clip in memory keeps them in memory (``T x 128 x h/s x w/s`` floats,
            6.3 MB a frame at 384x512); a streamed one writes them to a temporary file.
        feature_spill_dir: folder of that temporary file (None: the system's temp folder). When
            it cannot be written (full, read-only), the backward pass encodes the frames again.
    """

    def __init__(self, checkpoint: str = "cotracker_stride_4_wind_8", checkpoint_path: Optional[str] = None,
                 stride: Optional[int] = None, window_len: Optional[int] = None,
                 interp_shape: Sequence[int] = (384, 512), iters: int = 6,
                 visibility_threshold: float = 0.7, support_grid_size: int = 2,
                 support_grid_every_n_frames: int = 12, reuse_features: bool = True,
                 feature_spill_dir: Optional[str] = None):
        super().__init__()
        if checkpoint not in V1_CHECKPOINTS and (stride is None or window_len is None):
            raise ValueError(
                f"unknown CoTracker v1 checkpoint {checkpoint!r}; valid names: {sorted(V1_CHECKPOINTS)} "
                "(or give stride and window_len with checkpoint_path)"
            )
        default_stride, default_window = V1_CHECKPOINTS.get(checkpoint, (stride, window_len))
        if len(interp_shape) != 2:
            raise ValueError(f"interp_shape must be (height, width), got {interp_shape!r}")
        if support_grid_every_n_frames < 1:
            raise ValueError(f"support_grid_every_n_frames must be >= 1, got {support_grid_every_n_frames}")
        self.interp_shape = (int(interp_shape[0]), int(interp_shape[1]))
        self.iters = iters
        self.visibility_threshold = visibility_threshold
        self.support_grid_size = support_grid_size
        self.support_grid_every_n_frames = support_grid_every_n_frames
        self.reuse_features = reuse_features
        self.feature_spill_dir = feature_spill_dir
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.weights_path: Optional[str] = None  # set by prepare(); recorded (with its md5) next to every result
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = build_cotracker_v1(None, stride=stride or default_stride,
                                        window_len=window_len or default_window)

    def prepare(self) -> None:
        """Resolve (cache, download) and load the weights, once."""
        if self.weights_path is None:
            path = os.fspath(resolve_checkpoint(self.checkpoint, self.checkpoint_path))
            load_state_dict_file(self.model, path, f"CoTracker v1 ({self.checkpoint})")
            self.weights_path = path

    def streams(self, frames) -> bool:
        # A clip already in memory takes the whole-video forward (the reference-checked path,
        # with all frames encoded in one batch); any other source is read window by window.
        return not frames.in_memory

    @torch.no_grad()
    def track_frames(self, frames, queries, device=None, query_masks=None, progress=None):
        """Track ``queries (N, 3)`` through a frame source, window by window (see ``PointTracker``).

        A clip in memory takes the whole-video :meth:`forward` (see :meth:`streams`). Any other
        source is read window by window: each window reads, resizes and encodes only its new
        frames, forward and then backward, so memory does not grow with the video's frames. With ``reuse_features`` the
        forward pass's encoder maps go to a temporary file that the backward pass reads back
        (disk, not memory: 6.3 MB a frame at 384x512). The result equals :meth:`forward` bit
        for bit with ``reuse_features=False``; with ``reuse_features=True`` the encoder sees
        other batches of frames (4 new frames a window instead of 8 at a time), which changes
        float summation order (within the reference vectors' tolerance, 1e-3 px).
        """
        if not self.streams(frames):
            return super().track_frames(frames, queries, device, query_masks, progress)
        self.prepare()
        device = next(self.model.parameters()).device
        num_frames, (height, width) = frames.num_frames, frames.size
        s = self.model.window_len
        model_queries = self._model_queries(queries.to(device), num_frames, height, width)

        def one_pass(reverse: bool, pass_queries: torch.Tensor, features=None):
            rgbs = _ResizedFrames(frames, self.interp_shape, device, reverse, s)
            reported = 0

            def frames_done(done: int) -> None:
                # Per window, so a long pass shows its progress (padding frames do not count).
                nonlocal reported
                done = min(done, num_frames)
                if progress is not None and done > reported:
                    progress(done - reported)
                    reported = done

            traj, vis, _ = self.model._forward_single(rgbs, pass_queries, self.iters, features, None, frames_done)
            return traj[None, :num_frames], vis[None, :num_frames]

        with contextlib.ExitStack() as stack:
            spill = None
            if self.reuse_features:
                try:
                    spill = stack.enter_context(tempfile.TemporaryFile(dir=self.feature_spill_dir))
                except OSError as exc:
                    log.warning("cannot create a file for CoTracker's encoder maps in %s (%s); the backward "
                                "pass encodes the frames again", self.feature_spill_dir or tempfile.gettempdir(),
                                exc)
            encoder = None
            if spill is not None:
                encoder = _WindowEncoder(self.model, _ResizedFrames(frames, self.interp_shape, device, False, s),
                                           spill, num_frames)
            fwd_traj, fwd_vis = one_pass(False, model_queries, encoder)
            backward_features = None
            if encoder is not None and encoder.write_error is not None:
                log.warning("cannot write CoTracker's encoder maps (%s); the backward pass encodes the frames "
                            "again", encoder.write_error.strerror or encoder.write_error)
            elif encoder is not None:
                backward_features = _SpilledFeatures(spill, num_frames, encoder.map_shape, device)
            bwd_traj, bwd_vis = one_pass(True, mirror_query_frames(model_queries, num_frames), backward_features)
        merged_traj, merged_vis = _merge_backward_zero_rule(fwd_traj, fwd_vis, bwd_traj.flip(1), bwd_vis.flip(1))
        traj, vis = self._input_pixel_tracks(merged_traj[0], merged_vis[0], queries.shape[0], height, width)
        return traj.cpu(), vis.cpu()

    def _model_queries(self, queries: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        """Queries ``(..., N, 3)`` in input pixels -> model pixels, followed by the support grid's
        queries (``support_grid_size``^2 points every ``support_grid_every_n_frames`` frames)."""
        ih, iw = self.interp_shape
        q = queries.float().clone()
        q[..., 1] *= iw / width
        q[..., 2] *= ih / height
        grid = support_grid(self.support_grid_size, self.interp_shape, device=q.device)
        extra = grid_queries(grid, range(0, num_frames, self.support_grid_every_n_frames))
        return torch.cat([q, extra.expand(*q.shape[:-2], *extra.shape)], dim=-2)

    def _input_pixel_tracks(self, merged_traj: torch.Tensor, merged_vis: torch.Tensor, num_queries: int,
                            height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``num_queries`` tracks ``(..., T, N', 2)`` (not the support grid's) in input
        pixels, and their visibility ``probability > visibility_threshold``."""
        ih, iw = self.interp_shape
        traj = merged_traj[..., :num_queries, :].clone()
        traj[..., 0] *= width / float(iw)
        traj[..., 1] *= height / float(ih)
        return traj, merged_vis[..., :num_queries] > self.visibility_threshold

    def memory_plan(self, frames, num_points: int) -> dict:
        # Frames resized to interp_shape (float) and their encoder maps (128 channels at 1/stride):
        # a window's worth when streaming, the whole clip otherwise. Streaming with
        # reuse_features spills the forward pass's maps to disk for the backward pass. Tracks
        # cover all points and the support grid (which grows with the video: support_grid_size^2
        # points every support_grid_every_n_frames frames).
        h, w = self.interp_shape
        stride, num_frames = self.model.stride, frames.num_frames
        rgb_bytes = 3 * h * w * 4
        feature_bytes = 128 * (h // stride) * (w // stride) * 4
        grid_points = self.support_grid_size ** 2 * -(-num_frames // self.support_grid_every_n_frames)
        tracks = 3 * num_frames * (num_points + grid_points) * 4 * 4
        if not self.streams(frames):
            features = num_frames * feature_bytes if self.reuse_features else 0
            return {"streams": False, "bytes": num_frames * rgb_bytes + features + tracks, "disk_bytes": 0}
        window = self.model.window_len * (rgb_bytes + feature_bytes * 4 // 3)
        spill = num_frames * feature_bytes if self.reuse_features else 0
        return {"streams": True, "bytes": window + tracks, "disk_bytes": spill,
                "disk_dir": (self.feature_spill_dir or tempfile.gettempdir()) if spill else None}

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict] = None):
        """Track ``queries (B, N, 3)`` through uint8 ``video (B, T, 3, H, W)``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``.
        ``details`` (optional dict) receives the model-pixel internals of batch element 0.
        """
        self.check_inputs(video, queries)
        self.prepare()
        # Inputs go to wherever the module was moved; results come back on the input's device.
        device = next(self.model.parameters()).device
        trajs, visibles = [], []
        for b in range(video.shape[0]):
            traj, vis = self._track_one(video[b : b + 1].to(device), queries[b : b + 1].to(device),
                                        details if b == 0 else None)
            trajs.append(traj)
            visibles.append(vis)
        return torch.cat(trajs).to(video.device), torch.cat(visibles).to(video.device)

    def _track_one(self, video, queries, details):
        _, num_frames, _, height, width = video.shape
        s = self.model.window_len
        rgbs = _resize_video(video, self.interp_shape, align_corners=False)
        n = queries.shape[1]
        model_queries = self._model_queries(queries, num_frames, height, width)

        features = None
        if self.reuse_features:
            features = self.model.encode(rgbs[0])[None]
        fwd_traj, fwd_vis, _ = self.model(_pad_time(rgbs, s), model_queries, iters=self.iters,
                                          features=None if features is None else _pad_time(features, s))
        fwd_traj, fwd_vis = fwd_traj[:, :num_frames], fwd_vis[:, :num_frames]

        bwd_queries = mirror_query_frames(model_queries, num_frames)
        bwd_traj, bwd_vis, _ = self.model(
            _pad_time(rgbs.flip(1), s), bwd_queries, iters=self.iters,
            features=None if features is None else _pad_time(features.flip(1), s),
        )
        bwd_traj, bwd_vis = bwd_traj[:, :num_frames], bwd_vis[:, :num_frames]
        merged_traj, merged_vis = _merge_backward_zero_rule(fwd_traj, fwd_vis, bwd_traj.flip(1), bwd_vis.flip(1))

        if details is not None:
            details.update(model_queries=model_queries, fwd_traj=fwd_traj, fwd_vis=fwd_vis,
                           bwd_queries=bwd_queries, bwd_traj=bwd_traj, bwd_vis=bwd_vis,
                           merged_traj=merged_traj, merged_vis=merged_vis,
                           visibility_probs=merged_vis[:, :, :n])
        return self._input_pixel_tracks(merged_traj, merged_vis, n, height, width)

