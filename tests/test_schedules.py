"""Each schedule's LR factor at chosen iterations, and that both param groups follow it at a fixed ratio."""

import math

import pytest
import torch

from hyperiqa.config import TrainConfig
from hyperiqa.schedules import build_scheduler, schedule_factor

N = 4  # iterations per epoch


def factors(its, **kw):
    f = schedule_factor(TrainConfig(**kw), N)
    return [f(i) for i in its]


def test_step_decays_every_step_size_epochs():
    # the last iteration of epoch 6 is still undecayed; the first of epoch 7 is x0.1, epoch 13 x0.01
    got = factors([0, 6 * N - 1, 6 * N, 12 * N - 1, 12 * N], schedule="step", step_size=6, step_factor=0.1)
    assert got == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_cosine_reaches_floor_at_the_end_and_stays():
    got = factors([0, 5 * N, 10 * N, 15 * N], schedule="cosine", epochs=10, min_lr_ratio=0.1)
    assert got == pytest.approx([1.0, 0.55, 0.1, 0.1])
    mid = factors([N * 10 // 4], schedule="cosine", epochs=10, min_lr_ratio=0.0)[0]
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_constant_and_exponential():
    assert factors([0, 7, 100], schedule="constant") == [1.0, 1.0, 1.0]
    got = factors([0, N - 1, N, 3 * N + 2], schedule="exponential", exp_gamma=0.5)
    assert got == pytest.approx([1.0, 1.0, 0.5, 0.125])


@pytest.mark.parametrize("schedule", ["step", "cosine", "constant", "exponential"])
def test_linear_warmup_multiplies_every_schedule(schedule):
    plain = schedule_factor(TrainConfig(schedule=schedule), N)
    warm = schedule_factor(TrainConfig(schedule=schedule, warmup_epochs=1.5), N)  # 6 warmup iterations
    for it, w in [(0, 1 / 6), (2, 3 / 6), (5, 1.0), (6, 1.0), (40, 1.0)]:
        assert warm(it) == pytest.approx(w * plain(it))


def test_scheduler_keeps_group_ratio_per_iteration():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    sched = build_scheduler(opt, TrainConfig(schedule="step", step_size=1, step_factor=0.5), N)
    seen = []
    for _ in range(2 * N + 1):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[N - 1] == pytest.approx([1e-3, 1e-2])
    assert seen[N] == pytest.approx([5e-4, 5e-3])  # decays at the first iteration of epoch 2, not later
    assert seen[2 * N] == pytest.approx([2.5e-4, 2.5e-3])
    assert all(hi / lo == pytest.approx(10.0) for lo, hi in seen)
