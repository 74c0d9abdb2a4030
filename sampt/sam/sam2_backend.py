"""SAM 2 / SAM 2.1 models (package ``sam2``, facebookresearch/sam2): building and loading weights.

Models are built from the package's own hydra configs (``configs/sam2.1/sam2.1_hiera_t.yaml``,
...) with ``sam2.build_sam.build_sam2_video_predictor`` and no checkpoint; weights are then
loaded by sampt's one loader (:func:`sampt.checkpoints.load_state_dict_file`: ``weights_only``,
every key and shape checked), so a truncated file, a SAM 1 checkpoint or the wrong size fails
with a :class:`~sampt.errors.CheckpointError` naming the file and the model.

Named models (``model`` option): ``sam2.1_hiera_tiny/small/base_plus/large`` and the SAM 2.0
``sam2_hiera_*``; each is a package config and a registry checkpoint of the same name. Any other
config of the package can be given by its path (``configs/sam2.1/sam2.1_hiera_t.yaml``) together
with an explicit checkpoint. ``hydra_overrides`` change the architecture (the tests build a tiny
random SAM 2 this way).

SAM 2's image path as a SAM backend for SAM-PT (backend ``sam2``, :func:`build_sam2_model`):
:class:`Sam2Model` puts SAM 2's image encoder, prompt encoder and mask decoder behind the
:class:`~sampt.sam.model.SamModel` calls the prompting uses, doing what the package's
``SAM2ImagePredictor`` does: frames resized to the model's square input (not the longest side),
points scaled by ``image_size / (w, h)``, ``no_mem_embed`` added to the lowest-resolution
features, the two high-resolution feature maps given to the decoder, a box given as two points
with labels 2 and 3 *before* the other points, and low-resolution logits clamped to +-32 before
they become the next call's mask prompt. The model is built as ``sam2.build_sam.build_sam2``
builds it for image prediction (its ``apply_postprocessing`` default: the decoder falls back to
its multimask outputs when the single mask is unstable).

``sam2`` needs ``hydra`` and initialises hydra's global config module on import; it is imported
inside the functions here only.
"""
from __future__ import annotations

import warnings
from os import PathLike
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.errors import CheckpointError
from sampt.sam.model import ImageEmbedding, SamModel

#: Named SAM 2 models: package config (hydra name) and registry checkpoint.
SAM2_MODELS: dict[str, tuple[str, str]] = {
    "sam2.1_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny"),
    "sam2.1_hiera_small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small"),
    "sam2.1_hiera_base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus"),
    "sam2.1_hiera_large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large"),
    "sam2_hiera_tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny"),
    "sam2_hiera_small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small"),
    "sam2_hiera_base_plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus"),
    "sam2_hiera_large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large"),
}

# Key prefixes that tell the two families' checkpoints apart.
_SAM1_ONLY = ("mask_decoder.", "prompt_encoder.", "image_encoder.patch_embed.", "image_encoder.blocks.")
_SAM2_ONLY = ("sam_mask_decoder.", "sam_prompt_encoder.", "memory_attention.", "memory_encoder.",
              "image_encoder.trunk.")


def package_configs() -> list[str]:
    """Every model config shipped in the installed ``sam2`` package (``configs/<dir>/<name>.yaml``)."""
    from importlib import resources

    root = resources.files("sam2") / "configs"
    names = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.endswith("_training"):
            names += [f"configs/{folder.name}/{f.name}" for f in folder.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def resolve_model(model: str) -> tuple[str, Optional[str]]:
    """``(hydra config name, registry checkpoint or None)`` of a model name or config path."""
    if model in SAM2_MODELS:
        return SAM2_MODELS[model]
    configs = package_configs()
    if model in configs:
        return model, None
    raise ValueError(
        f"unknown SAM 2 model or config {model!r}; named models: {', '.join(SAM2_MODELS)}; "
        f"configs of the installed sam2 package: {', '.join(configs)}")


def checkpoint_family(state: Mapping[str, object]) -> Optional[str]:
    """``"sam2"``, ``"sam1"`` or None (neither recognised) from a state dict's keys."""
    keys = list(state)
    if any(k.startswith(_SAM2_ONLY) for k in keys):
        return "sam2"
    if any(k.startswith(_SAM1_ONLY) for k in keys):
        return "sam1"
    return None


def require_sam2_state(state: Mapping[str, object], path: Union[str, PathLike], what: str) -> Mapping[str, object]:
    """``state`` if it can be a SAM 2 checkpoint; a clear error for a SAM 1 (SAM, HQ-SAM, MobileSAM) one."""
    if checkpoint_family(state) == "sam1":
        raise CheckpointError(
            f"{path} is a SAM 1 checkpoint (segment_anything / HQ-SAM / MobileSAM keys such as "
            f"'mask_decoder.*'), but {what} is a SAM 2 model: give a SAM 2 checkpoint "
            f"(registry names: {', '.join(SAM2_MODELS)}), or use the file with a SAM 1 backend "
            "(sampt.sam.backends, configs/sam/sam_vit_*.yaml)")
    return state


def require_sam1_state(state: Mapping[str, object], path: Union[str, PathLike], what: str) -> Mapping[str, object]:
    """``state`` if it can be a SAM 1 checkpoint; a clear error for a SAM 2 one (for SAM 1 backends)."""
    if checkpoint_family(state) == "sam2":
        raise CheckpointError(
            f"{path} is a SAM 2 checkpoint (keys such as 'sam_mask_decoder.*', 'memory_attention.*'), "
            f"but {what} is a SAM 1 model: give a SAM 1 checkpoint, or use the file with SAM 2 "
            "(configs/method/sam2_video.yaml)")
    return state


def build_sam2_video_predictor(config: str, hydra_overrides: Sequence[str] = (), device: str = "cpu",
                               vos_optimized: bool = False, apply_postprocessing: bool = False,
                               non_overlap_masks: bool = True):
    """A randomly initialised ``SAM2VideoPredictor`` (or ``SAM2VideoPredictorVOS``) in eval mode.

    The overrides are those of the sam2 repository's ``tools/vos_inference.py``:
    ``non_overlap_masks`` (true for one index PNG per frame) and ``apply_postprocessing``
    (off in SAM 2's evaluation), then ``hydra_overrides``.
    """
    from sam2.build_sam import build_sam2_video_predictor as build

    overrides = [f"++model.non_overlap_masks={'true' if non_overlap_masks else 'false'}", *hydra_overrides]
    return build(config_file=config, ckpt_path=None, device=device, mode="eval",
                 hydra_overrides_extra=overrides, apply_postprocessing=apply_postprocessing,
                 vos_optimized=vos_optimized)


def load_sam2_weights(model, path: Union[str, PathLike], what: str) -> None:
    """Load a SAM 2 checkpoint (``{"model": state_dict}`` or a bare state dict) strictly."""
    load_state_dict_file(model, path, what, convert=lambda state: require_sam2_state(state, path, what))


# -- SAM 2 as SAM-PT's segmenter --------------------------------------------------------------
#: SAM2ImagePredictor clamps the low-resolution logits it returns (the next call's mask prompt).
_LOW_RES_CLAMP = 32.0


class Sam2Model(SamModel):
    """A SAM 2 image model (``SAM2Base``) behind the :class:`SamModel` calls; no per-image state.

    Args:
        model: a ``SAM2Base`` from :func:`build_sam2_model` (eval mode).
        variant: name for logs and results (``sam2/<model>``).
    """

    def __init__(self, model: nn.Module, variant: str):
        super().__init__(model, variant)
        from sam2.utils.transforms import SAM2Transforms

        # The package's own transforms (resize to the square input, normalisation, coordinate
        # scaling, upscaling); no hole filling or sprinkle removal, as SAM2ImagePredictor's defaults.
        with warnings.catch_warnings():  # the package scripts its transforms; torch deprecates jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
            self.transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.sam_prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam.sam_mask_decoder

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def mask_threshold(self) -> float:
        return 0.0

    @property
    def pads_prompts(self) -> bool:
        return False  # SAM 2's decoder has no way to mask pad tokens: equal lengths per call

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> list[ImageEmbedding]:
        """Embed ``(K, 3, H, W) uint8`` RGB frames in one encoder call, as ``SAM2ImagePredictor.set_image``."""
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (K, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
        count = len(frames)
        original_size = (int(frames.shape[2]), int(frames.shape[3]))
        # ToTensor's scaling (uint8 / 255), then the package's Resize + Normalize module.
        images = self.transforms.transforms(frames.to(self.device).float().div(255))
        backbone_out = self.sam.forward_image(images)
        _, features, _, sizes = self.sam._prepare_backbone_features(backbone_out)
        if self.sam.directly_add_no_mem_embed:
            features[-1] = features[-1] + self.sam.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(count, -1, *size) for f, size in zip(features, sizes)]
        input_size = (self.image_size, self.image_size)
        return [ImageEmbedding(maps[-1][i : i + 1], [m[i : i + 1] for m in maps[:-1]], input_size, original_size)
                for i in range(count)]

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor, box: Optional[torch.Tensor],
                      original_size: tuple[int, int], box_in_frame_pixels: bool) -> torch.Tensor:
        """Sparse tokens ``(n_tokens, C)``: the box as two corner points (labels 2, 3) first, then the points."""
        device = self.device
        points = self.transforms.transform_coords(coords.to(device).float(), normalize=True, orig_hw=original_size)
        point_labels = labels.to(device).int()
        if box is not None:
            corners = box.to(device).float().reshape(2, 2)
            if not box_in_frame_pixels:
                corners = self.transforms.transform_coords(corners, normalize=True, orig_hw=original_size)
            points = torch.cat([corners, points], dim=0)
            point_labels = torch.cat([torch.tensor([2, 3], dtype=torch.int, device=device), point_labels])
        sparse, _ = self.prompt_encoder(points=(points[None], point_labels[None]), boxes=None, masks=None)
        return sparse[0]

    def decode(self, embedding: ImageEmbedding, tokens: torch.Tensor, valid: Optional[torch.Tensor],
               dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if valid is not None:
            raise ValueError("SAM 2's decoder takes prompts of one length per call (pads_prompts is False)")
        masks, iou, _, _ = self.mask_decoder(
            image_embeddings=embedding.features, image_pe=self.dense_positional_encoding(),
            sparse_prompt_embeddings=tokens, dense_prompt_embeddings=dense, multimask_output=False,
            repeat_image=tokens.shape[0] > 1, high_res_features=embedding.interm_features)
        return masks, iou

    def feedback_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        return low_res_logits.clamp(-_LOW_RES_CLAMP, _LOW_RES_CLAMP)

    def upscale_logits(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        return self.transforms.postprocess_masks(low_res_logits, embedding.original_size)


#: The SAM 2 model ``backend: sam2`` builds when no variant is given.
DEFAULT_SAM2_MODEL = "sam2.1_hiera_base_plus"


def build_sam2_model(model: Optional[str] = None, checkpoint: Optional[str] = None,
                     checkpoint_path: Optional[str] = None, hydra_overrides: Sequence[str] = (),
                     device: Optional[str] = None, random_init: bool = False) -> Sam2Model:
    """A SAM 2 image model for SAM-PT's prompting, with its weights (``backend: sam2``; called by
    :func:`sampt.sam.backends.build_sam`, which checks the options common to every backend).

    Args:
        model: a named model (:data:`SAM2_MODELS`) or a config of the installed package;
            None: :data:`DEFAULT_SAM2_MODEL`.
        checkpoint: registry name; None: the named model's own.
        checkpoint_path: explicit weights file (precedence over the registry).
        hydra_overrides: change the architecture (tests build a tiny random SAM 2).
        device: where to put the model; None leaves it on the CPU.
        random_init: no weights (benchmarks, smoke tests).
    """
    from sam2.build_sam import build_sam2

    model = model if model is not None else DEFAULT_SAM2_MODEL
    config, registry_name = resolve_model(model)
    weights = None
    if not random_init:
        name = checkpoint if checkpoint is not None else registry_name
        if name is None and checkpoint_path is None:
            raise CheckpointError(f"SAM 2 config {model} has no registry checkpoint: set sam.checkpoint_path")
        weights = resolve_checkpoint(name, checkpoint_path)  # before building: fail fast
    module = build_sam2(config_file=config, ckpt_path=None, device="cpu", mode="eval",
                        hydra_overrides_extra=list(hydra_overrides), apply_postprocessing=True)
    if weights is not None:
        load_sam2_weights(module, weights, f"SAM 2 model {model}")
    module.requires_grad_(False)
    if device is not None:
        module.to(device)
    handle = Sam2Model(module, variant=f"sam2/{model}")
    handle.weights_path = weights
    return handle
