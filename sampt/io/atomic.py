"""Atomic file writing: bytes go to a temporary file next to the destination, which then
replaces the destination with ``os.replace``; a crash or a killed job never leaves a truncated
file under the final name. Standard library only."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    The parent folder is created if needed. On an exception the temporary file is removed and
    ``path`` is left as it was.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the destination: os.replace is only atomic within one file system.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, exactly as given (UTF-8, no newline translation)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def remove_stray_temporaries(folder: PathLike, older_than: float | None = None, recursive: bool = True) -> list[Path]:
    """Delete the temporaries that interrupted writes left under ``folder``; returns them.

    Only files named like :func:`atomic_open`'s temporaries (``.<name>.<random>.tmp``) and last
    modified before ``older_than`` (default: now) are removed, so a temporary that another
    process of the same run is writing right now is left alone.
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    cutoff = time.time() if older_than is None else older_than
    removed = []
    for path in (folder.rglob if recursive else folder.glob)(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
    return removed
