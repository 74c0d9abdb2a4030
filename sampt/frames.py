"""Frames of one video, read on demand: the ``FrameSource`` every method and tracker reads.

A source holds ``T`` frames ``(3, H, W) uint8`` RGB at the *input* resolution and hands out any
range of them as a ``(n, 3, H, W)`` tensor, so that memory depends on how many frames a stage
looks at once, not on the length of the video. Indexing reads like a tensor's: ``frames[t]``,
``frames[a:b]``, ``frames[[t1, t2]]`` and ``frames.shape`` work on every source.

Kinds:

* :class:`TensorFrames` - frames already in memory (short clips, tests, benchmarks); reading is
  a view, so the in-memory path costs nothing extra.
* :class:`ImageFilesFrames` - a folder of images, each decoded and resized when read (the last
  ``chunk_frames`` frames are kept, so neighbouring stages do not decode twice).
* :class:`VideoFileFrames` - a video file (PyAV). By default it is decoded once, at the first
  read, into a raw ``uint8`` disk cache that later reads ``pread`` from (no memory map: mapped
  pages would count towards the process's resident memory). When the cache cannot be written
  (no space, read-only folder) it falls back to decoding on demand, with a warning: seeking
  to the keyframe before each missing chunk and decoding ``chunk_frames`` frames forward (or
  backward-looking chunks when the reader walks backwards, as backward tracking does).

A video that stops decoding partway (a truncated file) raises ``InputFormatError`` naming the
file and the last frame that decoded; nothing already written is touched.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from sampt.errors import InputFormatError, SamptError

log = logging.getLogger(__name__)

#: Frames a source keeps decoded between reads (image folders, on-demand video decoding).
DEFAULT_CHUNK_FRAMES = 32

#: Bumped whenever the layout of the decoded-frames cache changes (old entries are not reused).
CACHE_FORMAT = 1

Index = Union[int, slice, Sequence[int], torch.Tensor]


class FrameSource(ABC):
    """``T`` frames of ``size = (H, W)``, read on demand (see the module docstring).

    Subclasses implement :meth:`_read` for a valid, non-empty ``[start, stop)``.
    """

    #: True when every frame is already in memory (reading whole costs nothing).
    in_memory: bool = False
    dtype = torch.uint8
    ndim = 4

    def __init__(self, num_frames: int, size: tuple[int, int]):
        self.num_frames = int(num_frames)
        self.size = (int(size[0]), int(size[1]))

    # -- tensor-like access ----------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.num_frames, 3) + self.size)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def frame_bytes(self) -> int:
        return 3 * self.size[0] * self.size[1]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, 3, H, W) uint8`` frames ``start .. stop - 1``."""
        if not 0 <= start <= stop <= self.num_frames:
            raise IndexError(f"frames [{start}, {stop}) outside the {self.num_frames} frames of {self.describe()}")
        if start == stop:
            return torch.empty((0, 3) + self.size, dtype=torch.uint8)
        return self._read(int(start), int(stop))

    @abstractmethod
    def _read(self, start: int, stop: int) -> torch.Tensor:
        """Frames ``[start, stop)`` (valid and non-empty) as ``(n, 3, H, W) uint8``."""

    def __getitem__(self, index: Index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            t = int(index)
            t = t + self.num_frames if t < 0 else t
            if not 0 <= t < self.num_frames:
                raise IndexError(f"frame {int(index)} outside the {self.num_frames} frames of {self.describe()}")
            return self.read(t, t + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.num_frames)
            if step == 1:
                return self.read(start, max(start, stop))
            return self.gather(range(start, stop, step))
        return self.gather([int(i) for i in index])

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        """``(len(indices), 3, H, W)`` frames in the given order (runs of consecutive indices are
        read together)."""
        indices = [int(i) + self.num_frames if int(i) < 0 else int(i) for i in indices]
        if not indices:
            return torch.empty((0, 3) + self.size, dtype=torch.uint8)
        out = torch.empty((len(indices), 3) + self.size, dtype=torch.uint8)
        run_start = 0
        for k in range(1, len(indices) + 1):
            if k == len(indices) or indices[k] != indices[k - 1] + 1:
                first = indices[run_start]
                out[run_start:k] = self.read(first, first + k - run_start)
                run_start = k
        return out

    def to_tensor(self) -> torch.Tensor:
        """Every frame as one ``(T, 3, H, W)`` tensor (for methods that need the whole video),
        filled chunk by chunk so the video is never held twice."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        for start, frames in self.chunks(DEFAULT_CHUNK_FRAMES):
            out[start:start + len(frames)] = frames
        return out

    def chunks(self, length: int, reverse: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, frames)`` for consecutive ranges of at most ``length`` frames, in video
        order (or from the end when ``reverse``; each chunk's frames stay in video order)."""
        starts = list(range(0, self.num_frames, max(1, int(length))))
        for start in reversed(starts) if reverse else starts:
            yield start, self.read(start, min(start + length, self.num_frames))

    # -- description -----------------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where the frames come from, for logs and errors."""

    def plan(self) -> dict:
        """What reading this source costs: its kind, memory held and disk used (for the plan log)."""
        return {"kind": type(self).__name__, "frames": self.num_frames, "size": list(self.size),
                "memory_bytes": self.num_frames * self.frame_bytes if self.in_memory else 0}

    def prepare(self) -> None:
        """Do the one-off work before the first read (a video file's decoding into its cache)."""

    def close(self) -> None:
        """Release open files (a later read reopens them)."""


class TensorFrames(FrameSource):
    """Frames held in memory: ``frames (T, 3, H, W) uint8`` (on any device)."""

    in_memory = True

    def __init__(self, frames: torch.Tensor, description: str = "frames in memory"):
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must be a (T, 3, H, W) uint8 tensor, got {shape}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        super().__init__(frames.shape[0], tuple(frames.shape[-2:]))
        self.tensor = frames
        self.description = description

    def _read(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]

    def gather(self, indices: Sequence[int]) -> torch.Tensor:
        return self.tensor[list(indices)]

    def to_tensor(self) -> torch.Tensor:
        return self.tensor

    def describe(self) -> str:
        return f"{self.description} ({self.num_frames} frames {self.size[1]}x{self.size[0]})"


def as_frame_source(frames: Union[FrameSource, torch.Tensor]) -> FrameSource:
    """``frames`` as a source: a tensor is wrapped (no copy), a source returned as is."""
    return frames if isinstance(frames, FrameSource) else TensorFrames(frames)


class _FrameBuffer:
    """The last ``capacity`` frames decoded, by index (least recently used dropped first)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.frames: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, t: int) -> Optional[torch.Tensor]:
        frame = self.frames.get(t)
        if frame is not None:
            self.frames.move_to_end(t)
        return frame

    def put(self, t: int, frame: torch.Tensor) -> None:
        self.frames[t] = frame
        self.frames.move_to_end(t)
        while len(self.frames) > self.capacity:
            self.frames.popitem(last=False)

    def clear(self) -> None:
        self.frames.clear()


class ImageFilesFrames(FrameSource):
    """Frames from image files, decoded and resized to ``size`` when read.

    Args:
        paths: one image file per frame, in order.
        size: ``(H, W)`` input size (frames are resized as the data modules resize them).
        original_size: ``(H, W)`` every file must have.
        error: the ``SamptError`` class unreadable or mis-sized files raise (naming the file).
        chunk_frames: frames kept decoded between reads.
    """

    def __init__(self, paths: Sequence[Union[str, os.PathLike]], size: tuple[int, int],
                 original_size: tuple[int, int], error: type[SamptError] = InputFormatError,
                 chunk_frames: int = DEFAULT_CHUNK_FRAMES):
        super().__init__(len(paths), size)
        self.paths = [Path(p) for p in paths]
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.error = error
        self.chunk_frames = int(chunk_frames)
        self._buffer = _FrameBuffer(self.chunk_frames)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_buffer"] = _FrameBuffer(self.chunk_frames)  # DataLoader workers: no decoded frames
        return state

    def _frame(self, t: int) -> torch.Tensor:
        frame = self._buffer.get(t)
        if frame is None:
            from sampt.datamodules.io import read_rgb, resize_rgb

            path = self.paths[t]
            decoded = read_rgb(path, self.error)
            if tuple(decoded.shape[-2:]) != self.original_size:
                raise self.error(f"frame {path} is {tuple(decoded.shape[-2:])} (H, W) but {self.paths[0]} is "
                                 f"{self.original_size}: all frames of a video must have one size")
            frame = resize_rgb(decoded, self.size)
            self._buffer.put(t, frame)
        return frame

    def _read(self, start: int, stop: int) -> torch.Tensor:
        return torch.stack([self._frame(t) for t in range(start, stop)])

    def describe(self) -> str:
        folder = self.paths[0].parent if self.paths else "?"
        return f"{self.num_frames} image files in {folder}"

    def plan(self) -> dict:
        return {**super().plan(), "memory_bytes": self.chunk_frames * self.frame_bytes, "decoding": "per frame"}


def frame_cache_root() -> Path:
    """Where decoded videos are cached by default: ``<sampt cache>/frames`` (``$SAMPT_CACHE``)."""
    from sampt.checkpoints import cache_dir

    return cache_dir() / "frames"


class VideoFileFrames(FrameSource):
    """Frames of a video file (anything PyAV / FFmpeg decodes), resized to the input size.

    Args:
        path: the video file.
        longest_size: the input frames' longest side (None keeps the original size).
        frame_stride: keep every ``frame_stride``-th frame of the file.
        max_frames: keep at most this many frames (after the stride).
        cache_dir: folder of the decoded-frames cache (None: :func:`frame_cache_root`).
        use_cache: decode once into the cache (False: always decode on demand).
        chunk_frames: frames decoded per seek when decoding on demand (and kept between reads).

    Frame ``t`` of the source is frame ``source_indices[t]`` of the file; the file is opened
    (once, cheaply: headers and a demux pass, no decoding) when the source is made. ``fps`` is
    the source's frame rate (the file's over ``frame_stride``), None when the file gives none.
    """

    def __init__(self, path: Union[str, os.PathLike], longest_size: Optional[int] = None, frame_stride: int = 1,
                 max_frames: Optional[int] = None, cache_dir: Optional[Union[str, os.PathLike]] = None,
                 use_cache: bool = True, chunk_frames: int = DEFAULT_CHUNK_FRAMES):
        from sampt.datamodules.io import longest_side_shape

        self.path = Path(path)
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        container = open_video(self.path)
        try:
            stream = container.streams.video[0]
            listed = int(stream.frames or 0)
            pts = sorted(p.pts for p in container.demux(stream) if p.size > 0 and p.pts is not None)
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            rate = stream.average_rate or stream.base_rate
        except InputFormatError:
            raise
        except Exception as exc:  # FFmpeg demux errors come in many classes
            raise InputFormatError(f"cannot read video {self.path}: {exc}") from exc
        finally:
            container.close()
        if not pts or height <= 0 or width <= 0:
            raise InputFormatError(f"video {self.path} has no decodable frame")
        # The container's own count wins when it lists more frames than there are packets: the
        # missing ones are what a truncated file lost, and decoding will say where it stops.
        self.num_source_frames = max(listed, len(pts))
        self.frame_pts = pts
        indices = list(range(0, self.num_source_frames, frame_stride))
        if max_frames is not None:
            indices = indices[:max_frames]
        self.source_indices = indices
        self.original_size = (height, width)
        super().__init__(len(indices), longest_side_shape(height, width, longest_size))
        self.longest_size = longest_size
        self.frame_stride = int(frame_stride)
        #: frames per second of this source (the file's average rate over the stride); None: unknown
        self.fps: Optional[float] = float(rate) / self.frame_stride if rate else None
        self.max_frames = max_frames
        self.use_cache = bool(use_cache)
        self.cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.chunk_frames = int(chunk_frames)
        self._cache_file: Optional[Path] = None  # set once the cache is complete
        self._cache_failed = False
        self._reused_cache = False
        self._buffer = _FrameBuffer(self.chunk_frames)
        self._container = None
        self._last_miss: Optional[int] = None
        self._forward: Optional[Iterator[tuple[int, torch.Tensor]]] = None
        self._forward_next = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_container"] = state["_forward"] = None
        state["_buffer"] = _FrameBuffer(self.chunk_frames)
        return state

    # -- the cache -------------------------------------------------------------------------------
    @functools.cached_property
    def cache_key(self) -> dict:
        """Everything the cached bytes depend on (a changed file or option means a new entry);
        the file is stat-ed once, when the cache is first looked at."""
        stat = self.path.stat()
        return {"format": CACHE_FORMAT, "path": str(self.path.resolve()), "file_bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "size": list(self.size), "frame_stride": self.frame_stride,
                "max_frames": self.max_frames, "frames": self.num_frames}

    @functools.cached_property
    def cache_folder(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.cache_key, sort_keys=True).encode()).hexdigest()[:16]
        root = self.cache_root if self.cache_root is not None else frame_cache_root()
        return root / f"{self.path.stem}-{digest}"

    @property
    def cached(self) -> bool:
        return self._cache_file is not None

    def cache_complete(self) -> bool:
        """Whether the cache folder holds this video's frames, decoded by an earlier run with the
        same file and options (its key matches and the data file has every frame's bytes)."""
        folder = self.cache_folder
        with contextlib.suppress(OSError, ValueError):
            return json.loads((folder / "meta.json").read_text(encoding="utf-8")) == self.cache_key and \
                (folder / "frames.u8").stat().st_size == self.num_frames * self.frame_bytes
        return False

    def prepare(self) -> None:
        """Decode the video into the cache once (reused by later runs when the file and options
        are unchanged); on a cache that cannot be written, warn and decode on demand."""
        if not self.use_cache or self._cache_file is not None or self._cache_failed:
            return
        folder = self.cache_folder
        data, meta = folder / "frames.u8", folder / "meta.json"
        if self.cache_complete():
            self._cache_file, self._reused_cache = data, True
            log.info("%s: reusing the decoded frames in %s", self.path, folder)
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".frames.u8.{os.getpid()}.part"
            try:
                with open(partial, "wb") as handle:
                    for _, frame in self._decode_range(0, self.num_frames, progress="decoding"):
                        handle.write(frame.numpy().tobytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(partial, data)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
            from sampt.io.atomic import write_text_atomic

            write_text_atomic(meta, json.dumps(self.cache_key, sort_keys=True))
        except OSError as exc:
            self._cache_failed = True
            log.warning("cannot write the decoded-frames cache %s (%s); decoding %s on demand instead "
                        "(slower: each chunk seeks to a keyframe)", folder, exc.strerror or exc, self.path)
            return
        self._cache_file = data

    # -- decoding --------------------------------------------------------------------------------
    def _open(self):
        if self._container is None:
            self._container = open_video(self.path)
            self._container.streams.video[0].thread_type = "AUTO"
        return self._container

    def close(self) -> None:
        self._forward = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def _decode_range(self, start: int, stop: int, progress: Optional[str] = None
                      ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(t, frame)`` for source frames ``start .. stop - 1``, resized, decoding forward from
        the keyframe before ``start``."""
        from sampt.datamodules.io import resize_rgb

        wanted = {self.source_indices[t]: t for t in range(start, stop)}
        first, last = self.source_indices[start], self.source_indices[stop - 1]
        container = self._open()
        stream = container.streams.video[0]
        bar = None
        if progress is not None and stop - start >= 100:
            from tqdm import tqdm

            bar = tqdm(total=stop - start, desc=f"{progress} {self.path.name}", unit="frame", leave=False)
        try:
            if first > 0 and first < len(self.frame_pts):
                container.seek(self.frame_pts[first], stream=stream, backward=True)
            else:
                container.seek(self.frame_pts[0], stream=stream, backward=True)
            index = None
            for decoded in container.decode(stream):
                index = bisect.bisect_left(self.frame_pts, decoded.pts) if decoded.pts is not None else \
                    (0 if index is None else index + 1)
                if index > last:
                    break
                if index not in wanted:
                    continue
                rgb = torch.from_numpy(decoded.to_ndarray(format="rgb24")).permute(2, 0, 1)
                if tuple(rgb.shape[1:]) != self.original_size:
                    raise InputFormatError(f"{self.path}: frame {index} is {tuple(rgb.shape[1:])} (H, W), frame 0 "
                                           f"is {self.original_size}; variable frame sizes are not supported")
                yield wanted.pop(index), resize_rgb(rgb, self.size)
                if bar is not None:
                    bar.update(1)
                if not wanted:
                    return
        except InputFormatError:
            self.close()
            raise
        except Exception as exc:  # FFmpeg decode errors come in many classes
            self.close()
            raise self._truncated(min(wanted), exc) from exc
        finally:
            if bar is not None:
                bar.close()
        if wanted:
            self.close()
            raise self._truncated(min(wanted), None)

    def _truncated(self, missing_source_frame: int, exc: Optional[Exception]) -> InputFormatError:
        last_good = missing_source_frame - 1
        reason = f" ({exc})" if exc is not None else ""
        return InputFormatError(
            f"cannot decode video {self.path} past frame {last_good} (frame {missing_source_frame} of the "
            f"{self.num_source_frames} the container lists does not decode{reason}); the file looks truncated "
            f"or corrupt. The last good frame is {last_good}; re-encode or cut the video there "
            f"(e.g. max_frames).")

    def _read(self, start: int, stop: int) -> torch.Tensor:
        if self.use_cache and not self._cache_failed and self._cache_file is None:
            self.prepare()
        if self._cache_file is not None:
            count = stop - start
            with open(self._cache_file, "rb") as handle:
                handle.seek(start * self.frame_bytes)
                buffer = bytearray(count * self.frame_bytes)
                if handle.readinto(buffer) != len(buffer):
                    raise InputFormatError(f"decoded-frames cache {self._cache_file} is shorter than expected; "
                                           f"delete {self._cache_file.parent} to decode {self.path} again")
            return torch.frombuffer(buffer, dtype=torch.uint8).reshape((count, 3) + self.size)
        return torch.stack([self._decoded_frame(t) for t in range(start, stop)])

    def _decoded_frame(self, t: int) -> torch.Tensor:
        frame = self._buffer.get(t)
        if frame is not None:
            return frame
        backwards = self._last_miss is not None and t < self._last_miss
        self._last_miss = t
        if backwards:
            # A reader walking backwards (backward tracking) gets the chunk that ends at t.
            self._forward = None  # the seek below moves the decoder under it
            for index, decoded in self._decode_range(max(0, t - self.chunk_frames + 1), t + 1):
                self._buffer.put(index, decoded)
            return self._buffer.get(t)
        # Forward readers share one decoder that keeps going (no seek per chunk), unless t is
        # far ahead of it.
        if self._forward is None or not self._forward_next <= t < self._forward_next + self.chunk_frames:
            self._forward, self._forward_next = self._decode_range(t, self.num_frames), t
        for index, decoded in self._forward:
            self._buffer.put(index, decoded)
            self._forward_next = index + 1
            if index >= t:
                break
        return self._buffer.get(t)

    def describe(self) -> str:
        return f"video {self.path} ({self.num_frames} frames at {self.size[1]}x{self.size[0]})"

    def plan(self) -> dict:
        plan = {**super().plan(), "file": str(self.path)}
        if self.use_cache and not self._cache_failed:
            # Asked before prepare(): whether prepare() will find the frames already decoded.
            reused = self._reused_cache if self.cached else self.cache_complete()
            plan.update(cache=str(self.cache_folder), cache_disk_bytes=self.num_frames * self.frame_bytes,
                        cache_reused=reused, memory_bytes=0,
                        decoding="reused from the cache" if reused else "once, into the cache")
        else:
            plan.update(cache=None, memory_bytes=self.chunk_frames * self.frame_bytes,
                        decoding=f"on demand, {self.chunk_frames} frames per seek")
        return plan


def open_video(path: Path):
    """``av.open(path)`` with an ``InputFormatError`` naming the file when it is not a video."""
    import av  # heavy import; only for video files

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputFormatError(f"cannot open {path} as a video ({exc}); expected a folder of frames or a "
                               f"video file that FFmpeg decodes (mp4, mov, avi, webm, ...)") from exc
    if not container.streams.video:
        container.close()
        raise InputFormatError(f"{path} has no video stream")
    return container
