"""What a confirmation's runs say: both selection protocols, statistics over splits, the paired bootstrap,
the verdict sentence, confirm.csv, summary.md and curves.png. No Ray imports. The statistics (describe,
paired differences, bootstrap) are tuning/run_stats.py's, shared with the ablation.

Protocols, per run (one configuration on one split):
  honest       the epoch with the best val SRCC; its test numbers are reported
  paper-style  the epoch with the best test SRCC (the original code kept the best test SRCC and the PLCC
               of that epoch): selection on the test split, optimistic by construction
The earliest epoch wins a tie in both, as in the solver's own best/ checkpoint.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from hyperiqa.text import fmt
from tuning import curves_plot, run_stats
from tuning.run_stats import RESAMPLES, bootstrap_mean, describe, finite

PROTOCOLS = {"honest": "val_srcc", "paper": "test_srcc"}  # protocol -> the metric that picks the epoch
REPORTED = ("test_srcc", "test_plcc", "test_plcc_logistic")
LABELS = {"test_srcc": "test SRCC", "test_plcc": "test PLCC", "test_plcc_logistic": "test PLCC (logistic)"}
FEW_SPLITS = 5  # below this a percentile bootstrap covers less than it claims: the verdict says so


def select_epoch(curve: list[dict], key: str) -> dict | None:
    """The report with the best finite `key` (earliest on ties); None if no epoch has one."""
    best = None
    for report in curve:
        value = report.get(key)
        if finite(value) and (best is None or value > best[key]):
            best = report
    return best


def run_row(labels: dict, curve: list[dict]) -> dict:
    """One confirm.csv row: the run's labels, then each protocol's epoch and numbers (NaN: none)."""
    row = {**labels, "epochs_run": len(curve)}
    for protocol, key in PROTOCOLS.items():
        chosen = select_epoch(curve, key) or {}
        row[f"{protocol}_epoch"] = int(chosen["epoch"]) if chosen else ""
        for metric in ("val_srcc", *REPORTED):
            value = chosen.get(metric)
            row[f"{protocol}_{metric}"] = float(value) if finite(value) else math.nan
    return row


def paired_differences(rows: list[dict], config: str, baseline: str, key: str = "honest_test_srcc") -> list[float]:
    """config minus baseline on each split where both have a finite value, in split order."""
    mine = {r["split"]: r[key] for r in rows if r["config_id"] == config}
    base = {r["split"]: r[key] for r in rows if r["config_id"] == baseline}
    return run_stats.paired_differences(mine, base)


def verdict(name: str, mean: float, low: float, high: float, n: int, *, identical: bool = False) -> str:
    """One sentence: does `name` beat the baseline beyond split noise (the interval excludes 0)?"""
    if identical:
        return f"{name} is the baseline configuration itself: there is nothing to confirm (difference 0 by construction)."
    if not (finite(low) and finite(high)):
        return (f"{name} cannot be judged against the baseline: {n} split(s) with results for both, and an "
                "interval needs at least 2.")
    what = (f"mean paired difference {mean:+.4f} honest test SRCC over {n} splits, 95% bootstrap interval "
            f"[{low:+.4f}, {high:+.4f}]")
    if low > 0:
        text = f"{name} beats the baseline beyond split noise: {what} excludes 0."
    elif high < 0:
        text = f"{name} is worse than the baseline beyond split noise: {what} excludes 0."
    else:
        text = f"{name} does not beat the baseline beyond split noise: {what} includes 0."
    if n < FEW_SPLITS:
        text += f" With {n} splits the interval is rough (a bootstrap of few values is too narrow); use --splits 10."
    return text


# --- the report -------------------------------------------------------------------------------

def analyse(candidates: list[dict], rows: list[dict], baseline: str, *, seed: int = 0) -> dict:
    """Statistics per configuration and protocol, and each configuration's paired difference to the baseline.

    candidates: [{"id", "label", "same_as"}]; a configuration identical to an earlier one has no runs
    of its own (same_as names the one whose rows it shares).
    """
    stats, paired = {}, {}
    runs_of = {c["id"]: c.get("same_as") or c["id"] for c in candidates}
    for c in candidates:
        mine = [r for r in rows if r["config_id"] == runs_of[c["id"]]]
        stats[c["id"]] = {p: {m: describe([r[f"{p}_{m}"] for r in mine]) for m in REPORTED} for p in PROTOCOLS}
        if c["id"] == baseline:
            continue
        identical = runs_of[c["id"]] == runs_of[baseline]
        d = paired_differences(rows, runs_of[c["id"]], runs_of[baseline])
        mean, low, high = bootstrap_mean(d, seed=seed)
        paired[c["id"]] = {"n": len(d), "mean": mean, "low": low, "high": high, "identical": identical,
                           "wins": sum(x > 0 for x in d), "statistic": "mean paired difference of honest test SRCC",
                           "interval": f"95% percentile bootstrap over splits, {RESAMPLES} resamples, seed {seed}",
                           "sentence": verdict(c["label"], mean, low, high, len(d), identical=identical)}
    return {"stats": stats, "paired": paired}


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv(v) for k, v in r.items()} for r in rows)
    return out.getvalue()


def _csv(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def stats_table(candidates: list[dict], result: dict, protocol: str) -> list[str]:
    head = "| configuration | splits | " + " | ".join(f"{LABELS[m]} median | mean ± std | IQR" for m in REPORTED) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(REPORTED))]
    for c in candidates:
        s = result["stats"][c["id"]][protocol]
        cells = [" | ".join([fmt(s[m]["median"], finite_only=True),
                             f"{fmt(s[m]['mean'], finite_only=True)} ± {fmt(s[m]['std'], finite_only=True)}",
                             fmt(s[m]["iqr"], finite_only=True)]) for m in REPORTED]
        lines.append(f"| {c['label']} | {s['test_srcc']['n']} | " + " | ".join(cells) + " |")
    return lines


def paired_table(candidates: list[dict], result: dict) -> list[str]:
    lines = ["| configuration | splits | mean paired difference (honest test SRCC) | 95% bootstrap interval | "
             "splits better than the baseline | beyond split noise |", "|---|---|---|---|---|---|"]
    for c in candidates:
        p = result["paired"].get(c["id"])
        if p is None:
            continue
        beyond = "identical" if p["identical"] else (
            "-" if not finite(p["low"]) else ("yes, better" if p["low"] > 0 else "yes, worse" if p["high"] < 0 else "no"))
        interval = f"[{p['low']:+.4f}, {p['high']:+.4f}]" if finite(p["low"]) else "-"
        lines.append(f"| {c['label']} | {p['n']} | {fmt(p['mean'], '+.4f', finite_only=True)} | {interval} | {p['wins']}/{p['n']} | {beyond} |")
    return lines


def summary_markdown(title: str, facts: list[str], candidates: list[dict], result: dict, winner: str) -> str:
    lines = [f"# {title}", "", *[f"- {f}" for f in facts], ""]
    if winner in result["paired"]:
        lines += [f"**{result['paired'][winner]['sentence']}**", ""]
    lines += ["## Honest: epoch selected on val, test reported at that epoch", "", *stats_table(candidates, result, "honest"),
              "", "## Paper-style (OPTIMISTIC): the best test epoch of each run, i.e. selection on the test split",
              "", "As the paper did (the original code kept each run's best test SRCC and the PLCC of that epoch; "
              "the paper reports the median over splits). Compare configurations with the honest table.", "",
              *stats_table(candidates, result, "paper"), "", "## Paired difference to the baseline", "",
              *paired_table(candidates, result), "",
              *[f"- {p['sentence']}" for p in result["paired"].values()], "",
              "Files: confirm.csv (one row per configuration and split: both protocols' epochs and numbers), "
              "confirm.json (these statistics), curves.png (val and test SRCC per epoch: mean over splits, "
              "band ± 1 std).", ""]
    return "\n".join(lines)


def plot_curves(candidates: list[dict], curves: dict[str, list[list[dict]]], path) -> None:
    """curves: {candidate id: [one run's reports per split]}; val and test SRCC per epoch, mean ± std band."""
    keys = ("val_srcc", "test_srcc")
    series = []
    for c in candidates:
        runs = curves.get(c.get("same_as") or c["id"], [])
        epochs = sorted({int(r["epoch"]) for run in runs for r in run})
        if not epochs:
            continue
        per_panel = {}
        for index, key in enumerate(keys):
            means, stds = [], []
            for e in epochs:
                values = [r[key] for run in runs for r in run if int(r["epoch"]) == e and finite(r.get(key))]
                means.append(np.mean(values) if values else np.nan)
                stds.append(np.std(values) if len(values) > 1 else 0.0)
            m, s = np.array(means), np.array(stds)
            per_panel[index] = curves_plot.Curve(epochs, list(m), list(m - s), list(m + s))
        series.append(curves_plot.Series(f"{c['label']} ({len(runs)} splits)", per_panel, marker="o"))
    panels = [curves_plot.Panel(f"{name} per epoch (mean over splits, band ± 1 std)", ylabel=ylabel)
              for name, ylabel in (("val SRCC", "SRCC"), ("test SRCC", ""))]
    curves_plot.plot(panels, series, path)
