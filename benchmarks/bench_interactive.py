"""Times one interactive correction against re-running SAM-PT on the whole video.

A session gets its objects (a few first-frame points each), then ``--corrections`` points are
added one by one on later frames. Each correction's wall time (tracking the new point, decoding
the prompts that changed, embeddings from the cache) is compared with the time SAM-PT takes
from scratch on the final point set (``SamPt.track`` of every point + ``SamPt.segment`` of every
frame, image encoder included), which is what a tool without the engine would run per correction.

    python benchmarks/bench_interactive.py                                    # tiny test SAM
    python benchmarks/bench_interactive.py --backend mobile_sam --random-init # MobileSAM size

Frames: the shared DAVIS sample (``--sequence``) when found, else a synthetic moving texture.
Weights do not matter for timing, so ``--random-init`` times a real architecture without them.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sampt.methods.interactive import InteractiveSession
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.methods.sam_pt.pipeline import Queries, SamPt
from sampt.sam.backends import build_sam
from sampt.trackers.lk import LucasKanadeTracker

REPO = Path(__file__).resolve().parents[1]
TINY_SAM = REPO.parent / "shared" / "vectors" / "sam-prompting" / "tiny_sam_vit.pt"
DAVIS_SAMPLE = REPO.parent / "shared" / "data" / "davis-sample" / "JPEGImages" / "480p"


def load_frames(sequence: str, num_frames: int, longest: int) -> torch.Tensor:
    """``(T, 3, H, W) uint8``: the sample's first frames resized to ``longest``, else a texture."""
    folder = DAVIS_SAMPLE / sequence
    if folder.is_dir():
        from PIL import Image

        frames = []
        for path in sorted(folder.glob("*.jpg"))[:num_frames]:
            image = Image.open(path).convert("RGB")
            scale = longest / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            frames.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if frames:
            return torch.stack(frames).contiguous()
    rng = np.random.default_rng(0)
    height, width = longest * 9 // 16, longest
    texture = rng.integers(0, 255, size=(3, height + num_frames, width + 2 * num_frames), dtype=np.uint8)
    return torch.stack([torch.from_numpy(texture[:, t : t + height, 2 * t : 2 * t + width].copy())
                        for t in range(num_frames)])


def from_scratch_seconds(session: InteractiveSession, frames: torch.Tensor, pipeline: SamPt) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of SAM-PT on the session's final point set: track every point,
    segment every frame."""
    object_ids = session.object_ids
    points = session.points()
    positives = {o: [p for p in points if p.object_id == o and p.positive] for o in object_ids}
    negatives = {o: [p for p in points if p.object_id == o and not p.positive] for o in object_ids}
    num_positive = max(len(v) for v in positives.values())
    num_slots = num_positive + max(len(v) for v in negatives.values())
    queries = torch.zeros(len(object_ids), num_slots, 3)
    valid = torch.zeros(len(object_ids), num_slots, dtype=torch.bool)
    for m, o in enumerate(object_ids):
        for s, p in list(enumerate(positives[o])) + [(num_positive + s, p) for s, p in enumerate(negatives[o])]:
            queries[m, s] = torch.tensor([p.frame, p.x, p.y])
            valid[m, s] = True
    tic, cpu = time.perf_counter(), time.process_time()
    tracks = pipeline.track(frames, Queries(queries, num_positive, valid, torch.zeros(0)))
    for _ in pipeline.segment(frames, tracks, num_positive, tuple(frames.shape[-2:]), np.random.default_rng(0)):
        pass
    return time.perf_counter() - tic, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="custom", help="custom (the tiny test SAM), mobile_sam, segment_anything")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--random-init", action="store_true", help="random weights (timing only)")
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--longest", type=int, default=320, help="longest side of the frames (px)")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--corrections", type=int, default=5)
    parser.add_argument("--refinement", type=int, default=12, help="iterative_refinement_iterations")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.backend == "custom":
        sam = build_sam("custom", checkpoint_path=str(TINY_SAM))
    else:
        sam = build_sam(args.backend, args.variant, random_init=args.random_init)
    frames = load_frames(args.sequence, args.frames, args.longest)
    num_frames, _, height, width = frames.shape
    config = SamPtConfig.from_flat(iterative_refinement_iterations=args.refinement)
    rng = np.random.default_rng(0)

    session = InteractiveSession(frames, sam, LucasKanadeTracker(), config)
    setup = []
    for k in range(args.objects):
        x, y = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        setup.append(session.add_object(k + 1, 0, [(x, y, True), (x + 0.05 * width, y, True),
                                                   (rng.uniform(0, width), rng.uniform(0, height), False)]))
    corrections, correction_cpu = [], []
    for c in range(args.corrections):
        frame = 1 + c % (num_frames - 1)
        object_id = 1 + c % args.objects
        x, y = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        cpu = time.process_time()
        corrections.append(session.add_point(object_id, frame, x, y, positive=bool(c % 2 == 0)))
        correction_cpu.append(time.process_time() - cpu)
    undo = session.undo()
    session.redo()

    pipeline = SamPt(sam, LucasKanadeTracker(), config)
    full = [from_scratch_seconds(session, frames, pipeline) for _ in range(2)]
    full_wall, full_cpu = min(f[0] for f in full), min(f[1] for f in full)
    wall = statistics.median(r.seconds for r in corrections)
    cpu = statistics.median(correction_cpu)

    print(f"SAM {sam.variant}, {num_frames} frames {height}x{width}, {args.objects} objects, "
          f"{args.refinement} refinement iterations, {torch.get_num_threads()} CPU threads")
    print(f"session setup (objects added): {sum(r.seconds for r in setup):.3f} s, "
          f"{sum(r.frames_encoded for r in setup)} frames encoded")
    print("correction  frame  seconds  cpu_s    tracker  decoder  encoded  cache_hits  frames_reseg  prompts_decoded")
    for c, r in enumerate(corrections):
        print(f"{c:10d}  {session.history[args.objects + c].arguments['frame']:5d}  {r.seconds:7.3f}  "
              f"{correction_cpu[c]:7.3f}  "
              f"{r.tracker_seconds:7.3f}  {r.decoder_seconds:7.3f}  {r.frames_encoded:7d}  "
              f"{r.embedding_cache_hits:10d}  {len(r.frames_resegmented):12d}  {r.prompts_decoded:15d}")
    print(f"undo: {undo.seconds:.3f} s ({undo.prompts_decoded} prompts decoded, {undo.frames_encoded} frames encoded)")
    print(f"SAM-PT from scratch on the final point set: {full_wall:.3f} s wall, {full_cpu:.3f} s CPU "
          f"(best of {len(full)})")
    print(f"median correction: {wall:.3f} s wall, {cpu:.3f} s CPU -> re-running the whole video costs "
          f"{full_wall / wall:.1f}x (wall) / {full_cpu / cpu:.1f}x (CPU) one correction")
    print("(CPU = this process's CPU time over all its threads: robust to other processes on the machine)")


if __name__ == "__main__":
    main()
