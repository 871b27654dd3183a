"""Learning-rate schedules and the optimizer's life cycle: the one place that decides, per iteration,
each param group's LR (group_factors) and, per epoch, whether Adam starts afresh and whether the head
is optimised at all (epoch_start). The solver only applies what these say.

The factor for iteration `it` (0-based count of optimizer steps taken so far) is computed from the
fractional epoch t = it / iters_per_epoch, so a schedule written in epochs behaves the same for any
batch size. By default the same factor multiplies both param groups' initial LRs: the backbone and
head groups keep their ratio (cfg.lr_ratio) for the whole run (the original let them drift,
docs/original-defects.md).

- step:        step_factor ** floor(t / step_size)     (paper: x0.1 every 6 epochs)
- cosine:      min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t / epochs)) / 2, held at the floor after
- constant:    1
- exponential: exp_gamma ** floor(t)                    (decays once per epoch)

Optional linear warmup (cfg.warmup_epochs > 0) multiplies the factor by (it + 1) / warmup_iters for the
first warmup_iters = ceil(warmup_epochs * iters_per_epoch) iterations, so the very first step already
uses a non-zero LR.

cfg.legacy reproduces the original solver's rules instead, one switch per behaviour (epochs 1-based):
- backbone_lr_constant: the backbone's factor is 1 for the whole run.
- lr_one_epoch_late:    the factor changes only between epochs, and epoch e uses the value of the first
                        iteration of epoch e-1 (epochs 1 and 2 the initial LR). The original computed
                        the next epoch's LR after each epoch from the index of the epoch just finished,
                        so its step decay reaches epochs 8 and 14, not 7 and 13.
- lr_ratio_reset:       from epoch 11 on, the head's factor is divided by lr_ratio: head LR = the
                        scheduled backbone LR (the original set lrratio = 1 once its 0-based epoch
                        index passed 8, which took effect in the following epoch's optimizer).
- optimizer_reset:      Adam's state is emptied before every epoch but the first; that is all a new
                        Adam over the same groups differs in, as the LRs come from the factors.
- head_frozen_after_epoch1: the head group holds no parameters from epoch 2 on (the original's second
                        optimizer got an exhausted one-shot iterator): no Adam step, no weight decay,
                        though its gradients are still computed. Its group keeps its LR, as the
                        original's empty group did, so the reported head LR still follows the rules.
(random_eval_crops concerns evaluation only: Solver.evaluate.)
With the paper's configuration (step, 6, 0.1; backbone_lr 2e-5, lr_ratio 10), legacy [all] gives
backbone 2e-5 in every epoch and head 2e-4 (epochs 1-7), 2e-5 (8-10), 2e-6 (11-13), 2e-7 (14-16):
the original's LRs exactly (tests/test_legacy.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hyperiqa.config import TrainConfig


def schedule_factor(cfg: TrainConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """The schedule's LR multiplier as a function of the iteration count (before cfg.legacy)."""
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


# 0-based index of the first epoch the original trained at lrratio 1: its check `t > 8` first holds
# after epoch t = 9, and the optimizer built then trains epoch t + 1.
RATIO_RESET_EPOCH = 10


def group_factors(cfg: TrainConfig, iters_per_epoch: int) -> list[Callable[[int], float]]:
    """[backbone, head] LR multipliers as functions of the iteration count, cfg.legacy applied."""
    n, legacy = iters_per_epoch, cfg.legacy_defects
    factor = schedule_factor(cfg, n)

    def one_epoch_late(it: int) -> float:
        return factor(max(it // n - 1, 0) * n)

    scheduled = one_epoch_late if "lr_one_epoch_late" in legacy else factor

    def constant(it: int) -> float:
        return 1.0

    def ratio_reset(it: int) -> float:
        return scheduled(it) / cfg.lr_ratio if it >= RATIO_RESET_EPOCH * n else scheduled(it)

    backbone = constant if "backbone_lr_constant" in legacy else scheduled
    head = ratio_reset if "lr_ratio_reset" in legacy else scheduled
    return [backbone, head]


@dataclass(frozen=True)
class EpochStart:
    """What happens to the optimizer before an epoch."""

    reset_optimizer: bool  # empty Adam's state (moments, step counts)
    train_head: bool       # the head group holds the head's parameters (else it is empty)


def epoch_start(cfg: TrainConfig, epoch: int) -> EpochStart:
    """The optimizer's state before 0-based `epoch`: by default one Adam that trains everything throughout."""
    legacy = cfg.legacy_defects
    return EpochStart(reset_optimizer="optimizer_reset" in legacy and epoch > 0,
                      train_head="head_frozen_after_epoch1" not in legacy or epoch == 0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over the [backbone, head] param groups; call .step() after every optimizer.step()."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, group_factors(cfg, iters_per_epoch))
