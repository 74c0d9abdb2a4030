"""YouTube-VOS 2018 (``Y18``) semi-supervised VOS data module, and the sparse-annotation helpers
that MOSE and the generic module share with it.

On-disk layout (the official download, unchanged)::

    <root>/valid/meta.json                         {"videos": {<video>: {"objects": {"<id>":
                                                     {"category": ..., "frames": ["00000", ...]}}}}}
    <root>/valid/Annotations/<video>/<frame>.png   query masks only: palette PNGs, pixel = object id
    <root>/valid/JPEGImages/<video>/<frame>.jpg    the annotated frames (every 5th)
    <root>/all_frames/valid_all_frames/JPEGImages/<video>/<frame>.jpg   every frame (the input)

Protocol, as SAM-PT evaluates (``sam_pt/vos_eval``, XMem's YouTube-VOS reader):

* The input is every frame of ``all_frames``, resized so the longest side is ``longest_size``.
  Frame names need not start at ``00000``; everything is matched by name, never by number.
* Objects appear at different frames: an object's query frame is the first frame (in video
  order) whose annotation PNG contains its id, and its query mask is that PNG's pixels of the
  id. Ids are kept as they are (they need not be contiguous).
* Predictions are made at the annotation size (``output_size``) and written only for the frames
  meta.json lists for the video (the union over its objects' ``frames``): ``save_frames``.
  ``save_all=True`` writes every frame instead.
* No ground truth is public for ``valid``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from sampt.errors import DatasetLayoutError, SamptError
from sampt.frames import ImageFilesFrames
from sampt.video import ObjectQuery, VideoItem, davis_palette

from .base import VideoDataModule, VideoDataset
from .io import image_size, list_frame_files, longest_side_shape, read_annotation_pngs, resize_masks_nearest

logger = logging.getLogger(__name__)

#: Annotation value meaning "not evaluated"; never an object.
VOID_INDEX = 255

Y18_LAYOUT = """\
expected the YouTube-VOS 2018 layout:
<root>/
  <split>/meta.json                        {"videos": {<video>: {"objects": {"<id>": {"frames": [...]}}}}}
  <split>/Annotations/<video>/<frame>.png   query masks (palette PNGs, pixel value = object id)
  <split>/JPEGImages/<video>/<frame>.jpg    annotated frames (every 5th)
  all_frames/<split>_all_frames/JPEGImages/<video>/<frame>.jpg   all frames (the input)"""


# ------------------------------------------------------------------------------------------------
# Helpers shared with MOSE and the generic module


def read_frames_resized(paths: Sequence[Path], longest_size: Optional[int],
                        error: type[SamptError] = DatasetLayoutError) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read image files into one ``(T, 3, H', W') uint8`` tensor.

    Each frame is decoded and resized (``io.resize_rgb``: the longest side becomes
    ``longest_size``, None keeps the size) by an ``ImageFilesFrames`` and copied into its slot,
    so the video is never held twice.

    Returns:
        ``(frames (T, 3, H', W') uint8, original_size (H, W))``.
    Raises ``error`` naming the file when a frame is unreadable or its size differs from the first.
    """
    if not paths:
        raise error("no frames to read")
    original_size = image_size(paths[0], error)
    input_size = longest_side_shape(original_size[0], original_size[1], longest_size)
    frames = ImageFilesFrames(paths, input_size, original_size, error, chunk_frames=1).to_tensor()
    return frames, original_size


@dataclass
class SparseAnnotations:
    """Index masks of the annotated frames of one video.

    Attributes:
        masks: frame index -> ``(h, w) uint8`` index mask (only annotated frames).
        paths: frame index -> the PNG it was read from.
        palette: palette of the first annotation PNG (None when it has none).
    """

    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    paths: dict[int, Path] = field(default_factory=dict)
    palette: Optional[list[int]] = None

    @property
    def size(self) -> tuple[int, int]:
        first = self.masks[min(self.masks)]
        return int(first.shape[0]), int(first.shape[1])


def read_sparse_annotations(annotation_paths: dict[int, Path], error: type[SamptError] = DatasetLayoutError
                            ) -> SparseAnnotations:
    """Read the annotation PNGs ``{frame index: path}`` of one video; all must have one size.

    The PNGs are read together with the one rule of ``sampt.io.png`` (palette indices and
    grayscale values are ids; a video whose PNGs are all 0/255 grayscale is object 1; RGB
    colours through the DAVIS palette).
    """
    annotations = SparseAnnotations()
    order = sorted(annotation_paths)
    masks, annotations.palette = read_annotation_pngs([annotation_paths[t] for t in order], error=error)
    for t, mask in zip(order, masks):
        path = annotation_paths[t]
        if annotations.masks:
            first_t = min(annotations.masks)
            if tuple(mask.shape) != tuple(annotations.masks[first_t].shape):
                raise error(f"annotation {path} is {tuple(mask.shape)} (H, W) but {annotations.paths[first_t]} "
                            f"is {tuple(annotations.masks[first_t].shape)}: all annotations of a video must have one size")
        annotations.masks[t] = mask
        annotations.paths[t] = path
    return annotations


def first_appearance_queries(annotations: SparseAnnotations, input_size: tuple[int, int]) -> list[ObjectQuery]:
    """One ``ObjectQuery`` per object id, at the first annotated frame containing it.

    Args:
        annotations: the video's annotated frames (index masks at output size).
        input_size: ``(H', W')`` of the input frames; query masks are resized to it with
            nearest neighbour (SAM-PT's rule), ``output_mask`` keeps the annotation size.

    Returns the queries sorted by object id (0 = background and 255 = void are not objects).
    """
    query_frames: dict[int, int] = {}
    for t in sorted(annotations.masks):
        for object_id in torch.unique(annotations.masks[t]).tolist():
            if object_id not in (0, VOID_INDEX) and object_id not in query_frames:
                query_frames[object_id] = t
    objects = []
    for object_id in sorted(query_frames):
        t = query_frames[object_id]
        output_mask = annotations.masks[t] == object_id
        mask = resize_masks_nearest(output_mask, input_size)
        if not mask.any():
            logger.warning("object %d's query mask (%s) vanishes when resized to %s",
                           object_id, annotations.paths[t], input_size)
        objects.append(ObjectQuery(object_id=int(object_id), query_frame=int(t), mask=mask, output_mask=output_mask))
    return objects


def select_videos(names: list[str], vid_ids: Optional[Sequence[str]], max_videos: Optional[int],
                  what: str) -> list[str]:
    """Apply ``vid_ids`` (unknown names are an error) then ``max_videos``, keeping dataset order."""
    if vid_ids is not None:
        unknown = [v for v in vid_ids if v not in set(names)]
        if unknown:
            raise DatasetLayoutError(f"{what}: vid_ids {unknown} are not in the dataset ({len(names)} videos, "
                                     f"e.g. {', '.join(names[:5])})")
        wanted = set(vid_ids)
        names = [n for n in names if n in wanted]
    if max_videos is not None:
        names = names[:max_videos]
    return names


def check_positive_options(what: str, **options) -> None:
    """Raise ``ValueError`` naming the option unless each value is None or a positive int."""
    for option, value in options.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{what}: {option} must be a positive integer or null, got {value!r}")


@dataclass(frozen=True)
class SparseVideo:
    """One indexed video of a sparsely annotated dataset (Y18, MOSE).

    Attributes:
        name: video name.
        frame_paths: input frame files in video order, already cut to ``max_frames``.
        annotation_dir: the folder of its annotation PNGs (``<frame name>.png``).
        save_frames: frame names to write (None = all).
        expected_ids: object ids the dataset's metadata lists (None = no metadata); a mismatch
            with the annotations is logged.
    """

    name: str
    frame_paths: tuple[Path, ...]
    annotation_dir: Path
    save_frames: Optional[tuple[str, ...]] = None
    expected_ids: Optional[frozenset[int]] = None


class SparseVOSDataset(VideoDataset):
    """Reads one video per item: frames, first-appearance queries, optional dense ground truth.

    Args:
        videos: the indexed videos, in item order.
        dataset_name / split: go to ``VideoItem.meta``.
        longest_size: resize input frames so the longest side is this (None: original size).
        dense_ground_truth: every frame is annotated (MOSE train): return it as ``ground_truth``
            and fail when a frame's annotation is missing.
    """

    def __init__(self, videos: Sequence[SparseVideo], dataset_name: str, split: str, longest_size: Optional[int],
                 dense_ground_truth: bool = False):
        self.videos = list(videos)
        self.dataset_name = dataset_name
        self.split = split
        self.longest_size = longest_size
        self.dense_ground_truth = dense_ground_truth

    @property
    def video_names(self) -> list[str]:
        return [v.name for v in self.videos]

    def load(self, index: int) -> VideoItem:
        video = self.videos[index]
        frame_names = [p.stem for p in video.frame_paths]
        annotation_paths = {t: video.annotation_dir / f"{stem}.png" for t, stem in enumerate(frame_names)}
        missing = [p for p in annotation_paths.values() if not p.is_file()]
        if self.dense_ground_truth and missing:
            raise DatasetLayoutError(f"{self.dataset_name} {self.split}: every frame must be annotated, but "
                                     f"{missing[0]} is missing ({len(missing)} of {len(frame_names)} frames)")
        annotation_paths = {t: p for t, p in annotation_paths.items() if p.is_file()}
        if not annotation_paths:
            stray = sorted(p.name for p in video.annotation_dir.glob("*.png"))[:3]
            raise DatasetLayoutError(
                f"{self.dataset_name} {self.split}: no annotation of video {video.name!r} matches one of its "
                f"{len(frame_names)} frames ({frame_names[0]} ... {frame_names[-1]}) in {video.annotation_dir}"
                + (f"; found {', '.join(stray)}" if stray else ""))
        annotations = read_sparse_annotations(annotation_paths)

        frames, original_size = read_frames_resized(video.frame_paths, self.longest_size)
        input_size = (int(frames.shape[-2]), int(frames.shape[-1]))
        objects = first_appearance_queries(annotations, input_size)
        if not objects:
            logger.warning("%s %s: the annotations of %r within its %d frames hold no object",
                           self.dataset_name, self.split, video.name, len(frame_names))
        found_ids = {o.object_id for o in objects}
        if video.expected_ids is not None and found_ids != video.expected_ids:
            # Not fatal: with max_frames, objects appearing later are legitimately absent.
            logger.warning("%s %s: video %r: the metadata lists object ids %s, its annotations (within %d frames) "
                           "hold %s", self.dataset_name, self.split, video.name, sorted(video.expected_ids),
                           len(frame_names), sorted(found_ids))
        ground_truth = None
        if self.dense_ground_truth:
            ground_truth = torch.stack([annotations.masks[t] for t in range(len(frame_names))])
        return VideoItem(
            name=video.name,
            frames=frames,
            frame_names=frame_names,
            objects=objects,
            output_size=annotations.size,
            ground_truth=ground_truth,
            palette=annotations.palette if annotations.palette is not None else davis_palette(),
            save_frames=list(video.save_frames) if video.save_frames is not None else None,
            meta={
                "dataset": self.dataset_name,
                "split": self.split,
                "frame_dir": str(video.frame_paths[0].parent),
                "annotation_dir": str(video.annotation_dir),
                "original_size": original_size,
            },
        )


# ------------------------------------------------------------------------------------------------


def read_meta_json(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{video: {object id (str): [frame names]}}`` from a YouTube-VOS ``meta.json``."""
    if not path.is_file():
        raise DatasetLayoutError(f"Y18: {path} does not exist\n{Y18_LAYOUT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        videos = data["videos"]
        return {
            str(video): {str(object_id): [str(f) for f in entry.get("frames", [])]
                         for object_id, entry in info["objects"].items()}
            for video, info in videos.items()
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetLayoutError(
            f"Y18: cannot read {path} ({exc.__class__.__name__}: {exc}); expected "
            '{"videos": {<video>: {"objects": {"<id>": {"category": ..., "frames": ["00000", ...]}}}}}') from exc


class Y18(VideoDataModule):
    """YouTube-VOS 2018 semi-supervised VOS (see the module docstring for layout and protocol).

    Args:
        root: the YouTube-VOS 2018 folder holding ``valid/`` and ``all_frames/``.
        split: ``"valid"``.
        longest_size: resize input frames so that their longest side is this many pixels (SAM-PT:
            1024); null keeps the original size. Predictions are at the annotation size.
        save_all: write every frame instead of only those listed in meta.json.
        vid_ids: evaluate only these videos.
        max_videos: keep only the first ``max_videos`` videos (after ``vid_ids``), sorted by name.
        max_frames: keep only the first ``max_frames`` frames of each video; objects appearing
            later are dropped, ``save_frames`` is cut to the kept frames.
        num_workers: DataLoader worker processes.
    """

    dataset_name = "Y18"

    def __init__(self, root: str, split: str = "valid", longest_size: Optional[int] = 1024, save_all: bool = False,
                 vid_ids: Optional[list[str]] = None, max_videos: Optional[int] = None,
                 max_frames: Optional[int] = None, num_workers: int = 0):
        super().__init__(num_workers=num_workers, max_videos=max_videos, max_frames=max_frames)
        check_positive_options(self.dataset_name, longest_size=longest_size, max_videos=max_videos,
                               max_frames=max_frames)
        if num_workers < 0:
            raise ValueError(f"{self.dataset_name}: num_workers must be >= 0, got {num_workers!r}")
        self.root = root
        self.split = split
        self.longest_size = longest_size
        self.save_all = save_all
        self.vid_ids = list(vid_ids) if vid_ids is not None else None
        self.save_hyperparameters()

    def build_dataset(self) -> SparseVOSDataset:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DatasetLayoutError(f"Y18: dataset root {root} does not exist\n{Y18_LAYOUT}")
        split_dir = root / self.split
        frames_root = root / "all_frames" / f"{self.split}_all_frames" / "JPEGImages"
        annotations_root = split_dir / "Annotations"
        for folder in (split_dir, frames_root, annotations_root):
            if not folder.is_dir():
                raise DatasetLayoutError(f"Y18: {folder} does not exist\n{Y18_LAYOUT}")
        meta = read_meta_json(split_dir / "meta.json")

        names = select_videos(sorted(p.name for p in frames_root.iterdir() if p.is_dir()), self.vid_ids,
                              self.max_videos, f"Y18 {self.split} ({frames_root})")
        videos = []
        for name in names:
            if name not in meta:
                raise DatasetLayoutError(f"Y18: video {name!r} of {frames_root} is not in {split_dir / 'meta.json'}")
            frame_paths = list_frame_files(frames_root / name)
            if not frame_paths:
                raise DatasetLayoutError(f"Y18: frame folder {frames_root / name} holds no .jpg/.png frame")
            if self.max_frames is not None:
                frame_paths = frame_paths[:self.max_frames]
            annotation_dir = annotations_root / name
            if not annotation_dir.is_dir():
                raise DatasetLayoutError(f"Y18: annotation folder {annotation_dir} does not exist\n{Y18_LAYOUT}")
            save_frames = None
            if not self.save_all:
                kept = {p.stem for p in frame_paths}
                listed = {f for frames in meta[name].values() for f in frames}
                unknown = sorted(listed - {p.stem for p in list_frame_files(frames_root / name)})
                if unknown:
                    raise DatasetLayoutError(f"Y18: meta.json lists frames {unknown[:3]} of video {name!r} that are "
                                             f"not in {frames_root / name}")
                save_frames = tuple(sorted(listed & kept))
            try:
                expected_ids = frozenset(int(i) for i in meta[name])
            except ValueError as exc:
                raise DatasetLayoutError(f"Y18: meta.json object ids of video {name!r} must be integers: {exc}") from exc
            videos.append(SparseVideo(name, tuple(frame_paths), annotation_dir, save_frames, expected_ids))
        return SparseVOSDataset(videos, self.dataset_name, self.split, self.longest_size)

    def video_lengths(self) -> list[int]:
        """Frame counts per video (after ``max_frames``), for balancing the ranks."""
        return [len(v.frame_paths) for v in self.dataset.videos]
