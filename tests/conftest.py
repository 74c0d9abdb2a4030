"""Shared fixtures: paths to ../shared, the tiny SAM, and DAVIS-layout copies of the sample."""
from __future__ import annotations

import os
from pathlib import Path

# The reference vectors in ../shared were computed with MKL's AVX2 kernels. On an AVX-512 CPU
# MKL sums in another order, which moves SuperGlue's sharpened matching scores by up to 1.3e-3
# (their stated tolerance is 1e-3). MKL reads this once, so it is set before torch loads; a
# value the caller exports wins.
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX2")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAMPT_SHARED", REPO.parent / "shared"))
VECTORS = SHARED / "vectors"
DAVIS_SAMPLE = SHARED / "data" / "davis-sample"
TINY_SAM = VECTORS / "sam-prompting" / "tiny_sam_vit.pt"


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # CI has 2 cores; tests are small, and oversubscription only slows them down. Under
    # pytest-xdist (the README's command runs 2 workers) each worker takes one core.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="module")
def two_threads():
    """Two torch threads for a module whose reference vectors hold only at that setting: the
    thread count changes float summation order, and one thread moves SuperGlue's matching
    scores by 1.1e-3 (tolerance 1e-3) and CoTracker3's resized input sum beyond 1e-12.
    Use as ``pytestmark = pytest.mark.usefixtures("two_threads")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sam():
    from sampt.sam.backends import build_sam

    return build_sam("custom", checkpoint_path=str(TINY_SAM))


@pytest.fixture(scope="session")
def davis2017_sample(tmp_path_factory) -> Path:
    """The shared DAVIS sample laid out as a DAVIS 2017 tree (first 5 frames)."""
    from sampt.datamodules.dummy_davis import convert_davis_sample

    root = tmp_path_factory.mktemp("davis2017")
    convert_davis_sample(DAVIS_SAMPLE, root, layout="2017", max_frames=5)
    return root


@pytest.fixture(scope="session")
def davis2016_sample(tmp_path_factory) -> Path:
    """The shared DAVIS sample laid out as the DAVIS 2016 release (first 5 frames)."""
    from sampt.datamodules.dummy_davis import convert_davis_sample

    root = tmp_path_factory.mktemp("davis2016")
    convert_davis_sample(DAVIS_SAMPLE, root, layout="2016", max_frames=5)
    return root


def run_sam_pt_with_tracker(davis_root: Path, out: Path, tracker_config: str, tracker_class: str,
                            *overrides: str, longest_size: int = 128) -> Path:
    """`sampt test` on one video of a D17 tree with the tiny SAM and ``configs/tracker/<tracker_config>``,
    then the checks every tracker's end-to-end run shares: J and F in [0, 1] in both official
    tables, one palette PNG per frame at the frame size, and ``tracker_class`` in the saved config.
    Run from the repository root (configs use paths relative to it)."""
    from PIL import Image

    from sampt.cli import main as sampt_main

    sampt_main(["test", "--config", "configs/d17.yaml", "--config", "configs/test/tiny_sam.yaml",
                "--config", "configs/test/tiny.yaml", "--config", f"configs/tracker/{tracker_config}",
                *overrides,
                "--data.init_args.root", str(davis_root), "--data.init_args.longest_size", str(longest_size),
                "--data.init_args.max_videos", "1",
                "--model.init_args.output_dir", str(out / "predictions"),
                "--trainer.logger.init_args.save_dir", str(out)])
    global_header, global_values = (out / "global_results-val.csv").read_text().strip().splitlines()
    assert global_header.split(",")[0] == "J&F-Mean" and 0.0 <= float(global_values.split(",")[0]) <= 1.0
    header, *rows = (out / "per-sequence_results-val.csv").read_text().strip().splitlines()
    assert header.split(",") == ["Sequence", "J-Mean", "F-Mean"] and len(rows) >= 1
    for row in rows:
        assert all(0.0 <= float(v) <= 1.0 for v in row.split(",")[1:])
    sequence = rows[0].split(",")[0].rsplit("_", 1)[0]
    frames = sorted((davis_root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))
    pngs = sorted((out / "predictions" / sequence).glob("*.png"))
    assert len(frames) == 5 and [p.stem for p in pngs] == [f.stem for f in frames]
    first = Image.open(pngs[0])
    assert first.mode == "P" and first.size == Image.open(frames[0]).size
    assert tracker_class in (out / "config.yaml").read_text()
    return out
