"""The cost of SAM-PT-reinit relative to plain SAM-PT on the same clip.

Runs plain SAM-PT, SAM-PT-reinit with its embedding cache, and SAM-PT-reinit without the cache
(every window re-encodes its frames, as the original does) on one clip, and prints a table of
mask-decoder calls, image-encoder frames and wall time:

    python benchmarks/bench_reinit.py                                   # tiny SAM, static tracker, synthetic clip
    python benchmarks/bench_reinit.py --sam mobile_sam --tracker lk     # MobileSAM-size SAM (random weights)
    python benchmarks/bench_reinit.py --davis blackswan --frames 24 --horizon 8
    python benchmarks/bench_reinit.py --device cuda --sam mobile_sam --frames 48

Clips: ``synthetic`` (default; three textured moving objects, the third entering at the middle
frame, so the backward pass has work to do) or ``--davis SEQUENCE`` from the shared DAVIS
sample (objects of the first annotation, all queried on frame 0). Frames are resized so their
longest side is ``--longest-size``. SAM weights are random (``--sam mobile_sam``) or the tiny
test SAM of ``../shared/vectors/sam-prompting`` (``--sam tiny``): the number of decoder calls
depends on the masks (refinement stops on masks under 2 pixels, reinit frames follow mask
areas), so with real weights the counts differ; the cost structure does not. Wall time is one
timed run per row after one untimed warm-up run of plain SAM-PT.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sampt.methods.sam_pt.method import SamPtMethod
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.video import ObjectQuery, VideoItem

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAMPT_SHARED", REPO.parent / "shared"))


def _resize(frames: torch.Tensor, masks: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, 3, H, W) uint8`` frames (bilinear) and ``(T, H, W)`` masks (nearest) to a longest side."""
    height, width = frames.shape[-2:]
    scale = longest / max(height, width)
    size = (int(round(height * scale)), int(round(width * scale)))
    frames = F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return frames.to(torch.uint8), masks.to(torch.uint8)


def synthetic_clip(num_frames: int, longest: int) -> VideoItem:
    from sampt.datamodules.dummy_davis import synthetic_multi_object_sequence

    frames, masks = synthetic_multi_object_sequence(num_frames, height=270, width=480, seed=0)
    frames_t = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    masks_t = torch.from_numpy(masks)
    output_size = tuple(frames_t.shape[-2:])
    frames_t, masks_t = _resize(frames_t, masks_t, longest)
    objects = []
    for object_id in (1, 2, 3):
        present = [t for t in range(num_frames) if bool((masks_t[t] == object_id).any())]
        objects.append(ObjectQuery(object_id, present[0], masks_t[present[0]] == object_id))
    return VideoItem("synthetic", frames_t, [f"{t:05d}" for t in range(num_frames)], objects, output_size)


def davis_clip(sequence: str, num_frames: int, longest: int) -> VideoItem:
    from PIL import Image

    root = SHARED / "data" / "davis-sample"
    images = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:num_frames]
    if not images:
        raise SystemExit(f"no frames for sequence {sequence!r} under {root / 'JPEGImages' / '480p'}")
    frames = torch.from_numpy(np.stack([np.array(Image.open(p).convert("RGB")) for p in images]))
    frames = frames.permute(0, 3, 1, 2).contiguous()
    first = np.array(Image.open(root / "Annotations" / "480p" / sequence / (images[0].stem + ".png")))
    if first.ndim == 3:
        first = first[..., 0]
    ids = [int(i) for i in np.unique(first) if i != 0]
    masks = torch.from_numpy(first)[None].repeat(len(images), 1, 1)
    output_size = tuple(frames.shape[-2:])
    frames, masks = _resize(frames, masks, longest)
    objects = [ObjectQuery(k + 1, 0, masks[0] == i) for k, i in enumerate(ids)]
    return VideoItem(sequence, frames, [p.stem for p in images], objects, output_size)


def build_models(args: argparse.Namespace):
    from sampt.sam.backends import build_sam
    from sampt.trackers.lk import LucasKanadeTracker
    from sampt.trackers.trivial import StaticTracker

    if args.sam == "tiny":
        sam = build_sam("custom", checkpoint_path=str(SHARED / "vectors" / "sam-prompting" / "tiny_sam_vit.pt"),
                        device=args.device)
    else:
        sam = build_sam(args.sam, random_init=True, device=args.device)
    tracker = StaticTracker() if args.tracker == "static" else LucasKanadeTracker()
    return sam, tracker.to(args.device)


def measure(method: SamPtMethod, video: VideoItem, device: str) -> dict:
    frames = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    tic = time.perf_counter()
    result = method.run(video, lambda output: frames.append(output.t))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    if frames != list(range(video.num_frames)):
        raise RuntimeError(f"frames emitted out of order: {frames}")
    return {"decoder": result.num_decoder_calls, "encoder": result.num_encoded_frames, "seconds": seconds,
            "timings": result.timings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="tiny", choices=["tiny", "mobile_sam", "segment_anything"],
                        help="tiny test SAM, or a random-weight SAM of that backend's default size")
    parser.add_argument("--tracker", default="static", choices=["static", "lk"])
    parser.add_argument("--davis", default=None, help="a sequence of the shared DAVIS sample instead of the synthetic clip")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--longest-size", type=int, default=480)
    parser.add_argument("--horizon", type=int, default=8, help="reinit_horizon = reinit_point_tracker_horizon")
    parser.add_argument("--variant", default="reinit-at-median-of-area-diff")
    parser.add_argument("--points", type=int, default=8, help="positive points per mask")
    parser.add_argument("--refinements", type=int, default=3, help="iterative refinement iterations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    video = davis_clip(args.davis, args.frames, args.longest_size) if args.davis else \
        synthetic_clip(args.frames, args.longest_size)
    sam, tracker = build_models(args)
    common = dict(positive_points_per_mask=args.points, negative_points_per_mask=1,
                  iterative_refinement_iterations=args.refinements, sam_iou_threshold=-1.0)
    reinit = dict(use_point_reinit=True, reinit_horizon=args.horizon, reinit_point_tracker_horizon=args.horizon,
                  reinit_variant=args.variant)
    rows = [
        ("SAM-PT", SamPtConfig.from_flat(**common)),
        ("SAM-PT-reinit", SamPtConfig.from_flat(**common, **reinit)),
        ("SAM-PT-reinit, no embedding cache", SamPtConfig.from_flat(**common, **reinit, reinit_embedding_cache_mib=0)),
    ]
    import warnings

    warnings.filterwarnings("ignore", message=".*is empty.*")  # re-initialisation on empty random masks
    measure(SamPtMethod.from_models(sam, tracker, rows[0][1]), video, args.device)  # warm-up
    results = [(name, measure(SamPtMethod.from_models(sam, tracker, config), video, args.device)) for name, config in rows]

    print(f"clip: {video.name}, {video.num_frames} frames {tuple(video.frames.shape[-2:])}, "
          f"{len(video.objects)} objects (query frames {[o.query_frame for o in video.objects]}); "
          f"SAM {sam.variant} ({'tiny test weights' if args.sam == 'tiny' else 'random weights'}), "
          f"tracker {args.tracker}, horizon {args.horizon}, {args.variant}, device {args.device}, "
          f"{args.threads} thread(s)")
    base = results[0][1]
    header = f"{'method':36s} {'decoder calls':>13s} {'encoded frames':>14s} {'wall s':>8s} {'x time':>7s}  stages (s)"
    print(header)
    print("-" * len(header))
    for name, row in results:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["timings"].items()) if v >= 0.005)
        print(f"{name:36s} {row['decoder']:13d} {row['encoder']:14d} {row['seconds']:8.2f} "
              f"{row['seconds'] / base['seconds']:7.2f}  {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
