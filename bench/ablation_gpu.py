"""The ablation on one GPU without Ray: photos, the paper's 16 epochs, planned to end within 9 minutes on one H200.

    python bench/ablation_gpu.py            # CUDA; the result folder goes to $OUT/ablation (or ./ablation_gpu)
    python bench/ablation_gpu.py --smoke    # the same path, tiny, on the CPU (under 2 minutes on 2 cores)

It runs `python tuning/ablate.py --runner processes` (each run a `python -m hyperiqa.train` process, no
Ray) on `--dataset photos` with photos_config()'s paper optimisation (pretrained EfficientNet-Lite0,
Adam, backbone LR 2e-5, head x10, weight decay 5e-4) and the paper's schedule: 16 epochs, /10 after
epochs 6 and 12, batch 96, as many training patches as evaluation crops per image (the paper: 25 and 25).
Variants fixed, all, optimizer_reset, head_frozen_after_epoch1, plain_head; one seed; the five runs at
once on the one GPU (--gpus 1 --gpus-per-run 0.2: a fifth of its memory and 3 CPUs each), image-level
train SRCC on 256 training images after every epoch. It needs the photos and lite extras (the photos'
packages and piq; the Lite0 weights package) and, for plain_head and train_eval_images, TrainConfig's
head/train_eval_images fields. --time-limit makes ablate.py stop the runs and write the folder from the
epochs reached if the plan below is wrong; `--resume` (printed then) continues them.

Patch size 160, not 224: a photos crop is 192 x 192 (hyperiqa/data/photos.py SIZE). A 224 patch would
need every crop upscaled to 224 first (the cache's min_size), and a 192 patch is the whole crop: either
way the 25 patches of an image would differ only by their flip. 160 leaves 33 x 33 positions.

The plan (printed before anything starts), from the split's sizes and these inputs:
  measured: training images 1,488, validation 284, test 472 (seed 0's split of the 2,244 photos images,
            counted on this repository's 2-core VM, 2026-12-03; recounted at run time);
            3,699 training patches/s in total for 4 processes sharing one H200 (a HyperIQA-shaped
            ResNet-50, 224 px, batch 96, bf16, channels_last, fused Adam, data on the GPU; torch 2.11,
            November 2026, taken outside this repository: README, Performance);
            evaluation crops/s = 2.5 x training patches/s (resnet10t on the CPU, 117 vs 47: README,
            Performance, 2026-11-28; test_resnet: 3.2x);
            37 s to generate the photos dataset (2 cores, 2026-12-02: README).
  estimated: RATE = 3,600 patches/s for the 5 Lite0 runs together: Lite0 at 160 px is assumed at least as
            fast as ResNet-50 at 224 (about a tenth of the backbone's FLOPs on half the pixels; the
            hyper network's input is 320 channels, not 2,048), and 5 processes no faster than 4;
            EVAL_SPEEDUP = 2.5 on the GPU as on the CPU; OVERHEAD_S = 100 s (dataset 40 s, five process
            starts with imports, CUDA, decoded cache and weights 30 s, cudnn autotuning 15 s, the folder
            10 s). Nothing here has run on a GPU yet.
  seconds per patch per image = runs x epochs x (train + (val + test + 256) / EVAL_SPEEDUP) / RATE
                              = 5 x 16 x (1,488 + 1,012 / 2.5) / 3,600 = 42.1 s
  patches = min(25, floor((TARGET_S - OVERHEAD_S) / 42.1)) = floor((480 - 100) / 42.1) = 9
  planned = 100 + 9 x 42.1 = 479 s (8.0 min); TARGET_S leaves a minute of the 9 for the estimates' error.
So the cut is the patches (9 of the paper's 25 per image, train and evaluation), not the epochs or the
schedule, which set where the defects act; one seed, not two (two would leave 4 patches).
--smoke: 6 of the demo's 60 references (102 images of 128 px, generated here), the random-init
test_resnet, 32 px, 1 patch and 1 crop per image, batch 16, 2 epochs, fixed and optimizer_reset, 1 seed,
2 runs at once on 2 CPUs; its plan uses rough CPU numbers and only exercises the arithmetic.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "cuda": dict(dataset="photos", gpus="1", gpus_per_run="0.2", cpus_per_run="3", max_concurrent=5,
                 variants=["fixed", "all", "optimizer_reset", "head_frozen_after_epoch1", "plain_head"], seeds=1,
                 sets=dict(patch_size=160, batch_size=96, epochs=16, step_size=6, train_eval_images=256,
                           cache_workers=4),
                 rate=3600.0, eval_speedup=2.5, overhead_s=100.0, target_s=480.0, budget_s=540.0, max_patches=25),
    "smoke": dict(dataset="csv", gpus="0", gpus_per_run=None, cpus_per_run="1", max_concurrent=2,
                  variants=["fixed", "optimizer_reset"], seeds=1,
                  sets=dict(backbone="test_resnet", pretrained=False, patch_size=32, batch_size=16,
                            eval_batch_size=64, epochs=2, step_size=1, val_fraction=0.2, test_fraction=0.2,
                            label_norm="standardize", backbone_lr=1e-3, cache_workers=1),
                  rate=200.0, eval_speedup=2.5, overhead_s=40.0, target_s=90.0, budget_s=120.0, max_patches=1),
}
FOLDER_S = 20.0  # kept after --time-limit for ablate.py to stop the runs and write the folder
SMOKE_REFERENCES = 6


def plan(mode: dict, counts: dict[str, int]) -> tuple[int, float, str]:
    """(patches per image, planned seconds, the arithmetic as text) for the split's image counts."""
    runs, epochs = len(mode["variants"]) * mode["seeds"], mode["sets"]["epochs"]
    evaluated = counts["val"] + counts["test"] + mode["sets"].get("train_eval_images", 0)
    per_patch = runs * epochs * (counts["train"] + evaluated / mode["eval_speedup"]) / mode["rate"]
    fit = math.floor((mode["target_s"] - mode["overhead_s"]) / per_patch)
    patches = max(1, min(mode["max_patches"], fit))
    planned = mode["overhead_s"] + patches * per_patch
    text = (f"plan: {runs} runs x {epochs} epochs x ({counts['train']:,} training images + {evaluated:,} evaluated "
            f"/ {mode['eval_speedup']:g}) / {mode['rate']:,.0f} patches/s = {per_patch:.1f} s per patch per image; "
            f"{patches} patches per image (at most {mode['max_patches']}; {fit} fit in {mode['target_s']:.0f} s - "
            f"{mode['overhead_s']:.0f} s overhead); planned {planned:.0f} s ({planned / 60:.1f} min) of "
            f"{mode['budget_s']:.0f} s")
    return patches, planned, text


def split_counts(cfg) -> dict[str, int]:
    """Image counts of seed 0's split (generating the dataset if needed, as the ablation would)."""
    from hyperiqa.data.datasets import dataset_from_config
    from hyperiqa.data.splits import make_split

    split = make_split(dataset_from_config(cfg), cfg)
    return {name: len(getattr(split, name)) for name in ("train", "val", "test")}


def smoke_dataset(root: Path) -> dict:
    """A few of the demo's references (its generator, 17 images each) as a csv dataset: data_root and options."""
    from hyperiqa.data import demo

    if not (root / "labels.csv").is_file():
        root.mkdir(parents=True, exist_ok=True)
        demo._generate(root, references=SMOKE_REFERENCES)
    return dict(data_root=str(root), dataset_options={"csv": "labels.csv", "image_column": "image",
                                                      "label_column": "label", "group_column": "group"})


def base_config(mode: dict, work: Path, smoke: bool):
    from hyperiqa.config import PRESETS, TrainConfig

    sets = {**mode["sets"], "cache_dir": str(work / "cache")}
    if smoke:
        return TrainConfig.from_dict({"dataset": "csv", **smoke_dataset(work / "data"), **sets}, source="smoke")
    return PRESETS[mode["dataset"]](**sets)


def ablate_argv(mode: dict, cfg, patches: int, work: Path, out: Path, time_limit: float) -> list[str]:
    sets = {**mode["sets"], "cache_dir": cfg.cache_dir, "train_patches": patches, "test_patches": patches}
    if cfg.data_root and mode["dataset"] == "csv":
        sets.update(dataset_options=cfg.dataset_options)
    argv = [sys.executable, str(ROOT / "tuning" / "ablate.py"), "--runner", "processes", "--dataset", mode["dataset"],
            "--variants", ",".join(mode["variants"]), "--seeds", str(mode["seeds"]), "--gpus", mode["gpus"],
            "--cpus-per-run", mode["cpus_per_run"], "--max-concurrent", str(mode["max_concurrent"]),
            "--storage-path", str(work / "runs"), "--name", "ablation", "--out", str(out),
            "--time-limit", f"{time_limit:.0f}"]
    if cfg.data_root and mode["dataset"] == "csv":
        argv += ["--data-root", cfg.data_root]
    if mode["gpus_per_run"]:
        argv += ["--gpus-per-run", mode["gpus_per_run"]]
    for key, value in sets.items():
        argv += ["--set", f"{key}={_yaml(value)}"]
    return argv


def _yaml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU (exercises the whole path)")
    p.add_argument("--out", type=Path, help="result folder (default: $OUT/ablation, else ./ablation_gpu)")
    p.add_argument("--workdir", type=Path, help="dataset, cache and run folders (default: a new temp dir)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="end within this many seconds from the start: the runs are stopped and the folder written "
                        "by then (default 540; --smoke 120)")
    args = p.parse_args(argv)
    started = time.monotonic()
    smoke = args.smoke
    mode = MODES["smoke" if smoke else "cuda"]
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="hyperiqa-ablation-gpu-"))).resolve()
    out = (args.out or (Path(os.environ["OUT"]) / "ablation" if os.environ.get("OUT") else Path("ablation_gpu")))
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            print("error: torch sees no CUDA device (use --smoke on a machine without one)", file=sys.stderr)
            return 2
    cfg = base_config(mode, work, smoke)
    counts = split_counts(cfg)
    patches, planned, text = plan(mode, counts)
    print(f"ablation_gpu ({'CPU smoke' if smoke else 'CUDA'}), work dir {work}\n{text}", flush=True)
    # The runs stop in time for the folder to be written inside the budget, whatever the estimates missed
    budget = args.budget or mode["budget_s"]
    time_limit = budget - (time.monotonic() - started) - FOLDER_S
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    code = subprocess.run(ablate_argv(mode, cfg, patches, work, out.resolve(), time_limit), env=env).returncode
    took = time.monotonic() - started
    print(f"ablation_gpu: exit code {code} after {took:.0f} s (planned {planned:.0f} s); folder {out.resolve()}",
          flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
