"""CPU scoring throughput: onnxruntime on the exported graph vs. this project's predict path, in one run.

    python bench/onnx_throughput.py [--backbone resnet50] [--patch 224] [--crops 64] [--batch 32]
                                    [--rounds 3] [--threads 2] [--out onnx_throughput.json]

Builds a random-init HyperIQA (no download), exports it with hyperiqa/onnx_export.py, then scores the
same uint8 crops with (a) hyperiqa.inference.score (uint8 -> float, normalise, model, in torch; what
`python -m hyperiqa.predict` runs per batch) and (b) an onnxruntime CPU session on the same batches
(uint8 -> float / 255 in numpy, normalisation inside the graph). Rounds alternate (a), (b) so both see
the same machine load; each path's best round is reported (crops/s), with the ratio and the largest
score difference. Both use --threads intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyperiqa.inference import score  # noqa: E402
from hyperiqa.models import HyperIQA  # noqa: E402
from hyperiqa.onnx_export import INPUT, export_onnx  # noqa: E402


def run_torch(model, crops: np.ndarray, batch: int) -> np.ndarray:
    # one crop per "image", so the per-image mean is the crop's own score
    return score(model, list(crops[:, None]), mean=model.input_mean, std=model.input_std, device="cpu",
                 batch_size=batch)


def run_onnx(session, crops: np.ndarray, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch].transpose(0, 3, 1, 2).astype(np.float32) / 255
        out.append(session.run(None, {INPUT: x})[0])
    return np.concatenate(out).astype(np.float64)


def timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--patch", type=int, default=224)
    parser.add_argument("--crops", type=int, default=64, help="crops scored per round and path")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both (default 2)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HyperIQA(args.backbone, patch_size=args.patch).eval()
    crops = np.random.default_rng(0).integers(0, 256, size=(args.crops, args.patch, args.patch, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, args.patch, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        run_torch(model, crops[:args.batch], args.batch)  # warm-up: first-call allocations and kernels
        run_onnx(session, crops[:args.batch], args.batch)
        times: dict[str, list[float]] = {"predict": [], "onnxruntime": []}
        for _ in range(args.rounds):
            t, ours = timed(lambda: run_torch(model, crops, args.batch))
            times["predict"].append(t)
            t, theirs = timed(lambda: run_onnx(session, crops, args.batch))
            times["onnxruntime"].append(t)
    rate = {k: args.crops / min(v) for k, v in times.items()}
    result = {"backbone": args.backbone, "patch": args.patch, "crops": args.crops, "batch": args.batch,
              "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__, "onnxruntime": ort.__version__,
              "export_s": round(export_s, 1), "crops_per_s": {k: round(v, 2) for k, v in rate.items()},
              "ratio_onnxruntime_over_predict": round(rate["onnxruntime"] / rate["predict"], 3),
              "max_abs_score_diff": float(np.max(np.abs(ours - theirs)))}
    print(f"{args.backbone} patch {args.patch}, batch {args.batch}, {args.threads} threads, best of {args.rounds} "
          f"rounds of {args.crops} crops (export {export_s:.1f} s)")
    print(f"  predict (torch)  {rate['predict']:8.2f} crops/s")
    print(f"  onnxruntime      {rate['onnxruntime']:8.2f} crops/s")
    print(f"  ratio            {result['ratio_onnxruntime_over_predict']:8.3f}x   "
          f"(largest score difference {result['max_abs_score_diff']:.2e})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
