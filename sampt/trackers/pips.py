"""PIPs (Harley et al., 2022), re-implemented so the official checkpoint loads unchanged.

The network reproduces aharley/pips at the commit SAM-PT copied (``nets/pips.py``): the same
``state_dict`` keys and shapes as ``reference_model/model-000200000.pth`` and the same order of
operations, including its quirks (the time channel of the flow embedding is
``linspace(0, S, S)``, i.e. 0 to 8 in 8 steps; the 7x7 correlation window is stacked
``meshgrid(dy, dx)`` so that its first axis moves x). Three layers:

* :class:`Pips` - the network: one 8-frame window, tracks refined from a zero-velocity start.
* :func:`pips_track_direction` - SAM-PT's one-direction loop with trajectory linking: each point
  jumps to the latest frame of its window whose visibility exceeds a threshold (0.9, lowered by
  0.02 until some frame qualifies) and restarts a window there.
* :class:`PipsTracker` - SAM-PT's PIPs wrapper behind :class:`PointTracker`: the loop runs left to right and on the reversed video, and the two are merged at
  each point's query frame.

Checkpoint files: the official release is ``reference_model.tar.gz`` holding
``reference_model/model-<9-digit step>.pth``, a torch pickle ``{"model_state_dict": ...,
"optimizer_state_dict": ...}``. :func:`read_pips_checkpoint` reads that archive, an extracted
``.pth`` (or a bare / ``{"model": ...}`` state dict), and the trackers also accept the extracted
directory, where - as the original loader does - the ``model-<step>.pth`` with the largest step
is used. Unlike the original (``strict=False``), every key must be present with its shape.

Building blocks shared with PIPs++ (:mod:`sampt.trackers.pips_plus_plus`) live here: the
clamped bilinear sampler, the correlation pyramid and the checkpoint reader.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.errors import CheckpointError
from sampt.trackers.base import PointTracker
from sampt.trackers.cotracker import FeatureEncoder, bilinear_corners_and_weights

LATENT_DIM = 128
CORR_LEVELS = 4
CORR_RADIUS = 3
# Frames encoded per encoder call: bounds the encoder's peak memory (its first maps are at 1/2
# resolution), the same number of frames the original encodes at once for a PIPs window.
ENCODER_CHUNK = 8

PathLike = Union[str, os.PathLike]
_STEP_FILE = re.compile(r"^model-(\d+)\.pth$")


# --------------------------------------------------------------------------------------------
# checkpoint files (shared with PIPs++)
# --------------------------------------------------------------------------------------------
def latest_step_file(directory: PathLike, what: str) -> Path:
    """The ``model-<step>.pth`` with the largest step in ``directory`` (the original loader's rule)."""
    directory = Path(directory)
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name)) and p.is_file()]
    if not found:
        raise CheckpointError(
            f"{what} checkpoint directory {directory} holds no model-<step>.pth file "
            "(the layout of the official reference_model/ directory)"
        )
    return max(found)[1]


def _torch_load(source, where: str):
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a loadable file"
        raise CheckpointError(
            f"cannot read {where} as a weights-only torch file ({type(error).__name__}: {error}); "
            "expected a checkpoint saved with torch.save (a truncated download reads like this)"
        ) from error


def read_pips_checkpoint(path: PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a PIPs / PIPs++ checkpoint file into ``{key: tensor}``.

    Accepted: the official ``reference_model.tar.gz`` (any tar archive; the member
    ``model-<step>.pth`` with the largest step is read), a ``model-<step>.pth`` torch pickle
    ``{"model_state_dict": ..., "optimizer_state_dict": ...}``, and a bare or
    ``{"model": ...}``-wrapped state dict. Raises :class:`CheckpointError` naming the file.
    """
    where = f"{what} checkpoint {os.fspath(path)}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{where} does not exist or is not a file")
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:
            members = [(int(m.group(1)), member) for member in archive.getmembers()
                       if member.isfile() and (m := _STEP_FILE.match(os.path.basename(member.name)))]
            if not members:
                raise CheckpointError(f"{where} is an archive without a model-<step>.pth member")
            step, member = max(members, key=lambda item: item[0])
            loaded = _torch_load(io.BytesIO(archive.extractfile(member).read()), f"{where} (member {member.name})")
    else:
        loaded = _torch_load(path, where)
    if isinstance(loaded, Mapping):
        for wrapper in ("model_state_dict", "model"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{where} is not a state dict (a mapping of parameter names to tensors, optionally under "
            "a top-level 'model_state_dict' or 'model' key)"
        )
    return dict(loaded)


def resolve_pips_checkpoint(name: Optional[str], path: Optional[PathLike], what: str) -> str:
    """``resolve_checkpoint`` that also takes the official extracted directory as ``path``."""
    if path is not None and os.path.isdir(path):
        path = latest_step_file(path, what)
    return os.fspath(resolve_checkpoint(name, path))


# --------------------------------------------------------------------------------------------
# sampling and correlation (shared with PIPs++)
# --------------------------------------------------------------------------------------------
def bilinear_sample_clamped(fmaps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Sample ``fmaps (F, C, h, w)`` at ``xy (F, N, 2)`` (x, y) in map pixels -> ``(F, N, C)``.

    Integer coordinates are pixel centres. Corner indices are clamped to the map while the
    weights use the unclamped corners (the original ``utils/samp.bilinear_sample2d``), so
    points outside the map extrapolate from the border pixels.
    """
    frames, channels, height, width = fmaps.shape
    x = xy[..., 0].float()
    y = xy[..., 1].float()
    corners, weights = bilinear_corners_and_weights(x, y, height, width)
    flat = fmaps.permute(0, 2, 3, 1).reshape(frames * height * width, channels)
    base = (torch.arange(frames, device=fmaps.device) * (height * width))[:, None]
    # Same terms, summed in the same order, as the original's weighted sum.
    terms = [weight[..., None] * flat[base + iy * width + ix] for (iy, ix), weight in zip(corners, weights)]
    return terms[0] + terms[1] + terms[2] + terms[3]


def grid_sample_pixels(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` (bilinear, zero padding, align_corners=True) at pixel coordinates ``(..., 2)``."""
    height, width = img.shape[-2:]
    gx = 2 * coords[..., 0:1] / (width - 1) - 1
    gy = 2 * coords[..., 1:2] / (height - 1) - 1
    return F.grid_sample(img, torch.cat([gx, gy], dim=-1), align_corners=True)


def feature_pyramid(fmaps: torch.Tensor, levels: int = CORR_LEVELS) -> list[torch.Tensor]:
    """``fmaps (S, C, h, w)`` and ``levels - 1`` successive 2x2 average poolings."""
    pyramid = [fmaps]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
    return pyramid


def correlation_maps(pyramid: Sequence[torch.Tensor], feats: torch.Tensor) -> list[torch.Tensor]:
    """Dot products of ``feats (S, N, C)`` with every pixel of each level, over ``sqrt(C)``.

    Returns one ``(S, N, h_l, w_l)`` map per level: frame s of each track against frame s.
    """
    s, n, c = feats.shape
    scale = torch.sqrt(torch.tensor(c, device=feats.device).float())
    out = []
    for fmap in pyramid:
        h, w = fmap.shape[-2:]
        out.append((torch.matmul(feats, fmap.reshape(s, c, h * w)) / scale).reshape(s, n, h, w))
    return out


def sample_correlation_maps(maps: Sequence[torch.Tensor], coords: torch.Tensor,
                            radius: int = CORR_RADIUS) -> torch.Tensor:
    """Sample each level's ``(S, N, h_l, w_l)`` map in a ``(2r+1)^2`` window around ``coords``.

    ``coords (S, N, 2)`` are in level-0 map pixels; level l is sampled at ``coords / 2^l``.
    Returns ``(S, N, levels * (2r+1)^2)``.
    """
    s, n, _ = coords.shape
    offsets = torch.linspace(-radius, radius, 2 * radius + 1, device=coords.device)
    # The original stacks meshgrid(dy, dx, "ij") and reads it as (x, y): the window's first
    # axis moves x. The checkpoints were trained with that order.
    delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)[None]
    out = []
    for level, corr in enumerate(maps):
        h, w = corr.shape[-2:]
        points = coords.reshape(s * n, 1, 1, 2) / 2**level + delta
        out.append(grid_sample_pixels(corr.reshape(s * n, 1, h, w), points).reshape(s, n, -1))
    return torch.cat(out, dim=-1)


def check_frame_size(height: int, width: int, stride: int, what: str) -> None:
    """Raise ``ValueError`` when frames are too small for a 4-level pyramid at ``stride``.

    The coarsest level must be at least 2x2: on a 1-pixel-wide map the original's
    pixel-to-grid conversion divides by zero and every track becomes NaN.
    """
    smallest = stride * 2 ** CORR_LEVELS
    if height < smallest or width < smallest:
        raise ValueError(
            f"{what} needs frames of at least {smallest}x{smallest} pixels (stride {stride}, "
            f"{CORR_LEVELS} pyramid levels), got {height}x{width}"
        )


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
class _PreNormResidual(nn.Module):
    """``fn(LayerNorm(x)) + x`` (keys ``norm`` and ``fn``)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


def _feed_forward(dense: Callable[[int, int], nn.Module], dim: int, hidden: int) -> nn.Sequential:
    # Identity where the original has (p=0) dropout keeps the checkpoint's indices 0 and 3.
    return nn.Sequential(dense(dim, hidden), nn.GELU(), nn.Identity(), dense(hidden, dim), nn.Identity())


class _MeanOverFrames(nn.Module):
    """``(M, S, C) -> (M, C)``: the mixer's average over the window's frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _mlp_mixer(frames: int, input_dim: int, dim: int, output_dim: int, depth: int) -> nn.Sequential:
    """MLP-Mixer over ``(M, frames, input_dim)``: token mixing across frames (1x1 convolutions
    with the frames as channels) and channel MLPs; ``(M, output_dim)`` after the frame mean."""
    token_mixing = lambda cin, cout: nn.Conv1d(cin, cout, kernel_size=1)  # noqa: E731
    blocks = [
        nn.Sequential(
            _PreNormResidual(dim, _feed_forward(token_mixing, frames, frames * 4)),
            _PreNormResidual(dim, _feed_forward(nn.Linear, dim, dim * 4)),
        )
        for _ in range(depth)
    ]
    return nn.Sequential(nn.Linear(input_dim, dim), *blocks, nn.LayerNorm(dim), _MeanOverFrames(),
                         nn.Linear(dim, output_dim))


def flow_time_embedding(xyz: torch.Tensor, channels: int = 64) -> torch.Tensor:
    """``(M, S, 3)`` -> ``(M, S, 3 * channels + 3)``: per component interleaved sin/cos at the
    linear frequencies ``k * 1000 / channels``, ``k = 0, 2, ..``, then ``xyz`` itself
    (the original ``get_3d_embedding(..., cat_coords=True)``)."""
    freqs = torch.arange(0, channels, 2, device=xyz.device, dtype=torch.float32) * (1000.0 / channels)
    parts = []
    for axis in range(3):
        angles = xyz[..., axis : axis + 1] * freqs
        # stack(..., -1).flatten interleaves: even slots sin, odd slots cos.
        parts.append(torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2))
    return torch.cat(parts + [xyz], dim=-1)


class _PipsDeltaBlock(nn.Module):
    """Per-track update from ``[feature, correlations, flow embedding]`` over the window."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames
        input_dim = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2 + LATENT_DIM + 64 * 3 + 3  # 519
        self.to_delta = _mlp_mixer(frames, input_dim, 512, frames * (LATENT_DIM + 2), depth=12)

    def forward(self, feats: torch.Tensor, corrs: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """``(N, S, 128)``, ``(N, S, 196)``, ``(N, S, 3)`` -> ``(N, S, 130)`` (dx, dy, feature delta)."""
        x = torch.cat([feats, corrs, flow_time_embedding(flows, 64)], dim=2)
        return self.to_delta(x).reshape(x.shape[0], self.frames, LATENT_DIM + 2)


class Pips(nn.Module):
    """PIPs network (checkpoint-compatible with ``reference_model/model-000200000.pth``).

    Args:
        window_len: frames per window S (8 for the official weights).
        stride: encoder downsampling (SAM-PT runs the reference model at 4).
    """

    latent_dim = LATENT_DIM

    def __init__(self, window_len: int = 8, stride: int = 4):
        super().__init__()
        if window_len < 2:
            raise ValueError(f"PIPs window_len must be >= 2, got {window_len}")
        self.window_len = window_len
        self.stride = stride
        self.fnet = FeatureEncoder(stride=stride, output_dim=LATENT_DIM)
        self.delta_block = _PipsDeltaBlock(window_len)
        self.norm = nn.GroupNorm(1, LATENT_DIM)
        self.ffeat_updater = nn.Sequential(nn.Linear(LATENT_DIM, LATENT_DIM), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(LATENT_DIM, 1))

    def encode(self, rgbs: torch.Tensor) -> torch.Tensor:
        """Frames ``(F, 3, H, W)`` (uint8 or float in [0, 255]) -> maps ``(F, 128, H//s, W//s)``.

        Every frame is normalised on its own (instance norm), so frames may be encoded in any
        grouping; ``ENCODER_CHUNK`` frames go through the encoder at a time.
        """
        return torch.cat([self.fnet(2 * (rgbs[i : i + ENCODER_CHUNK] / 255.0) - 1.0)
                          for i in range(0, rgbs.shape[0], ENCODER_CHUNK)])

    def query_features(self, fmap: torch.Tensor, xys: torch.Tensor) -> torch.Tensor:
        """Features ``(N, 128)`` of ``fmap (128, h, w)`` at ``xys (N, 2)`` input pixels."""
        return bilinear_sample_clamped(fmap[None], xys[None] / float(self.stride))[0]

    def track(self, fmaps: torch.Tensor, xys: torch.Tensor, feat_init: Optional[torch.Tensor] = None,
              iters: int = 6):
        """Track points from window frame 0 through one window.

        Args:
            fmaps: ``(S, 128, h, w)`` encoder maps of the window's frames, S = ``window_len``.
            xys: ``(N, 2)`` positions in window frame 0, input pixels.
            feat_init: ``(N, 128)`` track features; None samples them at ``xys`` in frame 0.
            iters: refinement iterations.

        Returns:
            ``(coord_predictions (iters, S, N, 2) input pixels, visibility logits (S, N),
            ffeat (N, 128))`` where ``ffeat`` is the initial track feature.
        """
        s = fmaps.shape[0]
        if s != self.window_len:
            raise ValueError(f"PIPs windows must have {self.window_len} frames, got {s}")
        n = xys.shape[0]
        coords = (xys / float(self.stride))[None].repeat(s, 1, 1)  # zero-velocity start
        ffeat = bilinear_sample_clamped(fmaps[:1], coords[:1])[0] if feat_init is None else feat_init
        ffeats = ffeat[None].repeat(s, 1, 1)  # (S, N, C)
        coords_query = coords[0].clone()
        pyramid = feature_pyramid(fmaps)
        times = torch.linspace(0, s, s, device=fmaps.device).reshape(1, s, 1).repeat(n, 1, 1)
        predictions = []
        for _ in range(iters):
            corrs = sample_correlation_maps(correlation_maps(pyramid, ffeats), coords)  # (S, N, 196)
            flows = torch.cat([(coords - coords[0:1]).transpose(0, 1), times], dim=2)  # (N, S, 3)
            feats_ns = ffeats.transpose(0, 1)  # (N, S, C)
            delta = self.delta_block(feats_ns, corrs.transpose(0, 1), flows)  # (N, S, 130)
            updated = self.ffeat_updater(self.norm(delta[..., 2:].reshape(n * s, LATENT_DIM)))
            updated = updated + feats_ns.reshape(n * s, LATENT_DIM)
            ffeats = updated.reshape(n, s, LATENT_DIM).transpose(0, 1)
            coords = coords + delta[..., :2].transpose(0, 1)
            coords[0] = coords_query  # the query frame stays locked (inference mode)
            predictions.append(coords * self.stride)
        vis_logits = self.vis_predictor(ffeats.reshape(s * n, LATENT_DIM)).reshape(s, n)
        return torch.stack(predictions), vis_logits, ffeat

    def forward(self, xys: torch.Tensor, rgbs: torch.Tensor, feat_init: Optional[torch.Tensor] = None,
                iters: int = 6):
        """The original ``Pips.forward`` in inference: ``xys (B, N, 2)`` input pixels in frame 0 of
        ``rgbs (B, S, 3, H, W)`` (uint8 or float in [0, 255]), ``feat_init (B, N, 128)`` or None.

        Returns ``(coord_predictions (iters, B, S, N, 2), vis_e logits (B, S, N), ffeat (B, N, 128))``.
        """
        outs = [self.track(self.encode(rgbs[b]), xys[b], None if feat_init is None else feat_init[b], iters)
                for b in range(rgbs.shape[0])]
        coords, vis, feats = zip(*outs)
        return torch.stack(coords, dim=1), torch.stack(vis), torch.stack(feats)


# --------------------------------------------------------------------------------------------
# SAM-PT's wrapper logic
# --------------------------------------------------------------------------------------------
def link_thresholds(initial: float, step: float, device=None) -> torch.Tensor:
    """The linking thresholds ``initial, initial - step, ...`` down to the first negative one.

    Computed by repeated float32 subtraction, exactly as the original lowers its threshold, so
    comparisons with float32 visibilities decide identically. A negative threshold accepts any
    probability, which bounds the search.
    """
    if not 0 < step:
        raise ValueError(f"the linking threshold step must be > 0, got {step}")
    thresholds = [torch.ones(1) * initial]
    while thresholds[-1].item() >= 0:
        thresholds.append(thresholds[-1] - step)
    return torch.cat(thresholds).to(device)


def link_next_frames(candidates: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Trajectory linking: for each point, the index of the latest candidate frame whose
    visibility exceeds the first threshold that any of its candidates exceeds.

    ``candidates (L, N)`` are the visibility probabilities of the window's frames 1..L;
    returns ``(N,)`` indices in ``[0, L)``. Equivalent to the original's scan from the last
    candidate down, lowering the threshold each time the scan passes the first candidate.
    """
    passes = candidates[None] > thresholds[:, None, None]  # (K, L, N)
    level = passes.any(dim=1).int().argmax(dim=0)  # first threshold with a passing frame (N,)
    chosen = passes[level, :, torch.arange(candidates.shape[1], device=candidates.device)]  # (N, L)
    return candidates.shape[0] - 1 - chosen.flip(-1).int().argmax(dim=-1)


@torch.no_grad()
def pips_track_direction(model: Pips, features: Callable[[Sequence[int]], torch.Tensor], num_frames: int,
                         queries: torch.Tensor, *, iters: int = 6, link_threshold: float = 0.9,
                         link_threshold_step: float = 0.02, calls: Optional[list] = None):
    """SAM-PT's one-direction PIPs loop (``PipsPointTracker._forward``) for one video.

    Args:
        model: the network.
        features: maps frame indices of this direction's video to their encoder maps
            ``(len, 128, h, w)``.
        num_frames: T.
        queries: ``(N, 3)`` rows ``(t, x, y)`` in this direction's frames, input pixels.
        calls: optional list receiving one dict per model step, in order (see below).

    Each frame ``f`` that is some point's current frame opens the window ``f .. f+S-1``
    (padded with copies of frame T-1 past the end). Points whose query frame is ``f`` first
    take their track feature there (the original gets it from an extra full model call whose
    tracks it discards; here it is sampled directly - the same numbers, recorded in ``calls``
    as ``feat_init_given=False`` with no tracks). The points whose current frame is ``f`` are
    then tracked through the window; their real frames overwrite ``f+1 ..`` and each jumps to
    the frame chosen by :func:`link_next_frames`.

    Returns ``(trajectories (T, N, 2), visibility probabilities (T, N))``; frames before a
    point's query frame stay ``(0, 0)`` with probability 0, and the query frame holds the query
    with probability 1.
    """
    device = queries.device
    n = queries.shape[0]
    s = model.window_len
    points = torch.arange(n, device=device)
    traj = torch.zeros((num_frames, n, 2), device=device)
    vis = torch.zeros((num_frames, n), device=device)
    start = queries[:, 0].long()
    traj[start, points] = queries[:, 1:].float()
    vis[start, points] = 1.0
    feat_init = torch.zeros((n, LATENT_DIM), device=device)
    current = start.clone()
    thresholds = link_thresholds(link_threshold, link_threshold_step, device=device)
    for frame in range(num_frames - 1):
        active = current == frame
        if not bool(active.any()):
            continue
        real = list(range(frame, min(frame + s, num_frames)))
        window = real + [num_frames - 1] * (s - len(real))  # the original pads with the last frame
        fmaps = features(window)
        starting = start == frame
        if bool(starting.any()):
            feat_init[starting] = model.query_features(fmaps[0], traj[frame, starting])
            if calls is not None:
                calls.append(dict(window=window, points=starting.nonzero()[:, 0], xys=traj[frame, starting].clone(),
                                  feat_init_given=False, ffeat=feat_init[starting].clone()))
        xys = traj[frame, active].clone()
        coords, vis_logits, ffeat = model.track(fmaps, xys, feat_init[active], iters)
        if calls is not None:
            calls.append(dict(window=window, points=active.nonzero()[:, 0], xys=xys, feat_init_given=True,
                              coord_predictions=coords, vis_e_logits=vis_logits, ffeat=ffeat))
        written = len(real)  # window frames 1 .. written-1 are real video frames
        traj[frame + 1 : frame + written, active] = coords[-1, 1:written]
        vis[frame + 1 : frame + written, active] = torch.sigmoid(vis_logits[1:written])
        current[active] = frame + 1 + link_next_frames(vis[frame + 1 : frame + written, active], thresholds)
    return traj, vis


def merge_directions(forward: torch.Tensor, backward: torch.Tensor, query_frames: torch.Tensor) -> torch.Tensor:
    """Frames before each point's query frame from ``backward`` (already in video time), the
    others from ``forward``; both ``(T, N, ...)``."""
    before = torch.arange(forward.shape[0], device=forward.device)[:, None] < query_frames[None, :]
    while before.ndim < forward.ndim:
        before = before[..., None]
    return torch.where(before, backward, forward)


class WindowFeatures:
    """Encoder maps for the successive windows of one pass, each frame encoded once.

    A pass opens windows at increasing frames, so a frame that leaves the window is never
    needed again: only the current window's maps are kept (the memory of one window, like the
    original, which instead encodes all 8 frames of every window).
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor):
        self.encode = encode
        self.video = video
        self.cache: dict[int, torch.Tensor] = {}

    def __call__(self, window: Sequence[int]) -> torch.Tensor:
        kept = {f: self.cache[f] for f in window if f in self.cache}
        todo = sorted(set(window) - set(kept))
        if todo:
            kept.update(zip(todo, self.encode(self.video[todo])))
        self.cache = kept
        return torch.stack([kept[f] for f in window])


class PipsTracker(PointTracker):
    """SAM-PT's PIPs point tracker.

    Behaviour of SAM-PT's ``PipsPointTracker`` (``configs/model/point_tracker/pips.yaml``):
    frames are used at the input resolution (no resize) and normalised to [-1, 1]; queries are
    ``(t, x, y)`` input pixels; each point is tracked left to right from its query frame with
    trajectory linking (:func:`pips_track_direction`), and again on the reversed video; frames
    before the query frame come from the reversed pass. Each pass thresholds its own
    probabilities (``> visibility_threshold``) before the merge. The query frame always holds
    the query, visible.

    Args:
        checkpoint: registry name (``pips_reference_model``: the official archive).
        checkpoint_path: explicit file (the archive, an extracted ``model-<step>.pth``, or a
            state dict) or the extracted ``reference_model/`` directory (largest step wins);
            takes precedence over ``checkpoint``.
        window_len: frames per window (SAM-PT's ``s``), 8.
        stride: encoder stride, 4 (SAM-PT's config).
        iters: refinement iterations per window, 6 (hard-coded in SAM-PT).
        link_threshold: first linking threshold (SAM-PT's
            ``initial_next_frame_visibility_threshold``), 0.9.
        link_threshold_step: how much the linking threshold drops while no frame qualifies, 0.02.
        visibility_threshold: a frame is visible where its probability exceeds this, 0.5.
        reuse_features: encode each frame once per direction and reuse its maps in the
            overlapping windows (:class:`WindowFeatures`; the same numbers, the memory of one
            window). False encodes all frames of every window, as the original does.
    """

    def __init__(self, checkpoint: Optional[str] = "pips_reference_model", checkpoint_path: Optional[str] = None,
                 window_len: int = 8, stride: int = 4, iters: int = 6, link_threshold: float = 0.9,
                 link_threshold_step: float = 0.02, visibility_threshold: float = 0.5,
                 reuse_features: bool = True):
        super().__init__()
        if int(iters) != iters or iters < 1:
            raise ValueError(f"PipsTracker iters must be an integer >= 1, got {iters}")
        if not link_threshold_step > 0:
            raise ValueError(f"PipsTracker link_threshold_step must be > 0, got {link_threshold_step}")
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.iters = int(iters)
        self.link_threshold = float(link_threshold)
        self.link_threshold_step = float(link_threshold_step)
        self.visibility_threshold = float(visibility_threshold)
        self.reuse_features = reuse_features
        self.weights_path: Optional[str] = None  # set by prepare()
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = Pips(window_len=window_len, stride=stride).eval()

    def prepare(self) -> None:
        """Resolve (cache, download) and load the weights, once."""
        if self.weights_path is None:
            what = f"PIPs ({self.checkpoint_path or self.checkpoint})"
            path = resolve_pips_checkpoint(self.checkpoint, self.checkpoint_path, what)
            load_state_dict_file(self.model, path, what, read=read_pips_checkpoint)
            self.weights_path = path

    def extra_repr(self) -> str:
        return (f"iters={self.iters}, link_threshold={self.link_threshold}, "
                f"link_threshold_step={self.link_threshold_step}, visibility_threshold={self.visibility_threshold}")

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict] = None):
        """Track ``queries (B, N, 3)`` through uint8 ``video (B, T, 3, H, W)``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``.
        ``details`` (optional dict) receives batch element 0's model steps (``forward_calls``,
        ``backward_calls``, see :func:`pips_track_direction`) and per-direction probabilities.
        """
        self.check_inputs(video, queries)
        check_frame_size(video.shape[-2], video.shape[-1], self.model.stride, "PipsTracker")
        self.prepare()
        device = next(self.model.parameters()).device
        trajs, visibles = [], []
        for b in range(video.shape[0]):
            traj, vis = self._track_one(video[b].to(device), queries[b].to(device).float(),
                                        details if b == 0 else None)
            trajs.append(traj)
            visibles.append(vis)
        return torch.stack(trajs).to(video.device), torch.stack(visibles).to(video.device)

    def _track_one(self, video: torch.Tensor, queries: torch.Tensor, details: Optional[dict]):
        num_frames = video.shape[0]
        if self.reuse_features:
            forward_features = WindowFeatures(self.model.encode, video)
            backward_features = WindowFeatures(self.model.encode, video.flip(0))
        else:
            forward_features = lambda frames: self.model.encode(video[list(frames)])  # noqa: E731
            backward_features = lambda frames: self.model.encode(video.flip(0)[list(frames)])  # noqa: E731
        options = dict(iters=self.iters, link_threshold=self.link_threshold,
                       link_threshold_step=self.link_threshold_step)
        forward_calls = [] if details is not None else None
        backward_calls = [] if details is not None else None
        fwd_traj, fwd_prob = pips_track_direction(self.model, forward_features, num_frames, queries,
                                                  calls=forward_calls, **options)
        mirrored = queries.clone()
        mirrored[:, 0] = num_frames - 1 - mirrored[:, 0]
        bwd_traj, bwd_prob = pips_track_direction(self.model, backward_features, num_frames, mirrored,
                                                  calls=backward_calls, **options)
        bwd_traj, bwd_prob = bwd_traj.flip(0), bwd_prob.flip(0)
        query_frames = queries[:, 0].long()
        traj = merge_directions(fwd_traj, bwd_traj, query_frames)
        visible = merge_directions(fwd_prob > self.visibility_threshold, bwd_prob > self.visibility_threshold,
                                   query_frames)
        if details is not None:
            details.update(forward_calls=forward_calls, backward_calls=backward_calls,
                           forward_probabilities=fwd_prob, backward_probabilities=bwd_prob)
        return traj, visible

