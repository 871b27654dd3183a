"""Training-time data pipeline: the original per-patch PIL pipeline vs. the decoded cache + device crops.

    python bench/data_pipeline.py [--images 64] [--seconds 15] [--root DIR] [--threads N]

Generates a KonIQ-layout folder of 1024x768 JPEGs (kept for later runs), then measures on the CPU:
(a) the original loader: every patch decodes its JPEG, resizes to 512x384, random-crops 224, flips,
    ToTensor, Normalize, batches of 96 collated in the training process (as shipped: no workers);
(b) this project: the decoded cache built once (timed separately), then TrainPatchSampler epochs
    (25 patches per image, batch 96, flips, normalised float32 batches).
The two are measured in alternating rounds so that both see the same machine load. Also the resident
memory of 1 and 4 processes reading the same cache. The speed-up is printed last.
"""

from __future__ import annotations

import argparse
import csv
import gc
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyperiqa.data.cache import DecodedCache  # noqa: E402
from hyperiqa.data.patches import TrainPatchSampler  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PATCH, PATCHES_PER_IMAGE, BATCH = 224, 25, 96


def natural_image(rng: np.random.Generator, width: int = 1024, height: int = 768) -> Image.Image:
    """1/f colour noise (natural-image spectrum) at a quarter of the size, upscaled, with shapes and grain."""
    h, w = height // 2, width // 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    field = np.stack([np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) / radius).real for _ in range(3)], -1)
    field = (field - field.mean()) / field.std() * 45 + rng.uniform(60, 190, 3)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
        box = [x0, y0, x0 + int(rng.integers(40, width // 3)), y0 + int(rng.integers(40, height // 3))]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    grain = rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))


def make_koniq_folder(root: Path, count: int) -> list[Path]:
    """root/1024x768/*.jpg plus koniq10k_scores_and_distributions.csv, as KonIQ-10k is distributed."""
    folder = root / "1024x768"
    paths = [folder / f"{1000000 + i}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for p in paths:
            natural_image(rng).save(p, quality=90)
            mos = float(rng.uniform(1.5, 4.5))
            writer.writerow([p.name, 0, 0, 0, 0, 0, 0, f"{mos:.3f}", "0.5", f"{(mos - 1) * 25:.3f}"])
    return paths


def original_transform(patch: int = PATCH, *, train: bool = True):
    """The original KonIQ transform, applied to every patch: resize the whole image, crop, (flip,) normalise."""
    import torchvision.transforms as T

    crop = [T.RandomCrop(patch), T.RandomHorizontalFlip()] if train else [T.RandomCrop(patch)]
    return T.Compose([T.Resize((512, 384)), *crop, T.ToTensor(), T.Normalize(MEAN, STD)])


def original_batches(paths: list[Path]):
    """The original loader: each image listed 25 times, shuffled, decoded and resized for every patch."""
    transform = original_transform()
    samples = [p for p in paths for _ in range(PATCHES_PER_IMAGE)]
    rng = np.random.default_rng(0)
    while True:
        order = rng.permutation(len(samples))
        for b in range(0, len(order), BATCH):
            batch = []
            for i in order[b:b + BATCH]:
                with open(samples[i], "rb") as fh:
                    batch.append(transform(Image.open(fh).convert("RGB")))
            yield torch.stack(batch)  # the DataLoader's collate


def project_batches(cache: DecodedCache):
    sampler = TrainPatchSampler(cache, np.arange(len(cache)), np.zeros(len(cache), np.float32), patch_size=PATCH,
                                patches_per_image=PATCHES_PER_IMAGE, batch_size=BATCH, hflip=True, seed=0,
                                device="cpu", mean=MEAN, std=STD)
    epoch = 0
    while True:
        for x, _ in sampler.epoch(epoch):
            yield x
        epoch += 1


def measure(pipelines: dict, seconds: float, rounds: int = 3) -> dict:
    """Patches/s of each pipeline, measured in alternating rounds so both see the same machine load."""
    done = dict.fromkeys(pipelines, 0)
    spent = dict.fromkeys(pipelines, 0.0)
    for _ in range(rounds):
        for name, batches in pipelines.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                done[name] += len(next(batches))
            spent[name] += time.perf_counter() - start
    return {name: done[name] / spent[name] for name in pipelines}


def _reader(cache_folder: str, barrier, queue) -> None:
    """One trial-like reader: open the cache, run an epoch, touch every page, then report memory."""
    cache = DecodedCache(Path(cache_folder))
    sampler = TrainPatchSampler(cache, np.arange(len(cache)), np.zeros(len(cache), np.float32), patch_size=PATCH,
                                patches_per_image=2, batch_size=BATCH, hflip=True, seed=0, device="cpu",
                                mean=MEAN, std=STD)
    for _ in sampler.epoch(0):
        pass
    int(cache.data[::4096].sum())  # every page of the map is resident in this process
    barrier.wait()  # all readers alive at once: shared pages are split between them in PSS
    queue.put(_memory(cache_folder))
    barrier.wait()


def _memory(cache_folder: str) -> dict:
    """RSS/PSS of this process in MiB, in total and for the cache's mapping (from /proc)."""
    out = {"rss": 0.0, "pss": float("nan"), "map_rss": 0.0, "map_pss": float("nan")}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(value.split()[0]) / 1024
        inside = False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            if "-" in line.split(" ", 1)[0]:  # a mapping header line
                inside = line.rstrip().endswith("data.u8") and cache_folder in line
            elif inside and line.startswith(("Rss:", "Pss:")):
                key = "map_" + line[:3].lower()
                out[key] = (0.0 if out[key] != out[key] else out[key]) + int(line.split()[1]) / 1024
    except OSError:
        import resource

        out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def reader_memory(cache_folder: str, readers: int) -> dict:
    ctx = mp.get_context("spawn")  # fresh interpreters, like separate trials
    barrier, queue = ctx.Barrier(readers), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(cache_folder, barrier, queue)) for _ in range(readers)]
    for p in procs:
        p.start()
    stats = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return {k: sum(s[k] for s in stats) for k in stats[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="number of generated 1024x768 JPEGs")
    parser.add_argument("--seconds", type=float, default=15.0, help="time spent measuring each pipeline")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "hyperiqa-bench-koniq",
                        help="where the generated KonIQ-layout folder is kept")
    parser.add_argument("--workers", type=int, default=0, help="cache build processes (0 = one per core)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both pipelines (0 = torch's default). On a busy machine use 1: "
                             "the original's many tiny ops slow down badly when OpenMP threads are preempted")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    paths = make_koniq_folder(args.root, args.images)
    print(f"dataset: {len(paths)} JPEGs 1024x768 in {args.root / '1024x768'} ({time.perf_counter() - t0:.1f} s); "
          f"torch threads {torch.get_num_threads()}, {mp.cpu_count()} cpus", flush=True)

    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=args.root))
    try:
        t0 = time.perf_counter()
        cache = DecodedCache.build_or_open(paths, cache_dir=cache_dir, short_side=384, resize_to=None,
                                           min_size=PATCH, workers=args.workers, log=lambda msg: None)
        build = time.perf_counter() - t0
        project = project_batches(cache)
        for _ in range(len(paths) * PATCHES_PER_IMAGE // BATCH + 1):  # warm-up: page cache, output buffers
            next(project)
        rates = measure({"original": original_batches(paths), "project": project}, args.seconds)
        original, project = rates["original"], rates["project"]
        folder, size_mib = str(cache.folder), cache.data.nbytes / 2**20
        del cache
        gc.collect()
        memory = {n: reader_memory(folder, n) for n in (1, 4)}
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    print(f"\n| pipeline (CPU, patch {PATCH}, batch {BATCH}) | patches/s |\n|---|---|")
    print(f"| (a) original: decode + resize + crop per patch | {original:,.0f} |")
    print(f"| (b) decoded cache + TrainPatchSampler | {project:,.0f} |")
    print(f"\ncache build (once): {build:.1f} s for {len(paths)} images ({len(paths) / build:.1f} images/s), "
          f"{size_mib:.1f} MiB")
    print("\n| readers | sum RSS MiB | sum PSS MiB | cache map: sum RSS MiB | cache map: sum PSS MiB |\n|---|---|---|---|---|")
    for n, m in memory.items():
        print(f"| {n} | {m['rss']:.0f} | {m['pss']:.0f} | {m['map_rss']:.1f} | {m['map_pss']:.1f} |")
    print(f"\nspeed-up (b)/(a): {project / original:.1f}x")


if __name__ == "__main__":
    main()
