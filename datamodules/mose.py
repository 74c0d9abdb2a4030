"""MOSE (``MOSE``) semi-supervised VOS data module.

On-disk layout (the official download, unchanged)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png    palette PNGs, pixel = object id

``split`` is ``train`` (every frame annotated: ``VideoItem.ground_truth`` is set, so J&F can be
computed) or ``valid`` (first-frame masks only; ground truth is on the evaluation server).

Protocol, as SAM-PT evaluates (``MOSETestDataset``): every frame of ``JPEGImages`` is the input,
resized so the longest side is ``longest_size``; objects are defined where they first appear in
the annotations (as in YouTube-VOS: an object may appear after the first frame), ids kept;
predictions are made at the annotation size and written for every frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sampt.errors import DatasetLayoutError

from .base import VideoDataModule
from .io import list_frame_files
from .ytvos import SparseVideo, SparseVOSDataset, check_positive_options, select_videos

MOSE_SPLITS = ("train", "valid")
#: Split names accepted as aliases (SAM-PT accepts ``val`` for ``valid``).
_SPLIT_ALIASES = {"val": "valid"}

MOSE_LAYOUT = """\
expected the MOSE layout:
<root>/
  <split>/JPEGImages/<video>/<frame>.jpg
  <split>/Annotations/<video>/<frame>.png   palette PNGs, pixel value = object id
                                           (train: every frame; valid: first-frame masks)"""


class MOSE(VideoDataModule):
    """MOSE semi-supervised VOS (see the module docstring for layout and protocol).

    Args:
        root: the MOSE folder holding ``train/`` and/or ``valid/``.
        split: ``"train"`` (dense ground truth, J&F computed locally) or ``"valid"``.
        longest_size: resize input frames so that their longest side is this many pixels (SAM-PT:
            1024); null keeps the original size. Predictions are at the annotation size.
        vid_ids: evaluate only these videos.
        max_videos: keep only the first ``max_videos`` videos (after ``vid_ids``), sorted by name.
        max_frames: keep only the first ``max_frames`` frames of each video.
        num_workers: DataLoader worker processes.
    """

    dataset_name = "MOSE"

    def __init__(self, root: str, split: str = "valid", longest_size: Optional[int] = 1024,
                 vid_ids: Optional[list[str]] = None, max_videos: Optional[int] = None,
                 max_frames: Optional[int] = None, num_workers: int = 0):
        super().__init__(num_workers=num_workers, max_videos=max_videos, max_frames=max_frames)
        split = _SPLIT_ALIASES.get(split, split)
        if split not in MOSE_SPLITS:
            raise ValueError(f"MOSE: split must be one of {', '.join(MOSE_SPLITS)}, got {split!r}")
        check_positive_options(self.dataset_name, longest_size=longest_size, max_videos=max_videos,
                               max_frames=max_frames)
        if num_workers < 0:
            raise ValueError(f"MOSE: num_workers must be >= 0, got {num_workers!r}")
        self.root = root
        self.split = split
        self.longest_size = longest_size
        self.vid_ids = list(vid_ids) if vid_ids is not None else None
        self.save_hyperparameters()

    def build_dataset(self) -> SparseVOSDataset:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DatasetLayoutError(f"MOSE: dataset root {root} does not exist\n{MOSE_LAYOUT}")
        frames_root = root / self.split / "JPEGImages"
        annotations_root = root / self.split / "Annotations"
        for folder in (frames_root, annotations_root):
            if not folder.is_dir():
                raise DatasetLayoutError(f"MOSE: {folder} does not exist\n{MOSE_LAYOUT}")
        names = select_videos(sorted(p.name for p in frames_root.iterdir() if p.is_dir()), self.vid_ids,
                              self.max_videos, f"MOSE {self.split} ({frames_root})")
        videos = []
        for name in names:
            frame_paths = list_frame_files(frames_root / name)
            if not frame_paths:
                raise DatasetLayoutError(f"MOSE: frame folder {frames_root / name} holds no .jpg/.png frame")
            if self.max_frames is not None:
                frame_paths = frame_paths[:self.max_frames]
            annotation_dir = annotations_root / name
            if not annotation_dir.is_dir():
                raise DatasetLayoutError(f"MOSE: annotation folder {annotation_dir} does not exist\n{MOSE_LAYOUT}")
            videos.append(SparseVideo(name, tuple(frame_paths), annotation_dir))
        return SparseVOSDataset(videos, self.dataset_name, self.split, self.longest_size,
                                dense_ground_truth=self.split == "train")

    def video_lengths(self) -> list[int]:
        """Frame counts per video (after ``max_frames``), for balancing the ranks."""
        return [len(v.frame_paths) for v in self.dataset.videos]
