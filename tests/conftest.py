"""Shared fixtures: paths to ../shared, the tiny SAM, and DAVIS-layout copies of the sample."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAMPT_SHARED", REPO.parent / "shared"))
VECTORS = SHARED / "vectors"
DAVIS_SAMPLE = SHARED / "data" / "davis-sample"
TINY_SAM = VECTORS / "sam-prompting" / "tiny_sam_vit.pt"


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # CI has 2 cores; tests are small, and oversubscription only slows them down.
    torch.set_num_threads(2)


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
