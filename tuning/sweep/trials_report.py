"""What an experiment's trials did: one row per trial, how it ended, curves, parameter importance.

No Ray imports: rows are built from Ray's trial status and per-epoch results by tuning/export.py.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from hyperiqa.text import csv_number
from tuning import curves_plot
from tuning.run_stats import MIN_DROP, finite, peak

# How a trial ended (trials.csv "ended" column).
COMPLETED, ASHA, DECLINE, DIVERGED, ERROR = "completed", "stopped by ASHA", "stopped for decline", "diverged", "error"
FAILED = "failed to start"  # its data, cache or configuration was refused on its node (see `message`)
UNFINISHED = "unfinished"  # the experiment was interrupted: --resume continues it
STALLED = "stalled"  # reported nothing too long, every retry too (tuning/engine/stall.py, stalls.json)
STALLED_MESSAGE = ("reported nothing for longer than the --stall-timeout rule allows, and so did each retry "
                   "from its last checkpoint (stalls.json in the experiment folder)")


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric) in epoch order
    ended: str = UNFINISHED
    epochs_run: int = 0
    best: float = float("nan")
    best_epoch: int | None = None
    last: float = float("nan")
    message: str = ""  # why a trial failed to start or diverged


def classify(ray_status: str, last_status: str | None, epochs_run: int, max_epochs: int,
             stalled: bool = False) -> str:
    """Ray's trial status plus the solver's last status -> how the trial ended. `stalled`: the stall watchdog
    ended the trial for good (its id is under "stalled" in stalls.json). Ray 2.60's saved state may still
    call such a trial RUNNING: a trial whose actor died is not marked for the final snapshot when it errors."""
    if stalled and ray_status != "TERMINATED":
        return STALLED
    if ray_status == "ERROR":
        return ERROR
    if last_status == "failed":
        return FAILED
    if last_status == "diverged":
        return DIVERGED
    if last_status == "early_stopped":
        return DECLINE
    if last_status == "completed" or epochs_run >= max_epochs:
        return COMPLETED
    if ray_status == "TERMINATED":  # stopped from outside before max_epochs, without an error: the scheduler
        return ASHA
    return UNFINISHED


def curve(epochs: list[dict], metric: str) -> list[tuple[int, float]]:
    """(epoch, metric) in epoch order; an epoch reported twice (after a resume) counts with its last report."""
    by_epoch = {int(r["epoch"]): r for r in epochs if finite(r.get("epoch")) and r["epoch"] >= 1}
    return [(e, _float(by_epoch[e].get(metric))) for e in sorted(by_epoch)]


def make_row(trial_id: str, params: dict, ray_status: str, epochs: list[dict], metric: str, max_epochs: int,
             stalled: bool = False) -> TrialRow:
    """epochs: the trial's reported results (possibly with an epoch repeated after a resume; the last one counts)."""
    row = TrialRow(trial_id, dict(params), curve(epochs, metric))
    last = epochs[-1] if epochs else {}
    row.epochs_run = row.curve[-1][0] if row.curve else 0
    row.ended = classify(ray_status, last.get("status"), row.epochs_run, max_epochs, stalled)
    row.message = str(last.get("message") or "") if row.ended in (FAILED, DIVERGED) else ""
    if row.ended == STALLED:
        row.message = STALLED_MESSAGE
    scored = [(v, e) for e, v in row.curve if math.isfinite(v)]
    if scored:
        # On a tie the later epoch wins, as in Ray's checkpoint ranking: that is the checkpoint it keeps.
        row.best, row.best_epoch = max(scored)
    if row.curve:
        row.last = row.curve[-1][1]
    return row


def table(rows: list[TrialRow], metric: str, param_names: list[str], first: str | None = None) -> list[dict[str, Any]]:
    """trials.csv / summary rows, best metric first (`first` leads among equal ones: the exported trial)."""
    out = []
    for row in sorted(rows, key=lambda r: (-r.best if math.isfinite(r.best) else math.inf, r.trial_id != first)):
        entry: dict[str, Any] = {"trial": row.trial_id}
        entry.update({name: row.params.get(name, "") for name in param_names})
        entry.update({f"best_{metric}": csv_number(row.best), "best_epoch": row.best_epoch or "",
                      f"last_{metric}": csv_number(row.last), "epochs_run": row.epochs_run, "ended": row.ended,
                      "early_peak": str(early_peak(row.curve)).lower(), "message": row.message})
        out.append(entry)
    return out


# "Best in the first quarter of its epochs" needs a quarter of at least one epoch, and "then fell" at least
# three epochs after it: an ASHA-stopped trial with 2 epochs cannot show the symptom.
EARLY_PEAK_MIN_EPOCHS = 4


def early_peak(curve: list[tuple[int, float]]) -> bool:
    """Whether one trial's curve shows the original HyperIQA's symptom: its score is best early, then falls.

    True when the trial ran at least EARLY_PEAK_MIN_EPOCHS epochs, its peak (the first epoch reaching its
    highest finite value, as the ablation reads a run) lies in the first quarter of the epochs it ran, and
    its last value is more than the ablation's MIN_DROP below that peak: tuning/run_stats.py's decline
    rule on one curve (the part that compares the drop with the seed-to-seed spread needs several seeds).
    The quarter is of the epochs it ran, not of the planned maximum: a trial stopped at epoch 4 of 12 with
    its best at epoch 3 peaked late in what it showed, and one epoch of falling after it is noise. A curve
    whose last value is not finite diverged: that is its own ending, reported as such, not this symptom.
    """
    if not curve or curve[-1][0] < EARLY_PEAK_MIN_EPOCHS:
        return False
    epochs, values = [e for e, _ in curve], [v for _, v in curve]
    peak_epoch, top = peak(epochs, values)
    final = values[-1]
    return peak_epoch is not None and peak_epoch <= epochs[-1] / 4 and math.isfinite(final) and top - final > MIN_DROP


def early_peak_lines(rows: list[TrialRow], metric: str) -> list[str]:
    """One markdown line per trial that early_peak flags."""
    lines = []
    for row in rows:
        if early_peak(row.curve):
            epoch, top = peak([e for e, _ in row.curve], [v for _, v in row.curve])
            lines.append(f"- trial {row.trial_id}: early peak, then decline: {metric} {top:.4f} at epoch {epoch} "
                         f"of {row.epochs_run}, {row.last:.4f} at the last")
    return lines


def early_peak_warning(rows: list[TrialRow], metric: str) -> str:
    """A paragraph when most trials (more than half of those with EARLY_PEAK_MIN_EPOCHS epochs or more) show
    early_peak; "" otherwise. summary.md highlights it and the search prints it at the end."""
    eligible = [r for r in rows if r.epochs_run >= EARLY_PEAK_MIN_EPOCHS]
    flagged = sum(early_peak(r.curve) for r in eligible)
    if not eligible or 2 * flagged <= len(eligible):
        return ""
    return (f"Early peak, then decline in {flagged} of the {len(eligible)} trials that ran {EARLY_PEAK_MIN_EPOCHS} "
            f"epochs or more: their {metric} was best in the first quarter of their epochs and fell by more than "
            f"{MIN_DROP:g} by the last. This is the symptom this project was built to diagnose (the original "
            "HyperIQA's test SRCC peaks after epoch 1 and then falls while train SRCC rises). Try the fixed solver "
            "(legacy: []), a lower learning rate or weight decay; see docs/original-defects.md, and measure which "
            "defect causes it with the ablation: python tuning/ablate.py")


def text_table(entries: list[dict[str, Any]], hide: tuple[str, ...] = ("message",)) -> str:
    if not entries:
        return "(no trials)"
    keys = [k for k in entries[0] if k not in hide]
    cells = [[_fmt(e[k]) for k in keys] for e in entries]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def plot_curves(rows: list[TrialRow], metric: str, best_id: str | None, path) -> None:
    """The metric per epoch for every trial; a trial's line ends where it stopped, with a marker per ending."""
    markers = {COMPLETED: "o", ASHA: "x", DECLINE: "v", DIVERGED: "D", ERROR: "s", UNFINISHED: ">", STALLED: "X"}
    series = []
    for row in rows:
        points = [(e, v) for e, v in row.curve if math.isfinite(v)]
        if not points:
            continue
        best = row.trial_id == best_id
        series.append(curves_plot.Series(
            f"{row.trial_id} ({row.ended})", {0: curves_plot.Curve(*map(list, zip(*points)))},
            width=2.5 if best else 1.0, alpha=1.0 if best else 0.6, style="-" if row.ended == COMPLETED else "--",
            end_marker=markers.get(row.ended, ".")))
    # no trial reported a finite value (e.g. every one failed to start): the empty text says so on the figure
    panel = curves_plot.Panel(f"{metric} per epoch (dashed: stopped before the last epoch; thick: best trial)",
                              ylabel=metric, empty_text=f"no trial reported a finite {metric}")
    curves_plot.plot([panel], series, path)


RELIABLE_TRIALS = 10  # fewer trials with a value at ASHA's first rung: importance.json says unreliable


def importance(rows: list[TrialRow], distributions: dict, *, first_rung: int = 1) -> dict[str, Any]:
    """Optuna's parameter importance on a study rebuilt from the trials (value = each trial's best metric).

    first_rung: epochs of ASHA's first rung (the search's grace period). PED-ANOVA/fANOVA on a handful
    of trials, sampled where TPE already believed the optimum was and cut short by ASHA, ranks noise:
    with fewer than RELIABLE_TRIALS trials (with a finite metric) reaching the first rung the result
    says `reliable: false` and why. The default (1) counts every trial that reported an epoch.
    """
    import optuna

    usable = [r for r in rows if math.isfinite(r.best)]
    at_rung = sum(r.epochs_run >= first_rung for r in usable)
    reliable = at_rung >= RELIABLE_TRIALS
    trust = {"reliable": reliable, "trials_at_first_rung": at_rung, "first_rung": first_rung}
    searched = [n for n, d in distributions.items() if not _single_choice(d)]
    if len(usable) < 3 or not searched:
        return {"importances": {}, **trust, "reliable": False,
                "note": f"not computed: {len(usable)} trials with a finite metric and "
                        f"{len(searched)} searched parameters (need >= 3 and >= 1)"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in usable:
        params = {k: v for k, v in r.params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: distributions[k] for k in params},
                                                  value=r.best))
    try:
        with warnings.catch_warnings():  # "few trials in a regime": expected in small searches, said in the note
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same value
        return {"importances": {}, **trust, "reliable": False, "note": f"not computed: {exc}"}
    if reliable:
        note = "ASHA-stopped trials count with the best value they reached"
    else:
        note = (f"unreliable: only {at_rung} trials reached the first ASHA rung (epoch {first_rung}); "
                f"with fewer than {RELIABLE_TRIALS}, TPE-concentrated samples and ASHA-truncated values "
                "make this ranking mostly noise: do not read parameter effects from it")
    return {"importances": {k: float(v) for k, v in values.items()}, "trials_used": len(usable), **trust,
            "evaluator": "optuna default (PED-ANOVA); value = each trial's best metric", "note": note}


def _single_choice(dist) -> bool:
    return getattr(dist, "choices", None) is not None and len(dist.choices) == 1


def _float(value) -> float:
    return float(value) if finite(value) else math.nan


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4g}"
    return str(value)
