"""Training losses (cfg.loss): (predictions, labels) of one batch, both (B,) float32 -> a scalar tensor.

- l1:      mean absolute error, the paper's and the original code's loss.
- plcc:    1 - Pearson correlation of the batch's predictions and labels, in [0, 2]; pyiqa's HyperIQA
           recipe trains with a PLCC loss. Invariant to the predictions' scale and offset: it trains
           ranking and linearity, never the label scale, so a plcc-trained model's RMSE means little.
- l1_rank: l1 + RANK_WEIGHT * the mean pairwise ranking hinge max(0, -(p_i - p_j) * sign(y_i - y_j))
           over the batch's pairs with different labels: a pair in the wrong order costs its score gap.

No loss syncs with the device (no .item(), no data-dependent branch): the solver checks finiteness
about ten times per epoch, not per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Margin 0 keeps the hinge in label units, like L1, so weight 1 balances the two terms whatever the
# labels' scale (raw MOS 0-100 or standardised); a positive margin would need a scale to be set in.
RANK_WEIGHT = 1.0
# F.normalize's floor on a vector's norm. A batch whose labels (or predictions) are all equal, or a
# batch of one patch (the last of an epoch can be), has no correlation: its centred vector is 0, so
# it normalises to 0, r = 0 and the loss is 1, with zero gradient from a constant label vector.
PLCC_EPS = 1e-8


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(pred, target)


def plcc_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - r; an undefined r (constant labels or predictions, fewer than 2 values) counts as 0."""
    x = F.normalize(pred - pred.mean(), dim=0, eps=PLCC_EPS)
    y = F.normalize(target - target.mean(), dim=0, eps=PLCC_EPS)
    return 1.0 - (x * y).sum()


def rank_hinge(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over ordered pairs with different labels of max(0, -(p_i - p_j) * sign(y_i - y_j)); 0 if none."""
    order = torch.sign(target[:, None] - target[None, :])
    hinge = F.relu(-order * (pred[:, None] - pred[None, :]))
    return hinge.sum() / (order != 0).sum().clamp_min(1)


def l1_rank_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(pred, target) + RANK_WEIGHT * rank_hinge(pred, target)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"l1": l1_loss, "plcc": plcc_loss, "l1_rank": l1_rank_loss}


def loss_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss cfg.loss names (config.LOSSES lists the same names)."""
    return LOSSES[name]
