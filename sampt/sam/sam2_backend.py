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

``sam2`` needs ``hydra`` and initialises hydra's global config module on import; it is imported
inside the functions here only.
"""
from __future__ import annotations

from os import PathLike
from typing import Mapping, Optional, Sequence, Union

from sampt.checkpoints import load_state_dict_file
from sampt.errors import CheckpointError

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
