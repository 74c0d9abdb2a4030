"""DAVIS 2016 (``D16``) and DAVIS 2017 (``D17``) semi-supervised VOS data modules.

On-disk layouts (the official downloads, unchanged)::

    DAVIS 2017 tree (trainval or test-dev download; also holds the 2016 val list)
        ImageSets/2017/val.txt            one sequence name per line (or test-dev.txt)
        ImageSets/2016/val.txt            the DAVIS 2016 val sequences (trainval only)
        JPEGImages/480p/<seq>/00000.jpg
        JPEGImages/Full-Resolution/<seq>/00000.jpg   (optional Full-Resolution download)
        Annotations/480p/<seq>/00000.png  palette PNGs, pixel = object id (0 background)
        Annotations/Full-Resolution/<seq>/00000.png  (optional)

    DAVIS 2016 release
        ImageSets/480p/val.txt            frame list: "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png"
        JPEGImages/480p/<seq>/00000.jpg   and JPEGImages/1080p/<seq>/...
        Annotations/480p/<seq>/00000.png  grayscale, 0 background / 255 object

``root`` may be such a tree, or a folder holding one as ``DAVIS/``, ``trainval/`` or
``test-dev/`` (the first whose split file exists is used).

Protocol, as SAM-PT evaluates (``sam_pt/vos_eval``):

* Input frames come from ``JPEGImages/Full-Resolution`` (else ``1080p``) when the sequence is
  there, else from ``480p`` (a warning is logged once per data module), and are resized so the
  longest side is ``longest_size`` (PIL bilinear, SAM's rounding); ``None`` keeps them.
* Predictions are made at the 480p annotation size: ``VideoItem.output_size``.
* Query masks at input resolution are the annotation of the frames' own resolution when it
  exists (``Annotations/Full-Resolution``, as SAM-PT reads them) and otherwise the 480p
  annotation, resized with nearest neighbour; ``ObjectQuery.output_mask`` is the 480p mask.
* Objects: every id in the annotations except 0 (background) and 255 (void). An object's query
  frame is the first frame whose annotation contains its id. On the official data this is the
  first frame for every object (test-dev ships only first-frame annotations and val objects are
  all present in frame 0); an object that first appears later (synthetic data) gets its later
  frame as query frame instead of being dropped.
* D16 evaluates one object per sequence: on a DAVIS 2017 tree, whose 2016 sequences are stored
  with several object ids, all objects are merged into object 1 (the DAVIS 2016 ground truth is
  the union of the objects); 0/255 grayscale masks become 0/1.
* ``VideoItem.ground_truth`` holds the 480p index masks when every frame is annotated (val),
  else None (test-dev).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from sampt.errors import DatasetLayoutError
from sampt.io.png import PNG_RULE
from sampt.video import ObjectQuery, VideoItem, davis_palette

from .base import VideoDataModule, VideoDataset
from .io import (image_size, list_frame_files, read_annotation_pngs, read_rgb, resize_frames_longest_side,
                 resize_masks_nearest)

logger = logging.getLogger(__name__)

#: Input frame resolutions preferred over 480p, in order (SAM-PT's order).
HIGH_RESOLUTION_DIRS = ("Full-Resolution", "1080p")
#: The resolution predictions are evaluated and saved at.
OUTPUT_RESOLUTION_DIR = "480p"
#: Annotation value meaning "not evaluated"; never an object.
VOID_INDEX = 255
#: Sub-folders of ``root`` that may hold the DAVIS tree (official zips extract to ``DAVIS/``).
ROOT_SUBFOLDERS = ("DAVIS", "trainval", "test-dev")

_FRAME_TREE = """\
  JPEGImages/480p/<sequence>/00000.jpg, 00001.jpg, ...
  JPEGImages/Full-Resolution/<sequence>/00000.jpg, ...   (optional; preferred input frames)"""

D17_LAYOUT = f"""\
expected a DAVIS 2017 tree:
<root>/
  ImageSets/2017/<split>.txt        one sequence name per line (val.txt, test-dev.txt)
{_FRAME_TREE}
  Annotations/480p/<sequence>/00000.png, ...   palette PNGs, pixel value = object id (grayscale ids too)
(<root> may also be a folder containing it as DAVIS/, trainval/ or test-dev/)"""

D16_LAYOUT = f"""\
expected a DAVIS 2017 tree with the 2016 sequence list, or the DAVIS 2016 release:
<root>/
  ImageSets/2016/<split>.txt        (DAVIS 2017 tree) one sequence name per line, or
  ImageSets/480p/<split>.txt        (DAVIS 2016 release) lines like
                                    '/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png'
{_FRAME_TREE}
  JPEGImages/1080p/<sequence>/...   (DAVIS 2016 release; preferred input frames)
  Annotations/480p/<sequence>/00000.png, ...   0/255 grayscale (2016) or palette PNGs (2017)
(<root> may also be a folder containing it as DAVIS/, trainval/ or test-dev/)"""


def parse_sequence_list(path: Path) -> list[str]:
    """Sequence names of a DAVIS ImageSets file, in file order, without duplicates.

    Accepts both formats: one sequence name per line (DAVIS 2017 ``ImageSets/2017|2016``) and
    the DAVIS 2016 release's frame lists (``/JPEGImages/480p/<seq>/<frame>.jpg <annotation>``).
    """
    names: list[str] = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        first = tokens[0]
        if "/" in first:
            parts = [p for p in first.split("/") if p]
            if "JPEGImages" not in parts or len(parts) < parts.index("JPEGImages") + 3:
                raise DatasetLayoutError(
                    f"{path}:{line_number}: cannot read a sequence name from {line.strip()!r}; expected a "
                    f"sequence name or a frame path like '/JPEGImages/480p/<sequence>/00000.jpg'")
            name = parts[parts.index("JPEGImages") + 2]
        else:
            name = first
        if name not in names:
            names.append(name)
    return names


@dataclass(frozen=True)
class DavisSequence:
    """One indexed sequence.

    Attributes:
        name: sequence name.
        frame_paths: the input frame files, sorted, already cut to ``max_frames``.
        resolution: the ``JPEGImages`` sub-folder the frames come from (``Full-Resolution``,
            ``1080p`` or ``480p``).
    """

    name: str
    frame_paths: tuple[Path, ...]
    resolution: str


class DavisDataset(VideoDataset):
    """Reads one DAVIS sequence per item (see the module docstring for the protocol).

    Args:
        data_root: the DAVIS tree (the folder holding ``ImageSets``).
        sequences: the indexed sequences, in item order.
        dataset_name: ``"D16"`` or ``"D17"`` (goes to ``VideoItem.meta``).
        split: split name (goes to ``VideoItem.meta``).
        longest_size: resize input frames so the longest side is this (None: original size).
        merge_objects: merge every object into object 1 (DAVIS 2016 protocol).
    """

    def __init__(self, data_root: Path, sequences: Sequence[DavisSequence], dataset_name: str, split: str,
                 longest_size: Optional[int], merge_objects: bool):
        self.data_root = data_root
        self.sequences = list(sequences)
        self.dataset_name = dataset_name
        self.split = split
        self.longest_size = longest_size
        self.merge_objects = merge_objects

    @property
    def video_names(self) -> list[str]:
        return [s.name for s in self.sequences]

    def _read_annotations(self, paths: Sequence[Path]) -> tuple[list[torch.Tensor], Optional[list[int]]]:
        """One folder's annotation PNGs with the one PNG rule (``sampt.io.png``), merged for D16."""
        masks, palette = read_annotation_pngs(paths)
        if self.merge_objects:
            masks = [((mask > 0) & (mask != VOID_INDEX)).to(torch.uint8) for mask in masks]
        return masks, palette

    def load(self, index: int) -> VideoItem:
        sequence = self.sequences[index]
        frame_names = [p.stem for p in sequence.frame_paths]

        # Resize frame by frame: full-resolution DAVIS frames go up to 4K, too big to hold per video.
        frames = []
        source_size: Optional[tuple[int, int]] = None
        for path in sequence.frame_paths:
            frame = read_rgb(path)
            size = (int(frame.shape[-2]), int(frame.shape[-1]))
            if source_size is None:
                source_size = size
            elif size != source_size:
                raise DatasetLayoutError(
                    f"frame {path} is {size} (H, W) but {sequence.frame_paths[0]} is {source_size}: "
                    f"all frames of a sequence must have one size")
            frames.append(resize_frames_longest_side(frame[None], self.longest_size)[0])
        video = torch.stack(frames)  # (T, 3, H, W) uint8
        input_size = (int(video.shape[-2]), int(video.shape[-1]))

        annotation_dir = self.data_root / "Annotations" / OUTPUT_RESOLUTION_DIR / sequence.name
        annotations: dict[int, torch.Tensor] = {}  # frame index -> (h, w) uint8
        paths = {t: annotation_dir / f"{stem}.png" for t, stem in enumerate(frame_names)}
        paths = {t: path for t, path in paths.items() if path.is_file()}
        masks, palette = self._read_annotations(list(paths.values()))
        first_annotation: Optional[Path] = None
        for (t, path), mask in zip(paths.items(), masks):
            if first_annotation is None:
                first_annotation = path
            elif mask.shape != annotations[min(annotations)].shape:
                raise DatasetLayoutError(
                    f"annotation {path} is {tuple(mask.shape)} (H, W) but {first_annotation} is "
                    f"{tuple(annotations[min(annotations)].shape)}: all annotations of a sequence must have one size")
            annotations[t] = mask
        if first_annotation is None:
            raise DatasetLayoutError(
                f"no annotation for any of the {len(frame_names)} frames of sequence {sequence.name!r} in "
                f"{annotation_dir} (expected <frame name>.png, e.g. {frame_names[0]}.png)")
        output_size = tuple(annotations[min(annotations)].shape)
        self._check_output_size(sequence, output_size, first_annotation, source_size)

        objects = self._objects(sequence, frame_names, annotations, source_size, input_size)
        if not objects:
            raise DatasetLayoutError(
                f"the annotations of sequence {sequence.name!r} in {annotation_dir} contain no object "
                f"(only background 0 / void {VOID_INDEX}); {PNG_RULE}")

        if len(annotations) == len(frame_names):
            ground_truth = torch.stack([annotations[t] for t in range(len(frame_names))])
        else:
            ground_truth = None
            if len(annotations) > 1:
                logger.warning("%s %s: %d of %d frames of %r are annotated; no ground truth is returned",
                               self.dataset_name, self.split, len(annotations), len(frame_names), sequence.name)

        if self.merge_objects or palette is None:
            palette = davis_palette()
        return VideoItem(
            name=sequence.name,
            frames=video,
            frame_names=frame_names,
            objects=objects,
            output_size=(int(output_size[0]), int(output_size[1])),
            ground_truth=ground_truth,
            palette=palette,
            meta={
                "dataset": self.dataset_name,
                "split": self.split,
                "root": str(self.data_root),
                "frame_dir": str(sequence.frame_paths[0].parent),
                "frame_resolution": sequence.resolution,
                "annotation_dir": str(annotation_dir),
                "original_size": (int(source_size[0]), int(source_size[1])),
            },
        )

    def _check_output_size(self, sequence: DavisSequence, output_size: tuple, annotation: Path,
                           source_size: tuple) -> None:
        frame = sequence.frame_paths[0]
        if sequence.resolution == OUTPUT_RESOLUTION_DIR:
            frame_size = source_size
        else:
            frame = self.data_root / "JPEGImages" / OUTPUT_RESOLUTION_DIR / sequence.name / frame.name
            if not frame.is_file():
                return  # only the high-resolution frames were downloaded: nothing to compare with
            frame_size = image_size(frame)
        if tuple(frame_size) != tuple(output_size):
            raise DatasetLayoutError(
                f"annotation {annotation} is {tuple(output_size)} (H, W) but frame {frame} is "
                f"{tuple(frame_size)}: 480p annotations and 480p frames must have the same size")

    def _objects(self, sequence: DavisSequence, frame_names: list[str], annotations: dict[int, torch.Tensor],
                 source_size: tuple, input_size: tuple[int, int]) -> list[ObjectQuery]:
        query_frames: dict[int, int] = {}  # object id -> first frame index containing it
        for t in sorted(annotations):
            for object_id in torch.unique(annotations[t]).tolist():
                if object_id not in (0, VOID_INDEX) and object_id not in query_frames:
                    query_frames[object_id] = t

        high_res_cache: dict[int, Optional[torch.Tensor]] = {}
        objects = []
        for object_id in sorted(query_frames):
            t = query_frames[object_id]
            output_mask = annotations[t] == object_id
            source_mask = None
            if sequence.resolution != OUTPUT_RESOLUTION_DIR:
                if t not in high_res_cache:
                    high_res_cache[t] = self._high_res_annotation(sequence, frame_names[t], source_size)
                if high_res_cache[t] is not None:
                    source_mask = high_res_cache[t] == object_id
                    if not source_mask.any():
                        source_mask = None  # inconsistent high-res annotation: use the 480p one
            if source_mask is None:
                source_mask = output_mask
            mask = resize_masks_nearest(source_mask, input_size)
            if not mask.any():
                logger.warning("%s %s: object %d of %r vanishes when its query mask (frame %s) is resized to %s",
                               self.dataset_name, self.split, object_id, sequence.name, frame_names[t], input_size)
            objects.append(ObjectQuery(object_id=int(object_id), query_frame=int(t), mask=mask,
                                       output_mask=output_mask))
        return objects

    def _high_res_annotation(self, sequence: DavisSequence, stem: str, source_size: tuple) -> Optional[torch.Tensor]:
        path = self.data_root / "Annotations" / sequence.resolution / sequence.name / f"{stem}.png"
        if not path.is_file():
            return None
        indices = self._read_annotations([path])[0][0]
        if tuple(indices.shape) != tuple(source_size):
            raise DatasetLayoutError(
                f"annotation {path} is {tuple(indices.shape)} (H, W) but the frames in "
                f"{sequence.frame_paths[0].parent} are {tuple(source_size)}")
        return indices


class _DavisDataModule(VideoDataModule):
    """Shared indexing of the DAVIS data modules; ``D16`` and ``D17`` set the family specifics."""

    dataset_name: str = ""
    layout_help: str = ""
    merge_objects: bool = False

    def __init__(self, root: str, split: str, longest_size: Optional[int], vid_ids: Optional[list[str]],
                 max_videos: Optional[int], max_frames: Optional[int], num_workers: int):
        super().__init__(num_workers=num_workers, max_videos=max_videos, max_frames=max_frames)
        for option, value in (("longest_size", longest_size), ("max_videos", max_videos), ("max_frames", max_frames)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{self.dataset_name}: {option} must be a positive integer or null, got {value!r}")
        if num_workers < 0:
            raise ValueError(f"{self.dataset_name}: num_workers must be >= 0, got {num_workers!r}")
        self.root = root
        self.split = split
        self.longest_size = longest_size
        self.vid_ids = list(vid_ids) if vid_ids is not None else None

    def split_file_candidates(self, tree: Path) -> list[Path]:
        """Where the split file may be inside one DAVIS tree, in order of preference."""
        raise NotImplementedError

    def _locate_split_file(self, root: Path) -> tuple[Path, Path]:
        trees = [root] + [root / sub for sub in ROOT_SUBFOLDERS if (root / sub).is_dir()]
        tried = []
        for tree in trees:
            for candidate in self.split_file_candidates(tree):
                if candidate.is_file():
                    return tree, candidate
                tried.append(candidate)
        # Only the candidate trees' ImageSets: a recursive search could crawl a huge data folder.
        available = sorted(str(p.relative_to(root)) for tree in trees for p in tree.glob("ImageSets/*/*.txt"))[:10]
        raise DatasetLayoutError(
            f"{self.dataset_name}: no split file for split {self.split!r} under {root}; looked for "
            + ", ".join(str(p) for p in tried)
            + (f"; split files present: {', '.join(available)}" if available else "; no ImageSets/*/*.txt found")
            + f"\n{self.layout_help}")

    def _frame_source(self, tree: Path, name: str) -> tuple[Path, str]:
        for resolution in HIGH_RESOLUTION_DIRS + (OUTPUT_RESOLUTION_DIR,):
            directory = tree / "JPEGImages" / resolution / name
            if directory.is_dir():
                return directory, resolution
        raise DatasetLayoutError(
            f"{self.dataset_name}: no frame folder for sequence {name!r}: {tree / 'JPEGImages' / OUTPUT_RESOLUTION_DIR / name} "
            f"does not exist (nor a {' / '.join(HIGH_RESOLUTION_DIRS)} one)\n{self.layout_help}")

    def build_dataset(self) -> DavisDataset:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DatasetLayoutError(f"{self.dataset_name}: dataset root {root} does not exist\n{self.layout_help}")
        tree, split_file = self._locate_split_file(root)
        names = sorted(parse_sequence_list(split_file))
        if not names:
            raise DatasetLayoutError(f"{self.dataset_name}: split file {split_file} lists no sequence")

        if self.vid_ids is not None:
            unknown = [v for v in self.vid_ids if v not in names]
            if unknown:
                raise DatasetLayoutError(
                    f"{self.dataset_name}: vid_ids {unknown} are not in split {self.split!r} ({split_file}, "
                    f"{len(names)} sequences, e.g. {', '.join(names[:5])})")
            wanted = set(self.vid_ids)
            names = [n for n in names if n in wanted]
        if self.max_videos is not None:
            names = names[:self.max_videos]

        sequences = []
        for name in names:
            directory, resolution = self._frame_source(tree, name)
            frame_paths = list_frame_files(directory)
            if not frame_paths:
                raise DatasetLayoutError(f"{self.dataset_name}: frame folder {directory} holds no .jpg/.png frame")
            if self.max_frames is not None:
                frame_paths = frame_paths[:self.max_frames]
            annotation_dir = tree / "Annotations" / OUTPUT_RESOLUTION_DIR / name
            if not annotation_dir.is_dir():
                raise DatasetLayoutError(
                    f"{self.dataset_name}: annotation folder {annotation_dir} does not exist\n{self.layout_help}")
            sequences.append(DavisSequence(name, tuple(frame_paths), resolution))

        low_res = [s.name for s in sequences if s.resolution == OUTPUT_RESOLUTION_DIR]
        if low_res:
            logger.warning(
                "%s %s: no JPEGImages/%s frames under %s for %d of %d sequences (e.g. %s); reading 480p frames "
                "instead, unlike SAM-PT, which reads full-resolution frames (results will differ)",
                self.dataset_name, self.split, " or ".join(HIGH_RESOLUTION_DIRS), tree, len(low_res),
                len(sequences), ", ".join(low_res[:3]))
        return DavisDataset(tree, sequences, self.dataset_name, self.split, self.longest_size, self.merge_objects)

    def video_lengths(self) -> list[int]:
        """Frame counts per video (after ``max_frames``), from the file listing, for rank balancing."""
        return [len(s.frame_paths) for s in self.dataset.sequences]


class D16(_DavisDataModule):
    """DAVIS 2016 semi-supervised VOS (one object per sequence).

    Args:
        root: a DAVIS 2017 tree (uses ``ImageSets/2016/<split>.txt``) or the DAVIS 2016 release
            (uses ``ImageSets/480p/<split>.txt``); see the module docstring for the layouts.
        split: the split file's name, ``"val"``.
        longest_size: resize input frames so that their longest side is this many pixels (SAM-PT:
            1024); null keeps the original size. Predictions are always at the 480p size.
        vid_ids: evaluate only these sequences (names as in the split file).
        max_videos: keep only the first ``max_videos`` sequences (after ``vid_ids``).
        max_frames: keep only the first ``max_frames`` frames of each sequence.
        num_workers: DataLoader worker processes.
    """

    dataset_name = "D16"
    layout_help = D16_LAYOUT
    merge_objects = True

    def __init__(self, root: str, split: str = "val", longest_size: Optional[int] = 1024,
                 vid_ids: Optional[list[str]] = None, max_videos: Optional[int] = None,
                 max_frames: Optional[int] = None, num_workers: int = 0):
        super().__init__(root, split, longest_size, vid_ids, max_videos, max_frames, num_workers)
        self.save_hyperparameters()

    def split_file_candidates(self, tree: Path) -> list[Path]:
        return [tree / "ImageSets" / "2016" / f"{self.split}.txt",
                tree / "ImageSets" / OUTPUT_RESOLUTION_DIR / f"{self.split}.txt"]


class D17(_DavisDataModule):
    """DAVIS 2017 semi-supervised VOS (multiple objects, palette PNG annotations).

    Args:
        root: a DAVIS 2017 tree with ``ImageSets/2017/<split>.txt`` (the trainval download for
            ``val``, the test-dev download for ``test-dev``), or a folder holding them as
            ``trainval/`` and ``test-dev/``; see the module docstring for the layout.
        split: ``"val"`` (ground truth for every frame) or ``"test-dev"`` (first-frame masks only).
        longest_size: resize input frames so that their longest side is this many pixels (SAM-PT:
            1024); null keeps the original size. Predictions are always at the 480p size.
        vid_ids: evaluate only these sequences (names as in the split file).
        max_videos: keep only the first ``max_videos`` sequences (after ``vid_ids``).
        max_frames: keep only the first ``max_frames`` frames of each sequence.
        num_workers: DataLoader worker processes.
    """

    dataset_name = "D17"
    layout_help = D17_LAYOUT
    merge_objects = False

    def __init__(self, root: str, split: str = "val", longest_size: Optional[int] = 1024,
                 vid_ids: Optional[list[str]] = None, max_videos: Optional[int] = None,
                 max_frames: Optional[int] = None, num_workers: int = 0):
        super().__init__(root, split, longest_size, vid_ids, max_videos, max_frames, num_workers)
        self.save_hyperparameters()

    def split_file_candidates(self, tree: Path) -> list[Path]:
        return [tree / "ImageSets" / "2017" / f"{self.split}.txt"]
