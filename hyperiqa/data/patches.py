"""Batches of normalised patches cut from the decoded cache, on the training device.

All random choices of an epoch (order, crop offsets, flips) are drawn up front on the CPU from a
generator seeded by (seed, epoch), so epoch e is the same whether or not the run was resumed, and
moved to the device once per epoch: a batch then costs one gather and a few elementwise kernels, with
no host-device synchronisation.

A crop's P rows are each contiguous in the cache (P*3 bytes), so a batch is gathered as B*P rows from
an overlapping-window view of the flat buffer: P*3 times fewer indices than gathering single bytes.
Within a batch the flipped crops are placed first, so flipping is one slice instead of a masked select.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hyperiqa.data.cache import DecodedCache

_UPLOAD_BYTES = 256 * 2**20  # host staging per copy when the split is uploaded to the device
_EVAL_STREAM = 0x5EED_E7A1  # separates the evaluation crops' random stream from the training epochs'


@dataclass(frozen=True)
class CropPlan:
    """One pass over the crops: item = position in `indices`; y, x = top-left; flip = mirrored."""

    item: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    flip: torch.Tensor
    flipped_per_batch: list[int]  # the first k crops of batch b are the flipped ones


class _ImageStore:
    """The split's images as one flat uint8 buffer: on the device when it fits, else the shared memmap."""

    def __init__(self, cache: DecodedCache, indices: np.ndarray, patch_size: int, device: torch.device,
                 device_cache_bytes: int):
        shapes = cache.shapes[indices]
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        if (shapes < patch_size).any():
            bad = int(indices[np.argmax((shapes < patch_size).any(axis=1))])
            raise ValueError(f"image {cache.paths[bad]} is {tuple(cache.shapes[bad])}, smaller than the "
                             f"patch size {patch_size}; build the cache with min_size >= patch_size")
        self.device, self.patch_size = device, patch_size
        self.heights = torch.from_numpy(shapes[:, 0].copy())
        self.widths = torch.from_numpy(shapes[:, 1].copy())
        row = patch_size * 3
        total = cache.nbytes(indices)
        self.on_device = device.type != "cpu" and total <= device_cache_bytes
        if self.on_device:
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self.offsets = torch.from_numpy(offsets)
            data = torch.empty(total, dtype=torch.uint8, device=device)
            for chunk in _chunks(sizes, _UPLOAD_BYTES):  # bounded host memory, whatever the split's size
                flat = np.concatenate([cache.image(int(indices[i])).reshape(-1) for i in chunk])
                data[offsets[chunk[0]]:offsets[chunk[0]] + flat.size].copy_(torch.from_numpy(flat))
            self.windows = data.as_strided((data.numel() - row + 1, row), (1, 1))
        else:
            # Zero-copy view of the memmap: every trial on the machine reads the same page-cache pages.
            self.offsets = torch.from_numpy(cache.offsets[indices].copy())
            data = cache.data
            self.windows_np = np.lib.stride_tricks.as_strided(data, (data.size - row + 1, row), (1, 1),
                                                              writeable=False)

    def starts(self, plan: CropPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte offset of each crop's first row, and each crop's row stride; on the gather's device."""
        w3 = self.widths[plan.item] * 3
        start = self.offsets[plan.item] + plan.y * w3 + plan.x * 3
        target = self.device if self.on_device else torch.device("cpu")
        return start.to(target), w3.to(target)

    def gather(self, start: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
        """(B, P, P, 3) uint8 on `device`: the crops starting at `start`, rows `w3` bytes apart."""
        p = self.patch_size
        rows = (start[:, None] + torch.arange(p, device=start.device) * w3[:, None]).reshape(-1)
        if self.on_device:
            return self.windows[rows].view(-1, p, p, 3)
        crops = torch.from_numpy(self.windows_np[rows.numpy()]).view(-1, p, p, 3)
        if self.device.type == "cpu":
            return crops
        return crops.pin_memory().to(self.device, non_blocking=True)


def _chunks(sizes: np.ndarray, limit: int) -> list[list[int]]:
    """Consecutive positions grouped so that each group's total size stays near `limit`."""
    groups, current, total = [], [], 0
    for i, size in enumerate(sizes):
        if current and total + size > limit:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += int(size)
    return [*groups, current] if current else groups


class _Normaliser:
    """uint8 (B,P,P,3) with the first k crops to be mirrored -> float32 (B,3,P,P), (x/255 - mean)/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool):
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale, self.bias = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.channels_last = channels_last
        self.pool = _HostBuffers(channels_last) if device.type == "cpu" else None

    def __call__(self, crops: torch.Tensor, flipped: int) -> torch.Tensor:
        b, p = crops.shape[0], crops.shape[1]
        if self.pool is not None:
            out = self.pool.get(b, p)
        else:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            out = torch.empty((b, 3, p, p), dtype=torch.float32, device=crops.device, memory_format=fmt)
        if flipped:
            out[:flipped].copy_(crops[:flipped].flip(2).permute(0, 3, 1, 2))
        if flipped < b:
            out[flipped:].copy_(crops[flipped:].permute(0, 3, 1, 2))
        return out.mul_(self.scale).add_(self.bias)


class _HostBuffers:
    """Reuses CPU output buffers that no tensor references any more.

    glibc hands allocations above 32 MB back to the OS on free, so a fresh (96,3,224,224) float batch
    is page-faulted in on every step: that alone costs as much as cutting and normalising it. Each
    buffer is a numpy array that every tensor made from it keeps a reference to, so its reference count
    says exactly whether a batch (or any view of it) is still alive somewhere.
    """

    def __init__(self, channels_last: bool, keep: int = 4):
        self.channels_last, self.keep = channels_last, keep
        self.arrays: list[np.ndarray] = []

    def get(self, b: int, p: int) -> torch.Tensor:
        shape = (b, p, p, 3) if self.channels_last else (b, 3, p, p)
        arr = next((a for a in self.arrays if a.shape == shape and sys.getrefcount(a) <= 3), None)
        if arr is None:
            arr = np.empty(shape, np.float32)
            self.arrays = [arr, *self.arrays[: self.keep - 1]]
        out = torch.from_numpy(arr)
        return out.permute(0, 3, 1, 2) if self.channels_last else out


def _generator(*words: int) -> torch.Generator:
    # SeedSequence mixes the words into a well-spread seed that is stable across Python versions.
    seed = int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def _offsets(gen: torch.Generator, limit: torch.Tensor) -> torch.Tensor:
    """Uniform integers in [0, limit) per element (float64 keeps this exact for any image size)."""
    return (torch.rand(limit.shape, generator=gen, dtype=torch.float64) * limit).long().clamp_(max=limit - 1)


def batch_bounds(num_patches: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each training batch: batch_size each, the last one the rest.

    A rest of ONE patch joins the batch before it (batch_size + 1) instead: BatchNorm in training mode
    cannot normalise a batch of one ("Expected more than 1 value per channel"), and folding keeps every
    patch of the epoch, where dropping it would not. Every other configuration is cut as before.
    """
    starts = list(range(0, num_patches, batch_size))
    if num_patches % batch_size == 1 and len(starts) > 1:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], num_patches])]


def _flips_first(item, y, x, flip, bounds: list[tuple[int, int]]) -> CropPlan:
    """Reorder each batch so its flipped crops come first; the batch's set of crops is unchanged."""
    sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.long)
    batch = torch.repeat_interleave(torch.arange(len(bounds)), sizes)  # the batch of each crop
    order = torch.argsort(batch * 2 + (~flip).long(), stable=True)
    counts = torch.zeros(len(bounds), dtype=torch.long).index_add_(0, batch, flip.long())
    return CropPlan(item[order], y[order], x[order], flip[order], counts.tolist())


class TrainPatchSampler:
    """Each image `patches_per_image` times per epoch, shuffled, with random crops and flips."""

    def __init__(self, cache: DecodedCache, indices, labels, *, patch_size: int, patches_per_image: int,
                 batch_size: int, hflip: bool, seed: int, device, mean, std, channels_last: bool = False,
                 device_cache_bytes: int = 0):
        """`indices`: cache records of this split; `labels`: one per cache record (float)."""
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ValueError("TrainPatchSampler needs at least one image")
        labels = np.asarray(labels, dtype=np.float32)
        if len(labels) != len(cache):
            raise ValueError(f"labels has {len(labels)} values; expected one per cache record ({len(cache)})")
        self.device = torch.device(device)
        self.patch_size, self.batch_size, self.hflip, self.seed = patch_size, batch_size, hflip, seed
        self.patches_per_image = patches_per_image
        self.num_patches = len(self.indices) * patches_per_image
        self.bounds = batch_bounds(self.num_patches, batch_size)
        self.store = _ImageStore(cache, self.indices, patch_size, self.device, device_cache_bytes)
        self.labels = torch.from_numpy(labels[self.indices])
        self.normalise = _Normaliser(mean, std, self.device, channels_last)

    def __len__(self) -> int:
        return len(self.bounds)

    def plan(self, epoch: int) -> CropPlan:
        """The crops of `epoch`, a pure function of (seed, epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        gen = _generator(self.seed, epoch)
        n, p = len(self.indices), self.patch_size
        item = torch.randperm(self.num_patches, generator=gen) % n
        y = _offsets(gen, self.store.heights[item] - p + 1)
        x = _offsets(gen, self.store.widths[item] - p + 1)
        flip = torch.rand(self.num_patches, generator=gen) < 0.5 if self.hflip else torch.zeros_like(item, dtype=torch.bool)
        return _flips_first(item, y, x, flip, self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan(epoch)
        start, w3 = self.store.starts(plan)
        labels = self.labels[plan.item].to(self.device)
        for (a, b), flipped in zip(self.bounds, plan.flipped_per_batch):
            sl = slice(a, b)
            yield self.normalise(self.store.gather(start[sl], w3[sl]), flipped), labels[sl]


class EvalCrops:
    """`crops_per_image` crops per image, drawn once from `seed`: identical on every call and in every trial.

    draw(epoch) replaces them with the crops of one epoch (legacy random_eval_crops); draw() restores
    the fixed ones.
    """

    def __init__(self, cache: DecodedCache, indices, *, patch_size: int, crops_per_image: int, batch_size: int,
                 seed: int, device, mean, std, channels_last: bool = False, device_cache_bytes: int = 0):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_images = len(self.indices)
        if self.num_images == 0:
            raise ValueError("EvalCrops needs at least one image")
        self.device, self.batch_size = torch.device(device), batch_size
        self.num_patches = self.num_images * crops_per_image
        self.seed, self.patch_size, self.crops_per_image = seed, patch_size, crops_per_image
        self.store = _ImageStore(cache, self.indices, patch_size, self.device, device_cache_bytes)
        self.normalise = _Normaliser(mean, std, self.device, channels_last)
        self.draw()

    def draw(self, epoch: int | None = None) -> None:
        """Draw the crops: the fixed ones (epoch None) or those of `epoch`, a pure function of (seed, epoch)."""
        gen = _generator(self.seed, _EVAL_STREAM, *(() if epoch is None else (epoch,)))
        item = torch.arange(self.num_images).repeat_interleave(self.crops_per_image)
        y = _offsets(gen, self.store.heights[item] - self.patch_size + 1)
        x = _offsets(gen, self.store.widths[item] - self.patch_size + 1)
        self.plan = CropPlan(item, y, x, torch.zeros_like(item, dtype=torch.bool), [0] * len(self))
        self._start, self._w3 = self.store.starts(self.plan)
        self._item = item.to(self.device)

    def __len__(self) -> int:
        return math.ceil(self.num_patches / self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield self.normalise(self.store.gather(self._start[sl], self._w3[sl]), 0), self._item[sl]

