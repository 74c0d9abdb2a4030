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


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "", x_label: str = "",
               y_label: str = "", width: int = 900, height: int = 480,
               y_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Step lines, one per named ``(xs, ys)`` series, with axes and a legend -> ``(H, W, 3) uint8`` RGB."""
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 60, 20, 50, 50
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (left, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    x_max = max((max(xs) for xs, _ in series.values() if len(xs)), default=1.0) or 1.0
    low, high = y_range

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        fraction = 0.0 if not np.isfinite(y) else min(max((y - low) / (high - low), 0.0), 1.0)
        return (left + int(round((width - left - right) * x / x_max)),
                height - bottom - int(round((height - top - bottom) * fraction)))

    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for tick in np.linspace(low, high, 6):
        _, py = to_pixel(0, tick)
        cv2.line(image, (left - 4, py), (width - right, py), (225, 225, 225), 1)
        cv2.putText(image, f"{tick:.1f}", (8, py + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    integral = all(float(x).is_integer() for xs, _ in series.values() for x in xs)
    if integral:  # counts (interactions): ticks on whole numbers, at most about 10 of them
        step = max(1, int(np.ceil(x_max / 10)))
        x_ticks = np.arange(0, x_max + 0.5, step)
    else:
        x_ticks = np.linspace(0, x_max, 6)
    for tick in x_ticks:
        px, _ = to_pixel(tick, low)
        cv2.line(image, (px, height - bottom), (px, height - bottom + 4), (0, 0, 0), 1)
        text = f"{tick:.0f}" if integral else f"{tick:.3g}"
        cv2.putText(image, text, (px - 4 * len(text), height - bottom + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, x_label, (width // 2 - 40, height - 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, y_label, (8, top - 16), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for index, (name, (xs, ys)) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        points = [to_pixel(x, y) for x, y in zip(xs, ys)]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            cv2.line(image, (x0, y0), (x1, y0), colour, 2, cv2.LINE_AA)
            cv2.line(image, (x1, y0), (x1, y1), colour, 2, cv2.LINE_AA)
        legend_y = top + 18 + 18 * index
        cv2.line(image, (width - right - 200, legend_y - 4), (width - right - 175, legend_y - 4), colour, 3)
        cv2.putText(image, str(name)[:24], (width - right - 168, legend_y), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return image
