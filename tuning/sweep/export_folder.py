"""Export a search: best configuration, best-epoch checkpoint, trials table, curves, importance, summary.

    python tuning/export.py EXPERIMENT_PATH [--out DIR] [--cross NAME=ROOT ...] [--format FORMAT ...]

re-exports any finished or interrupted experiment (EXPERIMENT_PATH = storage path / name). The
folder is built beside its destination and renamed into place, so a reader never sees half of it.
It replaces only an empty folder or one an export wrote (it holds .hyperiqa-export), never the
experiment's folder, one inside or holding it, or the current folder; others are refused in one line.

    best_config.yaml   full TrainConfig of the best trial (python -m hyperiqa.train --config best_config.yaml)
    checkpoint/        the best epoch of the best trial (not its last): the solver's checkpoint files
    metrics.json       what that epoch reported, with the trial id and its parameters
    trials.csv         one row per trial: params, best and last metric, best epoch, epochs run, how it ended
    curves.png         the metric per epoch for every trial
    importance.json    Optuna's parameter importance
    summary.md         the above in short, with the best checkpoint's metrics and the cross-dataset table

With --format (repeatable) the best checkpoint is also written for other HyperIQA code (hyperiqa/convert.py):
original -> hyperiqa_original.pkl (SSL92/hyperIQA's HyperNet), pyiqa -> hyperiqa_pyiqa.pth (pyiqa's
HyperNet), onnx -> hyperiqa.onnx (the whole scoring path). A checkpoint a format cannot hold is refused
in one line before anything is replaced.

With --cross NAME=ROOT (or the search's own --cross, saved with it) the exported checkpoint is also
scored on every image of those datasets (tuning/sweep/crosseval.py); the table goes to summary.md and to
metrics.json under `cross_dataset`. A search logged to MLflow gets its runs tagged: `hyperiqa.best`
(true on the exported trial's run) and `hyperiqa.ended`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hyperiqa.checkpoint import CONFIG
from hyperiqa.convert import FILES as FORMAT_FILES
from hyperiqa.text import fmt
from hyperiqa.utils import UserError, atomic_write_json, atomic_write_text
from tuning.engine import experiment_folder, tracking
from tuning.engine.result_folder import staging
from tuning.engine.stall import stalled_ids
from tuning.run_stats import finite
from tuning.sweep import crosseval
from tuning.sweep import trials_report as report
from tuning.sweep.plan import Plan, load_plan


@dataclass
class ExportResult:
    out_dir: Path
    rows: list[report.TrialRow]
    best: report.TrialRow | None
    table: list[dict]
    cross: list[dict] = field(default_factory=list)  # crosseval.evaluate entries, one per --cross dataset


def export_experiment(experiment_path: str, out_dir: str | None = None, *, cross: list[list[str]] | None = None,
                      formats: list[str] | tuple = (), log=print, progress=print) -> ExportResult:
    """cross: [[name, root], ...] replacing the search's saved --cross; formats: FORMAT_FILES keys to write
    beside checkpoint/; progress: cross-dataset and tracking lines."""
    plan = load_plan(experiment_path)
    cross = plan.cross if cross is None else cross
    space = plan.search_space
    rows, results = load_trials(experiment_path, plan, log=log)
    target = Path(out_dir or plan.export_dir).expanduser().resolve()
    best_row = best_trial(rows)
    best = results[best_row.trial_id] if best_row else None
    entries = report.table(rows, plan.metric, [p.name for p in space.params],
                           first=best_row.trial_id if best_row else None)
    with staging(target, experiment_path) as tmp:
        _write_trials_csv(tmp / "trials.csv", entries)
        report.plot_curves(rows, plan.metric, best_row.trial_id if best_row else None, tmp / "curves.png")
        atomic_write_json(tmp / "importance.json", report.importance(rows, space.distributions(), first_rung=plan.grace_period))
        metrics, cross_results, written = {}, [], []
        if best is not None:
            metrics = _export_best(best, best_row, plan, space, tmp)
            written = write_formats(tmp / "checkpoint", formats, tmp)  # before cross-evaluation: a refusal comes fast
            if cross:
                cross_results = crosseval.evaluate(tmp / "checkpoint", cross, log=progress)
            atomic_write_json(tmp / "metrics.json", {**metrics, **({"cross_dataset": cross_results} if cross else {})})
        atomic_write_text(tmp / "summary.md", _summary(plan, rows, best_row, entries, metrics, cross_results,
                                                       [p.name for p in written]))
    log(f"export: {target}")
    tracking.tag_mlflow_runs(plan, rows, best_row.trial_id if best_row else None, log=progress)
    return ExportResult(target, rows, best_row, entries, cross_results)


def load_trials(experiment_path: str, plan: Plan, *, log=print) -> tuple[list[report.TrialRow], dict]:
    """One row per trial and {trial id: its ray.tune.Result}, from Ray's experiment state; from the trials'
    own folders (trial_folders.py) when that state is missing or unreadable (a full disk truncates it)."""
    from ray import tune

    damaged = experiment_folder.damaged_state(experiment_path)
    if damaged is None:
        try:
            analysis = tune.ExperimentAnalysis(experiment_path, default_metric=plan.metric, default_mode="max")
        except ValueError as exc:  # no state file: the search stopped before Ray's first snapshot
            damaged = f"no Ray Tune experiment state yet ({str(exc).splitlines()[0]})"
        else:
            return _rows_from_state(analysis, plan, stalled_ids(experiment_path))
    from tuning.engine.trial_folders import read_trials

    trials = read_trials(experiment_path)
    if not trials:
        states = experiment_folder.state_files(experiment_path)
        staged = experiment_folder.staged_copy(experiment_path, states[-1].name) if states else None
        then = (f"; Ray's driver still holds an intact copy: copy the contents of {staged.parent} into "
                f"{experiment_path}, then export again" if staged else "")
        raise UserError(f"{experiment_path}: {damaged}, and no trial folder there holds a result{then}")
    log(f"warning: {damaged}; read the {len(trials)} trials from their own folders instead (a trial that ASHA "
        "stopped or that errored shows as unfinished)")
    stalled = stalled_ids(experiment_path)
    rows = [report.make_row(t.trial_id, t.config, "", t.epochs, plan.metric, plan.max_epochs, t.trial_id in stalled)
            for t in trials]
    return rows, {t.trial_id: t for t in trials}


def _rows_from_state(analysis, plan: Plan, stalled: set[str]) -> tuple[list[report.TrialRow], dict]:
    from ray import tune

    grid = tune.ResultGrid(analysis)  # one Result per trial, in analysis.trials order
    rows, results = [], {}
    for trial, result in zip(analysis.trials, grid):
        frame = analysis.trial_dataframes.get(trial.trial_id)
        epochs = frame.to_dict("records") if frame is not None and len(frame) else []
        rows.append(report.make_row(trial.trial_id, trial.config or result.config or {}, trial.status, epochs, plan.metric,
                                    plan.max_epochs, trial.trial_id in stalled))
        results[trial.trial_id] = result
    return rows, results


def best_trial(rows: list[report.TrialRow]) -> report.TrialRow | None:
    """The trial with the best finite metric at any epoch; None if no trial has one.

    Ranked by our own rows, not Ray's get_best_result: Ray's running max of a trial's metric becomes NaN
    once the trial reports NaN (a divergence after finite epochs), and such a trial is skipped there.
    """
    scored = [r for r in rows if math.isfinite(r.best)]
    return max(scored, key=lambda r: r.best) if scored else None


def _export_best(best, best_row: report.TrialRow, plan: Plan, space, tmp: Path) -> dict:
    """Copy the best epoch's checkpoint of the best trial (Ray keeps each trial's checkpoints ranked by the
    metric) and write best_config.yaml; returns what metrics.json holds."""
    kept = [(c, m) for c, m in best.best_checkpoints or [] if finite(m.get(plan.metric))]
    if not kept:
        raise UserError(f"the best trial ({best.path}) kept no checkpoint with a finite {plan.metric}")
    # Result.get_best_checkpoint(metric, "max") with one tie rule added: equal scores go to the later
    # epoch, which is the one the ranking keeps when it has to drop one of them (and trials.csv says).
    checkpoint, _ = max(kept, key=lambda cm: (cm[1][plan.metric], cm[1].get("epoch", 0)))
    checkpoint.to_directory(str(tmp / "checkpoint"))
    ckpt_metrics = json.loads((tmp / "checkpoint" / "metrics.json").read_text())
    # Runtime settings the search chose for sharing its machines (a GPU share, one thread); a standalone
    # run, evaluate or predict picks its own. Checkpoints written before they were reset get it here.
    _make_portable(tmp / "checkpoint" / CONFIG)
    cfg = space.config_for(plan.base, best.config or {}, source="best trial").portable()
    cfg.save(tmp / "best_config.yaml")
    return {"trial": best_row.trial_id, "params": best.config, "metric": plan.metric, **_plain(ckpt_metrics)}


def write_formats(checkpoint: Path, formats, folder: Path) -> list[Path]:
    """The checkpoint in each requested format, as FORMAT_FILES names it inside `folder`."""
    from hyperiqa.convert import write_format

    return [write_format(checkpoint, fmt, folder / FORMAT_FILES[fmt]) for fmt in dict.fromkeys(formats)]


def _make_portable(path: Path) -> None:
    from hyperiqa.config import TrainConfig

    if path.is_file():
        TrainConfig.load(path).portable().save(path)


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _write_trials_csv(path: Path, entries: list[dict]) -> None:
    buffer = io.StringIO()
    if entries:
        writer = csv.DictWriter(buffer, fieldnames=list(entries[0]))
        writer.writeheader()
        writer.writerows(entries)
    atomic_write_text(path, buffer.getvalue())


def _summary(plan: Plan, rows, best_row, entries, metrics: dict, cross: list[dict], formats: list[str]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.ended] = counts.get(row.ended, 0) + 1
    lines = [f"# Search {plan.name}", "",
             f"- dataset: {plan.base['dataset']}; space: {plan.space_source}; searcher: {plan.searcher} (seed {plan.seed})",
             f"- metric: {plan.metric}; ASHA max {plan.max_epochs} epochs, grace {plan.grace_period}, "
             f"reduction factor {plan.reduction_factor:g}",
             f"- trials: {len(rows)} (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"]
    if best_row is not None:
        lines.append(f"- best: trial {best_row.trial_id}, {plan.metric} {best_row.best:.4f} at epoch "
                     f"{best_row.best_epoch}; params {best_row.params}")
    lines += [f"- trial {r.trial_id} ({r.ended}): {r.message}" for r in rows if r.message]
    lines += report.early_peak_lines(rows, plan.metric)
    warning = report.early_peak_warning(rows, plan.metric)
    lines += ["", f"> **Warning:** {warning}"] if warning else []
    lines += ["", "```", report.text_table(entries), "```", ""]
    lines += _metrics_table(metrics) + crosseval.markdown(cross)
    lines += ["Files: best_config.yaml, checkpoint/ (best epoch of the best trial), metrics.json, trials.csv, "
              "curves.png, importance.json" + "".join(f", {name}" for name in formats) + ".", ""]
    if plan.metric.startswith("test_"):
        lines.insert(2, "**Selected on the TEST split: the reported test score is optimistic.**\n")
    return "\n".join(lines)


def _metrics_table(metrics: dict) -> list[str]:
    """The exported epoch's image-level metrics per split; plcc_logistic is the PLCC IQA papers report."""
    splits = [s for s in ("val", "test") if any(f"{s}_{k}" in metrics for k in crosseval.METRICS)]
    if not splits:
        return []
    lines = [f"## Best checkpoint (trial {metrics['trial']}, epoch {metrics.get('epoch')})", "",
             "| split | " + " | ".join(crosseval.METRICS) + " |", "|---" * (len(crosseval.METRICS) + 1) + "|"]
    for split in splits:
        cells = [fmt(metrics.get(f"{split}_{k}"), finite_only=True) for k in crosseval.METRICS]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return lines + [""]
