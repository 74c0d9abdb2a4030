"""The ``sampt`` command.

``sampt test|predict|validate --config ...`` is a ``LightningCLI`` over ``SamPtModule`` and any
``VideoDataModule``; ``sampt eval``, ``sampt eval-vis`` and ``sampt checkpoints`` are plain
commands that need no model.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

TOOLS = {
    "eval": ("sampt.eval_vos", "evaluate a folder of predicted PNGs against ground truth (DAVIS J&F)"),
    "eval-vis": ("sampt.eval_vis", "score a YouTube-VIS results json (video AP)"),
    "checkpoints": ("sampt.checkpoints", "list, verify or download the registered checkpoints"),
}


class SaveConfigNextToResults(SaveConfigCallback):
    """Saves the resolved config in the log directory *and* next to the predictions."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        from sampt.writers import save_config

        text = self.parser.dump(self.config, skip_none=False)
        output_dir = getattr(pl_module, "output_dir", None)
        if output_dir is not None and trainer.is_global_zero:
            save_config(Path(output_dir).parent / "config.yaml", text)


class SamptCLI(LightningCLI):
    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The module writes every prediction to disk; Lightning's default would also keep
            # them all (every video's masks) in memory until the run ends.
            parser.set_defaults(return_predictions=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One seed for everything: Lightning's global seed also seeds SAM-PT's per-video sampling.
        parser.link_arguments("seed_everything", "model.init_args.sam_pt.seed",
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    from sampt.errors import SamptError

    explicit_args = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _main(argv, explicit_args)
    except Exception as error:
        # A user's mistake (missing checkpoint, bad dataset layout, malformed file): the message
        # says what and where; a traceback would only hide it. jsonargparse re-raises errors of
        # the config's classes as a ValueError ``from`` the original: follow explicit causes.
        user_error = _sampt_error_in_chain(error, SamptError)
        if user_error is None:
            raise
        print(f"sampt: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def _sampt_error_in_chain(error: Optional[BaseException], kind: type) -> Optional[BaseException]:
    """The first ``kind`` error among ``error`` and its ``__cause__`` chain, or None (only explicit
    causes: a bug raised while handling a user error must still show its traceback)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


def _main(argv: list[str], explicit_args: bool) -> None:
    from sampt.datamodules.base import VideoDataModule
    from sampt.lightning import SamPtModule

    if argv and argv[0] in TOOLS:
        module_name, _ = TOOLS[argv[0]]
        module = __import__(module_name, fromlist=["main"])
        result = module.main(argv[1:])
        raise SystemExit(result if isinstance(result, int) else 0)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print("usage: sampt {test,predict,validate} --config CONFIG [...]\n"
              "       sampt {" + ",".join(TOOLS) + "} [...]\n")
        for name, (_, text) in TOOLS.items():
            print(f"  {name:12s} {text}")
        print("\nRun `sampt test --help` for the Lightning subcommands' options.")
    SamptCLI(
        SamPtModule,
        VideoDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=_trainer_defaults(),
        save_config_callback=SaveConfigNextToResults,
        save_config_kwargs={"overwrite": True},
        args=argv if explicit_args else None,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
