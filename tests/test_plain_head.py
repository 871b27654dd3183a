"""cfg.head = plain: the same solver, LR groups, legacy switches, checkpoints and predict as HyperIQA."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hyperiqa import inference, predict
from hyperiqa.checkpoint import load_model, read_preprocess
from hyperiqa.models import HyperIQA, PlainIQA, build_model
from hyperiqa.solver import Solver

VOLATILE = ("time_s", "patches_per_s")


def quiet(*_):
    pass


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in VOLATILE} for m in history]


def test_plain_head_is_an_mlp_on_the_pooled_last_stage(tiny_cfg):
    model = build_model(tiny_cfg(head="plain"))
    assert isinstance(model, PlainIQA) and not isinstance(model, HyperIQA)
    assert not hasattr(model, "hyper") and not hasattr(model, "lda")
    assert model.head[0].in_features == model.backbone.channels[-1]
    multi = build_model(tiny_cfg(head="plain", multiscale=True))
    assert multi.head[0].in_features == sum(multi.backbone.channels)
    backbone, head = {id(p) for p in model.backbone_parameters()}, {id(p) for p in model.head_parameters()}
    assert head == {id(p) for p in model.head.parameters()}
    assert backbone.isdisjoint(head) and backbone | head == {id(p) for p in model.parameters()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model.eval()(torch.randn(3, 3, 32, 32))
    assert y.dtype == torch.float32 and y.shape == (3,)


def test_plain_head_trains_in_the_head_group_at_the_head_lr(tiny_cfg):
    cfg = tiny_cfg(head="plain", epochs=3, label_norm="standardize")
    solver = Solver(cfg, log=quiet)
    groups = {g["name"]: g for g in solver.optimizer.param_groups}
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in solver.model.head.parameters()}
    history = list(solver.epochs())
    assert history[0]["lr_head"] == pytest.approx(cfg.backbone_lr * cfg.lr_ratio)
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]  # it learns
    assert all(m["val_srcc"] is not None for m in history)


def test_legacy_head_frozen_after_epoch1_freezes_the_plain_head(tiny_cfg):
    solver = Solver(tiny_cfg(head="plain", epochs=2, legacy=["head_frozen_after_epoch1"]), log=quiet)
    run = solver.epochs()
    initial = [p.detach().clone() for p in solver.model.head.parameters()]
    next(run)
    after_1 = [p.detach().clone() for p in solver.model.head.parameters()]
    backbone_1 = [p.detach().clone() for p in solver.model.backbone_parameters()]
    next(run)
    assert any(not torch.equal(a, b) for a, b in zip(initial, after_1))  # epoch 1 trains the head
    assert all(torch.equal(a, p) for a, p in zip(after_1, solver.model.head.parameters()))  # epoch 2 does not
    assert any(not torch.equal(a, p) for a, p in zip(backbone_1, solver.model.backbone_parameters()))


def test_plain_head_resumes_exactly_and_predicts_from_its_checkpoint(tiny_cfg, tiny_dataset, tmp_path, capsys):
    cfg = tiny_cfg(head="plain", epochs=2, schedule="cosine", label_norm="standardize", loss="l1_rank",
                   train_eval_images=6)
    straight = stable(list(Solver(cfg, log=quiet).epochs()))

    solver = Solver(cfg, log=quiet)
    run = solver.epochs()
    first = next(run)
    solver.save_checkpoint(tmp_path / "ck", first)
    resumed = Solver(cfg, log=quiet)
    resumed.load_checkpoint(tmp_path / "ck")
    assert stable([first, *resumed.epochs()]) == straight  # exact, not approx

    model, loaded_cfg = load_model(tmp_path / "ck")  # built from config.yaml alone
    assert isinstance(model, PlainIQA) and loaded_cfg.head == "plain"
    assert float(model.label_scale) == float(solver.model.label_scale) != 1.0
    images = sorted(tiny_dataset.glob("*.png"))[:3]
    out = tmp_path / "scores.csv"
    assert predict.main(["--checkpoint", str(tmp_path / "ck"), *map(str, images), "--crops", "2",
                         "--out", str(out)]) == 0
    got = np.array([float(r["score"]) for r in csv.DictReader(out.open())])
    pre = read_preprocess(tmp_path / "ck")
    resize = {"short_side": pre["short_side"], "resize_to": pre["resize_to"]}
    crops = [inference.crops(inference.load_image(p, patch=cfg.patch_size, **resize), patch=cfg.patch_size, n=2, seed=0)
             for p in images]
    want = inference.score(solver.model.eval(), crops, mean=model.input_mean, std=model.input_std, device="cpu",
                         batch_size=8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # the CSV keeps 6 decimals
    assert np.ptp(got) > 1e-3
