"""TapNet (Doersch et al., 2022), the JAX/Haiku TSM-ResNet model as SAM-PT runs it, in PyTorch.

The network reproduces ``tapnet_model.TAPNet`` (with ``models/tsm_resnet.py`` and
``models/tsm_utils.py``) of google-deepmind/tapnet at ``ba1a8c8f``, the copy SAM-PT ships, so
that the official Haiku checkpoint (``checkpoint_wo_optstate.npy``, or DeepMind's
``checkpoint.npy``) loads through a converter and gives the same numbers. Three layers:

* :class:`TapNet` - the network. ``forward(video, query_points)`` works in model pixels:
  ``video (B, T, 3, H, W)`` in [-1, 1], queries ``(t, y, x)``; it returns tracks ``(x, y)``
  and occlusion logits, as the original does.
* :func:`read_haiku_checkpoint` and :func:`haiku_to_torch` - the reader of the official
  ``.npy`` Haiku tree (numpy only; no JAX) and the converter of its names and layouts onto
  :class:`TapNet`, both handed to the shared loader.
* :class:`TapNetTracker` - SAM-PT's ``TapnetPointTracker`` behind :class:`PointTracker`.

What the network does (and what an equal implementation must keep):

* A TSM-ResNet-v2-18 cut after its third unit (output stride 8, 256 channels, no final batch
  norm): a 7x7/2 stem and a 3x3/2 max pool, then three units of two pre-activation blocks
  (64, 128 and 256 channels; strides 1, 2, 1). Convolutions use TensorFlow's "SAME" padding,
  which pads *more at the bottom/right* for stride 2. Batch norm always uses the stored
  moving averages (Haiku's eval mode), ``(x - mean) * (rsqrt(var + 1e-5) * scale) + offset``.
* Units 0 and 1 shift 1/8 of the channels in time (TSM "gpu" mode) after the shortcut is
  taken, and reorder them: ``[last C/8 from frame t+1, middle unshifted, first C/8 from frame
  t-1]``, zeros past either end of the clip.
* The feature grid is L2-normalised per cell; query features are read trilinearly at
  ``(t, y/8 - 0.5, x/8 - 0.5)`` with edge clamping (``map_coordinates(order=1, mode='nearest')``).
* Per chunk of queries, a cost volume (query feature . grid) passes two 3x3 convolutions and a
  ``softmax(10 x)`` over the grid; a soft argmax around the argmax cell (cell centres within
  distance 5) gives the track, replaced by the query itself on its own query frame. The
  occlusion logit comes from a strided 3x3 convolution (no ReLU after it), a spatial mean and
  two linear layers.

Memory: the whole clip goes through the backbone at once, as in the original (the temporal
shift couples neighbouring frames): a few MB of activations per 256x256 frame (4 MB at the stem
output). The cost volume of one chunk of ``query_chunk_size`` queries holds
``T x chunk x 16 x 32 x 32`` floats (1 MB per frame for 16 queries).
"""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sampt.checkpoints import PathLike, load_state_dict_file, resolve_checkpoint
from sampt.errors import CheckpointError
from sampt.trackers.base import PointTracker

# (output channels, stride, temporal-shift fraction) of the three units TapNet uses.
UNITS: tuple[tuple[int, int, float], ...] = ((64, 1, 0.125), (128, 2, 0.125), (256, 1, 0.0))
BLOCKS_PER_UNIT = 2
FEATURE_STRIDE = 8
SOFTMAX_TEMPERATURE = 10.0
# Radius (in grid cells) of the soft argmax around the argmax cell.
SOFT_ARGMAX_RADIUS = 5.0
BATCH_NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# layers with Haiku's semantics
# --------------------------------------------------------------------------------------------
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Haiku "SAME" padding ``(before, after)`` of one axis: the extra pixel of an odd
    total goes after, which a symmetric PyTorch ``padding`` cannot express."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with "SAME" padding computed per input size (see :func:`_same_padding`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = _same_padding(x.shape[-2], kh, sh)
        left, right = _same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pool with "SAME" padding; padded cells are -inf (they never win), as in ``hk.MaxPool``."""
    top, bottom = _same_padding(x.shape[-2], kernel, stride)
    left, right = _same_padding(x.shape[-1], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class FrozenBatchNorm(nn.Module):
    """Haiku ``BatchNorm`` at inference: the stored moving averages, never batch statistics.

    Parameters ``scale``/``offset`` and buffers ``mean``/``var`` hold Haiku's ``scale``,
    ``offset``, ``mean_ema/average`` and ``var_ema/average``. Computed in Haiku's order,
    ``(x - mean) * (rsqrt(var + eps) * scale) + offset``, on ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, eps: float = BATCH_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.offset = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(self.var + self.eps) * self.scale
        return (x - self.mean[:, None, None]) * inv[:, None, None] + self.offset[:, None, None]


def temporal_shift(x: torch.Tensor, num_frames: int, fraction: float) -> torch.Tensor:
    """TSM's "gpu"-mode shift of ``x (B*T, C, H, W)``: output channels are
    ``[x[t+1, C-n:], x[t, n:C-n], x[t-1, :n]]`` with ``n = int(C * fraction)`` and zeros for the
    frames past the clip's ends (the original reorders the channels this way)."""
    channels = x.shape[1]
    n = int(channels * fraction)
    clip = x.reshape(-1, num_frames, *x.shape[1:])  # (B, T, C, H, W)
    from_next = F.pad(clip[:, 1:, channels - n :], (0, 0, 0, 0, 0, 0, 0, 1))
    from_previous = F.pad(clip[:, :-1, :n], (0, 0, 0, 0, 0, 0, 1, 0))
    shifted = torch.cat([from_next, clip[:, :, n : channels - n], from_previous], dim=2)
    return shifted.reshape(x.shape)


class TsmBlock(nn.Module):
    """Pre-activation (ResNet-v2) basic block with an optional temporal shift of its residual input.

    ``preact = relu(batch_norm(x))``; the shortcut is ``shortcut_conv(preact)`` (1x1, strided)
    in a unit's first block, else ``x``; the residual is
    ``conv_2(relu(batch_norm_1(conv_0(shift(preact)))))``; the output is their sum.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool, shift_fraction: float):
        super().__init__()
        self.shift_fraction = shift_fraction
        self.batch_norm = FrozenBatchNorm(in_channels)
        self.shortcut_conv = SameConv2d(in_channels, out_channels, 1, stride, bias=False) if projection else None
        self.conv_0 = SameConv2d(in_channels, out_channels, 3, stride, bias=False)
        self.batch_norm_1 = FrozenBatchNorm(out_channels)
        self.conv_2 = SameConv2d(out_channels, out_channels, 3, 1, bias=False)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        preact = F.relu(self.batch_norm(x))
        shortcut = x if self.shortcut_conv is None else self.shortcut_conv(preact)
        if self.shift_fraction:
            preact = temporal_shift(preact, num_frames, self.shift_fraction)
        residual = F.relu(self.batch_norm_1(self.conv_0(preact)))
        return shortcut + self.conv_2(residual)


class TsmUnit(nn.Module):
    """A group of :class:`TsmBlock` s; the first one strides and projects its shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shift_fraction: float,
                 num_blocks: int = BLOCKS_PER_UNIT):
        super().__init__()
        self.blocks = nn.ModuleList(
            TsmBlock(in_channels if k == 0 else out_channels, out_channels, stride if k == 0 else 1,
                     projection=k == 0, shift_fraction=shift_fraction)
            for k in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, num_frames)
        return x


class TsmResNet(nn.Module):
    """TSM-ResNet-v2-18 up to ``tsm_resnet_unit_2``: ``(B*T, 3, H, W) -> (B*T, 256, H/8, W/8)``."""

    def __init__(self):
        super().__init__()
        self.stem = SameConv2d(3, 64, 7, 2, bias=False)
        units, channels = [], 64
        for out_channels, stride, fraction in UNITS:
            units.append(TsmUnit(channels, out_channels, stride, fraction))
            channels = out_channels
        self.units = nn.ModuleList(units)
        self.out_channels = channels

    def forward(self, frames: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = _max_pool_same(self.stem(frames))
        for unit in self.units:
            x = unit(x, num_frames)
        return x


# --------------------------------------------------------------------------------------------
# point readout
# --------------------------------------------------------------------------------------------
def map_coordinates_trilinear(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup of ``grid (B, T, h, w, C)`` at ``coords (B, N, 3)`` (t, y, x) in cell
    indices, indices clamped to the grid (``jax.scipy.ndimage.map_coordinates(order=1,
    mode='nearest')``, the same weights and summation order). Returns ``(B, N, C)``."""
    batch = torch.arange(grid.shape[0], device=grid.device)[:, None]
    axes = []
    for axis in range(3):
        c = coords[..., axis]
        lower = torch.floor(c)
        upper_weight = c - lower
        index = lower.long()
        size = grid.shape[1 + axis]
        axes.append(((index.clamp(0, size - 1), 1 - upper_weight), ((index + 1).clamp(0, size - 1), upper_weight)))
    out = None
    for it, wt in axes[0]:
        for iy, wy in axes[1]:
            for ix, wx in axes[2]:
                term = (wt * wy * wx)[..., None] * grid[batch, it, iy, ix]
                out = term if out is None else out + term
    return out


def soft_argmax(heatmaps: torch.Tensor, radius: float = SOFT_ARGMAX_RADIUS) -> torch.Tensor:
    """Soft argmax of softmax ``heatmaps (..., h, w)``: the softmax-weighted mean of the cell
    centres ``(x + 0.5, y + 0.5)`` within squared distance ``< radius^2`` of the argmax cell
    (first maximum in row-major order). Returns ``(..., 2)`` (x, y) in grid cells."""
    h, w = heatmaps.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=heatmaps.device), torch.arange(w, device=heatmaps.device),
                            indexing="ij")
    centres = torch.stack([xs + 0.5, ys + 0.5], dim=-1).to(heatmaps.dtype).reshape(h * w, 2)
    flat = heatmaps.reshape(*heatmaps.shape[:-2], h * w)
    peak = centres[flat.argmax(dim=-1)]  # (..., 2)
    valid = ((centres - peak[..., None, :]) ** 2).sum(dim=-1) < radius**2  # (..., h*w)
    weights = valid.to(flat.dtype) * flat
    weighted = (centres * weights[..., None]).sum(dim=-2)
    return weighted / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class TapNet(nn.Module):
    """The TapNet network (see the module docstring); parameter names follow the Haiku modules.

    ``forward(video, query_points, query_chunk_size)``:
        video: ``(B, T, 3, H, W)`` float in [-1, 1] (SAM-PT feeds 256 x 256).
        query_points: ``(B, N, 3)`` rows ``(t, y, x)``: frame index and raster position in model
            pixels ((0, 0) is the top-left corner of the top-left pixel).
    Returns a dict: ``tracks (B, N, T, 2)`` (x, y) model pixels, ``occlusion (B, N, T)`` logits
    (higher = occluded), ``query_feats (B, N, 256)`` and ``feature_grid (B, T, h, w, 256)``
    (channels last, as in the original).
    """

    def __init__(self):
        super().__init__()
        self.tsm_resnet_video = TsmResNet()
        self.cost_volume_regression_1 = SameConv2d(1, 16, 3)
        self.cost_volume_regression_2 = SameConv2d(16, 1, 3)
        self.cost_volume_occlusion_1 = SameConv2d(16, 32, 3, stride=2)
        self.cost_volume_occlusion_2 = nn.Linear(32, 16)
        self.occlusion_out = nn.Linear(16, 1)

    def feature_grid(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> L2-normalised features ``(B, T, H/8, W/8, 256)``."""
        batch, num_frames = video.shape[:2]
        latent = self.tsm_resnet_video(video.flatten(0, 1), num_frames)
        norm = torch.sqrt(torch.clamp_min((latent * latent).sum(dim=1, keepdim=True), 1e-12))
        grid = (latent / norm).permute(0, 2, 3, 1)
        return grid.reshape(batch, num_frames, *grid.shape[1:])

    def forward(self, video: torch.Tensor, query_points: torch.Tensor, query_chunk_size: int = 16) -> dict:
        batch, num_frames, _, height, width = video.shape
        grid = self.feature_grid(video)
        grid_size = grid.shape[1:4]  # (T, h, w)
        # transforms.convert_grid_coordinates: coords * out_size / in_size, in this order.
        to_grid = query_points * query_points.new_tensor(grid_size) / query_points.new_tensor(
            (num_frames, height, width))
        # Raster to cell-index coordinates in space only (interp's half-cell shift; not in time).
        to_grid = torch.cat([to_grid[..., :1], to_grid[..., 1:] - 0.5], dim=-1)
        query_feats = map_coordinates_trilinear(grid, to_grid)
        tracks, occlusion = [], []
        for start in range(0, query_points.shape[1], query_chunk_size):
            chunk = slice(start, start + query_chunk_size)
            chunk_tracks, chunk_occlusion = self._tracks_from_cost_volume(
                query_feats[:, chunk], grid, query_points[:, chunk], (height, width))
            tracks.append(chunk_tracks)
            occlusion.append(chunk_occlusion)
        if not tracks:  # no queries
            tracks.append(grid.new_zeros(batch, 0, num_frames, 2))
            occlusion.append(grid.new_zeros(batch, 0, num_frames))
        return {
            "tracks": torch.cat(tracks, dim=1),
            "occlusion": torch.cat(occlusion, dim=1),
            "query_feats": query_feats,
            "feature_grid": grid,
        }

    def _tracks_from_cost_volume(self, query_feats: torch.Tensor, grid: torch.Tensor, query_points: torch.Tensor,
                                 image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk: ``query_feats (B, n, C)`` -> ``tracks (B, n, T, 2)``, ``occlusion (B, n, T)``."""
        batch, num_frames, h, w, _ = grid.shape
        n = query_feats.shape[1]
        cost = torch.einsum("bnc,bthwc->tbnhw", query_feats, grid).reshape(num_frames * batch * n, 1, h, w)
        hidden = F.relu(self.cost_volume_regression_1(cost))
        logits = self.cost_volume_regression_2(hidden) * SOFTMAX_TEMPERATURE
        heatmaps = torch.softmax(logits.reshape(-1, h * w), dim=-1).reshape(num_frames, batch, n, h, w)
        points = soft_argmax(heatmaps.permute(1, 2, 0, 3, 4))  # (B, n, T, 2) grid cells
        height, width = image_hw
        points = points * points.new_tensor((width, height)) / points.new_tensor((w, h))
        # The query frame gets the query itself (t scales by T/T, as the original converts it).
        query_frame = query_points[..., 0] * num_frames / num_frames
        frames = torch.arange(num_frames, device=grid.device)
        is_query = (torch.round(query_frame).long()[..., None] == frames).to(points.dtype)[..., None]
        points = points * (1.0 - is_query) + query_points[:, :, None, [2, 1]] * is_query

        # No ReLU after the strided convolution: the original applies none there.
        occ = self.cost_volume_occlusion_1(hidden).mean(dim=(-2, -1))
        occ = self.occlusion_out(F.relu(self.cost_volume_occlusion_2(occ)))  # (T*B*n, 1)
        occlusion = occ.reshape(num_frames, batch, n).permute(1, 2, 0)
        return points, occlusion


# --------------------------------------------------------------------------------------------
# the official checkpoint: reader and converter
# --------------------------------------------------------------------------------------------
_HAIKU_PREFIX = "tap_net/~/"
# Globals an official checkpoint may name for its arrays and containers (numpy >= 2 spells
# numpy.core as numpy._core; files written by numpy 1.x name numpy.core).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "object"), ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"), ("_codecs", "encode"),  # protocol-2 pickles spell bytes via _codecs.encode
}


class _Opaque:
    """Stands in for a class the reader will not import (optimizer states in ``opt_state``)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only; any other global becomes :class:`_Opaque`,
    so reading a file runs none of the code it names.

    ``np.load(allow_pickle=True)`` would import and run whatever the file names; DeepMind's
    ``checkpoint.npy`` also names its training code's optimizer classes (its ``opt_state``),
    which need not be importable to read ``params`` and ``state``.
    """

    def find_class(self, module: str, name: str):
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        return _Opaque


def _read_npy_object(path: PathLike):
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        if not dtype.hasobject:
            raise ValueError(f"it holds a plain {dtype} array of shape {shape}, not a pickled parameter tree")
        array = _CheckpointUnpickler(handle).load()
    return array.item() if isinstance(array, np.ndarray) and array.shape == () else array


def read_haiku_checkpoint(path: PathLike, what: str) -> "OrderedDict[str, torch.Tensor]":
    """Read an official Haiku ``.npy`` checkpoint into ``{"<module>/<name>": tensor}``.

    The file is a pickled ``{"params": {module: {name: array}}, "state": {...}, ...}`` (numpy's
    ``np.save`` of a dict); only ``params`` and ``state`` are read, params first. Raises
    :class:`CheckpointError` naming the file when it is missing, unreadable or not such a tree.
    """
    where = f"{what} checkpoint {os.fspath(path)}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{where} does not exist or is not a file")
    try:
        tree = _read_npy_object(path)
    except Exception as error:  # bad magic, truncated pickle, ...: all mean "not a readable checkpoint"
        raise CheckpointError(
            f"cannot read {where} as a Haiku .npy checkpoint ({type(error).__name__}: {error}); "
            "expected numpy's np.save of {'params': ..., 'state': ...} (a truncated download reads like this)"
        ) from error
    if not isinstance(tree, Mapping) or not isinstance(tree.get("params"), Mapping):
        keys = sorted(map(str, tree)) if isinstance(tree, Mapping) else type(tree).__name__
        raise CheckpointError(
            f"{where} is not a Haiku checkpoint: expected a dict with 'params' and 'state', got {keys}")
    flat: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for part in ("params", "state"):
        modules = tree.get(part) or {}
        if not isinstance(modules, Mapping):
            raise CheckpointError(f"{where}: {part!r} is a {type(modules).__name__}, not a dict of modules")
        for module, entries in modules.items():
            if not isinstance(entries, Mapping):
                raise CheckpointError(
                    f"{where}: {part}[{module!r}] is a {type(entries).__name__}, not a dict of arrays")
            for name, value in entries.items():
                if not isinstance(value, (np.ndarray, np.generic)):
                    raise CheckpointError(
                        f"{where}: {part}[{module!r}][{name!r}] is a {type(value).__name__}, not a numpy array")
                flat[f"{module}/{name}"] = torch.from_numpy(np.array(value, copy=True))
    return flat


_UNIT_RE = re.compile(r"tsm_resnet_video/tsm_resnet_unit_(\d+)/block_(\d+)/(.+)$")
_BN_STATE = {"mean_ema/average": "mean", "var_ema/average": "var"}
# Moving-average bookkeeping Haiku keeps in the state; unused at inference.
_UNUSED_STATE = ("mean_ema/hidden", "mean_ema/counter", "var_ema/hidden", "var_ema/counter")


def _convert_tensor(param: str, tensor: torch.Tensor) -> torch.Tensor:
    """Haiku layout -> PyTorch layout; a tensor of unexpected rank passes unchanged so that the
    loader reports it as a shape mismatch."""
    if param == "w" and tensor.ndim == 4:  # Conv2D (kh, kw, in, out) -> (out, in, kh, kw)
        return tensor.permute(3, 2, 0, 1).contiguous()
    if param == "w" and tensor.ndim == 5 and tensor.shape[0] == 1:  # Conv3D [1, 3, 3] acts in 2-D
        return tensor[0].permute(3, 2, 0, 1).contiguous()
    if param == "w" and tensor.ndim == 2:  # Linear (in, out) -> (out, in)
        return tensor.t().contiguous()
    if param in ("scale", "offset", "average") and tensor.ndim == 4 and tuple(tensor.shape[:3]) == (1, 1, 1):
        return tensor.reshape(-1)  # batch-norm (1, 1, 1, C) -> (C,)
    return tensor


def haiku_to_torch(tree: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Map the Haiku names of :func:`read_haiku_checkpoint` onto :class:`TapNet`'s ``state_dict``.

    ``tap_net/~/tsm_resnet_video/tsm_resnet_unit_U/block_K/conv_0/w`` becomes
    ``tsm_resnet_video.units.U.blocks.K.conv_0.weight``, ``.../batch_norm/~/mean_ema/average``
    becomes ``....batch_norm.mean``, ``tap_net/~/occlusion_out/b`` becomes ``occlusion_out.bias``;
    the EMA ``hidden``/``counter`` entries are dropped. A name no rule knows passes through
    unchanged, so the strict loader reports it (and the key it should have been) by name.
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, tensor in tree.items():
        if not key.startswith(_HAIKU_PREFIX):
            out[key] = tensor
            continue
        rest = key[len(_HAIKU_PREFIX):]
        if rest.endswith(_UNUSED_STATE) and "/batch_norm" in rest:
            continue
        target: Optional[str] = None
        unit = _UNIT_RE.match(rest)
        if rest == "tsm_resnet_video/tsm_resnet_stem/w":
            target = "tsm_resnet_video.stem.weight"
        elif unit is not None:
            prefix = f"tsm_resnet_video.units.{unit.group(1)}.blocks.{unit.group(2)}"
            inner = unit.group(3)
            module, _, param = inner.rpartition("/")
            for state_name, buffer in _BN_STATE.items():
                if inner.endswith("/~/" + state_name):
                    target = f"{prefix}.{inner[: -len('/~/' + state_name)]}.{buffer}"
                    break
            else:
                if param == "w" and "/" not in module:
                    target = f"{prefix}.{module}.weight"
                elif param in ("scale", "offset") and "/" not in module:
                    target = f"{prefix}.{module}.{param}"
        else:
            module, _, param = rest.rpartition("/")
            if "/" not in module and param in ("w", "b"):
                target = f"{module}.{'weight' if param == 'w' else 'bias'}"
        if target is None:
            out[key] = tensor
        else:
            out[target] = _convert_tensor(key.rsplit("/", 1)[1], tensor)
    return out


def load_tapnet_weights(model: TapNet, path: PathLike, what: str = "TapNet") -> None:
    """Load an official Haiku checkpoint file into ``model`` through the shared strict loader."""
    load_state_dict_file(model, path, what, read=read_haiku_checkpoint, convert=haiku_to_torch)


# --------------------------------------------------------------------------------------------
# the SAM-PT wrapper
# --------------------------------------------------------------------------------------------
class TapNetTracker(PointTracker):
    """SAM-PT's TapNet point tracker (``TapnetPointTracker``).

    The defaults reproduce SAM-PT's wrapper exactly:

    * frames are resized to ``input_size`` (256 x 256) by ``F.interpolate(frames / 255,
      mode="bilinear", align_corners=False, antialias=antialias)`` (antialias on) and mapped to
      ``[-1, 1]`` by ``* 2 - 1``;
    * queries ``(t, x, y)`` are scaled by ``(256 / W, 256 / H)`` (no half-pixel shift) and passed
      as ``(t, y, x)``; tracks are divided by the same factors on the way back;
    * visibility is ``1 - sigmoid(occlusion) > visibility_threshold`` (0.5, strict);
    * every frame is tracked in one pass (the cost volume spans the whole clip), so points are
      followed before and after their query frame without a backward pass; on its query frame a
      point is the query itself (up to the float32 rounding of the scale and unscale).

    Args:
        checkpoint: registry name of the official weights (``tapnet``: SAM-PT's cleaned
            ``checkpoint_wo_optstate.npy``; ``tapnet_deepmind``: DeepMind's ``checkpoint.npy``,
            of which only ``params`` and ``state`` are read).
        checkpoint_path: explicit Haiku ``.npy`` checkpoint file (takes precedence).
        Weights load in :meth:`prepare` (before the first video, or by the first call); a file
        that does not fit raises :class:`~sampt.errors.CheckpointError`.
        input_size: ``(height, width)`` the frames are resized to.
        antialias: antialias the bilinear resize (SAM-PT: True).
        visibility_threshold: a point is visible where ``1 - sigmoid(occlusion)`` exceeds it.
        query_chunk_size: queries per cost volume (memory only; SAM-PT: 16).
    """

    def __init__(
        self,
        checkpoint: Optional[str] = "tapnet",
        checkpoint_path: Optional[str] = None,
        input_size: Sequence[int] = (256, 256),
        antialias: bool = True,
        visibility_threshold: float = 0.5,
        query_chunk_size: int = 16,
    ):
        super().__init__()
        if len(input_size) != 2 or any(int(s) != s or s < 1 for s in input_size):
            raise ValueError(f"TapNetTracker input_size must be (height, width) positive integers, got {input_size!r}")
        if int(query_chunk_size) != query_chunk_size or query_chunk_size < 1:
            raise ValueError(f"TapNetTracker query_chunk_size must be an integer >= 1, got {query_chunk_size}")
        if checkpoint is None and checkpoint_path is None:
            raise ValueError("TapNetTracker needs a checkpoint name or a checkpoint_path")
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.antialias = bool(antialias)
        self.visibility_threshold = float(visibility_threshold)
        self.query_chunk_size = int(query_chunk_size)
        self.weights_path: Optional[str] = None  # set by prepare()
        # Weights load in prepare(): parsing or printing a config must not touch the cache or network.
        self.model = TapNet().eval()

    def prepare(self) -> None:
        """Resolve (cache, download) and load the official Haiku weights, once."""
        if self.weights_path is None:
            path = os.fspath(resolve_checkpoint(self.checkpoint, self.checkpoint_path))
            load_tapnet_weights(self.model, path, f"TapNet ({self.checkpoint or 'explicit file'})")
            self.weights_path = path

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, antialias={self.antialias}, "
                f"visibility_threshold={self.visibility_threshold}, query_chunk_size={self.query_chunk_size}")

    def preprocess(self, video: torch.Tensor, queries: torch.Tensor):
        """The wrapper's inputs: ``(frames (B, T, 3, h, w) in [-1, 1], queries (B, N, 3) (t, y, x)
        in model pixels, scale (2,) = (h/H, w/W) float32)``."""
        batch, num_frames, _, height, width = video.shape
        scale_hw = torch.tensor(self.input_size) / torch.tensor((height, width))  # float32, as the original
        frames = F.interpolate(video.flatten(0, 1) / 255, self.input_size, mode="bilinear",
                               align_corners=False, antialias=self.antialias)
        frames = frames.unflatten(0, (batch, num_frames)) * 2 - 1
        model_queries = queries.float().clone()
        model_queries[..., 1:] *= scale_hw.flip(0).to(model_queries.device)  # (x, y) *= (w/W, h/H)
        model_queries[..., 1:] = model_queries[..., 1:].flip(-1)
        return frames, model_queries, scale_hw

    @torch.no_grad()
    def track(self, video: torch.Tensor, queries: torch.Tensor) -> dict:
        """Like :meth:`forward`, returning a dict: ``trajectories``, ``visibilities``,
        ``visibility_probs (B, T, N)`` and the model's raw ``outputs``."""
        self.check_inputs(video, queries)
        self.prepare()
        device = next(self.model.parameters()).device
        frames, model_queries, scale_hw = self.preprocess(video.to(device), queries.to(device))
        outputs = self.model(frames, model_queries, self.query_chunk_size)
        probs = 1 - torch.sigmoid(outputs["occlusion"].permute(0, 2, 1))
        trajectories = outputs["tracks"].permute(0, 2, 1, 3) / scale_hw.flip(-1).to(device)
        return {
            "trajectories": trajectories.float().to(video.device),
            "visibilities": (probs > self.visibility_threshold).to(video.device),
            "visibility_probs": probs.to(video.device),
            "outputs": outputs,
        }

    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries (B, N, 3)`` rows ``(t, x, y)`` through ``video (B, T, 3, H, W) uint8``.

        Returns ``(trajectories (B, T, N, 2) float32 input pixels, visibilities (B, T, N) bool)``
        on the video's device.
        """
        result = self.track(video, queries)
        return result["trajectories"], result["visibilities"]
