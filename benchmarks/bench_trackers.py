"""Time the point trackers on a synthetic 480p clip: points/s and frames/s.

Runs every tracker that needs no download (lk, static, raft_small and raft_large with random
weights: same cost as the published weights) and, given checkpoint files, CoTracker:

    python benchmarks/bench_trackers.py                                  # CPU, 854x480, 24 frames, 256 points
    python benchmarks/bench_trackers.py --device cuda --trackers lk raft_large
    python benchmarks/bench_trackers.py --frames 8 --points 64 --trackers lk static raft_small
    python benchmarks/bench_trackers.py --cotracker-checkpoint cotracker=/ckpt/cotracker_stride_4_wind_8.pth \
        --cotracker-checkpoint cotracker3=/ckpt/scaled_offline.pth

The clip is a smooth random texture translating by (-2, -1) px per frame, so LK and RAFT do the
work they do on real video. Queries are spread over the frame and placed on ``--query-frame``
(default 0, as SAM-PT queries the first frame; a middle frame makes every tracker run both
directions). points/s = points / seconds (points tracked through the whole clip per second);
frames/s = frames / seconds; point-frames/s = points x frames / seconds. Each figure is the median of
``--repeats`` timed calls after ``--warmup`` untimed calls.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from sampt.trackers.base import PointTracker

DOWNLOAD_FREE = ["lk", "static", "raft_small", "raft_large"]


def synthetic_clip(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``(1, T, 3, H, W) uint8``: a smooth random texture moving by (-2, -1) px per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    margin = 2 * num_frames + 8
    noise = rng.uniform(0, 255, (height + margin, width + margin, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
    texture = ((texture - texture.min()) / (texture.max() - texture.min()) * 255).astype(np.uint8)
    frames = [texture[t : t + height, 2 * t : 2 * t + width] for t in range(num_frames)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()[None]


def grid_queries(num_points: int, query_frame: int, height: int, width: int) -> torch.Tensor:
    """``(1, N, 3) float32`` queries on a regular grid over the central 80% of the frame."""
    side = int(np.ceil(np.sqrt(num_points)))
    xs = np.linspace(0.1 * width, 0.9 * width, side)
    ys = np.linspace(0.1 * height, 0.9 * height, side)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)[:num_points]
    frames = np.full((num_points, 1), query_frame)
    return torch.from_numpy(np.concatenate([frames, points], axis=1).astype(np.float32))[None]


def tracker_builders(args: argparse.Namespace) -> dict[str, Callable[[], PointTracker]]:
    """name -> builder of every tracker asked for (CoTracker imported only when a checkpoint is given)."""
    from sampt.trackers.lk import LucasKanadeTracker
    from sampt.trackers.raft import RaftTracker
    from sampt.trackers.trivial import StaticTracker

    builders: dict[str, Callable[[], PointTracker]] = {
        "lk": lambda: LucasKanadeTracker(downscale=args.lk_downscale),
        "static": StaticTracker,
        "raft_small": lambda: RaftTracker(
            model="raft_small", num_flow_updates=args.raft_updates, batch_size=args.raft_batch_size,
            downscale=args.raft_downscale,
        ),
        "raft_large": lambda: RaftTracker(
            model="raft_large", num_flow_updates=args.raft_updates, batch_size=args.raft_batch_size,
            downscale=args.raft_downscale,
        ),
    }
    selected = {name: builders[name] for name in args.trackers}
    for spec in args.cotracker_checkpoint:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--cotracker-checkpoint expects NAME=PATH (NAME cotracker or cotracker3), got {spec!r}")

        def build(name: str = name, path: str = path) -> PointTracker:
            # Imported lazily: the CoTracker modules are optional for this benchmark.
            from sampt.trackers.base import build_tracker

            for module in ("sampt.trackers.cotracker", "sampt.trackers.cotracker3"):
                try:
                    __import__(module)
                except ImportError:
                    pass
            return build_tracker(name, checkpoint_path=path)

        selected[name] = build
    return selected


def time_tracker(tracker: PointTracker, video: torch.Tensor, queries: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of one call, after ``warmup`` untimed calls."""

    def synchronise() -> None:
        if video.device.type == "cuda":
            torch.cuda.synchronize(video.device)

    with torch.no_grad():
        for _ in range(warmup):
            tracker(video, queries)
        synchronise()
        durations = []
        for _ in range(repeats):
            start = time.perf_counter()
            tracker(video, queries)
            synchronise()
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--trackers", nargs="+", default=DOWNLOAD_FREE, choices=DOWNLOAD_FREE,
                        help="download-free trackers to time (default: all)")
    parser.add_argument("--cotracker-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="also time CoTracker NAME (cotracker or cotracker3) with this checkpoint; repeatable")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--query-frame", type=int, default=0, help="frame of every query (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tracker (median reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls before timing (CUDA initialisation, cuDNN autotuning); default 1")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenCV CPU threads (default: library default)")
    parser.add_argument("--raft-updates", type=int, default=12, help="RAFT num_flow_updates")
    parser.add_argument("--raft-batch-size", type=int, default=4, help="RAFT frame pairs per call")
    parser.add_argument("--raft-downscale", type=float, default=1.0)
    parser.add_argument("--lk-downscale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 0 <= args.query_frame < args.frames:
        parser.error(f"--query-frame must be in [0, {args.frames - 1}], got {args.query_frame}")
    if min(args.frames, args.height, args.width, args.points, args.repeats) < 1:
        parser.error("--frames, --height, --width, --points and --repeats must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if args.threads is not None:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    video = synthetic_clip(args.frames, args.height, args.width).to(device)
    queries = grid_queries(args.points, args.query_frame, args.height, args.width).to(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({device_name}), threads {torch.get_num_threads()}")
    print(f"clip {args.width}x{args.height}, {args.frames} frames, {args.points} points on frame {args.query_frame}, "
          f"median of {args.repeats} calls after {args.warmup} warm-up calls")
    print(f"{'tracker':<12} {'seconds':>9} {'points/s':>10} {'frames/s':>9} {'point-frames/s':>15}")
    for name, build in tracker_builders(args).items():
        try:
            torch.manual_seed(0)
            tracker = build().to(device).eval()
        except Exception as error:  # a missing optional module or a bad checkpoint skips one tracker
            print(f"{name:<12} unavailable: {type(error).__name__}: {error}")
            continue
        seconds = time_tracker(tracker, video, queries, args.repeats, args.warmup)
        print(
            f"{name:<12} {seconds:9.4g} {args.points / seconds:10.1f} {args.frames / seconds:9.2f} "
            f"{args.points * args.frames / seconds:15.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
