"""Times SAM-PT's per-frame SAM stage: sampt's batched prompting vs the original per-object loop.

The baseline is the straightforward implementation of the original: ``SamPredictor.set_image``
per frame, then for every object its own ``predict_torch`` calls (first positives-only call,
second call, iterative box refinement), each post-processed to frame size. sampt shares the
frame embedding too, but decodes all objects of a frame in one masked, batched decoder call per
step. Both produce the same masks (checked here: agreement is printed).

    python benchmarks/bench_prompting.py --model mobile_sam --objects 5 --frames 4 --device cuda
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sampt.sam.backends import build_sam
from sampt.sam.prompting import PromptingConfig, SamPrompter, build_point_prompts


def original_loop(sam_model, frames, trajectories, visibilities, config):
    """The original implementation's SAM stage (per object, per call). Returns masks (M, T, H, W)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam_model.sam)
    num_frames, num_objects = trajectories.shape[:2]
    masks = torch.zeros(num_objects, num_frames, *frames.shape[-2:], dtype=torch.bool)
    for t in range(num_frames):
        predictor.set_image(frames[t].permute(1, 2, 0).numpy())
        prompts = build_point_prompts(trajectories[t], visibilities[t], config)
        for m, prompt in enumerate(prompts):
            if len(prompt) == 0:
                continue
            coords = predictor.transform.apply_coords_torch(prompt.coords, predictor.original_size).to(predictor.device)
            labels = prompt.labels.to(predictor.device)
            mask_input = None
            if config.negative_points_per_mask > 0:
                positive = labels == 1
                _, _, mask_input = predictor.predict_torch(coords[positive][None], labels[positive][None],
                                                           multimask_output=False, return_logits=True)
            logits, iou, low_res = predictor.predict_torch(coords[None], labels[None], mask_input=mask_input,
                                                           multimask_output=False, return_logits=True)
            for _ in range(config.iterative_refinement_iterations):
                mask = logits[0, 0] > 0
                if mask.sum() < 2:
                    break
                yx = mask.nonzero()
                box = torch.tensor([yx[:, 1].min(), yx[:, 0].min(), yx[:, 1].max(), yx[:, 0].max()],
                                   dtype=torch.float, device=predictor.device)
                logits, iou, low_res = predictor.predict_torch(coords[None], labels[None], boxes=box[None, None],
                                                               mask_input=low_res, multimask_output=False,
                                                               return_logits=True)
            if iou[0, 0] >= config.sam_iou_threshold:
                masks[m, t] = (logits[0, 0] > 0).cpu()
    return masks


def sampt_stage(sam_model, frames, trajectories, visibilities, config):
    prompter = SamPrompter(sam_model, config)
    num_frames, num_objects = trajectories.shape[:2]
    masks = torch.zeros(num_objects, num_frames, *frames.shape[-2:], dtype=torch.bool)
    calls = 0
    for t in range(num_frames):
        embedding = sam_model.embed_frames(frames[t : t + 1])[0]
        prompts = build_point_prompts(trajectories[t].to(sam_model.device), visibilities[t].to(sam_model.device),
                                      config)
        prediction = prompter.predict_frame(embedding, prompts)
        masks[:, t] = (prediction.logits > 0).cpu()
        calls += prediction.num_decoder_calls
    return masks, calls


def make_inputs(num_frames, num_objects, points, height, width, seed):
    rng = np.random.default_rng(seed)
    frames = torch.from_numpy(rng.integers(0, 255, (num_frames, 3, height, width), dtype=np.uint8))
    centres = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height], (num_objects, 1, 2))
    trajectories = centres + rng.normal(0, 0.05 * width, (num_frames, num_objects, points, 2))
    visibilities = rng.random((num_frames, num_objects, points)) > 0.15
    return frames, torch.as_tensor(trajectories, dtype=torch.float32), torch.as_tensor(visibilities)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "mobile_sam", "vit_b"],
                        help="tiny: the shared 256-px test SAM; others random-initialised at full size")
    parser.add_argument("--tiny-checkpoint", default="../shared/vectors/sam-prompting/tiny_sam_vit.pt")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--refinements", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decoder-batch-size", type=int, default=None,
                        help="prompts per decoder call (default: sampt's, 64 on CUDA and 1 on CPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.model == "tiny":
        sam_model = build_sam("custom", checkpoint_path=args.tiny_checkpoint)
    elif args.model == "mobile_sam":
        sam_model = build_sam("mobile_sam", random_init=True)
    else:
        sam_model = build_sam("segment_anything", "vit_b", random_init=True)
    sam_model.to(device)
    config = PromptingConfig(positive_points_per_mask=16, negative_points_per_mask=1,
                             iterative_refinement_iterations=args.refinements, sam_iou_threshold=-1.0,
                             decoder_batch_size=args.decoder_batch_size)
    frames, trajectories, visibilities = make_inputs(args.frames, args.objects, 17, args.height, args.width, 0)

    with torch.no_grad():
        # Warm-up (CUDA kernels, allocator) on one frame.
        sampt_stage(sam_model, frames[:1], trajectories[:1], visibilities[:1], config)
        original_loop(sam_model, frames[:1], trajectories[:1], visibilities[:1], config)
        base_times, ours_times = [], []
        for _ in range(args.repeats):
            base_masks, seconds = timed(lambda: original_loop(sam_model, frames, trajectories, visibilities, config),
                                        device)
            base_times.append(seconds)
            (our_masks, calls), seconds = timed(
                lambda: sampt_stage(sam_model, frames, trajectories, visibilities, config), device)
            ours_times.append(seconds)
    agreement = (base_masks == our_masks).float().mean(dim=(2, 3))
    base, ours = min(base_times), min(ours_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model={args.model} device={name} torch={torch.__version__} frames={args.frames} "
          f"objects={args.objects} size={args.width}x{args.height} refinements={args.refinements}")
    print(f"original per-object loop : {base:8.3f} s  ({base / args.frames:.3f} s/frame)")
    print(f"sampt prompting          : {ours:8.3f} s  ({ours / args.frames:.3f} s/frame, "
          f"{calls / args.frames:.1f} decoder calls/frame)")
    print(f"speed-up                 : {base / ours:8.2f}x")
    print(f"mask agreement           : min {agreement.min().item():.5f} over (object, frame)")


if __name__ == "__main__":
    main()
