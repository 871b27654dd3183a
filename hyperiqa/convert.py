"""Write a checkpoint in a format other HyperIQA code loads: python -m hyperiqa.convert CHECKPOINT --to FORMAT OUT

  original  SSL92/hyperIQA's state dict (.pkl): models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7)
            .load_state_dict(torch.load(OUT)); ResNet-50, 224 crops, not multiscale
  pyiqa     {'params': state dict} (.pth): pyiqa.create_metric('hyperiqa', pretrained_model_path=OUT);
            a ResNet-50-shaped timm backbone, 224 crops, not multiscale
  onnx      the whole scoring path (.onnx): crops (N, 3, P, P) RGB in [0, 1] -> scores (N,); any backbone

CHECKPOINT: a checkpoint folder of this project (or its model.safetensors), or an original .pkl/.pth.
Scores are on the checkpoint's label scale (preprocess.json `label_range`); the images must be resized
as the checkpoint's training was (preprocess.json `short_side` / `resize_to`; README "The export folder").
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import torch

from hyperiqa import checkpoint as ckpt
from hyperiqa.models.original_format import PATCH, to_original, to_pyiqa
from hyperiqa.utils import UserError, atomic_write_bytes, run_cli

# The file each format gets in an export folder (tuning/export.py --format).
FILES = {"original": "hyperiqa_original.pkl", "pyiqa": "hyperiqa_pyiqa.pth", "onnx": "hyperiqa.onnx"}


def write_format(checkpoint, fmt: str, out) -> Path:
    """Convert `checkpoint` to `fmt` and write it to `out` atomically; returns `out`."""
    if fmt not in FILES:
        raise UserError(f"--to {fmt!r}: allowed {', '.join(FILES)}")
    out = Path(out)
    model, cfg = ckpt.load_model(checkpoint)
    pre = ckpt.read_preprocess(checkpoint) or {}
    patch = int(pre.get("patch_size") or (cfg.patch_size if cfg else PATCH))
    source = str(checkpoint)
    if fmt == "onnx":
        from hyperiqa.onnx_export import export_onnx

        meta = {k: pre[k] for k in ("short_side", "resize_to", "label_range") if pre.get(k) is not None}
        partial = out.with_name(f".{out.name}.tmp")
        export_onnx(model, patch, partial, metadata={"backbone": model.backbone_name, **meta})
        os.replace(partial, out)  # readers never see half a file
        return out
    state = to_original(model, patch, source=source) if fmt == "original" else {"params": to_pyiqa(model, patch,
                                                                                                   source=source)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperiqa.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("--to", required=True, choices=list(FILES), dest="fmt", help="the format to write")
    parser.add_argument("out", metavar="OUT", help="the file to write")
    args = parser.parse_args(argv)
    print(f"wrote {write_format(args.checkpoint, args.fmt, args.out)} ({args.fmt})")
    return 0


if __name__ == "__main__":
    run_cli(main)
