"""Training and evaluation throughput of one trial, side by side with the original HyperIQA protocol.

One run, one table, on whatever device it finds (CUDA or CPU). For each backbone it measures
  ceiling     the solver's training step on a batch already in device memory, with denormal floats flushed
              to zero on the CPU: training one batch over and over breeds denormals, which x86 CPUs compute
              slowly, and without flushing this "ceiling" came out 20-30 % below e2e (issue 24)
  e2e         the solver's training epoch fed by the decoded cache and the on-device patch sampler
  eval        fixed-crop batched evaluation
  original    per-patch PIL decode + resize + crop in a DataLoader (no workers, as shipped), fp32 NCHW
              training at batch 96; batch-1 evaluation with per-patch decode
  shared xK   K separate processes training on one device: on a GPU each capped to 1/K of its memory,
              on the CPU each with 1/K of the cores as torch threads (the single-process rows use all)
and prints patches/s, e2e/ceiling, e2e/original, peak GPU memory and the device name. --denormals both
adds an e2e row with denormals flushed (torch.set_flush_denormal), measured in alternation with the others.

    python bench/throughput.py --quick            # sized for under 4 minutes on an H100/H200 (not yet timed)
    python bench/throughput.py                    # resnet50 + swin_tiny, more images, 2 and 4 sharers
    python bench/throughput.py --device cpu --backbones resnet10t,test_resnet --patch 96 --batch 32 \
        --images 32 --epochs 2                    # the CPU version of the same comparisons
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline import make_koniq_folder, original_transform  # noqa: E402
from PIL import Image  # noqa: E402

from hyperiqa.config import TrainConfig  # noqa: E402
from hyperiqa.solver import Solver  # noqa: E402


def base_config(args, folder: Path, backbone: str, cache_dir: Path, **extra) -> TrainConfig:
    return TrainConfig.from_dict(dict(
        dataset="koniq10k", data_root=str(folder), backbone=backbone, pretrained=False, patch_size=args.patch,
        train_patches=25, test_patches=25, batch_size=args.batch, eval_batch_size=args.eval_batch,
        epochs=1000, val_fraction=0.0, test_fraction=0.2, cache_dir=str(cache_dir), device=args.device,
        selection_metric="test_srcc", compile=args.compile, num_threads=args.threads, **extra), source="bench")


class OriginalPatchDataset(torch.utils.data.Dataset):
    """The original loader: every image listed 25 times; each item decodes and resizes the whole JPEG."""

    def __init__(self, paths, *, patch, patches_per_image, train):
        self.samples = [p for p in paths for _ in range(patches_per_image)]
        self.transform = original_transform(patch, train=train)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        with open(self.samples[i], "rb") as fh:
            return self.transform(Image.open(fh).convert("RGB")), 0.0


class _RepeatBatch:
    """A stand-in training sampler that yields one device-resident batch: the model's ceiling."""

    def __init__(self, x, y, n):
        self.x, self.y, self.n = x, y, n

    def __len__(self):
        return self.n

    def epoch(self, epoch):
        for _ in range(self.n):
            yield self.x, self.y


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_solver(args, folder, backbone, cache_dir) -> dict:
    t0 = time.monotonic()
    solver = Solver(base_config(args, folder, backbone, cache_dir), log=lambda *_: None)
    setup_s = time.monotonic() - t0
    dev = solver.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    real_train = solver.data.train
    x, y = next(iter(real_train.epoch(0)))
    repeat = _RepeatBatch(x, y, len(real_train))
    # (name, sampler, flush denormals): the ceiling always flushes; e2e as --denormals says.
    runs = [("e2e", real_train, args.denormals == "flush"), ("ceiling", repeat, True)]
    if args.denormals == "both":
        runs.insert(1, ("e2e_flush", real_train, True))
    # One untimed epoch of each (autotuning, allocator), then alternate them: measured one after the other,
    # drift on a shared machine showed up as a 20% "gap" that alternating removes.
    rates: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    flushed = {False: torch.set_flush_denormal(False)}
    try:
        for rnd in range(args.epochs + 1):
            for name, sampler, flush in runs:
                flushed[flush] = torch.set_flush_denormal(flush)  # False where the CPU cannot (and on CUDA: no effect)
                solver.data.train = sampler
                rate = solver.train_epoch()["patches_per_s"]
                if rnd:
                    rates[name].append(rate)
    finally:
        torch.set_flush_denormal(False)
    solver.data.train = real_train
    solver.evaluate("test")  # warm-up: autotuning for the eval batch shape
    sync(dev)
    t0 = time.monotonic()
    solver.evaluate("test")
    sync(dev)
    n_eval = solver.data.test.num_images * solver.cfg.test_patches
    out = {"setup_s": setup_s, **{name: max(r) for name, r in rates.items()}, "rates": rates,
           "denormals": args.denormals, "flush_supported": flushed.get(True, False),
           "eval": n_eval / (time.monotonic() - t0), "train_patches_per_epoch": real_train.num_patches}
    if dev.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def measure_original(args, folder, backbone) -> dict:
    """The original protocol: decode the JPEG for every patch, no workers, fp32 NCHW, batch-1 eval."""
    from hyperiqa.models import HyperIQA

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = HyperIQA(backbone, pretrained=False).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-5, weight_decay=5e-4)
    images = sorted((folder / "1024x768").glob("*.jpg"))
    data = OriginalPatchDataset(images, patch=args.patch, patches_per_image=25, train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=0)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:  # the first batch pays for cudnn/allocator warm-up
            sync(device)
            start, seen = time.monotonic(), 0
        loss = torch.nn.functional.l1_loss(model(x.to(device)), y.to(device).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if i >= args.original_batches:
            break
    sync(device)
    train = seen / (time.monotonic() - start)
    model.eval()
    test = OriginalPatchDataset(images, patch=args.patch, patches_per_image=25, train=False)
    n = min(len(test), args.original_eval_patches)
    start = time.monotonic()
    with torch.no_grad():
        for i in range(n):
            x, _ = test[i]
            model(x[None].to(device)).item()
    return {"train": train, "eval": n / (time.monotonic() - start)}


def run_shared(args, folder, backbone, cache_dir, k: int) -> dict:
    """K worker processes, each capped to 1/K of the GPU's memory, train over the same wall-clock window."""
    start_at = time.time() + args.share_setup_s
    cmd = [sys.executable, __file__, "--worker", "--share", str(k), "--start-at", str(start_at),
           "--seconds", str(args.share_seconds), "--folder", str(folder), "--cache", str(cache_dir),
           "--backbones", backbone, "--patch", str(args.patch), "--batch", str(args.batch),
           "--device", args.device, "--threads", str(args.threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        line = [ln for ln in out.splitlines() if ln.startswith("{")]
        rates.append(json.loads(line[-1])["patches_per_s"] if line else float("nan"))
    return {"total": sum(rates), "per_trial": rates}


def worker(args) -> None:
    k = int(args.share)
    if args.threads:  # a CPU run: the sharers split the cores
        args.threads = max(1, args.threads // k)
    cfg = base_config(args, Path(args.folder), args.backbones, Path(args.cache), gpu_memory_fraction=1.0 / k)
    solver = Solver(cfg, log=lambda *_: None)
    solver.train_epoch()  # warm-up outside the window
    time.sleep(max(0.0, args.start_at - time.time()))
    if time.time() > args.start_at + 1:
        print("warning: worker setup overran --share-setup-s; windows do not fully overlap", file=sys.stderr)
    t0, patches = time.time(), 0
    while time.time() - t0 < args.seconds:
        m = solver.train_epoch()
        patches += solver.data.train.num_patches if m["patches_per_s"] else 0
    print(json.dumps({"patches_per_s": patches / (time.time() - t0)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="resnet50 + swin_tiny, fewer images and shorter windows")
    p.add_argument("--backbones", default="resnet50,swin_tiny_patch4_window7_224")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=600, help="generated 1024x768 JPEGs (KonIQ layout)")
    p.add_argument("--patch", type=int, default=224)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3,
                   help="timed epochs of e2e and of ceiling, alternating, after one untimed each (the best is kept)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--denormals", choices=("keep", "flush", "both"), default="keep",
                   help="e2e with denormal floats as torch leaves them (keep, the default, as training runs), "
                        "flushed to zero (flush), or both side by side (both: adds an e2e_flush row); the "
                        "ceiling always flushes them")
    p.add_argument("--original-batches", type=int, default=8)
    p.add_argument("--original-eval-patches", type=int, default=100)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of one process (default: all cores on the CPU, torch's default on CUDA)")
    p.add_argument("--share", type=str, default=None,
                   help="process counts sharing the device (default 2,4 on CUDA, 2 on a CPU with >= 2 cores; '' = skip)")
    p.add_argument("--share-seconds", type=float, default=30)
    p.add_argument("--share-setup-s", type=float, default=45)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--workdir", type=Path, help="where to generate images and the cache (default: a temp dir)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.images, args.epochs, args.share_seconds, args.share_setup_s = 300, 2, 15, 40
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hyperiqa-bench-"))
    folder, cache = work / "koniq", work / "cache"
    t0 = time.monotonic()
    make_koniq_folder(folder, args.images)
    print(f"generated {args.images} KonIQ-layout JPEGs in {time.monotonic() - t0:.1f} s", flush=True)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if args.threads is None:
        args.threads = 0 if cuda else os.cpu_count() or 1
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    results = {"device": device_name, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    for backbone in [b for b in args.backbones.split(",") if b]:
        print(f"--- {backbone}", flush=True)
        r = measure_solver(args, folder, backbone, cache)
        print(f"solver: {json.dumps(r)}", flush=True)
        r["original"] = measure_original(args, folder, backbone)
        print(f"original: {json.dumps(r['original'])}", flush=True)
        share = args.share if args.share is not None else ("2,4" if cuda else "2" if args.threads >= 2 else "")
        for k in [int(s) for s in share.split(",") if s]:
            r[f"shared_x{k}"] = run_shared(args, folder, backbone, cache, k)
            print(f"shared x{k}: {json.dumps(r[f'shared_x{k}'])}", flush=True)
        results[backbone] = r
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    print(f"\ndevice: {results['device']}, torch {results['torch']}")
    print("| backbone | ceiling | e2e train | eval | original train | original eval | e2e/ceiling | "
          "e2e/original | shared x2 (total) | shared x4 (total) | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if not isinstance(r, dict) or "e2e" not in r:
            continue
        o = r["original"]
        s2, s4 = r.get("shared_x2", {}).get("total"), r.get("shared_x4", {}).get("total")
        fmt = lambda v: f"{v:,.0f}" if v is not None else "-"  # noqa: E731
        peak = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        print(f"| {name} | {fmt(r['ceiling'])} | {fmt(r['e2e'])} | {fmt(r['eval'])} | {fmt(o['train'])} | "
              f"{fmt(o['eval'])} | {r['e2e'] / r['ceiling']:.2f} | {r['e2e'] / o['train']:.1f}x | {fmt(s2)} | "
              f"{fmt(s4)} | {peak(r.get('peak_mem_gib'))} |")
        if "e2e_flush" in r:
            print(f"| {name}, e2e with denormals flushed | | {fmt(r['e2e_flush'])} | | | | "
                  f"{r['e2e_flush'] / r['ceiling']:.2f} | | | | |")
    print("(patches/s; e2e = decoded cache + on-device patch sampler + solver step; the ceiling flushes denormals)")


if __name__ == "__main__":
    main()
