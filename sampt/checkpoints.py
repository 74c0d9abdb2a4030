"""The checkpoint registry: every named checkpoint, where it lives, and how it is fetched.

This module is the one place that knows checkpoint file names, URLs and md5 sums; SAM backends
and trackers ask it for a local path by name.

Resolution order of :func:`resolve_checkpoint`:

1. An explicit path (from config). It must exist. It is *not* hashed: an explicit path is the
   user's deliberate choice and may well be a fine-tuned or converted file whose md5 differs
   from the published one; a file that does not fit the architecture is still caught when its
   state dict is loaded (missing/unexpected keys).
2. ``<cache>/<filename>`` where ``<cache>`` is ``$SAMPT_CACHE`` (default ``~/.cache/sampt``).
   The file's md5 must match the registry. For entries without a published md5 (``md5=None``)
   the md5 recorded in ``<cache>/<filename>.md5`` when the file was first seen is checked
   instead, so a later corrupted copy is still detected.
3. A download into the cache with a progress bar, checked against the md5 before it is moved
   into place (temporary file in the cache directory + ``os.replace``, so an interrupted or
   corrupt download never leaves a file under the final name).

Every failure raises :class:`~sampt.errors.CheckpointError` saying which checkpoint, where it
looked, the URL and the command that places the file by hand.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shlex
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, Union

from tqdm import tqdm

from sampt.errors import CheckpointError
from sampt.io.atomic import write_text_atomic

if TYPE_CHECKING:  # torch is imported lazily so that `sampt checkpoints` starts fast
    import torch
    from torch import nn

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Checkpoint:
    """One named checkpoint.

    Attributes:
        name: registry name used in configs (``sam_vit_b``).
        filename: file name in the cache directory.
        url: where to download it from.
        md5: published md5 hex digest, or None when none is published.
        component: ``"sam"`` or ``"tracker"``.
        description: one line for ``sampt checkpoints``.
        size_mb: approximate file size in MB (10^6 bytes), shown before downloads.
    """

    name: str
    filename: str
    url: str
    md5: Optional[str]
    component: str
    description: str
    size_mb: float


def _table(*entries: Checkpoint) -> dict[str, Checkpoint]:
    return {entry.name: entry for entry in entries}


_HQ_SAM_URL = "https://huggingface.co/lkeab/hq-sam/resolve"
_COTRACKER_URL = "https://dl.fbaipublicfiles.com/cotracker"

CHECKPOINTS: dict[str, Checkpoint] = _table(
    Checkpoint(
        "sam_vit_b", "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "01ec64d29a2fca3f0661936605ae66f8", "sam", "SAM ViT-B (Meta)", 375,
    ),
    Checkpoint(
        "sam_vit_l", "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "0b3195507c641ddb6910d2bb5adee89c", "sam", "SAM ViT-L (Meta)", 1249,
    ),
    Checkpoint(
        "sam_vit_h", "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "4b8939a88964f0f4ff5f5b2642c598a6", "sam", "SAM ViT-H (Meta)", 2564,
    ),
    Checkpoint(
        "samhq_vit_b", "sam_hq_vit_b.pth",
        f"{_HQ_SAM_URL}/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_b.pth",
        "c6b8953247bcfdc8bb8ef91e36a6cacc", "sam", "HQ-SAM ViT-B", 379,
    ),
    Checkpoint(
        "samhq_vit_l", "sam_hq_vit_l.pth",
        f"{_HQ_SAM_URL}/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_l.pth",
        "08947267966e4264fb39523eccc33f86", "sam", "HQ-SAM ViT-L", 1255,
    ),
    Checkpoint(
        "samhq_vit_h", "sam_hq_vit_h.pth",
        f"{_HQ_SAM_URL}/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_h.pth",
        "3560f6b6a5a6edacd814a1325c39640a", "sam", "HQ-SAM ViT-H", 2571,
    ),
    Checkpoint(
        "samhq_vit_tiny", "sam_hq_vit_tiny.pth",
        f"{_HQ_SAM_URL}/a3a77cd0a2e5e50eaa76faccf61b964732d9b35f/sam_hq_vit_tiny.pth",
        "3a661ab92d4088ccd6232fa542998a65", "sam", "Light HQ-SAM (TinyViT encoder)", 42,
    ),
    Checkpoint(
        "mobile_sam_vit_t", "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/01ea8d0f5590082f0c1ceb0a3e2272593f20154b/weights/mobile_sam.pt",
        "f3c0d8cda613564d499310dab6c812cd", "sam", "MobileSAM (TinyViT encoder)", 41,
    ),
    # SAM 2 / SAM 2.1 (facebookresearch/sam2 checkpoints/download_ckpts.sh); no md5 is published,
    # so the md5 is recorded on first download. Read by sampt.sam.sam2_backend.
    Checkpoint(
        "sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
        None, "sam", "SAM 2.1 Hiera-T (no published md5)", 156,
    ),
    Checkpoint(
        "sam2.1_hiera_small", "sam2.1_hiera_small.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
        None, "sam", "SAM 2.1 Hiera-S (no published md5)", 184,
    ),
    Checkpoint(
        "sam2.1_hiera_base_plus", "sam2.1_hiera_base_plus.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
        None, "sam", "SAM 2.1 Hiera-B+ (no published md5)", 324,
    ),
    Checkpoint(
        "sam2.1_hiera_large", "sam2.1_hiera_large.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
        None, "sam", "SAM 2.1 Hiera-L (no published md5)", 898,
    ),
    Checkpoint(
        "sam2_hiera_tiny", "sam2_hiera_tiny.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt",
        None, "sam", "SAM 2.0 Hiera-T (no published md5)", 156,
    ),
    Checkpoint(
        "sam2_hiera_small", "sam2_hiera_small.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt",
        None, "sam", "SAM 2.0 Hiera-S (no published md5)", 184,
    ),
    Checkpoint(
        "sam2_hiera_base_plus", "sam2_hiera_base_plus.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt",
        None, "sam", "SAM 2.0 Hiera-B+ (no published md5)", 324,
    ),
    Checkpoint(
        "sam2_hiera_large", "sam2_hiera_large.pt",
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt",
        None, "sam", "SAM 2.0 Hiera-L (no published md5)", 898,
    ),
    Checkpoint(
        "cotracker_stride_4_wind_8", "cotracker_stride_4_wind_8.pth",
        f"{_COTRACKER_URL}/cotracker_stride_4_wind_8.pth",
        "82c458ad5de9bf98bc337c34ccbc436a", "tracker", "CoTracker v1, stride 4, window 8 (SAM-PT default)", 97,
    ),
    Checkpoint(
        "cotracker_stride_4_wind_12", "cotracker_stride_4_wind_12.pth",
        f"{_COTRACKER_URL}/cotracker_stride_4_wind_12.pth",
        "f13ab80f04b2cb58945e2dffb5a3a44c", "tracker", "CoTracker v1, stride 4, window 12", 97,
    ),
    Checkpoint(
        "cotracker_stride_8_wind_16", "cotracker_stride_8_wind_16.pth",
        f"{_COTRACKER_URL}/cotracker_stride_8_wind_16.pth",
        "d0d25fe323b20d11c447aaa05a923650", "tracker", "CoTracker v1, stride 8, window 16", 97,
    ),
    Checkpoint(
        "cotracker3_offline", "scaled_offline.pth",
        "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth",
        None, "tracker", "CoTracker3 offline, window 60 (no published md5)", 102,
    ),
    # TapNet (JAX/Haiku .npy trees, no published md5): SAM-PT's copy without the optimizer state
    # (its docs link it on Google Drive), and DeepMind's original, of which only params/state are read.
    Checkpoint(
        "tapnet", "checkpoint_wo_optstate.npy",
        "https://drive.google.com/uc?export=download&id=1fGhoW33k87OQQHUTmFobMUjEnRixhuqg",
        None, "tracker", "TapNet TSM-ResNet18 (SAM-PT's cleaned checkpoint, no published md5)", 11,
    ),
    Checkpoint(
        "tapnet_deepmind", "tapnet_checkpoint.npy",
        "https://storage.googleapis.com/dm-tapnet/checkpoint.npy",
        None, "tracker", "TapNet TSM-ResNet18 (DeepMind's checkpoint.npy, with optimizer state)", 34,
    ),
    # DeepMind's TAPIR / BootsTAPIR (google-deepmind/tapnet README); no md5 is published. The JAX
    # .npy files are pickles (read with allow_pickle=True) converted on load.
    Checkpoint(
        "tapir_checkpoint_panning", "tapir_checkpoint_panning.npy",
        "https://storage.googleapis.com/dm-tapnet/tapir_checkpoint_panning.npy",
        None, "tracker", "TAPIR, panning-augmented training, JAX (SAM-PT's TAPIR)", 124,
    ),
    Checkpoint(
        "tapir_checkpoint_panning_pt", "tapir_checkpoint_panning.pt",
        "https://storage.googleapis.com/dm-tapnet/tapir_checkpoint_panning.pt",
        None, "tracker", "TAPIR, panning-augmented training, PyTorch conversion", 124,
    ),
    Checkpoint(
        "bootstapir_checkpoint_v2", "bootstapir_checkpoint_v2.pt",
        "https://storage.googleapis.com/dm-tapnet/bootstap/bootstapir_checkpoint_v2.pt",
        None, "tracker", "BootsTAPIR v2, PyTorch (official torch port)", 219,
    ),
    Checkpoint(
        "bootstapir_checkpoint_v2_npy", "bootstapir_checkpoint_v2.npy",
        "https://storage.googleapis.com/dm-tapnet/bootstap/bootstapir_checkpoint_v2.npy",
        None, "tracker", "BootsTAPIR v2, JAX", 219,
    ),
    # Magic Leap's SuperPoint / SuperGlue weights (SAM-PT's SuperGlue tracker), pinned to a commit.
    Checkpoint(
        "superpoint_v1", "superpoint_v1.pth",
        "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/ddcf11f42e7e0732a0c4607648f9448ea8d73590/models/weights/superpoint_v1.pth",
        None, "tracker", "SuperPoint keypoints and descriptors (SAM-PT's SuperGlue tracker)", 5.2,
    ),
    Checkpoint(
        "superglue_outdoor", "superglue_outdoor.pth",
        "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/ddcf11f42e7e0732a0c4607648f9448ea8d73590/models/weights/superglue_outdoor.pth",
        None, "tracker", "SuperGlue matcher, outdoor weights (SAM-PT's choice)", 48.2,
    ),
    Checkpoint(
        "superglue_indoor", "superglue_indoor.pth",
        "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/ddcf11f42e7e0732a0c4607648f9448ea8d73590/models/weights/superglue_indoor.pth",
        None, "tracker", "SuperGlue matcher, indoor weights", 48.2,
    ),
    # The PIPs / PIPs++ authors publish tar archives of reference_model/model-<step>.pth (model and
    # Adam state, hence ~3x the parameter bytes), with no md5 of the archive; the PIPs trackers read
    # the archive directly. SAM-PT lists md5 9f34c4cd5d6f54cb11e1911841ac702c for the extracted
    # PIPs model-000200000.pth.
    Checkpoint(
        "pips_reference_model", "pips_reference_model.tar.gz",
        "https://www.dropbox.com/s/glk6jmoa9yeervl/reference_model.tar.gz?dl=1",
        None, "tracker", "PIPs reference model (aharley/pips, 200k steps; SAM-PT's PIPs)", 344,
    ),
    Checkpoint(
        "pips_plus_plus_reference_model", "pips_plus_plus_reference_model.tar.gz",
        "https://www.dropbox.com/scl/fi/czdlt2zc2ji2b7zd0pvoe/reference_model.tar.gz?rlkey=56ebq4g5dk01kyq8kuismev14&dl=1",
        None, "tracker", "PIPs++ reference model (aharley/pips2; SAM-PT's PIPs++)", 211,
    ),
    # torchvision's published RAFT weights; torchvision pins a sha256 prefix in the file name,
    # not an md5, so the md5 is recorded on first download like CoTracker3's.
    Checkpoint(
        "raft_large_C_T_SKHT_V2", "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        None, "tracker", "RAFT large (torchvision), C+T+S+K+H, v2", 21,
    ),
    Checkpoint(
        "raft_small_C_T_V2", "raft_small_C_T_V2-01064c6d.pth",
        "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
        None, "tracker", "RAFT small (torchvision), C+T, v2", 4,
    ),
)

# Seconds without data before a download is abandoned (a stalled mirror must not hang a run).
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20

# The function that opens URLs; tests replace it to simulate a server or being offline.
_urlopen = urllib.request.urlopen

# md5 of files already hashed in this process, keyed by (absolute path, size, mtime_ns), so a
# multi-GB checkpoint is hashed once per run however often it is resolved.
_md5_memo: dict[tuple[str, int, int], str] = {}
# Names of md5-less checkpoints already warned about in this process.
_warned_no_md5: set[str] = set()
# md5 of md5-less checkpoints seen for the first time, keyed by resolved path: recorded in
# ``<file>.md5`` only once the file has loaded into its model (see :func:`confirm_loaded`), so
# a truncated or wrong first copy never becomes the trusted reference.
_pending_md5_records: dict[str, str] = {}


def cache_dir() -> Path:
    """The checkpoint cache: ``$SAMPT_CACHE`` if set (and non-empty), else ``~/.cache/sampt``."""
    configured = os.environ.get("SAMPT_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "sampt"


def get_checkpoint(name: str) -> Checkpoint:
    """The registry entry ``name``; ``CheckpointError`` listing valid names when unknown."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        valid = ", ".join(sorted(CHECKPOINTS))
        raise CheckpointError(f"unknown checkpoint {name!r}; valid names: {valid}") from None


def file_md5(path: PathLike) -> str:
    """md5 hex digest of ``path``, read in chunks; memoised per (path, size, mtime) in-process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _md5_memo:
        hasher = hashlib.md5()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
                hasher.update(chunk)
        _md5_memo[key] = hasher.hexdigest()
    return _md5_memo[key]


def md5_record_path(path: PathLike) -> Path:
    """Where the md5 of an md5-less checkpoint is recorded: ``<file>.md5`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".md5")


def _read_md5_record(path: Path) -> Optional[str]:
    record = md5_record_path(path)
    if not record.is_file():
        return None
    fields = record.read_text().split()
    return fields[0].lower() if fields else None




def _record_md5(path: Path, digest: str) -> None:
    # md5sum's format, so `cd <cache> && md5sum -c <file>.md5` works too.
    write_text_atomic(md5_record_path(path), f"{digest}  {path.name}\n")


def _warn_no_published_md5(checkpoint: Checkpoint) -> None:
    if checkpoint.name in _warned_no_md5:
        return
    _warned_no_md5.add(checkpoint.name)
    warnings.warn(
        f"checkpoint {checkpoint.name!r} has no published md5; sampt records the md5 of the copy it "
        f"first sees in <file>.md5 and checks later copies against it",
        stacklevel=3,
    )


def _manual_placement(checkpoint: Checkpoint, cache: Path) -> str:
    target = cache / checkpoint.filename
    command = (
        f"mkdir -p {shlex.quote(str(cache))} && "
        f"curl -L -o {shlex.quote(str(target))} {shlex.quote(checkpoint.url)}"
    )
    hint = f"To place it by hand, run:\n  {command}\n"
    if checkpoint.md5 is not None:
        hint += f"and check that its md5 is {checkpoint.md5}. "
    hint += "Or set $SAMPT_CACHE to a directory holding the file, or give an explicit checkpoint path in the config."
    return hint


def _expected_md5(checkpoint: Checkpoint, path: Path) -> tuple[Optional[str], str]:
    """The md5 ``path`` must have and where that expectation comes from."""
    if checkpoint.md5 is not None:
        return checkpoint.md5, "the registry"
    return _read_md5_record(path), f"the record {md5_record_path(path)}"


def _verify_cached(checkpoint: Checkpoint, path: Path) -> None:
    """Raise ``CheckpointError`` when the cached ``path`` is not the file ``checkpoint`` names."""
    if checkpoint.md5 is None:
        _warn_no_published_md5(checkpoint)
    expected, source = _expected_md5(checkpoint, path)
    actual = file_md5(path)
    if expected is None:
        # Placed by hand with no published md5: trust this first copy once it loads.
        _pending_md5_records[str(path.resolve())] = actual
        return
    if actual != expected:
        reset = "" if checkpoint.md5 is not None else (
            f" The expected md5 was recorded from the first copy of this file that loaded; if the file "
            f"was deliberately replaced by a newer upstream release, delete the record "
            f"({md5_record_path(path)}) as well so that the next copy that loads is recorded instead."
        )
        raise CheckpointError(
            f"checkpoint {checkpoint.name!r}: the file {path} is corrupted or not the expected file: "
            f"md5 {actual}, expected {expected} (from {source}). Its URL is {checkpoint.url}. Delete it "
            f"to download it again, or replace it by hand.{reset}\n{_manual_placement(checkpoint, path.parent)}"
        )


def _download(checkpoint: Checkpoint, cache: Path, looked_at: list[Path]) -> Path:
    """Download ``checkpoint`` into ``cache`` atomically, verifying its md5 (and size)."""
    target = cache / checkpoint.filename
    tmp: Optional[str] = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{checkpoint.filename}.", suffix=".part")
        hasher = hashlib.md5()
        received = 0
        with os.fdopen(fd, "wb") as out, _urlopen(checkpoint.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length") if response.headers is not None else None
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {checkpoint.filename}", disable=None,
            ) as progress:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        if total is not None and received != total:
            raise CheckpointError(
                f"checkpoint {checkpoint.name!r}: the download from {checkpoint.url} stopped after "
                f"{received} of {total} bytes; nothing was written to {target}.\n"
                f"{_manual_placement(checkpoint, cache)}"
            )
        digest = hasher.hexdigest()
        if checkpoint.md5 is not None and digest != checkpoint.md5:
            raise CheckpointError(
                f"checkpoint {checkpoint.name!r}: the file downloaded from {checkpoint.url} has md5 "
                f"{digest}, expected {checkpoint.md5}; it was discarded, nothing was written to {target}.\n"
                f"{_manual_placement(checkpoint, cache)}"
            )
        os.replace(tmp, target)
        tmp = None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        looked = ", ".join(str(p) for p in looked_at)
        raise CheckpointError(
            f"checkpoint {checkpoint.name!r} ({checkpoint.filename}) is not available locally and could not "
            f"be downloaded from {checkpoint.url}: {error}. Looked in: {looked}.\n"
            f"{_manual_placement(checkpoint, cache)}"
        ) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    if checkpoint.md5 is None:
        _warn_no_published_md5(checkpoint)
        _pending_md5_records[str(target.resolve())] = digest
    stat = target.stat()
    _md5_memo[(str(target.resolve()), stat.st_size, stat.st_mtime_ns)] = digest
    return target


def resolve_checkpoint(name: Optional[str], path: Optional[PathLike] = None, download: bool = True) -> Path:
    """A local, verified file for checkpoint ``name`` (see the module docstring for the order).

    Args:
        name: registry name (``sam_vit_b``); may be None when ``path`` is given (custom models).
        path: explicit file; used as is (not hashed) and must exist.
        download: whether a checkpoint missing from the cache may be downloaded.

    Raises:
        CheckpointError: unknown name, missing explicit file, wrong md5, or not available offline.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            what = f"checkpoint {name!r}" if name else "the checkpoint"
            raise CheckpointError(
                f"{what}: the explicit checkpoint path {explicit} (absolute: {explicit.absolute()}) "
                f"does not exist or is not a file"
            )
        return explicit
    if name is None:
        raise CheckpointError("no checkpoint given: set a registry checkpoint name or an explicit checkpoint path")
    checkpoint = get_checkpoint(name)
    cache = cache_dir()
    cached = cache / checkpoint.filename
    if cached.is_file():
        _verify_cached(checkpoint, cached)
        return cached
    if not download:
        raise CheckpointError(
            f"checkpoint {checkpoint.name!r} ({checkpoint.filename}) is not in the cache ({cached}) and "
            f"downloading is disabled. Its URL is {checkpoint.url}.\n{_manual_placement(checkpoint, cache)}"
        )
    return _download(checkpoint, cache, [cached])


def confirm_loaded(path: PathLike) -> None:
    """Record the md5 of an md5-less cached checkpoint now that ``path`` has loaded into its model.

    A no-op for files with a published md5, explicit paths and files already recorded.
    """
    resolved = Path(path).resolve()
    digest = _pending_md5_records.pop(str(resolved), None)
    if digest is not None:
        _record_md5(resolved, digest)


def read_state_dict_file(path: PathLike, what: str) -> dict[str, "torch.Tensor"]:
    """Read the state dict in ``path``: ``torch.load(map_location="cpu", weights_only=True)``.

    The bare state dict and the ``{"model": state_dict}`` wrapper are both accepted. ``what``
    names the model in errors (``"SAM ViT-B"``). Raises :class:`CheckpointError` naming the file
    when it is missing, unreadable or not a mapping of names to tensors.
    """
    import torch

    where = f"{what} checkpoint {os.fspath(path)}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{where} does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a loadable file"
        raise CheckpointError(
            f"cannot read {where} as a weights-only torch file ({type(error).__name__}: {error}); "
            "expected a state dict saved with torch.save (a truncated download reads like this)"
        ) from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{where} is not a state dict (a mapping of parameter names to tensors, "
            "optionally under a top-level 'model' key)"
        )
    return dict(loaded)


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_file(
    module: "nn.Module",
    path: PathLike,
    what: str,
    read: Optional[Callable[[PathLike, str], Mapping[str, "torch.Tensor"]]] = None,
    convert: Optional[Callable[[Mapping[str, "torch.Tensor"]], Mapping[str, "torch.Tensor"]]] = None,
) -> None:
    """The one checkpoint loader: read ``path``, check every key and shape, load strictly.

    Args:
        module: the model the weights are for.
        path: the weights file (a resolved checkpoint or an explicit path).
        what: the model's name for error messages (``"RAFT large"``, ``"SAM ViT-B"``).
        read: reads the file into ``{key: tensor}``; default :func:`read_state_dict_file`
            (trackers whose official files are other formats pass their reader).
        convert: maps the file's keys/layouts onto ``module``'s (e.g. a JAX parameter tree).

    On success the md5 of a first-seen md5-less cached checkpoint is recorded
    (:func:`confirm_loaded`). Raises :class:`CheckpointError` naming ``path`` and ``what`` and
    listing a few missing, unexpected and mis-shaped keys.
    """
    state = (read or read_state_dict_file)(path, what)
    if convert is not None:
        state = convert(state)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model): {_few(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{what} checkpoint {os.fspath(path)} does not fit the architecture: " + "; ".join(problems)
        )
    module.load_state_dict(dict(state), strict=True)
    confirm_loaded(path)


def ensure_checkpoints(names: Sequence[str], download: bool = True) -> dict[str, Path]:
    """Make every checkpoint in ``names`` available before a run starts; their local paths.

    When some are missing from the cache, first prints what the run needs (name, approximate
    size, present or to download, total), then downloads them one by one. If a download fails
    (offline, server error) one :class:`CheckpointError` lists *every* checkpoint still missing
    with the commands that place it by hand, rather than failing on one file per attempt.
    """
    entries = [get_checkpoint(name) for name in dict.fromkeys(names)]
    cache = cache_dir()
    missing = [entry for entry in entries if not (cache / entry.filename).is_file()]
    if missing:
        lines = [f"sampt: this run needs {len(entries)} checkpoint(s) (cache: {cache}):"]
        for entry in entries:
            state = "to download" if entry in missing else "present"
            lines.append(f"  {entry.name:34s} {entry.size_mb:8.0f} MB  {state}")
        total = sum(entry.size_mb for entry in missing)
        lines.append(f"  downloading {len(missing)} file(s), about {total:.0f} MB in all")
        print("\n".join(lines), file=sys.stderr, flush=True)
    paths: dict[str, Path] = {}
    for entry in entries:
        try:
            paths[entry.name] = resolve_checkpoint(entry.name, download=download)
        except CheckpointError as error:
            still_missing = [e for e in missing if e.name not in paths]
            if entry not in missing or len(still_missing) <= 1:
                raise
            hints = "\n".join(f"- {e.name} ({e.filename}, about {e.size_mb:.0f} MB):\n  "
                               + _manual_placement(e, cache).splitlines()[1].strip() for e in still_missing)
            raise CheckpointError(
                f"{error}\n\nThe run needs {len(still_missing)} checkpoint(s) that are not in the cache "
                f"({cache}); place them all by hand with:\n{hints}"
            ) from error
    return paths


def _md5_ok(checkpoint: Checkpoint, path: Path) -> Optional[bool]:
    expected, _ = _expected_md5(checkpoint, path)
    return None if expected is None else file_md5(path) == expected


def list_checkpoints(verify: bool = False) -> list[dict]:
    """One dict per registry entry, sorted by component then name.

    Keys: ``name``, ``component``, ``filename``, ``present`` (in the cache), ``path`` (where it is
    or would be, str), ``md5_ok`` (bool when ``verify`` and the file is present and an expected
    md5 is known, else None).
    """
    cache = cache_dir()
    rows = []
    for checkpoint in sorted(CHECKPOINTS.values(), key=lambda c: (c.component, c.name)):
        path = cache / checkpoint.filename
        present = path.is_file()
        rows.append(
            {
                "name": checkpoint.name,
                "component": checkpoint.component,
                "filename": checkpoint.filename,
                "present": present,
                "path": str(path),
                "md5_ok": _md5_ok(checkpoint, path) if verify and present else None,
            }
        )
    return rows


def _format_table(rows: list[dict], verify: bool) -> str:
    headers = ["NAME", "COMPONENT", "PRESENT"] + (["MD5"] if verify else []) + ["SIZE", "PATH"]
    lines = []
    for row in rows:
        md5 = {True: "ok", False: "WRONG", None: "-"}[row["md5_ok"]]
        cells = [row["name"], row["component"], "yes" if row["present"] else "no"]
        size = f"{CHECKPOINTS[row['name']].size_mb:.0f}MB" if row["name"] in CHECKPOINTS else "?"
        lines.append(cells + ([md5] if verify else []) + [size, row["path"]])
    widths = [max(len(line[i]) for line in [headers] + lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [headers] + lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sampt checkpoints``: list the registry and the cache, verify, or download by name.

    Returns the process exit code (0 on success, 1 when a download or verification failed).
    """
    parser = argparse.ArgumentParser(
        prog="sampt checkpoints",
        description=f"List, verify and download the named checkpoints (cache: $SAMPT_CACHE, now {cache_dir()}).",
    )
    parser.add_argument("--download", nargs="+", metavar="NAME", choices=sorted(CHECKPOINTS),
                        help="download these checkpoints into the cache (already cached, verified files are kept)")
    parser.add_argument("--verify", action="store_true", help="hash the files present in the cache")
    parser.add_argument("--component", choices=["sam", "tracker"], help="list only this component's checkpoints")
    args = parser.parse_args(argv)

    failed = False
    for name in args.download or []:
        try:
            print(f"{name}: {resolve_checkpoint(name)}")
        except CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    if args.download and not args.verify:
        return 1 if failed else 0

    rows = list_checkpoints(verify=args.verify)
    if args.component:
        rows = [row for row in rows if row["component"] == args.component]
    print(_format_table(rows, args.verify))
    wrong = [row for row in rows if args.verify and row["md5_ok"] is False]
    if wrong:
        lines = ["error: some cached checkpoints do not match their md5 (MD5 = WRONG). To reset one, delete it "
                 "and download it again:"]
        for row in wrong:
            path = Path(row["path"])
            checkpoint = CHECKPOINTS[row["name"]]
            # Without a published md5 the expectation is the record of the first copy that loaded.
            record = "" if checkpoint.md5 is not None else f" {shlex.quote(str(md5_record_path(path)))}"
            lines.append(f"  rm {shlex.quote(str(path))}{record} && sampt checkpoints --download {row['name']}")
        print("\n".join(lines), file=sys.stderr)
        failed = True
    return 1 if failed else 0
