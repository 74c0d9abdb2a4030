"""A tiny synthetic dataset in the UVO layout, for tests and quick runs.

``write_uvo(root)`` writes ``<root>/UVOv1.0/VideoDenseSet/UVO_video_<split>_dense.json`` and the
frames under ``<root>/UVOv1.0/uvo_videos_dense_frames/<video folder>/<t>.png`` exactly as the
official download lays them out, with what makes UVO awkward: annotations as compressed RLE,
uncompressed RLE and polygons, objects absent on some frames (``null`` segmentation, area and
box), a crowd annotation, frame files whose names do not sort in video order (``0.png`` ...
``10.png``: the JSON's order is the video order), and annotations of different videos interleaved
in the file (so "the first four annotations" is not "the first video's annotations").

Frames are PNG (lossless): tests can compare exact pixels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sampt.writers import atomic_open

PathLike = Union[str, Path]

#: (folder, number of frames, height, width) of the default three videos.
DEFAULT_VIDEOS = (("vidA-0001", 4, 48, 64), ("vidB_0002", 3, 40, 40), ("vidC-0003", 11, 32, 48))


def _rle_json(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _box_mask(height: int, width: int, y0: int, x0: int, box_h: int, box_w: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, y0):max(0, y0 + box_h), max(0, x0):max(0, x0 + box_w)] = True
    return mask


def _polygon(y0: int, x0: int, box_h: int, box_w: int) -> list:
    """A rectangle as a COCO polygon (corners at pixel corners); pycocotools rasterises it to
    exactly the box ``[y0, y0 + h) x [x0, x0 + w)``."""
    x1, y1 = x0 + box_w, y0 + box_h
    return [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]


def _bbox(mask: np.ndarray) -> Optional[list]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def write_uvo(root: PathLike, split: str = "val", videos: Sequence[tuple] = DEFAULT_VIDEOS, seed: int = 0,
              version_folder: str = "UVOv1.0") -> tuple[dict, dict[int, np.ndarray]]:
    """Write a synthetic UVO tree under ``root``.

    Returns:
        ``(ground truth dict as written, {annotation id: (T, H, W) bool masks as drawn})``.


    Each video has moving rectangles: object 1 everywhere (compressed RLE), object 2 absent on the
    first and last frames (polygons elsewhere; ``null`` area and box where absent), object 3 an
    uncompressed-RLE object; the second video also has a crowd annotation (``iscrowd`` 1) covering
    its bottom rows. Annotation ids run 1, 2, ... in file order; the file lists them round-robin
    over the videos.

    Args:
        root: the dataset root (``<root>/UVOv1.0`` is created).
        split: ``train``, ``val`` or ``test`` (the JSON's name).
        videos: ``(folder, num_frames, height, width)`` per video.
        seed: colours and positions.
        version_folder: ``UVOv1.0`` or ``UVOv0.5``.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / version_folder
    frames_root = base / "uvo_videos_dense_frames"
    per_video_annotations: list[list[dict]] = []
    video_entries = []
    for index, (folder, num_frames, height, width) in enumerate(videos):
        video_id = index + 1
        ys, xs = np.mgrid[0:height, 0:width]
        background = np.stack([xs * 180 // max(1, width - 1), ys * 180 // max(1, height - 1),
                               np.full_like(xs, 70)], axis=-1).astype(np.uint8)
        frames = np.repeat(background[None], num_frames, axis=0)
        file_names = [f"{folder}/{t}.png" for t in range(num_frames)]
        objects = []
        for object_index in range(3):
            box_h, box_w = max(3, height // 4), max(3, width // 4)
            y0 = int(rng.integers(0, height - box_h))
            x0 = int(rng.integers(0, width - box_w - num_frames))
            colour = rng.integers(30, 256, size=3).astype(np.uint8)
            masks = np.zeros((num_frames, height, width), dtype=bool)
            present = np.ones(num_frames, dtype=bool)
            if object_index == 1 and num_frames >= 3:
                present[0] = present[-1] = False
            for t in range(num_frames):
                if present[t]:
                    masks[t] = _box_mask(height, width, y0, x0 + t, box_h, box_w)
                    frames[t][masks[t]] = colour
            objects.append((object_index, masks, present, (y0, x0, box_h, box_w)))
        annotations = []
        for object_index, masks, present, (y0, x0, box_h, box_w) in objects:
            segmentations, areas, bboxes = [], [], []
            for t in range(num_frames):
                if not present[t]:
                    segmentations.append(None)
                    areas.append(None)
                    bboxes.append(None)
                    continue
                if object_index == 0:
                    segmentations.append(_rle_json(masks[t]))
                elif object_index == 1:
                    segmentations.append(_polygon(y0, x0 + t, box_h, box_w))
                else:
                    segmentations.append(_uncompressed_rle(masks[t]))
                areas.append(int(masks[t].sum()))
                bboxes.append(_bbox(masks[t]))
            annotations.append({"video_id": video_id, "category_id": 1, "iscrowd": 0, "height": height,
                                "width": width, "length": 1, "segmentations": segmentations, "areas": areas,
                                "bboxes": bboxes, "_masks": masks})
        if index == 1:
            crowd = np.zeros((height, width), dtype=bool)
            crowd[-max(2, height // 8):] = True
            for t in range(num_frames):
                frames[t][crowd] = (frames[t][crowd] // 2)
            annotations.append({"video_id": video_id, "category_id": 1, "iscrowd": 1, "height": height,
                                "width": width, "length": 1,
                                "segmentations": [_rle_json(crowd) for _ in range(num_frames)],
                                "areas": [int(crowd.sum())] * num_frames,
                                "bboxes": [_bbox(crowd)] * num_frames,
                                "_masks": np.repeat(crowd[None], num_frames, axis=0)})
        per_video_annotations.append(annotations)
        for t, name in enumerate(file_names):
            path = frames_root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as handle:
                Image.fromarray(frames[t]).save(handle, format="PNG")
        video_entries.append({"id": video_id, "width": width, "height": height, "length": num_frames,
                              "file_names": file_names, "license": 1, "coco_url": "", "flickr_url": "",
                              "date_captured": ""})
    # Round-robin over videos, so that a file-order prefix mixes videos.
    ordered = []
    for position in range(max(len(a) for a in per_video_annotations)):
        for annotations in per_video_annotations:
            if position < len(annotations):
                ordered.append(annotations[position])
    drawn = {}
    for annotation_id, annotation in enumerate(ordered, start=1):
        annotation["id"] = annotation_id
        drawn[annotation_id] = annotation.pop("_masks")
    data = {
        "info": {"description": "synthetic UVO (sampt tests)"},
        "licenses": [],
        "categories": [{"supercategory": "object", "id": 1, "name": "object"}],
        "videos": video_entries,
        "annotations": ordered,
    }
    json_path = base / "VideoDenseSet" / f"UVO_video_{split}_dense.json"
    with atomic_open(json_path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return data, drawn
