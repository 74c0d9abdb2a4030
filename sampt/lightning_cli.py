"""The Lightning half of the ``sampt`` command: ``sampt test|predict|validate --config ...``.

Imported by :mod:`sampt.cli` only for those subcommands, so that the tools start without
Lightning.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback


class SaveConfigNextToResults(SaveConfigCallback):
    """Saves the resolved config in the log directory *and* next to the predictions."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        from sampt.writers import save_config

        text = self.parser.dump(self.config, skip_unset=False) if _dump_has_skip_unset(self.parser) \
            else self.parser.dump(self.config, skip_none=False)
        output_dir = getattr(pl_module, "output_dir", None)
        if output_dir is not None and trainer.is_global_zero:
            save_config(Path(output_dir).parent / "config.yaml", text)


def _dump_has_skip_unset(parser) -> bool:
    import inspect

    return "skip_unset" in inspect.signature(parser.dump).parameters


class SamptCLI(LightningCLI):
    """LightningCLI without ``fit`` (sampt is zero-shot) and with sampt's parser defaults."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "fit"}

    def _ensure_checkpoints(self) -> None:
        # Before the trainer runs: a run that cannot start (missing checkpoints, offline) must not
        # leave a new, empty TensorBoard version folder behind.
        ensure = getattr(self.model, "ensure_checkpoints", None)
        if ensure is not None:
            ensure()

    def _report_outputs(self) -> None:
        # After Lightning's own results table: the run's last line says where its outputs are.
        report = getattr(self.model, "report_outputs", None)
        if report is not None:
            report()

    # LightningCLI calls before_<subcommand>() / after_<subcommand>() around running it.
    before_test = before_predict = before_validate = _ensure_checkpoints
    after_test = after_predict = after_validate = _report_outputs

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # jsonargparse reports an unknown tracker class_path as "Expected a dot import path
        # string"; the user needs the names that exist, so they are added to its message.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_arguments(parser, args)
        except SystemExit:
            message = captured.getvalue()
            sys.stderr.write(message)
            if 'Parser key "tracker"' in message:
                from sampt.trackers import tracker_classes

                names = ", ".join(f"{name} ({cls.__module__})" for name, cls in tracker_classes().items())
                sys.stderr.write(f"sampt: point trackers (tracker.class_path, short or full): {names}\n")
            raise
        sys.stderr.write(captured.getvalue())

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The module writes every prediction to disk; Lightning's default would also keep
            # them all (every video's masks) in memory until the run ends.
            parser.set_defaults(return_predictions=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One seed for everything: Lightning's global seed also seeds SAM-PT's per-video sampling.
        parser.link_arguments("seed_everything", "model.init_args.method.init_args.sam_pt.seed",
                              compute_fn=lambda seed: 0 if seed in (None, True, False) else int(seed))


def _trainer_defaults() -> dict:
    return {
        # Videos are split across ranks by the data modules' own sampler, without padding.
        "use_distributed_sampler": False,
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "outputs", "name": "sampt"}},
        "devices": 1,
        "enable_checkpointing": False,
    }


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def _quiet_lightning() -> None:
    """Silence what Lightning prints on every run that a user can do nothing about: its own calls
    of deprecated jsonargparse and torch APIs, and its product tips."""
    # jsonargparse's documented switch for deprecation warnings.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdvertisements())


def run_lightning_cli(args: Optional[Sequence[str]] = None) -> None:
    """Parse ``args`` (None: ``sys.argv``) and run the model subcommand they name."""
    build_lightning_cli(args)


def build_lightning_cli(args: Optional[Sequence[str]] = None, run: bool = True) -> "SamptCLI":
    """The CLI over ``args``; with ``run=False`` it only parses and instantiates (no subcommand
    in ``args`` then), which is how tests check that building a config fetches nothing."""
    from sampt.datamodules.base import VideoDataModule
    from sampt.lightning_base import VideoModule

    _quiet_lightning()

    return SamptCLI(
        VideoModule,
        VideoDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=_trainer_defaults(),
        save_config_callback=SaveConfigNextToResults,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        run=run,
    )
