"""`python tuning/export.py EXPERIMENT_PATH` (also `python -m tuning.export`, `hyperiqa-export`): re-export a search.

What the folder holds and how it is written: tuning/sweep/export_folder.py.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script, Python put tuning/ on sys.path, where its packages could
    for entry in [p for p in sys.path if os.path.abspath(p) == os.path.dirname(os.path.abspath(__file__))]:
        sys.path.remove(entry)  # shadow real ones: off it goes (`tuning` itself comes from the install)

import argparse

from hyperiqa.convert import FILES as FORMAT_FILES
from hyperiqa.utils import run_cli
from tuning.engine.options import absolute
from tuning.sweep import crosseval, export_folder
from tuning.sweep import trials_report as report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tuning/export.py", description=export_folder.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment_path", help="the experiment folder: --storage-path/--name of the search")
    parser.add_argument("--out", help="export folder (default: the search's --export-dir)")
    parser.add_argument("--format", action="append", default=[], choices=list(FORMAT_FILES), dest="formats",
                        help="also write the best checkpoint in this format (repeatable; README \"The export folder\")")
    parser.add_argument("--cross", action="append", metavar="NAME=ROOT",
                        help="score the exported checkpoint on every image of this dataset (repeatable; replaces "
                             "the search's own --cross for this export)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cross = crosseval.parse(args.cross) if args.cross else None
    result = export_folder.export_experiment(absolute(args.experiment_path), args.out, cross=cross,
                                             formats=args.formats)
    print(report.text_table(result.table))
    if result.cross:
        print("\n" + crosseval.text(result.cross))
    return 0


def cli() -> None:
    """The console script `hyperiqa-export`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
