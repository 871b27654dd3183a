"""Is the winner real? Retrain configurations on K fresh random splits, paired, against a baseline.

    python tuning/confirm.py exports/<search> [more exports or config YAMLs] [--splits 10] [--out DIR]
    python tuning/search.py ... --confirm 3        # the same, on the search's top 3 trials, after its export
    python tuning/confirm.py --summarize ray_results/NAME   # write the report of a confirmation again

The best of many trials picked on one validation split is optimistic until it is confirmed on other
splits. Every configuration (the inputs and a baseline: the paper's configuration, or the preset of
demo and photos) is trained at full budget on the same K splits with the same training seed per split, so
split k is a paired comparison. Splits are fresh: seeds 1, 2, ... skipping any input's own split seed
(a search's split seed is its --seed), so no configuration is judged on the split it was selected on.
Reported under two protocols (see tuning/confirmation/report.py): honest (epoch picked on val) and
paper-style (best test epoch: optimistic), with the honest paired difference to the baseline and its
bootstrap interval. Writes confirm.csv, confirm.json, summary.md and curves.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from hyperiqa.config import PRESETS, TrainConfig, parse_assignments
from hyperiqa.utils import UserError, atomic_write_json, atomic_write_text, run_cli
from tuning.confirmation import report as cr
from tuning.engine import experiment_folder, runner
from tuning.engine.options import (
    Resources,
    absolute,
    add_cluster_flags,
    add_resource_flags,
    add_stall_flag,
    joins_cluster,
    resources,
    resume_command,
    stall_timeout,
)
from tuning.presets import DEMO_SIZE

# Fields that say which images a configuration sees: inputs must agree on the first three (one dataset);
# the baseline takes all of them from the first input.
DATASET_FIELDS = ("dataset", "data_root", "dataset_options")
DATA_FIELDS = (*DATASET_FIELDS, "resize_short_side", "resize_to", "cache_dir")
# Set per split by the confirmation itself: --set may not change them, or the runs would not be paired.
SPLIT_FIELDS = ("seed", "split_seed", "split", "split_file")
DEFAULT_VAL_FRACTION = 0.1  # used when the inputs have no validation split (searched with --metric test_*)


@dataclass(frozen=True)
class Candidate:
    label: str
    source: str
    config: TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/confirm.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="EXPORT_OR_CONFIG",
                   help="export folders of tuning/search.py (their best_config.yaml), run or checkpoint folders "
                        "(config.yaml) or config YAML files, all on one dataset; the first is 'the winner'")
    add_resource_flags(p, unit="run")
    c = p.add_argument_group("confirmation")
    c.add_argument("--splits", type=int, default=10, metavar="K", help="random splits per configuration (default 10)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig setting for every configuration, the baseline included (repeatable)")
    o = p.add_argument_group("experiment, cluster and output")
    add_cluster_flags(o)
    add_stall_flag(o)
    o.add_argument("--name", help="experiment name (default confirm-<time>); with --resume: which one")
    o.add_argument("--resume", action="store_true",
                   help="continue the confirmation --name (default: the newest under --storage-path)")
    o.add_argument("--out", metavar="DIR", help="report folder (default confirm_results/<name>)")
    o.add_argument("--summarize", metavar="EXPERIMENT_PATH",
                   help="write the report of a finished or interrupted confirmation (storage path/name) again "
                        "and exit; runs nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize:
        runset = runner.load_runset(absolute(args.summarize), experiment_folder.CONFIRMATION)
        write_report(replace(runset, out_dir=absolute(args.out)) if args.out else runset, runner.collect_saved(runset))
        return 0
    if args.resume:
        runset = resume_runset(args)
    else:
        if not args.inputs:
            raise UserError("give at least one export folder or config YAML to confirm (or --resume)")
        where = runner.RunOptions(resources(args.gpus, args.gpus_per_trial, args.cpus_per_trial, args.max_concurrent,
                                            unit="run", joined=joins_cluster(args.address)),
                                  args.storage_path, args.name, args.out, stall_timeout(args.stall_timeout))
        runset = make_confirm_runset([load_input(p) for p in args.inputs], args.splits, args.set, where)
    with experiment_folder.claim(runset.experiment_path, new=not args.resume):
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        from tuning.engine import launch, node_cache

        runset = launch.start_for(runset, args, node_cache.runset_configs(runset))
        return 130 if run_and_report(runset, resume=args.resume) else 0  # Ctrl-C: reported, and still a stop


def cli() -> None:
    """The command line (`hyperiqa-confirm`): a user mistake is one line on stderr and exit code 2."""
    run_cli(main)


# --- inputs and runs --------------------------------------------------------------------------

def load_input(path: str) -> Candidate:
    """An export folder (best_config.yaml), a run/checkpoint folder (config.yaml) or a config file."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = next((p / n for n in ("best_config.yaml", "config.yaml") if (p / n).is_file()), None)
        if found is None:
            raise UserError(f"{path}: a folder without best_config.yaml (an export) or config.yaml (a run)")
        return Candidate(p.resolve().name, str(found), TrainConfig.load(found))
    if not p.is_file():
        raise UserError(f"{path}: no such export folder or config file")
    return Candidate(p.stem, str(p), TrainConfig.load(p))


def baseline_for(cfg: TrainConfig) -> Candidate:
    """The paper's configuration (TrainConfig defaults), or the preset of a preset dataset (demo_config(),
    photos_config()), on cfg's data."""
    data = {f: getattr(cfg, f) for f in DATA_FIELDS}
    if cfg.dataset in PRESETS:
        preset = PRESETS[cfg.dataset]
        return Candidate(f"baseline ({preset.__name__})", f"{preset.__name__}()", preset(**data))
    base = TrainConfig.from_dict(data, source="baseline")
    if cfg.backbone_weights and cfg.backbone == base.backbone:  # offline machines: the same local weights
        base = base.replace(backbone_weights=cfg.backbone_weights)
    return Candidate("baseline (paper)", "TrainConfig defaults", base)


def check_one_dataset(inputs: list[Candidate]) -> None:
    seen = {}
    for c in inputs:
        seen.setdefault(tuple(json.dumps(getattr(c.config, f), sort_keys=True) for f in DATASET_FIELDS), c)
    if len(seen) > 1:
        parts = "; ".join(f"{c.source}: {c.config.dataset} at {c.config.data_root or '(generated)'}" for c in seen.values())
        raise UserError(f"the inputs are on different datasets ({parts}); confirm compares configurations on "
                        "the splits of one dataset (set data_root etc. with --set if only the path moved)")


def fresh_seeds(k: int, used: set[int]) -> list[int]:
    """The first k seeds from 1 that no input used for its own split."""
    seeds, s = [], 1
    while len(seeds) < k:
        if s not in used:
            seeds.append(s)
        s += 1
    return seeds


def make_confirm_runset(inputs: list[Candidate], splits: int, sets: list[str], where: runner.RunOptions):
    """Every candidate on `splits` splits, as a runner.RunSet; `sets` applies to every configuration."""
    if splits < 2:
        raise UserError(f"--splits {splits}: at least 2 (the paired interval is over splits; 10 is usual)")
    forced = sorted(set(parse_assignments(sets)) & set(SPLIT_FIELDS))
    if forced:
        raise UserError(f"--set {forced[0]}: the confirmation sets {', '.join(SPLIT_FIELDS)} itself (split k: "
                        "the same split and training seed for every configuration)")
    check_one_dataset(inputs)
    first = inputs[0].config
    candidates = [baseline_for(first), *inputs]
    common, notes = protocol_fields(first)
    if first.dataset == "demo":
        common.update(DEMO_SIZE)
        notes.append("demo: every configuration runs " + ", ".join(f"{k} {v}" for k, v in DEMO_SIZE.items())
                     + " to fit 10 minutes on 2 cores (--set epochs=... to change)")
    used = {c.config.split_seed if c.config.split_seed is not None else c.config.seed for c in inputs}
    seeds = fresh_seeds(splits, used)
    described, runs, unique = [], [], {}
    for i, c in enumerate(candidates):
        cid = "baseline" if i == 0 else f"c{i}"
        cfg = c.config.replace(**common).with_overrides(sets, source="--set")
        if cfg.val_fraction == 0:
            raise UserError("--set val_fraction=0: the honest protocol selects the epoch on a validation split")
        key = json.dumps(cfg.portable().replace(seed=0, split_seed=None).to_dict(), sort_keys=True)
        same_as = unique.setdefault(key, cid)
        described.append({"id": cid, "label": _unique_label(c.label, described), "source": c.source,
                          "same_as": same_as if same_as != cid else None})
        if same_as != cid:
            notes.append(f"{described[-1]['label']} is the same configuration as {_label(described, same_as)}: "
                         "run once, reported for both")
            continue
        for k, seed in enumerate(seeds):
            labels = {"config_id": cid, "config": described[-1]["label"], "split": k, "split_seed": seed, "seed": seed}
            runs.append((f"{cid}-split{k}", labels, cfg.replace(seed=seed, split_seed=seed)))
    settings = {"candidates": described, "split_seeds": seeds, "winner": "c1", "notes": notes,
                "dataset": first.dataset}
    return runner.make_runset("confirm", runs, where, metric="val_srcc", default_name="confirm", settings=settings)


def protocol_fields(first: TrainConfig) -> tuple[dict, list[str]]:
    """Full budget (patience 0), selection on val, random splits with the first input's fractions."""
    notes = []
    val = first.val_fraction
    if val == 0:
        val = DEFAULT_VAL_FRACTION
        notes.append(f"the inputs have no validation split (selected on test); confirmation uses val_fraction {val:g} "
                     "so that the honest protocol can select on it")
    if first.split != "random" or first.split_file:
        notes.append(f"the inputs used split {first.split!r}; confirmation draws random splits (by group) instead")
    return {"patience": 0, "selection_metric": "val_srcc", "split": "random", "split_file": None,
            "val_fraction": val, "test_fraction": first.test_fraction}, notes


def _unique_label(label: str, described: list[dict]) -> str:
    taken = {d["label"] for d in described}
    out, n = label, 2
    while out in taken:
        out, n = f"{label} ({n})", n + 1
    return out


def _label(described: list[dict], cid: str) -> str:
    return next(d["label"] for d in described if d["id"] == cid)


def resume_runset(args):
    kind = experiment_folder.CONFIRMATION
    runset = experiment_folder.resume(args.storage_path, args.name, kind, runner.runset_builder(kind),
                                      instead="each run's results stay in its folder there; run the confirmation "
                                              "again under another --name")
    runset = replace(runset, stall_timeout=stall_timeout(args.stall_timeout, runset.stall_timeout))
    return replace(runset, out_dir=absolute(args.out)) if args.out else runset


# --- run and report ---------------------------------------------------------------------------

def run_and_report(runset, *, resume: bool = False) -> bool:
    """Run (or continue) every run on the Ray session already started, then write the report; True if
    the user interrupted the runs (Ctrl-C)."""
    curves, interrupted = runner.execute(runset, resume=resume)
    write_report(runset, curves)
    return interrupted


def write_report(runset, curves: dict[str, list[dict]]) -> dict:
    settings = runset.settings
    candidates = settings["candidates"]
    rows = [cr.run_row(r["labels"], curves.get(r["id"], [])) for r in runset.runs]
    result = cr.analyse(candidates, rows, "baseline")
    per_config = {}
    for r in runset.runs:
        per_config.setdefault(r["labels"]["config_id"], []).append(curves.get(r["id"], []))
    out = Path(runset.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "confirm.csv", cr.csv_text(rows))
    atomic_write_json(out / "confirm.json", {"candidates": candidates, "split_seeds": settings["split_seeds"],
                                             "experiment": runset.experiment_path, **result})
    cr.plot_curves(candidates, per_config, out / "curves.png")
    finished = sum(bool(curves.get(r["id"])) for r in runset.runs)
    facts = [f"dataset: {settings['dataset']}; {len(settings['split_seeds'])} random splits by group, split seeds "
             f"{settings['split_seeds']} (split k: the same split_seed and training seed for every configuration)",
             f"runs: {finished} of {len(runset.runs)} reported at least one epoch; experiment {runset.experiment_path}",
             *[f"{c['label']}: {c['source']}" for c in candidates], *settings["notes"]]
    text = cr.summary_markdown("Confirmation", facts, candidates, result, settings["winner"])
    atomic_write_text(out / "summary.md", text)
    print("\n" + text + f"\nreport: {out}", flush=True)
    if finished < len(runset.runs):
        print(f"continue it with: {resume_command('confirm.py', runset.experiment_path)}")
    return result


# --- after a search (tuning/search.py --confirm K) ----------------------------------------------

def add_search_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("confirmation after the search (tuning/confirm.py)")
    g.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="after the export, retrain the top K trials and the baseline on fresh paired splits "
                        "(default 0: off)")
    g.add_argument("--confirm-splits", type=int, default=10, metavar="N", help="splits for --confirm (default 10)")


def check_search_flags(args) -> None:
    if args.confirm < 0:
        raise UserError(f"--confirm {args.confirm}: the number of top trials to confirm, >= 0")
    if args.confirm and args.confirm_splits < 2:
        raise UserError(f"--confirm-splits {args.confirm_splits}: at least 2")


def after_search(plan, result, *, top: int, splits: int, sets: list[str]) -> bool:
    """Confirm the export's `top` trials (best finite value first) on `splits` splits, in the search's Ray
    session, with the search's --set values (`sets`); True if the user interrupted the confirmation (Ctrl-C)."""
    space = plan.search_space
    ranked = sorted((r for r in result.rows if cr.finite(r.best)), key=lambda r: -r.best)[:top]
    if not ranked:
        print("\n--confirm: no trial with a finite metric to confirm")
        return False
    inputs = [Candidate(f"trial {r.trial_id}", f"{plan.name} trial {r.trial_id} ({plan.metric} {r.best:.4f})",
                        space.config_for(plan.base, r.params, source=f"trial {r.trial_id}"))
              for r in ranked]
    name = f"{plan.name}-confirm"
    path = f"{plan.storage_path.rstrip('/')}/{name}"
    try:  # a confirmation interrupted earlier: continue it
        runset, resume = runner.load_runset(path, experiment_folder.CONFIRMATION), True
    except UserError:
        # The search's --set values that the space does not override apply to the baseline too.
        searched = set(space.fixed) | {p.name for p in space.params} | set(SPLIT_FIELDS)
        where = runner.RunOptions(Resources(plan.gpus, plan.gpus_per_trial, plan.cpus_per_trial, plan.max_concurrent),
                                  plan.storage_path, name, f"{plan.export_dir}-confirm", plan.stall_timeout)
        kept = [s for s in sets if s.partition("=")[0].strip() not in searched]
        runset, resume = make_confirm_runset(inputs, splits, kept, where), False
    print(f"\nconfirming the top {len(inputs)} trial(s) and the baseline on "
          f"{len(runset.settings['split_seeds'])} splits: {len(runset.runs)} runs")
    with experiment_folder.claim(runset.experiment_path, new=not resume):
        return run_and_report(runset, resume=resume)
