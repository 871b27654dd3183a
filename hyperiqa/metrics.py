"""Correlation metrics for IQA. Metric names used across the project are constants here."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, stats

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_SRCC = "train_srcc"  # patch level, on the patches seen during the epoch
# Image level, on cfg.train_eval_images training images cut and averaged as val/test images are
TRAIN_IMAGE_SRCC, TRAIN_IMAGE_PLCC = "train_image_srcc", "train_image_plcc"
VAL_SRCC, VAL_PLCC, VAL_KRCC, VAL_RMSE = "val_srcc", "val_plcc", "val_krcc", "val_rmse"
TEST_SRCC, TEST_PLCC, TEST_KRCC, TEST_RMSE = "test_srcc", "test_plcc", "test_krcc", "test_rmse"
LR_BACKBONE, LR_HEAD = "lr_backbone", "lr_head"
PATCHES_PER_S = "patches_per_s"
STATUS = "status"  # "running", "completed", "early_stopped", "diverged"
IMAGE_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")  # correlations() keys; val_*/test_* per epoch
LOGISTIC_MIN_IMAGES = 5  # the logistic has 4 parameters: with 4 points it interpolates and PLCC is trivially 1


def correlations(pred, target) -> dict[str, float]:
    """SRCC, PLCC, PLCC after the logistic mapping, KRCC and RMSE between predictions and labels
    (NaN where undefined, e.g. constant input)."""
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
    return {"srcc": srcc, "plcc": plcc, "plcc_logistic": plcc_logistic(pred, target), "krcc": krcc, "rmse": rmse}


def _logistic(x, b1, b2, b3, b4):
    return (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4))) + b2


def plcc_logistic(pred, target) -> float:
    """PLCC between the labels and the predictions mapped by the VQEG 4-parameter logistic
    f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2, fitted by least squares from b1 = max label,
    b2 = min label, b3 = mean prediction, b4 = std of the predictions.

    The mapping removes a monotonic nonlinearity between the model's scale and the labels' before the
    linear correlation is taken, as IQA papers report it. Signed like SRCC: negative when the fitted
    logistic is decreasing (the model ranks images backwards), not a flattering positive value.
    NaN, like correlations' other undefined values, for fewer than LOGISTIC_MIN_IMAGES images,
    constant predictions or labels, or a fit that does not converge; never raises or warns.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.size != target.size:
        raise ValueError(f"pred has {pred.size} values, target {target.size}")
    nan = float("nan")
    if pred.size < LOGISTIC_MIN_IMAGES or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return nan
    # Overflowing exp() and "covariance could not be estimated" are normal during a fit; only the
    # mapped values matter, and they are checked below.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        start = [target.max(), target.min(), pred.mean(), pred.std()]
        try:
            params, _ = optimize.curve_fit(_logistic, pred, target, p0=start, maxfev=10000)
        except (RuntimeError, ValueError):  # no convergence within maxfev, or non-finite residuals
            return nan
        mapped = _logistic(pred, *params)
        if not np.all(np.isfinite(mapped)) or np.ptp(mapped) == 0:
            return nan
        value = float(stats.pearsonr(mapped, target)[0])
    return math.copysign(value, params[0] - params[1]) if math.isfinite(value) else nan


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
