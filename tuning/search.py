"""`python tuning/search.py`, `python -m tuning.search` and `hyperiqa-search`: the search for HyperIQA on Ray Tune (the demo when run bare).

The flags and what they run are in tuning/sweep/experiment.py.
"""

import sys

if __package__ in (None, ""):  # run as a script, Python put tuning/ first on sys.path: its packages
    del sys.path[0]            # must not shadow real ones, and `tuning` comes from the install

from tuning.sweep.experiment import build_parser, cli, main  # noqa: F401  (the command's parts)

if __name__ == "__main__":
    cli()
