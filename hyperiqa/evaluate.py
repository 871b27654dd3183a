"""Re-evaluate a checkpoint: python -m hyperiqa.evaluate --checkpoint DIR [--split test] [--set k=v ...]
or on another dataset:      python -m hyperiqa.evaluate --checkpoint DIR --dataset NAME --data-root D

Without --dataset: the dataset and split recorded beside the weights (config.yaml, split.csv). With
--dataset: every image of that dataset, with the checkpoint's patch size, normalisation, crops and
resize rule (the target dataset's default rule if the checkpoint has none). Prints image-level srcc,
plcc, plcc_logistic (PLCC after the 4-parameter logistic mapping), krcc and rmse; rmse is left out
when the target's labels are on another scale than the checkpoint's training labels. With --json the
last line of stdout is one JSON object (undefined metrics are null). --predictions FILE.csv writes
each image's score beside its label.
"""

from __future__ import annotations

import argparse
import csv
import io
import json

from hyperiqa.config import parse_assignments
from hyperiqa.data.datasets import DATASETS, DatasetError, parse_options
from hyperiqa.evaluation import score_checkpoint
from hyperiqa.inference import EVAL_SPLITS
from hyperiqa.text import fmt
from hyperiqa.utils import UserError, atomic_write_text, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperiqa.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder written by hyperiqa.train (e.g. runs/X/best)")
    p.add_argument("--dataset", metavar="NAME",
                   help=f"score every image of this dataset instead ({', '.join(DATASETS)})")
    p.add_argument("--data-root", metavar="DIR", help="the folder of --dataset")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option of --dataset, e.g. --option csv=labels.csv (repeatable)")
    p.add_argument("--split", choices=EVAL_SPLITS,
                   help="without --dataset: which images of the saved split to score (default test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data_root=/data/koniq --set device=cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto); the device the "
                   "checkpoint was trained on does not matter")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--predictions", metavar="CSV", help="also write each image's score: CSV path,prediction,label")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset is None and (args.data_root or args.option):
        raise UserError("--data-root and --option describe the dataset of --dataset NAME; without --dataset "
                        "the checkpoint's own dataset and split are scored")
    if args.dataset is not None and args.split not in (None, "all"):
        raise UserError(f"--split {args.split}: with --dataset every image of {args.dataset} is scored; "
                        "drop --split")
    options, overrides = parse_options(args.option), parse_assignments(args.overrides)
    try:
        scores = score_checkpoint(args.checkpoint, args.dataset, args.data_root, split=args.split,
                                  options=options, device=args.device, overrides=overrides,
                                  log=lambda msg: print(msg, flush=True))
    except DatasetError as exc:
        if args.dataset is None:
            raise
        flags = f"--dataset {args.dataset}" + (f" --data-root {args.data_root}" if args.data_root else "")
        raise UserError(f"{flags}: {exc}") from None
    result = scores.metrics()
    if args.predictions:
        write_predictions(args.predictions, scores)
    for note in scores.notes:
        print(note)
    if args.json:
        print(json.dumps(result))
    else:
        values = "  ".join(f"{k} {fmt(result[k])}" for k in ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")
                           if k in result)
        print(f"{result['dataset']} {result['split']} ({result['n_images']} images): {values}")
    return 0


def write_predictions(path, scores) -> None:
    """CSV path,prediction,label: one row per scored image, in scoring order (the model's scale, higher
    is better; labels as the dataset's reader gives them for training)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "prediction", "label"])
    writer.writerows((p, repr(float(v)), repr(float(y))) for p, v, y in zip(scores.paths, scores.predictions,
                                                                          scores.labels))
    atomic_write_text(path, text.getvalue())


if __name__ == "__main__":
    run_cli(main)
