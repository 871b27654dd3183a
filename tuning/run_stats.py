"""Statistics over runs, one copy for the ablation, the confirmation and the search's trials report.

No Ray imports and no project imports: the inputs are numbers, so every statistic is tested on synthetic values.

- A curve's peak (the first epoch reaching its highest finite value, as the solver picks its best epoch),
  and MIN_DROP, the fall below that peak that counts as a decline.
- describe / mean_sd: n, median, mean, sample SD (ddof 1), quartiles of the finite values.
- paired_differences: per pairing key (an ablation's seed, a confirmation's split) one value minus the
  other, over the keys both have: the pairing removes the split's difficulty from the comparison.
- bootstrap_mean: the mean paired difference and its percentile bootstrap interval, resampling the keys.
"""

from __future__ import annotations

import math

import numpy as np

# A peak-to-final drop of at most this much is not a decline: the maximum of a flat but noisy curve always
# lies a little above its last value (the ablation's verdicts, the search's early-peak warning).
MIN_DROP = 0.01
RESAMPLES = 10_000


def finite(value) -> bool:
    """A real number that is not NaN or infinite (a bool is not a metric value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def peak(epochs: list[int], values: list[float]) -> tuple[int | None, float]:
    """(first epoch reaching the highest finite value, that value); (None, NaN) if none is finite."""
    best_epoch, best = None, math.nan
    for epoch, value in zip(epochs, values):
        if math.isfinite(value) and (best_epoch is None or value > best):
            best_epoch, best = epoch, value
    return best_epoch, best


def describe(values: list[float]) -> dict:
    """n, median, mean, std (n-1), quartiles and IQR of the finite values."""
    x = np.array([v for v in values if finite(v)], dtype=float)
    if not len(x):
        return {"n": 0, "median": math.nan, "mean": math.nan, "std": math.nan, "q25": math.nan,
                "q75": math.nan, "iqr": math.nan}
    q25, median, q75 = np.percentile(x, [25, 50, 75])
    return {"n": len(x), "median": float(median), "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else math.nan, "q25": float(q25), "q75": float(q75),
            "iqr": float(q75 - q25)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1) of the finite values; SD is NaN for fewer than two."""
    d = describe(values)
    return d["mean"], d["std"]


def paired_differences(mine: dict, other: dict, *, finite_only: bool = True) -> list[float]:
    """mine[k] - other[k] for every key both have, in key order; with finite_only, only where both are finite."""
    keys = sorted(set(mine) & set(other))
    if finite_only:
        keys = [k for k in keys if finite(mine[k]) and finite(other[k])]
    return [mine[k] - other[k] for k in keys]


def bootstrap_mean(differences: list[float], *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean paired difference and its percentile bootstrap interval, resampling pairs."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return (float(d.mean()) if len(d) else math.nan), math.nan, math.nan
    rng = np.random.Generator(np.random.PCG64(seed))
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)
