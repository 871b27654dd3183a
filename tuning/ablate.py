"""`python tuning/ablate.py` (also `python -m tuning.ablate`, `hyperiqa-ablate`): the ablation of the original solver's defects.

The flags and the work behind them: tuning/ablation/experiment.py.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # `python tuning/ablate.py`: Python put tuning/ first on sys.path, where its
    del sys.path[0]            # packages would shadow real ones; `tuning` comes from the install

from hyperiqa.utils import run_cli
from tuning.ablation.experiment import build_parser, main

__all__ = ["build_parser", "cli", "main"]


def cli() -> None:
    """The console script `hyperiqa-ablate`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
