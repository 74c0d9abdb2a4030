"""SAM backends: architectures equal the packages' builders, tiny builds round-trip, loading errors."""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sampt import checkpoints
from sampt.checkpoints import Checkpoint, file_md5, load_state_dict_file
from sampt.errors import CheckpointError
from sampt.sam import backends
from sampt.sam.backends import (
    CustomSamArchitecture,
    SamConfig,
    TinyVitSamArchitecture,
    build_sam,
    build_sam_module,
    get_sam_variant,
    sam_variants,
)
from sampt.sam.model import SamModel, SegmentAnythingModel

REPO = Path(__file__).resolve().parents[1]
TINY_SAM = REPO.parent / "shared" / "vectors" / "sam-prompting" / "tiny_sam_vit.pt"

VIT_VARIANTS = [(b, v) for b in ("segment_anything", "segment_anything_hq") for v in ("vit_b", "vit_l", "vit_h")]
TINY_VIT_VARIANTS = [("mobile_sam", "vit_t"), ("segment_anything_hq", "vit_tiny")]
ALL_VARIANTS = VIT_VARIANTS + TINY_VIT_VARIANTS + [("custom", "custom")]

# Small enough to build and run in well under a second; exercises every module class of a family.
TINY_VIT = CustomSamArchitecture(
    img_size=64, patch_size=16, encoder_embed_dim=16, encoder_depth=2, encoder_num_heads=2,
    encoder_window_size=2, encoder_global_attn_indexes=[1], prompt_embed_dim=32, mask_in_chans=4,
    decoder_depth=1, decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16,
)
TINY_TINY_VIT = TinyVitSamArchitecture(
    embed_dims=[8, 16, 24, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], num_classes=10,
    decoder_depth=1, decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16,
)


def tiny_architecture(backend: str, variant: str):
    return TINY_TINY_VIT if (backend, variant) in TINY_VIT_VARIANTS else TINY_VIT


def package_builder(backend: str, variant: str):
    import importlib

    package = importlib.import_module(backend)
    return package.sam_model_registry[variant]


_STRUCTURE_ATTRIBUTES = ("img_size", "window_size", "num_heads", "key_dim", "internal_dim", "embedding_dim",
                         "num_mask_tokens", "input_image_size", "image_embedding_size", "mask_threshold")


def structure(module: torch.nn.Module) -> list:
    """Module tree with classes and the hyper-parameters that shapes alone do not reveal."""
    rows = []
    for name, sub in module.named_modules():
        attributes = {a: getattr(sub, a, None) for a in _STRUCTURE_ATTRIBUTES}
        attributes = {a: v for a, v in attributes.items() if isinstance(v, (int, float, tuple, list))}
        rows.append((name, f"{type(sub).__module__}.{type(sub).__qualname__}", attributes))
    return rows


def layout(module: torch.nn.Module) -> dict:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@pytest.mark.parametrize("backend,variant", VIT_VARIANTS)
def test_vit_variants_equal_package_builders(backend, variant):
    # On the meta device nothing is allocated, so even vit_h costs no memory here.
    with torch.device("meta"):
        reference = package_builder(backend, variant)(checkpoint=None)
        built = build_sam_module(backend, variant)
    assert layout(built) == layout(reference)
    assert structure(built) == structure(reference)


@pytest.mark.parametrize("backend,variant", TINY_VIT_VARIANTS)
def test_tiny_vit_variants_equal_package_builders(backend, variant):
    # TinyViT cannot be built on the meta device; at ~10M parameters it is cheap on CPU.
    reference = package_builder(backend, variant)(checkpoint=None)
    built = build_sam_module(backend, variant)
    assert layout(built) == layout(reference)
    assert structure(built) == structure(reference)


def test_custom_default_is_the_readme_tiny_sam():
    """CustomSamArchitecture() is the tiny SAM exactly as the sam-prompting README describes it."""
    readme_sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=4, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=[0], window_size=4, out_chans=256,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    built = build_sam_module("custom", "custom", CustomSamArchitecture())
    assert layout(built) == layout(readme_sam)
    assert structure(built) == structure(readme_sam)
    assert torch.equal(built.pixel_mean, readme_sam.pixel_mean) and torch.equal(built.pixel_std, readme_sam.pixel_std)


def test_shared_tiny_sam_loads_strictly_into_custom():
    model = build_sam("custom", checkpoint_path=str(TINY_SAM))
    assert isinstance(model, SamModel) and not model.hq and model.image_size == 256
    assert model.variant == "custom/custom"
    saved = torch.load(TINY_SAM, map_location="cpu", weights_only=True)
    state = model.sam.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[key], saved[key]) for key in saved)
    assert not model.sam.training and not any(p.requires_grad for p in model.parameters())


def run_tiny_forward(model: SamModel) -> torch.Tensor:
    """Embed a small frame and decode one point prompt; returns (1, 1, H, W) logits."""
    frames = torch.randint(0, 256, (1, 3, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    embedding = model.embed_frames(frames)[0]
    assert (embedding.interm_features is not None) == model.hq
    coords = model.transform.apply_coords_torch(torch.tensor([[[20.0, 12.0]]]), embedding.original_size)
    sparse, dense = model.sam.prompt_encoder(points=(coords, torch.ones(1, 1, dtype=torch.int64)), boxes=None, masks=None)
    decoder_inputs = dict(
        image_embeddings=embedding.features, image_pe=model.dense_positional_encoding(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
    )
    if model.hq:
        decoder_inputs.update(hq_token_only=model.hq_token_only, interm_embeddings=embedding.interm_features)
    with torch.no_grad():
        low_res, iou = model.sam.mask_decoder(**decoder_inputs)
    assert iou.shape == (1, 1)
    return model.upscale_logits(low_res, embedding)


@pytest.mark.parametrize("backend,variant", ALL_VARIANTS)
def test_tiny_build_round_trips_through_loader(backend, variant, tmp_path):
    architecture = tiny_architecture(backend, variant)
    torch.manual_seed(0)
    source = build_sam_module(backend, variant, architecture)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)

    torch.manual_seed(1)
    target = build_sam_module(backend, variant, architecture)
    assert not all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    load_state_dict_file(target, path, f"{backend}/{variant}")
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in target.state_dict().items())

    model = SegmentAnythingModel(target, hq=get_sam_variant(backend, variant).hq, variant=f"{backend}/{variant}")
    logits = run_tiny_forward(model)
    assert logits.shape == (1, 1, 24, 40) and torch.isfinite(logits).all()


@pytest.mark.parametrize("backend,variant", TINY_VIT_VARIANTS)
def test_build_sam_loads_a_real_size_checkpoint(backend, variant, tmp_path):
    """End to end through build_sam with the published architecture (the TinyViT ones are small)."""
    torch.manual_seed(0)
    source = build_sam_module(backend, variant)
    path = tmp_path / "weights.pth"
    torch.save({"model": source.state_dict()}, path)  # the "model" wrapper is unwrapped
    model = build_sam(backend, variant, checkpoint_path=str(path), hq_token_only=(backend == "segment_anything_hq"))
    assert model.hq == (backend == "segment_anything_hq") and model.hq_token_only == model.hq
    assert model.image_size == 1024 and model.variant == f"{backend}/{variant}"
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.sam.state_dict().items())


@pytest.fixture
def tiny_state():
    return torch.load(TINY_SAM, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda sd: sd.update({"mask_decoder.extra_head.weight": torch.zeros(3)}),
         "unexpected keys: mask_decoder.extra_head.weight"),
        (lambda sd: sd.pop("mask_decoder.iou_token.weight"), "missing keys: mask_decoder.iou_token.weight"),
        (lambda sd: sd.update({"image_encoder.pos_embed": torch.zeros(1, 8, 8, 32)}),
         r"shape mismatches \(file vs model\): image_encoder.pos_embed \(1, 8, 8, 32\) vs \(1, 16, 16, 32\)"),
    ],
    ids=["extra", "missing", "shape"],
)
def test_state_dict_that_does_not_fit_names_file_and_variant(tiny_state, tmp_path, edit, expected):
    edit(tiny_state)
    path = tmp_path / "edited_tiny.pt"
    torch.save(tiny_state, path)
    with pytest.raises(CheckpointError, match=expected) as info:
        build_sam("custom", checkpoint_path=str(path))
    assert str(path) in str(info.value) and "custom/custom" in str(info.value)


def test_many_bad_keys_are_summarised(tiny_state, tmp_path):
    path = tmp_path / "renamed.pt"
    torch.save({f"module.{key}": value for key, value in tiny_state.items()}, path)
    with pytest.raises(CheckpointError, match=rf"\({len(tiny_state)} in all\)"):
        build_sam("custom", checkpoint_path=str(path))


class NotWeights:
    pass


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"definitely not a torch file", "cannot read"),
        ({"epoch": 3, "weights": {"a": torch.zeros(1)}}, "is not a state dict"),
        (NotWeights(), "cannot read"),
    ],
    ids=["garbage", "not-a-state-dict", "arbitrary-pickle"],
)
def test_unloadable_files_raise_checkpoint_error(tmp_path, content, expected):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    module = build_sam_module("custom", "custom", TINY_VIT)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_state_dict_file(module, path, "custom/custom")
    assert str(path) in str(info.value)


def test_unknown_backend_and_variant_list_valid_names():
    with pytest.raises(ValueError, match="unknown SAM backend 'sam3'; valid names: custom, mobile_sam, sam2, segment_anything, segment_anything_hq"):
        build_sam("sam3")
    with pytest.raises(ValueError, match="unknown segment_anything variant 'vit_tiny'; valid names: vit_b, vit_h, vit_l"):
        build_sam("segment_anything", "vit_tiny")
    with pytest.raises(ValueError, match="valid names: vit_t"):
        build_sam("mobile_sam", "vit_b")
    assert sam_variants() == {
        "custom": ["custom"], "mobile_sam": ["vit_t"], "segment_anything": ["vit_b", "vit_h", "vit_l"],
        "segment_anything_hq": ["vit_b", "vit_h", "vit_l", "vit_tiny"],
    }


def test_options_that_do_not_apply_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="hq_token_only"):
        build_sam("mobile_sam", hq_token_only=True, random_init=True)
    with pytest.raises(ValueError, match="sam.custom"):
        build_sam("segment_anything", "vit_b", custom=TINY_VIT)
    with pytest.raises(ValueError, match="random_init excludes"):
        build_sam("custom", checkpoint_path=str(TINY_SAM), random_init=True)
    with pytest.raises(CheckpointError, match="checkpoint_path"):
        build_sam("custom")
    with pytest.raises(CheckpointError, match="missing.pt"):
        build_sam("custom", checkpoint_path=str(tmp_path / "missing.pt"))


def test_invalid_architectures_name_the_field():
    with pytest.raises(ValueError, match=r"encoder_global_attn_indexes \[3\]"):
        CustomSamArchitecture(encoder_depth=2, encoder_global_attn_indexes=[3])
    with pytest.raises(ValueError, match="img_size .* multiple of patch_size"):
        CustomSamArchitecture(img_size=100)
    with pytest.raises(ValueError, match="embed_dims must be 4"):
        TinyVitSamArchitecture(embed_dims=[8, 16, 24])
    with pytest.raises(ValueError, match=r"embed_dims\[3\] must be one of \(320, 448, 576\)"):
        TinyVitSamArchitecture(embed_dims=[8, 16, 24, 32], num_heads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="needs a TinyVitSamArchitecture"):
        build_sam_module("mobile_sam", "vit_t", TINY_VIT)


def test_random_init_builds_without_weights():
    model = build_sam("custom", custom=TINY_VIT, random_init=True, device="cpu")
    assert model.image_size == 64 and model.device == torch.device("cpu")


def test_registry_name_resolves_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "cache"))
    entry = Checkpoint("tiny_sam_test", "tiny_sam_vit.pt", "http://127.0.0.1:9/tiny_sam_vit.pt",
                       file_md5(TINY_SAM), "sam", "test", 1.0)
    monkeypatch.setitem(checkpoints.CHECKPOINTS, entry.name, entry)
    (tmp_path / "cache").mkdir()
    shutil.copy(TINY_SAM, tmp_path / "cache" / entry.filename)
    model = build_sam("custom", checkpoint=entry.name)
    saved = torch.load(TINY_SAM, map_location="cpu", weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.sam.state_dict().items())


def test_wrong_cached_file_fails_before_building(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(b"a truncated download")

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model must not be built when its checkpoint is unusable")

    monkeypatch.setattr(backends, "build_sam_module", must_not_build)
    with pytest.raises(CheckpointError) as info:
        build_sam("mobile_sam")
    message = str(info.value)
    assert str(tmp_path / "mobile_sam.pt") in message and "f3c0d8cda613564d499310dab6c812cd" in message
    assert checkpoints.CHECKPOINTS["mobile_sam_vit_t"].url in message


def parse_sam_config(path: Path) -> SamConfig:
    parser = ArgumentParser()
    parser.add_class_arguments(SamConfig, "model.method.init_args.sam")
    config = parser.parse_path(str(path))
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return SamConfig(**vars(instantiate(config).model.method.init_args.sam))


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "sam").glob("*.yaml")), ids=lambda p: p.stem)
def test_sam_configs_name_registered_variants_and_checkpoints(config):
    sam = parse_sam_config(config)
    if sam.backend == "sam2":
        from sampt.sam.sam2_backend import SAM2_MODELS

        assert sam.checkpoint == SAM2_MODELS[sam.variant][1] == config.stem
        assert sam.checkpoint in checkpoints.CHECKPOINTS and sam.required_checkpoints() == [sam.checkpoint]
        return
    entry = get_sam_variant(sam.backend, sam.variant)
    assert sam.checkpoint == entry.checkpoint and sam.checkpoint in checkpoints.CHECKPOINTS
    assert config.stem in (entry.checkpoint, entry.backend)


def test_all_sam_configs_exist():
    stems = {p.stem for p in (REPO / "configs" / "sam").glob("*.yaml")}
    assert stems == {"sam_vit_b", "sam_vit_l", "sam_vit_h", "samhq_vit_b", "samhq_vit_l", "samhq_vit_h",
                     "samhq_vit_tiny", "mobile_sam", "sam2.1_hiera_tiny", "sam2.1_hiera_small",
                     "sam2.1_hiera_base_plus", "sam2.1_hiera_large"}


def test_tiny_sam_test_config_builds_the_shared_model(monkeypatch):
    monkeypatch.chdir(REPO)  # its checkpoint_path is relative to the repository root
    sam = parse_sam_config(REPO / "configs" / "test" / "tiny_sam.yaml")
    assert sam.custom == CustomSamArchitecture()
    model = sam.build()
    saved = torch.load(TINY_SAM, map_location="cpu", weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.sam.state_dict().items())


def test_a_sam2_checkpoint_given_to_a_sam1_backend_names_both(tmp_path):
    # Keys of a SAM 2 state dict (its decoder and memory modules) in a file given to SAM 1.
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"sam_mask_decoder.iou_token.weight": torch.zeros(1, 256),
                          "memory_attention.layers.0.norm1.weight": torch.zeros(256)}}, path)
    with pytest.raises(CheckpointError, match="is a SAM 2 checkpoint .* but SAM custom/custom is a SAM 1 model") as info:
        build_sam("custom", checkpoint_path=str(path))
    assert str(path) in str(info.value) and "sam2_video" in str(info.value)
