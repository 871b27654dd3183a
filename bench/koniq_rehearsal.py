"""A dress rehearsal of the real-dataset flow at KonIQ-10k's size, on whatever machine runs it.

    python bench/koniq_rehearsal.py --root /work/koniq-rehearsal [--images 10073] [--generate-only]

1. Generates (once; kept for later runs) a folder in KonIQ-10k's layout as distributed: `1024x768/`
   with N JPEGs of 1024x768, `koniq10k_scores_and_distributions.csv` and the official split in
   `koniq10k_distributions_sets.csv` (7058/1000/2015 at full size). The pictures are cheap (a blurred
   random field with grain whose strength follows the MOS), so the content means nothing; only sizes,
   file counts and the layout are KonIQ's.
2. Runs the README's real-dataset commands on it, each as its own process (no shell): the data check,
   a search of 2 one-epoch trials of `test_resnet`, the export's evaluate and predict, and
   `confirm.py --splits 2`. It measures each step's wall time and the peak resident memory of the
   driver and of every process under it (the trials), and the decoded cache's size and build time.
3. Writes `<root>/rehearsal/rehearsal.json` and `rehearsal.md` (a table), steps measured so far included
   if a step fails or the run is stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
KONIQ_IMAGES = 10073
KONIQ_SETS = (("training", 7058), ("validation", 1000), ("test", 2015))  # the official split's sizes
WIDTH, HEIGHT = 1024, 768
SCORES = "koniq10k_scores_and_distributions.csv"
SETS = "koniq10k_distributions_sets.csv"
FOLDER = "1024x768"


# --- 1. the folder ------------------------------------------------------------------------------

def image_names(n: int, seed: int = 0) -> list[str]:
    """KonIQ names its files by a Flickr id: distinct 9-11 digit numbers, `.jpg`."""
    rng = np.random.default_rng(seed)
    ids: set[int] = set()
    while len(ids) < n:
        ids.update(int(x) for x in rng.integers(10**8, 10**11, size=n - len(ids)))
    return [f"{i}.jpg" for i in sorted(ids)]


def set_names(n: int, seed: int = 0) -> list[str]:
    """The official split's `set` column: KonIQ's proportions (exactly its counts at full size), shuffled."""
    counts = [round(n * c / KONIQ_IMAGES) for _, c in KONIQ_SETS]
    counts[0] = n - sum(counts[1:])
    sets = [name for (name, _), c in zip(KONIQ_SETS, counts) for _ in range(c)]
    np.random.default_rng(seed + 1).shuffle(sets)
    return sets


def mos_values(n: int, seed: int = 0) -> np.ndarray:
    """MOS_zscore on 0-100, spread like KonIQ's (most images between 30 and 80)."""
    return np.clip(np.random.default_rng(seed + 2).normal(58, 13, size=n), 3, 97).round(6)


def make_image(path: str, mos: float, seed: int) -> None:
    """A smooth colour field (upscaled noise) plus grain that grows as the MOS falls; JPEG quality 90."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(HEIGHT // 32, WIDTH // 32, 3), dtype=np.uint8)
    field = Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    grain = rng.normal(0, (100 - mos) * 0.4, size=(HEIGHT // 2, WIDTH // 2, 1)).astype(np.int16)
    pixels = np.asarray(field, dtype=np.int16) + np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if mos > 70:
        img = img.filter(ImageFilter.SMOOTH)
    img.save(path, quality=90)


def _make_chunk(jobs: list[tuple[str, float, int]]) -> int:
    for path, mos, seed in jobs:
        if not os.path.exists(path):
            tmp = f"{path}.tmp.jpg"
            make_image(tmp, mos, seed)
            os.replace(tmp, path)  # a killed generator leaves no half-written JPEG under the real name
    return len(jobs)


class _Inline:
    """A pool of one: this process (the test's small folders)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


def generate(root: Path, n: int = KONIQ_IMAGES, workers: int = 0, log=print) -> dict:
    """Write the folder (images already there are kept); {images, seconds, bytes}."""
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names, sets, mos = image_names(n), set_names(n), mos_values(n)
    start = time.perf_counter()
    jobs = [(str(folder / name), float(m), i) for i, (name, m) in enumerate(zip(names, mos))]
    chunks = [jobs[i:i + 64] for i in range(0, len(jobs), 64)]
    workers = workers or len(os.sched_getaffinity(0))
    done = 0
    with cf.ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for count in pool.map(_make_chunk, chunks):
            done += count
            if done % 1024 < 64 or done == n:
                log(f"generate: {done}/{n} images ({time.perf_counter() - start:.0f} s)")
    rng = np.random.default_rng(3)
    votes = rng.integers(60, 140, size=n)
    with open(root / SCORES, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for name, m, total in zip(names, mos, votes):
            share = np.exp(-0.5 * ((np.arange(1, 6) - (1 + 4 * m / 100)) / 0.9) ** 2)
            counts = np.floor(share / share.sum() * total).astype(int)
            counts[2] += total - counts.sum()
            mean = float((counts * np.arange(1, 6)).sum() / total)
            sd = float(np.sqrt((counts * (np.arange(1, 6) - mean) ** 2).sum() / total))
            w.writerow([name, *counts.tolist(), int(total), f"{mean:.6f}", f"{sd:.6f}", f"{m:.6f}"])
    with open(root / SETS, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore", "set"])
        with open(root / SCORES, newline="") as scores:
            for row, s in zip(list(csv.reader(scores))[1:], sets):
                w.writerow([*row, s])
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"images": n, "seconds": round(time.perf_counter() - start, 1), "bytes": size}


# --- 2. the commands -----------------------------------------------------------------------------

# CPU-sized: a random-init test_resnet and 2 patches per image instead of 25, so that one epoch of the
# 7,058 training images and the evaluation of the 3,015 others fit a 2-core machine; the data path
# (reader, split, decoded cache of every image, crops) runs at KonIQ's full size.
SETS_CPU = ("backbone=test_resnet", "pretrained=false", "train_patches=2", "test_patches=2")


def steps(root: Path, out: Path, predict_images: int) -> list[tuple[str, list[str]]]:
    py = sys.executable
    sets = [a for s in (*SETS_CPU, f"cache_dir={out / 'cache'}") for a in ("--set", s)]
    export = out / "export"
    images = sorted((root / FOLDER).iterdir())[:predict_images]
    return [
        ("data check (--verify-images)", [py, "-m", "hyperiqa.data", "--dataset", "koniq10k", "--data-root", str(root),
                                          "--verify-images"]),
        ("search: 2 trials x 1 epoch", [py, "tuning/search.py", "--dataset", "koniq10k", "--data-root", str(root),
                                        *sets, "--num-samples", "2", "--max-epochs", "1", "--storage-path",
                                        str(out / "ray"), "--name", "search", "--export-dir", str(export),
                                        "--no-dashboard"]),
        ("export (again)", [py, "tuning/export.py", str(out / "ray" / "search"), "--out", str(out / "export2")]),
        ("evaluate --split test", [py, "-m", "hyperiqa.evaluate", "--checkpoint", str(export / "checkpoint"),
                                   "--split", "test"]),
        (f"predict {len(images)} images", [py, "-m", "hyperiqa.predict", "--checkpoint", str(export / "checkpoint"),
                                           "--crops", "2", *map(str, images),
                                           "--out", str(out / "scores.csv")]),
        ("confirm --splits 2", [py, "tuning/confirm.py", str(export), "--splits", "2", *sets, "--set", "epochs=1",
                                "--storage-path", str(out / "ray"), "--name", "confirm", "--out",
                                str(out / "confirm"), "--no-dashboard"]),
    ]


def _proc_tree() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of every process /proc shows."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(entry)] = (ppid, cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def _peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM), MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TreeMemory:
    """Polls the peak RSS of a process and all its descendants (Ray's raylet and workers: a local Ray is
    started by the driver) every 0.5 s; a process's last reading before it ends counts."""

    def __init__(self, root: int):
        self.root, self.peaks, self.cmds = root, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = _proc_tree()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _) in tree.items():
                children.setdefault(ppid, []).append(pid)
            todo = [self.root]
            while todo:
                pid = todo.pop()
                todo.extend(children.get(pid, []))
                peak = _peak_rss_mib(pid)
                if peak is not None and pid in tree:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))
                    self.cmds[pid] = tree[pid][1] or self.cmds.get(pid, "")
            self._stop.wait(0.5)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        trials = [round(m) for p, m in self.peaks.items() if "ImplicitFunc" in self.cmds.get(p, "")
                  or "train" in self.cmds.get(p, "").split(" ")[0]]
        return {"driver_peak_rss_mib": round(self.peaks.get(self.root, 0.0)),
                "trial_peak_rss_mib": sorted(trials, reverse=True),
                "largest_process_mib": round(max(self.peaks.values(), default=0.0)),
                "processes_seen": len(self.peaks)}


def run_step(name: str, argv: list[str], log_path: Path) -> dict:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                     "RAY_ADDRESS": "local"})  # a Ray of its own even inside a Ray Job
        memory = TreeMemory(proc.pid)
        code = proc.wait()
    seconds = time.perf_counter() - start
    return {"step": name, "seconds": round(seconds, 1), "exit_code": code, **memory.stop(),
            "command": " ".join(Path(a).name if a == sys.executable else a for a in argv[:14])
            + (" ..." if len(argv) > 14 else ""), "log": str(log_path)}


def cache_figures(out: Path) -> dict:
    for meta_path in (out / "cache" / "decoded").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        return {"cache_images": len(meta["paths"]), "cache_mib": round(meta["total_bytes"] / 2**20),
                "cache_build_seconds": meta["build_seconds"]}
    return {}


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{available_cpus_text()} ({model or platform.processor()}), {platform.platform()}"


def available_cpus_text() -> str:
    return f"{len(os.sched_getaffinity(0))} CPUs"


def write_report(out: Path, report: dict) -> None:
    (out / "rehearsal.json").write_text(json.dumps(report, indent=2))
    lines = [f"KonIQ-10k-sized rehearsal: {report['machine']}, {report['date']}", "",
             f"generated folder: {report['generate']['images']} images, "
             f"{report['generate']['bytes'] / 2**30:.2f} GiB", ""]
    if report.get("cache"):
        c = report["cache"]
        lines += [f"decoded cache: {c['cache_images']} images, {c['cache_mib']} MiB, built in "
                  f"{c['cache_build_seconds']} s", ""]
    lines += ["| step | wall s | exit | driver peak RSS MiB | trial peak RSS MiB |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        trials = ", ".join(map(str, s["trial_peak_rss_mib"])) or "-"
        lines.append(f"| {s['step']} | {s['seconds']:.0f} | {s['exit_code']} | {s['driver_peak_rss_mib']} | {trials} |")
    (out / "rehearsal.md").write_text("\n".join(lines) + "\n")


def rehearse(root: Path, args, generated: dict) -> int:
    out = root / "rehearsal"
    out.mkdir(exist_ok=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python bench/koniq_rehearsal.py " + " ".join(sys.argv[1:]), "generate": generated,
              "steps": []}
    for name, argv in steps(root, out, args.predict_images):
        if args.only and not any(word in name for word in args.only.split(",")):
            continue
        print(f"rehearsal: {name} ...", flush=True)
        result = run_step(name, argv, out / f"step{len(report['steps']) + 1}.log")
        report["steps"].append(result)
        report["cache"] = cache_figures(out)
        write_report(out, report)
        print(f"rehearsal: {name}: {result['seconds']:.0f} s, exit {result['exit_code']}", flush=True)
        if result["exit_code"] != 0:
            print(f"rehearsal: stopped; see {result['log']}", flush=True)
            return 1
    print((out / "rehearsal.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the dataset folder to generate (kept between runs)")
    p.add_argument("--images", type=int, default=KONIQ_IMAGES, help=f"how many images (default {KONIQ_IMAGES})")
    p.add_argument("--workers", type=int, default=0, help="generator processes (default: the CPUs this process may use)")
    p.add_argument("--generate-only", action="store_true", help="write the folder and stop")
    p.add_argument("--predict-images", type=int, default=1000, help="images the predict step scores (default 1000)")
    p.add_argument("--only", default="", help="comma-separated words: run only the steps whose name has one")
    args = p.parse_args(argv)
    root = Path(args.root).expanduser().resolve()
    info = generate(root, args.images, args.workers)
    print(json.dumps({"generate": info}))
    if args.generate_only:
        return 0
    return rehearse(root, args, info)


if __name__ == "__main__":
    sys.exit(main())
