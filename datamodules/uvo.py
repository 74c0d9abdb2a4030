"""UVO (Unidentified Video Objects) as class-agnostic video instance segmentation (``UVO``).

On-disk layout (the official downloads, unchanged)::

    <root>/UVOv1.0/VideoDenseSet/UVO_video_{train,val,test}_dense.json   YouTube-VIS format
    <root>/UVOv1.0/uvo_videos_dense_frames/<file_name>                     every frame (the input)
    <root>/UVOv0.5/VideoDenseSet/UVO_video_{train,val}_dense.json          (version "v0.5")
    <root>/UVOv0.5/uvo_videos_dense_frames/<file_name>

The JSON (YouTube-VIS format): ``videos`` with ``id``, ``file_names`` (paths relative to the
frame folder, in video order), ``width``, ``height``, ``length``; ``annotations`` with
``video_id``, per-frame ``segmentations`` (compressed / uncompressed RLE or polygons, ``null``
where the object is absent), ``areas``, ``bboxes``, ``iscrowd`` and ``category_id`` (1,
"object"); ``categories``.

Protocol, as SAM-PT evaluates UVO (``sam_pt/vis_eval``, a Mask2Former / detectron2 test loader):

* Items carry **no objects**: a VIS model finds its own (SAM's automatic mask proposals on frame 0,
  ``sampt.proposals``). ``VideoItem.meta`` holds ``video_id`` (the JSON id the metric scores) and
  ``ground_truth_path``; the data module's ``ground_truth`` property is the GT dict that is
  actually evaluated (after ``max_videos`` / ``max_annotations`` / ``max_frames``).
* Predictions are made at ``(height, width)`` of the JSON (``VideoItem.output_size``).
* Input frames are fed at the dataset's size by default. SAM-PT's loader resized them with
  detectron2's ``ResizeShortestEdge(360, max_size=1333)`` (PIL bilinear); ``shortest_edge: 360``
  reproduces that (``configs/uvo.yaml`` does). ``longest_size`` is the VOS-style alternative.
* The tiny split ``uvo_v1_val_tiny`` is the seed's ``jq '.videos |= [.[0]] | .annotations |=
  [.[0,1,2,3]]'`` recipe on the v1.0 val JSON: first video, first four annotations of the file
  (``max_videos: 1, max_annotations: 4`` on ``val`` is the same).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from sampt.errors import DatasetLayoutError
from sampt.video import VideoItem

from .base import VideoDataModule, VideoDataset
from .io import longest_side_shape, read_rgb, resize_rgb

logger = logging.getLogger(__name__)

#: version -> (folder under root, splits with a dense JSON)
VERSIONS = {"v1.0": ("UVOv1.0", ("train", "val", "test")), "v0.5": ("UVOv0.5", ("train", "val"))}
#: The seed's split names -> (version, split, max_videos, max_annotations).
NAMED_SPLITS = {
    "uvo_v1_train": ("v1.0", "train", None, None),
    "uvo_v1_val": ("v1.0", "val", None, None),
    "uvo_v1_test": ("v1.0", "test", None, None),
    "uvo_v1_val_tiny": ("v1.0", "val", 1, 4),
}
FRAMES_FOLDER = "uvo_videos_dense_frames"

UVO_LAYOUT = """\
expected the UVO layout:
<root>/
  UVOv1.0/VideoDenseSet/UVO_video_{train,val,test}_dense.json   (UVOv0.5/...: train, val)
  UVOv1.0/uvo_videos_dense_frames/<file_name of the json>       every frame of every video
(or give annotation_file and frames_dir explicitly)"""


# ------------------------------------------------------------------------------------------------
# Segmentations


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One frame's annotation -> ``(height, width) bool`` mask.

    Accepts compressed RLE (``counts`` str/bytes), uncompressed RLE (``counts`` list), a polygon
    list ``[[x0, y0, x1, y1, ...], ...]`` and ``None`` (absent: all False). Decoding is
    pycocotools', as the evaluation's.
    """
    from pycocotools import mask as mask_utils

    if segmentation is None:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if segmentation else None
        if rle is None:
            return np.zeros((height, width), dtype=bool)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise DatasetLayoutError(f"unknown segmentation format {type(segmentation).__name__}: expected RLE, "
                                 "polygons or null")
    mask = mask_utils.decode(rle)
    if tuple(mask.shape[:2]) != (height, width):
        raise DatasetLayoutError(f"segmentation of size {tuple(mask.shape[:2])} in a video of size {(height, width)}")
    return mask.astype(bool)


def shortest_edge_shape(height: int, width: int, shortest_edge: Optional[int], max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output ``(h, w)``: shorter side -> ``shortest_edge``,
    capped so the longer side is at most ``max_size``; ``int(x + 0.5)`` rounding. None keeps it."""
    if shortest_edge is None:
        return height, width
    scale = shortest_edge * 1.0 / min(height, width)
    new_h, new_w = (shortest_edge, scale * width) if height < width else (scale * height, shortest_edge)
    if max(new_h, new_w) > max_size:
        cap = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


# ------------------------------------------------------------------------------------------------
# Ground truth JSON


def read_uvo_json(path: Path) -> dict:
    """Read and minimally validate a UVO / YouTube-VIS JSON (``videos`` and ``annotations`` lists)."""
    if not path.is_file():
        raise DatasetLayoutError(f"UVO: annotation file {path} does not exist\n{UVO_LAYOUT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"UVO: cannot read {path} ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise DatasetLayoutError(f"UVO: {path} must be a JSON object with a 'videos' list (YouTube-VIS format)")
    if not isinstance(data.setdefault("annotations", []), list):
        raise DatasetLayoutError(f"UVO: {path}: 'annotations' must be a list")
    for index, video in enumerate(data["videos"]):
        for key in ("id", "file_names", "height", "width"):
            if not isinstance(video, dict) or key not in video:
                raise DatasetLayoutError(f"UVO: {path}: videos[{index}] has no {key!r} field")
        if not isinstance(video["file_names"], list) or not video["file_names"]:
            raise DatasetLayoutError(f"UVO: {path}: videos[{index}].file_names must be a non-empty list")
        if int(video.get("length", len(video["file_names"]))) != len(video["file_names"]):
            raise DatasetLayoutError(f"UVO: {path}: videos[{index}] has length {video['length']} but "
                                     f"{len(video['file_names'])} file_names")
    return data


def subset_ground_truth(data: dict, max_videos: Optional[int] = None, max_annotations: Optional[int] = None,
                        max_frames: Optional[int] = None) -> dict:
    """The evaluated GT: the first ``max_videos`` videos, the first ``max_annotations`` annotations
    of the file (the seed's jq recipe: it neither checks that they belong to the kept videos nor
    drops those that do not, so annotations of dropped videos are dropped here as well, which is
    what scoring them against the kept videos amounts to), and each video cut to its first
    ``max_frames`` frames (segmentations, areas and bboxes cut alike). Returns a new dict; the
    input is not changed. No option set: the input itself."""
    if max_videos is None and max_annotations is None and max_frames is None:
        return data
    subset = {key: value for key, value in data.items() if key not in ("videos", "annotations")}
    videos = data["videos"][:max_videos] if max_videos is not None else data["videos"]
    annotations = data["annotations"][:max_annotations] if max_annotations is not None else data["annotations"]
    kept_ids = {video["id"] for video in videos}
    annotations = [a for a in annotations if a.get("video_id") in kept_ids]
    if max_frames is not None:
        videos = [copy.copy(v) for v in videos]
        for video in videos:
            video["file_names"] = video["file_names"][:max_frames]
            video["length"] = len(video["file_names"])
        cut = []
        for annotation in annotations:
            annotation = copy.copy(annotation)
            for key in ("segmentations", "areas", "bboxes"):
                if isinstance(annotation.get(key), list):
                    annotation[key] = annotation[key][:max_frames]
            cut.append(annotation)
        annotations = cut
    subset["videos"] = list(videos)
    subset["annotations"] = list(annotations)
    return subset


@dataclass(frozen=True)
class UvoVideo:
    """One indexed video: its JSON entry and where its frames are."""

    name: str
    video_id: int
    frame_paths: tuple[Path, ...]
    height: int
    width: int


def _video_names(videos: Sequence[dict]) -> list[str]:
    """Item names: the frame folder of each video when unique (YouTube ids in UVO), else its id."""
    folders = [str(Path(v["file_names"][0]).parent) for v in videos]
    unique = len(set(folders)) == len(folders) and all(f not in ("", ".") for f in folders)
    return [f.replace("/", "_") for f in folders] if unique else [f"video_{v['id']}" for v in videos]


class UvoDataset(VideoDataset):
    """Reads one UVO video per item (frames only; objects come from a proposal stage).

    Args:
        videos: the indexed videos, in item order.
        split: goes to ``VideoItem.meta``.
        ground_truth_path: the JSON the videos come from (``VideoItem.meta``).
        shortest_edge, max_size, longest_size: input resizing (see :class:`UVO`).
    """

    def __init__(self, videos: Sequence[UvoVideo], split: str, ground_truth_path: Path,
                 shortest_edge: Optional[int] = None, max_size: int = 1333, longest_size: Optional[int] = None):
        self.videos = list(videos)
        self.split = split
        self.ground_truth_path = ground_truth_path
        self.shortest_edge = shortest_edge
        self.max_size = max_size
        self.longest_size = longest_size

    @property
    def video_names(self) -> list[str]:
        return [v.name for v in self.videos]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        if self.longest_size is not None:
            return longest_side_shape(height, width, self.longest_size)
        return shortest_edge_shape(height, width, self.shortest_edge, self.max_size)

    def load(self, index: int) -> VideoItem:
        video = self.videos[index]
        size = (video.height, video.width)
        input_size = self.input_size(*size)
        frames = torch.empty((len(video.frame_paths), 3) + input_size, dtype=torch.uint8)
        for t, path in enumerate(video.frame_paths):
            frame = read_rgb(path)
            if tuple(frame.shape[-2:]) != size:
                # detectron2's loader refuses this too (check_image_size): masks would not align.
                raise DatasetLayoutError(f"UVO: frame {path} is {tuple(frame.shape[-2:])} (H, W) but the JSON gives "
                                         f"video {video.video_id} height {video.height}, width {video.width}")
            frames[t] = resize_rgb(frame, input_size)
        return VideoItem(
            name=video.name,
            frames=frames,
            frame_names=[Path(p).stem for p in video.frame_paths],
            objects=[],
            output_size=size,
            meta={
                "dataset": "UVO",
                "split": self.split,
                "video_id": video.video_id,
                "ground_truth_path": str(self.ground_truth_path),
                "frame_dir": str(video.frame_paths[0].parent),
                "original_size": size,
            },
        )


class UVO(VideoDataModule):
    """UVO dense video instance segmentation (see the module docstring for layout and protocol).

    Args:
        root: the folder holding ``UVOv1.0/`` (or ``UVOv0.5/``).
        split: ``train``, ``val``, ``test`` (v1.0) or the seed's names ``uvo_v1_train``,
            ``uvo_v1_val``, ``uvo_v1_test``, ``uvo_v1_val_tiny`` (first video, first 4 annotations).
        version: ``v1.0`` or ``v0.5`` (ignored for the ``uvo_v1_*`` names).
        annotation_file: use this JSON instead of the layout's (e.g. a jq-made subset).
        frames_dir: use this frame folder instead of the layout's.
        shortest_edge: resize input frames so the shorter side is this (detectron2's rule, capped
            by ``max_size``; SAM-PT's UVO loader: 360); null feeds them at the dataset's size.
        max_size: longest-side cap of ``shortest_edge``.
        longest_size: alternatively resize so the longest side is this (excludes ``shortest_edge``).
        max_videos: keep only the first ``max_videos`` videos of the JSON (they and only they are
            evaluated).
        max_annotations: keep only the first ``max_annotations`` annotations of the JSON.
        max_frames: cut every video (and its GT) to its first ``max_frames`` frames.
        num_workers: DataLoader worker processes.
    """

    dataset_name = "UVO"

    def __init__(self, root: str, split: str = "val", version: str = "v1.0", annotation_file: Optional[str] = None,
                 frames_dir: Optional[str] = None, shortest_edge: Optional[int] = None, max_size: int = 1333,
                 longest_size: Optional[int] = None, max_videos: Optional[int] = None,
                 max_annotations: Optional[int] = None, max_frames: Optional[int] = None, num_workers: int = 0):
        super().__init__(num_workers=num_workers, max_videos=max_videos, max_frames=max_frames)
        for option, value in (("shortest_edge", shortest_edge), ("max_size", max_size),
                              ("longest_size", longest_size), ("max_videos", max_videos),
                              ("max_annotations", max_annotations), ("max_frames", max_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"UVO: {option} must be a positive integer or null, got {value!r}")
        if num_workers < 0:
            raise ValueError(f"UVO: num_workers must be >= 0, got {num_workers!r}")
        if shortest_edge is not None and longest_size is not None:
            raise ValueError("UVO: give at most one of shortest_edge and longest_size")
        if split in NAMED_SPLITS:
            version, base_split, named_videos, named_annotations = NAMED_SPLITS[split]
            if named_videos is not None:
                max_videos = named_videos if max_videos is None else min(max_videos, named_videos)
                self.max_videos = max_videos
            if named_annotations is not None:
                max_annotations = (named_annotations if max_annotations is None
                                   else min(max_annotations, named_annotations))
        else:
            if version not in VERSIONS:
                raise ValueError(f"UVO: version must be one of {sorted(VERSIONS)}, got {version!r}")
            base_split = split
            if split not in VERSIONS[version][1]:
                raise ValueError(f"UVO: split must be one of {list(VERSIONS[version][1]) + list(NAMED_SPLITS)} "
                                 f"(version {version}), got {split!r}")
        self.root = root
        self.split = split
        self.base_split = base_split
        self.version = version
        self.annotation_file = annotation_file
        self.frames_dir = frames_dir
        self.shortest_edge = shortest_edge
        self.max_size = max_size
        self.longest_size = longest_size
        self.max_annotations = max_annotations
        self._ground_truth: Optional[dict] = None
        self.save_hyperparameters()

    # -- paths ----------------------------------------------------------------------------------
    def annotation_path(self) -> Path:
        if self.annotation_file is not None:
            return Path(self.annotation_file).expanduser()
        folder = VERSIONS[self.version][0]
        return Path(self.root).expanduser() / folder / "VideoDenseSet" / f"UVO_video_{self.base_split}_dense.json"

    def frames_path(self) -> Path:
        if self.frames_dir is not None:
            return Path(self.frames_dir).expanduser()
        return Path(self.root).expanduser() / VERSIONS[self.version][0] / FRAMES_FOLDER

    # -- dataset --------------------------------------------------------------------------------
    def build_dataset(self) -> UvoDataset:
        root = Path(self.root).expanduser()
        if self.annotation_file is None or self.frames_dir is None:
            if not root.is_dir():
                raise DatasetLayoutError(f"UVO: dataset root {root} does not exist\n{UVO_LAYOUT}")
        json_path = self.annotation_path()
        frames_root = self.frames_path()
        if not frames_root.is_dir():
            raise DatasetLayoutError(f"UVO: frame folder {frames_root} does not exist\n{UVO_LAYOUT}")
        data = read_uvo_json(json_path)
        self._ground_truth = subset_ground_truth(data, self.max_videos, self.max_annotations, self.max_frames)
        entries = self._ground_truth["videos"]
        names = _video_names(entries)
        videos = []
        for name, entry in zip(names, entries):
            paths = tuple(frames_root / file_name for file_name in entry["file_names"])
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DatasetLayoutError(f"UVO: {len(missing)} of the {len(paths)} frames of video {entry['id']} "
                                         f"listed in {json_path} are missing, e.g. {missing[0]}\n{UVO_LAYOUT}")
            videos.append(UvoVideo(name, int(entry["id"]), paths, int(entry["height"]), int(entry["width"])))
        logger.info("UVO %s: %d videos, %d annotations from %s", self.split, len(videos),
                    len(self._ground_truth["annotations"]), json_path)
        return UvoDataset(videos, self.split, json_path, self.shortest_edge, self.max_size, self.longest_size)

    @property
    def ground_truth(self) -> dict:
        """The evaluated GT as a YouTube-VIS dict (after the subset options)."""
        if self._ground_truth is None:
            self.dataset  # builds it
        return self._ground_truth

    @property
    def ground_truth_is_subset(self) -> bool:
        """Whether ``ground_truth`` differs from the JSON file (it must then be saved to be re-scored)."""
        return any(v is not None for v in (self.max_videos, self.max_annotations, self.max_frames))

    def ground_truth_masks(self, video_id: int) -> tuple[list[int], np.ndarray]:
        """The GT of one video: ``(annotation ids, (A, T, H, W) bool masks)`` in file order."""
        gt = self.ground_truth
        video = next((v for v in gt["videos"] if v["id"] == video_id), None)
        if video is None:
            raise KeyError(f"UVO: no video with id {video_id}")
        height, width, length = int(video["height"]), int(video["width"]), len(video["file_names"])
        annotations = [a for a in gt["annotations"] if a["video_id"] == video_id]
        masks = np.zeros((len(annotations), length, height, width), dtype=bool)
        for a, annotation in enumerate(annotations):
            for t, segmentation in enumerate(annotation["segmentations"][:length]):
                masks[a, t] = decode_segmentation(segmentation, height, width)
        return [int(a["id"]) for a in annotations], masks

    def video_lengths(self) -> list[int]:
        return [len(v.frame_paths) for v in self.dataset.videos]
