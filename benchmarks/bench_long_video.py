"""Long videos in bounded memory: peak RSS and time per frame, streamed vs in memory.

Writes a synthetic video (moving shapes, mp4 via PyAV) at each ``--lengths`` and runs SAM-PT
(the tiny random SAM of the reference vectors, the given tracker) on it in a fresh process per case, once streamed from the
file (decoded once into the frame cache; masks written frame by frame) and, for the shortest
length, once with the frames in memory. Each child reports its peak RSS (``ru_maxrss``) and
wall time per frame.

    python benchmarks/bench_long_video.py --lengths 300 3000 --tracker lk
    python benchmarks/bench_long_video.py --lengths 300 3000 --tracker cotracker

``cotracker`` uses CoTracker v1 with the random weights of
``../shared/vectors/cotracker/init_weights.py``. Targets (issue 16): peak RSS at the longest
length <= 1.3x the shortest; streamed time per frame within 10% of the in-memory path.

``--cli`` measures the whole command instead of the pipeline alone: ``sampt predict`` with
``configs/demo.yaml`` + ``configs/demo_tiny.yaml`` (tiny SAM, Lucas-Kanade), so Lightning, the
PNG writer, the tracks files and the overlay mp4 (drawn from the PNGs read back) are in the
figures too; peak RSS is the child's ``ru_maxrss``:

    python benchmarks/bench_long_video.py --lengths 300 3000 --cli
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_video(path: Path, num_frames: int, width: int, height: int) -> None:
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=30, options={"g": "60", "preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    ys, xs = np.mgrid[0:height, 0:width]
    background = (((xs // 40 + ys // 40) % 2) * 60 + 60).astype(np.uint8)
    for t in range(num_frames):
        image = np.repeat(background[..., None], 3, axis=2)
        cx, cy = int(width * (0.3 + 0.2 * np.sin(t / 30))), int(height * (0.5 + 0.2 * np.cos(t / 45)))
        image[max(0, cy - 60):cy + 60, max(0, cx - 80):cx + 80] = (220, 60, 40)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def child(args: argparse.Namespace) -> None:
    import torch

    from sampt.datamodules.generic import Generic
    from sampt.methods.sam_pt.options import SamPtConfig
    from sampt.methods.sam_pt.pipeline import SamPt
    from sampt.sam.backends import SamConfig
    from sampt.trackers.base import build_tracker

    torch.set_num_threads(args.threads)
    sam = SamConfig(backend="custom", variant="custom",
                    checkpoint_path=str(REPO.parent / "shared/vectors/sam-prompting/tiny_sam_vit.pt")).build()
    if args.tracker == "cotracker":
        import importlib.util

        ref = REPO.parent / "shared/vectors/cotracker"
        spec = importlib.util.spec_from_file_location("init_weights", ref / "init_weights.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        weights = Path(args.work) / "cotracker_v1_random.pth"
        if not weights.exists():
            torch.save(module.build_state_dict(str(ref / "state_dict_v1.json")), weights)
        options = {} if args.support_grid_every is None else {"support_grid_every_n_frames": args.support_grid_every}
        tracker = build_tracker("CoTrackerTracker", checkpoint_path=str(weights), **options)
    else:
        tracker = build_tracker("LucasKanadeTracker")
    data = Generic(args.video, query_points=args.points, longest_size=args.longest_size,
                   stream_frames_above_mib=0 if args.streamed else None, frame_cache_dir=str(Path(args.work) / "cache"))
    video = data.dataset.load(0)
    video.frames.prepare()  # decoding into the cache is timed separately
    config = SamPtConfig()
    pipeline = SamPt(sam, tracker, config)
    tic = time.perf_counter()
    kept = 0

    def on_frame(output):
        nonlocal kept
        kept += int((output.logits > 0).any())

    reported: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        # A line on stderr every 10 %: long cases take tens of minutes.
        tenth = 10 * done // max(1, total)
        if tenth > reported.get(stage, 0):
            reported[stage] = tenth
            print(f"{video.num_frames} frames: {stage} {10 * tenth}% after {time.perf_counter() - tic:.0f} s",
                  file=sys.stderr, flush=True)

    tracked = 0

    def on_tracking(steps: int, total: int) -> None:
        nonlocal tracked
        tracked += steps
        report("tracking", tracked, total)

    result = pipeline.run(video, on_frame, progress=lambda t: report("segmenting", t + 1, video.num_frames),
                          tracking_progress=on_tracking)
    elapsed = time.perf_counter() - tic
    print(json.dumps({"frames": video.num_frames, "streamed": args.streamed, "seconds": elapsed,
                      "seconds_per_frame": elapsed / video.num_frames,
                      "tracking_seconds": result.timings.get("tracking"),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_cli(args: argparse.Namespace, video: Path, points: Path, work: Path, streamed: bool) -> dict:
    """One ``sampt predict`` in a child process (``--cli-child``): its wall time and peak RSS."""
    import shutil

    out = work / f"cli_{video.stem}_{'streamed' if streamed else 'memory'}"
    shutil.rmtree(out, ignore_errors=True)  # a finished video would be reused, not measured
    sampt_args = ["predict", "--config", "configs/demo.yaml", "--config", "configs/demo_tiny.yaml",
                  "--data.init_args.frames", str(video), "--data.init_args.query_points", str(points),
                  "--data.init_args.longest_size", str(args.longest_size),
                  "--data.init_args.stream_frames_above_mib", "0" if streamed else "null",
                  "--data.init_args.frame_cache_dir", str(work / "cache"),
                  "--model.init_args.outputs.write_overlay_gif", "false",
                  "--model.init_args.output_dir", str(out / "predictions"),
                  "--trainer.logger.init_args.save_dir", str(out)]
    command = [sys.executable, __file__, "--cli-child", "--threads", str(args.threads), "--", *sampt_args]
    tic = time.perf_counter()
    output = subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    elapsed = time.perf_counter() - tic
    peak = json.loads(output.strip().splitlines()[-1])["peak_rss_mib"]
    frames = len(list((out / "predictions" / video.stem).glob("*.png")))
    return {"frames": frames, "streamed": streamed, "seconds": elapsed, "seconds_per_frame": elapsed / frames,
            "peak_rss_mib": peak, "overlay_mp4": (out / "overlays" / f"{video.stem}.mp4").is_file()}


def cli_child(args: argparse.Namespace, sampt_args: list[str]) -> None:
    import torch

    from sampt.cli import main as sampt_main

    torch.set_num_threads(args.threads)
    try:
        sampt_main(sampt_args)
    except SystemExit as exit_info:
        if exit_info.code:
            raise
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--size", type=int, nargs=2, default=[1280, 720], metavar=("W", "H"))
    parser.add_argument("--longest-size", type=int, default=1024)
    parser.add_argument("--tracker", choices=["lk", "cotracker"], default="lk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--support-grid-every", type=int, default=None,
                        help="CoTracker's support_grid_every_n_frames (default: SAM-PT's, 12)")
    parser.add_argument("--work", default=None, help="folder for the videos and the cache (default: a temp dir)")
    parser.add_argument("--cli", action="store_true",
                        help="measure `sampt predict` (demo + demo_tiny configs: tiny SAM, Lucas-Kanade) end to end")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cli-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--points", help=argparse.SUPPRESS)
    parser.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    sampt_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.cli_child:
        cli_child(args, sampt_args)
        return
    if args.child:
        child(args)
        return
    if args.cli and args.tracker != "lk":
        parser.error("--cli runs configs/demo_tiny.yaml, whose tracker is Lucas-Kanade: drop --tracker")
    work = Path(args.work or tempfile.mkdtemp(prefix="sampt-long-"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = args.size
    points = work / "points.txt"
    points.write_text(f"2\n0 ; {width * 0.3:.0f},{height * 0.5:.0f} {width * 0.3 + 20:.0f},{height * 0.5:.0f} "
                      f"{width * 0.9:.0f},{height * 0.1:.0f}\n")
    rows = []
    for length in args.lengths:
        video = work / f"synthetic_{length}.mp4"
        if not video.exists():
            write_video(video, length, width, height)
        cases = [True, False] if length == min(args.lengths) else [True]
        for streamed in cases:
            if args.cli:
                rows.append(run_cli(args, video, points, work, streamed))
                print(json.dumps(rows[-1]), flush=True)
                continue
            command = [sys.executable, __file__, "--child", "--video", str(video), "--points", str(points),
                       "--tracker", args.tracker, "--threads", str(args.threads), "--work", str(work),
                       "--longest-size", str(args.longest_size)] + (["--streamed"] if streamed else [])
            if args.support_grid_every is not None:
                command += ["--support-grid-every", str(args.support_grid_every)]
            output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    shortest, longest = min(args.lengths), max(args.lengths)
    streamed = {r["frames"]: r for r in rows if r["streamed"]}
    in_memory = next(r for r in rows if not r["streamed"])
    print(f"{'sampt predict' if args.cli else 'pipeline'}, tracker {args.tracker}, {width}x{height} -> longest side "
          f"{args.longest_size}")
    print(f"peak RSS streamed: {streamed[shortest]['peak_rss_mib']:.0f} MiB at {shortest} frames, "
          f"{streamed[longest]['peak_rss_mib']:.0f} MiB at {longest} "
          f"(ratio {streamed[longest]['peak_rss_mib'] / streamed[shortest]['peak_rss_mib']:.2f}; in memory at "
          f"{shortest}: {in_memory['peak_rss_mib']:.0f} MiB)")
    print(f"time per frame at {shortest}: streamed {streamed[shortest]['seconds_per_frame']:.3f} s, in memory "
          f"{in_memory['seconds_per_frame']:.3f} s "
          f"(ratio {streamed[shortest]['seconds_per_frame'] / in_memory['seconds_per_frame']:.2f})")


if __name__ == "__main__":
    main()
