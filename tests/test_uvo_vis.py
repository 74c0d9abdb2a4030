"""UVO video instance segmentation: the data module on a synthetic UVO tree, SAM's automatic
proposals with the tiny SAM, the VIS Lightning module (oracle, zero proposals), the CLI end to end
scored again by ``sampt eval-vis``, and 1 process == 2 processes (gloo DDP)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from sampt.datamodules.dummy_uvo import write_uvo
from sampt.datamodules.uvo import UVO, decode_segmentation, shortest_edge_shape, subset_ground_truth
from sampt.errors import DatasetLayoutError
from sampt.eval_vis import main as eval_vis_main
from sampt.lightning_base import OutputOptions
from sampt.lightning_vis import SamPtVisModule, track_scores, vis_sam_pt_defaults
from sampt.methods.sam_pt.method import SamPtMethod
from sampt.metrics.vis_ap import STAT_NAMES, evaluate_vis
from sampt.methods.base import FrameOutput
from sampt.methods.sam_pt.options import SamPtConfig
from sampt.proposals import ProposalConfig, generator_class, propose_masks
from sampt.sam.backends import SamConfig
from sampt.trackers.trivial import StaticTracker

REPO = Path(__file__).resolve().parents[1]
TINY_SAM_CONFIGS = ["--config", "configs/test/tiny_sam.yaml", "--config", "configs/test/tiny.yaml"]
# Thresholds the random tiny SAM passes (its IoU predictions are arbitrary), no NMS so that there
# are several proposals, 2 x 2 grid points: at most 12 candidates per frame.
LOOSE_PROPOSALS = ["--model.init_args.proposals.points_per_side", "2",
                   "--model.init_args.proposals.pred_iou_thresh", "-100",
                   "--model.init_args.proposals.stability_score_thresh", "0.0",
                   "--model.init_args.proposals.box_nms_thresh", "1.0",
                   "--model.init_args.proposals.max_num_masks", "4",
                   "--model.init_args.proposals_per_run", "2",
                   # SAM-PT's VIS value (configs/test/tiny.yaml sets 2 for the VOS tests).
                   "--model.init_args.method.init_args.sam_pt.prompting.iterative_refinement_iterations", "0"]


def random_method(sam_pt=None):
    """SAM-PT with a random-weight custom SAM and the static tracker (VIS defaults)."""
    return SamPtMethod(SamConfig(backend="custom", random_init=True), StaticTracker(), sam_pt or vis_sam_pt_defaults())


@pytest.fixture(scope="module")
def uvo_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("uvo")
    data, drawn = write_uvo(root)
    return root, data, drawn


def _json_path(root: Path) -> Path:
    return root / "UVOv1.0" / "VideoDenseSet" / "UVO_video_val_dense.json"


# ------------------------------------------------------------------------------------------------
# Synthetic tree and data module


def test_dummy_tree_has_the_real_layout_and_the_awkward_cases(uvo_tree):
    root, data, drawn = uvo_tree
    on_disk = json.loads(_json_path(root).read_text())
    assert [v["id"] for v in on_disk["videos"]] == [1, 2, 3]
    assert on_disk["categories"] == [{"supercategory": "object", "id": 1, "name": "object"}]
    for video in on_disk["videos"]:
        assert video["length"] == len(video["file_names"])
        for name in video["file_names"]:
            assert (root / "UVOv1.0" / "uvo_videos_dense_frames" / name).is_file()
    kinds = set()
    for annotation in on_disk["annotations"]:
        for segmentation in annotation["segmentations"]:
            if segmentation is None:
                kinds.add("absent")
            elif isinstance(segmentation, list):
                kinds.add("polygon")
            elif isinstance(segmentation["counts"], str):
                kinds.add("rle")
            else:
                kinds.add("uncompressed")
    assert kinds == {"absent", "polygon", "rle", "uncompressed"}
    assert sum(a["iscrowd"] for a in on_disk["annotations"]) == 1
    absent = [a for a in on_disk["annotations"] if None in a["segmentations"]]
    assert absent and all(a["areas"][a["segmentations"].index(None)] is None for a in absent)
    # Annotations of different videos interleave in the file.
    assert [a["video_id"] for a in on_disk["annotations"][:3]] == [1, 2, 3]
    assert set(drawn) == {a["id"] for a in on_disk["annotations"]}


def test_items_have_frames_in_json_order_no_objects_and_the_metric_meta(uvo_tree):
    root, data, _ = uvo_tree
    module = UVO(str(root))
    module.setup("test")
    dataset = module.dataset
    assert dataset.video_names == ["vidA-0001", "vidB_0002", "vidC-0003"]
    assert module.video_lengths() == [4, 3, 11]
    item = dataset[2]
    video = data["videos"][2]
    assert item.objects == []
    assert item.output_size == (video["height"], video["width"])
    # The JSON's order (0, 1, ..., 10), not the file names' sort order (0, 1, 10, 2, ...).
    assert list(item.frame_names) == [str(t) for t in range(11)]
    frame_dir = root / "UVOv1.0" / "uvo_videos_dense_frames"
    for t in (0, 2, 10):
        expected = np.asarray(Image.open(frame_dir / video["file_names"][t]).convert("RGB"))
        assert torch.equal(item.frames[t], torch.from_numpy(expected.copy()).permute(2, 0, 1))
    assert item.meta["video_id"] == 3
    assert Path(item.meta["ground_truth_path"]) == _json_path(root)
    assert module.ground_truth["annotations"] == data["annotations"]
    assert not module.ground_truth_is_subset


def test_rle_polygon_uncompressed_and_absent_frames_decode_to_the_drawn_masks(uvo_tree):
    root, data, drawn = uvo_tree
    module = UVO(str(root))
    for video in data["videos"]:
        ids, masks = module.ground_truth_masks(video["id"])
        assert ids == [a["id"] for a in data["annotations"] if a["video_id"] == video["id"]]
        for index, annotation_id in enumerate(ids):
            assert masks[index].shape == drawn[annotation_id].shape
            assert np.array_equal(masks[index], drawn[annotation_id]), annotation_id
    # Every kind occurs among the checked annotations (the layout test pins them); spot-check a few.
    assert not decode_segmentation(None, 5, 7).any()
    polygon = decode_segmentation([[1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]], 5, 7)
    assert polygon.sum() == 6 and polygon[1:3, 1:4].all()
    with pytest.raises(DatasetLayoutError, match="segmentation format"):
        decode_segmentation(42, 5, 7)


def test_tiny_split_is_the_seed_jq_recipe(uvo_tree):
    root, data, _ = uvo_tree
    tiny = UVO(str(root), split="uvo_v1_val_tiny")
    assert len(tiny.dataset) == 1
    gt = tiny.ground_truth
    assert [v["id"] for v in gt["videos"]] == [1]
    # jq '.annotations |= [.[0,1,2,3]]' keeps the first four annotations of the file; those of
    # dropped videos cannot be scored and are dropped.
    first_four = data["annotations"][:4]
    assert [a["id"] for a in gt["annotations"]] == [a["id"] for a in first_four if a["video_id"] == 1]
    assert len(gt["annotations"]) == 2
    assert tiny.ground_truth_is_subset
    same = UVO(str(root), split="val", max_videos=1, max_annotations=4)
    assert same.ground_truth == gt
    # The source dict is never modified by subsetting.
    assert len(data["annotations"]) == 10
    cut = UVO(str(root), max_frames=2)
    assert cut.dataset[2].num_frames == 2
    assert all(len(a["segmentations"]) == 2 and len(a["areas"]) == 2 for a in cut.ground_truth["annotations"])
    assert all(v["length"] == 2 for v in cut.ground_truth["videos"])
    assert subset_ground_truth(data) is data


def test_input_resizing_options(uvo_tree):
    root, _, _ = uvo_tree
    assert shortest_edge_shape(720, 1280, 360, 1333) == (360, 640)
    assert shortest_edge_shape(1280, 720, 360, 1333) == (640, 360)
    assert shortest_edge_shape(100, 1000, 360, 1333) == (133, 1333)  # capped by max_size
    assert shortest_edge_shape(48, 64, None, 1333) == (48, 64)
    item = UVO(str(root), shortest_edge=24).dataset[0]  # 48 x 64 -> 24 x 32
    assert tuple(item.frames.shape[-2:]) == (24, 32) and item.output_size == (48, 64)
    item = UVO(str(root), longest_size=32).dataset[0]
    assert tuple(item.frames.shape[-2:]) == (24, 32)


def test_layout_errors_name_the_file(uvo_tree, tmp_path):
    root, data, _ = uvo_tree
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        UVO(str(tmp_path / "nowhere")).setup("test")
    with pytest.raises(DatasetLayoutError, match="UVO_video_train_dense.json"):
        UVO(str(root), split="train").setup("test")
    with pytest.raises(ValueError, match="split"):
        UVO(str(root), split="valid")
    with pytest.raises(ValueError, match="version"):
        UVO(str(root), version="v2")
    with pytest.raises(ValueError, match="shortest_edge and longest_size"):
        UVO(str(root), shortest_edge=10, longest_size=10)
    with pytest.raises(ValueError, match="max_annotations"):
        UVO(str(root), max_annotations=0)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="broken.json"):
        UVO(str(root), annotation_file=str(broken)).setup("test")
    broken.write_text(json.dumps({"videos": [{"id": 1, "height": 4, "width": 4}]}))
    with pytest.raises(DatasetLayoutError, match="file_names"):
        UVO(str(root), annotation_file=str(broken)).setup("test")
    missing = dict(data, videos=[dict(data["videos"][0], file_names=["vidA-0001/0.png", "vidA-0001/99.png"],
                                      length=2)], annotations=[])
    broken.write_text(json.dumps(missing))
    with pytest.raises(DatasetLayoutError, match="99.png"):
        UVO(str(root), annotation_file=str(broken)).setup("test")
    wrong_size = dict(data, videos=[dict(data["videos"][0], height=10)], annotations=[])
    broken.write_text(json.dumps(wrong_size))
    with pytest.raises(DatasetLayoutError, match="height 10"):
        UVO(str(root), annotation_file=str(broken)).dataset[0]


# ------------------------------------------------------------------------------------------------
# Proposals


def test_proposals_with_the_tiny_sam(tiny_sam):
    frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 56), dtype=np.uint8))
    loose = ProposalConfig(points_per_side=2, pred_iou_thresh=-100.0, stability_score_thresh=0.0,
                           box_nms_thresh=1.0, max_num_masks=100)
    masks = propose_masks(tiny_sam, frame, loose)
    assert masks.dtype == torch.bool and masks.ndim == 3 and tuple(masks.shape[1:]) == (40, 56)
    assert masks.shape[0] > 3  # without NMS, up to 3 masks per grid point survive
    capped = propose_masks(tiny_sam, frame, ProposalConfig(**{**loose.__dict__, "max_num_masks": 3}))
    assert torch.equal(capped, masks[:3])  # the generator's order, cut
    # A threshold no predicted IoU reaches: the zero-proposal path.
    none = propose_masks(tiny_sam, frame, ProposalConfig(**{**loose.__dict__, "pred_iou_thresh": 1e9}))
    assert tuple(none.shape) == (0, 40, 56) and none.dtype == torch.bool
    assert propose_masks(tiny_sam, frame, ProposalConfig(max_num_masks=0)).shape[0] == 0
    with pytest.raises(ValueError, match="frame must be"):
        propose_masks(tiny_sam, frame.float(), loose)


def test_proposals_with_a_tiny_hq_sam_use_its_own_generator():
    """HQ-SAM's encoder returns intermediate features too: only its package's generator runs it."""
    from sampt.sam.backends import CustomSamArchitecture, build_sam_module
    from sampt.sam.model import SegmentAnythingModel

    torch.manual_seed(0)
    hq_sam = SegmentAnythingModel(build_sam_module("segment_anything_hq", "vit_b", CustomSamArchitecture()), hq=True)
    frame = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 40, 56), dtype=np.uint8))
    masks = propose_masks(hq_sam, frame, ProposalConfig(points_per_side=2, pred_iou_thresh=-100.0,
                                                        stability_score_thresh=0.0, box_nms_thresh=1.0))
    assert masks.shape[0] > 0 and tuple(masks.shape[1:]) == (40, 56) and masks.dtype == torch.bool


def test_proposal_config_defaults_and_validation():
    config = ProposalConfig()
    assert (config.points_per_side, config.points_per_batch, config.pred_iou_thresh, config.stability_score_thresh,
            config.stability_score_offset, config.box_nms_thresh, config.crop_n_layers, config.min_mask_region_area,
            config.max_num_masks) == (32, 64, 0.88, 0.95, 1.0, 0.7, 0, 0, 100)
    assert "max_num_masks" not in config.generator_kwargs()
    with pytest.raises(ValueError, match="points_per_side"):
        ProposalConfig(points_per_side=0)
    with pytest.raises(ValueError, match="box_nms_thresh"):
        ProposalConfig(box_nms_thresh=1.5)


def test_generator_class_follows_the_sam_package(tiny_sam):
    import segment_anything

    assert generator_class(tiny_sam) is segment_anything.SamAutomaticMaskGenerator
    for package in ("mobile_sam", "segment_anything_hq"):
        module_type = type("Sam", (), {"__module__": f"{package}.modeling.sam"})
        cls = generator_class(SimpleNamespace(sam=module_type()))
        assert cls.__module__.split(".")[0] == package and cls.__name__ == "SamAutomaticMaskGenerator"


# ------------------------------------------------------------------------------------------------
# The module: scores, oracle, zero proposals


def test_track_scores_original_versus_prompted_frames_mean():
    scores_per_frame = torch.tensor([[0.5, 0.2], [float("-inf"), 0.4], [0.7, 0.6]])
    result = SimpleNamespace(scores_per_frame=scores_per_frame, scores=torch.tensor([0.6, 0.4]))
    original = track_scores(result, "original")
    assert original[0] == float("-inf") and original[1] == pytest.approx(0.4)
    assert torch.equal(track_scores(result, "prompted_frames_mean"), torch.tensor([0.6, 0.4]))
    # SAM-PT-reinit's frames that no segment covered are NaN there: nanmean skips them.
    result.scores_per_frame = torch.tensor([[0.5, float("nan")], [0.3, 0.4]])
    assert torch.allclose(track_scores(result, "original", nan_aware=True), torch.tensor([0.4, 0.4]))
    assert torch.isnan(track_scores(result, "original")[1])
    with pytest.raises(ValueError, match="score"):
        track_scores(result, "max")


class GroundTruthPipeline:
    """Stands in for ``SamPt``: object k (1-based proposal index) is tracked as GT annotation k,
    with logits +/-10 and per-frame score 1 (or ``score_of(k)``); ``keep(k, t)`` can drop frames."""

    def __init__(self, gt_masks, score_of=lambda k: 1.0, keep=lambda k, t: True):
        self.gt_masks = gt_masks  # video_id -> (A, T, H, W) bool
        self.score_of = score_of
        self.keep = keep
        self.calls = []  # (video_id, object ids) per run

    def run(self, video, on_frame, on_queries=None, progress=None):
        masks = self.gt_masks[video.meta["video_id"]]
        ids = [o.object_id for o in video.objects]
        self.calls.append((video.meta["video_id"], ids))
        num_frames = video.num_frames
        for t in range(num_frames):
            frame = torch.stack([torch.from_numpy(masks[k - 1, t] & self.keep(k, t)) for k in ids])
            on_frame(FrameOutput(t, torch.where(frame, 10.0, -10.0), torch.ones(len(ids)),
                                 torch.ones(len(ids), dtype=torch.bool)))
        scores = torch.tensor([[self.score_of(k) for k in ids]] * num_frames)
        return SimpleNamespace(scores_per_frame=scores, scores=scores[0], timings={},
                               trajectories=torch.zeros(num_frames, len(ids), 1, 2),
                               visibilities=torch.ones(num_frames, len(ids), 1, dtype=torch.bool),
                               reasons=torch.zeros(num_frames, len(ids), 1, dtype=torch.int8),
                               queries=SimpleNamespace(num_positive=1))


def _oracle_module(datamodule, output_dir, **pipeline_options):
    """A VIS module whose proposals are the non-crowd GT annotations and whose tracks are the GT."""
    gt_masks = {}
    for video in datamodule.ground_truth["videos"]:
        _, masks = datamodule.ground_truth_masks(video["id"])
        flags = [a["iscrowd"] for a in datamodule.ground_truth["annotations"] if a["video_id"] == video["id"]]
        gt_masks[video["id"]] = masks[[i for i, f in enumerate(flags) if not f]]

    pipeline = GroundTruthPipeline(gt_masks, **pipeline_options)

    class OracleModule(SamPtVisModule):
        def propose(self, video):
            return torch.from_numpy(gt_masks[video.meta["video_id"]][:, 0].copy())

        def tracking_pipeline(self):
            return pipeline

    module = OracleModule(random_method(), proposals_per_run=2, output_dir=str(output_dir),
                          outputs=OutputOptions(save_trajectories=False, num_visualized_videos=1))
    module.oracle_pipeline = pipeline
    return module


def _test(module, datamodule, log_dir):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=pl.loggers.TensorBoardLogger(str(log_dir), name="tb"),
                         enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False)
    return trainer.test(module, datamodule=datamodule, verbose=False)[0]


def _eval_vis(gt, pred, out):
    assert eval_vis_main(["--gt", str(gt), "--pred", str(pred), "--out", str(out)]) == 0
    return json.loads(Path(out).read_text())


def _assert_same_stats(rescored: dict, module, logged: dict, predictions: Path) -> None:
    """eval-vis == the metric's float64 numbers exactly (module and vis_metrics.json); Lightning's
    logged copies are float32."""
    assert rescored == module.last_stats
    assert rescored == json.loads((predictions / "vis_metrics.json").read_text())["results"]
    assert {name: logged[f"test/{name}"] for name in STAT_NAMES} == pytest.approx(rescored, rel=1e-6, abs=1e-7)


def test_oracle_tracks_give_ap_one_and_the_same_numbers_through_eval_vis(uvo_tree, tmp_path):
    root, data, _ = uvo_tree
    datamodule = UVO(str(root))
    module = _oracle_module(datamodule, tmp_path / "predictions")
    logged = _test(module, datamodule, tmp_path)
    assert logged["test/AP"] == 1.0 and logged["test/AR100"] == 1.0 and logged["test/AP75"] == 1.0
    results = json.loads((tmp_path / "predictions" / "results.json").read_text())
    non_crowd = sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert len(results) == non_crowd
    assert {r["category_id"] for r in results} == {1} and {r["score"] for r in results} == {1.0}
    assert all(isinstance(s["counts"], str) for r in results for s in r["segmentations"])
    # Three proposals per video, proposals_per_run 2: two separate runs per video.
    assert module.oracle_pipeline.calls == [(v, [1, 2]) if i % 2 == 0 else (v, [3])
                                            for v in (1, 2, 3) for i in range(2)]
    rescored = _eval_vis(_json_path(root), tmp_path / "predictions" / "results.json", tmp_path / "stats.json")
    _assert_same_stats(rescored, module, logged, tmp_path / "predictions")
    assert (tmp_path / "overlays" / "vidA-0001_proposals.png").is_file()
    assert (tmp_path / "overlays" / "vidA-0001_tracks.png").is_file()
    assert not list((tmp_path / "predictions" / ".results_parts").glob("*.jsonl"))


def test_imperfect_oracle_scores_between_zero_and_one_identically_everywhere(uvo_tree, tmp_path):
    root, _, _ = uvo_tree
    datamodule = UVO(str(root))
    # Track 2 of every video loses its second half (tube IoU ~0.5), scores differ per track.
    module = _oracle_module(datamodule, tmp_path / "predictions", score_of=lambda k: 1.0 / k,
                            keep=lambda k, t: not (k == 2 and t >= 1))
    logged = _test(module, datamodule, tmp_path)
    assert 0.0 < logged["test/AP"] < 1.0
    rescored = _eval_vis(_json_path(root), tmp_path / "predictions" / "results.json", tmp_path / "stats.json")
    _assert_same_stats(rescored, module, logged, tmp_path / "predictions")
    direct = evaluate_vis(_json_path(root), json.loads((tmp_path / "predictions" / "results.json").read_text()))
    assert direct["stats"] == rescored


def test_predict_writes_results_without_a_metric_and_validate_scores(uvo_tree, tmp_path):
    root, data, _ = uvo_tree
    datamodule = UVO(str(root), max_videos=2)
    module = _oracle_module(datamodule, tmp_path / "predictions", score_of=lambda k: 0.5)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    summaries = trainer.predict(module, datamodule=datamodule)
    assert [(s["video_id"], s["num_instances"], s["scores"]) for s in summaries] == \
        [(1, 3, [0.5] * 3), (2, 3, [0.5] * 3)]
    results = json.loads((tmp_path / "predictions" / "results.json").read_text())
    assert [r["video_id"] for r in results] == [1, 1, 1, 2, 2, 2]
    assert json.loads((tmp_path / "predictions" / "vis_metrics.json").read_text())["results"] == {}
    # `sampt validate` runs the same evaluation under the val/ prefix.
    validated = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert validated["val/AP"] == 1.0 and set(validated) == {f"val/{name}" for name in STAT_NAMES}


def test_videos_without_proposals_yield_no_instances(uvo_tree, tmp_path):
    root, _, _ = uvo_tree
    datamodule = UVO(str(root), max_videos=2)
    module = SamPtVisModule(random_method(), proposals=ProposalConfig(points_per_side=2, pred_iou_thresh=1e9),
                            output_dir=str(tmp_path / "predictions"))
    logged = _test(module, datamodule, tmp_path)
    assert json.loads((tmp_path / "predictions" / "results.json").read_text()) == []
    assert logged["test/AP"] == 0.0 and logged["test/AR100"] == 0.0
    metrics = json.loads((tmp_path / "predictions" / "vis_metrics.json").read_text())
    assert metrics["instances_per_video"] == {"1": 0, "2": 0}
    # A subset GT is saved for re-scoring.
    saved = json.loads((tmp_path / "predictions" / "ground_truth.json").read_text())
    assert [v["id"] for v in saved["videos"]] == [1, 2]


def test_module_options_are_validated():
    with pytest.raises(ValueError, match="proposals_per_run"):
        SamPtVisModule(random_method(), proposals_per_run=0)
    with pytest.raises(ValueError, match="score"):
        SamPtVisModule(random_method(), score="max")
    with pytest.raises(ValueError, match="must be a SamPtMethod"):
        SamPtVisModule(torch.nn.Identity())
    config = vis_sam_pt_defaults()
    assert (config.prompting.iterative_refinement_iterations,
            config.prompting.add_other_objects_positive_points_as_negative_points,
            config.batching.point_tracker_mask_batch_size) == (0, False, 100)
    assert isinstance(config, SamPtConfig)


# ------------------------------------------------------------------------------------------------
# CLI end to end


def _cli_command(root: Path, out: Path, config: str = "configs/uvo_tiny.yaml", split: str = "val") -> list[str]:
    return ["test", "--config", config, *TINY_SAM_CONFIGS, *LOOSE_PROPOSALS,
            "--data.init_args.root", str(root), "--data.init_args.split", split,
            "--data.init_args.shortest_edge", "null",
            "--model.init_args.output_dir", str(out / "predictions"),
            "--trainer.logger.init_args.save_dir", str(out)]


@pytest.fixture(scope="module")
def cli_run(uvo_tree, tmp_path_factory):
    """``sampt test`` (in process) on the whole synthetic val split: 4 proposals per video in 2 chunks."""
    root, _, _ = uvo_tree
    out = tmp_path_factory.mktemp("cli")
    _main_in_repo(_cli_command(root, out))
    return out


def _main_in_repo(argv: list[str]) -> None:
    """``sampt.cli.main`` from the repository root (configs and the tiny SAM path are relative),
    with one intra-op thread like the DDP subprocesses (OMP_NUM_THREADS=1): float reductions, hence
    SAM's IoU scores, differ in the last bits between thread counts."""
    from sampt.cli import main

    previous, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(REPO)
    torch.set_num_threads(1)
    try:
        main(argv)
    finally:
        os.chdir(previous)
        torch.set_num_threads(threads)


def test_cli_results_are_rescored_identically_by_eval_vis(uvo_tree, cli_run):
    root, _, _ = uvo_tree
    predictions = cli_run / "predictions"
    results = json.loads((predictions / "results.json").read_text())
    assert [r["video_id"] for r in results] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(len(r["segmentations"]) == n for r, n in zip(results, [4] * 4 + [3] * 4 + [11] * 4))
    assert all(r["segmentations"][0]["size"] == s for r, s in zip(results, [[48, 64]] * 4 + [[40, 40]] * 4 +
                                                                   [[32, 48]] * 4))
    logged = json.loads((predictions / "vis_metrics.json").read_text())
    assert logged["instances_per_video"] == {"1": 4, "2": 4, "3": 4}
    assert logged["protocol"]["proposals"]["max_num_masks"] == 4
    rescored = _eval_vis(_json_path(root), predictions / "results.json", cli_run / "stats.json")
    assert rescored == logged["results"]
    # The numbers went to TensorBoard as well.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((cli_run / "tensorboard").glob("version_*"))))
    events.Reload()
    assert {f"test/{name}" for name in STAT_NAMES} <= set(events.Tags()["scalars"])
    assert events.Scalars("test/AR100")[-1].value == pytest.approx(rescored["AR100"])
    assert [e.value for e in events.Scalars("vis/instances_per_video")] == [4, 4, 4]
    assert any(tag.startswith("proposals/") for tag in events.Tags()["images"])
    assert any(tag.startswith("tracks/") for tag in events.Tags()["images"])


def test_cli_tiny_split_saves_its_ground_truth(uvo_tree, tmp_path):
    root, _, _ = uvo_tree
    _main_in_repo(_cli_command(root, tmp_path, split="uvo_v1_val_tiny"))
    predictions = tmp_path / "predictions"
    results = json.loads((predictions / "results.json").read_text())
    assert {r["video_id"] for r in results} == {1}
    gt = json.loads((predictions / "ground_truth.json").read_text())
    assert len(gt["videos"]) == 1 and len(gt["annotations"]) == 2
    logged = json.loads((predictions / "vis_metrics.json").read_text())["results"]
    assert _eval_vis(predictions / "ground_truth.json", predictions / "results.json", tmp_path / "s.json") == logged


def test_one_and_two_processes_give_identical_results(uvo_tree, cli_run, tmp_path):
    """Gloo DDP over 2 CPU processes, 3 videos (odd): same 12 numbers, byte-identical results.json."""
    root, _, _ = uvo_tree
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "sampt.cli", *_cli_command(root, tmp_path),
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one = json.loads((cli_run / "predictions" / "vis_metrics.json").read_text())
    two = json.loads((tmp_path / "predictions" / "vis_metrics.json").read_text())
    assert one["results"] == two["results"]
    assert one["instances_per_video"] == two["instances_per_video"]
    assert (cli_run / "predictions" / "results.json").read_bytes() == \
        (tmp_path / "predictions" / "results.json").read_bytes()
