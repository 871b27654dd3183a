"""cfg.train_eval_images: image-level train metrics by the evaluation code, without touching training."""

from __future__ import annotations

import random

import numpy as np
import torch

from hyperiqa import metrics as M
from hyperiqa.data.patches import EvalCrops
from hyperiqa.inference import Scoring
from hyperiqa.solver import Solver

VOLATILE = ("time_s", "patches_per_s")


def quiet(*_):
    pass


def test_train_image_metrics_are_the_evaluation_of_a_fixed_training_subset(tiny_cfg):
    cfg = tiny_cfg(epochs=2, train_eval_images=5)
    solver = Solver(cfg, log=quiet)
    subset = solver.train_eval.indices
    assert len(subset) == 5 and set(subset) <= set(solver.data.split.train)
    assert np.array_equal(Solver(cfg.replace(epochs=1), log=quiet).train_eval.indices, subset)  # seeded
    assert not np.array_equal(Solver(cfg.replace(seed=1), log=quiet).train_eval.indices, subset)
    for metrics in solver.epochs():
        # The evaluation path called directly: val/test's crop rule (EvalCrops from the seed) and averaging.
        crops = EvalCrops(solver.data.cache, subset, patch_size=cfg.patch_size, crops_per_image=cfg.test_patches,
                          batch_size=cfg.eval_batch_size, seed=cfg.seed, device="cpu",
                          mean=solver.model.input_mean, std=solver.model.input_std)
        pred = Scoring(solver.model.eval(), solver.device, amp=cfg.amp, channels_last=False).images(crops)
        want = M.correlations(pred, solver.data.labels[subset])
        assert metrics["train_image_srcc"] == want["srcc"] and metrics["train_image_plcc"] == want["plcc"]
        assert metrics["train_srcc"] is not None  # the patch-level value stays beside it


def test_more_than_the_training_set_evaluates_every_training_image(tiny_cfg):
    solver = Solver(tiny_cfg(epochs=1, train_eval_images=1000), log=quiet)
    assert np.array_equal(solver.train_eval.indices, solver.data.split.train)
    metrics = next(solver.epochs())
    assert metrics["train_image_srcc"] == solver.evaluate("train")["srcc"]


def global_rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_train_eval_images_leaves_training_and_val_test_metrics_unchanged(tiny_cfg):
    runs, states = [], []
    for n in (0, 6):
        runs.append([{k: v for k, v in m.items() if k not in VOLATILE}
                     for m in Solver(tiny_cfg(epochs=2, train_eval_images=n), log=quiet).epochs()])
        states.append(global_rng())  # what a checkpoint saves and a later draw would start from
    without, with_subset = runs
    assert all("train_image_srcc" not in m for m in without)
    assert [{k: v for k, v in m.items() if not k.startswith("train_image_")} for m in with_subset] == without
    assert all(m["train_image_srcc"] is not None for m in with_subset)
    assert torch.equal(states[0][0], states[1][0]) and np.array_equal(states[0][1], states[1][1])
    assert states[0][2] == states[1][2]


def test_the_epoch_line_shows_the_image_level_train_srcc_when_there_is_one():
    from hyperiqa.text import epoch_line

    m = {"epoch": 1, "train_loss": 1.0, "train_srcc": 0.25, "val_srcc": 0.5, "val_plcc": 0.5, "test_srcc": 0.5,
         "test_plcc": 0.5, "lr_backbone": 1e-3, "lr_head": 1e-2, "patches_per_s": 10.0, "time_s": 1.0,
         "status": "running"}
    assert "(image)" not in epoch_line(m, 2)
    assert "train_srcc(patch) 0.2500  (image) 0.7500  val" in epoch_line({**m, "train_image_srcc": 0.75}, 2)
