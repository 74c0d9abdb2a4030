"""Time every point tracker on the same synthetic clip: points/s, frames/s and peak memory.

Every registered tracker runs with random weights of its real architecture (same cost as the
published weights; nothing is downloaded), each in its own process so that peak memory is its
own: resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Given
``--checkpoint NAME=PATH`` a tracker loads that file instead.

    python benchmarks/bench_trackers.py                                   # CPU, every tracker
    python benchmarks/bench_trackers.py --device cuda --frames 24 --height 480 --width 854 --points 256
    python benchmarks/bench_trackers.py --trackers lk raft_small tapir --checkpoint tapir=/ckpt/tapir.npy

The clip is a smooth random texture translating by (-2, -1) px per frame, so LK and RAFT do the
work they do on real video. Queries are spread over the frame and placed on ``--query-frame``
(default 0, as SAM-PT queries the first frame; a middle frame makes every tracker run both
directions). points/s = points / seconds (points tracked through the whole clip per second);
frames/s = frames / seconds. Each figure is the median of ``--repeats`` timed calls after
``--warmup`` untimed calls.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

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


#: Benchmark names -> (tracker class name, constructor arguments) of every tracker.
TRACKER_SETTINGS: dict[str, tuple[str, dict]] = {
    "static": ("StaticTracker", {}),
    "lk": ("LucasKanadeTracker", {}),
    "raft_small": ("RaftTracker", {"model": "raft_small"}),
    "raft_large": ("RaftTracker", {"model": "raft_large"}),
    "cotracker": ("CoTrackerTracker", {}),
    "cotracker3": ("CoTracker3Tracker", {}),
    "tapir": ("TapirTracker", {"variant": "tapir"}),
    "bootstapir": ("TapirTracker", {"variant": "bootstapir"}),
    "tapnet": ("TapNetTracker", {}),
    "pips": ("PipsTracker", {}),
    "pips_plus_plus": ("PipsPlusPlusTracker", {}),
    # Random SuperPoint weights detect a keypoint in almost every cell (about 6,000 at 432x240),
    # and SuperGlue's cost is quadratic in them; trained weights find on the order of a thousand.
    "superglue": ("SuperGlueTracker", {"max_keypoints": 1024}),
}
DOWNLOAD_FREE = list(TRACKER_SETTINGS)


def build_tracker_for_benchmark(name: str, num_points: int, checkpoint: str | None) -> PointTracker:
    """Tracker ``name`` with random weights of its real size, or the weights in ``checkpoint``."""
    from sampt.trackers import build_tracker

    class_name, options = TRACKER_SETTINGS[name]
    options = dict(options)
    if class_name == "SuperGlueTracker":
        # All queries as the positives of one mask (its mask falls back to their convex hull).
        options.update(positive_points_per_mask=num_points, negative_points_per_mask=0)
    if checkpoint is not None:
        key = "superglue_checkpoint_path" if class_name == "SuperGlueTracker" else "checkpoint_path"
        options[key] = checkpoint
    tracker = build_tracker(class_name, **options)
    if checkpoint is None:
        tracker.prepare = lambda: None  # keep the random initialisation: nothing to download
    return tracker


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
                        help="trackers to time (default: all)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="load these weights into tracker NAME instead of random ones; repeatable")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--query-frame", type=int, default=0, help="frame of every query (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tracker (median reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls before timing (CUDA initialisation, cuDNN autotuning); default 1")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenCV CPU threads (default: library default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: time one tracker in this process
    args = parser.parse_args(argv)
    if not 0 <= args.query_frame < args.frames:
        parser.error(f"--query-frame must be in [0, {args.frames - 1}], got {args.query_frame}")
    if min(args.frames, args.height, args.width, args.points, args.repeats) < 1:
        parser.error("--frames, --height, --width, --points and --repeats must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    args.checkpoints = {}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        if name not in TRACKER_SETTINGS or not path:
            parser.error(f"--checkpoint expects NAME=PATH with NAME one of {', '.join(TRACKER_SETTINGS)}, got {spec!r}")
        args.checkpoints[name] = path
    return args


def run_child(args: argparse.Namespace) -> int:
    """Time tracker ``args.child`` in this process; print one JSON line."""
    import json
    import resource

    device = torch.device(args.device)
    if args.threads is not None:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    video = synthetic_clip(args.frames, args.height, args.width).to(device)
    queries = grid_queries(args.points, args.query_frame, args.height, args.width).to(device)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    tracker = build_tracker_for_benchmark(args.child, args.points, args.checkpoints.get(args.child)).to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_tracker(tracker, video, queries, args.repeats, args.warmup)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # ru_maxrss is in KiB on Linux; the tracker's own share of the process peak
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))
    return 0


def main(argv: list[str] | None = None) -> int:
    import json
    import subprocess

    args = parse_args(argv)
    if args.child:
        return run_child(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    memory = "peak CUDA memory allocated" if device.type == "cuda" else "peak RSS growth"
    print(f"torch {torch.__version__}, device {device} ({device_name}), threads {args.threads or torch.get_num_threads()}")
    print(f"clip {args.width}x{args.height}, {args.frames} frames, {args.points} points on frame {args.query_frame}, "
          f"median of {args.repeats} calls after {args.warmup} warm-up calls; memory: {memory}")
    print(f"{'tracker':<15} {'seconds':>9} {'points/s':>10} {'frames/s':>9} {'peak MB':>9}  weights")
    forwarded = ["--device", args.device, "--frames", str(args.frames), "--height", str(args.height),
                 "--width", str(args.width), "--points", str(args.points), "--query-frame", str(args.query_frame),
                 "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    forwarded += ["--threads", str(args.threads)] if args.threads is not None else []
    for spec in args.checkpoint:
        forwarded += ["--checkpoint", spec]
    for name in args.trackers:
        command = [sys.executable, __file__, *forwarded, "--child", name]
        completed = subprocess.run(command, capture_output=True, text=True)
        weights = "file" if name in args.checkpoints else "random"
        if completed.returncode != 0:
            last = (completed.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<15} failed: {last}")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        seconds = result["seconds"]
        print(f"{name:<15} {seconds:9.4g} {args.points / seconds:10.1f} {args.frames / seconds:9.2f} "
              f"{result['peak_mb']:9.0f}  {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
