"""SAM 2 video (``Sam2VideoMethod``) vs SAM-PT on the same synthetic clip, random weights.

Weights do not change the cost, so both models are random-initialised at their real sizes
(``--sam2`` a named SAM 2 model, ``--sam`` SAM-PT's segmenter: a SAM 1 variant or a SAM 2 model). SAM-PT runs with the
static tracker, so its time is the SAM stage alone (point tracking comes on top in a real run).

    python benchmarks/bench_sam2.py                                  # 8 frames, 2 objects, CPU
    python benchmarks/bench_sam2.py --sam2 sam2.1_hiera_large --sam vit_h --device cuda --frames 50
    python benchmarks/bench_sam2.py --length 100 400                 # host memory vs video length
    python benchmarks/bench_sam2.py --sam sam2.1_hiera_tiny          # SAM-PT on SAM 2.1's image path

Speed: frames/s of each method (median of ``--repeats``), and their ratio. Memory: peak host
RSS growth during the run (``/proc/self/statm``; the clip is allocated before; allocator reuse
makes it noisy), and the CUDA peak (``torch.cuda.max_memory_allocated``) on a GPU. ``--length``
runs SAM 2 alone on clips of the given lengths with ``release_outputs`` on and off and prints the
bytes of SAM 2's per-frame state left at the end of the video (exact) and the RSS growth: with
release on the state must not grow with the video (only the per-frame outputs a consumer keeps
do; this benchmark keeps none). ``--length-model tiny`` uses a small SAM 2 at 128 px so that 400 frames
run in seconds on a CPU; its per-frame state is small, so the growth without release is small
too: give a real model (and a GPU) to see the full effect.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from sampt.methods.sam2_video import Sam2VideoMethod
from sampt.sam.sam2_backend import SAM2_MODELS, build_sam2_video_predictor
from sampt.video import ObjectQuery, VideoItem

#: A small SAM 2.1 (128 px input) for length runs on a CPU (the test suite's tiny model, default memory window).
TINY = [
    "++model.image_size=128",
    "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,4]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "++model.memory_attention.num_layers=1",
]


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def make_clip(num_frames: int, height: int, width: int, num_objects: int) -> VideoItem:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    background = torch.from_numpy((rng.random((3, height, width)) * 80 + 40).astype(np.uint8))
    frames = background[None].repeat(num_frames, 1, 1, 1)
    objects = []
    for m in range(num_objects):
        cy, cx, r = height * (0.3 + 0.4 * (m % 2)), width * (0.2 + 0.6 * m / max(1, num_objects)), height / 8
        for t in range(num_frames):
            disc = torch.from_numpy((yy - cy) ** 2 + (xx - cx - 2 * t % (width // 4)) ** 2 < r ** 2)
            frames[t][:, disc] = torch.tensor([200, 60 + 40 * m, 50], dtype=torch.uint8)[:, None]
            if t == 0:
                objects.append(ObjectQuery(m + 1, 0, mask=disc.clone()))
    return VideoItem("clip", frames, [f"{t:05d}" for t in range(num_frames)], objects, (height, width))


def time_method(method, video: VideoItem, repeats: int, device: str) -> tuple[float, float, float]:
    """(median seconds, peak RSS growth MB, CUDA peak MB) of ``method.run`` on ``video``."""
    times, growth = [], 0.0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start_rss, peak = rss_mb(), [0.0]

        def on_frame(output):
            peak[0] = max(peak[0], rss_mb() - start_rss)

        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        method.run(video, on_frame)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        growth = max(growth, peak[0])
    cuda_peak = torch.cuda.max_memory_allocated() / 1e6 if device.startswith("cuda") else float("nan")
    return statistics.median(times), growth, cuda_peak


def sam2_method(model: str, device: str, overrides=(), **options) -> Sam2VideoMethod:
    config = SAM2_MODELS[model][0] if model in SAM2_MODELS else model
    predictor = build_sam2_video_predictor(config, list(overrides))
    method = Sam2VideoMethod.from_predictor(predictor, model=model if model in SAM2_MODELS else "sam2.1_hiera_tiny",
                                            **options)
    method.to(device)
    return method


def state_mb(states) -> float:
    """MB of the tensors SAM 2 keeps per frame in the given inference states (outputs and inputs)."""
    seen, total = set(), 0

    def visit(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for state in states:
        for key in ("output_dict_per_obj", "mask_inputs_per_obj", "point_inputs_per_obj"):
            visit(state[key])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam2", default="sam2.1_hiera_tiny", choices=sorted(SAM2_MODELS))
    parser.add_argument("--sam", default="vit_b",
                        help="SAM-PT's segmenter: a segment_anything variant (vit_b, vit_l, vit_h) or a SAM 2 "
                             "model (sam2.1_hiera_tiny, ...: backend sam2)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"))
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    parser.add_argument("--length", type=int, nargs="*", default=None,
                        help="also (or only, with --skip-speed) run SAM 2 on clips of these lengths")
    parser.add_argument("--length-model", default="tiny", help="'tiny' or a named SAM 2 model for --length")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, clip {height}x{width}, "
          f"{args.objects} objects, random weights")

    if not args.skip_speed:
        video = make_clip(args.frames, height, width, args.objects)
        sam2 = sam2_method(args.sam2, args.device)
        sam2.run(make_clip(2, height, width, args.objects), lambda o: None)  # warm-up
        s2_time, s2_rss, s2_cuda = time_method(sam2, video, args.repeats, args.device)
        del sam2
        from sampt.methods.sam_pt.method import SamPtMethod
        from sampt.methods.sam_pt.options import SamPtConfig
        from sampt.sam.backends import build_sam
        from sampt.trackers.trivial import StaticTracker

        backend = "sam2" if args.sam in SAM2_MODELS else "segment_anything"
        sampt = SamPtMethod.from_models(build_sam(backend, args.sam, random_init=True), StaticTracker(), SamPtConfig())
        sampt.to(args.device)
        sampt.run(make_clip(2, height, width, args.objects), lambda o: None)
        pt_time, pt_rss, pt_cuda = time_method(sampt, video, args.repeats, args.device)
        print(f"{'method':<34} {'frames/s':>9} {'RSS growth MB':>14} {'CUDA peak MB':>13}")
        print(f"{'SAM 2 video ' + args.sam2:<34} {args.frames / s2_time:9.3f} {s2_rss:14.1f} {s2_cuda:13.1f}")
        print(f"{'SAM-PT (static tracker) SAM ' + args.sam:<34} {args.frames / pt_time:9.3f} {pt_rss:14.1f} {pt_cuda:13.1f}")
        print(f"ratio SAM 2 / SAM-PT frames/s: {pt_time / s2_time:.2f}")

    if args.length:
        model = "sam2.1_hiera_tiny" if args.length_model == "tiny" else args.length_model
        overrides = TINY if args.length_model == "tiny" else ()
        print(f"host memory vs length, SAM 2 {args.length_model}, offload_state_to_cpu on:")
        for release in (True, False):
            method = sam2_method(model, args.device, overrides, release_outputs=release, offload_state_to_cpu=True,
                                 offload_video_to_cpu=True)
            states, propagate = [], method.predictor.propagate_in_video

            def spy(state, **kwargs):
                states.append(state)
                return propagate(state, **kwargs)

            method.predictor.propagate_in_video = spy
            for length in args.length:
                states.clear()
                video = make_clip(length, height, width, args.objects)
                seconds, growth, cuda_peak = time_method(method, video, 1, args.device)
                print(f"  release_outputs={release!s:<5} {length:4d} frames: SAM 2 state at the end "
                      f"{state_mb(states):8.2f} MB, RSS growth {growth:8.1f} MB, CUDA peak {cuda_peak:8.1f} MB, "
                      f"{length / seconds:.2f} frames/s")
                del video


if __name__ == "__main__":
    main()
