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


def test_predict_evaluate_and_cross_dataset_score_an_image_alike_under_bf16(tiny_cfg, tiny_dataset, tmp_path,
                                                                             monkeypatch, capsys):
    """One scoring path: with bf16 autocast on (here forced on the CPU), predict, evaluate and a search's
    --cross scoring give each image the same score. Images resized to the patch size make every crop the
    whole image, so the three differ in nothing but the path they take."""
    import csv

    import numpy as np

    from hyperiqa import evaluate, inference, predict
    from hyperiqa.evaluation import score_checkpoint
    from tests.test_cli import cli
    from tuning.sweep import crosseval

    monkeypatch.setattr(inference, "amp_dtype", lambda device, amp: torch.bfloat16 if amp else None)
    cfg = tiny_cfg(epochs=1, resize_to=[32, 32], cache_dir=str(tmp_path / "cache"))
    solver = Solver(cfg, log=quiet)
    assert solver.scoring.dtype == torch.bfloat16
    solver.save_checkpoint(tmp_path / "ckpt", next(solver.epochs()))
    code, out, err = cli(evaluate.main, ["--checkpoint", str(tmp_path / "ckpt"), "--split", "all",
                                         "--predictions", str(tmp_path / "eval.csv")], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "eval.csv").read_text().splitlines()))
    by_name = {row["path"].split("/")[-1]: float(row["prediction"]) for row in rows}
    files = sorted(tiny_dataset.glob("*.png"))
    code, out, err = cli(predict.main, ["--checkpoint", str(tmp_path / "ckpt"), "--crops", "3",
                                        "--batch-size", "5", *map(str, files)], capsys)
    assert code == 0, err
    predicted = {line.split(",")[0].split("/")[-1]: float(line.split(",")[1]) for line in out.splitlines()[1:]}
    cross = score_checkpoint(tmp_path / "ckpt", "csv", str(tiny_dataset), options={"csv": "labels.csv"},
                             log=quiet)
    crossed = {p.split("/")[-1]: v for p, v in zip(cross.paths, cross.predictions)}
    assert set(predicted) == set(by_name) == set(crossed) and len(files) == 24
    names = sorted(by_name)
    want = np.array([by_name[n] for n in names])
    np.testing.assert_allclose([predicted[n] for n in names], want, rtol=1e-5)  # the CSV's 6 decimals
    np.testing.assert_allclose([crossed[n] for n in names], want, rtol=1e-6)
    assert sorted(float(r["label"]) for r in rows) == pytest.approx(sorted(cross.labels), rel=1e-6)
    entry = crosseval.evaluate(tmp_path / "ckpt", [["csv", str(tiny_dataset / "labels.csv")]], log=quiet)[0]
    assert entry["srcc"] == pytest.approx(cross.metrics()["srcc"])
    # bf16 was really on: the fp32 scores of the same crops differ.
    model = solver.model.eval()
    crops = [inference.crops(inference.load_image(f, patch=32, short_side=None, resize_to=(32, 32)), patch=32,
                             n=1, seed=0) for f in files]
    fp32 = inference.score(model, crops, mean=model.input_mean, std=model.input_std, device="cpu", batch_size=8)
    assert np.abs(fp32 - np.array([by_name[f.name] for f in files])).max() > 1e-4


@pytest.mark.parametrize("capability, amp, want", [
    ((9, 0), True, torch.bfloat16),   # H100
    ((8, 0), True, torch.bfloat16),   # A100
    ((7, 5), True, None),             # T4: bf16 only emulated -> fp32
    ((7, 0), True, None),             # V100
    ((9, 0), False, None),            # amp off
])
def test_autocast_dtype_follows_the_gpus_compute_capability(monkeypatch, capability, amp, want):
    from hyperiqa import inference

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    scoring = inference.Scoring(None, torch.device("cuda", 0), amp=amp, channels_last=True)
    assert scoring.dtype is want and inference.amp_dtype(torch.device("cuda", 0), amp) is want
    assert inference.amp_dtype(torch.device("cpu"), True) is None  # the CPU runs fp32
    assert scoring.channels_last and not inference.Scoring(None, "cpu", amp=amp, channels_last=True).channels_last


def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_compares_per_image_scores_and_expects_the_capabilitys_dtype():
    """bench/gpu_check.py (e) and (g): near-tied scores that swap ranks agree; a moved score does not."""
    gc = _gpu_check()
    want = {"a": 50.0, "b": 50.001, "c": 60.0}
    swapped = {"a": 50.002, "b": 50.0005, "c": 60.01}  # ranks of a and b swap: within 2e-3 relative
    assert gc.compare_predictions(swapped, want) == {"compared": 3, "missing": 0, "beyond_rtol": 0,
                                                     "max_rel_diff": pytest.approx(0.01 / 60)}
    assert gc._agreement("x", gc.compare_predictions(swapped, want))[1] is None
    moved = {**want, "c": 60.5, "d": 1.0}
    cmp = gc.compare_predictions(moved, want)
    assert (cmp["beyond_rtol"], cmp["missing"]) == (1, 1)
    assert "1 of 3 images beyond rtol" in gc._agreement("x", cmp)[1]
    assert [gc.expected_amp_dtype(c) for c in ([9, 0], [8, 6], [7, 5], None)] == \
        ["bfloat16", "bfloat16", "fp32", "fp32"]
