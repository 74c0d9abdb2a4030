"""SAM-PT's per-frame SAM stage: tracked points in, per-object mask logits and scores out.

Behaviour (pinned by ``shared/vectors/sam-prompting``), per frame and object:

1. The prompt is the object's visible points (positives label 1, negatives label 0) followed,
   with ``add_other_objects_positive_points_as_negative_points``, by every other object's
   visible positive points labelled 0 (optionally capped at ``max_other_objects_positive_points``
   by a random subset).
2. No prompt point at all: empty mask (logits ``-inf``) and no score.
3. With ``negative_points_per_mask > 0``: a first call with only the positive prompt points
   gives low-resolution logits that are the ``mask_input`` of a second call with all points.
   Otherwise one call with all points. Always ``multimask_output=False``.
4. ``iterative_refinement_iterations`` times: stop if the mask has fewer than 2 pixels, else
   call again with all points, the mask's tight box and the previous low-resolution logits.
   As in the original, the box is given in *frame* pixels, not in SAM's resized input frame
   (``refinement_box_in_frame_pixels=True``); set it to False to map the box like the points.
5. A final predicted IoU below ``sam_iou_threshold`` empties the mask; the score is kept.

Speed: the frame's image embedding is computed once and shared by all objects, and the
prompts of all objects go through the mask decoder together. Objects have different numbers
of prompt tokens; padding with SAM's "not a point" label is *not* neutral (pad tokens take part
in attention), so the batched decoder masks pad tokens out of every attention over tokens,
which makes each object's result equal to its unpadded call up to float rounding. HQ-SAM's and SAM 2's
decoder is called per group of objects with equal token counts instead (exact, less batched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from sampt.sam.model import ImageEmbedding, SamModel


@dataclass
class PromptingConfig:
    """Options of the SAM stage (defaults are SAM-PT's VOS defaults).

    Attributes:
        positive_points_per_mask: leading points of each object that are positive.
        negative_points_per_mask: trailing points of each object that are negative.
        add_other_objects_positive_points_as_negative_points: prompt other objects' visible
            positives as negatives.
        max_other_objects_positive_points: cap on those extra negatives (random subset).
        masks_batch_size: the original segments a video's objects in separate batches of this
            many (5 for VOS, 100 for VIS), so only objects of the same batch act as each other's
            negatives; None lets every object see every other one.
        iterative_refinement_iterations: box refinement calls after the point prompt.
        sam_iou_threshold: masks with a lower predicted IoU are emptied.
        refinement_box_in_frame_pixels: reproduce the original's box coordinates (see module doc).
        decoder_batch_size: most prompts per mask-decoder call (bounds memory: about 4 MB each for
            a 64x64x256 embedding in float32). None: 64 on CUDA, 1 on CPU, where batching does not
            pay (measured: a batch of 5 full-size prompts costs about 2x their separate calls, as
            the working set leaves the CPU caches; see benchmarks/bench_prompting.py).
        batch_prompts: False runs one decoder call per object (the reference loop; for checks).
    """

    positive_points_per_mask: int = 16
    negative_points_per_mask: int = 1
    add_other_objects_positive_points_as_negative_points: bool = True
    max_other_objects_positive_points: Optional[int] = None
    masks_batch_size: Optional[int] = None
    iterative_refinement_iterations: int = 12
    sam_iou_threshold: float = 0.7
    refinement_box_in_frame_pixels: bool = True
    decoder_batch_size: Optional[int] = None
    batch_prompts: bool = True

    def __post_init__(self) -> None:
        if self.positive_points_per_mask < 0 or self.negative_points_per_mask < 0:
            raise ValueError("positive_points_per_mask and negative_points_per_mask must be >= 0")
        if self.iterative_refinement_iterations < 0:
            raise ValueError("iterative_refinement_iterations must be >= 0")
        if self.decoder_batch_size is not None and self.decoder_batch_size < 1:
            raise ValueError("decoder_batch_size must be >= 1 or null")
        if self.masks_batch_size is not None and self.masks_batch_size < 1:
            raise ValueError("masks_batch_size must be >= 1 or null")


@dataclass
class PointPrompt:
    """One object's prompt on one frame: ``coords (n, 2) float32`` frame px, ``labels (n,) int64``."""

    coords: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FramePrediction:
    """SAM's output for all objects of one frame.

    Attributes:
        logits: ``(M, H, W) float32`` mask logits at the frame's size; ``-inf`` for empty masks.
        scores: ``(M,) float32`` predicted IoU of the final mask; ``-inf`` where no prompt.
        has_score: ``(M,) bool`` whether the object was prompted (its score counts).
        num_decoder_calls: mask-decoder forward calls made (for benchmarks).
        low_res_logits: ``(M, 1, 4h', 4w') float32`` SAM's final low-resolution logits, from
            which ``logits`` were upscaled (zeros for unprompted objects; the IoU threshold is
            applied to ``logits`` only). SAM-PT-reinit keeps these instead of frame-size logits.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    has_score: torch.Tensor
    num_decoder_calls: int = 0
    low_res_logits: Optional[torch.Tensor] = None


def build_point_prompts(
    points: torch.Tensor,
    visible: torch.Tensor,
    config: PromptingConfig,
    rng: Optional[np.random.Generator] = None,
) -> list[PointPrompt]:
    """Assemble each object's prompt on one frame (step 1 of the module doc).

    Args:
        points: ``(M, P, 2) float32`` tracked (x, y) in frame pixels; per object the first
            ``positive_points_per_mask`` are positive, the rest negative.
        visible: ``(M, P) bool``.
        rng: draws the subset when ``max_other_objects_positive_points`` caps the extra negatives.
    """
    num_objects, num_points, _ = points.shape
    num_positive = config.positive_points_per_mask
    labels = torch.ones(num_points, dtype=torch.int64, device=points.device)
    if config.negative_points_per_mask > 0:
        labels[num_positive:] = 0
    visible = visible.bool()
    positives_of = [points[m, :num_positive][visible[m, :num_positive]] for m in range(num_objects)]
    prompts = []
    for m in range(num_objects):
        coords, object_labels = points[m][visible[m]], labels[visible[m]]
        if num_objects > 1 and config.add_other_objects_positive_points_as_negative_points:
            group = range(num_objects)
            if config.masks_batch_size is not None:
                first = m - m % config.masks_batch_size
                group = range(first, min(first + config.masks_batch_size, num_objects))
            others = torch.cat([positives_of[o] for o in group if o != m] or [points.new_zeros(0, 2)], dim=0)
            cap = config.max_other_objects_positive_points
            if cap is not None and len(others) > cap:
                generator = rng if rng is not None else np.random.default_rng()
                chosen = generator.choice(len(others), cap, replace=False)
                others = others[torch.as_tensor(chosen, device=others.device)]
            coords = torch.cat([coords, others], dim=0)
            object_labels = torch.cat([object_labels, labels.new_zeros(len(others))])
        prompts.append(PointPrompt(coords.float(), object_labels))
    return prompts


class SamPrompter:
    """Runs the SAM stage of SAM-PT on one frame at a time. Holds no per-video state.

    Args:
        sam: the SAM model.
        config: prompting options.
    """

    def __init__(self, sam: SamModel, config: PromptingConfig):
        self.sam = sam
        self.config = config

    # -- decoding --------------------------------------------------------------------------
    def _decode(self, embedding: ImageEmbedding, prompts: list[PointPrompt], boxes: Optional[list],
                mask_inputs: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Decode B prompts on one frame. Returns ``(low_res (B,1,4h,4w), iou (B,), calls)``."""
        sam = self.sam
        batch = len(prompts)
        sparse = [sam.prompt_tokens(p.coords, p.labels, None if boxes is None else boxes[i],
                                    embedding.original_size, self.config.refinement_box_in_frame_pixels)
                  for i, p in enumerate(prompts)]
        low_res = [None] * batch
        ious = [None] * batch
        calls = 0
        for group in self._groups(sparse):
            dense = sam.mask_embedding(None if mask_inputs is None else mask_inputs[group], len(group))
            longest = max(sparse[i].shape[0] for i in group)
            tokens = sparse[0].new_zeros(len(group), longest, sparse[0].shape[1])
            valid = torch.zeros(len(group), longest, dtype=torch.bool, device=tokens.device)
            for row, i in enumerate(group):
                tokens[row, : sparse[i].shape[0]] = sparse[i]
                valid[row, : sparse[i].shape[0]] = True
            masks, iou = sam.decode(embedding, tokens, None if valid.all() else valid, dense)
            calls += 1
            for row, i in enumerate(group):
                low_res[i], ious[i] = masks[row : row + 1], iou[row, 0]
        return torch.cat(low_res, dim=0), torch.stack(ious), calls

    def _groups(self, sparse: list[torch.Tensor]) -> list[list[int]]:
        """Split prompt indices into decoder calls.

        Masked decoding batches everything (up to ``decoder_batch_size``); decoders that cannot
        mask pad tokens (HQ-SAM, SAM 2) batch only prompts with equal token counts;
        ``batch_prompts=False`` makes one call per prompt.
        """
        size = self.config.decoder_batch_size
        if size is None:
            size = 64 if self.sam.device.type == "cuda" else 1
        if not self.config.batch_prompts:
            size = 1
        if not self.sam.pads_prompts:
            by_length: dict[int, list[int]] = {}
            for i, tokens in enumerate(sparse):
                by_length.setdefault(int(tokens.shape[0]), []).append(i)
            buckets = list(by_length.values())
        else:
            buckets = [list(range(len(sparse)))]
        return [bucket[i : i + size] for bucket in buckets for i in range(0, len(bucket), size)]

    # -- the per-frame procedure -------------------------------------------------------------
    @torch.no_grad()
    def predict_frame(self, embedding: ImageEmbedding, prompts: list[PointPrompt]) -> FramePrediction:
        """Steps 2-5 of the module doc for all objects of one frame."""
        config = self.config
        height, width = embedding.original_size
        device = self.sam.device
        num_objects = len(prompts)
        logits = torch.full((num_objects, height, width), float("-inf"), device=device)
        scores = torch.full((num_objects,), float("-inf"), device=device)
        has_score = torch.zeros(num_objects, dtype=torch.bool, device=device)
        active = [m for m in range(num_objects) if len(prompts[m]) > 0]
        if not active:
            return FramePrediction(logits, scores, has_score, 0, None)
        calls = 0
        object_prompts = [prompts[m] for m in active]
        mask_inputs = None
        if config.negative_points_per_mask > 0:
            positive_prompts = [PointPrompt(p.coords[p.labels == 1], p.labels[p.labels == 1]) for p in object_prompts]
            first_low_res, _, n = self._decode(embedding, positive_prompts, None, None)
            mask_inputs = self.sam.feedback_logits(first_low_res)
            calls += n
        low_res, iou, n = self._decode(embedding, object_prompts, None, mask_inputs)
        calls += n
        frame_logits = self.sam.upscale_logits(low_res, embedding)[:, 0]

        refining = list(range(len(active)))
        for _ in range(config.iterative_refinement_iterations):
            masks = frame_logits[refining] > 0
            refining = [r for r, mask in zip(refining, masks) if int(mask.sum()) >= 2]
            if not refining:
                break
            boxes = [_tight_box(frame_logits[r] > 0) for r in refining]
            new_low_res, new_iou, n = self._decode(embedding, [object_prompts[r] for r in refining], boxes,
                                                   self.sam.feedback_logits(low_res[refining]))
            calls += n
            new_logits = self.sam.upscale_logits(new_low_res, embedding)[:, 0]
            index = torch.as_tensor(refining, device=device)
            low_res[index], iou[index], frame_logits[index] = new_low_res, new_iou, new_logits

        all_low_res = low_res.new_zeros((num_objects, *low_res.shape[1:]))
        for row, m in enumerate(active):
            scores[m] = iou[row]
            has_score[m] = True
            all_low_res[m] = low_res[row]
            if iou[row] >= config.sam_iou_threshold:
                logits[m] = frame_logits[row]
        return FramePrediction(logits, scores, has_score, calls, all_low_res)


def _tight_box(mask: torch.Tensor) -> torch.Tensor:
    """``(H, W) bool`` -> ``(4,) float32`` (x_min, y_min, x_max, y_max) of its pixels."""
    rows = torch.nonzero(mask.any(dim=1))[:, 0]
    cols = torch.nonzero(mask.any(dim=0))[:, 0]
    return torch.stack([cols[0], rows[0], cols[-1], rows[-1]]).float()
