"""The `sampt` command's own surface: its help, its subcommands and what it imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from sampt.cli import MODEL_SUBCOMMANDS, TOOLS, main as sampt_main


def test_help_lists_every_subcommand_and_no_fit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sampt_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in [*MODEL_SUBCOMMANDS, *TOOLS]:
        assert f"\n  {name} " in text
    assert "fit" not in text.split()


def test_unknown_and_fit_subcommands_are_errors_listing_valid_ones(capsys):
    for name in ("fit", "tset"):
        with pytest.raises(SystemExit) as exit_info:
            sampt_main([name])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"unknown subcommand {name!r}" in err and "test, predict, validate, eval" in err


def _modules_after(args: list[str]) -> set[str]:
    """Run ``sampt <args>`` in a fresh interpreter; the heavy top-level packages it imported."""
    code = (
        "import sys\n"
        "from sampt.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES:', ' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torch', 'torchvision'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES:"), result.stdout
    return set(last.split()[1:])


def test_tools_start_without_lightning():
    assert _modules_after(["--help"]) == set()
    assert _modules_after(["checkpoints"]) == set()  # neither torch nor Lightning to list a table
    assert "lightning" not in _modules_after(["eval", "--help"])
