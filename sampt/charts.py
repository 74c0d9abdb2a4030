"""Small raster charts for TensorBoard, drawn with OpenCV (no plotting library needed)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str = "", width: int = 900,
              bar_height: int = 18, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Horizontal bars, one per label, sorted as given -> ``(H, W, 3) uint8`` RGB image."""
    label_width, margin = 260, 10
    height = margin * 3 + 20 + bar_height * max(len(labels), 1)
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    cv2.putText(image, title, (margin, margin + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    low, high = value_range
    span = width - label_width - 3 * margin - 60
    for row, (label, value) in enumerate(zip(labels, values)):
        top = margin * 2 + 20 + row * bar_height
        fraction = 0.0 if not np.isfinite(value) else min(max((value - low) / (high - low), 0.0), 1.0)
        cv2.putText(image, str(label)[:36], (margin, top + bar_height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        x0 = label_width
        cv2.rectangle(image, (x0, top + 2), (x0 + int(span * fraction), top + bar_height - 3), (70, 130, 180), -1)
        cv2.putText(image, f"{value:.3f}", (x0 + int(span * fraction) + 5, top + bar_height - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return image
