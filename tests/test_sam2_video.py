"""SAM 2's video predictor as a VOS method against the sam2 script's protocol, on a tiny random SAM 2.

The reference below drives ``SAM2VideoPredictor`` directly as the sam2 repository's
``tools/vos_inference.py`` does (written here from its description: ``init_state`` on a JPEG
folder, ``add_new_mask`` with the annotation PNGs, ``propagate_in_video``, logits > 0, objects
merged into one index PNG with lower ids painted last), for both of its paths: all objects on
frame 0 (one state) and ``--track_object_appearing_later_in_video`` (one state per object, -1024
before it starts, non-overlapping constraints).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sampt.errors import CheckpointError
from sampt.merge import VosMerger
from sampt.methods.sam2_video import Sam2VideoMethod
from sampt.sam.sam2_backend import build_sam2_video_predictor, checkpoint_family, resolve_model
from sampt.video import ObjectQuery, VideoItem



@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one thread is fastest, and with two threads on a shared 2-core machine
    # OpenMP's synchronisation makes these tests 10-50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
_D = 32
#: A tiny SAM 2.1 (0.65 M parameters, 128 px input), memory window of 4 frames so that outputs
#: are released within the fixture's 10 frames.
TINY_OVERRIDES = [
    "++model.image_size=128",
    "++model.num_maskmem=2", "++model.max_obj_ptrs_in_encoder=3",
    "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,4]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    f"++model.image_encoder.neck.d_model={_D}", f"++model.image_encoder.neck.position_encoding.num_pos_feats={_D}",
    f"++model.memory_attention.d_model={_D}", f"++model.memory_attention.layer.d_model={_D}",
    "++model.memory_attention.layer.dim_feedforward=64", "++model.memory_attention.num_layers=1",
    f"++model.memory_attention.layer.self_attention.embedding_dim={_D}",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    f"++model.memory_attention.layer.cross_attention.embedding_dim={_D}",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16", "++model.memory_encoder.position_encoding.num_pos_feats=16",
    f"++model.memory_encoder.in_dim={_D}", f"++model.memory_encoder.mask_downsampler.embed_dim={_D}",
    f"++model.memory_encoder.fuser.layer.dim={_D}", "++model.memory_encoder.fuser.num_layers=1",
]
NUM_FRAMES, HEIGHT, WIDTH = 10, 72, 96
LATER_OBJECT, LATER_FRAME = 3, 4


def tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_sam2_video_predictor(CONFIG, TINY_OVERRIDES)
    # Random init leaves the no-object pointer / memory embeddings at zero; give every
    # parameter a non-trivial value so that every module affects the masks.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
        # Objects stay "present" (SAM 2 blanks a mask whose object score is <= 0), so that tracked
        # frames have non-empty masks to compare.
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(3.0)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """JPEG frames and DAVIS-style index PNGs: objects 1 and 2 from frame 0, object 3 from frame 4."""
    root = tmp_path_factory.mktemp("clip")
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    background = (rng.random((HEIGHT, WIDTH, 3)) * 60 + 40).astype(np.uint8)
    for t in range(NUM_FRAMES):
        frame = background.copy()
        index = np.zeros((HEIGHT, WIDTH), np.uint8)
        disc = (yy - 30) ** 2 + (xx - 20 - 3 * t) ** 2 < 12 ** 2
        box = (np.abs(yy - 50) < 10) & (np.abs(xx - 70 + 2 * t) < 14)
        frame[disc] = (220, 40, 40)
        frame[box] = (40, 200, 60)
        index[disc] = 1
        index[box & ~disc] = 2
        if t >= LATER_FRAME:
            tri = (yy < 25) & (xx > 60) & (xx - 60 > yy - 5)
            frame[tri] = (30, 60, 230)
            index[tri] = LATER_OBJECT
        Image.fromarray(frame).save(root / "frames" / f"{t:05d}.jpg", quality=90)
        png = Image.fromarray(index, mode="P")
        png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12))
        png.save(root / "masks" / f"{t:05d}.png")
    return root


def read_index(path: Path) -> np.ndarray:
    return np.array(Image.open(path)).astype(np.uint8)


def put_per_obj_mask(per_obj_mask: dict[int, np.ndarray]) -> np.ndarray:
    """The script's merge: object masks painted from the highest id down (lower ids win)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for object_id in sorted(per_obj_mask)[::-1]:
        mask[per_obj_mask[object_id].reshape(HEIGHT, WIDTH)] = object_id
    return mask


def reference_predictor(weights: Path):
    predictor = build_sam2_video_predictor(CONFIG, TINY_OVERRIDES)
    predictor.load_state_dict(torch.load(weights, weights_only=True)["model"])
    return predictor


@torch.inference_mode()
def script_first_frame(predictor, clip: Path) -> list[np.ndarray]:
    """The script's default path: every object's mask on frame 0, one state."""
    state = predictor.init_state(video_path=str(clip / "frames"))
    index = read_index(clip / "masks/00000.png")
    for object_id in [int(i) for i in np.unique(index) if i > 0]:
        predictor.add_new_mask(inference_state=state, frame_idx=0, obj_id=object_id, mask=index == object_id)
    segments = {}
    for t, ids, logits in predictor.propagate_in_video(state):
        segments[t] = put_per_obj_mask({i: (logits[k] > 0.0).cpu().numpy() for k, i in enumerate(ids)})
    return [segments[t] for t in range(NUM_FRAMES)]


@torch.inference_mode()
def script_appearing_later(predictor, clip: Path) -> list[np.ndarray]:
    """The script's ``--track_object_appearing_later_in_video`` path."""
    state = predictor.init_state(video_path=str(clip / "frames"))
    inputs = defaultdict(dict)
    for t in range(NUM_FRAMES):
        index = read_index(clip / "masks" / f"{t:05d}.png")
        for object_id in [int(i) for i in np.unique(index) if i > 0]:
            if not inputs[object_id]:
                inputs[object_id][t] = index == object_id
    object_ids = sorted(inputs)
    scores_per_object = defaultdict(dict)
    for object_id in object_ids:
        predictor.reset_state(state)
        for t, mask in inputs[object_id].items():
            predictor.add_new_mask(inference_state=state, frame_idx=t, obj_id=object_id, mask=mask)
        for t, _, logits in predictor.propagate_in_video(state, start_frame_idx=min(inputs[object_id]),
                                                         reverse=False):
            scores_per_object[object_id][t] = logits.cpu().numpy()
    out = []
    for t in range(NUM_FRAMES):
        scores = torch.full((len(object_ids), 1, HEIGHT, WIDTH), -1024.0)
        for k, object_id in enumerate(object_ids):
            if t in scores_per_object[object_id]:
                scores[k] = torch.from_numpy(scores_per_object[object_id][t])
        scores = predictor._apply_non_overlapping_constraints(scores)
        out.append(put_per_obj_mask({i: (scores[k] > 0.0).numpy() for k, i in enumerate(object_ids)}))
    return out


def video_item(clip: Path, first_frame_only: bool) -> VideoItem:
    frames = torch.stack([torch.from_numpy(np.array(Image.open(clip / "frames" / f"{t:05d}.jpg").convert("RGB")))
                          .permute(2, 0, 1) for t in range(NUM_FRAMES)])
    objects, seen = [], set()
    for t in range(1 if first_frame_only else NUM_FRAMES):
        index = torch.from_numpy(read_index(clip / "masks" / f"{t:05d}.png"))
        for object_id in [int(i) for i in index.unique() if i > 0]:
            if object_id not in seen:
                seen.add(object_id)
                objects.append(ObjectQuery(object_id, t, mask=index == object_id, output_mask=index == object_id))
    return VideoItem("clip", frames, [f"{t:05d}" for t in range(NUM_FRAMES)], objects, (HEIGHT, WIDTH))


def run_method(method, video):
    """Per frame: the script's merge of the method's logits, and the harness's merge."""
    ids = [o.object_id for o in video.objects]
    script, harness, merger = [], [], {}

    def on_queries(queries):
        merger["m"] = VosMerger(ids, queries.query_frames.tolist(), queries.query_masks, video.output_size,
                                [o.output_mask for o in video.objects])

    def on_frame(output):
        assert output.logits.shape == (len(ids), HEIGHT, WIDTH) and output.logits.dtype == torch.float32
        script.append(put_per_obj_mask({i: (output.logits[k] > 0.0).numpy() for k, i in enumerate(ids)}))
        harness.append(merger["m"](output.t, output.logits).numpy())

    result = method.run(video, on_frame, on_queries)
    return script, harness, result


@pytest.fixture(scope="module")
def method(weights):
    method = Sam2VideoMethod(model=CONFIG, checkpoint_path=str(weights), hydra_overrides=TINY_OVERRIDES)
    method.prepare("cpu")
    return method


def test_an_object_appearing_mid_video_matches_the_script_on_every_frame(method, weights, clip):
    reference = script_appearing_later(reference_predictor(weights), clip)
    # Not trivial: each object is present in the reference, and the later one only from its frame.
    for object_id, start in ((1, 0), (2, 0), (LATER_OBJECT, LATER_FRAME)):
        assert all((r == object_id).sum() > 50 for r in reference[start:]), object_id
    assert not any((r == LATER_OBJECT).any() for r in reference[:LATER_FRAME])
    video = video_item(clip, first_frame_only=False)
    assert [o.query_frame for o in video.objects] == [0, 0, LATER_FRAME]
    states = []
    original = method.predictor.propagate_in_video

    def spy(state, **kwargs):
        states.append(state)
        return original(state, **kwargs)

    method.predictor.propagate_in_video = spy
    try:
        script, harness, result = run_method(method, video)
    finally:
        del method.predictor.propagate_in_video
    for t in range(NUM_FRAMES):
        np.testing.assert_array_equal(script[t], reference[t], err_msg=f"frame {t}")
    # The harness pastes each object's given mask on its query frame and agrees elsewhere.
    for t in range(NUM_FRAMES):
        if t not in (0, LATER_FRAME):
            np.testing.assert_array_equal(harness[t], reference[t], err_msg=f"frame {t}")
    given = read_index(clip / "masks" / f"{LATER_FRAME:05d}.png")
    assert np.array_equal(harness[LATER_FRAME] == LATER_OBJECT, given == LATER_OBJECT)
    assert np.array_equal(harness[0], read_index(clip / "masks/00000.png"))
    # One state per object; outputs older than the memory window were released.
    assert len(states) == 3
    window = method.memory_window()
    assert window == 4 < NUM_FRAMES - LATER_FRAME + 1 + 1
    for state in states:
        kept = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        assert len(kept) <= window and max(kept) == NUM_FRAMES - 1
    assert result.scores_per_frame.shape == (NUM_FRAMES, 3)
    assert torch.isinf(result.scores_per_frame[:LATER_FRAME, 2]).all()
    assert torch.isfinite(result.scores_per_frame[LATER_FRAME:]).all()
    assert result.num_encoded_frames == NUM_FRAMES


def test_objects_on_the_first_frame_match_the_scripts_default_path(weights, clip):
    reference = script_first_frame(reference_predictor(weights), clip)
    for object_id in (1, 2):
        assert all((r == object_id).sum() > 50 for r in reference), object_id
    # Keep every output and preprocess frames up front: the masks do not depend on it.
    method = Sam2VideoMethod(model=CONFIG, checkpoint_path=str(weights), hydra_overrides=TINY_OVERRIDES,
                             release_outputs=False, lazy_frames=False, offload_video_to_cpu=True,
                             offload_state_to_cpu=True)
    method.prepare("cpu")
    script, _, _ = run_method(method, video_item(clip, first_frame_only=True))
    for t in range(NUM_FRAMES):
        np.testing.assert_array_equal(script[t], reference[t], err_msg=f"frame {t}")


def test_weights_are_loaded_in_prepare_from_the_registry_or_a_path(weights, tmp_path):
    method = Sam2VideoMethod(model="sam2.1_hiera_large")
    assert method.required_checkpoints() == ["sam2.1_hiera_large"]
    assert method.predictor is None  # nothing is built or read before prepare()
    assert resolve_model("sam2.1_hiera_tiny") == ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny")
    explicit = Sam2VideoMethod(model=CONFIG, checkpoint_path=str(weights), hydra_overrides=TINY_OVERRIDES)
    assert explicit.required_checkpoints() == []
    explicit.prepare()
    assert explicit.weight_files() == {"sam2": Path(weights)}
    reference = torch.load(weights, weights_only=True)["model"]
    for key, value in explicit.predictor.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_unknown_config_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        Sam2VideoMethod(model="sam2.1_hiera_huge")
    assert "sam2.1_hiera_base_plus" in str(error.value) and "configs/sam2.1/sam2.1_hiera_l.yaml" in str(error.value)
    with pytest.raises(ValueError, match="checkpoint_path"):
        Sam2VideoMethod(model=CONFIG)


def test_a_sam1_checkpoint_is_named_as_such(tmp_path):
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    decoder = MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(depth=1, embedding_dim=16,
                                                                            mlp_dim=16, num_heads=2))
    path = tmp_path / "sam1.pth"
    torch.save({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}, path)
    assert checkpoint_family(torch.load(path, weights_only=True)) == "sam1"
    method = Sam2VideoMethod(model=CONFIG, checkpoint_path=str(path), hydra_overrides=TINY_OVERRIDES)
    with pytest.raises(CheckpointError) as error:
        method.prepare()
    message = str(error.value)
    assert "SAM 1 checkpoint" in message and "SAM 2" in message and str(path) in message


def test_a_sam2_checkpoint_is_named_as_such_for_sam1_backends(weights):
    from sampt.sam.sam2_backend import require_sam1_state

    state = torch.load(weights, weights_only=True)["model"]
    assert checkpoint_family(state) == "sam2"
    with pytest.raises(CheckpointError) as error:
        require_sam1_state(state, weights, "SAM ViT-B")
    message = str(error.value)
    assert "SAM 2 checkpoint" in message and "SAM ViT-B is a SAM 1 model" in message and str(weights) in message


@torch.inference_mode()
def script_clicks(predictor, clip: Path, clicks: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Clicked points on frame 0 with ``add_new_points_or_box`` (video pixels), then propagation."""
    state = predictor.init_state(video_path=str(clip / "frames"))
    for object_id, (points, labels) in clicks.items():
        predictor.add_new_points_or_box(inference_state=state, frame_idx=0, obj_id=object_id,
                                        points=points, labels=labels)
    segments = {}
    for t, ids, logits in predictor.propagate_in_video(state):
        segments[t] = put_per_obj_mask({i: (logits[k] > 0.0).cpu().numpy() for k, i in enumerate(ids)})
    return [segments[t] for t in range(NUM_FRAMES)]


def test_clicked_points_match_add_new_points_or_box(method, weights, clip):
    clicks = {1: (np.array([[20.0, 30.0], [26.0, 28.0], [70.0, 50.0]], np.float32), np.array([1, 1, 0], np.int32)),
              2: (np.array([[70.0, 50.0], [20.0, 30.0]], np.float32), np.array([1, 0], np.int32))}
    reference = script_clicks(reference_predictor(weights), clip, clicks)
    assert all((r > 0).any() for r in reference)
    video = video_item(clip, first_frame_only=True)
    video.objects = [ObjectQuery(i, 0, points=torch.from_numpy(p), num_positive=int(labels.sum()))
                     for i, (p, labels) in clicks.items()]
    script, harness, result = run_method(method, video)
    for t in range(NUM_FRAMES):
        np.testing.assert_array_equal(script[t], reference[t], err_msg=f"frame {t}")
    # On the query frame the harness pastes SAM 2's answer to each object's clicks (its own mask,
    # before the objects' overlaps are resolved): the same as the script outside the overlaps.
    query_masks = result.queries.query_masks.numpy()
    assert query_masks.shape == (2, HEIGHT, WIDTH) and query_masks.any(axis=(1, 2)).all()
    single = query_masks.sum(0) <= 1
    np.testing.assert_array_equal(harness[0][single], reference[0][single])
    for t in range(1, NUM_FRAMES):
        np.testing.assert_array_equal(harness[t], reference[t], err_msg=f"frame {t}")
