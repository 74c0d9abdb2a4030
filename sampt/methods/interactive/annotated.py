"""The annotated video of a simulated annotator's work: one picture per correction.

Each picture is the corrected frame with the object's mask just after the correction (in the
object's colour), the ground truth's outline (white), the point that was added (filled; a cross for
a negative point) or removed (hollow), and a caption: object, interaction number, frame, action,
and the frame's IoU before and after.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from sampt.overlay import render_overlay, write_mp4

_CAPTION_HEIGHT = 22
#: Pictures narrower than this are enlarged (by a whole factor) so that the caption can be read.
MIN_WIDTH = 480
_OUTLINE = (255, 255, 255)


@dataclass
class RecordedCorrection:
    """One correction as the annotated video needs it: the entry of the correction history and
    the object's mask on that frame right after it (bit-packed: 1/8 of a byte per pixel)."""

    object_id: int
    entry: dict[str, Any]
    packed_mask: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, object_id: int, entry: dict[str, Any], mask: np.ndarray) -> "RecordedCorrection":
        mask = np.asarray(mask, dtype=bool)
        return cls(object_id, dict(entry), np.packbits(mask, axis=None), tuple(mask.shape))

    def mask(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.packed_mask, count=count).reshape(self.shape).astype(bool)


def caption(object_id: int, entry: dict[str, Any]) -> str:
    return (f"object {object_id}  interaction {entry['interaction']}  frame {entry['frame']}  "
            f"{entry['action']} {entry['type']}  IoU {entry['iou_before']:.2f} -> {entry['iou_after']:.2f}")


def correction_image(frame: np.ndarray, mask: np.ndarray, ground_truth: np.ndarray, object_id: int,
                     entry: dict[str, Any], palette: Optional[Sequence[int]] = None,
                     min_width: int = MIN_WIDTH) -> np.ndarray:
    """``(f*H + caption, f*W, 3) uint8``: ``frame (3, H, W) uint8`` annotated with one correction,
    enlarged by the smallest whole factor ``f`` that makes it ``min_width`` wide (nearest pixels)."""
    factor = max(1, -(-min_width // frame.shape[2]))
    if factor > 1:  # small working resolutions (tests, quick runs): a readable picture and caption
        frame = frame.repeat(factor, axis=1).repeat(factor, axis=2)
        mask = mask.repeat(factor, axis=0).repeat(factor, axis=1)
        ground_truth = ground_truth.repeat(factor, axis=0).repeat(factor, axis=1)
    # Pixel centres map to the centres of the enlarged pixels.
    x, y = ((float(entry[key]) + 0.5) * factor - 0.5 for key in ("x", "y"))
    added = entry["action"] == "add"
    image = render_overlay(frame, mask.astype(np.uint8) * np.uint8(object_id), palette,
                           points=np.array([[[x, y]]]), visible=np.array([[added]]),
                           num_positive=1 if entry["type"] == "positive" else 0, object_ids=[object_id])
    contours, _ = cv2.findContours(ground_truth.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, _OUTLINE, 1, cv2.LINE_AA)
    banner = np.zeros((_CAPTION_HEIGHT, image.shape[1], 3), dtype=np.uint8)
    scale = min(0.45, 0.45 * image.shape[1] / 560)  # the caption fits frames down to ~300 px wide
    cv2.putText(banner, caption(object_id, entry), (4, _CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([banner, image], axis=0)


def write_corrections_video(path: Path, frames, ground_truth: np.ndarray, recorded: Sequence[RecordedCorrection],
                            fps: float, palette: Optional[Sequence[int]] = None) -> bool:
    """Write one picture per correction (in the order they were made) as an mp4 at ``fps``.

    ``frames (T, 3, H, W) uint8`` and ``ground_truth (T, H, W)`` object ids, both at the size the
    annotator worked at. Returns False (and writes nothing) when there was no correction.
    """
    if not recorded:
        return False
    images = []
    for item in recorded:
        t = int(item.entry["frame"])
        frame = frames[t].numpy() if hasattr(frames[t], "numpy") else np.asarray(frames[t])
        images.append(correction_image(frame, item.mask(), ground_truth[t] == item.object_id, item.object_id,
                                       item.entry, palette))
    write_mp4(path, images, fps=fps)
    return True
