"""Score images: python -m hyperiqa.predict --checkpoint PATH IMAGE_OR_FOLDER... [--crops N] [--out CSV].

Each image gets N fixed crops (seeded by --seed, the same for an image whatever else is scored) of the
model's patch size; the crop scores are averaged. The model runs as in evaluation (hyperiqa.inference.Scoring:
the checkpoint's amp and channels_last, bf16 autocast on GPUs that compute it natively), so predict and
evaluate give an image the same score from the same crops. Output: CSV `path,score` (higher is better) on stdout
or in --out. Files that are not readable images are named on stderr and skipped; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from hyperiqa import checkpoint as ckpt
from hyperiqa.config import TrainConfig
from hyperiqa.inference import Scoring, crops, load_image
from hyperiqa.utils import UserError, atomic_write_text, run_cli

ORIGINAL_PATCH = 224  # the original HyperIQA's input size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperiqa.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files and/or folders (every file in a folder, sorted, not recursive)")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run's checkpoint folder (e.g. runs/X/best), its model.safetensors, or an original "
                        "HyperIQA .pkl/.pth state dict (ResNet-50, 224x224 crops)")
    p.add_argument("--crops", type=int, default=25, metavar="N", help="crops per image, averaged (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions (default 0)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="crops per forward pass (default 32)")
    p.add_argument("--out", metavar="CSV", help="write the CSV here instead of stdout")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return p


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{item}: no such file or folder")
    if not files:
        raise UserError(f"no files to score in {', '.join(inputs)}")
    return files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.crops < 1 or args.batch_size < 1:
        raise UserError("--crops and --batch-size must be >= 1")
    files = expand_inputs(args.inputs)
    model, cfg = ckpt.load_model(args.checkpoint)
    # An original-format checkpoint has no config: TrainConfig's defaults (amp, channels_last) apply.
    scoring = Scoring.load(model, device=args.device, amp=cfg.amp if cfg else TrainConfig.amp,
                           channels_last=cfg.channels_last if cfg else TrainConfig.channels_last)
    pre = ckpt.read_preprocess(args.checkpoint) or {}
    patch = pre.get("patch_size") or (cfg.patch_size if cfg else ORIGINAL_PATCH)
    short_side, resize_to = pre.get("short_side"), pre.get("resize_to")
    if not pre and cfg:
        short_side, resize_to = cfg.resize_short_side or None, cfg.resize_to
    scored, skipped = [], []
    chunk: list[tuple[Path, np.ndarray]] = []

    def flush():
        if chunk:
            values = scoring.arrays([c for _, c in chunk], mean=model.input_mean, std=model.input_std,
                                    batch_size=args.batch_size)
            scored.extend((str(p), float(v)) for (p, _), v in zip(chunk, values))
            chunk.clear()

    for path in files:
        try:
            image = load_image(path, patch=patch, short_side=short_side, resize_to=resize_to)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            print(f"warning: skipped {path}: not a readable image ({type(exc).__name__}: {exc})", file=sys.stderr)
            skipped.append(path)
            continue
        chunk.append((path, crops(image, patch=patch, n=args.crops, seed=args.seed)))
        if sum(len(c) for _, c in chunk) >= 4 * args.batch_size:  # bound memory on large folders
            flush()
    flush()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "score"])
    writer.writerows((p, f"{s:.6f}") for p, s in scored)
    if args.out:
        atomic_write_text(args.out, text.getvalue())
    else:
        sys.stdout.write(text.getvalue())
    if skipped:
        print(f"{len(skipped)} of {len(files)} files skipped", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    run_cli(main)
