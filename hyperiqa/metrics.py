"""Correlation metrics for IQA. Metric names used across the project are constants here."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_SRCC = "train_srcc"  # patch level, on the patches seen during the epoch
VAL_SRCC, VAL_PLCC, VAL_KRCC, VAL_RMSE = "val_srcc", "val_plcc", "val_krcc", "val_rmse"
TEST_SRCC, TEST_PLCC, TEST_KRCC, TEST_RMSE = "test_srcc", "test_plcc", "test_krcc", "test_rmse"
LR_BACKBONE, LR_HEAD = "lr_backbone", "lr_head"
PATCHES_PER_S = "patches_per_s"
STATUS = "status"  # "running", "completed", "early_stopped", "diverged"


def correlations(pred, target) -> dict[str, float]:
    """SRCC, PLCC, KRCC and RMSE between predictions and labels (NaN where undefined, e.g. constant input)."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} values, target {target.size}")
    nan = float("nan")
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        srcc = plcc = krcc = nan
    else:
        srcc = float(stats.spearmanr(pred, target)[0])
        plcc = float(stats.pearsonr(pred, target)[0])
        krcc = float(stats.kendalltau(pred, target)[0])
    rmse = float(np.sqrt(np.mean((pred - target) ** 2))) if pred.size else nan
    return {"srcc": srcc, "plcc": plcc, "krcc": krcc, "rmse": rmse}


def image_scores(patch_scores, image_index, num_images: int) -> np.ndarray:
    """Average patch scores per image: image_index[i] is the image that patch i was cut from."""
    patch_scores = np.asarray(patch_scores, dtype=np.float64)
    image_index = np.asarray(image_index, dtype=np.int64)
    sums = np.bincount(image_index, weights=patch_scores, minlength=num_images)
    counts = np.bincount(image_index, minlength=num_images)
    if np.any(counts == 0):
        raise ValueError(f"{int(np.sum(counts == 0))} images have no patch score")
    return sums / counts


def finite_or_none(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None
