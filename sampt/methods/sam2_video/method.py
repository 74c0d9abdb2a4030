"""``Sam2VideoMethod``: SAM 2's video predictor (package ``sam2``) behind the ``VosMethod`` interface.

The protocol is that of the sam2 repository's ``tools/vos_inference.py``:

- the predictor is built from a package config with ``non_overlap_masks=true`` and without
  post-processing (hole filling), as the script builds it for one index PNG per frame;
- each object's mask is given with ``add_new_mask`` on the first frame it is annotated, and it is
  tracked forward from there with ``propagate_in_video(start_frame_idx=that frame)``; objects
  that appear later in the video are handled the way the script's
  ``--track_object_appearing_later_in_video`` does (one inference state per object, scores of
  objects not yet started are -1024); when every object starts on the same frame this gives the
  same masks as the script's default path (one state for all objects), because SAM 2 runs each
  object as its own batch-1 slice there too;
- per frame, the objects' logits at the video's output size go through SAM 2's
  ``_apply_non_overlapping_constraints`` and a pixel belongs to an object where its logit is > 0
  (the script's ``score_thresh`` 0), which is what the harness's merge (``sampt.merge``) does with
  these logits. The one difference from the script's PNGs: the harness writes each object's
  given mask on its query frame (as it does for SAM-PT), where the script writes SAM 2's
  reconstruction of it.

Objects given as points (clicks: the demo, your own videos) are prompted with
``add_new_points_or_box`` on their query frame (the first ``num_positive`` points positive,
coordinates in input pixels), before the first frame is emitted; SAM 2's mask there is the
object's query mask.

The per-object states advance frame by frame together (``propagate_in_video`` generators), so
every frame is emitted as soon as it is computed; the image encoder runs once per frame for all
objects (the same features the script computes once per object). Memory options (see
:class:`Sam2VideoMethod`): frames are preprocessed lazily, one at a time, from the video's
uint8 frames (SAM 2's ``init_state`` keeps all frames as float tensors at the model's
resolution: 12 MB per frame at 1024); outputs older than SAM 2's memory window are released
once emitted (they are never read again, so the masks are unchanged); and SAM 2's own
``offload_video_to_cpu`` / ``offload_state_to_cpu``.

Measured cost (``benchmarks/bench_sam2.py --length 100 400``, test-size SAM 2, 2 objects, CPU):
SAM 2's state left at the end of the video is 0.64 MB at 100 and at 400 frames with
``release_outputs``, and grows from 2.8 MB to 10.8 MB without it. For the 1024 px SAM 2 / 2.1
models one object-frame output is about 0.79 MB (64 x 64 x 64 bf16 mask memory + 256 x 256
float32 low-res mask), i.e. about 630 MB for 400 frames and 2 objects without release
(computed from the shapes, not measured on a GPU here).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from sampt.checkpoints import resolve_checkpoint
from sampt.errors import InputFormatError
from sampt.methods.base import FrameOutput, MethodResult, VosMethod
from sampt.sam.sam2_backend import build_sam2_video_predictor, load_sam2_weights, resolve_model
from sampt.video import VideoItem

#: The score the sam2 script gives an object on frames before it appears.
NOT_STARTED_LOGIT = -1024.0

_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)


@dataclass
class Sam2Queries:
    """What the objects were queried with (the masks given to ``add_new_mask``).

    Attributes:
        query_frames: ``(M,) int64`` first annotated frame of each object.
        query_masks: ``(M, H, W) bool`` its mask at input resolution.
        num_positive: 0 (no query points; kept for consumers of SAM-PT's queries).
    """

    query_frames: torch.Tensor
    query_masks: torch.Tensor
    num_positive: int = 0


class LazyFrames:
    """``(3, S, S) float32`` SAM 2 input of frame ``t`` on demand, exactly as SAM 2's JPEG loader
    makes it (PIL resize to ``S x S``, ``/ 255``, ImageNet mean/std), from ``(T, 3, H, W) uint8``."""

    def __init__(self, frames: torch.Tensor, image_size: int, device: torch.device):
        self.frames = frames
        self.image_size = int(image_size)
        self.device = device
        self.mean = torch.tensor(_IMG_MEAN, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(_IMG_STD, dtype=torch.float32, device=device)[:, None, None]

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, t: int) -> torch.Tensor:
        from PIL import Image

        rgb = self.frames[t].permute(1, 2, 0).cpu().numpy()
        resized = np.array(Image.fromarray(rgb).convert("RGB").resize((self.image_size, self.image_size)))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32).to(self.device)
        image -= self.mean
        image /= self.std
        return image


@contextlib.contextmanager
def _quiet_propagation():
    """Without ``propagate_in_video``'s own progress bar (one per object per video); the harness
    reports progress per frame."""
    import sam2.sam2_video_predictor as module

    bar = module.tqdm
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = bar


class Sam2VideoMethod(VosMethod):
    """SAM 2 video object segmentation (see the module docstring).

    Args:
        model: a named model (``sam2.1_hiera_tiny``, ``sam2.1_hiera_small``,
            ``sam2.1_hiera_base_plus``, ``sam2.1_hiera_large``, ``sam2_hiera_*``: the package
            config and the registry checkpoint of the same name) or the path of a config in the
            ``sam2`` package (``configs/sam2.1/sam2.1_hiera_t.yaml``; give a checkpoint).
        checkpoint: registry name of the weights; None: the model's own.
        checkpoint_path: explicit weights file (used as is; overrides ``checkpoint``).
        hydra_overrides: extra hydra overrides of the model config (``++model.image_size=512``).
        offload_video_to_cpu: preprocess frames on the CPU and move each to the device when it
            is encoded (SAM 2's option; with lazy frames only the frame being encoded exists).
        offload_state_to_cpu: keep SAM 2's per-frame memory (mask memory features, low-res
            masks) in CPU memory (SAM 2's option; slower on a GPU).
        lazy_frames: preprocess each frame when it is encoded; False: all frames up front
            (``T x 3 x S x S`` float32, as ``init_state`` does).
        release_outputs: drop each object's per-frame outputs once they are older than SAM 2's
            memory window (``num_maskmem`` frames at its temporal stride and
            ``max_obj_ptrs_in_encoder`` object pointers); SAM 2's state otherwise grows with the
            video. The masks do not change.
        vos_optimized: SAM 2's ``SAM2VideoPredictorVOS`` (all modules ``torch.compile``-d).
        bf16_autocast: on CUDA, run under ``torch.autocast("cuda", bfloat16)`` as the script does
            (ignored on the CPU).
        apply_postprocessing: SAM 2's post-processing (hole filling, dynamic multimask); off in
            the script's evaluation.
    """

    def __init__(self, model: str = "sam2.1_hiera_base_plus", checkpoint: Optional[str] = None,
                 checkpoint_path: Optional[str] = None, hydra_overrides: Sequence[str] = (),
                 offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                 lazy_frames: bool = True, release_outputs: bool = True, vos_optimized: bool = False,
                 bf16_autocast: bool = True, apply_postprocessing: bool = False):
        super().__init__()
        self.config_name, default_checkpoint = resolve_model(model)
        self.model = model
        self.checkpoint = checkpoint if checkpoint is not None else default_checkpoint
        self.checkpoint_path = checkpoint_path
        if self.checkpoint is None and self.checkpoint_path is None:
            raise ValueError(f"SAM 2 config {model!r} has no registry checkpoint: give checkpoint_path "
                             "(or a registry checkpoint name)")
        self.hydra_overrides = [str(o) for o in hydra_overrides]
        self.offload_video_to_cpu = bool(offload_video_to_cpu)
        self.offload_state_to_cpu = bool(offload_state_to_cpu)
        self.lazy_frames = bool(lazy_frames)
        self.release_outputs = bool(release_outputs)
        self.vos_optimized = bool(vos_optimized)
        self.bf16_autocast = bool(bf16_autocast)
        self.apply_postprocessing = bool(apply_postprocessing)
        self.predictor: Optional[torch.nn.Module] = None
        self.weights_path = None

    @classmethod
    def from_predictor(cls, predictor: torch.nn.Module, **options) -> "Sam2VideoMethod":
        """A method around an already built ``SAM2VideoPredictor`` (scripts, tests)."""
        method = cls(model=options.pop("model", "sam2.1_hiera_tiny"), **options)
        method.predictor = predictor
        return method

    # -- VosMethod -----------------------------------------------------------------------------
    def required_checkpoints(self) -> list[str]:
        if self.predictor is not None or self.checkpoint_path is not None:
            return []
        return [self.checkpoint]

    def prepare(self, device: Optional[Union[str, torch.device]] = None) -> None:
        if self.predictor is None:
            path = resolve_checkpoint(self.checkpoint, self.checkpoint_path)
            predictor = build_sam2_video_predictor(
                self.config_name, self.hydra_overrides, device="cpu", vos_optimized=self.vos_optimized,
                apply_postprocessing=self.apply_postprocessing)
            load_sam2_weights(predictor, path, f"SAM 2 {self.model}")
            self.predictor = predictor
            self.weights_path = path
        if device is not None:
            self.to(device)

    def weight_files(self) -> dict[str, Any]:
        return {} if self.weights_path is None else {"sam2": self.weights_path}

    def description(self) -> dict[str, Any]:
        return {
            "method": "sam2_video",
            "model": self.model,
            "config": self.config_name,
            "hydra_overrides": list(self.hydra_overrides),
            "checkpoint": self.checkpoint if self.checkpoint_path is None else str(self.checkpoint_path),
            "vos_optimized": self.vos_optimized,
            "bf16_autocast": self.bf16_autocast,
            "apply_postprocessing": self.apply_postprocessing,
            "protocol": "sam2 tools/vos_inference.py: add_new_mask on each object's first annotated frame, "
                        "propagate forward, non-overlapping constraints, logits > 0",
        }

    def describe_model(self) -> str:
        return f"SAM 2 video predictor {self.model}"

    # -- one video -----------------------------------------------------------------------------
    def _new_state(self, images, height: int, width: int) -> dict[str, Any]:
        """An inference state like ``init_state``'s, on in-memory frames (no frame is encoded)."""
        from collections import OrderedDict

        device = self.predictor.device
        return {
            "images": images, "num_frames": len(images),
            "offload_video_to_cpu": self.offload_video_to_cpu,
            "offload_state_to_cpu": self.offload_state_to_cpu,
            "video_height": int(height), "video_width": int(width),
            "device": device,
            "storage_device": torch.device("cpu") if self.offload_state_to_cpu else device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
            "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
        }

    def memory_window(self) -> int:
        """How many frames back SAM 2 reads a non-conditioning output (mask memory or object pointer)."""
        p = self.predictor
        stride = max(1, int(getattr(p, "memory_temporal_stride_for_eval", 1)))
        return max(int(p.num_maskmem) * stride + 2, int(p.max_obj_ptrs_in_encoder) + 1)

    def _images(self, video: VideoItem):
        device = torch.device("cpu") if self.offload_video_to_cpu else self.predictor.device
        lazy = LazyFrames(video.frames, self.predictor.image_size, device)
        if self.lazy_frames:
            return lazy
        return torch.stack([lazy[t] for t in range(len(lazy))])

    def run(self, video: VideoItem, on_frame: Callable[[FrameOutput], None],
            on_queries: Optional[Callable[[Any], None]] = None,
            progress: Optional[Callable[[int], None]] = None,
            tracking_progress: Optional[Callable[[int, int], None]] = None) -> MethodResult:
        if self.predictor is None:
            raise RuntimeError("Sam2VideoMethod.prepare() builds SAM 2 before the first video")
        started = time.perf_counter()
        T, M = video.num_frames, len(video.objects)
        h, w = (int(s) for s in video.output_size)
        for o in video.objects:
            if o.mask is None and (o.points is None or len(o.points) == 0):
                raise InputFormatError(f"{video.name}: object {o.object_id} has neither a query mask nor query points")
            if not 0 <= o.query_frame < T:
                raise InputFormatError(f"{video.name}: object {o.object_id} has query frame {o.query_frame}, "
                                       f"outside the video's {T} frames")

        predictor = self.predictor
        device = predictor.device
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if self.bf16_autocast and device.type == "cuda" else contextlib.nullcontext())
        images = self._images(video)
        window = self.memory_window()
        in_h, in_w = (int(s) for s in video.frames.shape[-2:])
        # object m -> its inference state once it has its input; (state, generator) once it is tracked
        prompted: dict[int, dict[str, Any]] = {}
        tracks: dict[int, tuple[dict[str, Any], Any]] = {}
        scores_per_frame = torch.full((T, M), float("-inf"))
        encoded = 0
        with torch.inference_mode(), autocast, _quiet_propagation():
            # Point queries (clicks): SAM 2 on the query frame with add_new_points_or_box, before the
            # first frame is emitted, since the harness needs every object's query-frame mask first.
            query_masks = []
            for m, o in enumerate(video.objects):
                if o.mask is not None:
                    query_masks.append(o.mask.bool().cpu())
                    continue
                state = self._new_state(images, h, w)
                labels = (torch.arange(len(o.points)) < o.num_positive).to(torch.int32)
                _, _, masks = predictor.add_new_points_or_box(
                    inference_state=state, frame_idx=o.query_frame, obj_id=int(o.object_id),
                    points=o.points.float().cpu() / torch.tensor([in_w, in_h]),
                    labels=labels, normalize_coords=False)  # normalised by the input size (SAM 2 scales them)
                encoded += 1
                prompted[m] = state
                mask = masks[0:1].float() > 0.0
                query_masks.append(torch.nn.functional.interpolate(
                    mask.float(), size=(in_h, in_w), mode="nearest")[0, 0].bool().cpu())
            queries = Sam2Queries(torch.tensor([o.query_frame for o in video.objects], dtype=torch.long),
                                  torch.stack(query_masks) if M else torch.zeros((0, in_h, in_w), dtype=torch.bool))
            if on_queries is not None:
                on_queries(queries)

            for t in range(T):
                starting = [m for m, o in enumerate(video.objects) if o.query_frame == t]
                active = sorted(set(tracks) | set(starting))
                features = None
                if active:
                    # The image encoder runs once per frame; every object's state reads its cache.
                    image = images[t].to(device).float().unsqueeze(0)
                    features = {t: (image, predictor.forward_image(image))}
                    encoded += 1
                for m in starting:
                    o = video.objects[m]
                    state = prompted.get(m)
                    if state is None:
                        prompt = o.output_mask if o.output_mask is not None else o.mask
                        if not bool(prompt.any()):
                            continue  # as the script: an empty mask is no input; the object stays empty
                        state = self._new_state(images, h, w)
                        state["cached_features"] = features
                        predictor.add_new_mask(inference_state=state, frame_idx=t, obj_id=int(o.object_id),
                                               mask=prompt.bool().cpu())
                    tracks[m] = (state, predictor.propagate_in_video(state, start_frame_idx=t, reverse=False))
                logits = torch.full((M, 1, h, w), NOT_STARTED_LOGIT, dtype=torch.float32, device=device)
                for m in sorted(tracks):
                    state, frames = tracks[m]
                    state["cached_features"] = features
                    frame_idx, _, masks = next(frames)
                    if frame_idx != t:
                        raise RuntimeError(f"SAM 2 propagated frame {frame_idx}, expected {t}")
                    logits[m] = masks[0].float()
                    outputs = state["output_dict_per_obj"][0]
                    out = outputs["cond_frame_outputs"].get(t) or outputs["non_cond_frame_outputs"].get(t)
                    scores_per_frame[t, m] = float(out["object_score_logits"].float().reshape(-1)[0])
                    if self.release_outputs:
                        outputs["non_cond_frame_outputs"].pop(t - window, None)
                    state["cached_features"] = {}
                if M > 1:
                    logits = predictor._apply_non_overlapping_constraints(logits)
                has_score = torch.isfinite(scores_per_frame[t])
                on_frame(FrameOutput(t=t, logits=logits[:, 0].float(), scores=scores_per_frame[t].clone(),
                                     has_score=has_score))
                if progress is not None:
                    progress(t)
        for state, frames in tracks.values():
            frames.close()
        present = torch.isfinite(scores_per_frame)
        probabilities = torch.where(present, torch.sigmoid(scores_per_frame), torch.zeros_like(scores_per_frame))
        video_scores = probabilities.sum(0) / present.sum(0).clamp(min=1)
        video_scores[~present.any(0)] = float("-inf")
        return MethodResult(
            queries=queries,
            trajectories=torch.zeros((T, M, 0, 2), dtype=torch.float32),
            visibilities=torch.zeros((T, M, 0), dtype=torch.bool),
            reasons=torch.zeros((T, M, 0), dtype=torch.int8),
            scores_per_frame=scores_per_frame,
            scores=video_scores,
            timings={"sam2": time.perf_counter() - started},
            num_decoder_calls=int(present.sum()),
            num_encoded_frames=encoded,
        )
