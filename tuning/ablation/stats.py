"""What an ablation over the original's defects shows: per-run and per-variant statistics, and verdicts.

No Ray imports: the input is the runs (id, labels, config) and each run's reported epochs, so the
tables and the generated sentences are tested on synthetic curves. tuning/ablation/experiment.py runs the variants;
the statistics shared with the confirmation (peak, mean/SD, paired differences) are in tuning/run_stats.py.

Per run, on image-level test SRCC: the peak (the first epoch reaching the run's highest value, as the
solver picks its best epoch), the final value (last epoch), the drop from peak to final, and the test
SRCC at the val-best epoch (the honest number: what a run selected on validation would report).
Per variant: mean and SD over seeds, and the paired difference from the fixed solver (seed k of every
variant shares split and training seed, so the per-seed difference removes the split's difficulty).
A control (a variant that changes a config field, such as a plain head in place of the hyper network) is
paired with the fixed solver in the same way; only the summary's sentences tell it from a defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tuning.run_stats import MIN_DROP, mean_sd, paired_differences, peak

FIXED, ALL = "fixed", "all"
# Switches that change learning rates only: whether they acted is read from the LRs the runs reported.
LR_SWITCHES = ("backbone_lr_constant", "lr_ratio_reset", "lr_one_epoch_late")
# A variant "declines" when its mean peak-to-final drop exceeds SPREAD_FACTOR x the seed-to-seed SD of
# its final test SRCC (the drop is then larger than where different seeds end up anyway) and MIN_DROP
# (tuning/run_stats.py), and every seed drops by more than MIN_DROP (one seed's fall is not the variant's).
SPREAD_FACTOR = 2.0
# Verdicts (table column "verdict").
DECLINES, FALLS_LATE, NO_DECLINE, NO_EFFECT, NO_DATA = (
    "declines after an early peak", "falls after a late peak", "no decline", "no effect", "no data")


@dataclass
class RunCurve:
    """One run's reported epochs (NaN where undefined or diverged)."""

    run_id: str
    variant: str
    seed: int
    planned_epochs: int
    epochs: list[int]
    val: list[float]
    test: list[float]
    train: list[float]  # patch-level train SRCC, on the patches seen during the epoch
    lrs: list[tuple[float, float]]  # (backbone, head) of each epoch's last step
    # image-level train SRCC after the epoch (cfg.train_eval_images; NaN where the run did not report it):
    # on the scale of val/test SRCC, which patch-level train SRCC is not
    train_image: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.epochs) and self.epochs[-1] >= self.planned_epochs


@dataclass
class RunStats:
    peak_epoch: int | None
    peak: float
    final: float
    drop: float
    val_best_epoch: int | None
    test_at_val_best: float


@dataclass
class VariantStats:
    variant: str
    legacy: list
    # config fields it sets beside its legacy switches; non-empty for a control (e.g. {"head": "plain"})
    changes: dict = field(default_factory=dict)
    about: str | None = None  # what the variant is, for the summary's sentences
    runs: dict[int, RunStats] = field(default_factory=dict)  # seed -> stats
    incomplete: int = 0
    no_effect: str | None = None  # why the switch changed nothing here; None if it acted
    verdict: str = NO_DATA

    def values(self, name: str) -> list[float]:
        return [getattr(s, name) for _, s in sorted(self.runs.items())]

    def agg(self, name: str) -> tuple[float, float]:
        return mean_sd(self.values(name))

    @property
    def is_control(self) -> bool:
        """Changes a config field rather than (only) switching a defect on: a control, not a defect."""
        return bool(self.changes)

    @property
    def spread(self) -> float:
        """Seed-to-seed SD of the final test SRCC (NaN with fewer than 2 seeds)."""
        return self.agg("final")[1]


def run_curve(run: dict, epochs: list[dict]) -> RunCurve:
    """From a RunSet entry ({"id", "labels", "config"}) and runner.collect's epochs for it."""
    def col(key):
        return [_float(e.get(key)) for e in epochs]

    labels = run["labels"]
    return RunCurve(run["id"], labels["variant"], int(labels["seed"]), int(run["config"]["epochs"]),
                    [int(e["epoch"]) for e in epochs], col("val_srcc"), col("test_srcc"), col("train_srcc"),
                    list(zip(col("lr_backbone"), col("lr_head"))), col("train_image_srcc"))


def run_stats(curve: RunCurve) -> RunStats:
    peak_epoch, top = peak(curve.epochs, curve.test)
    final = curve.test[-1] if curve.test else math.nan
    val_epoch, _ = peak(curve.epochs, curve.val)
    at_val = curve.test[curve.epochs.index(val_epoch)] if val_epoch is not None else math.nan
    return RunStats(peak_epoch, top, final, top - final, val_epoch, at_val)


def paired(variant: VariantStats, fixed: VariantStats | None, name: str) -> list[float]:
    """Per-seed differences variant - fixed of stat `name`, over the seeds both have."""
    if fixed is None:
        return []
    return paired_differences({s: getattr(r, name) for s, r in variant.runs.items()},
                              {s: getattr(r, name) for s, r in fixed.runs.items()}, finite_only=False)


def no_effect_reason(variant: str, curves: list[RunCurve], fixed: list[RunCurve], config: dict) -> str | None:
    """Why the variant changed nothing in this configuration, from what the runs reported; None if it acted.

    LR switches: the reported LRs of both groups equal the fixed solver's in every epoch of every seed.
    Other switches and controls: every reported number (val, test, train SRCC) equals the fixed solver's.
    """
    by_seed = {c.seed: c for c in fixed}
    pairs = [(c, by_seed[c.seed]) for c in curves if c.seed in by_seed and c.epochs]
    if variant in (FIXED, ALL) or not pairs:
        return None
    if variant in LR_SWITCHES:
        if all(_same(c.lrs, f.lrs) for c, f in pairs):
            return "the learning rates it reported equal the fixed solver's in every epoch" + _lr_why(variant, config)
        return None
    if all(_same(c.val, f.val) and _same(c.test, f.test) and _same(c.train, f.train)
           and _same(c.train_image, f.train_image) for c, f in pairs):
        return "every number it reported equals the fixed solver's" + (
            " (a single epoch: nothing happens after epoch 1)" if config["epochs"] < 2 else "")
    return None


def _lr_why(variant: str, config: dict) -> str:
    """The likely cause, for the reader, from the configuration (the decision itself was made from the LRs)."""
    from hyperiqa.schedules import RATIO_RESET_EPOCH

    if variant == "lr_ratio_reset":
        if config["lr_ratio"] == 1:
            return " (lr_ratio is 1: resetting it to 1 changes nothing)"
        if config["epochs"] <= RATIO_RESET_EPOCH:
            return f" (the reset acts from epoch {RATIO_RESET_EPOCH + 1}; these runs have {config['epochs']} epochs)"
    if config["schedule"] == "constant" and not config["warmup_epochs"]:
        return " (the schedule is constant: there is no change to delay or to skip)"
    if config["schedule"] == "step" and config["step_size"] >= config["epochs"]:
        return f" (step_size {config['step_size']} >= {config['epochs']} epochs: the LR never steps)"
    return ""


def _same(a: list, b: list, rel: float = 1e-9) -> bool:
    flat_a, flat_b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    return flat_a.shape == flat_b.shape and bool(np.allclose(flat_a, flat_b, rtol=rel, atol=0, equal_nan=True))


def verdict(stats: VariantStats, epochs: int) -> str:
    """NO_EFFECT, NO_DATA, or whether the variant declines (the rule above) and after an early or a late peak."""
    if stats.no_effect:
        return NO_EFFECT
    drop, _ = stats.agg("drop")
    if not math.isfinite(drop):
        return NO_DATA
    spread = stats.spread
    threshold = max(MIN_DROP, SPREAD_FACTOR * spread) if math.isfinite(spread) else MIN_DROP
    if drop <= threshold or not all(d > MIN_DROP for d in stats.values("drop") if math.isfinite(d)):
        return NO_DECLINE
    peak_epoch = float(np.median([e for e in stats.values("peak_epoch") if e is not None]))
    return DECLINES if peak_epoch <= epochs / 2 else FALLS_LATE


def summarize(runs: list[dict], curves: dict[str, list[dict]]) -> list[VariantStats]:
    """Per-variant statistics, in the order the variants first appear in `runs`."""
    all_curves = curves_of(runs, curves)
    configs = {r["labels"]["variant"]: r["config"] for r in runs}
    labels = {r["labels"]["variant"]: r["labels"] for r in runs}
    fixed_curves = [c for c in all_curves if c.variant == FIXED]
    out = []
    for variant in dict.fromkeys(r["labels"]["variant"] for r in runs):
        mine = [c for c in all_curves if c.variant == variant]
        stats = VariantStats(variant, configs[variant]["legacy"], dict(labels[variant].get("changes") or {}),
                             labels[variant].get("about"))
        for c in mine:
            if c.epochs:
                stats.runs[c.seed] = run_stats(c)
            stats.incomplete += not c.complete
        stats.no_effect = no_effect_reason(variant, mine, fixed_curves, configs[variant])
        stats.verdict = verdict(stats, configs[variant]["epochs"])
        out.append(stats)
    return out


def curves_of(runs: list[dict], curves: dict[str, list[dict]]) -> list[RunCurve]:
    return [run_curve(r, curves.get(r["id"], [])) for r in runs]


def pm(mean: float, sd: float, signed: bool = False) -> str:
    """'0.812 ± 0.013' (SD over seeds); the mean alone with one seed; 'n/a' without a value."""
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{text} ± {sd:.3f}" if math.isfinite(sd) else text


def _float(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
