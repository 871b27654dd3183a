"""Data layer: dataset readers -> seeded split -> decoded cache -> patch batches on the training device."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hyperiqa.data.cache import DecodedCache
from hyperiqa.data.patches import EvalCrops, TrainPatchSampler
from hyperiqa.runtime import device_cache_bytes
from hyperiqa.utils import default_cache_dir

if TYPE_CHECKING:
    from hyperiqa.config import TrainConfig
    from hyperiqa.data.datasets import DatasetSpec
    from hyperiqa.data.splits import Split

__all__ = ["DecodedCache", "EvalCrops", "PreparedData", "TrainPatchSampler", "open_cache", "prepare_data"]


@dataclass
class PreparedData:
    spec: DatasetSpec
    split: Split
    cache: DecodedCache
    labels: np.ndarray  # float32, one per record ("higher is better")
    train: TrainPatchSampler
    val: EvalCrops | None
    test: EvalCrops | None


def open_cache(cfg: TrainConfig, spec: DatasetSpec | None = None, *, log: Callable[[str], None] = print) -> DecodedCache:
    """The decoded cache of cfg's dataset and resize rule, built first if this machine has none.

    Called by every training process, and by tuning's driver before any trial starts (so that trials
    only open it): both must derive the same key from the same config."""
    if spec is None:
        from hyperiqa.data.datasets import dataset_from_config

        spec = dataset_from_config(cfg)
    short_side = spec.default_short_side if cfg.resize_short_side is None else cfg.resize_short_side
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return DecodedCache.build_or_open([r.path for r in spec.records], cache_dir=cache_dir / "decoded",
                                      short_side=short_side or None,
                                      resize_to=tuple(cfg.resize_to) if cfg.resize_to else None,
                                      min_size=cfg.patch_size, workers=cfg.cache_workers, log=log)


def prepare_data(cfg: TrainConfig, *, device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 log: Callable[[str], None] = print) -> PreparedData:
    """Everything the solver reads, for one config. The cache covers all records of the dataset, so
    every trial on a machine (whatever its split or seed) shares one decoded copy."""
    from hyperiqa.data.datasets import dataset_from_config  # lazy: readers pull in xlsx/mat parsers
    from hyperiqa.data.splits import make_split

    device = torch.device(device)
    spec = dataset_from_config(cfg)
    split = make_split(spec, cfg)  # refuses a split without training images or too few to evaluate
    cache = open_cache(cfg, spec, log=log)
    labels = np.array([r.label for r in spec.records], dtype=np.float32)
    cuda = device.type == "cuda"
    common = dict(patch_size=cfg.patch_size, seed=cfg.seed, device=device, mean=mean, std=std,
                  channels_last=cuda and cfg.channels_last)
    # One device budget for all three splits, training first: it is read 25x more often per epoch.
    # It never exceeds a share of the process's GPU memory cap (hyperiqa.runtime.device_cache_budget).
    budget = [device_cache_bytes(device, cfg.device_cache_gb, cfg.gpu_memory_fraction)]

    def claim(indices: np.ndarray) -> int:
        size = cache.nbytes(indices)
        granted = budget[0] if size <= budget[0] else 0
        budget[0] -= size if granted else 0
        return granted

    train = TrainPatchSampler(cache, split.train, labels, patches_per_image=cfg.train_patches,
                              batch_size=cfg.batch_size, hflip=cfg.hflip, device_cache_bytes=claim(split.train),
                              **common)

    def crops(indices: np.ndarray) -> EvalCrops | None:
        if len(indices) == 0:
            return None
        return EvalCrops(cache, indices, crops_per_image=cfg.test_patches, batch_size=cfg.eval_batch_size,
                         device_cache_bytes=claim(indices), **common)

    return PreparedData(spec, split, cache, labels, train, crops(split.val), crops(split.test))
