"""cfg.loss (hyperiqa/losses.py): values computed by hand, the undefined cases, the solver using the choice."""

from __future__ import annotations

import pytest
import torch

from hyperiqa.losses import RANK_WEIGHT, l1_loss, l1_rank_loss, plcc_loss, rank_hinge
from hyperiqa.solver import Solver


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def test_plcc_loss_is_one_minus_pearson():
    labels = torch.tensor([1.0, 2.0, 4.0])
    assert plcc_loss(t(2.0, 4.0, 8.0), labels).item() == pytest.approx(0.0, abs=1e-6)  # perfect, any scale
    assert plcc_loss(t(-1.0, -2.0, -4.0), labels).item() == pytest.approx(2.0, abs=1e-6)  # anti-correlated
    # pred (0, 1, 0) vs labels (0, 0, 1): centred (-1/3, 2/3, -1/3) and (-1/3, -1/3, 2/3), r = -0.5
    assert plcc_loss(t(0.0, 1.0, 0.0), torch.tensor([0.0, 0.0, 1.0])).item() == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("pred, labels", [
    ((1.0, 2.0, 3.0), (5.0, 5.0, 5.0)),  # constant labels
    ((4.0, 4.0, 4.0), (1.0, 2.0, 3.0)),  # constant predictions
    ((2.0,), (3.0,)),                    # one patch: the last batch of an epoch can be
])
def test_plcc_loss_counts_an_undefined_correlation_as_zero_without_nan(pred, labels):
    p = t(*pred)
    loss = plcc_loss(p, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 1.0 and torch.isfinite(p.grad).all()
    if len(set(labels)) == 1:
        assert torch.equal(p.grad, torch.zeros_like(p))  # nothing to learn from equal labels


def test_l1_rank_on_a_two_element_batch():
    # L1 = (|1 - 2| + |3 - 1|) / 2 = 1.5; label 2 > 1 but score 1 < 3: the pair is inverted by 2,
    # in both orders, so the mean hinge is 2.
    pred, labels = t(1.0, 3.0), torch.tensor([2.0, 1.0])
    assert rank_hinge(pred, labels).item() == 2.0
    assert l1_rank_loss(pred, labels).item() == pytest.approx(1.5 + RANK_WEIGHT * 2.0)
    assert rank_hinge(t(3.0, 1.0), labels).item() == 0.0  # right order: no hinge
    assert rank_hinge(t(1.0, 3.0), torch.tensor([2.0, 2.0])).item() == 0.0  # tied labels: no pair to rank


def test_l1_rank_averages_over_pairs_with_different_labels():
    # labels 1, 1, 2: pairs (0,2) and (1,2) in each order (4 ordered pairs); scores 0, 5, 3:
    # item 1 (label 1) above item 2 (label 2) by 2 -> hinge 2 twice; item 0 below item 2 -> 0.
    assert rank_hinge(t(0.0, 5.0, 3.0), torch.tensor([1.0, 1.0, 2.0])).item() == pytest.approx(4 / 4)


@pytest.mark.parametrize("name, fn", [("l1", l1_loss), ("plcc", plcc_loss), ("l1_rank", l1_rank_loss)])
def test_the_solver_trains_with_the_chosen_loss(tiny_cfg, name, fn):
    solver = Solver(tiny_cfg(epochs=1, loss=name), log=lambda *_: None)
    assert solver.loss_fn is fn
    values, sizes = [], []

    def recorded(pred, y):
        loss = fn(pred, y)
        values.append(loss.item())
        sizes.append(len(y))
        return loss

    solver.loss_fn = recorded
    metrics = next(solver.epochs())
    # train_loss: the batch losses weighted by batch size
    assert metrics["train_loss"] == pytest.approx(sum(v * n for v, n in zip(values, sizes)) / sum(sizes), rel=1e-9)
