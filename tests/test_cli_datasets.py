"""`sampt predict` / `sampt test` end to end on YouTube-VOS 2018, MOSE and the bundled demo.

Every run goes through the CLI in-process (``sampt.cli.main``) with the shipped configs, the
tiny random SAM of ../shared/vectors/sam-prompting and a weight-free tracker, on tiny synthetic
trees (48x64 frames, at most 8 frames): what is checked is the plumbing (which files, which
names, which palette, what the zip holds, resuming), not segmentation quality.
"""
from __future__ import annotations

import io
import json
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageSequence

from conftest import REPO, TINY_SAM
from sampt.cli import main as sampt_main
from sampt.datamodules.dummy_ytvos import synthetic_video, write_mose, write_youtube_vos
from sampt.video import davis_palette

TINY = ["--config", "configs/test/tiny_sam.yaml", "--config", "configs/test/tiny.yaml",
        "--model.init_args.method.init_args.sam.checkpoint_path", str(TINY_SAM)]
HEIGHT, WIDTH = 48, 64


def custom_palette() -> list[int]:
    """A 256-colour palette unlike DAVIS's, so that "palette preserved" is a real check."""
    colours = np.random.default_rng(7).integers(0, 256, size=(256, 3))
    colours[0] = (10, 20, 30)
    return colours.astype(np.uint8).reshape(-1).tolist()


PALETTE = custom_palette()
assert PALETTE != davis_palette()


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # The configs use paths relative to the repository root, as a user runs them.
    monkeypatch.chdir(REPO)


def run_cli(subcommand: str, config: str, out: Path, *extra: str, output_name: str = "predictions",
            tiny: bool = True) -> None:
    sampt_main([subcommand, "--config", config, *(TINY if tiny else []),
                "--model.init_args.output_dir", str(out / output_name),
                "--trainer.logger.init_args.save_dir", str(out), *extra])


def png_stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png"))


def read_png(source) -> tuple[np.ndarray, str, list[int]]:
    image = Image.open(source)
    return np.array(image), image.mode, (image.getpalette() or [])[:768]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.png"))}


# ------------------------------------------------------------------------------ YouTube-VOS 2018

@pytest.fixture(scope="module")
def y18_tree(tmp_path_factory):
    """vidA: frames named 00003..00008 (not zero-based), ids 2 and 7 (non-contiguous), 7 appears
    on frame 5 (00008); vidB: 5 frames, id 4 only. Annotated every 5th frame, custom palette."""
    root = tmp_path_factory.mktemp("y18")
    frames_a, masks_a = synthetic_video(6, HEIGHT, WIDTH, appear={2: 0, 7: 5}, seed=1)
    frames_b, masks_b = synthetic_video(5, HEIGHT, WIDTH, appear={4: 0}, seed=2)
    videos = {
        "vidA": {"frames": frames_a, "masks": masks_a, "frame_names": [f"{3 + t:05d}" for t in range(6)]},
        "vidB": {"frames": frames_b, "masks": masks_b},
    }
    write_youtube_vos(root, videos, palette=PALETTE)
    return root, videos


@pytest.fixture(scope="module")
def y18_run(y18_tree, tmp_path_factory):
    """One `sampt predict --config configs/y18.yaml` run (shared by the tests that only read it)."""
    root, _ = y18_tree
    out = tmp_path_factory.mktemp("y18_run")
    run_cli("predict", "configs/y18.yaml", out, "--data.init_args.root", str(root),
            "--data.init_args.longest_size", "64", output_name="Annotations")
    return out


def meta_frames(root: Path) -> dict[str, list[str]]:
    meta = json.loads((root / "valid" / "meta.json").read_text())
    return {video: sorted({f for entry in info["objects"].values() for f in entry["frames"]})
            for video, info in meta["videos"].items()}


def test_y18_predict_writes_the_meta_json_frames_with_the_palette(y18_tree, y18_run):
    root, videos = y18_tree
    listed = meta_frames(root)
    assert listed["vidA"] == ["00003", "00008"]  # the fixture is what the test thinks it is
    for video, frames in listed.items():
        assert png_stems(y18_run / "Annotations" / video) == frames
    for png in (y18_run / "Annotations").rglob("*.png"):
        values, mode, palette = read_png(png)
        assert mode == "P" and palette == PALETTE
        assert values.shape == (HEIGHT, WIDTH)
    masks = videos["vidA"]["masks"]
    first, later = (read_png(y18_run / "Annotations/vidA" / f"{n}.png")[0] for n in ("00003", "00008"))
    assert set(np.unique(first).tolist()) <= {0, 2} and set(np.unique(later).tolist()) <= {0, 2, 7}
    # Each object's query frame carries its query mask, under its original id; 7 is background before.
    assert np.array_equal(first == 2, masks[0] == 2)
    assert not (first == 7).any()
    assert np.array_equal(later == 7, masks[5] == 7)
    assert (y18_run / "config.yaml").is_file()
    assert {p.stem for p in (y18_run / "trajectories").glob("*.npz")} == {"vidA", "vidB"}


def test_y18_submission_zip_has_the_server_layout(y18_tree, y18_run):
    root, _ = y18_tree
    expected = sorted(f"Annotations/{video}/{frame}.png" for video, frames in meta_frames(root).items()
                      for frame in frames)
    with zipfile.ZipFile(y18_run / "submission.zip") as archive:
        assert sorted(archive.namelist()) == expected
        for name in expected:
            values, mode, palette = read_png(io.BytesIO(archive.read(name)))
            assert mode == "P" and palette == PALETTE
            assert np.array_equal(values, read_png(y18_run / name)[0])


def test_y18_save_all_writes_every_frame(y18_tree, tmp_path):
    root, videos = y18_tree
    run_cli("predict", "configs/y18.yaml", tmp_path, "--data.init_args.root", str(root),
            "--data.init_args.longest_size", "64", "--data.init_args.save_all", "true",
            "--data.init_args.vid_ids", "[vidA]", output_name="Annotations")
    names = videos["vidA"]["frame_names"]
    assert png_stems(tmp_path / "Annotations" / "vidA") == names
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert sorted(archive.namelist()) == [f"Annotations/vidA/{n}.png" for n in names]
    # Frames between annotations are predicted too; object 7 only from its query frame on.
    values = np.stack([read_png(tmp_path / "Annotations/vidA" / f"{n}.png")[0] for n in names])
    assert not (values[:5] == 7).any() and (values[5] == 7).any()


def test_y18_rerun_skips_complete_videos_and_recomputes_a_damaged_one(y18_tree, y18_run, tmp_path):
    root, _ = y18_tree
    out = tmp_path / "run"
    shutil.copytree(y18_run, out)  # keeps the mtimes
    args = ("--data.init_args.root", str(root), "--data.init_args.longest_size", "64")
    before = mtimes(out / "Annotations")
    run_cli("predict", "configs/y18.yaml", out, *args, output_name="Annotations")
    assert mtimes(out / "Annotations") == before  # nothing recomputed

    damaged = out / "Annotations/vidA/00008.png"
    damaged.unlink()
    run_cli("predict", "configs/y18.yaml", out, *args, output_name="Annotations")
    after = mtimes(out / "Annotations")
    assert damaged.is_file()
    assert after["vidA/00003.png"] != before["vidA/00003.png"]  # the whole video was redone
    assert {k: v for k, v in after.items() if k.startswith("vidB")} == \
        {k: v for k, v in before.items() if k.startswith("vidB")}
    with zipfile.ZipFile(out / "submission.zip") as archive:
        assert "Annotations/vidA/00008.png" in archive.namelist()


def test_y18_also_runs_with_sampt_test_without_ground_truth(y18_tree, tmp_path):
    """`sampt test` on a set without ground truth: the same PNGs and zip, no J&F table."""
    root, _ = y18_tree
    config = tmp_path / "y18_test.yaml"
    settings = yaml.safe_load((REPO / "configs/y18.yaml").read_text())
    settings.pop("return_predictions", None)  # a `predict`-only option
    config.write_text(yaml.safe_dump(settings))
    run_cli("test", str(config), tmp_path, "--data.init_args.root", str(root), "--data.init_args.longest_size", "64",
            "--data.init_args.vid_ids", "[vidB]", output_name="Annotations")
    assert png_stems(tmp_path / "Annotations/vidB") == meta_frames(root)["vidB"]
    assert (tmp_path / "submission.zip").is_file()
    assert not list(tmp_path.glob("global_results-*.csv"))


# ------------------------------------------------------------------------------------------ MOSE

def mose_videos() -> dict[str, dict]:
    """One video: frames named 00010..00014, ids 3 and 6, object 6 appears on frame 2."""
    frames, masks = synthetic_video(5, HEIGHT, WIDTH, appear={3: 0, 6: 2}, seed=3)
    return {"clip": {"frames": frames, "masks": masks, "frame_names": [f"{10 + t:05d}" for t in range(5)]}}


def test_mose_valid_predict_writes_every_frame_and_the_zip(tmp_path):
    videos = mose_videos()
    root = write_mose(tmp_path / "mose", "valid", videos, palette=PALETTE)
    assert png_stems(root / "valid/Annotations/clip") == ["00010", "00012"]  # query masks only
    out = tmp_path / "run"
    run_cli("predict", "configs/mose.yaml", out, "--data.init_args.root", str(root),
            "--data.init_args.longest_size", "64", output_name="Annotations")
    names = videos["clip"]["frame_names"]
    assert png_stems(out / "Annotations/clip") == names
    values = np.stack([read_png(out / "Annotations/clip" / f"{n}.png")[0] for n in names])
    assert not (values[:2] == 6).any()
    assert np.array_equal(values[2] == 6, videos["clip"]["masks"][2] == 6)
    with zipfile.ZipFile(out / "submission.zip") as archive:
        assert sorted(archive.namelist()) == [f"Annotations/clip/{n}.png" for n in names]
        for name in archive.namelist():
            _, mode, palette = read_png(io.BytesIO(archive.read(name)))
            assert mode == "P" and palette == PALETTE


def test_mose_train_test_computes_jf_like_sampt_eval(tmp_path):
    from sampt.eval_vos import evaluate_folders

    root = write_mose(tmp_path / "mose", "train", mose_videos(), palette=PALETTE)
    out = tmp_path / "run"
    run_cli("test", "configs/mose_train.yaml", out, "--data.init_args.root", str(root),
            "--data.init_args.longest_size", "64")
    header, values = (out / "global_results-train.csv").read_text().strip().splitlines()
    assert header.startswith("J&F-Mean,J-Mean")
    table = json.loads((out / "results.json").read_text())["global"]  # full precision
    assert 0.0 <= table["J&F-Mean"] <= 1.0 and float(values.split(",")[0]) == pytest.approx(table["J&F-Mean"], abs=5e-4)
    rows = (out / "per-sequence_results-train.csv").read_text().strip().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean"
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["clip_3", "clip_6"]
    assert json.loads((out / "protocol.json").read_text())["protocol"]["skip_first_and_last"] is True
    # The module's J&F is the J&F of the PNGs it wrote, scored by `sampt eval` against the annotations.
    reference, _ = evaluate_folders(root / "train/Annotations", out / "predictions", out_dir=tmp_path / "eval")
    for column in ("J&F-Mean", "J-Mean", "F-Mean"):
        assert table[column] == pytest.approx(reference[column], abs=1e-9)


# ------------------------------------------------------------------------------------------ demo

def test_demo_tiny_writes_masks_overlays_and_trajectories(tmp_path):
    from sampt.datamodules.generic import parse_query_points_file
    from sampt.datamodules.io import longest_side_shape

    sampt_main(["predict", "--config", "configs/demo.yaml", "--config", "configs/demo_tiny.yaml",
                "--model.init_args.method.init_args.sam.checkpoint_path", str(TINY_SAM),
                "--model.init_args.output_dir", str(tmp_path / "predictions"),
                "--trainer.logger.init_args.save_dir", str(tmp_path)])
    clip = REPO / "assets/demo/car-shadow"
    names = sorted(p.stem for p in clip.glob("*.jpg"))
    width, height = Image.open(clip / f"{names[0]}.jpg").size
    assert png_stems(tmp_path / "predictions/car-shadow") == names
    for name in names:
        values, mode, _ = read_png(tmp_path / "predictions/car-shadow" / f"{name}.png")
        assert mode == "P" and values.shape == (height, width) and set(np.unique(values).tolist()) <= {0, 1}
    assert (read_png(tmp_path / "predictions/car-shadow/00000.png")[0] == 1).any()  # SAM's mask from the points

    gif = Image.open(tmp_path / "overlays/car-shadow.gif")
    gif_frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
    assert len(gif_frames) == len(names)
    import av

    with av.open(str(tmp_path / "overlays/car-shadow.mp4")) as container:
        video_frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(video_frames) == len(names)
    # Overlays are at the frame size, not the model's input size (longest side from demo_tiny.yaml);
    # mp4 sides are padded to even numbers.
    longest = yaml.safe_load((REPO / "configs/demo_tiny.yaml").read_text())["data"]["init_args"]["longest_size"]
    assert longest_side_shape(height, width, longest) != (height, width)
    assert video_frames[0].shape == (height + height % 2, width + width % 2, 3)
    assert gif_frames[0].size == (width, height)

    num_positive, objects = parse_query_points_file(REPO / "assets/demo/query_points.txt")
    given = objects[0][1]
    tracks = np.load(tmp_path / "trajectories/car-shadow.npz")
    trajectories, visible = tracks["trajectories"], tracks["visibilities"]
    assert trajectories.shape == (len(names), 1, len(given), 2) and visible.dtype == bool
    assert tracks["object_ids"].tolist() == [1]
    # The given points are the tracked points (in frame pixels, up to the resize round trip).
    np.testing.assert_allclose(trajectories[0, 0], given, atol=0.5)
    # The car drives left: Lucas-Kanade follows the positive points on it.
    positive = trajectories[:, 0, :num_positive, 0]
    assert np.median(positive[-1] - positive[0]) < -5

    header, *rows = (tmp_path / "trajectories/car-shadow.csv").read_text().strip().splitlines()
    assert header.split(",")[:6] == ["frame", "object", "point", "x", "y", "visible"]
    assert len(rows) == trajectories.shape[0] * trajectories.shape[2]
    last = rows[-1].split(",")
    t, point = int(last[0]), int(last[2])
    assert float(last[3]) == pytest.approx(trajectories[t, 0, point, 0], abs=1e-3)
    assert int(last[5]) == int(visible[t, 0, point])


def test_demo_tiny_uses_the_test_sam(tmp_path):
    """configs/demo_tiny.yaml repeats configs/test/tiny_sam.yaml's SAM block: they must agree."""
    demo_tiny = yaml.safe_load((REPO / "configs/demo_tiny.yaml").read_text())["model"]["init_args"]["method"]["init_args"]["sam"]
    tiny_sam = yaml.safe_load((REPO / "configs/test/tiny_sam.yaml").read_text())["model"]["method"]["init_args"]["sam"]
    assert demo_tiny == tiny_sam


def test_demo_without_checkpoints_offline_stops_with_the_checkpoint_error(tmp_path, monkeypatch, capsys):
    import sampt.checkpoints

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(sampt.checkpoints, "_urlopen", offline)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("predict", "configs/demo.yaml", tmp_path / "run", tiny=False)
    assert exit_info.value.code not in (0, None)
    stderr = capsys.readouterr().err
    registry = sampt.checkpoints.CHECKPOINTS
    checkpoint = registry["mobile_sam_vit_t"]  # the light demo needs this one file only
    assert "this run needs 1 checkpoint(s)" in stderr and "41 MB  to download" in stderr
    assert f"checkpoint '{checkpoint.name}'" in stderr
    assert checkpoint.url in stderr and checkpoint.filename in stderr
    assert str(tmp_path / "empty_cache") in stderr  # where to put it
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "predictions").exists()


def test_original_demo_lists_both_heavy_checkpoints_offline(tmp_path, monkeypatch, capsys):
    import sampt.checkpoints

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(sampt.checkpoints, "_urlopen", offline)
    with pytest.raises(SystemExit):
        run_cli("predict", "configs/demo.yaml", tmp_path / "run", "--config", "configs/demo_original.yaml",
                tiny=False)
    stderr = capsys.readouterr().err
    assert "this run needs 2 checkpoint(s)" in stderr and "about 2668 MB in all" in stderr
    for name in ("samhq_vit_h", "cotracker_stride_4_wind_8"):
        entry = sampt.checkpoints.CHECKPOINTS[name]
        assert f"curl -L -o {tmp_path / 'empty_cache' / entry.filename} {entry.url}" in stderr
