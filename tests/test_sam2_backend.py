"""SAM 2.1 as SAM-PT's segmenter (backend ``sam2``) against the package's ``SAM2ImagePredictor``.

The reference is a plain per-object loop over ``SAM2ImagePredictor`` doing what SAM-PT's
prompting does with ``SamPredictor``: positive points first, then every point with that call's
low-resolution logits as the mask prompt, then box refinement with the previous logits, single
mask output, and the IoU threshold. It runs on a tiny random SAM 2.1 (the video tests' model) on
real DAVIS frames; the batched prompter must agree on >= 99.9 % of the pixels of every (object,
frame) and give the same IoU predictions to 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DAVIS_SAMPLE
from sampt.errors import CheckpointError
from sampt.sam.backends import SamConfig, build_sam
from sampt.sam.prompting import PromptingConfig, SamPrompter, build_point_prompts
from test_sam2_video import CONFIG, TINY_OVERRIDES, _one_thread, tiny_weights  # noqa: F401 (autouse fixture)

SEQUENCE = "car-shadow"
FRAMES = (0, 4)
HEIGHT, WIDTH = 120, 214
NUM_OBJECTS, POSITIVE, NEGATIVE = 3, 4, 1


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("sam2_backend") / "tiny_sam2.pt")


@pytest.fixture(scope="module")
def sam2(weights):
    model = build_sam("sam2", CONFIG, checkpoint_path=str(weights), hydra_overrides=TINY_OVERRIDES)
    # Sharper logits than random weights give: some pass SAM2ImagePredictor's +-32 clamp, so the
    # clamped logits fed back as mask prompts are checked too.
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(1000.0)
    return model


def frame(t: int) -> np.ndarray:
    path = DAVIS_SAMPLE / "JPEGImages/480p" / SEQUENCE / f"{t:05d}.jpg"
    return np.array(Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR))


def tracked_points(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, P, 2)`` points in the frame and ``(M, P)`` visibility, some points hidden."""
    generator = torch.Generator().manual_seed(seed)
    count = POSITIVE + NEGATIVE
    points = torch.rand(NUM_OBJECTS, count, 2, generator=generator) * torch.tensor([WIDTH - 1, HEIGHT - 1])
    visible = torch.rand(NUM_OBJECTS, count, generator=generator) > 0.25
    visible[:, 0] = True  # every object keeps a positive point
    return points, visible


def reference_predictor(model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model.sam)
    # The predictor's feature sizes are written for 1024 px inputs; the tiny model's are smaller.
    side = model.image_size
    predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
    return predictor


def tight_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def reference_object(predictor, coords: np.ndarray, labels: np.ndarray, config: PromptingConfig):
    """SAM-PT's per-object prompting written against ``SAM2ImagePredictor``: (mask logits, IoU)."""

    def call(point_coords, point_labels, box=None, mask_input=None):
        if box is not None and config.refinement_box_in_frame_pixels:
            # SAM-PT hands the box to the predictor's torch call unmapped (frame pixels).
            mask_in, unnorm, lab, _ = predictor._prep_prompts(point_coords, point_labels, None, mask_input, True)
            masks, iou, low = predictor._predict(unnorm, lab, torch.as_tensor(box)[None], mask_in,
                                                 multimask_output=False, return_logits=True)
            return masks[0].numpy(), iou[0].numpy(), low[0].numpy()
        return predictor.predict(point_coords=point_coords, point_labels=point_labels, box=box,
                                 mask_input=mask_input, multimask_output=False, return_logits=True)

    mask_input = None
    if config.negative_points_per_mask > 0:
        positive = labels == 1
        _, _, mask_input = call(coords[positive], labels[positive])
    masks, iou, low_res = call(coords, labels, mask_input=mask_input)
    for _ in range(config.iterative_refinement_iterations):
        mask = masks[0] > 0
        if mask.sum() < 2:
            break
        masks, iou, low_res = call(coords, labels, box=tight_box(mask), mask_input=low_res)
    logits = masks[0] if iou[0] >= config.sam_iou_threshold else np.full_like(masks[0], -np.inf)
    return logits, float(iou[0])


def compare(model, config: PromptingConfig, seed: int):
    predictor = reference_predictor(model)
    prompter = SamPrompter(model, config)
    checked = clamped = 0
    for t in FRAMES:
        image = frame(t)
        points, visible = tracked_points(seed + t)
        prompts = build_point_prompts(points, visible, config)
        embedding = model.embed_frames(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
        prediction = prompter.predict_frame(embedding, prompts)
        clamped += int((prediction.low_res_logits.abs() > 32).any())
        predictor.set_image(image)
        for m, prompt in enumerate(prompts):
            logits, iou = reference_object(predictor, prompt.coords.numpy(), prompt.labels.numpy(), config)
            ours = (prediction.logits[m] > 0).numpy()
            agreement = float((ours == (logits > 0)).mean())
            assert agreement >= 0.999, f"frame {t} object {m}: masks agree on {agreement:.5f} of the pixels"
            assert float(prediction.scores[m]) == pytest.approx(iou, abs=1e-5)
            checked += int((logits > 0).any())
    assert checked > 0, "every reference mask was empty: the comparison would prove nothing"
    assert clamped > 0, "no logits beyond +-32: the clamp of the fed-back logits was not exercised"


def test_prompting_matches_sam2_image_predictor_per_object(sam2):
    config = PromptingConfig(positive_points_per_mask=POSITIVE, negative_points_per_mask=NEGATIVE,
                             iterative_refinement_iterations=3, sam_iou_threshold=-1.0, batch_prompts=False)
    compare(sam2, config, seed=0)


def test_batched_objects_and_the_iou_threshold_match_too(sam2):
    # Objects with equal token counts share a decoder call; the threshold empties low-IoU masks.
    probe = PromptingConfig(positive_points_per_mask=POSITIVE, negative_points_per_mask=NEGATIVE,
                            iterative_refinement_iterations=2, sam_iou_threshold=-1.0)
    image = torch.from_numpy(frame(0)).permute(2, 0, 1)[None]
    points, visible = tracked_points(1)
    scores = SamPrompter(sam2, probe).predict_frame(sam2.embed_frames(image)[0],
                                                    build_point_prompts(points, visible, probe)).scores
    low, middle = scores.sort().values[:2].tolist()
    threshold = (low + middle) / 2  # one mask below, the others above, none at the edge
    config = PromptingConfig(positive_points_per_mask=POSITIVE, negative_points_per_mask=NEGATIVE,
                             iterative_refinement_iterations=2, sam_iou_threshold=threshold,
                             decoder_batch_size=8)
    compare(sam2, config, seed=1)
    prediction = SamPrompter(sam2, config).predict_frame(sam2.embed_frames(image)[0],
                                                         build_point_prompts(points, visible, config))
    emptied = torch.isneginf(prediction.logits.flatten(1)).all(dim=1)
    assert emptied.any() and not emptied.all()


def test_box_mapped_like_the_points_matches_the_public_predict(sam2):
    config = PromptingConfig(positive_points_per_mask=POSITIVE, negative_points_per_mask=0,
                             iterative_refinement_iterations=2, sam_iou_threshold=-1.0,
                             refinement_box_in_frame_pixels=False)
    compare(sam2, config, seed=2)


def test_checkpoint_mixups_and_unknown_models_are_named(weights, tmp_path):
    sam1 = tmp_path / "sam_vit_b.pt"
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(1, 8)}, sam1)
    with pytest.raises(CheckpointError) as info:
        build_sam("sam2", CONFIG, checkpoint_path=str(sam1), hydra_overrides=TINY_OVERRIDES)
    assert str(sam1) in str(info.value) and "SAM 1 checkpoint" in str(info.value) and "SAM 2 model" in str(info.value)
    with pytest.raises(CheckpointError) as info:
        build_sam("custom", checkpoint_path=str(weights))
    assert str(weights) in str(info.value) and "SAM 2 checkpoint" in str(info.value)
    with pytest.raises(ValueError, match="unknown SAM 2 model or config 'sam2.1_hiera_huge'.*sam2.1_hiera_large"):
        build_sam("sam2", "sam2.1_hiera_huge", random_init=True)
    with pytest.raises(ValueError, match="hydra_overrides only applies to backend 'sam2'"):
        build_sam("custom", random_init=True, hydra_overrides=["++model.image_size=128"])


def test_sam_config_names_the_registry_checkpoint_without_building():
    assert SamConfig(backend="sam2").required_checkpoints() == ["sam2.1_hiera_base_plus"]
    assert SamConfig(backend="sam2", variant="sam2_hiera_large").required_checkpoints() == ["sam2_hiera_large"]
    assert SamConfig(backend="sam2", variant=CONFIG, checkpoint_path="x.pt").required_checkpoints() == []


def test_vis_proposals_with_sam2_fail_with_a_clear_message(sam2):
    from sampt.errors import SamptError
    from sampt.proposals import propose_masks

    with pytest.raises(SamptError, match="backend sam2.*not supported for VIS"):
        propose_masks(sam2, torch.zeros(3, 32, 32, dtype=torch.uint8))
