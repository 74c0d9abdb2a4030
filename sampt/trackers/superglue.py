"""SAM-PT's SuperGlue "tracker": SuperPoint keypoints on every frame matched to the query frame.

Registered as ``"superglue"``. Re-implements the SuperPoint detector/descriptor (DeTone et al.,
2018) and the SuperGlue matcher (Sarlin et al., 2020) so that Magic Leap's official
``superpoint_v1.pth`` and ``superglue_outdoor.pth`` / ``superglue_indoor.pth`` load unchanged
(same ``state_dict`` keys, including SuperGlue's BatchNorm1d buffers and its 0-d ``bin_score``),
and SAM-PT's wrapper around them (``SuperGluePointTracker``). Three layers:

* :class:`SuperPoint` - grey image ``(B, 1, H, W)`` in [0, 1] -> keypoints, scores, descriptors.
* :class:`SuperGlue` - two keypoint sets -> mutual matches after optimal transport.
* :class:`SuperGlueTracker` - SAM-PT's wrapper behind :class:`PointTracker`.

This is not a tracker in the usual sense: the output of frame ``i`` is a fresh random draw of the
frame-``i`` keypoints that SuperGlue matched to the reference frame, split into "inside the
object's mask" (positive slots) and "outside" (negative slots). Point ``n`` on frame ``i`` is not
the same physical point as point ``n`` on the query frame; SAM only needs prompts on the object.

The wrapper needs each object's query *mask* (the original's ``set_masks``), which the
:class:`PointTracker` interface does not carry. :meth:`SuperGlueTracker.forward` therefore takes an
optional ``query_masks`` keyword; without it the mask is approximated from the object's positive
query points (``fallback_mask``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.trackers.base import PointTracker

# SuperPoint's detector head predicts one of 64 positions in each 8 x 8 cell, or "no keypoint".
_CELL = 8


# --------------------------------------------------------------------------------------------
# SuperPoint
# --------------------------------------------------------------------------------------------
@dataclass
class SuperPointFeatures:
    """SuperPoint's output for one image.

    Attributes:
        keypoints: ``(K, 2) float32`` (x, y) pixel positions (integer-valued), in the row-major
            order of the score map (or by decreasing score when ``max_keypoints`` cut them).
        scores: ``(K,) float32`` detector scores.
        descriptors: ``(D, K) float32`` unit-norm descriptors.
    """

    keypoints: torch.Tensor
    scores: torch.Tensor
    descriptors: torch.Tensor


def nms_keep(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """SuperPoint's fast non-maximum suppression of ``scores (B, H, W)``: suppressed entries -> 0.

    A pixel survives if it is the maximum of its ``(2r+1)^2`` window; two more rounds then revive
    the window maxima among the pixels that no survivor's window covers.
    """
    if radius < 0:
        raise ValueError(f"nms radius must be >= 0, got {radius}")

    def window_max(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    keep = scores == window_max(scores)
    for _ in range(2):
        covered = window_max(keep.float()) > 0
        remaining = torch.where(covered, zeros, scores)
        keep = keep | ((remaining == window_max(remaining)) & ~covered)
    return torch.where(keep, scores, zeros)


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, cell: int = _CELL) -> torch.Tensor:
    """Descriptors of the dense map ``(1, D, h, w)`` at ``keypoints (1, K, 2)`` -> ``(1, D, K)``.

    Bilinear (``align_corners=True``) with SuperPoint's mapping of pixel ``p`` to the map,
    ``(p - cell/2 + 0.5) / (side * cell - cell/2 - 0.5)``, then L2-normalised again.
    """
    batch, channels, height, width = descriptors.shape
    grid = keypoints - cell / 2 + 0.5
    grid /= torch.tensor([width * cell - cell / 2 - 0.5, height * cell - cell / 2 - 0.5]).to(grid)[None]
    grid = grid * 2 - 1
    sampled = F.grid_sample(descriptors, grid.view(batch, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(batch, channels, -1), p=2, dim=1)


class SuperPoint(nn.Module):
    """SuperPoint detector and descriptor with the key names of ``superpoint_v1.pth``.

    A VGG-style encoder (three 2x2 poolings) feeds a detector head (65-way softmax per 8 x 8 cell,
    the 65th class being "no keypoint") and a descriptor head (``descriptor_dim`` channels at 1/8
    resolution, L2-normalised).

    Args:
        descriptor_dim: descriptor channels (256 in the official weights).
        nms_radius: radius of the non-maximum suppression window (SuperPoint's own default is 4;
            SAM-PT's config uses 3).
        keypoint_threshold: keep keypoints whose score is strictly above this.
        max_keypoints: keep only this many best keypoints; -1 keeps all.
        remove_borders: drop keypoints closer than this many pixels to the score map's border.
    """

    def __init__(self, descriptor_dim: int = 256, nms_radius: int = 4, keypoint_threshold: float = 0.005,
                 max_keypoints: int = -1, remove_borders: int = 4):
        super().__init__()
        if max_keypoints == 0 or max_keypoints < -1:
            raise ValueError(f"SuperPoint max_keypoints must be positive or -1, got {max_keypoints}")
        if nms_radius < 0:
            raise ValueError(f"SuperPoint nms_radius must be >= 0, got {nms_radius}")
        self.nms_radius = int(nms_radius)
        self.keypoint_threshold = float(keypoint_threshold)
        self.max_keypoints = int(max_keypoints)
        self.remove_borders = int(remove_borders)
        widths = [(1, 64), (64, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 128)]
        for name, (cin, cout) in zip(["conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b"],
                                     widths):
            setattr(self, name, nn.Conv2d(cin, cout, kernel_size=3, padding=1))
        self.convPa = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.convPb = nn.Conv2d(256, _CELL * _CELL + 1, kernel_size=1)
        self.convDa = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.convDb = nn.Conv2d(256, descriptor_dim, kernel_size=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> shared features ``(B, 128, H/8, W/8)``."""
        x = image
        for stage in range(1, 5):
            x = F.relu(getattr(self, f"conv{stage}a")(x))
            x = F.relu(getattr(self, f"conv{stage}b")(x))
            if stage < 4:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x

    def dense_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Shared features -> per-pixel keypoint probabilities ``(B, 8h, 8w)`` before NMS."""
        logits = self.convPb(F.relu(self.convPa(features)))
        probabilities = F.softmax(logits, dim=1)[:, :-1]
        # Channel c of a cell is pixel (c // 8, c % 8) inside it.
        return F.pixel_shuffle(probabilities, _CELL)[:, 0]

    def forward(self, image: torch.Tensor) -> list[SuperPointFeatures]:
        """Keypoints, scores and descriptors of each image of ``image (B, 1, H, W)`` in [0, 1]."""
        features = self.encode(image)
        scores = nms_keep(self.dense_scores(features), self.nms_radius)
        height, width = scores.shape[-2:]
        border = self.remove_borders
        descriptors = F.normalize(self.convDb(F.relu(self.convDa(features))), p=2, dim=1)
        outputs = []
        for b in range(scores.shape[0]):
            rows_cols = torch.nonzero(scores[b] > self.keypoint_threshold)  # row-major order
            point_scores = scores[b][rows_cols[:, 0], rows_cols[:, 1]]
            inside = ((rows_cols[:, 0] >= border) & (rows_cols[:, 0] < height - border)
                      & (rows_cols[:, 1] >= border) & (rows_cols[:, 1] < width - border))
            rows_cols, point_scores = rows_cols[inside], point_scores[inside]
            if 0 <= self.max_keypoints < len(rows_cols):
                point_scores, order = torch.topk(point_scores, self.max_keypoints, dim=0)
                rows_cols = rows_cols[order]
            keypoints = rows_cols.flip(1).float()  # (row, col) -> (x, y)
            point_descriptors = sample_descriptors(keypoints[None], descriptors[b : b + 1])[0]
            outputs.append(SuperPointFeatures(keypoints, point_scores, point_descriptors))
        return outputs


# --------------------------------------------------------------------------------------------
# SuperGlue
# --------------------------------------------------------------------------------------------
def conv1d_mlp(channels: Sequence[int]) -> nn.Sequential:
    """1x1 Conv1d layers with BatchNorm1d + ReLU between them (not after the last): the layout
    whose indices (``0``, ``1``, ``3``, ...) the official state dicts use."""
    layers: list[nn.Module] = []
    for k in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[k - 1], channels[k], kernel_size=1, bias=True))
        if k < len(channels) - 1:
            layers += [nn.BatchNorm1d(channels[k]), nn.ReLU()]
    return nn.Sequential(*layers)


def normalize_keypoints(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, K, 2)`` pixels -> centred coordinates scaled by 0.7 x the longer image side."""
    size = torch.tensor([width, height], dtype=keypoints.dtype, device=keypoints.device)
    scaling = size.max() * 0.7
    return (keypoints - size / 2) / scaling


class _KeypointEncoder(nn.Module):
    """MLP on ``[x, y, score]`` whose output is added to the descriptors (key prefix ``kenc``)."""

    def __init__(self, feature_dim: int, layers: Sequence[int]):
        super().__init__()
        self.encoder = conv1d_mlp([3, *layers, feature_dim])

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([keypoints.transpose(1, 2), scores.unsqueeze(1)], dim=1))


class _MultiHeadAttention(nn.Module):
    """Attention with ``proj.{0,1,2}`` (query, key, value) and ``merge`` 1x1 convolutions.

    Channels split as ``(head_dim, heads)``: channel ``c`` belongs to head ``c % heads``.
    """

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SuperGlue descriptor_dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.merge = nn.Conv1d(dim, dim, kernel_size=1)
        self.proj = nn.ModuleList([nn.Conv1d(dim, dim, kernel_size=1) for _ in range(3)])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch = query.shape[0]
        q, k, v = [layer(x).view(batch, self.head_dim, self.num_heads, -1)
                   for layer, x in zip(self.proj, (query, key, value))]
        weights = F.softmax(torch.einsum("bdhn,bdhm->bhnm", q, k) / self.head_dim ** 0.5, dim=-1)
        attended = torch.einsum("bhnm,bdhm->bdhn", weights, v)
        return self.merge(attended.contiguous().view(batch, self.head_dim * self.num_heads, -1))


class _AttentionalPropagation(nn.Module):
    """One GNN layer's update: ``MLP([descriptors, attention message])``."""

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        self.attn = _MultiHeadAttention(num_heads, dim)
        self.mlp = conv1d_mlp([dim * 2, dim * 2, dim])

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, self.attn(x, source, source)], dim=1))


class _AttentionalGNN(nn.Module):
    """Alternating self/cross attention layers (key prefix ``gnn.layers.<i>``)."""

    def __init__(self, dim: int, layer_names: Sequence[str]):
        super().__init__()
        for name in layer_names:
            if name not in ("self", "cross"):
                raise ValueError(f"SuperGlue GNN layer names must be 'self' or 'cross', got {name!r}")
        self.names = list(layer_names)
        self.layers = nn.ModuleList([_AttentionalPropagation(dim) for _ in self.names])

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, name in zip(self.layers, self.names):
            source0, source1 = (desc1, desc0) if name == "cross" else (desc0, desc1)
            # Both sets are updated from the same pre-layer descriptors.
            desc0, desc1 = desc0 + layer(desc0, source0), desc1 + layer(desc1, source1)
        return desc0, desc1


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log-space Sinkhorn on ``scores (B, M, N)`` augmented with a dustbin row and column.

    Every dustbin entry is ``bin_score``; the marginals are 1 per keypoint and N (resp. M) for
    the dustbins, all divided by M + N. Returns the ``(B, M+1, N+1)`` log assignment, scaled back
    by M + N (so that a confident match has log-probability near 0).
    """
    batch, m, n = scores.shape
    one = scores.new_tensor(1)
    ms, ns = m * one, n * one
    couplings = torch.cat([
        torch.cat([scores, bin_score.expand(batch, m, 1)], -1),
        torch.cat([bin_score.expand(batch, 1, n), bin_score.expand(batch, 1, 1)], -1),
    ], 1)
    norm = -(ms + ns).log()
    log_mu = torch.cat([norm.expand(m), ns.log()[None] + norm])[None].expand(batch, -1)
    log_nu = torch.cat([norm.expand(n), ms.log()[None] + norm])[None].expand(batch, -1)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(couplings + u.unsqueeze(2), dim=1)
    return couplings + u.unsqueeze(2) + v.unsqueeze(1) - norm


@dataclass
class SuperGlueMatches:
    """SuperGlue's output for a batch of image pairs.

    Attributes:
        matches0: ``(B, M) int64`` index into keypoints1 for each keypoint0, -1 for none.
        matches1: ``(B, N) int64`` index into keypoints0 for each keypoint1, -1 for none.
        matching_scores0, matching_scores1: ``(B, M)``, ``(B, N) float32`` probabilities of the
            mutual best matches (0 where not mutual), before the threshold.
    """

    matches0: torch.Tensor
    matches1: torch.Tensor
    matching_scores0: torch.Tensor
    matching_scores1: torch.Tensor


class SuperGlue(nn.Module):
    """SuperGlue matcher with the key names of ``superglue_{outdoor,indoor}.pth``.

    Keypoint encoding (``kenc``), a GNN of ``layer_names`` attention layers (``gnn``), a final
    projection (``final_proj``), log-space optimal transport with one learned dustbin score
    (``bin_score``), then mutual best matches with probability above ``match_threshold``.

    Args:
        descriptor_dim: descriptor channels (256).
        keypoint_encoder: hidden widths of the keypoint MLP.
        layer_names: GNN layers, each ``"self"`` or ``"cross"``.
        sinkhorn_iterations: Sinkhorn iterations (SuperGlue's default 100; SAM-PT uses 20).
        match_threshold: minimum matching probability (strictly above).
    """

    def __init__(self, descriptor_dim: int = 256, keypoint_encoder: Sequence[int] = (32, 64, 128, 256),
                 layer_names: Sequence[str] = ("self", "cross") * 9, sinkhorn_iterations: int = 100,
                 match_threshold: float = 0.2):
        super().__init__()
        if int(sinkhorn_iterations) != sinkhorn_iterations or sinkhorn_iterations < 0:
            raise ValueError(f"SuperGlue sinkhorn_iterations must be an integer >= 0, got {sinkhorn_iterations}")
        self.descriptor_dim = int(descriptor_dim)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.match_threshold = float(match_threshold)
        self.kenc = _KeypointEncoder(descriptor_dim, keypoint_encoder)
        nn.init.zeros_(self.kenc.encoder[-1].bias)
        self.gnn = _AttentionalGNN(descriptor_dim, layer_names)
        for layer in self.gnn.layers:
            nn.init.zeros_(layer.mlp[-1].bias)
        self.final_proj = nn.Conv1d(descriptor_dim, descriptor_dim, kernel_size=1, bias=True)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def forward(self, keypoints0: torch.Tensor, scores0: torch.Tensor, descriptors0: torch.Tensor,
                keypoints1: torch.Tensor, scores1: torch.Tensor, descriptors1: torch.Tensor,
                image0_hw: tuple[int, int], image1_hw: tuple[int, int]) -> SuperGlueMatches:
        """Match ``keypoints0 (B, M, 2)``, ``scores0 (B, M)``, ``descriptors0 (B, D, M)`` of an
        ``image0_hw`` image to the same of image 1 (keypoints in pixels)."""
        m, n = keypoints0.shape[1], keypoints1.shape[1]
        if m == 0 or n == 0:
            return SuperGlueMatches(
                keypoints0.new_full(keypoints0.shape[:-1], -1, dtype=torch.long),
                keypoints1.new_full(keypoints1.shape[:-1], -1, dtype=torch.long),
                keypoints0.new_zeros(keypoints0.shape[:-1]), keypoints1.new_zeros(keypoints1.shape[:-1]),
            )
        desc0 = descriptors0 + self.kenc(normalize_keypoints(keypoints0, *image0_hw), scores0)
        desc1 = descriptors1 + self.kenc(normalize_keypoints(keypoints1, *image1_hw), scores1)
        desc0, desc1 = self.gnn(desc0, desc1)
        scores = torch.einsum("bdn,bdm->bnm", self.final_proj(desc0), self.final_proj(desc1))
        scores = scores / self.descriptor_dim ** 0.5
        scores = log_optimal_transport(scores, self.bin_score, self.sinkhorn_iterations)

        best0, best1 = scores[:, :-1, :-1].max(2), scores[:, :-1, :-1].max(1)
        indices0, indices1 = best0.indices, best1.indices
        mutual0 = torch.arange(m, device=scores.device)[None] == indices1.gather(1, indices0)
        mutual1 = torch.arange(n, device=scores.device)[None] == indices0.gather(1, indices1)
        zero = scores.new_tensor(0)
        mscores0 = torch.where(mutual0, best0.values.exp(), zero)
        mscores1 = torch.where(mutual1, mscores0.gather(1, indices1), zero)
        valid0 = mutual0 & (mscores0 > self.match_threshold)
        valid1 = mutual1 & valid0.gather(1, indices1)
        none = indices0.new_tensor(-1)
        return SuperGlueMatches(torch.where(valid0, indices0, none), torch.where(valid1, indices1, none),
                                mscores0, mscores1)

    def match(self, features0: SuperPointFeatures, features1: SuperPointFeatures,
              image0_hw: tuple[int, int], image1_hw: tuple[int, int]) -> SuperGlueMatches:
        """:meth:`forward` for one image pair given as SuperPoint outputs (batch of 1)."""
        return self(features0.keypoints[None], features0.scores[None], features0.descriptors[None],
                    features1.keypoints[None], features1.scores[None], features1.descriptors[None],
                    image0_hw, image1_hw)


# --------------------------------------------------------------------------------------------
# SAM-PT's wrapper
# --------------------------------------------------------------------------------------------
def rgb_to_gray_uint8(frames: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W) uint8`` RGB -> ``(..., H, W) uint8``: ``0.2989 r + 0.587 g + 0.114 b`` in
    float32, *truncated* to uint8 (torchvision's ``rgb_to_grayscale`` on uint8 input, which the
    original applies)."""
    r, g, b = frames.float().unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8)


def resized_size(width: int, height: int, resize: Sequence[int]) -> tuple[int, int]:
    """``(new_width, new_height)`` by SuperGlue's rule: ``[-1]`` keeps the size, ``[s]`` scales the
    longer side to ``s``, ``[w, h]`` is an explicit size (``[s, -1]`` means ``[s]``)."""
    if len(resize) == 2 and resize[1] == -1:
        resize = resize[:1]
    if len(resize) == 1:
        if resize[0] == -1:
            return width, height
        scale = resize[0] / max(height, width)
        return int(round(width * scale)), int(round(height * scale))
    return int(resize[0]), int(resize[1])


def convex_hull_mask(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(height, width) bool``: pixels whose centre lies in the convex hull of ``points (P, 2)``
    (x, y pixels), plus the pixels containing the points themselves (so it is never empty)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    pts = points.detach().double().cpu()
    cols = pts[:, 0].floor().long().clamp(0, width - 1)
    rows = pts[:, 1].floor().long().clamp(0, height - 1)
    mask[rows, cols] = True
    hull = _convex_hull(sorted({(float(x), float(y)) for x, y in pts.tolist()}))
    if len(hull) < 3:
        return mask
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    inside = torch.ones(height, width, dtype=torch.bool)
    for (ax, ay), (bx, by) in zip(hull, hull[1:] + hull[:1]):
        # The hull turns one way only, so the interior is on the same side of every edge.
        inside &= (bx - ax) * (ys - ay) - (by - ay) * (xs - ax) >= -1e-9
    return mask | inside


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Monotone-chain convex hull of sorted unique points; vertices with consistent turning."""
    if len(points) < 3:
        return points

    def turn(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(sequence):
        out: list[tuple[float, float]] = []
        for p in sequence:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(points), chain(reversed(points))
    return lower[:-1] + upper[:-1]


_REFERENCE_FRAMES = ("first", "query")
_FALLBACK_MASKS = ("convex_hull", "none")


class SuperGlueTracker(PointTracker):
    """SAM-PT's SuperGlue point tracker (see the module docstring).

    Queries come as ``n_masks`` groups of ``positive_points_per_mask + negative_points_per_mask``
    points (mask-major, positives first), as SAM-PT's pipeline builds them. Per video:

    1. Frames become grey uint8 (truncating, as torchvision does on uint8), then ``/ 255``.
    2. The reference frame's keypoints are detected once; for every other frame ``i``,
       SuperPoint runs on frame ``i`` and SuperGlue matches the reference to it.
    3. For each mask, the matched frame-``i`` keypoints are split by the mask (thresholded
       ``> 0.5``) read at ``[int(y), int(x)]`` of the *frame-i* keypoint: the query-frame mask is
       used on every frame, as in the original.
    4. ``min(candidates, slots)`` candidates are drawn *with replacement* for the positive slots,
       then for the negative slots (per frame, per mask, in that order), with
       ``numpy.random.RandomState(seed)`` - the legacy generator the original used through
       numpy's global seed, so ``seed=s`` reproduces the original run after ``np.random.seed(s)``.
       Chosen points are visible; empty slots are ``(-1, -1)`` and not visible.
    5. The reference frame holds the query positions, **not visible** (``query_frame_visible``).

    Args:
        superpoint_checkpoint: registry name of the SuperPoint weights (``superpoint_v1``).
        superpoint_checkpoint_path: explicit ``superpoint_v1.pth``-format file (takes precedence).
        superglue_checkpoint: registry name of the SuperGlue weights (``superglue_outdoor``, as
            SAM-PT, or ``superglue_indoor``).
        superglue_checkpoint_path: explicit ``superglue_*.pth``-format file (takes precedence).
            With neither a name nor a path a model keeps its random initialisation (tests,
            benchmarks). Both load in :meth:`prepare`, strictly; errors raise
            :class:`~sampt.errors.CheckpointError` naming the file.
        positive_points_per_mask, negative_points_per_mask: slots per mask (SAM-PT: 16 and 1);
            must equal the pipeline's ``sam_pt`` values, since the split of the queries into
            masks and slots is inferred from them.
        resize: grey frames are resized before SuperPoint (antialiased bilinear) by SuperGlue's
            rule (``[-1]`` or ``[-1, -1]``: not at all, SAM-PT's setting; ``[s]``: longer side
            ``s``; ``[w, h]``). The original raises NotImplementedError for any resize; here the
            keypoints are mapped back to input pixels before the mask lookup and the output.
        nms_radius, keypoint_threshold, max_keypoints, remove_borders: SuperPoint's (SAM-PT: 3,
            0.005, -1, 4).
        sinkhorn_iterations, match_threshold: SuperGlue's (SAM-PT: 20, 0.2).
        reference_frame: ``"first"`` (the original): every mask is matched from frame 0,
            whatever its query frame, and frame 0 holds the query positions. ``"query"``: each
            mask is matched from its own query frame (all points of a mask must share it).
        query_frame_visible: mark the reference frame's query positions visible (the original
            leaves them not visible).
        fallback_mask: what stands in for the query masks when ``forward`` gets none
            (``query_masks`` is not part of the :class:`PointTracker` interface):
            ``"convex_hull"`` of each mask's positive query points, or ``"none"`` to raise.
        seed: seed of the legacy numpy generator that draws the points; each ``forward`` call
            starts from it unless a ``generator`` is passed.
    """

    #: SAM-PT's pipeline may pass ``query_masks=(B, M, H, W)`` to :meth:`forward`.
    uses_query_masks = True

    def __init__(
        self,
        superpoint_checkpoint: Optional[str] = "superpoint_v1",
        superpoint_checkpoint_path: Optional[str] = None,
        superglue_checkpoint: Optional[str] = "superglue_outdoor",
        superglue_checkpoint_path: Optional[str] = None,
        positive_points_per_mask: int = 16,
        negative_points_per_mask: int = 1,
        resize: Sequence[int] = (-1, -1),
        nms_radius: int = 3,
        keypoint_threshold: float = 0.005,
        max_keypoints: int = -1,
        remove_borders: int = 4,
        sinkhorn_iterations: int = 20,
        match_threshold: float = 0.2,
        reference_frame: str = "first",
        query_frame_visible: bool = False,
        fallback_mask: str = "convex_hull",
        seed: int = 0,
    ):
        super().__init__()
        for option, value in (("positive_points_per_mask", positive_points_per_mask),
                              ("negative_points_per_mask", negative_points_per_mask)):
            if int(value) != value or value < 0:
                raise ValueError(f"SuperGlueTracker {option} must be an integer >= 0, got {value}")
        if positive_points_per_mask + negative_points_per_mask < 1:
            raise ValueError("SuperGlueTracker needs at least one point per mask")
        resize = [int(s) for s in resize]
        short = resize[:1] if len(resize) == 2 and resize[1] == -1 else resize
        if not ((len(short) == 1 and (short[0] == -1 or short[0] > 0)) or (len(short) == 2 and min(short) > 0)):
            raise ValueError(f"SuperGlueTracker resize must be [-1], [longer side] or [width, height], got {resize}")
        if reference_frame not in _REFERENCE_FRAMES:
            raise ValueError(f"SuperGlueTracker reference_frame must be one of {_REFERENCE_FRAMES}, "
                             f"got {reference_frame!r}")
        if fallback_mask not in _FALLBACK_MASKS:
            raise ValueError(f"SuperGlueTracker fallback_mask must be one of {_FALLBACK_MASKS}, got {fallback_mask!r}")
        self.superpoint_checkpoint = superpoint_checkpoint
        self.superpoint_checkpoint_path = superpoint_checkpoint_path
        self.superglue_checkpoint = superglue_checkpoint
        self.superglue_checkpoint_path = superglue_checkpoint_path
        self.positive_points_per_mask = int(positive_points_per_mask)
        self.negative_points_per_mask = int(negative_points_per_mask)
        self.resize = resize
        self.reference_frame = reference_frame
        self.query_frame_visible = bool(query_frame_visible)
        self.fallback_mask = fallback_mask
        self.seed = int(seed)
        #: ``{"superpoint": path or None, "superglue": path or None}`` after :meth:`prepare`.
        self.weights_paths: Optional[dict[str, Optional[str]]] = None
        #: The SuperGlue file (it names the weights variant), for consumers of one path per tracker.
        self.weights_path: Optional[str] = None
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.superpoint = SuperPoint(nms_radius=nms_radius, keypoint_threshold=keypoint_threshold,
                                     max_keypoints=max_keypoints, remove_borders=remove_borders)
        self.superglue = SuperGlue(sinkhorn_iterations=sinkhorn_iterations, match_threshold=match_threshold)
        self.eval()

    @property
    def points_per_mask(self) -> int:
        return self.positive_points_per_mask + self.negative_points_per_mask

    def prepare(self) -> None:
        """Load both models' weights once: each from its explicit path if given, else its registry
        name (cache, then download with the usual checks); a model with neither stays random."""
        if self.weights_paths is not None:
            return
        paths: dict[str, Optional[str]] = {}
        for key, module, name, path, what in (
            ("superpoint", self.superpoint, self.superpoint_checkpoint, self.superpoint_checkpoint_path, "SuperPoint"),
            ("superglue", self.superglue, self.superglue_checkpoint, self.superglue_checkpoint_path,
             f"SuperGlue ({self.superglue_checkpoint or 'custom'})"),
        ):
            paths[key] = None
            if name is not None or path is not None:
                paths[key] = os.fspath(resolve_checkpoint(name, path))
                load_state_dict_file(module, paths[key], what)
        self.weights_paths = paths
        self.weights_path = paths["superglue"]

    def train(self, mode: bool = True) -> "SuperGlueTracker":
        """Inference only: SuperGlue's batch norms always use their running statistics."""
        super().train(mode)
        self.superpoint.eval()
        self.superglue.eval()
        return self

    def extra_repr(self) -> str:
        return (f"points_per_mask=({self.positive_points_per_mask}, {self.negative_points_per_mask}), "
                f"resize={self.resize}, reference_frame={self.reference_frame}, seed={self.seed}")

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor, query_masks: Optional[torch.Tensor] = None,
                generator: Optional[np.random.RandomState] = None,
                details: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Matched keypoints for the queries' masks on every frame (see the class docstring).

        Args:
            video: ``(B, T, 3, H, W) uint8``.
            queries: ``(B, N, 3)`` rows ``(t, x, y)``, ``N = n_masks * points_per_mask``.
            query_masks: ``(B, n_masks, h, w)`` (or ``(n_masks, h, w)`` when ``B == 1``) bool or
                {0, 1} float query masks; resized (nearest) to ``H x W`` if needed. None: see
                ``fallback_mask``.
            generator: legacy numpy generator for the draws; default ``RandomState(seed)``.
            details: optional dict; receives, for batch element 0, ``grayscale (T, H, W) uint8``,
                ``matching_calls`` (SuperPoint and SuperGlue outputs per frame pair) and
                ``random_draws`` (``a``, ``size``, ``result`` of each draw).

        Returns:
            ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)`` on the video's
            device, in input pixels.
        """
        self.check_inputs(video, queries)
        self.prepare()
        batch, num_frames, _, height, width = video.shape
        num_points = queries.shape[1]
        if num_points % self.points_per_mask:
            raise ValueError(
                f"SuperGlueTracker: {num_points} query points are not a whole number of masks of "
                f"{self.positive_points_per_mask} + {self.negative_points_per_mask} points; set "
                "positive_points_per_mask / negative_points_per_mask to the pipeline's values")
        num_masks = num_points // self.points_per_mask
        masks = self._check_masks(query_masks, batch, num_masks, height, width)
        rng = generator if generator is not None else np.random.RandomState(self.seed)
        trajectories, visibilities = [], []
        for b in range(batch):
            traj, vis = self._track_one(video[b], queries[b].float().cpu(), None if masks is None else masks[b],
                                        rng, details if b == 0 else None)
            trajectories.append(traj)
            visibilities.append(vis)
        return torch.stack(trajectories).to(video.device), torch.stack(visibilities).to(video.device)

    def _check_masks(self, masks: Optional[torch.Tensor], batch: int, num_masks: int, height: int,
                     width: int) -> Optional[torch.Tensor]:
        """``(B, M, H, W) bool`` on CPU, or None when no masks were given (and a fallback exists)."""
        if masks is None:
            if self.fallback_mask == "none":
                raise ValueError("SuperGlueTracker needs query_masks (fallback_mask='none')")
            return None
        if masks.ndim == 3 and batch == 1:
            masks = masks[None]
        if masks.ndim != 4 or masks.shape[:2] != (batch, num_masks):
            raise ValueError(f"SuperGlueTracker query_masks must be (B={batch}, n_masks={num_masks}, H, W), "
                             f"got shape {tuple(masks.shape)}")
        masks = masks.float().cpu()
        if masks.shape[-2:] != (height, width):
            masks = F.interpolate(masks, size=(height, width), mode="nearest")
        return masks > 0.5

    def _track_one(self, video: torch.Tensor, queries: torch.Tensor, masks: Optional[torch.Tensor],
                   rng: np.random.RandomState, details: Optional[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """One video ``(T, 3, H, W)``: ``(T, N, 2) float32, (T, N) bool`` on CPU."""
        num_frames, _, height, width = video.shape
        device = next(self.superpoint.parameters()).device
        per_mask, positives = self.points_per_mask, self.positive_points_per_mask
        num_masks = queries.shape[0] // per_mask
        queries = queries.reshape(num_masks, per_mask, 3)
        if masks is None:
            masks = torch.stack([convex_hull_mask(queries[m, :positives, 1:], height, width)
                                 for m in range(num_masks)]) if positives else torch.zeros(num_masks, height, width,
                                                                                           dtype=torch.bool)
        reference = self._reference_frames(queries)

        gray = rgb_to_gray_uint8(video.to(device))  # (T, H, W)
        new_width, new_height = resized_size(width, height, self.resize)
        images = gray[:, None]
        if (new_height, new_width) != (height, width):
            images = F.interpolate(images.float(), size=(new_height, new_width), mode="bilinear",
                                   align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
        images = images.float() / 255  # (T, 1, h, w)
        scale = torch.tensor([width / new_width, height / new_height])
        if details is not None:
            details.update(grayscale=gray.cpu(), matching_calls=[], random_draws=[])

        features: dict[int, SuperPointFeatures] = {}

        def detect(t: int) -> SuperPointFeatures:
            if t not in features:
                features[t] = self.superpoint(images[t : t + 1])[0]
            return features[t]

        trajectories = torch.zeros(num_frames, num_masks, per_mask, 2)
        visibilities = torch.zeros(num_frames, num_masks, per_mask, dtype=torch.bool)
        for ref in sorted(set(reference)):
            group = [m for m in range(num_masks) if reference[m] == ref]
            trajectories[ref, group] = queries[group, :, 1:]
            visibilities[ref, group] = self.query_frame_visible
            for t in range(num_frames):
                if t == ref:
                    continue
                source, target = detect(ref), detect(t)
                matches = self.superglue.match(source, target, (new_height, new_width), (new_height, new_width))
                if details is not None:
                    details["matching_calls"].append(_call_record(ref, t, source, target, matches))
                matches0 = matches.matches0[0].cpu()
                matched = target.keypoints.cpu()[matches0[matches0 > -1]] * scale  # input pixels
                cols = matched[:, 0].long().clamp(0, width - 1)
                rows = matched[:, 1].long().clamp(0, height - 1)
                for m in group:
                    inside = masks[m][rows, cols]
                    slots = [(matched[inside], slice(0, positives)), (matched[~inside], slice(positives, per_mask))]
                    for candidates, where in slots:
                        chosen = self._draw(rng, candidates, where.stop - where.start, details)
                        filled = where.start + len(chosen)
                        trajectories[t, m, where.start : filled] = chosen
                        trajectories[t, m, filled : where.stop] = -1.0
                        visibilities[t, m, where.start : filled] = True
                        visibilities[t, m, filled : where.stop] = False
        return trajectories.reshape(num_frames, -1, 2), visibilities.reshape(num_frames, -1)

    def _reference_frames(self, queries: torch.Tensor) -> list[int]:
        """The frame each mask is matched from."""
        if self.reference_frame == "first":
            return [0] * queries.shape[0]
        frames = queries[:, :, 0].round().long()
        mixed = (frames != frames[:, :1]).any(1)
        if mixed.any():
            raise ValueError(f"SuperGlueTracker with reference_frame='query': the points of mask "
                             f"{int(mixed.nonzero()[0])} have different query frames")
        return frames[:, 0].tolist()

    @staticmethod
    def _draw(rng: np.random.RandomState, candidates: torch.Tensor, slots: int,
              details: Optional[dict]) -> torch.Tensor:
        """``min(len(candidates), slots)`` candidates drawn with replacement, as the original's
        ``np.random.choice(a=len, size=min(len, slots))``; an empty draw consumes no numbers."""
        size = min(len(candidates), slots)
        index = rng.choice(len(candidates), size=size) if size else np.zeros(0, dtype=np.int64)
        index = torch.from_numpy(np.asarray(index, dtype=np.int64))
        if details is not None:
            details["random_draws"].append({"a": len(candidates), "size": size, "result": index})
        return candidates[index]


def _call_record(ref: int, target_frame: int, source: SuperPointFeatures, target: SuperPointFeatures,
                 matches: SuperGlueMatches) -> dict:
    """The SuperPoint and SuperGlue outputs of one frame pair, on CPU (for ``details``)."""
    return {
        "reference_frame": ref, "target_frame": target_frame,
        "keypoints0": source.keypoints.cpu(), "scores0": source.scores.cpu(),
        "descriptors0": source.descriptors.cpu(),
        "keypoints1": target.keypoints.cpu(), "scores1": target.scores.cpu(),
        "descriptors1": target.descriptors.cpu(),
        "matches0": matches.matches0[0].cpu(), "matches1": matches.matches1[0].cpu(),
        "matching_scores0": matches.matching_scores0[0].cpu(),
        "matching_scores1": matches.matching_scores1[0].cpu(),
    }
