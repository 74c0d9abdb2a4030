"""Fingerprints: what determines a result, so that a result is reused only when all of it is equal.

A video's predictions depend on the method's resolved configuration (SAM variant and options,
tracker class and constructor arguments, SAM-PT's options and seed), the weights (md5 of every
checkpoint file), the input (frame names, input and output sizes, the objects' query frames and
masks or points) and the sampt version. :func:`fingerprint` hashes such a description; the
description itself is stored beside the result so that a mismatch can say *what* changed
(:func:`changed_keys`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from enum import Enum
from typing import Any, Mapping

# Paths to weights do not determine a result: the md5 of the file they name does.
_IGNORED_KEYS = ("checkpoint_path",)


def sampt_version() -> str:
    """The installed sampt version (``unknown`` when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sampt")
    except PackageNotFoundError:
        return "unknown"


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses and mappings as dicts (sorted keys), sequences
    as lists, arrays and tensors as ``{"shape", "md5"}`` of their bytes, paths as strings;
    keys naming weight files (``*checkpoint_path``) are dropped."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                if not str(k).endswith(_IGNORED_KEYS)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy array or torch tensor
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        import numpy as np

        array = np.ascontiguousarray(array)
        return {"shape": list(array.shape), "dtype": str(array.dtype), "md5": hashlib.md5(array.tobytes()).hexdigest()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def fingerprint(description: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``description``."""
    text = json.dumps(canonical(description), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two canonical descriptions (sorted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        changed: list[str] = []
        for key in keys:
            path = f"{prefix}.{key}" if prefix else key
            if key not in old or key not in new:
                changed.append(path)
            else:
                changed.extend(changed_keys(old[key], new[key], path))
        return changed
    return [] if old == new else [prefix or "(everything)"]
