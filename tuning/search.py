"""`python tuning/search.py` (also `python -m tuning.search`, `hyperiqa-search`): the search for HyperIQA on Ray Tune (the demo when run bare).

The flags and the work behind them: tuning/sweep/experiment.py.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # `python tuning/search.py`: Python put tuning/ first on sys.path, where its
    del sys.path[0]            # packages would shadow real ones; `tuning` comes from the install

from hyperiqa.utils import run_cli
from tuning.sweep.experiment import build_parser, main

__all__ = ["build_parser", "cli", "main"]


def cli() -> None:
    """The console script `hyperiqa-search`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
