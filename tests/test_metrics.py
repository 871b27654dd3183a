"""Image-level metrics: PLCC after the VQEG logistic mapping, beside the raw correlations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from hyperiqa import metrics as M


def logistic(x, b1, b2, b3, b4):
    return (b1 - b2) / (1 + np.exp(-(x - b3) / abs(b4))) + b2


def test_logistic_plcc_recovers_a_logistic_relation_that_raw_plcc_underrates():
    rng = np.random.default_rng(0)
    pred = rng.uniform(-3, 3, 200)
    mos = logistic(pred, 80, 10, 0.5, 0.3) + rng.normal(0, 0.5, 200)  # steep S curve, little noise
    raw = stats.pearsonr(pred, mos)[0]
    assert raw < 0.95
    assert M.plcc_logistic(pred, mos) > 0.999
    result = M.correlations(pred, mos)
    assert result["plcc_logistic"] == M.plcc_logistic(pred, mos) and result["plcc"] == pytest.approx(raw)


def test_logistic_plcc_equals_raw_plcc_on_linear_data():
    rng = np.random.default_rng(1)
    pred = rng.uniform(-3, 3, 200)
    mos = 2 * pred + rng.normal(0, 1, 200)
    assert M.plcc_logistic(pred, mos) == pytest.approx(stats.pearsonr(pred, mos)[0], abs=1e-3)


def test_a_backwards_model_keeps_its_negative_sign():
    rng = np.random.default_rng(2)
    pred = rng.uniform(-3, 3, 200)
    mos = -2 * pred + rng.normal(0, 1, 200)
    # The fit alone maps through a decreasing logistic and correlates +0.96: the sign must survive.
    assert M.plcc_logistic(pred, mos) == pytest.approx(stats.pearsonr(pred, mos)[0], abs=1e-3)
    assert M.plcc_logistic(pred, mos) < -0.9


@pytest.mark.parametrize("pred, mos", [
    ([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]),              # 4 images: the 4 parameters interpolate
    ([2.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),               # constant predictions
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3.0] * 6),               # constant labels
])
def test_degenerate_input_is_undefined_without_raising_or_warning(pred, mos):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any scipy/numpy warning would fail here
        assert math.isnan(M.plcc_logistic(pred, mos))
        assert math.isnan(M.correlations(pred, mos)["plcc_logistic"])


def test_a_fit_that_does_not_converge_is_undefined(monkeypatch):
    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: Number of calls to function has reached maxfev")

    monkeypatch.setattr(M.optimize, "curve_fit", no_convergence)
    pred = np.arange(10.0)
    result = M.correlations(pred, pred ** 2)
    assert math.isnan(result["plcc_logistic"]) and result["plcc"] > 0.9  # the raw metrics are unaffected
