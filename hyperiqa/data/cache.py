"""Decode every image once into one flat uint8 file that all trials on a machine memory-map.

The original pipeline decoded the full JPEG for every patch. Here each image is decoded, converted to
RGB and resized once; the result lives in `<cache_dir>/<key>/data.u8` with an index of shapes and byte
offsets. The key hashes the file list, every file's size and mtime and the resize rule, so a changed
file or rule gives a new cache. Reads go through a read-only np.memmap: N trials share the OS page
cache instead of holding N copies.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image, ImageOps

from hyperiqa.utils import UserError

CACHE_VERSION = 1  # bump when the decoding rules change: old caches then stop matching
_CHUNK = 8  # images per worker task: small enough for steady progress, large enough to amortise IPC
# How long a process waits for another one's build without seeing it progress (its temporary data file
# growing) before giving up with a one-line error: a builder that hangs must not hold idle GPUs forever.
LOCK_STALL_S = 600.0


class CacheBuildError(UserError):
    """One or more images could not be decoded; the message names every one."""


# --- decoding (runs in worker processes) ------------------------------------------------------

def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16-bit values are scaled, not clipped."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def target_size(width: int, height: int, short_side: int | None, resize_to: tuple[int, int] | None,
                min_size: int) -> tuple[int, int]:
    """(width, height) after the resize rule, then upscaled (aspect kept) until both sides >= min_size."""
    if resize_to is not None:
        width, height = resize_to
    elif short_side:
        scale = short_side / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    if min(width, height) < min_size:
        scale = min_size / min(width, height)
        width, height = max(min_size, int(np.ceil(width * scale))), max(min_size, int(np.ceil(height * scale)))
    return width, height


def decode_image(path: str, short_side: int | None = None, resize_to: tuple[int, int] | None = None,
                 min_size: int = 1) -> np.ndarray:
    """Decode one file to an (H, W, 3) uint8 array following the cache's resize rule."""
    return _decode(path, short_side, resize_to, min_size)[0]


def _decode(path: str, short_side, resize_to, min_size) -> tuple[np.ndarray, bool]:
    """The array, and whether min_size (not the resize rule) decided its size."""
    with Image.open(path) as img:
        img.load()  # decode fully here so a truncated file fails now, not lazily later
        rgb = to_rgb(ImageOps.exif_transpose(img))
    planned = target_size(rgb.width, rgb.height, short_side, resize_to, 1)
    size = target_size(rgb.width, rgb.height, short_side, resize_to, min_size)
    if size != rgb.size:
        # resize_to reproduces torchvision's Resize on PIL images (bilinear, antialiased) as the
        # original code used it; the aspect-keeping rule uses the sharper Lanczos filter.
        resample = Image.Resampling.BILINEAR if resize_to is not None else Image.Resampling.LANCZOS
        rgb = rgb.resize(size, resample)
    return np.asarray(rgb, dtype=np.uint8), size != planned


def _decode_chunk(items: list[tuple[int, str]], rule: dict) -> list[tuple[int, np.ndarray | None, bool, str]]:
    out = []
    for i, path in items:
        try:
            out.append((i, *_decode(path, rule["short_side"], rule["resize_to"], rule["min_size"]), ""))
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the user by file name
            out.append((i, None, False, f"{type(exc).__name__}: {exc}"))
    return out


def undecodable(paths: list[str]) -> dict[str, str]:
    """{path: why} of the files that PIL cannot decode fully (`python -m hyperiqa.data --verify-images`; lives
    here so that its worker processes find it by module name)."""
    bad = {}
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # PIL raises many types for a corrupt file; all mean "unreadable"
            bad[path] = f"{type(exc).__name__}: {exc}"
    return bad


# --- the cache --------------------------------------------------------------------------------

class DecodedCache:
    """A read-only view of a built cache: `image(i)` is a zero-copy (H, W, 3) view into `data`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        with np.load(self.folder / "index.npz", allow_pickle=False) as index:
            self.shapes: np.ndarray = index["shapes"].astype(np.int64)
            self.offsets: np.ndarray = index["offsets"].astype(np.int64)
        self.paths: list[str] = meta["paths"]
        self.upscaled: int = meta["upscaled"]
        self.data: np.ndarray = np.memmap(self.folder / "data.u8", dtype=np.uint8, mode="r",
                                          shape=(meta["total_bytes"],))

    def __len__(self) -> int:
        return len(self.offsets)

    def nbytes(self, indices: np.ndarray) -> int:
        """Decoded size of these records, in bytes."""
        shapes = self.shapes[indices]
        return int((shapes[:, 0] * shapes[:, 1]).sum() * 3)

    def image(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        start = self.offsets[i]
        return self.data[start:start + h * w * 3].reshape(h, w, 3)

    @classmethod
    def build_or_open(cls, paths: Sequence[str], *, cache_dir: Path, short_side: int | None,
                      resize_to: tuple[int, int] | None, min_size: int, workers: int = 0,
                      log: Callable[[str], None] = print) -> DecodedCache:
        """Open the cache for these files and this rule, building it first (once per machine) if needed."""
        paths = [str(Path(p).resolve()) for p in paths]
        if not paths:
            raise UserError("decoded cache: the dataset has no images")
        rule = {"short_side": short_side or None, "resize_to": tuple(resize_to) if resize_to else None,
                "min_size": int(min_size)}
        cache_dir = Path(cache_dir).expanduser().resolve()
        key = cache_key(paths, rule)
        folder = cache_dir / key
        cache = _open_if_valid(folder, paths)
        if cache is None:
            lock = FileLock(str(cache_dir / f"{key}.lock"))
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                lock.acquire(timeout=0)
            except Timeout:
                log(f"decoded cache: another process is building {folder}; waiting for it")
                _wait_for_builder(lock, folder)
            except OSError as exc:  # e.g. a cache_dir that exists on the driver's machine only, or read-only
                raise UserError(f"decoded cache: cannot create {cache_dir} ({exc.strerror or exc}); set cache_dir "
                                "to a writable folder that exists on every node") from None
            try:
                cache = _open_if_valid(folder, paths)  # the process we waited for may have built it
                if cache is None:
                    _build(folder, paths, rule, workers, log)
                    cache = _open_if_valid(folder, paths)
            finally:
                lock.release()
            if cache is None:
                raise UserError(f"decoded cache: {folder} is unreadable after building; delete it and retry")
        if cache.upscaled:
            warnings.warn(f"{cache.upscaled} of {len(cache)} images are smaller than {min_size} px on a side "
                          "and were upscaled to fit a patch", UserWarning, stacklevel=2)
        return cache


def _wait_for_builder(lock: FileLock, folder: Path, stall_s: float | None = None) -> None:
    """Acquire `lock` while the builder holding it makes progress; a UserError once it has not for stall_s."""
    stall_s = LOCK_STALL_S if stall_s is None else stall_s
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(5.0, max(stall_s / 4, 0.05)))
            return
        except Timeout:
            size = _building_size(folder)
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change >= stall_s:
                raise UserError(f"decoded cache: waited {stall_s:.0f} s for another process building {folder} "
                                f"without seeing it progress; if that process hangs, stop it (its lock is "
                                f"{lock.lock_file}) and start again") from None


def _building_size(folder: Path) -> int:
    """Bytes written so far by the builder of `folder` (its temporary sibling folder), 0 if none is seen."""
    total = 0
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        with contextlib.suppress(OSError):  # renamed into place or removed while we looked
            total += (tmp / "data.u8").stat().st_size
    return total


def available_cpus() -> int:
    """CPUs this process may run on (its affinity: a container's, taskset's or a scheduler's share), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def decoder_workers(requested: int = 0) -> int:
    """Decoder processes for a build: `requested` (cache_workers) if set, else one per CPU the process may use."""
    return requested if requested and requested > 0 else available_cpus()


def start_method() -> str | None:
    """'fork' where it is safe: workers need only PIL/numpy and start in milliseconds. A process that has
    started CUDA or other threads (a Ray worker: gRPC, CUDA) gets 'forkserver', since a forked child can
    inherit a lock some other thread held and hang; the server imports this module once, not per worker."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" not in methods:
        return None
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_initialized()
    if not cuda and _os_threads() <= 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def pool_context():
    """The multiprocessing context of start_method(); a fork server imports this module once, not each worker."""
    method = start_method()
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return context


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: count Python's threads (native ones go unseen)
        import threading

        return threading.active_count()


def cache_key(paths: Sequence[str], rule: dict) -> str:
    """Hash of the file list, each file's size and mtime, and the resize rule."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "rule": rule}, sort_keys=True).encode())
    missing = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if missing:
        raise UserError(f"decoded cache: {len(missing)} image file(s) not found: {', '.join(missing)}")
    return digest.hexdigest()[:24]


def _open_if_valid(folder: Path, paths: list[str]) -> DecodedCache | None:
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        ok = (meta.get("version") == CACHE_VERSION and meta.get("paths") == paths
              and (folder / "data.u8").stat().st_size == meta["total_bytes"])
        return DecodedCache(folder) if ok else None
    except (OSError, ValueError, KeyError):
        return None


def _build(folder: Path, paths: list[str], rule: dict, workers: int, log) -> None:
    """Decode into a temporary sibling folder and rename it into place only once complete."""
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed builder; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():  # an invalid cache (wrong version, truncated data): replace it
        shutil.rmtree(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        shapes, offsets, errors, total, small = _decode_all(tmp / "data.u8", paths, rule, workers, log)
        if errors:
            lines = "\n".join(f"  {paths[i]}: {msg}" for i, msg in sorted(errors.items()))
            raise CacheBuildError(f"decoded cache: {len(errors)} image(s) could not be decoded "
                                  f"(fix or remove them):\n{lines}")
        np.savez(tmp / "index.npz", shapes=shapes, offsets=offsets)
        meta = {"version": CACHE_VERSION, "rule": rule, "paths": paths, "total_bytes": int(total),
                "upscaled": small, "build_seconds": round(time.perf_counter() - start, 2)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
        log(f"decoded cache: {len(paths)} images, {total / 2**20:.1f} MiB in {folder} "
            f"({meta['build_seconds']} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_all(data_path: Path, paths: list[str], rule: dict, workers: int, log):
    """Decode every image (in parallel) and append it to `data_path`; offsets record where each went."""
    n = len(paths)
    shapes = np.zeros((n, 2), np.int64)
    offsets = np.zeros(n, np.int64)
    errors: dict[int, str] = {}
    small = total = done = 0
    log(f"decoded cache: decoding {n} images with {min(decoder_workers(workers), -(-n // _CHUNK))} "
        f"process(es) into {data_path.parent.name}")
    progress = _Progress(n, log)
    with open(data_path, "wb") as fh:
        for results in _map_chunks(paths, rule, workers):
            for i, arr, upscaled, err in results:
                done += 1
                if arr is None:
                    errors[i] = err
                    continue
                shapes[i], offsets[i] = arr.shape[:2], total
                fh.write(np.ascontiguousarray(arr).data)
                total += arr.nbytes
                small += upscaled
            progress.update(done)
        fh.flush()
        os.fsync(fh.fileno())
    return shapes, offsets, errors, total, small


def _map_chunks(paths: list[str], rule: dict, workers: int):
    """Yield decoded chunks as they finish; at most 2 chunks per worker in flight bounds memory."""
    items = list(enumerate(paths))
    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    workers = min(decoder_workers(workers), len(chunks))
    if workers <= 1:  # in-process: no start-up cost for tiny datasets
        for chunk in chunks:
            yield _decode_chunk(chunk, rule)
        return
    with cf.ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        todo = iter(chunks)
        pending = {pool.submit(_decode_chunk, c, rule) for c in _take(todo, 2 * workers)}
        while pending:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            pending |= {pool.submit(_decode_chunk, c, rule) for c in _take(todo, len(finished))}
            for future in finished:
                yield future.result()


def _take(iterator, n: int) -> list:
    return [chunk for _, chunk in zip(range(n), iterator)]


class _Progress:
    """Logs every ~10% or every ~5 s, whichever comes first."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.start = self.last_time = time.perf_counter()
        self.last_count = 0

    def update(self, count: int) -> None:
        now = time.perf_counter()
        if count == self.total or count - self.last_count >= self.total / 10 or now - self.last_time >= 5:
            rate = count / max(now - self.start, 1e-9)
            left = f", about {(self.total - count) / rate:.0f} s left" if count < self.total and rate > 0 else ""
            self.log(f"decoded cache: {count}/{self.total} images ({100 * count // self.total}%), "
                     f"{rate:.0f} images/s{left}")
            self.last_time, self.last_count = now, count
