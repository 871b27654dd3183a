"""What a first GPU run would meet (issue 31), checked on the CPU: CUDA's RNG left alone by CPU runs,
fused Adam kept through a resume, headroom under a shared GPU's memory cap, AMP by compute capability,
one scoring path for predict/evaluate/cross-dataset, and the fp32 weight generator."""

from __future__ import annotations

import pytest
import torch

from hyperiqa.solver import Solver

GiB = 2**30


def quiet(*_):
    pass


def test_a_cpu_run_never_touches_cuda_even_where_torch_sees_gpus(tiny_cfg, tmp_path, monkeypatch):
    """Ray 2.60 shows the host's GPUs to CPU trials: a checkpoint must not initialise CUDA for its RNG.

    Training steps are outside the mock: torch 2.14's Adam.step itself asks the current CUDA stream
    whether it is capturing a graph whenever torch.cuda.is_available() (optimizer.py,
    _accelerator_graph_capture_health_check), which only hiding the GPUs from the process avoids."""
    solver = Solver(tiny_cfg(epochs=2), log=quiet)
    metrics = next(solver.epochs())
    called = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "device_count", "init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: called.append(_n))
    solver.save_checkpoint(tmp_path / "ckpt", metrics)
    resumed = Solver(tiny_cfg(epochs=2), log=quiet)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert called == []
    assert not torch.cuda.is_initialized()


def test_fused_adam_stays_fused_after_loading_a_foreach_state(tiny_cfg, tmp_path, monkeypatch):
    """A state written by a CPU (foreach) run, resumed where Adam is fused: CPU Adam is fused in torch 2.14."""
    monkeypatch.setattr(Solver, "_optimizer_kernel", lambda self: {"foreach": True})
    solver = Solver(tiny_cfg(epochs=2), log=quiet)
    solver.save_checkpoint(tmp_path / "ckpt", next(solver.epochs()))
    monkeypatch.setattr(Solver, "_optimizer_kernel", lambda self: {"fused": True})
    resumed = Solver(tiny_cfg(epochs=2), log=quiet)
    resumed.load_checkpoint(tmp_path / "ckpt")
    for group in resumed.optimizer.param_groups:
        assert (group["fused"], group["foreach"]) == (True, None)
        steps = [resumed.optimizer.state[p]["step"] for p in group["params"]]
        assert steps and all(s.dtype == torch.float32 and float(s) == 4 for s in steps)
    assert next(resumed.epochs())["epoch"] == 2
    assert all(g["fused"] for g in resumed.optimizer.param_groups)


def test_a_shared_gpus_memory_cap_leaves_room_for_each_process_cuda_context():
    from hyperiqa import runtime

    allowance = runtime.CUDA_CONTEXT_ALLOWANCE_GIB
    assert allowance == 0.6
    # Two trials at 0.5 of an 80 GiB H100: allocator caps plus contexts fill the card, no more.
    fraction = runtime.allocator_fraction(0.5, 80 * GiB)
    assert fraction == pytest.approx((40 - allowance) / 80)
    assert 2 * (fraction * 80 + allowance) == pytest.approx(80)
    assert runtime.allocator_fraction(0.25, 16 * GiB) == pytest.approx((4 - allowance) / 16)
    assert runtime.allocator_fraction(1.0, 80 * GiB) == pytest.approx(1 - allowance / 80)
    from hyperiqa.utils import UserError

    with pytest.raises(UserError, match="gpu_memory_fraction = 0.1: 0.8 GiB of this 8 GiB GPU"):
        runtime.allocator_fraction(0.1, 8 * GiB)
