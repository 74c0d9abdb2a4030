"""SAM backends: build a :class:`~sampt.sam.model.SamModel` for any supported package and variant.

Backends and variants (default registry checkpoint in brackets):

- ``segment_anything`` (Meta): ``vit_h`` [sam_vit_h], ``vit_l`` [sam_vit_l], ``vit_b`` [sam_vit_b];
- ``segment_anything_hq`` (HQ-SAM): ``vit_h``, ``vit_l``, ``vit_b`` [samhq_vit_*] and the light
  ``vit_tiny`` (TinyViT encoder) [samhq_vit_tiny];
- ``mobile_sam`` (distribution ``mobilesam-mirror``): ``vit_t`` (TinyViT encoder) [mobile_sam_vit_t];
- ``custom``: variant ``custom``, a ViT-encoder SAM built from ``segment_anything``'s classes with
  the architecture given in config (:class:`CustomSamArchitecture`; its defaults are the tiny
  SAM of ``shared/vectors/sam-prompting``). It has no registry checkpoint: give ``checkpoint_path``.
- ``sam2`` (package ``sam2``): SAM 2 / SAM 2.1 image models, variant a named model
  ``sam2.1_hiera_{tiny,small,base_plus,large}`` [same name] or ``sam2_hiera_*`` (SAM 2.0), or a
  config of the package with ``checkpoint_path``; ``hydra_overrides`` change its architecture.
  Built from the package's hydra configs (:mod:`sampt.sam.sam2_backend`), not from this module's
  architecture dataclasses.

Every variant is described by an architecture dataclass and built from its package's module
classes (``ImageEncoderViT``/``TinyViT``, ``PromptEncoder``, ``MaskDecoder``/``MaskDecoderHQ``,
``TwoWayTransformer``, ``Sam``). The packages' own ``build_sam_*`` functions hard-code the sizes
and load weights with ``torch.load`` without ``weights_only`` (HQ-SAM even with
``strict=False``), so they are not called; the test suite checks that the built-in architectures
below give exactly the state-dict layout (keys and shapes) of those functions. Weights are
loaded by :func:`load_sam_weights`: ``torch.load(..., weights_only=True)``, and any missing,
unexpected or mis-shaped key is a :class:`~sampt.errors.CheckpointError` naming the file and the
variant.

``mobile_sam`` and ``segment_anything_hq`` import ``timm`` (slow, warns at import), so they are
imported inside the builders only.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Union

from torch import nn

from sampt.checkpoints import load_state_dict_file, resolve_checkpoint
from sampt.errors import CheckpointError
from sampt.registry import Registry
from sampt.sam.model import SamModel, SegmentAnythingModel

# SAM's normalisation constants (ImageNet mean/std in 0..255), shared by every package.
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class CustomSamArchitecture:
    """Architecture of a ViT-encoder SAM (``segment_anything`` classes); defaults = the tiny test SAM.

    Also describes the built-in ViT variants (``vit_b``/``vit_l``/``vit_h``). The image embedding
    is ``(prompt_embed_dim, img_size / patch_size, img_size / patch_size)``.

    Attributes:
        img_size: side of the square encoder input; frames are resized to this longest side.
        patch_size: ViT patch size.
        encoder_embed_dim: ViT width.
        encoder_depth: number of ViT blocks.
        encoder_num_heads: ViT attention heads.
        encoder_mlp_ratio: ViT MLP hidden size / width.
        encoder_window_size: windowed-attention size in patches (0: every block is global).
        encoder_global_attn_indexes: blocks with global attention.
        prompt_embed_dim: encoder output channels (``out_chans``) = prompt embedding size =
            decoder transformer width; SAM needs these three equal.
        mask_in_chans: hidden channels of the mask-prompt downscaler.
        decoder_depth, decoder_mlp_dim, decoder_num_heads: the decoder's TwoWayTransformer.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        num_multimask_outputs: masks predicted in multimask mode.
    """

    img_size: int = 256
    patch_size: int = 16
    encoder_embed_dim: int = 32
    encoder_depth: int = 1
    encoder_num_heads: int = 2
    encoder_mlp_ratio: float = 4.0
    encoder_window_size: int = 4
    encoder_global_attn_indexes: list[int] = field(default_factory=lambda: [0])
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3

    def __post_init__(self) -> None:
        name = type(self).__name__
        for attribute in ("img_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                          "prompt_embed_dim", "mask_in_chans", "decoder_depth", "decoder_mlp_dim",
                          "decoder_num_heads", "iou_head_depth", "iou_head_hidden_dim", "num_multimask_outputs"):
            value = getattr(self, attribute)
            _require(isinstance(value, int) and value > 0, f"{name}.{attribute} must be a positive int, got {value!r}")
        _require(self.encoder_window_size >= 0, f"{name}.encoder_window_size must be >= 0, got {self.encoder_window_size}")
        _require(self.img_size % self.patch_size == 0,
                 f"{name}.img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        _require(self.encoder_embed_dim % self.encoder_num_heads == 0,
                 f"{name}.encoder_embed_dim ({self.encoder_embed_dim}) must be divisible by "
                 f"encoder_num_heads ({self.encoder_num_heads})")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        _require(not bad, f"{name}.encoder_global_attn_indexes {bad} are not block indexes of an encoder of "
                          f"depth {self.encoder_depth}")
        # The decoder upscales by 4 to dim/8 and its cross-attention works at dim/2 over its heads.
        _require(self.prompt_embed_dim % 8 == 0, f"{name}.prompt_embed_dim ({self.prompt_embed_dim}) must be a multiple of 8")
        _require((self.prompt_embed_dim // 2) % self.decoder_num_heads == 0,
                 f"{name}.prompt_embed_dim / 2 ({self.prompt_embed_dim // 2}) must be divisible by "
                 f"decoder_num_heads ({self.decoder_num_heads})")


_TINY_VIT_LAST_STAGE_WIDTHS = (320, 448, 576)


@dataclass
class TinyVitSamArchitecture:
    """Architecture of a TinyViT-encoder SAM (MobileSAM, light HQ-SAM); defaults = their TinyViT-5M.

    The packages' TinyViT hard-codes a 1024 input, a 64x64 output grid and 256 output channels,
    so the image size and prompt width are fixed; exactly 4 stages are required, and the last
    stage's width must be 320, 448 or 576 (the only widths at which the packages' TinyViT keeps
    the 64x64 grid).

    Attributes:
        embed_dims, depths, num_heads, window_sizes: per-stage TinyViT widths, block counts,
            heads and attention windows (stage 0 is convolutional: its heads/window are unused).
        mlp_ratio, mbconv_expand_ratio, local_conv_size: TinyViT block options.
        num_classes: size of TinyViT's (unused) classification head, which is part of the
            official checkpoints.
        decoder_*, iou_head_*, num_multimask_outputs: as in :class:`CustomSamArchitecture`.
    """

    embed_dims: list[int] = field(default_factory=lambda: [64, 128, 160, 320])
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [2, 4, 5, 10])
    window_sizes: list[int] = field(default_factory=lambda: [7, 7, 14, 7])
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3

    img_size = 1024
    prompt_embed_dim = 256

    def __post_init__(self) -> None:
        name = type(self).__name__
        for attribute in ("embed_dims", "depths", "num_heads", "window_sizes"):
            value = getattr(self, attribute)
            _require(len(value) == 4 and all(isinstance(v, int) and v > 0 for v in value),
                     f"{name}.{attribute} must be 4 positive ints (one per TinyViT stage), got {value!r}")
        # The packages' PatchMerging keeps the resolution only when its output width is one of
        # these (TinyViT's stage 3 must stay at 64x64), and halves it otherwise.
        _require(self.embed_dims[3] in _TINY_VIT_LAST_STAGE_WIDTHS,
                 f"{name}.embed_dims[3] must be one of {_TINY_VIT_LAST_STAGE_WIDTHS} (TinyViT keeps the last stage "
                 f"at 64x64 only for these widths), got {self.embed_dims[3]}")
        _require(not set(self.embed_dims[1:3]) & set(_TINY_VIT_LAST_STAGE_WIDTHS),
                 f"{name}.embed_dims[1] and [2] must not be one of {_TINY_VIT_LAST_STAGE_WIDTHS}, got {self.embed_dims}")
        for stage in range(1, 4):
            _require(self.embed_dims[stage] % self.num_heads[stage] == 0,
                     f"{name}.embed_dims[{stage}] ({self.embed_dims[stage]}) must be divisible by "
                     f"num_heads[{stage}] ({self.num_heads[stage]})")


SamArchitecture = Union[CustomSamArchitecture, TinyVitSamArchitecture]


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: list[int]) -> CustomSamArchitecture:
    return CustomSamArchitecture(
        img_size=1024, encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=num_heads,
        encoder_window_size=14, encoder_global_attn_indexes=global_attn_indexes,
    )


# The published architectures (same numbers as the packages' build_sam_* functions).
_VIT_ARCHITECTURES: dict[str, CustomSamArchitecture] = {
    "vit_h": _vit(1280, 32, 16, [7, 15, 23, 31]),
    "vit_l": _vit(1024, 24, 16, [5, 11, 17, 23]),
    "vit_b": _vit(768, 12, 12, [2, 5, 8, 11]),
}
_TINY_VIT_ARCHITECTURE = TinyVitSamArchitecture()


@dataclass(frozen=True)
class SamVariant:
    """One buildable (backend, variant) pair.

    Attributes:
        backend, variant: names as in config.
        architecture: the published architecture (None for ``custom``: comes from config).
        checkpoint: default registry checkpoint name (None for ``custom``).
        hq: whether the model is an HQ-SAM (decoder takes intermediate encoder features).
        build_module: architecture -> randomly initialised ``Sam``-like module.
    """

    backend: str
    variant: str
    architecture: Optional[SamArchitecture]
    checkpoint: Optional[str]
    hq: bool
    build_module: Callable[[Any], nn.Module]

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.variant}"


def _two_way_decoder(modeling: Any, decoder_class: type, architecture: SamArchitecture, **extra: Any) -> nn.Module:
    return decoder_class(
        num_multimask_outputs=architecture.num_multimask_outputs,
        transformer=modeling.TwoWayTransformer(
            depth=architecture.decoder_depth,
            embedding_dim=architecture.prompt_embed_dim,
            mlp_dim=architecture.decoder_mlp_dim,
            num_heads=architecture.decoder_num_heads,
        ),
        transformer_dim=architecture.prompt_embed_dim,
        iou_head_depth=architecture.iou_head_depth,
        iou_head_hidden_dim=architecture.iou_head_hidden_dim,
        **extra,
    )


def _prompt_encoder(modeling: Any, architecture: SamArchitecture, patch_size: int) -> nn.Module:
    grid = architecture.img_size // patch_size
    return modeling.PromptEncoder(
        embed_dim=architecture.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(architecture.img_size, architecture.img_size),
        mask_in_chans=getattr(architecture, "mask_in_chans", 16),
    )


def _vit_sam(modeling: Any, architecture: CustomSamArchitecture, hq: bool) -> nn.Module:
    if not isinstance(architecture, CustomSamArchitecture):
        raise ValueError(f"a ViT-encoder SAM needs a CustomSamArchitecture, got {type(architecture).__name__}")
    if hq and not (architecture.encoder_global_attn_indexes or architecture.encoder_window_size == 0):
        # HQ-SAM's decoder fuses the output of the first global-attention block.
        raise ValueError("HQ-SAM needs at least one global-attention block (encoder_global_attn_indexes)")
    image_encoder = modeling.ImageEncoderViT(
        depth=architecture.encoder_depth,
        embed_dim=architecture.encoder_embed_dim,
        img_size=architecture.img_size,
        mlp_ratio=architecture.encoder_mlp_ratio,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=architecture.encoder_num_heads,
        patch_size=architecture.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=list(architecture.encoder_global_attn_indexes),
        window_size=architecture.encoder_window_size,
        out_chans=architecture.prompt_embed_dim,
    )
    if hq:
        decoder = _two_way_decoder(modeling, modeling.MaskDecoderHQ, architecture, vit_dim=architecture.encoder_embed_dim)
    else:
        decoder = _two_way_decoder(modeling, modeling.MaskDecoder, architecture)
    return modeling.Sam(
        image_encoder=image_encoder,
        prompt_encoder=_prompt_encoder(modeling, architecture, architecture.patch_size),
        mask_decoder=decoder,
        pixel_mean=_PIXEL_MEAN,
        pixel_std=_PIXEL_STD,
    )


def _tiny_vit_sam(modeling: Any, architecture: TinyVitSamArchitecture, hq: bool) -> nn.Module:
    if not isinstance(architecture, TinyVitSamArchitecture):
        raise ValueError(f"a TinyViT-encoder SAM needs a TinyVitSamArchitecture, got {type(architecture).__name__}")
    image_encoder = modeling.TinyViT(
        img_size=architecture.img_size,
        in_chans=3,
        num_classes=architecture.num_classes,
        embed_dims=list(architecture.embed_dims),
        depths=list(architecture.depths),
        num_heads=list(architecture.num_heads),
        window_sizes=list(architecture.window_sizes),
        mlp_ratio=architecture.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=architecture.mbconv_expand_ratio,
        local_conv_size=architecture.local_conv_size,
        layer_lr_decay=0.8,
    )
    if hq:
        # HQ-SAM fuses the output of TinyViT's stage 1, whose width is embed_dims[2].
        decoder = _two_way_decoder(modeling, modeling.MaskDecoderHQ, architecture, vit_dim=architecture.embed_dims[2])
    else:
        decoder = _two_way_decoder(modeling, modeling.MaskDecoder, architecture)
    # TinyViT's output grid is 64x64 = 1024 / 16.
    return modeling.Sam(
        image_encoder=image_encoder,
        prompt_encoder=_prompt_encoder(modeling, architecture, 16),
        mask_decoder=decoder,
        pixel_mean=_PIXEL_MEAN,
        pixel_std=_PIXEL_STD,
    )


def _import_quietly(module: str) -> Any:
    """Import a timm-based package without its import-time warnings (deprecations, re-registrations)."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _segment_anything_modeling() -> Any:
    import segment_anything.modeling

    return segment_anything.modeling


def _segment_anything_hq_modeling() -> Any:
    return _import_quietly("segment_anything_hq.modeling")


def _mobile_sam_modeling() -> Any:
    return _import_quietly("mobile_sam.modeling")


#: Every SAM variant by its label ``<backend>/<variant>`` (e.g. ``segment_anything/vit_b``).
SAM_VARIANTS: Registry[SamVariant] = Registry("SAM variant")


def _register_backend(backend: str, variants: list[SamVariant]) -> None:
    for entry in variants:
        SAM_VARIANTS.add(entry.label, entry)


_register_backend("segment_anything", [
    SamVariant("segment_anything", name, _VIT_ARCHITECTURES[name], f"sam_{name}", False,
               lambda arch: _vit_sam(_segment_anything_modeling(), arch, hq=False))
    for name in ("vit_h", "vit_l", "vit_b")
])
_register_backend("segment_anything_hq", [
    SamVariant("segment_anything_hq", name, _VIT_ARCHITECTURES[name], f"samhq_{name}", True,
               lambda arch: _vit_sam(_segment_anything_hq_modeling(), arch, hq=True))
    for name in ("vit_h", "vit_l", "vit_b")
] + [
    SamVariant("segment_anything_hq", "vit_tiny", _TINY_VIT_ARCHITECTURE, "samhq_vit_tiny", True,
               lambda arch: _tiny_vit_sam(_segment_anything_hq_modeling(), arch, hq=True)),
])
_register_backend("mobile_sam", [
    SamVariant("mobile_sam", "vit_t", _TINY_VIT_ARCHITECTURE, "mobile_sam_vit_t", False,
               lambda arch: _tiny_vit_sam(_mobile_sam_modeling(), arch, hq=False)),
])
_register_backend("custom", [
    SamVariant("custom", "custom", None, None, False,
               lambda arch: _vit_sam(_segment_anything_modeling(), arch, hq=False)),
])

# Variant used when the config names only the backend.
DEFAULT_VARIANTS = {"segment_anything": "vit_b", "segment_anything_hq": "vit_b", "mobile_sam": "vit_t", "custom": "custom"}


#: The backend built by :mod:`sampt.sam.sam2_backend` (its variants are SAM 2 model names).
SAM2_BACKEND = "sam2"


def get_sam_variant(backend: str, variant: Optional[str] = None) -> SamVariant:
    """The (backend, variant) entry; ``ValueError`` listing valid names when either is unknown."""
    variants = sam_variants()
    if backend not in variants:
        valid = sorted([*variants, SAM2_BACKEND])
        raise ValueError(f"unknown SAM backend {backend!r}; valid names: {', '.join(valid)}")
    variant = variant if variant is not None else DEFAULT_VARIANTS[backend]
    if variant not in variants[backend]:
        raise ValueError(f"unknown {backend} variant {variant!r}; valid names: {', '.join(variants[backend])}")
    return SAM_VARIANTS.get(f"{backend}/{variant}")


def sam_variants() -> dict[str, list[str]]:
    """Valid variant names per backend, e.g. ``{"mobile_sam": ["vit_t"], ...}``."""
    variants: dict[str, list[str]] = {}
    for label in SAM_VARIANTS.names():
        backend, variant = label.split("/", 1)
        variants.setdefault(backend, []).append(variant)
    return variants


def build_sam_module(backend: str, variant: Optional[str] = None,
                     architecture: Optional[SamArchitecture] = None) -> nn.Module:
    """A randomly initialised ``Sam``-like module (eval mode, on CPU); no weights are loaded.

    Args:
        backend, variant: as in :func:`build_sam`.
        architecture: replaces the variant's published architecture (required for ``custom``;
            tests and benchmarks pass small ones to build any backend at tiny size). Must be a
            :class:`CustomSamArchitecture` for ViT variants, a :class:`TinyVitSamArchitecture`
            for ``vit_t``/``vit_tiny``.
    """
    entry = get_sam_variant(backend, variant)
    if architecture is None:
        if entry.architecture is None:
            raise ValueError(f"SAM backend {backend!r} needs its architecture in config (sam.custom)")
        architecture = copy.deepcopy(entry.architecture)
    module = entry.build_module(architecture)
    return module.eval()


def build_sam(
    backend: str = "segment_anything",
    variant: Optional[str] = None,
    checkpoint: Optional[str] = None,
    checkpoint_path: Optional[str] = None,
    custom: Optional[CustomSamArchitecture] = None,
    hq_token_only: bool = False,
    device: Optional[str] = None,
    random_init: bool = False,
    hydra_overrides: Optional[list[str]] = None,
) -> SamModel:
    """Build a SAM model with its weights, ready for inference (eval mode, no gradients).

    Args:
        backend: ``segment_anything``, ``segment_anything_hq``, ``mobile_sam`` or ``custom``.
        variant: e.g. ``vit_b``; None: the backend's default (:data:`DEFAULT_VARIANTS`).
        checkpoint: registry name (see ``sampt checkpoints``); None: the variant's default.
        checkpoint_path: explicit weights file; takes precedence over the registry (not md5-checked).
        custom: the architecture of backend ``custom`` (defaults: the tiny test SAM).
        hq_token_only: HQ-SAM only: return the HQ output mask alone.
        device: where to put the model; None leaves it on CPU (the caller moves it).
        random_init: skip loading weights (benchmarks, smoke tests); excludes the checkpoint options.
        hydra_overrides: ``sam2`` only: overrides of the package's model config.

    Raises:
        ValueError: unknown backend/variant, or options that do not apply to the backend.
        CheckpointError: the weights cannot be found, verified or loaded.
    """
    if random_init and (checkpoint is not None or checkpoint_path is not None):
        raise ValueError("sam.random_init excludes sam.checkpoint and sam.checkpoint_path")
    if backend == SAM2_BACKEND:
        from sampt.sam.sam2_backend import build_sam2_model

        if custom is not None or hq_token_only:
            raise ValueError("sam.custom and sam.hq_token_only do not apply to backend 'sam2' "
                             "(its architecture is a package config, changed by sam.hydra_overrides)")
        return build_sam2_model(variant, checkpoint, checkpoint_path, hydra_overrides or (), device, random_init)
    if hydra_overrides:
        raise ValueError(f"sam.hydra_overrides only applies to backend 'sam2', not {backend!r}")
    entry = get_sam_variant(backend, variant)
    if custom is not None and backend != "custom":
        raise ValueError(f"sam.custom (an architecture) only applies to backend 'custom', not {backend!r}")
    if backend == "custom" and custom is None:
        custom = CustomSamArchitecture()
    if hq_token_only and not entry.hq:
        raise ValueError(f"sam.hq_token_only only applies to HQ-SAM (backend segment_anything_hq), not {entry.label}")

    weights = None
    if not random_init:
        name = checkpoint if checkpoint is not None else entry.checkpoint
        if name is None and checkpoint_path is None:
            raise CheckpointError(
                f"SAM variant {entry.label} has no registry checkpoint: set sam.checkpoint_path to its weights file"
            )
        # Resolve (and possibly download) before building: a missing file should fail fast.
        weights = resolve_checkpoint(name, checkpoint_path)
    module = build_sam_module(backend, entry.variant, custom)
    if weights is not None:
        from sampt.sam.sam2_backend import require_sam1_state

        what = f"SAM {entry.label}"
        load_state_dict_file(module, weights, what, convert=lambda state: require_sam1_state(state, weights, what))
    module.requires_grad_(False)
    if device is not None:
        module.to(device)
    model = SegmentAnythingModel(module, hq=entry.hq, hq_token_only=hq_token_only, variant=entry.label)
    model.weights_path = weights  # recorded with every result (name and md5 of the weights used)
    return model


@dataclass
class SamConfig:
    """The ``model.sam`` config section; ``build()`` calls :func:`build_sam` with these fields."""

    backend: str = "segment_anything"
    variant: Optional[str] = None
    checkpoint: Optional[str] = None
    checkpoint_path: Optional[str] = None
    custom: Optional[CustomSamArchitecture] = None
    hq_token_only: bool = False
    random_init: bool = False
    hydra_overrides: Optional[list[str]] = None

    def required_checkpoints(self) -> list[str]:
        """Registry names of the checkpoints :meth:`build` will resolve (none for explicit paths)."""
        if self.random_init or self.checkpoint_path is not None:
            return []
        if self.backend == SAM2_BACKEND:
            from sampt.sam.sam2_backend import DEFAULT_SAM2_MODEL, resolve_model

            name = self.checkpoint or resolve_model(self.variant or DEFAULT_SAM2_MODEL)[1]
            return [name] if name is not None else []
        name = self.checkpoint if self.checkpoint is not None else get_sam_variant(self.backend, self.variant).checkpoint
        return [name] if name is not None else []

    def build(self, device: Optional[str] = None) -> SamModel:
        return build_sam(
            backend=self.backend, variant=self.variant, checkpoint=self.checkpoint,
            checkpoint_path=self.checkpoint_path, custom=self.custom, hq_token_only=self.hq_token_only,
            device=device, random_init=self.random_init, hydra_overrides=self.hydra_overrides,
        )
