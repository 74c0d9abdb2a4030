"""Your own clip (``Generic``): a folder of frames or a video file, with query masks or points.

Inputs:

* ``frames``: a folder of images (``.jpg .jpeg .png .bmp .tif .tiff .webp``, natural sort so
  that ``10.png`` comes after ``2.png``) or a video file (anything PyAV / FFmpeg decodes: mp4,
  mov, avi, webm, ...). ``frame_stride`` keeps every n-th frame, then ``max_frames`` the first
  frames. A clip is read when the item is loaded: into one ``uint8`` tensor when its input
  frames fit in ``stream_frames_above_mib``, else as a streaming ``sampt.frames`` source (see
  ``sampt.frames``: memory then does not grow with the clip's length). Frames of a video are
  named by their index in the file: ``00000``, ``00001``, ...
* exactly one of
  - ``query_masks``: a folder of index PNGs named like the frames (``<frame name>.png``; palette
    PNGs with object ids, or 0/255 grayscale for one object). Objects are defined where they
    first appear; ids are kept.
  - ``query_points``: a file in SAM-PT's query-points format (``parse_query_points_file``).
    Objects get ids 1..M in file order; their points (given in pixels of the original frames)
    are scaled to the resized input frames. The pipeline makes the query mask with SAM.

Predictions are made at the original frame size (``output_size``).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.video import ObjectQuery, VideoItem, davis_palette

from .base import VideoDataModule, VideoDataset
from sampt.frames import FrameSource, ImageFilesFrames, TensorFrames, VideoFileFrames

from .io import image_size, longest_side_shape
from .ytvos import (SparseAnnotations, check_positive_options, first_appearance_queries, read_frames_resized,
                    read_sparse_annotations)

logger = logging.getLogger(__name__)

#: File name endings read as frames from a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

QUERY_POINTS_FORMAT = """\
expected SAM-PT's query-points format:
  <number of positive points per object>
  <frame index> ; <x1>,<y1> <x2>,<y2> ...     (one line per object: the first n points are
  <frame index> ; <x1>,<y1> ...                positive, the rest negative; pixel coordinates
                                               of the original frames; frame index in the
                                               original frame numbering, before frame_stride)"""


# ------------------------------------------------------------------------------------------------
# Query-points files

@dataclass(frozen=True)
class QueryPointsLine:
    """One object of a query-points file: its frame, ``(N, 2) float32`` (x, y) points, line number."""

    frame: int
    points: np.ndarray
    line_number: int


_INT = re.compile(r"^[+]?\d+$")


def _parse_float(text: str) -> float:
    value = float(text)  # ValueError on junk
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def read_query_points_lines(path: str | Path) -> tuple[int, list[QueryPointsLine]]:
    """Parse a query-points file, keeping each object's line number (see ``parse_query_points_file``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"query-points file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputFormatError(f"cannot read query-points file {path}: {exc}\n{QUERY_POINTS_FORMAT}") from exc

    def fail(line_number: int, what: str) -> InputFormatError:
        return InputFormatError(f"{path}, line {line_number}: {what}\n{QUERY_POINTS_FORMAT}")

    num_positive: Optional[int] = None
    objects: list[QueryPointsLine] = []
    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if num_positive is None:
            if not _INT.match(line) or int(line) < 1:
                raise fail(line_number, f"the first line must be the number of positive points (an integer >= 1), "
                                        f"got {line!r}")
            num_positive = int(line)
            continue
        parts = line.split(";")
        if len(parts) != 2:
            raise fail(line_number, f"expected '<frame index> ; <x>,<y> ...' with exactly one ';', got {line!r}")
        frame_text, points_text = parts[0].strip(), parts[1].strip()
        if not _INT.match(frame_text):
            raise fail(line_number, f"the frame index must be a non-negative integer, got {frame_text!r}")
        # Tolerate spaces around the commas ("12 , 34"): they would otherwise split a point in two.
        tokens = re.sub(r"\s*,\s*", ",", points_text).split()
        if not tokens:
            raise fail(line_number, "no points after ';'")
        points = []
        for token in tokens:
            coordinates = token.split(",")
            if len(coordinates) != 2:
                raise fail(line_number, f"a point must be '<x>,<y>', got {token!r}")
            try:
                points.append((_parse_float(coordinates[0]), _parse_float(coordinates[1])))
            except ValueError:
                raise fail(line_number, f"a point must be two numbers '<x>,<y>', got {token!r}") from None
        if len(points) < num_positive:
            raise fail(line_number, f"{len(points)} points but the file says the first {num_positive} of each object "
                                    f"are positive")
        if objects and len(points) != len(objects[0].points):
            # Objects are tracked together as one (M, P) array of points, as in SAM-PT.
            raise fail(line_number, f"{len(points)} points but the object on line {objects[0].line_number} has "
                                    f"{len(objects[0].points)}: every object needs the same number of points")
        objects.append(QueryPointsLine(int(frame_text), np.asarray(points, dtype=np.float32), line_number))
    if num_positive is None:
        raise InputFormatError(f"query-points file {path} is empty\n{QUERY_POINTS_FORMAT}")
    if not objects:
        raise InputFormatError(f"query-points file {path} lists no object (no line after the first)\n"
                               f"{QUERY_POINTS_FORMAT}")
    return num_positive, objects


def parse_query_points_file(path: str | Path) -> tuple[int, list[tuple[int, np.ndarray]]]:
    """Parse SAM-PT's query-points file.

    Format: the first non-blank line is the number n of positive points per object; every
    further non-blank line is one object, ``t ; x1,y1 x2,y2 ...``: its query frame ``t`` and its
    points in pixels, the first n positive and the rest negative. Blank lines and extra spaces
    are tolerated; every object must have the same number (>= n) of points.

    Returns:
        ``(num_positive, [(t, points (N, 2) float32 (x, y)), ...])`` in file order.
    Raises ``InputFormatError`` naming the file and line for anything else.
    """
    num_positive, objects = read_query_points_lines(path)
    return num_positive, [(o.frame, o.points) for o in objects]


# ------------------------------------------------------------------------------------------------
# Frame sources

def natural_sort_key(name: str) -> list:
    """Sort key ordering digit runs by value: ``2.png`` < ``10.png``; case-insensitive otherwise."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part]


def list_image_files(directory: Path) -> list[Path]:
    """The image files of ``directory`` (``IMAGE_SUFFIXES``) in natural order."""
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    files.sort(key=lambda p: (natural_sort_key(p.name), p.name))
    return files


def _open_video(path: Path):
    from sampt.frames import open_video

    return open_video(path)


def count_video_frames(path: Path) -> int:
    """Number of frames of a video file: the container's count, else a demux pass (no decoding)."""
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    finally:
        container.close()


def read_video_file(path: Path, longest_size: Optional[int], frame_stride: int = 1,
                    max_frames: Optional[int] = None) -> tuple[torch.Tensor, list[int], tuple[int, int]]:
    """Decode every ``frame_stride``-th frame (at most ``max_frames``) into one tensor, with
    ``sampt.frames.VideoFileFrames`` decoding on demand (one sequential pass, no cache).

    Returns:
        ``(frames (T, 3, H', W') uint8, source frame indices (T,), original size (H, W))``.
    """
    from sampt.frames import VideoFileFrames

    source = VideoFileFrames(path, longest_size, frame_stride, max_frames, use_cache=False)
    try:
        return source.to_tensor(), list(source.source_indices), source.original_size
    finally:
        source.close()


# ------------------------------------------------------------------------------------------------


def _read_user_masks(paths: dict[int, Path]) -> SparseAnnotations:
    """Index PNGs with the one rule of ``sampt.io.png`` (a 0/255 grayscale folder is object 1)."""
    return read_sparse_annotations(paths, error=InputFormatError)


@dataclass(frozen=True)
class GenericSource:
    """What ``GenericDataset`` reads: the options of ``Generic`` (plain values, cheap to pickle
    into DataLoader workers, unlike the data module itself)."""

    frames: str
    query_masks: Optional[str]
    query_points: Optional[str]
    longest_size: Optional[int]
    frame_stride: int
    max_frames: Optional[int]
    sequence_name: str
    stream_frames_above_mib: Optional[float] = None
    frame_cache_dir: Optional[str] = None
    decode_cache: bool = True
    chunk_frames: int = 32


class GenericDataset(VideoDataset):
    """The single clip of a ``Generic`` data module (read on ``load``).

    Args:
        source: the options.
        frame_paths: the frame files in natural order, or None for a video file.
        num_positive / point_lines: the parsed query-points file (None: query masks).
    """

    def __init__(self, source: GenericSource, frame_paths: Optional[list[Path]], num_positive: int,
                 point_lines: Optional[list[QueryPointsLine]]):
        self.source = source
        self.frame_paths = frame_paths
        self.num_positive = num_positive
        self.point_lines = point_lines

    @property
    def video_names(self) -> list[str]:
        return [self.source.sequence_name]

    def _streams(self, num_frames: int, input_size: tuple[int, int]) -> bool:
        limit = self.source.stream_frames_above_mib
        return limit is not None and num_frames * 3 * input_size[0] * input_size[1] > limit * 2**20

    def _read_frames(self) -> tuple[FrameSource, list[str], list[int], tuple[int, int], Optional[float]]:
        """The frames (in memory, or a streaming source when larger than
        ``stream_frames_above_mib``), their names, source indices, the original size and the
        frame rate (a video file's; None for a folder of frames)."""
        source = self.source
        if self.frame_paths is not None:
            indices = list(range(0, len(self.frame_paths), source.frame_stride))
            if source.max_frames is not None:
                indices = indices[:source.max_frames]
            paths = [self.frame_paths[i] for i in indices]
            original_size = image_size(paths[0], InputFormatError)
            input_size = longest_side_shape(original_size[0], original_size[1], source.longest_size)
            if self._streams(len(paths), input_size):
                frames: FrameSource = ImageFilesFrames(paths, input_size, original_size, InputFormatError,
                                                       source.chunk_frames)
            else:
                tensor, original_size = read_frames_resized(paths, source.longest_size, error=InputFormatError)
                frames = TensorFrames(tensor, f"frames of {source.frames}")
            return frames, [p.stem for p in paths], indices, original_size, None
        video = VideoFileFrames(source.frames, source.longest_size, source.frame_stride, source.max_frames,
                                cache_dir=source.frame_cache_dir, use_cache=source.decode_cache,
                                chunk_frames=source.chunk_frames)
        if not self._streams(video.num_frames, video.size):
            video.use_cache = False  # decoded once, straight into memory
            try:
                frames = TensorFrames(video.to_tensor(), f"frames of {source.frames}")
            finally:
                video.close()
        else:
            frames = video
        return (frames, [f"{i:05d}" for i in video.source_indices], list(video.source_indices), video.original_size,
                video.fps)

    def load(self, index: int) -> VideoItem:
        if index != 0:
            raise IndexError(index)
        source = self.source
        frames, frame_names, source_indices, original_size, fps = self._read_frames()
        input_size = frames.size
        palette: Optional[list[int]] = None
        if self.point_lines is not None:
            objects = self._point_queries(source_indices, original_size, input_size)
        else:
            objects, palette = self._mask_queries(frame_names, source_indices, original_size, input_size)
        return VideoItem(
            name=source.sequence_name,
            frames=frames,
            frame_names=frame_names,
            objects=objects,
            output_size=original_size,
            palette=palette if palette is not None else davis_palette(),
            fps=fps,
            meta={
                "dataset": "generic",
                "source": str(source.frames),
                "source_frame_indices": source_indices,
                "original_size": original_size,
                "query_points": source.query_points,
                "query_masks": source.query_masks,
            },
        )

    def _point_queries(self, source_indices: list[int], original_size: tuple[int, int],
                       input_size: tuple[int, int]) -> list[ObjectQuery]:
        source = self.source
        path = source.query_points
        position = {source: t for t, source in enumerate(source_indices)}
        height, width = original_size
        scale = torch.tensor([input_size[1] / width, input_size[0] / height], dtype=torch.float32)
        objects = []
        for object_index, line in enumerate(self.point_lines):
            if line.frame % source.frame_stride:
                raise InputFormatError(f"{path}, line {line.line_number}: query frame {line.frame} is skipped by "
                                       f"frame_stride={source.frame_stride} (use a multiple of it)")
            if line.frame not in position:
                raise InputFormatError(
                    f"{path}, line {line.line_number}: query frame {line.frame} is not among the frames read "
                    f"({len(source_indices)} frames, source indices {source_indices[0]}..{source_indices[-1]}"
                    + (f", max_frames={source.max_frames}" if source.max_frames is not None else "") + ")")
            points = torch.from_numpy(line.points.copy())
            outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
            if outside.any():
                bad = points[outside][0].tolist()
                raise InputFormatError(f"{path}, line {line.line_number}: point ({bad[0]:g}, {bad[1]:g}) lies outside "
                                       f"the {width}x{height} (W x H) frames")
            objects.append(ObjectQuery(object_id=object_index + 1, query_frame=position[line.frame],
                                       points=points * scale, num_positive=self.num_positive))
        return objects

    def _mask_queries(self, frame_names: list[str], source_indices: list[int], original_size: tuple[int, int],
                      input_size: tuple[int, int]) -> tuple[list[ObjectQuery], Optional[list[int]]]:
        source = self.source
        mask_dir = Path(source.query_masks)
        masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
        all_names = ({p.stem for p in self.frame_paths} if self.frame_paths is not None
                     else None)  # video: any index-like name may belong to a skipped frame
        kept = {name: t for t, name in enumerate(frame_names)}
        paths: dict[int, Path] = {}
        for stem, path in masks.items():
            if stem in kept:
                paths[kept[stem]] = path
            elif all_names is not None and stem not in all_names:
                raise InputFormatError(f"query mask {path} is named like no frame of {source.frames} "
                                       f"(expected <frame name>.png, e.g. {frame_names[0]}.png)")
        if not paths:
            raise InputFormatError(f"no query mask in {mask_dir} is named like one of the {len(frame_names)} frames "
                                   f"read ({frame_names[0]} ... {frame_names[-1]}; expected <frame name>.png)")
        skipped = len(masks) - len(paths)
        if skipped:
            logger.warning("generic: %d query masks in %s belong to frames skipped by frame_stride / max_frames",
                           skipped, mask_dir)
        annotations = _read_user_masks(paths)
        if annotations.size != tuple(original_size):
            first = annotations.paths[min(annotations.paths)]
            raise InputFormatError(f"query mask {first} is {annotations.size} (H, W) but the frames are "
                                   f"{tuple(original_size)}: masks must have the frames' original size")
        objects = first_appearance_queries(annotations, input_size)
        if not objects:
            raise InputFormatError(f"the query masks in {mask_dir} hold no object (only background 0)")
        return objects, annotations.palette


def _expand(path: Optional[str]) -> Optional[str]:
    return None if path is None else str(Path(path).expanduser())


class Generic(VideoDataModule):
    """One user clip (see the module docstring).

    Args:
        frames: a folder of frames or a video file.
        query_masks: folder of index PNGs named like the frames (exclusive with ``query_points``).
        query_points: SAM-PT query-points file (exclusive with ``query_masks``).
        longest_size: resize input frames so that their longest side is this many pixels;
            null keeps the original size. Predictions are at the original size.
        frame_stride: keep every ``frame_stride``-th frame (query frames of a points file are
            given in the original numbering and must be multiples of it).
        max_frames: keep at most this many frames (after the stride).
        name: sequence name (output folder); default: the folder name or the video file's stem.
        num_workers: DataLoader worker processes.
        stream_frames_above_mib: a clip whose input frames take more than this many MiB (T x 3 x
            H x W bytes at input size) is not read into memory: it is streamed from its files
            (a folder: each image decoded when read; a video: decoded once into the disk cache),
            and its masks are written frame by frame. 0 streams every clip, null none.
        frame_cache_dir: where a streamed video file is decoded to (raw uint8 frames, reused by
            later runs while the file and the options are unchanged); default
            ``$SAMPT_CACHE/frames`` (``~/.cache/sampt/frames``).
        decode_cache: False decodes a streamed video on demand instead (no disk use, slower:
            each chunk seeks to a keyframe). Also the fallback when the cache cannot be written.
        chunk_frames: frames a streamed source keeps decoded between reads.
    """

    def __init__(self, frames: str, query_masks: Optional[str] = None, query_points: Optional[str] = None,
                 longest_size: Optional[int] = 1024, frame_stride: int = 1, max_frames: Optional[int] = None,
                 name: Optional[str] = None, num_workers: int = 0, stream_frames_above_mib: Optional[float] = 2048,
                 frame_cache_dir: Optional[str] = None, decode_cache: bool = True, chunk_frames: int = 32):
        super().__init__(num_workers=num_workers, max_videos=None, max_frames=max_frames)
        check_positive_options("generic", longest_size=longest_size, frame_stride=frame_stride,
                               max_frames=max_frames, chunk_frames=chunk_frames)
        if stream_frames_above_mib is not None and not stream_frames_above_mib >= 0:
            raise ValueError(f"generic: stream_frames_above_mib must be >= 0 MiB or null, got {stream_frames_above_mib!r}")
        if (query_masks is None) == (query_points is None):
            raise ValueError("generic: give exactly one of query_masks (a folder of index PNGs) and query_points "
                             f"(a query-points file); got query_masks={query_masks!r}, query_points={query_points!r}")
        if num_workers < 0:
            raise ValueError(f"generic: num_workers must be >= 0, got {num_workers!r}")
        self.frames = frames
        self.query_masks = query_masks
        self.query_points = query_points
        self.longest_size = longest_size
        self.frame_stride = frame_stride
        self.stream_frames_above_mib = stream_frames_above_mib
        self.frame_cache_dir = frame_cache_dir
        self.decode_cache = decode_cache
        self.chunk_frames = chunk_frames
        self.sequence_name_option = name  # not ``self.name``: LightningDataModule uses that attribute
        self.save_hyperparameters()

    @property
    def sequence_name(self) -> str:
        if self.sequence_name_option:
            return self.sequence_name_option
        path = Path(self.frames).expanduser()
        return path.name if path.is_dir() else path.stem

    def build_dataset(self) -> GenericDataset:
        source = Path(self.frames).expanduser()
        if not source.exists():
            raise DatasetLayoutError(f"generic: frames {source} does not exist (expected a folder of frames or a "
                                     f"video file)")
        frame_paths: Optional[list[Path]] = None
        if source.is_dir():
            frame_paths = list_image_files(source)
            if not frame_paths:
                raise DatasetLayoutError(f"generic: frame folder {source} holds no image "
                                         f"({', '.join(IMAGE_SUFFIXES)})")
            stems = [p.stem for p in frame_paths]
            if len(set(stems)) != len(stems):
                duplicate = next(s for s in stems if stems.count(s) > 1)
                raise InputFormatError(f"generic: frame folder {source} holds several images named {duplicate!r} "
                                       f"(different extensions); frame names must be unique")
        else:
            _open_video(source).close()  # fail now, not when the first batch is read
        num_positive, lines = 0, None
        if self.query_points is not None:
            num_positive, lines = read_query_points_lines(Path(self.query_points).expanduser())
        elif not Path(self.query_masks).expanduser().is_dir():
            raise DatasetLayoutError(f"generic: query_masks {self.query_masks} is not a folder of index PNGs")
        options = GenericSource(str(source), _expand(self.query_masks), _expand(self.query_points),
                                self.longest_size, self.frame_stride, self.max_frames, self.sequence_name,
                                self.stream_frames_above_mib, _expand(self.frame_cache_dir), self.decode_cache,
                                self.chunk_frames)
        return GenericDataset(options, frame_paths, num_positive, lines)

    def video_lengths(self) -> Optional[Sequence[int]]:
        return None  # one video: nothing to balance
