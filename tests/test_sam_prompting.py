"""The SAM stage against the original implementation's outputs (shared/vectors/sam-prompting)."""
from __future__ import annotations

import pytest
import torch

from conftest import VECTORS
from sampt.sam.prompting import PointPrompt, PromptingConfig, SamPrompter, build_point_prompts

CASES = ["A_neg_other_refine12", "B_pos_only_no_refine_threshold", "C_neg_no_other_refine3"]


def run_case(sam, case, **overrides):
    data = torch.load(VECTORS / "sam-prompting" / f"{case}.pt", weights_only=False)
    config = PromptingConfig(**data["config"], **overrides)
    prompter = SamPrompter(sam, config)
    embeddings = sam.embed_frames(data["frames"])
    masks, scores = [], []
    for t, embedding in enumerate(embeddings):
        prompts = build_point_prompts(data["trajectories"][t], data["visibilities"][t] > 0, config)
        prediction = prompter.predict_frame(embedding, prompts)
        masks.append(prediction.logits > 0)
        scores.append(prediction.scores)
    return data, torch.stack(masks, dim=1), torch.stack(scores)


@pytest.mark.parametrize("batch_prompts", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_matches_original_outputs(tiny_sam, case, batch_prompts):
    # decoder_batch_size is explicit: the CPU default (1 prompt per call) would not batch.
    data, masks, scores = run_case(tiny_sam, case, batch_prompts=batch_prompts, decoder_batch_size=64)
    reference = data["masks"]
    agreement = (masks == reference).float().mean(dim=(2, 3))  # per object and frame
    assert agreement.min().item() >= 0.999, f"worst agreement {agreement.min().item():.5f}"
    expected = data["scores_per_frame"]
    assert torch.equal(torch.isinf(scores), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert (scores[finite] - expected[finite]).abs().max().item() <= 1e-3
    # Video score: mean over frames that produced a prediction.
    counted = torch.where(finite, scores, torch.zeros_like(scores))
    video = counted.sum(0) / finite.sum(0).clamp(min=1)
    assert torch.allclose(video, data["scores"], atol=1e-3)


def test_vectors_pin_the_frame_pixel_refinement_box(tiny_sam):
    """Mapping the refinement box to SAM's input frame (the 'fixed' variant) changes the masks,
    so the default really reproduces the original's quirk rather than passing by accident."""
    data, masks, _ = run_case(tiny_sam, "A_neg_other_refine12", refinement_box_in_frame_pixels=False,
                              decoder_batch_size=64)
    agreement = (masks == data["masks"]).float().mean(dim=(2, 3))
    assert agreement.min().item() < 0.999


def test_padding_is_masked_not_neutral(tiny_sam):
    """Batched decoding of prompts with different token counts equals the one-by-one calls."""
    data = torch.load(VECTORS / "sam-prompting" / "A_neg_other_refine12.pt", weights_only=False)
    embedding = tiny_sam.embed_frames(data["frames"][:1])[0]
    points = data["trajectories"][0, 0]
    prompts = [PointPrompt(points[:n], torch.ones(n, dtype=torch.int64)) for n in (1, 3, 6)]
    config = PromptingConfig(negative_points_per_mask=0, iterative_refinement_iterations=0, sam_iou_threshold=-1,
                             decoder_batch_size=64)
    batched = SamPrompter(tiny_sam, config).predict_frame(embedding, prompts)
    single = SamPrompter(tiny_sam, PromptingConfig(**{**vars(config), "batch_prompts": False})).predict_frame(
        embedding, prompts)
    assert batched.num_decoder_calls == 1 and single.num_decoder_calls == 3
    assert torch.allclose(batched.logits, single.logits, atol=1e-3)
    assert torch.allclose(batched.scores, single.scores, atol=1e-5)


def test_other_objects_positives_become_negatives():
    config = PromptingConfig(positive_points_per_mask=2, negative_points_per_mask=1,
                             add_other_objects_positive_points_as_negative_points=True)
    points = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    visible = torch.tensor([[True, False, True], [True, True, False]])
    first, second = build_point_prompts(points, visible, config)
    # Object 0: its visible points (positive 0, negative 2), then object 1's visible positives 0, 1.
    assert first.labels.tolist() == [1, 0, 0, 0]
    assert torch.equal(first.coords, torch.stack([points[0, 0], points[0, 2], points[1, 0], points[1, 1]]))
    # Object 1: its positives 0, 1 (negative hidden), then object 0's visible positive 0 only.
    assert second.labels.tolist() == [1, 1, 0]
    assert torch.equal(second.coords[-1], points[0, 0])
    capped = build_point_prompts(points, visible, PromptingConfig(
        positive_points_per_mask=2, negative_points_per_mask=1, max_other_objects_positive_points=1))
    assert len(capped[0]) == 3


def test_no_prompt_gives_empty_mask_and_no_score(tiny_sam):
    data = torch.load(VECTORS / "sam-prompting" / "A_neg_other_refine12.pt", weights_only=False)
    embedding = tiny_sam.embed_frames(data["frames"][:1])[0]
    empty = PointPrompt(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    prediction = SamPrompter(tiny_sam, PromptingConfig()).predict_frame(embedding, [empty])
    assert not prediction.has_score[0] and prediction.scores[0] == float("-inf")
    assert torch.isneginf(prediction.logits).all()


def test_objects_are_negatives_only_within_their_batch():
    points = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2)
    visible = torch.ones(3, 2, dtype=torch.bool)
    config = PromptingConfig(positive_points_per_mask=2, negative_points_per_mask=0, masks_batch_size=2)
    prompts = build_point_prompts(points, visible, config)
    assert [len(p) for p in prompts] == [4, 4, 2]  # objects 0 and 1 share a batch; object 2 is alone
    everyone = build_point_prompts(points, visible, PromptingConfig(positive_points_per_mask=2,
                                                                    negative_points_per_mask=0))
    assert [len(p) for p in everyone] == [6, 6, 6]
