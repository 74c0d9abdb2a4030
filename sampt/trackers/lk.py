"""A weight-free point tracker: pyramidal Lucas-Kanade (OpenCV) with a forward-backward check.

Registered as ``"lk"``. Needs no download and runs on CPU; it is the default tracker of the tests
and of CPU-only users. Inputs on CUDA are accepted: the analysis runs on CPU (OpenCV) and the
results are returned on the video's device.

Tracking model (per video, per direction):

* Points are chained frame to frame: forward from their query frame to the last frame, and
  backward from their query frame to frame 0. Each consecutive frame pair is analysed once per
  direction, for all points that are active in that direction (points are grouped by query frame:
  a point joins the forward chain at its query frame and the backward chain just before it).
* Each step runs LK from frame ``s`` to frame ``d`` and then back from ``d`` to ``s`` starting at the
  estimate; the distance between the start point and the round-trip result is the forward-backward
  error. A point is *visible* on ``d`` iff both LK runs converged (OpenCV status 1), the
  forward-backward error is at most ``fb_threshold`` and the estimate lies inside the frame.
* Visibility is decided per frame, not once for all: a point that fails the check keeps being
  tracked (it moves with LK's estimate whenever LK converged, and stays where it was when LK found
  no solution), so that it can be re-acquired after blur, a lighting change or a short occlusion.
* The exception is a point whose estimate leaves the frame: LK observes nothing outside the image,
  so any later match near the border would be on a different surface. Such a point is lost for the
  rest of that direction: it stays at its first outside position and is not visible.

Coordinates are pixel centres: pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5]``; "inside the frame"
means ``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` (where the image has data to interpolate).
"""
from __future__ import annotations


import cv2
import numpy as np
import torch

from sampt.trackers.base import PointTracker


def points_inside_frame(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., 2)`` (x, y) pixel positions -> ``(...)`` bool: inside ``[0, W-1] x [0, H-1]`` (and finite)."""
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


class _GreyFrames:
    """Grey-level analysis frames of one video, converted (and downscaled) on demand, last few kept.

    Chaining visits frames in order, so each frame is converted once per direction. (OpenCV's
    Python binding of ``calcOpticalFlowPyrLK`` does not accept prebuilt pyramids, so the pyramids
    themselves cannot be cached.)
    """

    def __init__(self, read_frame, work_size: tuple[int, int], keep: int = 3):
        self.read_frame = read_frame  # t -> (H, W, 3) uint8 RGB
        self.work_size = work_size  # (h, w) after downscaling
        self.keep = keep
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, index: int) -> np.ndarray:
        """``(h, w) uint8`` grey frame ``index``."""
        if index not in self._cache:
            grey = cv2.cvtColor(np.ascontiguousarray(self.read_frame(index)), cv2.COLOR_RGB2GRAY)
            height, width = self.work_size
            if (height, width) != grey.shape:
                grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = grey
        return self._cache[index]


class LucasKanadeTracker(PointTracker):
    """Pyramidal Lucas-Kanade point tracker with a forward-backward consistency check.

    See the module docstring for the tracking model.

    Args:
        window_size: side of the square LK integration window, in pixels of the analysed frames.
        max_level: number of pyramid levels above the base image (0 = no pyramid). Larger values
            follow faster motion.
        fb_threshold: largest forward-backward round-trip error, in pixels of the analysed (possibly
            downscaled) frames, for a point to count as visible. Measured at the analysis
            resolution because LK's precision is a fraction of an analysed pixel; 1 px keeps
            well-textured points (round-trip errors of a few hundredths of a pixel) and drops
            points on uniform areas, occlusion boundaries and lost surfaces.
        downscale: analyse frames downscaled by this factor (>= 1; e.g. 2 for 480p -> 240p): faster,
            coarser. Positions are mapped back to input pixels.
        max_iterations, epsilon: LK stopping criteria per pyramid level.
    """

    def __init__(
        self,
        window_size: int = 21,
        max_level: int = 3,
        fb_threshold: float = 1.0,
        downscale: float = 1.0,
        max_iterations: int = 30,
        epsilon: float = 0.01,
    ):
        super().__init__()
        if int(window_size) != window_size or window_size < 3:
            raise ValueError(f"LucasKanadeTracker window_size must be an integer >= 3, got {window_size}")
        if int(max_level) != max_level or max_level < 0:
            raise ValueError(f"LucasKanadeTracker max_level must be an integer >= 0, got {max_level}")
        if not fb_threshold > 0:
            raise ValueError(f"LucasKanadeTracker fb_threshold must be > 0 pixels, got {fb_threshold}")
        if not downscale >= 1:
            raise ValueError(f"LucasKanadeTracker downscale must be >= 1, got {downscale}")
        if int(max_iterations) != max_iterations or max_iterations < 1:
            raise ValueError(f"LucasKanadeTracker max_iterations must be an integer >= 1, got {max_iterations}")
        if not epsilon > 0:
            raise ValueError(f"LucasKanadeTracker epsilon must be > 0, got {epsilon}")
        self.window_size = int(window_size)
        self.max_level = int(max_level)
        self.fb_threshold = float(fb_threshold)
        self.downscale = float(downscale)
        self.criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(max_iterations), float(epsilon))

    def extra_repr(self) -> str:
        return (
            f"window_size={self.window_size}, max_level={self.max_level}, "
            f"fb_threshold={self.fb_threshold}, downscale={self.downscale}"
        )

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Track ``queries (B, N, 3)`` rows ``(t, x, y)`` through ``video (B, T, 3, H, W) uint8``.

        Returns ``(trajectories (B, T, N, 2) float32, visibilities (B, T, N) bool)`` in input
        pixels, on the video's device. Each query frame holds the query position, visible.
        """
        self.check_inputs(video, queries)
        batch, num_frames, _, height, width = video.shape
        frames_all = video.detach().permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, T, H, W, 3)
        results = [self._track(frames_all[b].__getitem__, num_frames, height, width, queries[b].detach().cpu())
                   for b in range(batch)]
        trajectories = torch.stack([r[0] for r in results]).to(video.device)
        visibilities = torch.stack([r[1] for r in results]).to(video.device)
        return trajectories, visibilities

    def streams(self, frames) -> bool:
        return True  # track_frames reads frame pairs as it goes, from any source

    @torch.no_grad()
    def track_frames(self, frames, queries, device=None, query_masks=None, progress=None):
        """:meth:`forward` over a frame source, two frames at a time (see ``PointTracker``)."""
        def read_frame(t: int) -> np.ndarray:
            return frames[t].permute(1, 2, 0).cpu().numpy()

        height, width = frames.size
        return self._track(read_frame, frames.num_frames, height, width, queries.detach().cpu(), progress)

    def _track(self, read_frame, num_frames: int, height: int, width: int, queries: torch.Tensor,
               progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One video: ``read_frame(t) -> (H, W, 3) uint8``, ``queries (N, 3)`` -> CPU
        ``(trajectories (T, N, 2) float32, visibilities (T, N) bool)``."""
        work_height = max(1, int(round(height / self.downscale)))
        work_width = max(1, int(round(width / self.downscale)))
        # Pixel-centre mapping between input and analysis pixels (x' + 0.5 = (x + 0.5) * s).
        scale = np.array([work_width / width, work_height / height], dtype=np.float64)
        queries_np = queries.to(torch.float64).numpy()
        trajectories = np.zeros((num_frames, queries.shape[0], 2), dtype=np.float64)
        visibilities = np.zeros((num_frames, queries.shape[0]), dtype=bool)
        query_frames = queries_np[:, 0].round().astype(np.int64)
        query_work = (queries_np[:, 1:] + 0.5) * scale - 0.5
        grey_frames = _GreyFrames(read_frame, (work_height, work_width))
        # trajectories are filled in analysis pixels and mapped back below
        self._track_direction(grey_frames, query_frames, query_work, trajectories, visibilities, +1, progress)
        self._track_direction(grey_frames, query_frames, query_work, trajectories, visibilities, -1, progress)
        points = np.arange(len(query_frames))
        trajectories[query_frames, points] = query_work
        visibilities[query_frames, points] = True
        trajectories = (trajectories + 0.5) / scale - 0.5
        trajectories_t = torch.from_numpy(trajectories.astype(np.float32))
        # Judge "inside the frame" on the final input-pixel positions so that every tracker shares
        # one definition; the query frames keep their given (visible) points.
        inside = points_inside_frame(trajectories_t, height, width)
        visibilities_t = torch.from_numpy(visibilities) & inside
        visibilities_t[torch.from_numpy(query_frames), torch.from_numpy(points)] = True
        return trajectories_t, visibilities_t

    def _track_direction(
        self,
        grey_frames: _GreyFrames,
        query_frames: np.ndarray,
        query_work: np.ndarray,
        trajectories: np.ndarray,
        visibilities: np.ndarray,
        step: int,
        progress=None,
    ) -> None:
        """Chain the points of one video in one direction (``step`` +1 forward, -1 backward).

        ``query_frames (N,)`` int, ``query_work (N, 2)`` analysis pixels; writes the frames after
        (forward) or before (backward) each query frame of ``trajectories (T, N, 2)`` and
        ``visibilities (T, N)`` in place.
        """
        num_frames = trajectories.shape[0]
        if len(query_frames) == 0:
            if progress is not None:
                progress(num_frames)
            return
        work_height, work_width = grey_frames.work_size
        positions = query_work.copy()
        exited = np.zeros(len(query_frames), dtype=bool)
        if step > 0:
            sources = range(int(query_frames.min()), num_frames - 1)
        else:
            sources = range(int(query_frames.max()), 0, -1)
        for source in sources:
            target = source + step
            # A point takes part from its query frame on, in the direction of travel.
            started = query_frames <= source if step > 0 else query_frames >= source
            active = np.flatnonzero(started & ~exited)
            if active.size:
                new_positions, visible = self._lk_step(grey_frames[source], grey_frames[target], positions[active])
                positions[active] = new_positions
                inside = (
                    (new_positions[:, 0] >= 0) & (new_positions[:, 0] <= work_width - 1)
                    & (new_positions[:, 1] >= 0) & (new_positions[:, 1] <= work_height - 1)
                )
                exited[active[~inside]] = True
                visibilities[target, active] = visible & inside
            started_points = np.flatnonzero(started)
            trajectories[target, started_points] = positions[started_points]
            if progress is not None:
                progress(1)
        if progress is not None:
            progress(num_frames - len(sources))  # frames no point travels through in this direction

    def _lk_step(self, source: np.ndarray, target: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward-backward LK step of ``points (M, 2)`` analysis pixels from grey frame ``source``
        to ``target`` (``(h, w) uint8``). Returns ``(new points (M, 2) float64, reliable (M,) bool)``;
        points LK could not follow keep their position."""
        start = points.astype(np.float32).reshape(-1, 1, 2)
        forward, status_forward = self._lk(source, target, start)
        backward, status_backward = self._lk(target, source, forward)
        forward = forward.reshape(-1, 2).astype(np.float64)
        converged = status_forward & np.isfinite(forward).all(axis=1)
        round_trip_error = np.linalg.norm(backward.reshape(-1, 2) - start.reshape(-1, 2), axis=1)
        reliable = converged & status_backward & (round_trip_error <= self.fb_threshold)
        new_points = np.where(converged[:, None], forward, points)
        return new_points, reliable

    def _lk(self, source: np.ndarray, target: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV LK of ``points (M, 1, 2) float32`` -> ``(points (M, 1, 2) float32, status (M,) bool)``."""
        tracked, status, _ = cv2.calcOpticalFlowPyrLK(
            source,
            target,
            points,
            None,
            winSize=(self.window_size, self.window_size),
            maxLevel=self.max_level,
            criteria=self.criteria,
        )
        return tracked, status.reshape(-1).astype(bool)
