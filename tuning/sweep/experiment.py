"""Hyperparameter search for HyperIQA on Ray Tune: ASHA stops trials falling behind, Optuna proposes the next.

    python tuning/search.py                 # the demo: generated dataset, CPU, ~8-10 min on 2 cores
    python tuning/search.py --dataset koniq10k --data-root /data/koniq10k   # on every GPU this process may use

Every trial trains the fixed solver with one sampled configuration and reports image-level
SRCC/PLCC per epoch; the search ends with an export folder (see tuning/export.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time

from hyperiqa.config import SELECTION_METRICS, TrainConfig
from hyperiqa.utils import run_cli
from tuning.confirmation import experiment as confirm
from tuning.engine import experiment_folder, retention, tracking
from tuning.engine.options import (
    absolute,
    add_cluster_flags,
    add_data_flags,
    add_resource_flags,
    add_stall_flag,
    joins_cluster,
    resources,
    resume_command,
    stall_timeout,
)
from tuning.sweep import crosseval
from tuning.sweep.plan import Plan, SearchFlags, describe_defaults, make_plan


def build_parser() -> argparse.ArgumentParser:
    d = describe_defaults()
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_resource_flags(p)
    s = add_data_flags(p, "what to search", "fixed TrainConfig setting for every trial, e.g. --set batch_size=64 "
                                            "(repeatable)")
    s.add_argument("--space", help=f"a name under search_spaces/ or a YAML path (default: {d['space']})")
    s.add_argument("--metric", default="val_srcc", choices=SELECTION_METRICS,
                   help="what ASHA, Optuna and the export maximise (default val_srcc; test_srcc reproduces "
                        "the paper's protocol, which selects on the test split and trains on the rest: "
                        "val_fraction 0 unless --set)")
    b = p.add_argument_group("budget and scheduling")
    b.add_argument("--num-samples", type=int, metavar="N", help=f"trials (default: {d['num_samples']})")
    b.add_argument("--max-epochs", type=int, metavar="E", help=f"epochs of a trial that is never stopped "
                                                              f"(default: {d['max_epochs']})")
    b.add_argument("--grace-period", type=int, metavar="E", help=f"epochs before ASHA may stop a trial "
                                                                f"(default: {d['grace_period']})")
    b.add_argument("--reduction-factor", type=float, default=2.0, metavar="F",
                   help="ASHA keeps 1/F of the trials at each rung (default 2)")
    b.add_argument("--patience", type=int, metavar="E", help=f"stop a trial whose metric has not improved on its own "
                                                            f"best for E epochs, 0 = never (default: {d['patience']})")
    b.add_argument("--searcher", default="optuna", choices=("optuna", "random"),
                   help="optuna = TPE; random = random sampling (both start with the space's start points)")
    b.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial (default 0)")
    o = p.add_argument_group("experiment, cluster and output")
    add_cluster_flags(o)
    o.add_argument("--name", help="experiment name (default <dataset>-<space>-<time>); with --resume: which one")
    o.add_argument("--resume", action="store_true",
                   help="continue the experiment --name (default: the newest under --storage-path); finished "
                        "trials are kept, unfinished ones continue from their checkpoints; with --num-samples "
                        "above its trials, a finished search grows (docs/search.md)")
    o.add_argument("--export-dir", metavar="DIR", help="export folder (default exports/<name>)")
    add_stall_flag(o)
    o.add_argument("--keep-checkpoints", metavar="POLICY", default=retention.DEFAULT_KEEP,
                   help="what the trials' checkpoints keep: best (default: optimizer state only in a running "
                        "trial's latest checkpoint, an ended trial keeps its best epoch's weights); all (every "
                        "epoch Ray keeps, with its optimizer state); top-K (as best, and after the export of a "
                        "finished search only the K best trials keep weights). docs/scale.md")
    tracking.add_flags(p)
    confirm.add_search_flags(p)
    return p


def main(argv: list[str] | None = None, *, trial_fn=None) -> int:
    """The CLI; `trial_fn` replaces the training function of every trial (tests only)."""
    args = build_parser().parse_args(argv)
    confirm.check_search_flags(args)
    plan = resume_plan(args, argv) if args.resume else new_plan(search_flags(args))
    from tuning.engine.result_folder import check_export_dir

    check_export_dir(plan.export_dir, plan.experiment_path)  # refused now, not after the search has run
    with experiment_folder.claim(plan.experiment_path, new=not args.resume):
        return _search(args, plan, trial_fn)


def cli() -> None:
    """The command line (`hyperiqa-search`): a user mistake is one line on stderr and exit code 2."""
    run_cli(main)


def _search(args, plan, trial_fn) -> int:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from tuning.engine import launch
    from tuning.sweep import tuner as tuner_module
    from tuning.sweep.export_folder import export_experiment
    from tuning.sweep.grow import save_if_grown
    from tuning.sweep.plan import save_plan

    tracking.prepare(plan, resume=args.resume)  # packages and stores checked before Ray starts
    caches = [TrainConfig.from_dict({**plan.base, **plan.search_space.fixed}, source="the search's base configuration")]
    plan = launch.start_for(plan, args, caches)
    fn = {"fn": trial_fn} if trial_fn else {}
    if args.resume:
        tuner = tuner_module.restore_tuner(plan, **fn)
        save_if_grown(plan)  # the grown budget, once Ray has accepted the experiment
    else:
        tuner = tuner_module.build_tuner(plan, **fn)
        save_plan(plan)
    print(f"experiment: {plan.experiment_path} ({plan.num_samples} trials, up to {plan.max_epochs} epochs each)")
    start = time.monotonic()
    with experiment_folder.disk_full_is_one_line(plan.experiment_path,
                                                 resume_command('search.py', plan.experiment_path)):
        interrupted = launch.fit(tuner)
    minutes = (time.monotonic() - start) / 60
    result = export_experiment(plan.experiment_path, plan.export_dir, log=lambda *_: None)
    _print_summary(plan, result, minutes, interrupted)
    _prune_after_export(plan, result, interrupted)
    if result.cross:
        print("\n" + crosseval.text(result.cross))
    if interrupted:
        return 130  # what the shell reports for Ctrl-C: a script running the search must not read success
    failed = _every_trial_failed(result.rows)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    if args.confirm and confirm.after_search(plan, result, top=args.confirm, splits=args.confirm_splits,
                                             sets=args.set):
        return 130
    return 0


def search_flags(args: argparse.Namespace) -> SearchFlags:
    """The flags of a new search, typed; resources and tracking checked (make_plan checks the rest)."""
    return SearchFlags(
        dataset=args.dataset, data_root=args.data_root, sets=tuple(args.set), space=args.space, metric=args.metric,
        searcher=args.searcher, seed=args.seed, num_samples=args.num_samples, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, patience=args.patience,
        resources=resources(args.gpus, args.gpus_per_trial, args.cpus_per_trial, args.max_concurrent,
                            joined=joins_cluster(args.address)),
        storage_path=args.storage_path, name=args.name, export_dir=args.export_dir,
        keep_checkpoints=args.keep_checkpoints, cross=tuple(args.cross), stall_timeout=args.stall_timeout,
        tracking=tracking.plan_fields(args.log_to, args.mlflow_uri, args.wandb_project, args.optuna_storage))


def new_plan(flags: SearchFlags) -> Plan:
    plan = make_plan(flags)  # every check that needs no Ray: space, --set, dataset
    if plan.metric.startswith("test_"):
        print(f"warning: --metric {plan.metric} selects trials and epochs on the TEST split (the paper's protocol): "
              "the reported test score is optimistic; use val_srcc for an honest estimate", file=sys.stderr)
    return plan


def resume_plan(args: argparse.Namespace, argv: list[str] | None = None) -> Plan:
    """The saved plan, grown by a larger --num-samples (tuning/sweep/grow.py)."""
    from tuning.sweep import grow

    plan = experiment_folder.resume(args.storage_path, args.name, experiment_folder.SEARCH, Plan,
                                    instead="`python tuning/export.py {experiment}` exports what its trials saved")
    grow.check_unchanged(plan, grow.given_flags(build_parser(), argv))
    plan = grow.resumed_plan(plan, args.num_samples)
    if args.export_dir:
        plan = dataclasses.replace(plan, export_dir=absolute(args.export_dir))
    return dataclasses.replace(plan, stall_timeout=stall_timeout(args.stall_timeout, plan.stall_timeout))


def _prune_after_export(plan, result, interrupted: bool) -> None:
    """--keep-checkpoints top-K: once a search has finished and is exported, the trials outside the K best
    keep no weights. Not after an interrupted search, nor while a trial is unfinished (--resume needs it)."""
    from tuning.sweep import trials_report as report

    k = retention.top_k(plan.keep_checkpoints)
    if not k or interrupted or any(row.ended == report.UNFINISHED for row in result.rows) or result.best is None:
        return
    ranked = [r.trial_id for r in sorted((r for r in result.rows if report.finite(r.best)), key=lambda r: -r.best)]
    ranked = [result.best.trial_id] + [t for t in ranked if t != result.best.trial_id]  # the export's, always
    paths = retention.trial_paths(plan.experiment_path)
    freed = retention.prune_outside_top(plan.experiment_path, paths, ranked, k)
    print(f"\n--keep-checkpoints {plan.keep_checkpoints}: removed the weights of {max(0, len(paths) - k)} trials "
          f"outside the {k} best ({freed / 1e9:.2f} GB)")


def _print_summary(plan, result, minutes: float, interrupted: bool = False) -> None:
    from tuning.sweep import trials_report as report

    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row.ended] = counts.get(row.ended, 0) + 1
    unfinished = counts.get(report.UNFINISHED, 0)
    print(f"\nsearch {'interrupted' if interrupted else 'finished'} after {minutes:.1f} min: {len(result.rows)} "
          "trials (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")")
    print(report.text_table(result.table))
    for row in result.rows:
        if row.message:
            print(f"trial {row.trial_id} ({row.ended}): {row.message}")
    diverged = counts.get(report.DIVERGED, 0)
    if diverged and diverged == len(result.rows):
        print("\nevery trial diverged (non-finite training loss); the export holds the best epoch before "
              "divergence. Lower the learning rates (backbone_lr, lr_ratio) or set grad_clip.")
    _print_early_peak(result.rows, plan.metric)
    if unfinished or interrupted:
        print(f"\ncontinue it with: {resume_command('search.py', plan.experiment_path)}")
    out = result.out_dir
    if result.best is None:
        print(f"\nno trial reported a finite {plan.metric}; nothing to export but the table: {out}")
        return
    checkpoint, config = shlex.quote(f"{out}/checkpoint"), shlex.quote(f"{out}/best_config.yaml")
    print(f"\nbest: trial {result.best.trial_id}, {plan.metric} {result.best.best:.4f} at epoch "
          f"{result.best.best_epoch}\nexport: {out}")
    print("\nnext steps:\n"
          f"  python -m hyperiqa.evaluate --checkpoint {checkpoint} --split test   # score the exported model\n"
          f"  python -m hyperiqa.predict --checkpoint {checkpoint} IMAGE_OR_FOLDER  # score your images\n"
          f"  python -m hyperiqa.train --config {config}                  # retrain the best setting\n"
          f"  python tuning/export.py {shlex.quote(plan.experiment_path)}   # re-export; --resume continues an "
          "interrupted search")


def _every_trial_failed(rows) -> str:
    """One line when no trial could start (data, cache or configuration refused on its node), else ""."""
    from tuning.sweep import trials_report as report

    if not rows or any(row.ended != report.FAILED for row in rows):
        return ""
    return (f"every trial failed to start ({len(rows)} of {len(rows)}); the first, trial {rows[0].trial_id}: "
            f"{rows[0].message}")


def _print_early_peak(rows, metric: str) -> None:
    """The summary.md paragraph on the original's symptom, when most trials show it."""
    from tuning.sweep import trials_report as report

    warning = report.early_peak_warning(rows, metric)
    if warning:
        print(f"\nwarning: {warning}")

