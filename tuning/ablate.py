"""`python tuning/ablate.py`, `python -m tuning.ablate` and `hyperiqa-ablate`: the ablation of the original solver's defects.

The flags and what they run are in tuning/ablation/experiment.py.
"""

import sys

if __package__ in (None, ""):  # run as a script, Python put tuning/ first on sys.path: its packages
    del sys.path[0]            # must not shadow real ones, and `tuning` comes from the install

from tuning.ablation.experiment import build_parser, cli, main  # noqa: F401  (the command's parts)

if __name__ == "__main__":
    cli()
