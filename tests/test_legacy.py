"""cfg.legacy: each of the original solver's defects on its own, all of them together, and the default
untouched (docs/original-defects.md). Runs use the paper's optimisation settings on the tiny data."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hyperiqa import metrics as M
from hyperiqa.config import LEGACY_DEFECTS, ConfigError, TrainConfig
from hyperiqa.schedules import epoch_start, group_factors
from hyperiqa.solver import Solver

ITERS = 4  # tiny_cfg: 16 training images x 2 patches / batch 8
EPOCHS = 16
LR, RATIO = 2e-5, 10.0
# The paper's optimisation (Adam, 2e-5, x10 head, wd 5e-4, /10 every 6 epochs) on timm's tiny test_resnet.
PAPER = dict(backbone="test_resnet", backbone_lr=LR, lr_ratio=RATIO, optimizer="adam", weight_decay=5e-4,
             schedule="step", step_size=6, step_factor=0.1)


def quiet(*_):
    pass


def original_lrs(epoch: int) -> tuple[float, float]:
    """(backbone, head) LR of 0-based `epoch` in the original: epoch 0 trains with the Adam built at
    construction; after epoch t it builds the next one from lr / 10 ** (t // 6), with ratio 1 once t > 8,
    and the backbone at the initial lr."""
    if epoch == 0:
        return LR, LR * RATIO
    t = epoch - 1  # the epoch after which this epoch's optimizer was built
    ratio = 1.0 if t > 8 else RATIO
    return LR, LR / 10 ** (t // 6) * ratio


def record(cfg: TrainConfig) -> SimpleNamespace:
    """Run cfg to the end; keep what each optimizer step saw and the parameters after every epoch."""
    solver = Solver(cfg, log=quiet)
    model, opt = solver.model, solver.optimizer
    steps = []

    def before_step(o, *_):
        steps.append(SimpleNamespace(epoch=solver.epoch, lrs=tuple(g["lr"] for g in o.param_groups),
                                     adam_empty=len(o.state) == 0,
                                     head_grads=all(p.grad is not None for p in model.head_parameters())))

    opt.register_step_pre_hook(before_step)

    def snapshot():
        return SimpleNamespace(head=[p.detach().clone() for p in model.head_parameters()],
                               backbone=[p.detach().clone() for p in model.backbone_parameters()])

    params, metrics, crops, adam_steps, head_group = [snapshot()], [], [], [], []
    for m in solver.epochs():
        metrics.append(m)
        params.append(snapshot())
        crops.append(torch.cat([solver.data.val.plan.y, solver.data.val.plan.x]))  # this epoch's evaluation
        adam_steps.append({int(s["step"]) for s in opt.state.values()})
        head_group.append(len(opt.param_groups[1]["params"]))
    return SimpleNamespace(solver=solver, steps=steps, params=params, metrics=metrics, crops=crops,
                           adam_steps=adam_steps, head_group=head_group)


def flat(pairs) -> list[float]:
    return [v for pair in pairs for v in pair]  # pytest.approx compares flat sequences only


def changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.fixture(scope="module")
def all_run(tiny_cfg):
    return record(tiny_cfg(**PAPER, epochs=EPOCHS, legacy=["all"]))


@pytest.fixture(scope="module")
def default_run(tiny_cfg):
    return record(tiny_cfg(**PAPER, epochs=3))


# --- legacy: [all] with the paper's configuration ------------------------------------------------------
def test_all_gives_the_original_lrs_in_every_epoch(all_run):
    assert len(all_run.steps) == EPOCHS * ITERS
    for step in all_run.steps:  # every step of an epoch, not only the reported last one
        assert step.lrs == pytest.approx(original_lrs(step.epoch), rel=1e-12)
    reported = [(m["lr_backbone"], m["lr_head"]) for m in all_run.metrics]
    assert flat(reported) == pytest.approx(flat(original_lrs(e) for e in range(EPOCHS)), rel=1e-12)
    # The same, spelled out: backbone constant; head /10 after epochs 7 and 13 and at ratio 1 from epoch 11.
    assert [b for b, _ in reported] == [LR] * EPOCHS
    head = [2e-4] * 7 + [2e-5] * 3 + [2e-6] * 3 + [2e-7] * 3
    assert [h for _, h in reported] == pytest.approx(head, rel=1e-12)


def test_all_stops_the_head_after_epoch_1_but_keeps_training_the_backbone(all_run):
    p = all_run.params  # p[0]: initial, p[e]: after epoch e
    assert changed(p[0].head, p[1].head)
    assert all(not changed(p[1].head, p[e].head) for e in range(2, EPOCHS + 1))  # no Adam step, no decay
    assert all(changed(p[e - 1].backbone, p[e].backbone) for e in range(1, EPOCHS + 1))
    assert all_run.head_group == [len(p[0].head)] + [0] * (EPOCHS - 1)  # an empty group, as the original's
    assert all(s.head_grads for s in all_run.steps)  # gradients still computed, as in the original


def test_all_starts_every_epoch_with_an_empty_adam(all_run):
    empty = [s.adam_empty for s in all_run.steps]
    assert empty == [True, False, False, False] * EPOCHS  # emptied before each epoch, kept within one
    assert all_run.adam_steps == [{ITERS}] * EPOCHS  # step counts restart, never accumulate


def test_random_eval_crops_change_per_evaluation_and_default_crops_do_not(all_run, default_run):
    crops = all_run.crops
    assert all(not torch.equal(crops[e - 1], crops[e]) for e in range(1, EPOCHS))
    assert all(torch.equal(c, default_run.crops[0]) for c in default_run.crops)
    # Seeded by (seed, epoch): drawing an epoch's crops again gives the same ones.
    val = all_run.solver.data.val
    val.draw(epoch=3)
    again = torch.cat([val.plan.y, val.plan.x])
    val.draw(epoch=3)
    assert torch.equal(torch.cat([val.plan.y, val.plan.x]), again)


# --- each switch alone ----------------------------------------------------------------------------------
def lr_table(cfg: TrainConfig) -> list[tuple[float, float]]:
    """(backbone, head) LR of every iteration of EPOCHS epochs, from the one place that decides them."""
    backbone, head = group_factors(cfg, ITERS)
    return [(cfg.backbone_lr * backbone(it), cfg.backbone_lr * cfg.lr_ratio * head(it))
            for it in range(EPOCHS * ITERS)]


def per_epoch(table):
    return [table[e * ITERS] for e in range(EPOCHS)]


@pytest.mark.parametrize("name", list(LEGACY_DEFECTS))
def test_each_switch_alone_changes_only_its_own_lrs_and_optimizer_events(name):
    cfg = TrainConfig.from_dict({**PAPER, "legacy": [name]})
    default = lr_table(TrainConfig.from_dict(PAPER))
    table = lr_table(cfg)
    assert all(len({table[e * ITERS + i] for i in range(ITERS)}) == 1 for e in range(EPOCHS))  # per-epoch
    decay = [0.1 ** (e // 6) for e in range(EPOCHS)]          # the project's step: epochs 7 and 13
    late = [0.1 ** (max(e - 1, 0) // 6) for e in range(EPOCHS)]  # the original's: epochs 8 and 14
    expected = {
        "backbone_lr_constant": [(LR, LR * RATIO * d) for d in decay],
        "lr_ratio_reset": [(LR * d, LR * d * (RATIO if e < 10 else 1.0)) for e, d in enumerate(decay)],
        "lr_one_epoch_late": [(LR * d, LR * RATIO * d) for d in late],
    }.get(name, per_epoch(default))
    assert flat(per_epoch(table)) == pytest.approx(flat(expected), rel=1e-12)
    starts = [epoch_start(cfg, e) for e in range(EPOCHS)]
    assert [s.reset_optimizer for s in starts] == [name == "optimizer_reset" and e > 0 for e in range(EPOCHS)]
    assert [s.train_head for s in starts] == [name != "head_frozen_after_epoch1" or e == 0 for e in range(EPOCHS)]


@pytest.mark.parametrize("name", list(LEGACY_DEFECTS))
def test_each_switch_alone_changes_only_its_own_training_behaviour(name, tiny_cfg, default_run):
    run = record(tiny_cfg(**PAPER, epochs=3, legacy=[name]))

    def metric(r, key):
        return [m[key] for m in r.metrics]

    behaviour = {
        "head trained after epoch 1": changed(run.params[1].head, run.params[3].head),
        "Adam state kept": run.adam_steps[-1] == {3 * ITERS},
        "fixed eval crops": all(torch.equal(c, run.crops[0]) for c in run.crops),
        # Within 3 epochs the paper's LRs are the same for every switch (no decay before epoch 7, no
        # ratio reset before 11): a switch that only changes LRs must leave the run bit-identical.
        "default training": metric(run, "train_loss") == metric(default_run, "train_loss"),
        "default evaluation": metric(run, "val_plcc") == metric(default_run, "val_plcc")
                              and metric(run, "test_plcc") == metric(default_run, "test_plcc"),
    }
    differs = {
        "optimizer_reset": {"Adam state kept", "default training", "default evaluation"},
        "head_frozen_after_epoch1": {"head trained after epoch 1", "default training", "default evaluation"},
        "random_eval_crops": {"fixed eval crops", "default evaluation"},
    }.get(name, set())
    assert behaviour == {key: key not in differs for key in behaviour}
    assert [m["lr_head"] / m["lr_backbone"] for m in run.metrics] == pytest.approx([RATIO] * 3)


# --- the default and resuming -------------------------------------------------------------------------
def pre_legacy_history(cfg: TrainConfig) -> list[dict]:
    """The solver's rule before `legacy` existed, written out for a step schedule: one Adam over the
    [backbone, head] groups for the whole run, both LRs scaled by step_factor ** (iteration //
    (iterations per epoch * step_size)) before every step, L1 on the patches, fixed evaluation crops.

    A Solver is built only for its seeded model and data (the same init and batches a run gets);
    the training loop and the optimizer are this function's own.
    """
    assert cfg.schedule == "step" and cfg.grad_clip == 0 and cfg.optimizer == "adam"
    solver = Solver(cfg, log=quiet)
    model, train = solver.model, solver.data.train
    adam = torch.optim.Adam([{"params": list(model.backbone_parameters())},
                             {"params": list(model.head_parameters())}], weight_decay=cfg.weight_decay)
    initial, per_epoch, it = (cfg.backbone_lr, cfg.backbone_lr * cfg.lr_ratio), len(train), 0
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum, seen, preds, targets = torch.zeros((), dtype=torch.float64), 0, [], []
        for x, y in train.epoch(epoch):
            for group, lr in zip(adam.param_groups, initial):
                group["lr"] = lr * cfg.step_factor ** (it // (per_epoch * cfg.step_size))
            pred = model(x).float()
            loss = torch.nn.functional.l1_loss(pred, y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            it += 1
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            preds.append(pred.detach())
            targets.append(y)
        solver.epoch = epoch + 1
        m = {"train_loss": loss_sum.item() / seen,
             "train_srcc": M.correlations(torch.cat(preds).numpy(), torch.cat(targets).numpy())["srcc"],
             "lr_backbone": adam.param_groups[0]["lr"], "lr_head": adam.param_groups[1]["lr"]}
        for split in ("val", "test"):
            m.update({f"{split}_{k}": v for k, v in solver.evaluate(split).items() if k in ("srcc", "plcc")})
        history.append(m)
    return history


def test_default_gives_the_metrics_of_the_solver_before_legacy_existed(tiny_cfg):
    # step_size 1, factor 0.5: every epoch trains at its own LRs, so a schedule off by one step shows.
    cfg = tiny_cfg(epochs=3, schedule="step", step_size=1, step_factor=0.5)
    assert cfg.legacy == [] and cfg == TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                                              if k != "legacy"})
    reference = pre_legacy_history(cfg)
    assert [m["lr_backbone"] for m in reference] == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)
    history = list(Solver(cfg, log=quiet).epochs())
    got = [{k: m[k] for k in reference[0]} for m in history]
    # Both runs compute in this process with the same operations in the same order: the numbers agree
    # to rounding whatever the CPU's float kernels. A changed LR, a reset or a missing Adam state moves
    # the training loss by far more than 1e-9 (the 2nd epoch's loss halves at these LRs).
    assert got == [pytest.approx(m, rel=1e-9, abs=1e-12) for m in reference]


def test_resume_is_exact_with_all_switches(tiny_cfg, tmp_path):
    # step_size 1: the resumed epoch's head LR (one epoch late) differs from the epoch before it.
    cfg = tiny_cfg(**{**PAPER, "step_size": 1}, epochs=3, legacy=["all"])
    volatile = ("time_s", "patches_per_s")
    straight = [{k: v for k, v in m.items() if k not in volatile} for m in Solver(cfg, log=quiet).epochs()]
    assert straight[2]["lr_head"] == pytest.approx(straight[1]["lr_head"] * 0.1)

    solver = Solver(cfg, log=quiet)
    run = solver.epochs()
    first_two = [next(run), next(run)]
    solver.save_checkpoint(tmp_path / "ck", first_two[-1])
    resumed = Solver(cfg, log=quiet)
    resumed.load_checkpoint(tmp_path / "ck")
    assert resumed.evaluate("val")["plcc"] == first_two[-1]["val_plcc"]  # the checkpoint epoch's crops
    last = list(resumed.epochs())
    got = [{k: v for k, v in m.items() if k not in volatile} for m in [*first_two, *last]]
    assert got == straight  # exact, not approx


# --- the field ------------------------------------------------------------------------------------------
def test_legacy_names_are_checked_strictly():
    assert TrainConfig.from_dict({"legacy": ["all"]}).legacy_defects == set(LEGACY_DEFECTS)
    cfg = TrainConfig().with_overrides(["legacy=[optimizer_reset, random_eval_crops]"])
    assert cfg.legacy_defects == {"optimizer_reset", "random_eval_crops"}
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict({"legacy": ["optimizer_reset", "adam_reset"]})
    message = str(exc.value)
    assert "legacy" in message and "'adam_reset'" in message
    assert all(name in message for name in ["all", *LEGACY_DEFECTS])
    with pytest.raises(ConfigError, match="legacy = 'all': expected a list"):
        TrainConfig.from_dict({"legacy": "all"})
