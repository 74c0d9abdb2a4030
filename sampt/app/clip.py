"""Clips for ``sampt app``: reading a frames folder or a video file, and taking uploads safely.

Uploads are a zip of frames or one video file. Each is checked before anything is written: the
file name (no folders, no ``..``), the type (by name ending and content), the size (at most
``Limits.max_upload_mib``, counted while it streams in; a zip's members also after unpacking)
and, for a zip, every member name (a member under a folder is flattened to its file name; a name
with ``..``, an absolute path or a drive letter is refused). Files are written only under the
session's own folder, atomically (``sampt.io.atomic``).
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, Optional

from sampt.errors import InputFormatError, SamptError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v")


class ClipError(SamptError):
    """A clip or an upload the app cannot open (the message says why)."""


class UploadTooLarge(ClipError):
    """An upload over ``Limits.max_upload_mib``."""


@dataclass(frozen=True)
class Limits:
    """What the app accepts.

    Attributes:
        max_upload_mib: largest upload (a zip counts unpacked too).
        max_frames: most frames per clip.
        max_side: frames whose longer side is longer are scaled down to it.
    """

    max_upload_mib: float = 200.0
    max_frames: int = 300
    max_side: int = 1280

    def describe(self) -> str:
        return (f"a zip of frames ({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)}); "
                f"at most {self.max_upload_mib:g} MiB, {self.max_frames} frames; frames longer than "
                f"{self.max_side} px are scaled down")


@dataclass
class Clip:
    """A clip in memory: ``frames (T, 3, H, W) uint8``, frame names, a name and where it came from."""

    frames: "object"  # torch.Tensor (torch is imported only when a clip is read)
    frame_names: list
    name: str
    source: str
    digest: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[3])


def frames_digest(frames) -> str:
    """sha256 of the frames' pixels and shape: identifies a clip in saved sessions."""
    digest = hashlib.sha256(str(tuple(frames.shape)).encode())
    digest.update(frames.contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_clip(path: str | Path, limits: Limits, name: Optional[str] = None) -> Clip:
    """Read a frames folder or a video file (scaled down beyond ``limits.max_side``)."""
    import torch

    from sampt.datamodules.io import longest_side_shape, read_rgb, resize_rgb

    path = Path(path)
    if not path.exists():
        raise ClipError(f"clip {path} does not exist (expected a folder of frames or a video file)")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and not p.name.startswith(".")), key=lambda p: (_natural_key(p.name), p.name))
        if not files:
            raise ClipError(f"folder {path} holds no frame ({', '.join(IMAGE_SUFFIXES)})")
        if len(files) > limits.max_frames:
            raise ClipError(f"{path} has {len(files)} frames; the app opens at most {limits.max_frames} "
                            "(--max-frames)")
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            raise ClipError(f"{path} holds several frames with one name and different endings")
        first = read_rgb(files[0], ClipError)
        height, width = int(first.shape[1]), int(first.shape[2])
        longest = limits.max_side if max(height, width) > limits.max_side else None
        size = longest_side_shape(height, width, longest)
        frames = torch.empty((len(files), 3) + size, dtype=torch.uint8)
        for t, file in enumerate(files):
            frame = first if t == 0 else read_rgb(file, ClipError)
            if tuple(frame.shape[1:]) != (height, width):
                raise ClipError(f"frame {file.name} is {frame.shape[2]}x{frame.shape[1]} but {files[0].name} is "
                                f"{width}x{height}: all frames of a clip must have one size")
            frames[t] = resize_rgb(frame, size)
        return Clip(frames, stems, name or path.name, str(path), frames_digest(frames))
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ClipError(f"{path.name} is neither a folder of frames nor a video ({', '.join(VIDEO_SUFFIXES)})")
    from sampt.datamodules.generic import count_video_frames, read_video_file

    try:
        count = count_video_frames(path)
        if count > limits.max_frames:
            raise ClipError(f"{path.name} has {count} frames; the app opens at most {limits.max_frames} "
                            "(--max-frames)")
        frames, indices, (height, width) = read_video_file(path, None, 1, limits.max_frames)
    except InputFormatError as error:
        raise ClipError(f"cannot read the video {path.name}: {error}") from error
    if max(height, width) > limits.max_side:
        from sampt.datamodules.io import resize_frames_longest_side

        frames = resize_frames_longest_side(frames, limits.max_side)
    return Clip(frames, [f"{i:05d}" for i in indices], name or path.stem, str(path), frames_digest(frames))


def _natural_key(name: str) -> list:
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part]


def check_upload_name(filename: Optional[str]) -> str:
    """The upload's file name, refused when it holds a folder, ``..`` or an unknown type."""
    if not filename:
        raise ClipError("the upload has no file name")
    if "/" in filename or "\\" in filename or filename in (".", "..") or ".." in filename or "\x00" in filename:
        raise ClipError(f"refused upload name {filename!r}: a file name may not contain folders or '..'")
    suffix = Path(filename).suffix.lower()
    if suffix != ".zip" and suffix not in VIDEO_SUFFIXES:
        raise ClipError(f"{filename!r} is not a clip: upload a .zip of frames or a video "
                        f"({', '.join(VIDEO_SUFFIXES)})")
    return filename


def read_limited(stream: BinaryIO, limits: Limits) -> bytes:
    """The stream's bytes, refused as soon as they exceed ``limits.max_upload_mib``."""
    cap = int(limits.max_upload_mib * 2 ** 20)
    chunks, total = [], 0
    while True:
        chunk = stream.read(2 ** 20)
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            raise UploadTooLarge(f"the upload is larger than {limits.max_upload_mib:g} MiB (the app's limit, "
                                 "--max-upload-mib)")
        chunks.append(chunk)
    return b"".join(chunks)


def _member_name(name: str) -> Optional[str]:
    """A zip member's file name, flattened; None for folders and hidden / metadata files."""
    if name.endswith("/"):
        return None
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise ClipError(f"refused zip member {name!r}: member names may not climb out of the zip ('..', absolute "
                        "paths, drive letters)")
    base = windows.name
    if not base or base.startswith(".") or "__MACOSX" in posix.parts:
        return None
    return base


def save_upload(filename: str, data: bytes, folder: Path, limits: Limits) -> Path:
    """Check an upload and write it under ``folder`` (created; must not exist yet). Returns the
    clip path to read: ``folder`` (frames from a zip) or ``folder/<video file>``."""
    from sampt.io.atomic import write_bytes_atomic

    filename = check_upload_name(filename)
    suffix = Path(filename).suffix.lower()
    folder.mkdir(parents=True, exist_ok=False)
    if suffix in VIDEO_SUFFIXES:
        if len(data) < 16:
            raise ClipError(f"{filename!r} is empty or truncated; not a video")
        target = folder / f"video{suffix}"
        write_bytes_atomic(target, data)
        return target
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise ClipError(f"{filename!r} is not a valid zip file ({error})") from error
    cap = int(limits.max_upload_mib * 2 ** 20)
    members, names, total = [], set(), 0
    with archive:
        for info in archive.infolist():
            base = _member_name(info.filename)
            if base is None:
                continue
            if Path(base).suffix.lower() not in IMAGE_SUFFIXES:
                raise ClipError(f"zip member {info.filename!r} is not a frame: a frames zip holds only images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            if base in names:
                raise ClipError(f"the zip holds two frames named {base!r} (in different folders)")
            names.add(base)
            total += info.file_size
            if total > cap:
                raise UploadTooLarge(f"the zip unpacks to more than {limits.max_upload_mib:g} MiB (the app's limit)")
            members.append((info, base))
        if not members:
            raise ClipError(f"{filename!r} holds no frame ({', '.join(IMAGE_SUFFIXES)})")
        if len(members) > limits.max_frames:
            raise ClipError(f"{filename!r} holds {len(members)} frames; the app opens at most {limits.max_frames}")
        for info, base in members:
            with archive.open(info) as source:
                content = source.read(cap + 1)
            if len(content) > cap:
                raise UploadTooLarge(f"zip member {info.filename!r} is larger than {limits.max_upload_mib:g} MiB")
            target = folder / base
            if os.path.commonpath([target.resolve(), folder.resolve()]) != str(folder.resolve()):
                raise ClipError(f"refused zip member {info.filename!r}")  # belt and braces
            write_bytes_atomic(target, content)
    return folder
