"""CoTracker3 offline (Karaev et al., 2024), re-implemented so ``scaled_offline.pth`` loads unchanged.

Same ``state_dict`` keys and shapes as the original ``CoTrackerThreeOffline`` (including the
``time_emb`` buffer and the parameter spelled ``updateformer.virual_tracks``), same order of
operations. Three layers, as for v1 (:mod:`sampt.trackers.cotracker`):

* :class:`CoTrackerThreeOffline` - the network, in model pixels.
* :func:`cotracker3_predict` - the original ``CoTrackerPredictor(offline=True)`` logic.
* :class:`CoTracker3Tracker` - a SAM-PT style wrapper behind :class:`PointTracker`.

Memory: unlike v1, the offline model processes the whole clip at once. Its time embedding is
learnt for a window of 60 frames and linearly resampled to the clip length, so every track
attends over all T frames. Encoder maps (``~8.4 MB`` per frame with the pyramid at 384x512,
stride 4) and the correlation features (``4 levels x T x N x 49 x 128`` floats) grow linearly
with T and the number of tracks N, while the time-attention scores grow as ``T^2`` per track;
they are computed in batches of tracks (``ATTENTION_CHUNK_ELEMENTS``) so the peak stays bounded,
but compute is quadratic in T. For very long videos prefer the windowed v1 tracker or split the
clip.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.trackers.base import PointTracker
from sampt.trackers.cotracker import (
    LATENT_DIM,
    AttnBlock,
    FeatureEncoder,
    Mlp,
    _resize_video,
    grid_queries,
    mirror_query_frames,
    sincos_1d,
)

V3_CHECKPOINTS: dict[str, int] = {"cotracker3_offline": 60}  # name -> window_len

# Upper bound on the number of attention-score floats materialised at once (256 MB).
ATTENTION_CHUNK_ELEMENTS = 1 << 26


class _Attention(nn.Module):
    """Multi-head attention with ``to_q`` / ``to_kv`` / ``to_out`` (the CoTracker3 layout).

    Scores are ``softmax(q k^T * d^-0.5)`` computed explicitly (not with a fused kernel) to keep
    the original's rounding; long batches are split so at most ``ATTENTION_CHUNK_ELEMENTS``
    scores exist at a time.
    """

    def __init__(self, dim: int, num_heads: int = 8, dim_head: int = 48):
        super().__init__()
        self.heads = num_heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(dim, num_heads * dim_head)
        self.to_kv = nn.Linear(dim, num_heads * dim_head * 2)
        self.to_out = nn.Linear(num_heads * dim_head, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        batch, n1, c = x.shape
        n2 = context.shape[1]
        chunk = max(1, ATTENTION_CHUNK_ELEMENTS // (self.heads * n1 * n2))
        outs = []
        for b0 in range(0, batch, chunk):
            xb, cb = x[b0 : b0 + chunk], context[b0 : b0 + chunk]
            nb = xb.shape[0]
            q = self.to_q(xb).reshape(nb, n1, self.heads, c // self.heads).permute(0, 2, 1, 3)
            k, v = self.to_kv(cb).chunk(2, dim=-1)
            k = k.reshape(nb, n2, self.heads, c // self.heads).permute(0, 2, 1, 3)
            v = v.reshape(nb, n2, self.heads, c // self.heads).permute(0, 2, 1, 3)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            outs.append((attn @ v).transpose(1, 2).reshape(nb, n1, c))
        return self.to_out(torch.cat(outs) if len(outs) > 1 else outs[0])


class _CrossAttnBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim)  # affine, eps 1e-5: as in the checkpoints
        self.cross_attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, tanh_gelu=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class _EfficientUpdateFormer(nn.Module):
    """Time attention per track; across tracks, attention goes through 64 learnt virtual tracks."""

    def __init__(self, depth: int = 3, input_dim: int = 1110, hidden: int = 384, heads: int = 8,
                 num_virtual_tracks: int = 64):
        super().__init__()
        self.num_virtual_tracks = num_virtual_tracks
        # Spelling of the original parameter name, needed for checkpoint compatibility.
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden))
        self.input_transform = nn.Linear(input_dim, hidden)
        self.flow_head = nn.Linear(hidden, 2)
        self.vis_conf_head = nn.Linear(hidden, 2)
        self.time_blocks = nn.ModuleList([AttnBlock(hidden, heads, attention=_Attention) for _ in range(depth)])
        self.space_virtual_blocks = nn.ModuleList(
            [AttnBlock(hidden, heads, attention=_Attention) for _ in range(depth)])
        self.space_point2virtual_blocks = nn.ModuleList([_CrossAttnBlock(hidden, heads) for _ in range(depth)])
        self.space_virtual2point_blocks = nn.ModuleList([_CrossAttnBlock(hidden, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, T, input_dim) -> (B, N, T, 4)``: (dx, dy, visibility logit, confidence logit)."""
        tokens = self.input_transform(x)
        batch, n_points, t, c = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.repeat(batch, 1, t, 1)], dim=1)
        n_all = tokens.shape[1]
        every = len(self.time_blocks) // len(self.space_virtual_blocks)
        j = 0
        for i, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(batch * n_all, t, c)).reshape(batch, n_all, t, c)
            if i % every == 0:
                space = tokens.permute(0, 2, 1, 3).reshape(batch * t, n_all, c)
                points, virtual = space[:, :n_points], space[:, n_points:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                space = torch.cat([points, virtual], dim=1)
                tokens = space.reshape(batch, t, n_all, c).permute(0, 2, 1, 3)
                j += 1
        tokens = tokens[:, :n_points]
        return torch.cat([self.flow_head(tokens), self.vis_conf_head(tokens)], dim=-1)


def support_grid(size: int, interp_shape: Sequence[int], device=None) -> torch.Tensor:
    """``(size*size, 2)`` float32 points ``(x, y)`` in model pixels, x varying fastest.

    CoTracker3's ``get_points_on_a_grid``: ``linspace`` over ``[m, W - m] x [m, H - m]`` with
    margin ``m = W / 64``. (It differs from v1's grid by float rounding only.)
    """
    height, width = interp_shape
    if size == 1:
        return torch.tensor([[width / 2, height / 2]], dtype=torch.float32, device=device)
    margin = width / 64
    gy, gx = torch.meshgrid(
        torch.linspace(margin, height - margin, size, device=device),
        torch.linspace(margin, width - margin, size, device=device),
        indexing="ij",
    )
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def _posenc(x: torch.Tensor, num_degrees: int = 10) -> torch.Tensor:
    """``x`` followed by ``sin(2^k x)`` and ``sin(2^k x + pi/2)`` for ``k < num_degrees``."""
    scales = torch.tensor([2**i for i in range(num_degrees)], dtype=x.dtype, device=x.device)
    xb = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    return torch.cat([x, torch.sin(torch.cat([xb, xb + 0.5 * torch.pi], dim=-1))], dim=-1)


def _grid_sample_3d(volume: torch.Tensor, coords_txy: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` of ``volume (B, C, D, H, W)`` at ``(t, x, y)`` voxel coordinates.

    align_corners=True and border padding (the original ``bilinear_sampler`` convention).
    """
    sizes = volume.shape[2:]
    coords = coords_txy[..., [1, 2, 0]]
    coords = coords * torch.tensor([2 / max(size - 1, 1) for size in reversed(sizes)], device=coords.device)
    coords = coords - 1
    return F.grid_sample(volume, coords, align_corners=True, padding_mode="border")


class CoTrackerThreeOffline(nn.Module):
    """CoTracker3 offline network (checkpoint-compatible with ``scaled_offline.pth``).

    Args:
        window_len: frames the time embedding is learnt for (60 for the official checkpoint).
        stride: encoder downsampling. model_resolution: ``(H, W)`` the model expects; it only
            normalises relative motions here.
    """

    corr_levels = 4
    corr_radius = 3
    input_dim = 1110

    def __init__(self, window_len: int = 60, stride: int = 4, num_virtual_tracks: int = 64,
                 model_resolution: Sequence[int] = (384, 512)):
        super().__init__()
        self.window_len = window_len
        self.stride = stride
        self.model_resolution = (int(model_resolution[0]), int(model_resolution[1]))
        self.fnet = FeatureEncoder(stride=stride)
        self.updateformer = _EfficientUpdateFormer(input_dim=self.input_dim, num_virtual_tracks=num_virtual_tracks)
        r = 2 * self.corr_radius + 1
        self.corr_mlp = Mlp(r**4, 384, 256, tanh_gelu=False)
        positions = torch.linspace(0, window_len - 1, window_len)
        self.register_buffer("time_emb", sincos_1d(positions, self.input_dim)[None])

    def encode(self, rgbs: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Frames ``(F, 3, H, W)`` float in [0, 255] -> unit-norm maps ``(F, 128, H/s, W/s)``."""
        out = [self.fnet(2 * (rgbs[i : i + chunk] / 255.0) - 1.0) for i in range(0, rgbs.shape[0], chunk)]
        fmaps = torch.cat(out).permute(0, 2, 3, 1)
        norm = torch.sqrt(torch.maximum(torch.sum(torch.square(fmaps), dim=-1, keepdim=True),
                                        torch.tensor(1e-12, device=fmaps.device)))
        return (fmaps / norm).permute(0, 3, 1, 2)

    def _time_embedding(self, t: int) -> torch.Tensor:
        if t == self.time_emb.shape[1]:
            return self.time_emb
        return F.interpolate(self.time_emb.float().permute(0, 2, 1), size=t, mode="linear").permute(0, 2, 1)

    def _support_offsets(self, device) -> torch.Tensor:
        """``(7, 7, 3)`` offsets ``(0, dx, dy)``; the first grid axis moves x (original layout)."""
        r = self.corr_radius
        d = torch.linspace(-r, r, 2 * r + 1, device=device)
        gx, gy = torch.meshgrid(d, d, indexing="ij")
        return torch.stack([torch.zeros_like(gx), gx, gy], dim=-1)

    def forward(self, video: torch.Tensor, queries: torch.Tensor, iters: int = 6,
                features: Optional[torch.Tensor] = None):
        """Track ``queries`` through the whole clip at once.

        Args:
            video: ``(B, T, 3, H, W)`` float in [0, 255] at model resolution (H, W divisible by
                the stride).
            queries: ``(B, N, 3)`` float32 ``(t, x, y)`` in model pixels.
            features: optional output of :meth:`encode` for the frames, ``(B, T, 128, H/s, W/s)``.

        Returns:
            ``(coords (B, T, N, 2) float32 model pixels, visibility probabilities (B, T, N),
            confidence probabilities (B, T, N))``.
        """
        b, t, c, h, w = video.shape
        n = queries.shape[1]
        if h % self.stride or w % self.stride:
            raise ValueError(f"video height and width must be divisible by {self.stride}, got {h}x{w}")
        device = queries.device
        queried_frames = queries[:, :, 0].long()
        queried_coords = queries[..., 1:3] / self.stride

        fmaps = features if features is not None else self.encode(video.reshape(b * t, c, h, w)).reshape(
            b, t, LATENT_DIM, h // self.stride, w // self.stride)
        pyramid = [fmaps]
        for _ in range(self.corr_levels - 1):
            prev = pyramid[-1]
            pooled = F.avg_pool2d(prev.reshape(b * t, LATENT_DIM, *prev.shape[-2:]), 2, stride=2)
            pyramid.append(pooled.reshape(b, t, LATENT_DIM, *pooled.shape[-2:]))

        r = 2 * self.corr_radius + 1
        offsets = self._support_offsets(device)
        # Features of the 7x7 neighbourhood of each query, at its query frame, per level.
        support_feats = []
        for level, fmap in enumerate(pyramid):
            centre = torch.cat([queried_frames[:, :, None].to(queried_coords.dtype),
                                queried_coords / 2**level], dim=-1)  # (B, N, 3)
            pts = (centre[:, :, None, None, :] + offsets).reshape(b, n, r * r, 3).permute(0, 2, 1, 3)
            sampled = _grid_sample_3d(fmap.permute(0, 2, 1, 3, 4), pts.unsqueeze(3))  # (B, C, 49, N, 1)
            sampled = sampled.permute(0, 2, 3, 1, 4).reshape(b, r * r, n, LATENT_DIM)
            support_feats.append(sampled.reshape(b, r, r, n, LATENT_DIM).permute(0, 3, 1, 2, 4))

        vis = torch.zeros((b, t, n), device=device)
        confidence = torch.zeros((b, t, n), device=device)
        coords = queried_coords.reshape(b, 1, n, 2).expand(b, t, n, 2).float()
        scale = torch.tensor([self.model_resolution[1], self.model_resolution[0]], device=device) / self.stride
        time_emb = self._time_embedding(t)

        for _ in range(iters):
            flat = coords.reshape(b * t, n, 2)
            corr_embs = []
            for level, fmap in enumerate(pyramid):
                hl, wl = fmap.shape[-2:]
                centre = torch.cat([torch.zeros_like(flat[..., :1]), flat / 2**level], dim=-1)
                pts = centre[:, None, :, None, None, :] + offsets  # (B*T, 1, N, 7, 7, 3)
                local = _grid_sample_3d(fmap.reshape(b * t, LATENT_DIM, 1, hl, wl), pts[:, 0])
                local = local.reshape(b, t, LATENT_DIM, n, r, r).permute(0, 1, 3, 4, 5, 2)
                volume = torch.einsum("btnhwc,bnijc->btnhwij", local, support_feats[level])
                corr_embs.append(self.corr_mlp(volume.reshape(b * t * n, r**4)))
            corr_embs = torch.cat(corr_embs, dim=-1).reshape(b, t, n, -1)

            rel_forward = F.pad(coords[:, :-1] - coords[:, 1:], (0, 0, 0, 0, 0, 1)) / scale
            rel_backward = F.pad(coords[:, 1:] - coords[:, :-1], (0, 0, 0, 0, 1, 0)) / scale
            motion = _posenc(torch.cat([rel_forward, rel_backward], dim=-1))
            x = torch.cat([vis[..., None], confidence[..., None], corr_embs, motion], dim=-1)
            x = x.permute(0, 2, 1, 3).reshape(b * n, t, -1) + time_emb
            delta = self.updateformer(x.reshape(b, n, t, -1))
            coords = coords + delta[..., :2].permute(0, 2, 1, 3)
            vis = vis + delta[..., 2].permute(0, 2, 1)
            confidence = confidence + delta[..., 3].permute(0, 2, 1)
        return coords * float(self.stride), torch.sigmoid(vis), torch.sigmoid(confidence)


def build_cotracker3_offline(checkpoint_path: Optional[str], window_len: int = 60) -> CoTrackerThreeOffline:
    """A :class:`CoTrackerThreeOffline` in eval mode with the weights of ``checkpoint_path`` (None: random)."""
    model = CoTrackerThreeOffline(window_len=window_len)
    if checkpoint_path is not None:
        load_state_dict_file(model, checkpoint_path, f"CoTracker3 offline (window {window_len})")
    return model.eval()


def _merge_backward_before_query(tracks, probs, bwd_tracks, bwd_probs, query_frames):
    """Frames strictly before each track's query frame take the (time-flipped) backward result.

    tracks ``(B, T, N, 2)``, probs ``(B, T, N)``, query_frames ``(B, N)``.
    """
    frames = torch.arange(tracks.shape[1], device=tracks.device)[None, :, None]
    before = frames < query_frames[:, None, :]
    return (torch.where(before[..., None], bwd_tracks, tracks), torch.where(before, bwd_probs, probs))


def _scale_queries(queries: torch.Tensor, height: int, width: int, interp_shape: Sequence[int]) -> torch.Tensor:
    """Input -> model pixels with corner pixel centres aligned: ``x *= (w-1)/(W-1)``."""
    queries = queries.float().clone()
    queries[:, :, 1:] *= queries.new_tensor([(interp_shape[1] - 1) / (width - 1), (interp_shape[0] - 1) / (height - 1)])
    return queries


def _unscale_tracks(tracks: torch.Tensor, height: int, width: int, interp_shape: Sequence[int]) -> torch.Tensor:
    return tracks * tracks.new_tensor([(width - 1) / (interp_shape[1] - 1), (height - 1) / (interp_shape[0] - 1)])


@torch.no_grad()
def cotracker3_predict(model: CoTrackerThreeOffline, video: torch.Tensor, queries: torch.Tensor, *,
                       backward_tracking: bool = False, interp_shape: Sequence[int] = (384, 512),
                       support_grid_size: int = 6, iters: int = 6, threshold: float = 0.9,
                       features: Optional[torch.Tensor] = None, details: Optional[dict] = None):
    """The original ``CoTrackerPredictor(offline=True)(video, queries=..., grid_size=0)``.

    Args:
        video: ``(B, T, 3, H, W)`` float (or uint8) in [0, 255], input pixels.
        queries: ``(B, N, 3)`` float32 ``(t, x, y)`` in input pixels.
        backward_tracking: frames before each query frame take the result of a second pass on
            the reversed video.
        features: optional :meth:`CoTrackerThreeOffline.encode` maps of the resized video.
        details: optional dict receiving the model calls' inputs and raw outputs.

    Returns:
        ``(tracks (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``: visibility is
        ``vis > threshold`` (confidence unused), and True at each query frame, where the track
        is the query point.
    """
    _, num_frames, _, height, width = video.shape
    rgbs = _resize_video(video, interp_shape, align_corners=True)
    scaled = _scale_queries(queries, height, width, interp_shape)
    n = scaled.shape[1]
    grid = grid_queries(support_grid(support_grid_size, interp_shape, device=scaled.device), [0])
    model_queries = torch.cat([scaled, grid[None].expand(scaled.shape[0], -1, -1)], dim=1)

    tracks, vis, conf = model(rgbs, model_queries, iters=iters, features=features)
    if details is not None:
        details.update(model_queries=model_queries, coords=tracks, vis=vis, confidence=conf)
    if backward_tracking:
        bwd_queries = mirror_query_frames(model_queries, num_frames)
        bwd_tracks, bwd_vis, _ = model(rgbs.flip(1), bwd_queries, iters=iters,
                                       features=None if features is None else features.flip(1))
        if details is not None:
            details.update(bwd_queries=bwd_queries, bwd_coords=bwd_tracks, bwd_vis=bwd_vis)
        tracks, vis = _merge_backward_before_query(tracks, vis, bwd_tracks.flip(1), bwd_vis.flip(1),
                                                   model_queries[:, :, 0])
    tracks = tracks[:, :, :n].clone()
    visible = vis[:, :, :n] > threshold
    for b in range(tracks.shape[0]):
        frames = scaled[b, :, 0].long()
        points = torch.arange(n, device=tracks.device)
        tracks[b, frames, points] = scaled[b, :, 1:]
        visible[b, frames, points] = True
    return _unscale_tracks(tracks, height, width, interp_shape), visible


class CoTracker3Tracker(PointTracker):
    """CoTracker3 offline as a SAM-PT point tracker.

    Like SAM-PT's v1 wrapper - resize to ``interp_shape``, a ``support_grid_size``^2 support
    grid every ``support_grid_every_n_frames`` frames, a backward pass on the reversed video -
    but with CoTracker3's conventions: the resize uses align_corners=True and coordinates are
    scaled so the corner pixel centres coincide; the backward pass fills exactly the frames
    before each query frame; visibility is ``vis > visibility_threshold`` (0.9, CoTracker3's own
    threshold: its probabilities are far more saturated than v1's). No padding is needed for
    short clips. See the module docstring for memory use: the whole clip is processed at once.

    Args:
        checkpoint: registry name (``cotracker3_offline``).
        checkpoint_path: explicit checkpoint file; skips the registry lookup/download.
        window_len: length of the learnt time embedding (60 for the official checkpoint).
        reuse_features: encode every frame once and reuse the maps for the backward pass.
    """

    def __init__(self, checkpoint: str = "cotracker3_offline", checkpoint_path: Optional[str] = None,
                 window_len: Optional[int] = None, interp_shape: Sequence[int] = (384, 512),
                 iters: int = 6, visibility_threshold: float = 0.9, support_grid_size: int = 2,
                 support_grid_every_n_frames: int = 12, reuse_features: bool = True):
        super().__init__()
        if checkpoint not in V3_CHECKPOINTS and window_len is None:
            raise ValueError(
                f"unknown CoTracker3 checkpoint {checkpoint!r}; valid names: {sorted(V3_CHECKPOINTS)} "
                "(or give window_len with checkpoint_path)"
            )
        if len(interp_shape) != 2 or interp_shape[0] % 4 or interp_shape[1] % 4:
            raise ValueError(f"interp_shape must be (height, width) divisible by 4, got {interp_shape!r}")
        if support_grid_every_n_frames < 1:
            raise ValueError(f"support_grid_every_n_frames must be >= 1, got {support_grid_every_n_frames}")
        self.interp_shape = (int(interp_shape[0]), int(interp_shape[1]))
        self.iters = iters
        self.visibility_threshold = visibility_threshold
        self.support_grid_size = support_grid_size
        self.support_grid_every_n_frames = support_grid_every_n_frames
        self.reuse_features = reuse_features
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.weights_path: Optional[str] = None  # set by prepare(); recorded (with its md5) next to every result
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = build_cotracker3_offline(None, window_len=window_len or V3_CHECKPOINTS[checkpoint])

    def prepare(self) -> None:
        """Resolve (cache, download) and load the weights, once."""
        if self.weights_path is None:
            path = os.fspath(resolve_checkpoint(self.checkpoint, self.checkpoint_path))
            load_state_dict_file(self.model, path, f"CoTracker3 offline ({self.checkpoint})")
            self.weights_path = path

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor):
        """Track ``queries (B, N, 3)`` through uint8 ``video (B, T, 3, H, W)``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``.
        """
        self.check_inputs(video, queries)
        self.prepare()
        # Inputs go to wherever the module was moved; results come back on the input's device.
        input_device = video.device
        device = next(self.model.parameters()).device
        video, queries = video.to(device), queries.to(device)
        _, num_frames, _, height, width = video.shape
        n = queries.shape[1]
        rgbs = _resize_video(video, self.interp_shape, align_corners=True)
        scaled = _scale_queries(queries, height, width, self.interp_shape)
        grid = support_grid(self.support_grid_size, self.interp_shape, device=device)
        extra = grid_queries(grid, range(0, num_frames, self.support_grid_every_n_frames))
        model_queries = torch.cat([scaled, extra[None].expand(scaled.shape[0], -1, -1)], dim=1)

        features = None
        if self.reuse_features:
            b, t = rgbs.shape[:2]
            features = self.model.encode(rgbs.reshape(b * t, *rgbs.shape[2:]))
            features = features.reshape(b, t, *features.shape[1:])
        tracks, vis, _ = self.model(rgbs, model_queries, iters=self.iters, features=features)
        bwd_queries = mirror_query_frames(model_queries, num_frames)
        bwd_tracks, bwd_vis, _ = self.model(rgbs.flip(1), bwd_queries, iters=self.iters,
                                            features=None if features is None else features.flip(1))
        tracks, vis = _merge_backward_before_query(tracks, vis, bwd_tracks.flip(1), bwd_vis.flip(1),
                                                   model_queries[:, :, 0])
        tracks = _unscale_tracks(tracks[:, :, :n], height, width, self.interp_shape)
        return tracks.to(input_device), (vis[:, :, :n] > self.visibility_threshold).to(input_device)

