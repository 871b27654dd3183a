"""Learning-rate schedules: one factory, one LambdaLR stepped after EVERY optimizer step.

The factor for iteration `it` (0-based count of optimizer steps taken so far) is computed from the
fractional epoch t = it / iters_per_epoch, so a schedule written in epochs behaves the same for any
batch size. The same factor multiplies every param group's initial LR: the backbone and head groups
keep their ratio (cfg.lr_ratio) for the whole run (the original code let them drift, REFERENCE.md §1).

- step:        step_factor ** floor(t / step_size)     (paper: x0.1 every 6 epochs)
- cosine:      min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t / epochs)) / 2, held at the floor after
- constant:    1
- exponential: exp_gamma ** floor(t)                    (decays once per epoch)

Optional linear warmup (cfg.warmup_epochs > 0) multiplies the factor by (it + 1) / warmup_iters for the
first warmup_iters = ceil(warmup_epochs * iters_per_epoch) iterations, so the very first step already
uses a non-zero LR.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hyperiqa.config import TrainConfig


def schedule_factor(cfg: TrainConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """The LR multiplier as a function of the iteration count (what LambdaLR calls)."""
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    n = iters_per_epoch
    warmup_iters = math.ceil(cfg.warmup_epochs * n)

    def base(it: int) -> float:
        # Integer division for the piecewise-constant schedules: no float rounding at epoch boundaries.
        if cfg.schedule == "step":
            return cfg.step_factor ** (it // (n * cfg.step_size))
        if cfg.schedule == "exponential":
            return cfg.exp_gamma ** (it // n)
        if cfg.schedule == "cosine":
            progress = min(it / (n * cfg.epochs), 1.0)
            return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {cfg.schedule!r}")

    def factor(it: int) -> float:
        warm = (it + 1) / warmup_iters if it < warmup_iters else 1.0
        return warm * base(it)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over all param groups; call .step() after every optimizer.step()."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, iters_per_epoch))
