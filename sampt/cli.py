"""The ``sampt`` command.

``sampt test|predict|validate --config ...`` is a ``LightningCLI`` over the run modules (``VosModule``, ``SamPtVisModule``) and any
``VideoDataModule``; ``sampt eval``, ``sampt eval-vis`` and ``sampt checkpoints`` are plain
commands that need no model. Lightning (and torch) are imported only for the model
subcommands, so the tools and ``sampt --help`` start in a fraction of a second.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

#: The LightningCLI subcommands sampt offers (zero-shot: there is no training, so no ``fit``).
MODEL_SUBCOMMANDS = {
    "test": "run a method on a dataset and score it (J&F for VOS, video AP for VIS)",
    "predict": "run a method and write its predictions only (no ground truth needed)",
    "validate": "like test, on the dataset's validation split",
}

TOOLS = {
    "eval": ("sampt.eval_vos", "evaluate a folder of predicted PNGs against ground truth (DAVIS J&F)"),
    "eval-vis": ("sampt.eval_vis", "score a YouTube-VIS results json (video AP)"),
    "checkpoints": ("sampt.checkpoints", "list, verify or download the registered checkpoints"),
    "compare": ("sampt.compare", "the J&F of several runs side by side (refuses runs on different objects)"),
    "app": ("sampt.app.server", "a local web page: click points on a clip, propagate, correct, export"),
}


def main(argv: Optional[Sequence[str]] = None) -> None:
    from sampt.errors import SamptError

    explicit_args = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _main(argv, explicit_args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as command-line tools do.
        sys.stderr.close()
        raise SystemExit(1) from None
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


def usage() -> str:
    """``sampt --help``: every subcommand sampt offers, with one line each."""
    lines = ["usage: sampt {" + ",".join(MODEL_SUBCOMMANDS) + "} --config CONFIG [...]",
             "       sampt {" + ",".join(TOOLS) + "} [...]", "", "model subcommands (Lightning):"]
    lines += [f"  {name:12s} {text}" for name, text in MODEL_SUBCOMMANDS.items()]
    lines += ["", "tools (no model needed):"]
    lines += [f"  {name:12s} {text}" for name, (_, text) in TOOLS.items()]
    lines += ["", "Run `sampt test --help` for a model subcommand's options, `sampt eval --help` for a tool's."]
    return "\n".join(lines)


def _main(argv: list[str], explicit_args: bool) -> None:
    if argv and argv[0] in TOOLS:
        module_name, _ = TOOLS[argv[0]]
        module = __import__(module_name, fromlist=["main"])
        result = module.main(argv[1:])
        raise SystemExit(result if isinstance(result, int) else 0)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] not in MODEL_SUBCOMMANDS and not argv[0].startswith("-"):
        valid = ", ".join([*MODEL_SUBCOMMANDS, *TOOLS])
        print(f"sampt: error: unknown subcommand {argv[0]!r}; valid subcommands: {valid}", file=sys.stderr)
        raise SystemExit(2)
    _run_lightning_cli(argv, explicit_args)


def _run_lightning_cli(argv: list[str], explicit_args: bool) -> None:
    from sampt.lightning_cli import run_lightning_cli

    run_lightning_cli(argv if explicit_args else None)


if __name__ == "__main__":
    main()
