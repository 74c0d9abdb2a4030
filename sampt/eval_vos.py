"""`sampt eval`: J&F of a results folder against a ground-truth folder: exact, fast, every layout.

Layouts (detected per sequence folder, each side on its own):

* index PNGs: ``<root>/<sequence>/<frame>.png``, one PNG per frame holding every object;
* per-object PNGs (SA-V): ``<root>/<sequence>/<object id>/<frame>.png``, one binary PNG per
  object and frame, objects may overlap. A result folder holding both (``sampt test`` with
  ``save_object_pngs``) is read as index PNGs.

PNGs are read with the one rule of :mod:`sampt.io.png` (:data:`~sampt.io.png.PNG_RULE`).
Frames are matched by file stem. The ground truth's frames are the annotated frames: only
frames with a ground-truth PNG are scored (sparse annotations: YouTube-VOS / MOSE train every
5th frame, SA-V 6 of 24 fps), and the protocol's first/last skip applies to the *annotated*
frames. Result frames that have no ground truth are never read.

Protocols (``--dataset``, each a published evaluation script):

* ``davis`` (default): DAVIS 2017 semi-supervised, ``davis2017-evaluation``
  (``evaluation_method.py --task semi-supervised``): the objects are the ground truth's ids (any
  annotated frame; 0 background, 255 void = background); every object is scored on every
  annotated frame but the first and the last (J = F = 1 where the object and its result are
  both empty); each object is one entry of the means.
* ``sav``: SA-V val/test, SAM 2's ``sav_dataset/sav_evaluator.py`` (adapted from
  ``vos-benchmark``): per object, the frames of its ground-truth folder but the first and the
  last, counted from the first frame in which the object appears in the ground truth or in the
  result (frames before are not scored); per-object ground truth expected, any non-zero pixel
  is the object.
* ``lvos``: LVOS, ``lvos-evaluation`` (``evaluation_method.py``): per object, the frames
  ``start, start+5, ... < end`` of its ``frame_range`` in the split's meta file
  (``--meta valid_meta.json``; frames named ``%08d``), the first one included, no skip.

Speed: sequences are scored in parallel processes (``--workers``, results identical to one
worker); each ground-truth and result PNG is decoded once, and every object of a frame is
scored from that one decode on the crop around its masks (:class:`FrameScorer`). No torch.

Reports: a missing result sequence or frame is an error naming it (``--strict``: listing every
missing path); result ids that are no object of the ground truth are reported (warning and
``results.json``; an error with ``--strict``), never silently dropped.

Outputs (atomically, into ``--out``, default ``--pred``), by :func:`sampt.io.results.write_vos_results`:
the official 3-decimal ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``,
``per-object_results-<split>.csv`` (vos-benchmark's table) and a full-precision ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from sampt.errors import DatasetLayoutError, InputFormatError
from sampt.io.png import PNG_RULE, VOID_ID, IndexSequenceReader, read_index_pngs, read_object_png
from sampt.io.results import OFFICIAL_FLOAT_FORMAT, format_global_csv, format_per_sequence_csv  # noqa: F401

__all__ = ["OFFICIAL_FLOAT_FORMAT", "PROTOCOLS", "Protocol", "evaluate_folders", "format_global_csv",
           "format_per_sequence_csv", "list_sequences", "main", "read_sequence_masks", "score_sequence"]
from sampt.metrics.functional_jf import (
    DEFAULT_BOUND_TH,
    FrameScorer,
    ObjectResult,
    global_table,
)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """What a benchmark scores.

    Attributes:
        name: the ``--dataset`` value.
        skip_first_and_last: drop each object's first and last annotated frame.
        from_first_appearance: an object's frames count from the first one in which it appears
            in the ground truth or the result (vos-benchmark / SA-V).
        needs_meta: frames per object come from a meta file (LVOS).
        rule: the rule in words, with its source (shown in ``--help``).
    """

    name: str
    skip_first_and_last: bool
    from_first_appearance: bool
    needs_meta: bool
    rule: str


PROTOCOLS: dict[str, Protocol] = {
    "davis": Protocol(
        "davis", True, False, False,
        "DAVIS 2017 semi-supervised, as davis2017-evaluation's evaluation_method.py: objects are the "
        "ground truth's ids, each scored on every annotated frame but the first and the last"),
    "sav": Protocol(
        "sav", True, True, False,
        "SA-V val/test, as SAM 2's sav_dataset/sav_evaluator.py (from vos-benchmark): per object, the "
        "frames of its ground-truth folder but the first and the last, counted from the first frame where "
        "the object appears in the ground truth or the result"),
    "lvos": Protocol(
        "lvos", False, False, True,
        "LVOS, as lvos-evaluation's evaluation_method.py: per object, frames start, start+5, ... < end "
        "of its frame_range in --meta (<split>_meta.json), no first/last skip"),
}


# -------------------------------------------------------------------------------------- layout
def _list_pngs(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the (non-hidden) PNG files of a folder."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.lower().endswith(".png") and not entry.name.startswith(".") and entry.is_file():
                found[entry.name[:-4]] = Path(entry.path)
    return dict(sorted(found.items()))


def _object_folders(folder: Path, what: str, strict_names: bool) -> dict[int, Path]:
    """``{object id: folder}`` of the per-object sub-folders (named by their integer id)."""
    found: dict[int, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if not entry.name.isdigit():
                if strict_names:
                    raise DatasetLayoutError(
                        f"{what} folder {entry.path} is not named by an object id; per-object layouts are "
                        "<video>/<object id>/<frame>.png with integer ids (e.g. 000, 001 as in SA-V)")
                continue
            object_id = int(entry.name)
            if object_id in found:
                raise DatasetLayoutError(f"{what} folders {found[object_id]} and {entry.path} both name object {object_id}")
            found[object_id] = Path(entry.path)
    return found


@dataclass
class Side:
    """The PNGs of one sequence on one side (ground truth or results).

    Attributes:
        folder: the sequence folder.
        frames: index layout: ``{stem: path}``; None for per-object layouts.
        objects: per-object layout: ``{object id: {stem: path}}``; None for index layouts.
        object_dirs: per-object layout: ``{object id: its folder}``.
    """

    folder: Path
    frames: Optional[dict[str, Path]] = None
    objects: Optional[dict[int, dict[str, Path]]] = None
    object_dirs: Optional[dict[int, Path]] = None

    @property
    def per_object(self) -> bool:
        return self.objects is not None

    def stems(self) -> list[str]:
        if self.frames is not None:
            return list(self.frames)
        return sorted({stem for frames in self.objects.values() for stem in frames})


def scan_side(folder: Path, what: str, ground_truth: bool) -> Side:
    """Detect the layout of one sequence folder (index PNGs win over per-object folders)."""
    frames = _list_pngs(folder)
    if frames:
        return Side(folder, frames=frames)
    objects = _object_folders(folder, what, strict_names=ground_truth)
    if not objects:
        raise DatasetLayoutError(
            f"{what} folder {folder} holds no PNG file and no per-object folder (expected "
            f"<sequence>/<frame>.png or <sequence>/<object id>/<frame>.png)")
    return Side(folder, objects={object_id: _list_pngs(path) for object_id, path in objects.items()},
                object_dirs=objects)


def list_sequences(gt_dir: Path) -> list[str]:
    """Sorted names of the sub-folders of ``gt_dir`` (one per sequence)."""
    return sorted(p.name for p in Path(gt_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------- tasks
@dataclass
class SequenceTask:
    """Everything a worker needs to score one sequence (plain, picklable data).

    Attributes:
        name: the sequence.
        gt, pred: the two sides.
        scored: stems scored for every object (index / shared frames), in order.
        object_frames: ``{object id: stems}`` when each object has its own frames (per-object
            ground truth under ``sav``, ``lvos``); the objects are then exactly these.
        id_stems: ground-truth stems read for their ids only (the skipped first/last frames).
        from_first_appearance: see :class:`Protocol`.
        bound_th: boundary tolerance.
    """

    name: str
    gt: Side
    pred: Side
    scored: list[str]
    object_frames: Optional[dict[int, list[str]]]
    id_stems: list[str]
    from_first_appearance: bool
    bound_th: float

    def cost(self) -> int:
        frames = self.scored if self.object_frames is None else [s for v in self.object_frames.values() for s in v]
        return len(frames)


@dataclass
class SequenceScore:
    """A worker's answer for one sequence.

    Attributes:
        rows: per-object rows (``ObjectResult.as_row()``), by object id.
        unknown_ids: result ids that are no ground-truth object: ``{id: first file}``.
        notes: warnings for the user (objects without a frame to score, ...).
    """

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    unknown_ids: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _skip(stems: list[str], skip_first_and_last: bool) -> list[str]:
    return stems[1:-1] if skip_first_and_last else list(stems)


def _load_meta(meta_path: Optional[PathLike]) -> dict[str, dict[int, list[str]]]:
    """LVOS meta file -> ``{video: {object id: frame stems}}``."""
    if meta_path is None:
        raise InputFormatError("--dataset lvos needs --meta <split>_meta.json (LVOS's per-object frame ranges)")
    path = Path(meta_path)
    try:
        videos = json.loads(path.read_text(encoding="utf-8"))["videos"]
        result = {}
        for video, info in videos.items():
            result[video] = {}
            for object_id, obj in info["objects"].items():
                frame_range = obj["frame_range"]
                start, end = int(frame_range["start"]), int(frame_range["end"])
                result[video][int(object_id)] = [f"{i:08d}" for i in range(start, end, 5)]
    except FileNotFoundError as exc:
        raise DatasetLayoutError(f"LVOS meta file {path} does not exist") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputFormatError(
            f"LVOS meta file {path} is not in the expected format "
            '{"videos": {<video>: {"objects": {<id>: {"frame_range": {"start": N, "end": M}}}}}}: '
            f"{type(exc).__name__}: {exc}") from exc
    return result


def plan_sequence(
    name: str,
    gt_dir: Path,
    pred_dir: Path,
    protocol: Protocol,
    skip_first_and_last: bool,
    bound_th: float,
    meta: Optional[Mapping[int, list[str]]] = None,
) -> tuple[Optional[SequenceTask], list[str], list[str]]:
    """Lay out one sequence: ``(task or None, missing result paths, notes)``.

    The task is None when nothing can be scored (a note says why) or results are missing.
    """
    gt_folder, pred_folder = gt_dir / name, pred_dir / name
    if not gt_folder.is_dir():
        raise DatasetLayoutError(f"ground-truth sequence folder {gt_folder} does not exist")
    gt = scan_side(gt_folder, "ground-truth", ground_truth=True)
    if not pred_folder.is_dir():
        return None, [str(pred_folder)], []

    object_frames: Optional[dict[int, list[str]]] = None
    id_stems: list[str] = []
    notes: list[str] = []
    if meta is not None:
        object_frames = {k: _skip(list(v), skip_first_and_last) for k, v in sorted(meta.items())}
        scored = sorted({s for stems in object_frames.values() for s in stems})
        available = set(gt.stems()) if not gt.per_object else None
        for object_id, stems in object_frames.items():
            have = available if available is not None else set(gt.objects.get(object_id, {}))
            absent = [s for s in stems if s not in have]
            if absent:
                raise DatasetLayoutError(
                    f"ground truth of {name!r} object {object_id}: frame {absent[0]}.png of its meta frame_range "
                    f"is not in {gt_folder} ({len(absent)} missing)")
    elif gt.per_object and protocol.from_first_appearance:
        object_frames = {k: _skip(list(v), skip_first_and_last) for k, v in gt.objects.items()}
        scored = sorted({s for stems in object_frames.values() for s in stems})
    else:
        stems = gt.stems()
        scored = _skip(stems, skip_first_and_last)
        id_stems = [s for s in stems if s not in set(scored)] if not gt.per_object else []
    if object_frames is not None:
        for object_id in [k for k, v in object_frames.items() if not v]:
            notes.append(f"{name}: object {object_id} has no annotated frame to score "
                         f"({'after dropping the first and last' if skip_first_and_last else 'in its range'}); "
                         "it is not scored")
            del object_frames[object_id]
        if not object_frames:
            return None, [], notes
    elif not scored:
        notes.append(f"{name}: {len(gt.stems())} annotated frame(s); "
                     f"{'the first and last are skipped, ' if skip_first_and_last else ''}none left to score; "
                     "sequence not scored")
        return None, [], notes

    pred = scan_side(pred_folder, "result", ground_truth=False)
    missing: list[str] = []
    if pred.per_object:
        wanted: dict[int, list[str]]
        if object_frames is not None:
            wanted = object_frames
        else:
            gt_ids = sorted(gt.objects) if gt.per_object else sorted(pred.objects)
            wanted = {k: scored for k in gt_ids}
        for object_id, stems in wanted.items():
            frames = pred.objects.get(object_id)
            if frames is None:
                # Objects known before reading (per-object ground truth, meta) must have a folder;
                # index ground truth's objects are known only once read: no folder = never predicted.
                if gt.per_object or meta is not None:
                    missing.append(f"{pred_folder / f'{object_id:03d}'} (folder of object {object_id})")
                continue
            missing.extend(str(pred.object_dirs[object_id] / f"{s}.png") for s in stems if s not in frames)
    else:
        missing = [str(pred_folder / f"{s}.png") for s in scored if s not in pred.frames]
    if missing:
        return None, missing, notes
    task = SequenceTask(name, gt, pred, scored, object_frames, id_stems, protocol.from_first_appearance, bound_th)
    return task, [], notes


# ------------------------------------------------------------------------------------- scoring
_EMPTY_IDS: frozenset = frozenset()


class _IndexFrames:
    """Index PNGs of one side, read through the one rule, frame by frame."""

    def __init__(self, side: Side, what: str, void: bool) -> None:
        self.side, self.void = side, void
        self.reader = IndexSequenceReader(what, InputFormatError)

    def read(self, stem: str) -> tuple[np.ndarray, frozenset]:
        ids, histogram = self.reader.read(self.side.frames[stem])
        present = np.flatnonzero(histogram[1:]) + 1
        if self.void and not self.reader.binary:
            present = present[present != VOID_ID]
        return ids, frozenset(present.tolist())


class _ObjectFrames:
    """Per-object PNGs of one side."""

    def __init__(self, side: Side, what: str) -> None:
        self.side, self.what = side, what

    def read(self, stem: str, object_id: int) -> Optional[np.ndarray]:
        frames = self.side.objects.get(object_id)
        if frames is None or stem not in frames:
            return None
        return read_object_png(frames[stem], InputFormatError, self.what)


def _size_error(pred_path: Path, pred_shape: tuple, gt_path: Path, gt_shape: tuple) -> InputFormatError:
    return InputFormatError(
        f"result {pred_path} is {pred_shape[1]}x{pred_shape[0]} (WxH) but the ground truth {gt_path} is "
        f"{gt_shape[1]}x{gt_shape[0]}; results must be at the ground truth's size")


def score_sequence(task: SequenceTask) -> SequenceScore:
    """Score one sequence (runs in a worker process)."""
    result = SequenceScore(task.name)
    gt, pred = task.gt, task.pred
    gt_index = _IndexFrames(gt, "ground truth", void=True) if not gt.per_object else None
    gt_objects = _ObjectFrames(gt, "ground truth") if gt.per_object else None
    pred_index = _IndexFrames(pred, "result", void=False) if not pred.per_object else None
    pred_objects = _ObjectFrames(pred, "result") if pred.per_object else None

    scored_set = set(task.scored)
    object_frames = task.object_frames
    per_stem_objects: Optional[dict[str, list[int]]] = None
    if object_frames is not None:
        per_stem_objects = {}
        for object_id, stems in object_frames.items():
            for stem in stems:
                per_stem_objects.setdefault(stem, []).append(object_id)

    scores: dict[str, dict[int, tuple[float, float]]] = {}
    present: dict[str, frozenset] = {}      # stem -> ids with pixels in ground truth or result
    gt_ids_at: dict[str, frozenset] = {}
    pred_ids_at: dict[str, frozenset] = {}
    scorer: Optional[FrameScorer] = None
    size_reference: Optional[tuple[tuple, Path]] = None
    empty: Optional[np.ndarray] = None

    def process(stem: str) -> None:
        nonlocal scorer, size_reference, empty
        gt_labels = None
        if gt_index is not None:
            gt_labels, gt_ids_at[stem] = gt_index.read(stem)
            shape, shape_path = gt_labels.shape, gt.frames[stem]
        if stem not in scored_set:
            return
        candidates = per_stem_objects[stem] if per_stem_objects is not None else None
        gt_masks: dict[int, np.ndarray] = {}
        if gt_objects is not None:
            for object_id in (candidates if candidates is not None else sorted(gt.objects)):
                mask = gt_objects.read(stem, object_id)
                if mask is not None:
                    gt_masks[object_id] = mask
                    shape, shape_path = mask.shape, gt.objects[object_id][stem]
            gt_ids_at[stem] = frozenset(k for k, m in gt_masks.items() if m.any())
            if not gt_masks:
                return  # no ground-truth file of any object at this stem (per-object, davis rule)
        if size_reference is None:
            size_reference = (shape, shape_path)
            scorer = FrameScorer(shape[0], shape[1], task.bound_th)
            empty = np.zeros(shape, dtype=bool)
        elif shape != size_reference[0]:
            raise InputFormatError(
                f"ground truth {shape_path} is {shape[1]}x{shape[0]} (WxH) but {size_reference[1]} is "
                f"{size_reference[0][1]}x{size_reference[0][0]}; all frames of a sequence must have one size")

        pred_labels = None
        pred_masks: dict[int, np.ndarray] = {}
        if pred_index is not None:
            pred_labels, pred_ids_at[stem] = pred_index.read(stem)
            if pred_labels.shape != shape:
                raise _size_error(pred.frames[stem], pred_labels.shape, shape_path, shape)
        else:
            wanted = candidates if candidates is not None else sorted(pred.objects)
            for object_id in wanted:
                mask = pred_objects.read(stem, object_id)
                if mask is not None:
                    if mask.shape != shape:
                        raise _size_error(pred.objects[object_id][stem], mask.shape, shape_path, shape)
                    pred_masks[object_id] = mask
            pred_ids_at[stem] = frozenset(k for k, m in pred_masks.items() if m.any())

        here = gt_ids_at.get(stem, _EMPTY_IDS) | pred_ids_at[stem]
        present[stem] = here
        if candidates is None:
            candidates = sorted(k for k in here if gt_objects is not None or k != VOID_ID)
        frame_scores = {}
        for object_id in candidates:
            g = (gt_labels == object_id) if gt_labels is not None else gt_masks.get(object_id, empty)
            p = (pred_labels == object_id) if pred_labels is not None else pred_masks.get(object_id, empty)
            frame_scores[object_id] = scorer.object(g, p)
        scores[stem] = frame_scores

    stream = sorted(set(task.scored) | set(task.id_stems))
    for stem in stream:
        process(stem)
    # The one rule is per sequence: frames read as binary 0/255 before a later PNG showed ids
    # are read again (rare: only grayscale id sequences that start with 0/255-only frames).
    stale_paths = set()
    for reader in (gt_index, pred_index):
        if reader is not None:
            stale_paths.update(reader.reader.take_stale())
    if stale_paths:
        for stem in stream:
            paths = [side.frames.get(stem) for side in (gt, pred) if not side.per_object]
            if any(p in stale_paths for p in paths):
                process(stem)

    # Objects and their per-frame values.
    if object_frames is not None:
        objects = {k: list(v) for k, v in object_frames.items()}
    else:
        if gt.per_object:
            gt_ids = sorted(gt.objects)
        else:
            gt_ids = sorted(set().union(*gt_ids_at.values())) if gt_ids_at else []
        objects = {k: list(task.scored) for k in gt_ids}
    all_pred_ids = sorted(set().union(*pred_ids_at.values())) if pred_ids_at else []
    for object_id in all_pred_ids:
        if object_id not in objects:
            first = next(s for s in sorted(pred_ids_at) if object_id in pred_ids_at[s])
            where = pred.frames[first] if not pred.per_object else pred.objects[object_id][first]
            result.unknown_ids[object_id] = str(where)
    if not objects:
        result.notes.append(f"{task.name}: the ground truth has no object (only 0 / {VOID_ID}); not scored")
        return result
    for object_id, stems in objects.items():
        if task.from_first_appearance:
            first = next((i for i, s in enumerate(stems) if object_id in present.get(s, _EMPTY_IDS)), None)
            if first is None or not any(object_id in gt_ids_at.get(s, _EMPTY_IDS) for s in stems):
                result.notes.append(f"{task.name}: object {object_id} never appears in the ground truth of its "
                                    "scored frames; not scored (as the SA-V evaluation cannot score it)")
                continue
            stems = stems[first:]
        values = np.array([scores.get(s, {}).get(object_id, (1.0, 1.0)) for s in stems], dtype=np.float64)
        values = values.reshape(-1, 2)
        row = ObjectResult.from_values(task.name, object_id, values[:, 0], values[:, 1]).as_row()
        result.rows.append(row)
    return result


# ---------------------------------------------------------------------------------- reading API
def read_sequence_masks(paths: Sequence[Path], what: str = "mask") -> np.ndarray:
    """Read the index PNGs of one sequence into ``(T, H, W) uint8`` object ids (the one rule).

    Raises:
        InputFormatError: unreadable file or a frame whose size differs from the first one.
    """
    masks, _ = read_index_pngs(paths, InputFormatError, what)  # checks that the sizes agree
    return np.stack(masks)


# --------------------------------------------------------------------------------- evaluation
def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def _run(tasks: list[SequenceTask], workers: int, progress: bool) -> Iterable[SequenceScore]:
    ordered = sorted(tasks, key=lambda t: -t.cost())  # longest first: the pool ends together
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="J&F", unit="seq", file=sys.stderr, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in ordered:
                yield score_sequence(task)
                if bar is not None:
                    bar.update()
            return
        import multiprocessing

        # fork is the cheapest start and safe for `sampt eval`, which never loads torch. A caller
        # that runs torch's and OpenCV's thread pools (sampt test, a test session) can deadlock
        # in forked children: its workers fork from a clean forkserver instead.
        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods and "torch" not in sys.modules:
            context = multiprocessing.get_context("fork")
        else:
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload(["sampt.eval_vos"])
        with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
            for score in pool.imap_unordered(score_sequence, ordered, chunksize=1):
                yield score
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()


def _missing_error(missing: list[str], strict: bool) -> DatasetLayoutError:
    if strict:
        listed = "\n".join(f"  {path}" for path in missing)
        return DatasetLayoutError(f"{len(missing)} result path(s) missing:\n{listed}")
    more = f" ({len(missing) - 1} more missing; --strict lists them all)" if len(missing) > 1 else ""
    return DatasetLayoutError(
        f"result {missing[0]} is missing{more}; results are <pred>/<sequence>/<frame>.png or "
        "<pred>/<sequence>/<object id>/<frame>.png for every scored ground-truth frame "
        "(pass --sequences to evaluate a subset)")


def evaluate_folders(
    gt_dir: PathLike,
    pred_dir: PathLike,
    out_dir: Optional[PathLike] = None,
    split_name: str = "val",
    skip_first_and_last: Optional[bool] = None,
    sequences: Optional[Sequence[str]] = None,
    *,
    dataset: str = "davis",
    workers: int = 1,
    strict: bool = False,
    bound_th: float = DEFAULT_BOUND_TH,
    meta: Optional[PathLike] = None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score a results folder against a ground-truth folder and write the result files.

    Args:
        gt_dir: folder of ground-truth sequence folders (see the module docstring for layouts).
        pred_dir: folder of result sequence folders.
        out_dir: where the result files go; None = ``pred_dir``.
        split_name: the ``<split>`` in ``global_results-<split>.csv``.
        skip_first_and_last: None = the protocol's; True/False overrides it.
        sequences: sequences to evaluate; None = every sub-folder of ``gt_dir``.
        dataset: protocol, a key of :data:`PROTOCOLS`.
        workers: processes scoring sequences in parallel (1 = in this process).
        strict: a missing result lists every missing path; result ids absent from the ground
            truth are an error instead of a warning.
        bound_th: boundary tolerance (fraction of the diagonal, or pixels when >= 1).
        meta: LVOS meta file (``--dataset lvos``).
        progress: show a progress bar over sequences (stderr).

    Returns:
        ``(global_row, per_object_rows)``: ``{"J&F-Mean": float, ...}`` in official column
        order, and per-object rows ``{"sequence", "object_id", "J-Mean", ..., "F-Decay"}``
        ordered by (sequence, object id).
    """
    from sampt.io.results import vos_protocol, write_vos_results

    if dataset not in PROTOCOLS:
        raise InputFormatError(f"unknown dataset protocol {dataset!r}; choose one of {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[dataset]
    skip = protocol.skip_first_and_last if skip_first_and_last is None else bool(skip_first_and_last)
    if not bound_th > 0:
        raise InputFormatError(f"bound_th must be > 0, got {bound_th!r}")
    gt_path, pred_path = Path(gt_dir), Path(pred_dir)
    if not gt_path.is_dir():
        raise DatasetLayoutError(f"ground-truth folder {gt_path} does not exist (expected <gt>/<sequence>/<frame>.png)")
    if not pred_path.is_dir():
        raise DatasetLayoutError(f"results folder {pred_path} does not exist (expected <pred>/<sequence>/<frame>.png)")
    meta_frames = _load_meta(meta) if protocol.needs_meta else None
    available = list_sequences(gt_path)
    if sequences is None:
        names = available
    else:
        names = list(dict.fromkeys(sequences))
        unknown = [n for n in names if n not in set(available)]
        if unknown:
            raise DatasetLayoutError(f"sequence(s) {unknown} have no folder in {gt_path} (it holds {len(available)})")
    if meta_frames is not None:
        names = [n for n in names if n in meta_frames]
    if not names:
        raise DatasetLayoutError(f"ground-truth folder {gt_path} holds no sequence folder (expected <gt>/<sequence>/<frame>.png)")

    tasks, missing, notes = [], [], []
    for name in names:
        task, lacking, sequence_notes = plan_sequence(
            name, gt_path, pred_path, protocol, skip, bound_th, None if meta_frames is None else meta_frames[name])
        notes.extend(sequence_notes)
        if lacking:
            missing.extend(lacking)
            if not strict:
                break
        elif task is not None:
            tasks.append(task)
    if missing:
        raise _missing_error(missing, strict)

    scores = sorted(_run(tasks, workers, progress), key=lambda s: s.name)
    rows = [row for score in scores for row in score.rows]
    unknown_ids = [{"sequence": s.name, "object_id": k, "first_file": path}
                   for s in scores for k, path in sorted(s.unknown_ids.items())]
    notes.extend(note for s in scores for note in s.notes)
    if unknown_ids:
        listed = "; ".join(f"{u['sequence']}: id {u['object_id']} (first in {u['first_file']})" for u in unknown_ids)
        message = (f"result ids that are no object of the ground truth ({len(unknown_ids)}): {listed}; "
                   "they are not scored")
        if strict:
            raise InputFormatError(message)
        notes.append(message)
    for note in notes:  # printed, not logged: a CLI's warnings must show once whatever the logging setup
        print(f"sampt eval: warning: {note}", file=sys.stderr)
    if not rows:
        raise InputFormatError(f"no sequence of {gt_path} has an object to score (see the warnings above)")

    extra: dict[str, Any] = {"protocol": vos_protocol(protocol.name, skip, bound_th)}
    if unknown_ids:
        extra["result_ids_not_in_ground_truth"] = unknown_ids
    if notes:
        extra["warnings"] = notes
    target = pred_path if out_dir is None else Path(out_dir)
    write_vos_results(target, rows, split_name, extra)
    global_row = global_table(rows)
    log.info("J&F of %d object(s) in %d sequence(s) (%s); results in %s", len(rows), len(scores), protocol.name, target)
    return global_row, rows


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``sampt eval``."""
    import textwrap

    def paragraph(text: str, indent: str = "") -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + "    ",
                             break_on_hyphens=False, break_long_words=False)

    epilog = "\n\n".join([
        paragraph("layouts: <root>/<sequence>/<frame>.png (index PNGs) or <root>/<sequence>/<object id>/<frame>.png "
                  "(per-object PNGs, SA-V; objects may overlap), detected per folder; only frames with a "
                  "ground-truth PNG are scored."),
        paragraph(f"PNG rule: {PNG_RULE}."),
        "protocols (--dataset):\n" + "\n".join(paragraph(f"{p.name}: {p.rule}", "  ") for p in PROTOCOLS.values()),
        paragraph("outputs (in --out): global_results-<split>.csv and per-sequence_results-<split>.csv (official, "
                  "3 decimals), per-object_results-<split>.csv (vos-benchmark's table), results.json (full "
                  "precision)."),
    ])
    parser = argparse.ArgumentParser(
        prog="sampt eval",
        description="J&F (region similarity and boundary F, semi-supervised protocols) of a results "
                    "folder against a ground-truth folder.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", required=True, help="ground-truth folder: <gt>/<sequence>/...")
    parser.add_argument("--pred", required=True, help="results folder: <pred>/<sequence>/...")
    parser.add_argument("--out", default=None, help="folder for the result files (default: --pred)")
    parser.add_argument("--split", default="val", help="split name used in the CSV file names (default: val)")
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="davis",
                        help="evaluation protocol (default: davis; see below)")
    parser.add_argument("--meta", default=None, help="LVOS <split>_meta.json with each object's frame_range "
                                                     "(--dataset lvos)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes scoring sequences in parallel (default: the CPU count, {_default_workers()} "
                             "here); results do not depend on it")
    parser.add_argument("--strict", action="store_true",
                        help="list every missing result path (default: stop at the first) and make result ids "
                             "absent from the ground truth an error (default: a warning)")
    parser.add_argument("--sequences", nargs="+", default=None, help="evaluate only these sequences")
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument("--no-skip-first-and-last", dest="skip_first_and_last", action="store_false", default=None,
                      help="also score the first and last annotated frame (not the davis / sav protocol)")
    skip.add_argument("--skip-first-and-last", dest="skip_first_and_last", action="store_true",
                      help="skip each object's first and last annotated frame (the davis / sav default)")
    parser.add_argument("--bound-th", type=float, default=DEFAULT_BOUND_TH,
                        help=f"boundary tolerance, fraction of the image diagonal (default {DEFAULT_BOUND_TH})")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """``sampt eval``: evaluate, write the result files, print the global table as CSV to stdout."""
    args = build_parser().parse_args(argv)
    workers = _default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise InputFormatError(f"--workers must be >= 1, got {workers}")
    global_row, _ = evaluate_folders(
        args.gt,
        args.pred,
        out_dir=args.out,
        split_name=args.split,
        skip_first_and_last=args.skip_first_and_last,
        sequences=args.sequences,
        dataset=args.dataset,
        workers=workers,
        strict=args.strict,
        bound_th=args.bound_th,
        meta=args.meta,
        progress=args.progress,
    )
    protocol = PROTOCOLS[args.dataset]
    skip = protocol.skip_first_and_last if args.skip_first_and_last is None else args.skip_first_and_last
    # Protocol choices go with every result; stderr keeps stdout a clean CSV.
    print(f"sampt eval: dataset={args.dataset}, skip_first_and_last={skip}, bound_th={args.bound_th}, "
          f"workers={workers}; results in {args.out or args.pred}", file=sys.stderr)
    sys.stdout.write(format_global_csv(global_row))
    sys.stdout.flush()
    return global_row


if __name__ == "__main__":
    main()
