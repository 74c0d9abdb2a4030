"""`sampt eval` against `vos-benchmark` on one DAVIS 2017 val-sized synthetic set, side by side.

    python benchmarks/bench_eval.py                      # 30 sequences, 854x480, 1-5 objects, 1 and 2 workers
    python benchmarks/bench_eval.py --workers 1 2 4 --repeats 3
    python benchmarks/bench_eval.py --data /tmp/eval-set  # keep (or reuse) the written set

The set is written once (palette PNGs, DAVIS palette): 30 sequences whose lengths add up to
DAVIS 2017 val's 1999 frames, each with 1-5 moving polygon objects (some entering late), and
results that are the ground truth jittered, shifted and sprinkled with false-positive blobs.
Both scorers run as commands (``python -m sampt.cli eval`` and ``vos_benchmark.benchmark``
in a fresh interpreter), so start-up, PNG decoding and process pools are all counted.
Throughput = annotated frames per wall-clock second; ratio = vos-benchmark's wall time over
sampt's at the same worker count (target >= 2). Start-up = ``sampt eval --help`` against
``python -c "import numpy, PIL"`` (target: help <= 1.5 x that + 0.3 s); each time is the
median of ``--repeats`` runs. The per-object J and F means of both scorers are compared too
(objects that enter late are counted from their entry by vos-benchmark, from the start by the
DAVIS protocol, so only objects present from the first scored frame are compared). The official
``davis2017-evaluation`` is not on the package index, so it is not timed here; its per-frame
values are the ones ``tests/test_jf.py`` checks against (``shared/vectors/jf``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Frame counts of the 30 sequences (sum 1999, DAVIS 2017 val's; lengths 25..104 as there).
LENGTHS = (30, 104, 40, 90, 50, 80, 60, 70, 43, 100, 52, 75, 65, 69, 40, 95, 55, 85, 66, 72,
           35, 91, 48, 82, 58, 77, 63, 71, 42, 91)
HEIGHT, WIDTH = 480, 854


def write_set(root: Path, seed: int = 0) -> int:
    """Write ``root/gt`` and ``root/pred``; returns the number of annotated frames."""
    import cv2

    from sampt.io.png import write_index_png

    rng = np.random.default_rng(seed)
    for index, length in enumerate(LENGTHS):
        name = f"seq{index:02d}"
        num_objects = int(rng.integers(1, 6))
        objects = []
        for k in range(num_objects):
            objects.append({
                "centre": rng.uniform((100, 80), (WIDTH - 100, HEIGHT - 80)),
                "axes": rng.uniform((25, 25), (160, 120)),
                "velocity": rng.uniform((-3, -2), (3, 2)),
                "radii": rng.uniform(0.6, 1.0, 24),
                "enters": 0 if k == 0 or rng.random() < 0.7 else int(rng.integers(1, length // 2)),
            })
        for t in range(length):
            gt = np.zeros((HEIGHT, WIDTH), np.uint8)
            pred = np.zeros((HEIGHT, WIDTH), np.uint8)
            for k, obj in enumerate(objects):
                if t < obj["enters"]:
                    continue
                angles = np.linspace(0, 2 * np.pi, 24, endpoint=False) + 0.02 * t
                radii = obj["radii"] * (1 + 0.1 * np.sin(3 * angles + 0.1 * t))
                centre = obj["centre"] + obj["velocity"] * t
                points = np.stack([centre[0] + obj["axes"][0] * radii * np.cos(angles),
                                   centre[1] + obj["axes"][1] * radii * np.sin(angles)], 1).astype(np.int32)
                cv2.fillPoly(gt, [points], k + 1)
                jitter = rng.normal(0, 3, points.shape).astype(np.int32) + rng.integers(-4, 5, 2).astype(np.int32)
                cv2.fillPoly(pred, [points + jitter], k + 1)
            if rng.random() < 0.3:
                centre = (int(rng.uniform(0, WIDTH)), int(rng.uniform(0, HEIGHT)))
                cv2.circle(pred, centre, int(rng.uniform(3, 20)), int(rng.integers(1, num_objects + 1)), -1)
            write_index_png(root / "gt" / name / f"{t:05d}.png", gt)
            write_index_png(root / "pred" / name / f"{t:05d}.png", pred)
    return sum(LENGTHS)


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"command failed ({completed.returncode}): {' '.join(command)}\n{completed.stderr[-2000:]}")
    return elapsed


def median_time(command: list[str], env: dict, repeats: int) -> float:
    return statistics.median(timed(command, env) for _ in range(repeats))


def compare_numbers(root: Path, out: Path) -> tuple[int, float]:
    """``(objects compared, max |difference|)`` of per-object J and F means (fractions)."""
    import json

    from PIL import Image
    from vos_benchmark.benchmark import benchmark

    *_, object_metrics = benchmark([str(root / "gt")], [str(root / "pred")], num_processes=1, verbose=False)
    ours = {(o["sequence"], o["object_id"]): o for o in json.loads((out / "results.json").read_text())["objects"]}
    compared, worst = 0, 0.0
    for sequence, (iou, boundary) in object_metrics[0].items():
        for object_id in iou:
            row = ours[(sequence, int(object_id))]
            first = np.array(Image.open(root / "gt" / sequence / "00001.png"))
            if not (first == object_id).any():
                continue  # enters late: the two protocols differ by design
            worst = max(worst, abs(iou[object_id] / 100 - row["J-Mean"]), abs(boundary[object_id] / 100 - row["F-Mean"]))
            compared += 1
    return compared, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder for the set (written if it holds none); default: temp")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    temp = None
    if args.data is None:
        temp = tempfile.TemporaryDirectory(prefix="bench_eval_")
        root = Path(temp.name)
    else:
        root = Path(args.data)
    if not (root / "gt").is_dir():
        started = time.perf_counter()
        write_set(root)
        print(f"wrote {len(LENGTHS)} sequences, {sum(LENGTHS)} frames of {WIDTH}x{HEIGHT} to {root} "
              f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    frames = sum(len(list((root / "gt" / d).glob("*.png"))) for d in os.listdir(root / "gt"))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    python = sys.executable
    out = root / "sampt_out"

    rows = []
    for workers in args.workers:
        ours = median_time([python, "-m", "sampt.cli", "eval", "--gt", str(root / "gt"), "--pred", str(root / "pred"),
                            "--out", str(out), "--workers", str(workers), "--no-progress"], env, args.repeats)
        theirs = median_time([python, "-c", "import sys; from vos_benchmark.benchmark import benchmark; "
                              f"benchmark([{str(root / 'gt')!r}], [{str(root / 'pred')!r}], num_processes={workers}, "
                              "verbose=False)"], env, args.repeats)
        rows.append((workers, ours, theirs))

    baseline = median_time([python, "-c", "import numpy, PIL"], env, max(3, args.repeats))
    help_time = median_time([python, "-m", "sampt.cli", "eval", "--help"], env, max(3, args.repeats))
    compared, worst = compare_numbers(root, out)

    print(f"\n{frames} annotated frames, {len(LENGTHS)} sequences, {WIDTH}x{HEIGHT}, {os.cpu_count()} CPUs\n")
    print(f"{'workers':>7} | {'sampt eval s':>12} | {'frames/s':>8} | {'vos-benchmark s':>15} | {'frames/s':>8} | ratio")
    print("-" * 76)
    for workers, ours, theirs in rows:
        print(f"{workers:>7} | {ours:>12.2f} | {frames / ours:>8.0f} | {theirs:>15.2f} | {frames / theirs:>8.0f} | "
              f"{theirs / ours:.2f}x")
    target = 1.5 * baseline + 0.3
    print(f"\nstart-up: sampt eval --help {help_time:.3f} s; python -c 'import numpy, PIL' {baseline:.3f} s; "
          f"target 1.5 x {baseline:.3f} + 0.3 = {target:.3f} s; ratio help / (import + 0.3 s) = "
          f"{help_time / (baseline + 0.3):.2f}, help / target = {help_time / target:.2f}")
    print(f"numbers: {compared} objects compared with vos-benchmark, max |J or F mean difference| = {worst:.2e}")
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
