"""The fixed solver: the tests that would have caught the original's bugs (docs/original-defects.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from hyperiqa import checkpoint as ckpt
from hyperiqa.solver import Solver

ITERS = 4  # tiny_cfg: 16 training images x 2 patches / batch 8
VOLATILE = ("time_s", "patches_per_s")  # wall-clock values, excluded from exact comparisons


def quiet(*_):
    pass


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def test_one_optimizer_every_param_in_one_group_and_lrs_follow_schedule(tiny_cfg):
    cfg = tiny_cfg(epochs=3, schedule="step", step_size=1, step_factor=0.5)
    solver = Solver(cfg, log=quiet)
    optimizer = solver.optimizer
    assert solver.iters_per_epoch == ITERS
    lrs = []
    optimizer.register_step_pre_hook(lambda opt, *_: lrs.append([g["lr"] for g in opt.param_groups]))
    trainable = {id(p) for p in solver.model.parameters() if p.requires_grad}
    for m in solver.epochs():
        assert solver.optimizer is optimizer  # never rebuilt (original defect 2)
        grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
        assert len(grouped) == len(set(grouped)) and set(grouped) == trainable  # defect 3: empty head group
        assert all(len(g["params"]) > 0 for g in optimizer.param_groups)
        steps = {int(optimizer.state[p]["step"]) for g in optimizer.param_groups for p in g["params"]}
        assert steps == {ITERS * m["epoch"]}  # Adam state kept and every parameter updated every step
    lo, hi = cfg.backbone_lr, cfg.backbone_lr * cfg.lr_ratio
    for it in (0, ITERS - 1, ITERS, 2 * ITERS, 3 * ITERS - 1):
        factor = 0.5 ** (it // ITERS)  # both groups decay (defect 1), ratio kept (defect 4)
        assert lrs[it] == pytest.approx([lo * factor, hi * factor], rel=1e-12)
    assert len(lrs) == 3 * ITERS
    assert m["lr_head"] / m["lr_backbone"] == pytest.approx(cfg.lr_ratio)


def test_frozen_stages_stay_bit_identical_and_out_of_the_optimizer(tiny_cfg):
    solver = Solver(tiny_cfg(epochs=1, frozen_stages=2), log=quiet)
    model = solver.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    bn = {f"{mn}.{bn}": b.clone() for mn, mod in model.named_modules()
          if isinstance(mod, torch.nn.BatchNorm2d) and not any(p.requires_grad for p in mod.parameters())
          for bn, b in mod.named_buffers()}
    assert frozen and bn
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grouped = {id(p) for g in solver.optimizer.param_groups for p in g["params"]}
    assert not grouped & {id(p) for p in model.parameters() if not p.requires_grad}
    list(solver.epochs())
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(torch.equal(buffers[n], v) for n, v in bn.items())  # BatchNorm statistics frozen too
    assert any(not torch.equal(params[n], v) for n, v in trainable_before.items())


RESUME_SCRIPT = """
import json, sys
from hyperiqa.config import TrainConfig
from hyperiqa.solver import Solver
folder = sys.argv[1]
solver = Solver(TrainConfig.load(folder + "/config.yaml"), log=lambda *_: None)
solver.load_checkpoint(folder)
print(json.dumps([m for m in solver.epochs()]))
"""


def test_resume_in_a_fresh_process_gives_identical_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=3, schedule="cosine", warmup_epochs=0.5)
    straight = [stable(m) for m in Solver(cfg, log=quiet).epochs()]

    solver = Solver(cfg, log=quiet)
    run = solver.epochs()
    first_two = [next(run), next(run)]
    solver.save_checkpoint(tmp_path / "ck", first_two[-1])
    for name in (ckpt.WEIGHTS, ckpt.TRAINER_STATE, ckpt.CONFIG, ckpt.METRICS, ckpt.SPLIT, ckpt.PREPROCESS):
        assert (tmp_path / "ck" / name).is_file()
    torch.load(tmp_path / "ck" / ckpt.TRAINER_STATE, weights_only=True)  # no pickled objects inside

    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "ck")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [m["epoch"] for m in resumed] == [3]
    assert [stable(m) for m in first_two] + [stable(resumed[0])] == straight  # exact, not approx
    assert straight[-1]["status"] == "completed"


def nan_labels_from_epoch(sampler, bad_epoch: int):
    """Make the sampler yield NaN labels from `bad_epoch` (0-based) on: the loss turns non-finite."""
    original = sampler.epoch

    def epoch(e):
        for x, y in original(e):
            yield x, (y * float("nan") if e >= bad_epoch else y)

    sampler.epoch = epoch


def test_non_finite_loss_ends_run_as_diverged_without_nan_metrics(tiny_cfg):
    solver = Solver(tiny_cfg(epochs=4), log=quiet)
    nan_labels_from_epoch(solver.data.train, 1)
    history = list(solver.epochs())  # must not raise
    assert [m["status"] for m in history] == ["running", "diverged"]
    assert history[-1]["message"].startswith("diverged at epoch 2")
    assert solver.done and solver.best_epoch == 1
    for m in history:
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in m.values()), m
    assert history[-1]["best_val_srcc"] == history[0]["val_srcc"]
    assert list(solver.epochs()) == []  # a diverged run stays finished


def test_early_stopping_and_best_epoch(tiny_cfg):
    solver = Solver(tiny_cfg(epochs=6, patience=2), log=quiet)
    # Scripted metrics: this test is about the bookkeeping, not about learning.
    solver.train_epoch = lambda: {"train_loss": 1.0, "train_srcc": 0.5, "lr_backbone": 1e-3, "lr_head": 1e-2,
                                  "patches_per_s": 1.0}
    scripted = iter([float("nan"), 0.5, 0.7, 0.6, 0.65, 0.9])
    solver.evaluate = lambda split: {"srcc": next(scripted) if split == "val" else 0.3, "plcc": 0.4,
                                     "krcc": 0.2, "rmse": 1.0}
    history = list(solver.epochs())
    assert [m["status"] for m in history] == ["running"] * 4 + ["early_stopped"]
    assert history[0]["val_srcc"] is None and history[0]["best_epoch"] is None  # NaN never counts as best
    assert [m["best_epoch"] for m in history] == [None, 2, 3, 3, 3]
    assert history[-1]["best_val_srcc"] == 0.7 and solver.best["epoch"] == 3 and solver.done


def test_evaluation_uses_fixed_crops(tiny_cfg):
    solver = Solver(tiny_cfg(), log=quiet)
    first, second = solver.evaluate("val"), solver.evaluate("val")
    assert json.dumps(first) == json.dumps(second)  # NaN-safe: plcc_logistic is NaN on the 4 val images
    assert set(first) == {"srcc", "plcc", "plcc_logistic", "krcc", "rmse"}
    assert solver.evaluate("all")["rmse"] > 0


def test_every_numeric_epoch_metric_reaches_ray_as_a_number(tiny_cfg):
    from tuning.engine.trainable import to_report  # imports Ray, starts nothing

    solver = Solver(tiny_cfg(epochs=1), log=quiet)
    solver.train_epoch = lambda: {"train_loss": 1.0, "train_srcc": 0.5, "lr_backbone": 1e-3, "lr_head": 1e-2,
                                  "patches_per_s": 1.0}
    # 4 val images: too few for the logistic fit, so val_plcc_logistic is None, as on any small split.
    solver.evaluate = lambda split: {"srcc": 0.5, "plcc": 0.4, "plcc_logistic": float("nan"), "krcc": 0.3,
                                     "rmse": 1.0}
    metrics = next(solver.epochs())
    assert metrics["val_plcc_logistic"] is None and metrics["test_plcc_logistic"] is None
    report = to_report(metrics, "val_srcc")
    # A None the trainable does not know would be dropped, and the key would vanish from Ray's results.
    numeric = [k for k, v in metrics.items() if v is None or isinstance(v, (int, float))]
    assert set(numeric) <= set(report)
    assert math.isnan(report["val_plcc_logistic"]) and report["val_plcc"] == 0.4


def test_standardized_labels_set_the_output_affine_and_survive_checkpoints(tiny_cfg, tmp_path):
    from hyperiqa.checkpoint import load_model

    solver = Solver(tiny_cfg(epochs=1, label_norm="standardize"), log=quiet)
    train_labels = solver.data.labels[solver.data.split.train]
    assert float(solver.model.label_shift) == pytest.approx(float(train_labels.mean()), rel=1e-6)
    assert float(solver.model.label_scale) == pytest.approx(float(train_labels.std()), rel=1e-6)
    metrics = next(solver.epochs())
    solver.save_checkpoint(tmp_path / "ck", metrics)
    model, _ = load_model(tmp_path / "ck")
    assert float(model.label_shift) == float(solver.model.label_shift)
    plain = Solver(tiny_cfg(epochs=1), log=quiet)
    assert float(plain.model.label_shift) == 0.0 and float(plain.model.label_scale) == 1.0


def test_a_configuration_whose_last_batch_would_be_one_patch_trains(tiny_cfg):
    # 16 training images x 1 patch, batch 5: 5, 5, 5 and 1 patch, which BatchNorm cannot train on.
    solver = Solver(tiny_cfg(epochs=1, train_patches=1, batch_size=5), log=quiet)
    (m,) = list(solver.epochs())
    assert m["status"] == "completed" and math.isfinite(m["train_loss"])
    assert solver.iters_per_epoch == 3 and int(solver.scheduler.last_epoch) == 3  # 5, 5 and 6 patches
