"""How the cost of a search grows with its trials: the driver, Optuna, checkpoint storage, the export.

No GPU and no training: the real search (tuning/search.py: Ray Tune, ASHA, TPE, the retention policy, the
export) runs trials that follow a script. Each scripted trial reports a plausible validation-SRCC curve for
up to --epochs epochs (it rises towards a level set by its sampled parameters, with noise; some peak and
decline, as the original's recipe does) and writes a checkpoint of --checkpoint-mb per epoch, split as
ResNet-50's is: 110 MB of weights (model.safetensors) and 219 MB of optimizer state (trainer_state.pt).

    python bench/scale.py --quick                       # 32 trials, 1 MB checkpoints; under 5 min on 2 cores
    python bench/scale.py --trials 32                   # the default search at ResNet-50's 329 MB: ~170 GB written
    python bench/scale.py --trials 256 --checkpoint-mb 0.1
    python bench/scale.py --trials 1024 --checkpoint-mb 0.1 --keep best
    python bench/scale.py --write-cost 3 --workdir /path/on/the/storage/disk   # one ResNet-50 checkpoint, timed

Each --keep policy is one search (same seed, same trials); per search it prints and writes (--out, JSON):
  driver_s_per_result   the search's wall time / results reported, and the driver's CPU seconds / result
  driver_peak_rss_mb    the driver's peak RSS (ru_maxrss), and its RSS sampled as trials end (growth per 100)
  optuna_ms             time of each of Optuna's suggestions, by trial number (first and last quarter)
  written_gb            bytes of the checkpoints reported to storage (what an s3:// upload would carry)
  kept_gb               bytes under the experiment folder at the end (checkpoints, results, Ray's state)
  export_s              a re-export of the finished search (tuning/export.py), timed
Bytes are exact at any --checkpoint-mb (the trials write what they are told); the number of checkpoint
writes does not depend on the size, so bytes at 329 MB are the counts times 329 MB. Times at 1 MB are not
those at 329 MB: writing and deleting big files is a cost of its own (docs/scale.md measures it).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

RESNET50_WEIGHTS_MB, RESNET50_STATE_MB = 110, 219  # measured on this project's ResNet-50 checkpoint (issue 24)
CHUNK = 8 << 20


# --- the scripted trial (runs in Ray's workers; pickled by value with this script) -------------------
def curve_for(config: dict, epochs: int) -> list[float]:
    """A plausible val SRCC curve: rises towards a level that peaks at backbone_lr 2e-5 and falls off on a
    log scale; a large learning rate peaks early and declines (the original's symptom). Deterministic."""
    lr = float(config.get("backbone_lr", 2e-5))
    distance = abs(math.log10(lr) - math.log10(2e-5))
    seed = zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode())
    level = 0.92 - 0.12 * distance ** 2 + 0.02 * ((seed % 1000) / 1000 - 0.5)
    speed = 1.5 + 3 * ((seed >> 10) % 100) / 100
    decline = 0.01 * max(0.0, math.log10(lr) - math.log10(2e-5))
    out = []
    for epoch in range(1, epochs + 1):
        value = level * (1 - math.exp(-epoch / speed)) - decline * max(0, epoch - speed)
        noise = 0.004 * (((seed >> (epoch % 16)) % 100) / 100 - 0.5)
        out.append(round(max(-1.0, min(1.0, value + noise)), 5))
    return out


def _write(path: Path, size: int) -> None:
    block = b"\0" * min(size, CHUNK)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def sized_trial(config, *, base, space, metric, epochs: int, weights_bytes: int, state_bytes: int,
                epoch_s: float) -> None:
    """Report curve_for(config) epoch by epoch with a checkpoint each time; stop for decline after the base
    configuration's patience, as the solver does; resume from Ray's checkpoint like the real trial."""
    from ray import tune

    values = curve_for(config, epochs)
    patience = int(base.get("patience") or 0)
    start, best, best_epoch = 0, -math.inf, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = json.loads((Path(folder) / "metrics.json").read_text())
            start, best, best_epoch = saved["epoch"], saved["best"], saved["best_epoch"]
    for epoch in range(start + 1, epochs + 1):
        time.sleep(epoch_s)
        value = values[epoch - 1]
        if value > best:
            best, best_epoch = value, epoch
        declined = patience and epoch - best_epoch >= patience
        status = "completed" if epoch == epochs else ("early_stopped" if declined else "running")
        metrics = {"epoch": epoch, metric: value, "status": status, "best": best, "best_epoch": best_epoch}
        with tempfile.TemporaryDirectory(prefix="scale-ckpt-") as folder:
            (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
            _write(Path(folder) / "model.safetensors", weights_bytes)
            _write(Path(folder) / "trainer_state.pt", state_bytes)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if declined:
            return


# --- driver-side meters ---------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def make_meter():
    from ray import tune

    class Meter(tune.Callback):
        """Counts results and checkpoint bytes; samples the driver's RSS as trials end."""

        def __init__(self):
            self.results = 0
            self.checkpoints = 0
            self.written = 0
            self.rss = []  # (trials ended, RSS MB)
            self.ended = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results += 1

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            self.checkpoints += 1
            self.written += folder_bytes(checkpoint.path)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended += 1
            self.rss.append((self.ended, rss_mb()))

    return Meter()


def timed_suggestions(timings: list):
    """Wrap Optuna's suggest (the searcher the search builds) to time each call."""
    from tuning.sweep.optuna_search import BestValueOptunaSearch

    original = BestValueOptunaSearch.suggest

    def suggest(self, trial_id):
        t0 = time.perf_counter()
        out = original(self, trial_id)
        if out is not None:
            timings.append(time.perf_counter() - t0)
        return out

    BestValueOptunaSearch.suggest = suggest
    return original


def run_one(args, keep: str, root: Path) -> dict:
    import ray

    from tuning import search
    from tuning.sweep import tuner
    from tuning.sweep.export_folder import export_experiment

    meter, timings = make_meter(), []
    original_config, original_suggest = tuner.run_config, timed_suggestions(timings)

    def run_config(plan):
        config = original_config(plan)
        config.callbacks.append(meter)
        return config

    tuner.run_config = run_config
    mb = args.checkpoint_mb * 2**20
    weights = int(mb * RESNET50_WEIGHTS_MB / (RESNET50_WEIGHTS_MB + RESNET50_STATE_MB))
    fn = functools.partial(sized_trial, epochs=args.epochs, weights_bytes=weights, state_bytes=int(mb) - weights,
                           epoch_s=args.epoch_s)
    name = f"scale-{keep}"
    argv = ["--dataset", "demo", "--space", "default", "--searcher", "optuna", "--seed", str(args.seed),
            "--num-samples", str(args.trials), "--max-epochs", str(args.epochs), "--grace-period", str(args.grace),
            "--gpus", "0", "--cpus-per-trial", str(args.cpus_per_trial), "--max-concurrent", str(args.concurrent),
            "--storage-path", str(root / "ray"), "--name", name, "--export-dir", str(root / f"export-{keep}"),
            "--keep-checkpoints", keep]
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    try:
        code = search.main(argv, trial_fn=fn)
    finally:
        wall = time.monotonic() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        ray.shutdown()
        tuner.run_config = original_config
        from tuning.sweep.optuna_search import BestValueOptunaSearch

        BestValueOptunaSearch.suggest = original_suggest
    experiment = root / "ray" / name
    t1 = time.monotonic()
    export_experiment(str(experiment), str(root / f"reexport-{keep}"), log=lambda *_: None, progress=lambda *_: None)
    export_s = time.monotonic() - t1
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    quarter = max(1, len(timings) // 4)
    return {"keep": keep, "exit": code, "trials": args.trials, "epochs": args.epochs,
            "checkpoint_mb": args.checkpoint_mb, "results": meter.results, "checkpoints": meter.checkpoints,
            "wall_s": wall, "driver_wall_ms_per_result": 1000 * wall / max(1, meter.results),
            "driver_cpu_ms_per_result": 1000 * cpu / max(1, meter.results),
            "driver_peak_rss_mb": usage1.ru_maxrss / 1024, "rss_by_trials_ended": meter.rss,
            "optuna_ms_first_quarter": 1000 * sum(timings[:quarter]) / quarter,
            "optuna_ms_last_quarter": 1000 * sum(timings[-quarter:]) / quarter,
            "optuna_ms": [round(1000 * t, 2) for t in timings],
            "written_gb": meter.written / 1e9, "kept_gb": folder_bytes(str(experiment)) / 1e9,
            "kept_checkpoint_gb": sum(folder_bytes(str(c)) for c in experiment.glob("*/checkpoint_*")) / 1e9,
            "export_s": export_s}


def rss_growth_per_100(points: list) -> float:
    """Least-squares slope of RSS (MB) against trials ended, per 100 trials (the second half, past start-up)."""
    points = points[len(points) // 2:]
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    return 100 * sum((p[0] - mx) * (p[1] - my) for p in points) / var if var else float("nan")


def make_csv_dataset(root: Path, n: int = 12) -> Path:
    """n small generated images and labels.csv: what a Solver needs to exist (it never trains here)."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["image,label,group"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{rng.uniform(1, 5):.3f},g{i % 4}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def measure_write_cost(root: Path, repeats: int, backbone: str) -> dict:
    """A ResNet-50 checkpoint written by the project's own path (Solver.save_checkpoint: the weights and
    Adam's moments of every parameter), then copied to a storage folder as Ray's report() does for a local
    storage path (pyarrow copy_files), then its trainer_state.pt deleted as --keep-checkpoints best does."""
    import pyarrow.fs
    import torch

    from hyperiqa.config import TrainConfig
    from hyperiqa.solver import Solver

    data = make_csv_dataset(root / "data")
    cfg = TrainConfig.from_dict(dict(
        dataset="csv", data_root=str(data), dataset_options={"csv": "labels.csv", "image_column": "image",
                                                             "label_column": "label", "group_column": "group"},
        backbone=backbone, pretrained=False, patch_size=32, train_patches=1, test_patches=1, batch_size=4,
        eval_batch_size=4, epochs=16, val_fraction=0.25, test_fraction=0.25, cache_dir=str(root / "cache"),
        cache_workers=1, device="cpu"), source="bench/scale.py")
    solver = Solver(cfg, log=lambda *_: None)
    for param in solver.model.parameters():  # one step on zero gradients: Adam's state has its full size
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    solver.optimizer.step()
    solver.epoch = 1
    fs = pyarrow.fs.LocalFileSystem()
    save, copy, delete, sizes = [], [], [], {}
    for i in range(repeats):
        local, stored = root / f"local-{i}", root / "storage" / f"checkpoint_{i:06d}"
        t0 = time.monotonic()
        solver.save_checkpoint(local, {"epoch": 1, "val_srcc": 0.5})
        os.sync()  # the bytes on disk, not in the page cache
        t1 = time.monotonic()
        stored.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(str(local), str(stored), source_filesystem=fs, destination_filesystem=fs)
        os.sync()
        t2 = time.monotonic()
        sizes = {f.name: f.stat().st_size for f in stored.iterdir()}
        fs.delete_file(str(stored / "trainer_state.pt"))
        t3 = time.monotonic()
        save.append(t1 - t0)
        copy.append(t2 - t1)
        delete.append(t3 - t2)
        shutil.rmtree(local)
    shutil.rmtree(root / "storage", ignore_errors=True)
    return {"backbone": backbone, "repeats": repeats, "bytes": sizes, "total_mb": sum(sizes.values()) / 2**20,
            "save_s": save, "copy_to_storage_s": copy, "delete_state_s": delete}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 trials, 1 MB checkpoints, --keep all,best")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--grace", type=int, default=2, help="ASHA's first rung (16 // 8, the default for KonIQ)")
    p.add_argument("--checkpoint-mb", type=float, default=RESNET50_WEIGHTS_MB + RESNET50_STATE_MB)
    p.add_argument("--epoch-s", type=float, default=0.0, help="seconds each scripted epoch waits (default 0)")
    p.add_argument("--concurrent", type=int, default=1,
                   help="trials at once (--max-concurrent; default 1: then ASHA and TPE see the results in one "
                        "order, and every --keep policy runs the same trials, epoch for epoch)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default: the cores / --concurrent")
    p.add_argument("--keep", default="all,best", help="--keep-checkpoints policies, one search each (default all,best)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="where the experiments go (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--write-cost", type=int, metavar="N", default=0,
                   help="instead of a search: write a ResNet-50 checkpoint N times through Solver.save_checkpoint "
                        "in --workdir, copy it as Ray does, time both")
    p.add_argument("--backbone", default="resnet50.tv_in1k", help="the --write-cost model (default ResNet-50)")
    args = p.parse_args()
    if args.write_cost:
        root = args.workdir or Path(tempfile.mkdtemp(prefix="hyperiqa-write-", dir="."))
        try:
            r = measure_write_cost(root, args.write_cost, args.backbone)
        finally:
            if args.workdir is None:
                shutil.rmtree(root, ignore_errors=True)
        print("write cost: " + json.dumps(r))
        if args.out:
            args.out.write_text(json.dumps(r, indent=2))
        return
    if args.quick:
        args.trials, args.checkpoint_mb = 32, 1.0
    if args.cpus_per_trial is None:
        args.cpus_per_trial = max(0.01, (os.cpu_count() or 1) / args.concurrent)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="hyperiqa-scale-"))
    results = []
    try:
        for keep in [k for k in args.keep.split(",") if k]:
            r = run_one(args, keep, root)
            r["rss_mb_per_100_trials"] = rss_growth_per_100(r["rss_by_trials_ended"])
            results.append(r)
            print("scale: " + json.dumps({k: v for k, v in r.items() if k not in ("optuna_ms", "rss_by_trials_ended")}),
                  flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def print_table(results: list[dict]) -> None:
    print("\n| keep | trials | results | wall s | driver ms/result (wall, CPU) | driver peak RSS MB | "
          "RSS MB/100 trials | Optuna ms/suggestion (first, last quarter) | checkpoints | written GB | "
          "kept GB | export s |")
    print("|---" * 12 + "|")
    for r in results:
        print(f"| {r['keep']} | {r['trials']} | {r['results']} | {r['wall_s']:.0f} | "
              f"{r['driver_wall_ms_per_result']:.0f}, {r['driver_cpu_ms_per_result']:.0f} | "
              f"{r['driver_peak_rss_mb']:.0f} | {r['rss_mb_per_100_trials']:.1f} | "
              f"{r['optuna_ms_first_quarter']:.1f}, {r['optuna_ms_last_quarter']:.1f} | {r['checkpoints']} | "
              f"{r['written_gb']:.3f} | {r['kept_gb']:.3f} | {r['export_s']:.1f} |")
    if results:
        mb = results[0]["checkpoint_mb"]
        print(f"(checkpoints of {mb:g} MB; at 329 MB multiply written/kept checkpoint bytes by {329 / mb:g})")


if __name__ == "__main__":
    main()
