"""Every shipped config parses and builds its model and data module without touching the
checkpoint cache or the network: weights resolve only when a run starts."""
from __future__ import annotations

import pytest

from conftest import REPO

# The demo's variants stack on configs/demo.yaml.
DEMO_VARIANTS = ["demo_tiny.yaml", "demo_original.yaml"]
DATASET_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name not in DEMO_VARIANTS)
TRACKER_CONFIGS = sorted(p.name for p in (REPO / "configs/tracker").glob("*.yaml"))
STACKED = ["sam/" + p.name for p in sorted((REPO / "configs/sam").glob("*.yaml"))] + \
    ["model/" + p.name for p in sorted((REPO / "configs/model").glob("*.yaml"))] + \
    ["tracker/" + name for name in TRACKER_CONFIGS]


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    from sampt import checkpoints

    opened = []

    def no_network(url, *args, **kwargs):
        opened.append(url)
        raise AssertionError(f"building a config opened {url}")

    cache = tmp_path / "cache"
    monkeypatch.setenv("SAMPT_CACHE", str(cache))
    monkeypatch.setattr(checkpoints, "_urlopen", no_network)
    monkeypatch.chdir(REPO)
    yield cache
    assert opened == [] and not cache.exists()


def _build(*configs: str):
    from sampt.lightning_cli import build_lightning_cli

    args = [item for config in configs for item in ("--config", f"configs/{config}")]
    return build_lightning_cli(args + ["--trainer.accelerator", "cpu"], run=False)


@pytest.mark.parametrize("config", DATASET_CONFIGS)
def test_dataset_configs_build_without_fetching(config, offline_empty_cache):
    cli = _build(config)
    assert cli.model.method.sam is None  # SAM is built in prepare(), when a run starts


def test_demo_variants_build_without_fetching(offline_empty_cache):
    assert _build("demo.yaml", "demo_original.yaml").model.method.sam_config.checkpoint == "samhq_vit_h"


@pytest.mark.parametrize("config", STACKED)
def test_stacked_configs_build_without_fetching(config, offline_empty_cache):
    cli = _build("d17.yaml", config)
    if config.startswith("tracker/"):
        assert cli.model.method.tracker.weight_files() == {}  # nothing loaded yet


def test_an_unknown_tracker_class_lists_the_trackers(offline_empty_cache, capsys):
    from sampt.cli import main as sampt_main

    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["test", "--config", "configs/d17.yaml",
                    "--model.init_args.method.init_args.tracker.class_path", "CoTrackr", "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "CoTrackr" in err and "CoTrackerTracker (sampt.trackers.cotracker)" in err and "TapirTracker" in err
    # The short class name is accepted as it is listed.
    cli = _build("d17.yaml", "tracker/cotracker3.yaml")
    assert type(cli.model.method.tracker).__name__ == "CoTracker3Tracker"
