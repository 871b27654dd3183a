"""`python tuning/confirm.py`, `python -m tuning.confirm` and `hyperiqa-confirm`: the confirmation of a search's winner on fresh splits.

The flags and what they run are in tuning/confirmation/experiment.py.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script, Python put tuning/ on sys.path, where its packages could
    for entry in [p for p in sys.path if os.path.abspath(p) == os.path.dirname(os.path.abspath(__file__))]:
        sys.path.remove(entry)  # shadow real ones: off it goes (`tuning` itself comes from the install)

from tuning.confirmation.experiment import build_parser, cli, main  # noqa: F401  (the command's parts)

if __name__ == "__main__":
    cli()
