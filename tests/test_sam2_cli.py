"""`sampt test --config configs/d17.yaml --config configs/method/sam2_video.yaml` end to end on the
DAVIS sample, with a tiny random SAM 2 (explicit checkpoint path) instead of SAM 2.1 B+."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import DAVIS_SAMPLE, REPO
from sampt.cli import main as sampt_main
from test_sam2_video import CONFIG, TINY_OVERRIDES, _one_thread, tiny_weights  # noqa: F401 (autouse fixture)


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_sam2_video_method_on_the_davis_sample(davis2017_sample, tmp_path):
    weights = tiny_weights(tmp_path / "tiny_sam2.pt")
    tiny = tmp_path / "tiny_sam2.yaml"
    tiny.write_text(yaml.safe_dump({"model": {"init_args": {"method": {"init_args": {
        "model": CONFIG, "checkpoint_path": str(weights), "hydra_overrides": TINY_OVERRIDES}}}},
        "trainer": {"accelerator": "cpu", "devices": 1}}))
    out = tmp_path / "run"
    sampt_main(["test", "--config", "configs/d17.yaml", "--config", "configs/method/sam2_video.yaml",
                "--config", str(tiny), "--data.init_args.root", str(davis2017_sample),
                "--model.init_args.output_dir", str(out / "predictions"),
                "--trainer.logger.init_args.save_dir", str(out)])
    header, *rows = (out / "global_results-val.csv").read_text().strip().splitlines()
    assert header.split(",")[0] == "J&F-Mean"
    values = [float(v) for v in rows[0].split(",")]
    assert 0.0 <= values[0] <= 1.0 and values[0] == pytest.approx((values[1] + values[4]) / 2, abs=1e-3)
    per_sequence = (out / "per-sequence_results-val.csv").read_text()
    assert "blackswan_1" in per_sequence and "car-shadow_1" in per_sequence
    for sequence in ("blackswan", "car-shadow"):
        pngs = sorted((out / "predictions" / sequence).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(5)]
        first = Image.open(pngs[0])
        assert first.mode == "P" and first.size == (854, 480)
        gt = np.array(Image.open(DAVIS_SAMPLE / "Annotations/480p" / sequence / "00000.png")) > 0
        assert np.array_equal(np.array(first) == 1, gt)  # the query frame is the given mask
        # SAM 2 tracked something on the other frames (the tiny model keeps its objects present).
        assert all((np.array(Image.open(p)) == 1).any() for p in pngs[1:])
    assert (out / "overlays" / "blackswan.png").is_file()  # overlays without points
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    config = (out / "config.yaml").read_text()
    assert "sampt.methods.sam2_video.Sam2VideoMethod" in config and "tiny_sam2.pt" in config
    assert "SamPtMethod" not in config
    protocol = json.loads((out / "protocol.json").read_text())
    assert "sam2_video" in json.dumps(protocol)


def test_the_method_config_builds_without_fetching(tmp_path, monkeypatch):
    from sampt import checkpoints
    from sampt.lightning_cli import build_lightning_cli

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"building a config opened {url}")

    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "_urlopen", no_network)
    cli = build_lightning_cli(["--config", "configs/d17.yaml", "--config", "configs/method/sam2_video.yaml",
                               "--trainer.accelerator", "cpu"], run=False)
    method = cli.model.method
    assert type(method).__name__ == "Sam2VideoMethod" and method.predictor is None
    assert method.required_checkpoints() == ["sam2.1_hiera_base_plus"]
    assert cli.datamodule.longest_size is None  # frames at their original size, as the script reads them
    assert not (tmp_path / "cache").exists()


def test_sam_pt_with_sam2_as_its_segmenter_on_the_davis_sample(davis2017_sample, tmp_path):
    # configs/sam/sam2.1_hiera_large.yaml with the tiny random SAM 2.1 in place of Hiera-L's weights.
    weights = tiny_weights(tmp_path / "tiny_sam2.pt")
    tiny = tmp_path / "tiny_sam2_segmenter.yaml"
    tiny.write_text(yaml.safe_dump({"model": {"init_args": {"method": {"init_args": {
        "sam": {"variant": CONFIG, "checkpoint": None, "checkpoint_path": str(weights),
                "hydra_overrides": TINY_OVERRIDES},
        "tracker": {"class_path": "sampt.trackers.lk.LucasKanadeTracker"},
        "sam_pt": {"query": {"positive_points_per_mask": 4, "negative_points_per_mask": 1},
                   "prompting": {"iterative_refinement_iterations": 2, "sam_iou_threshold": -1.0}}}}}},
        "trainer": {"accelerator": "cpu", "devices": 1}}))
    out = tmp_path / "run"
    sampt_main(["test", "--config", "configs/d17.yaml", "--config", "configs/sam/sam2.1_hiera_large.yaml",
                "--config", str(tiny), "--data.init_args.root", str(davis2017_sample),
                "--model.init_args.output_dir", str(out / "predictions"),
                "--trainer.logger.init_args.save_dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["num_objects"] == 2 and 0.0 <= results["global"]["J&F-Mean"] <= 1.0
    for sequence in ("blackswan", "car-shadow"):
        pngs = sorted((out / "predictions" / sequence).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(5)]
        assert Image.open(pngs[0]).size == (854, 480)
    config = (out / "config.yaml").read_text()
    assert "SamPtMethod" in config and "backend: sam2" in config and "tiny_sam2.pt" in config
    protocol = json.dumps(json.loads((out / "protocol.json").read_text()))
    assert "sam2/" in protocol and "tiny_sam2.pt" in protocol
