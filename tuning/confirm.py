"""`python tuning/confirm.py` (also `python -m tuning.confirm`, `hyperiqa-confirm`): the confirmation of a search's winner on fresh splits.

The flags and the work behind them: tuning/confirmation/experiment.py.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # `python tuning/confirm.py`: Python put tuning/ first on sys.path, where its
    del sys.path[0]            # packages would shadow real ones; `tuning` comes from the install

from hyperiqa.utils import run_cli
from tuning.confirmation.experiment import build_parser, main

__all__ = ["build_parser", "cli", "main"]


def cli() -> None:
    """The console script `hyperiqa-confirm`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
