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
