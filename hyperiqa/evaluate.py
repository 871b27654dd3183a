"""Re-evaluate a checkpoint: python -m hyperiqa.evaluate --checkpoint DIR [--split test] [--set k=v ...].

Uses the dataset and split recorded beside the weights (config.yaml, split.csv), the same fixed crops
as training (cfg.seed, cfg.test_patches) and prints image-level srcc, plcc, krcc and rmse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperiqa import checkpoint as ckpt
from hyperiqa.config import parse_assignments
from hyperiqa.solver import EVAL_SPLITS
from hyperiqa.utils import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperiqa.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder written by hyperiqa.train (e.g. runs/X/best)")
    p.add_argument("--split", default="test", choices=EVAL_SPLITS, help="which images to score (default test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data_root=/data/koniq --set device=cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto); the device the "
                   "checkpoint was trained on does not matter")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.checkpoint)
    if folder.suffix == ".safetensors":
        folder = folder.parent
    if not (folder / ckpt.CONFIG).is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: expected a checkpoint folder with {ckpt.CONFIG} "
                        "(original-format checkpoints carry no dataset; score images with hyperiqa.predict)")
    model, cfg = ckpt.load_model(folder)
    # This machine's runtime, whatever the checkpoint's trainer used (a GPU share, a CUDA device, threads).
    # Evaluation only: keep training images off the GPU.
    changes = {**cfg.portable().to_dict(), "device": args.device, "device_cache_gb": 0.0}
    if (folder / ckpt.SPLIT).is_file():
        changes.update(split="file", split_file=str((folder / ckpt.SPLIT).resolve()))
    changes.update(parse_assignments(args.overrides))
    cfg = type(cfg).from_dict({**cfg.to_dict(), **changes}, source="--set")
    from hyperiqa.solver import Solver

    solver = Solver(cfg, model=model, log=lambda msg: print(msg, flush=True))
    result = solver.evaluate(args.split)
    if args.json:
        print(json.dumps({"split": args.split, **result}))
    else:
        print(f"{args.split}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
