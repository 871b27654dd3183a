"""Is the search worth it? ASHA + TPE against ASHA + random and random search at full budget, on the demo.

    python bench/search_quality.py --quick --out sq-quick   # minutes: tiny epochs, checks the pipeline only
    python bench/search_quality.py --out sq                 # the README table (demo searches, seeds 0 and 1)

Methods, each with the same number of trials (the demo's 8) and the same seeds; the seed of a search
is also its split seed, so the methods of one seed share train/val/test:
  asha_tpe      the default search: ASHA + Optuna TPE (python tuning/search.py --seed S)
  asha_random   ASHA + random sampling (--searcher random)
  random_full   random sampling at full budget: --grace-period equal to --max-epochs leaves ASHA one rung,
                at the last epoch, where every trial ends anyway, and --patience 0 turns off the stop for
                decline, so every trial runs every epoch. With the same seed Optuna's random sampler draws
                the same configurations as asha_random (it never looks at results): the two differ only
                in ASHA.
Searches run one after another, each through tuning/search.py's CLI with 2 trials at a time (1 CPU each).

Reported per method and seed (JSON and a markdown table, aggregated over seeds as means):
  best test SRCC   the test SRCC of the exported trial (best val SRCC at any epoch) at that val-best epoch
  epochs           epochs consumed: the sum over trials of the epochs each ran
  to 0.01          epochs consumed, counted over every trial's reports in the order they arrived, until the
                   best val SRCC reported so far is within 0.01 of the best val SRCC of random_full for the
                   same seed (blank: never); arrival order is Ray's result timestamp (1 s resolution), ties
                   in trial-creation order, then by epoch
  ratio            "to 0.01" divided by random_full's epochs for the same seed (below 1: cheaper than
                   training every trial to the end)
and, from random_full (every trial runs every epoch), how well each ASHA rung ranks the trials: Spearman
between the val SRCC at the rung's epoch and each trial's best val SRCC, and the rank there of the trial
that ends best (ASHA keeps the top 1/reduction-factor at each rung).

Ratios of epochs do not depend on how loaded the machine is; wall times do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuning.run_stats import finite  # noqa: E402  (after the path: run as a script)

METHODS = ("asha_tpe", "asha_random", "random_full")
WITHIN = 0.01  # "close enough to the best": about the spread of published HyperIQA retrainings on KonIQ


def method_flags(method: str, max_epochs: int) -> list[str]:
    return {"asha_tpe": [], "asha_random": ["--searcher", "random"],
            "random_full": ["--searcher", "random", "--grace-period", str(max_epochs), "--patience", "0"]}[method]


def asha_rungs(grace: int, factor: float, max_epochs: int) -> list[int]:
    """Milestone epochs of Ray's one-bracket ASHA: grace * factor^k below max_epochs."""
    rungs, t = [], float(grace)
    while t < max_epochs:
        rungs.append(int(t))
        t *= factor
    return rungs


def plan_rungs(experiment: Path) -> list[int]:
    from tuning.sweep.plan import load_plan

    plan = load_plan(str(experiment))
    return asha_rungs(plan.grace_period, plan.reduction_factor, plan.max_epochs)


# --- what a finished search did ---------------------------------------------------------------

def load_trials(experiment: Path) -> list[dict]:
    """Every trial's reports from its result.json, in trial-creation order: {id, order, config, reports};
    an epoch reported twice (after a resume) counts once, with its last report."""
    trials = []
    for path in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        by_epoch = {int(r["epoch"]): r for r in lines if finite(r.get("epoch")) and r["epoch"] >= 1}
        index = re.search(rf"{lines[0]['trial_id']}_(\d+)_", path.parent.name)
        trials.append({"id": lines[0]["trial_id"], "order": int(index.group(1)) if index else 0,
                       "config": lines[0].get("config", {}),
                       "reports": [by_epoch[e] for e in sorted(by_epoch)]})
    return sorted(trials, key=lambda t: t["order"])


def arrivals(trials: list[dict], metric: str = "val_srcc") -> list[tuple]:
    """(timestamp, trial order, epoch, metric value) of every report, in arrival order."""
    return sorted((int(r.get("timestamp", 0)), t["order"], int(r["epoch"]), _value(r.get(metric)))
                  for t in trials for r in t["reports"])


def epochs_to_target(events: list[tuple], target: float) -> int | None:
    """Epochs consumed (one per report, in the given order) until the running best reaches `target`."""
    best = -math.inf
    for consumed, event in enumerate(events, start=1):
        if math.isfinite(event[-1]):
            best = max(best, event[-1])
        if best >= target - 1e-12:
            return consumed
    return None


def total_epochs(trials: list[dict]) -> int:
    return sum(len(t["reports"]) for t in trials)


def best_value(trials: list[dict], metric: str = "val_srcc") -> float:
    values = [_value(r.get(metric)) for t in trials for r in t["reports"]]
    return max((v for v in values if math.isfinite(v)), default=math.nan)


def rung_agreement(trials: list[dict], rungs: list[int], metric: str = "val_srcc") -> list[dict]:
    """For each rung epoch: Spearman(metric at that epoch, each trial's best), and the rung rank of the
    trial that ends best (1 = first), over the trials that reached the rung with a finite value."""
    from scipy.stats import spearmanr

    finals = {t["id"]: max((_value(r.get(metric)) for r in t["reports"]), default=math.nan) for t in trials}
    finals = {k: v for k, v in finals.items() if math.isfinite(v)}
    winner = max(finals, key=finals.get) if finals else None
    out = []
    for rung in rungs:
        at = {t["id"]: _value(r.get(metric)) for t in trials for r in t["reports"]
              if int(r["epoch"]) == rung and t["id"] in finals}
        at = {k: v for k, v in at.items() if math.isfinite(v)}
        ids = sorted(at)
        rho = spearmanr([at[i] for i in ids], [finals[i] for i in ids])[0] if len(ids) >= 3 else math.nan
        ranked = sorted(ids, key=lambda i: -at[i])
        out.append({"rung": rung, "trials": len(ids), "spearman": _round(rho),
                    "winner_rank": ranked.index(winner) + 1 if winner in at else None})
    return out


def is_start_point(config: dict, starts: list[dict]) -> bool:
    return any(all(_same(config.get(k), v) for k, v in point.items()) for point in starts)


def summarise(method: str, seed: int, experiment: Path, export: Path, full: dict | None, wall_s: float) -> dict:
    """One row of the table; `full` is random_full's row of the same seed (None for random_full itself)."""
    from tuning.sweep.plan import load_plan

    trials = load_trials(experiment)
    metrics = json.loads((export / "metrics.json").read_text())
    best_trial = next(t for t in trials if t["id"] == metrics["trial"])
    total = total_epochs(trials)
    reference_best = full["best_val_srcc"] if full else best_value(trials)
    reference_epochs = full["epochs"] if full else total
    reached = epochs_to_target(arrivals(trials), reference_best - WITHIN)
    return {"method": method, "seed": seed, "trials": len(trials), "best_trial": metrics["trial"],
            "best_params": best_trial["config"],
            "best_is_start_point": is_start_point(best_trial["config"], load_plan(str(experiment)).space.get("start", [])),
            "best_val_srcc": _round(metrics["val_srcc"]), "best_epoch": metrics["epoch"],
            "best_test_srcc": _round(metrics.get("test_srcc")), "epochs": total, "epochs_to_within": reached,
            "ratio": _round(reached / reference_epochs) if reached else None, "wall_s": round(wall_s, 1)}


def aggregate(rows: list[dict]) -> list[dict]:
    """Means over seeds per method; a ratio mean only when every seed reached the target."""
    out = []
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        ratios = [r["ratio"] for r in mine]
        out.append({"method": method, "seeds": len(mine),
                    "best_test_srcc": _round(_mean([r["best_test_srcc"] for r in mine])),
                    "best_val_srcc": _round(_mean([r["best_val_srcc"] for r in mine])),
                    "epochs": _round(_mean([r["epochs"] for r in mine])),
                    "ratio": _round(_mean(ratios)) if None not in ratios else None,
                    "reached": sum(x is not None for x in ratios)})
    return out


# --- output -----------------------------------------------------------------------------------

def markdown(rows: list[dict], agg: list[dict], rungs: dict[int, list[dict]], settings: dict) -> str:
    lines = [f"Demo searches, {settings['num_samples']} trials each, up to {settings['max_epochs']} epochs; "
             f"ASHA flags: `{settings['asha_flags'] or '(defaults)'}`; {settings['note']}"
             + (f"; random_full rows from {settings['full_from']}" if settings["full_from"] else ""), "",
             "| method | seed | best val SRCC | its test SRCC | epochs | to within 0.01 | ratio | best is a start point | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {_cell(r['best_val_srcc'])} | {_cell(r['best_test_srcc'])} | "
                     f"{r['epochs']} | {_cell(r['epochs_to_within'])} | {_cell(r['ratio'])} | "
                     f"{'yes' if r['best_is_start_point'] else 'no'} | {r['wall_s'] / 60:.1f} |")
    for a in agg:
        ratio = _cell(a["ratio"]) if a["ratio"] is not None else f"reached in {a['reached']}/{a['seeds']}"
        lines.append(f"| **{a['method']}** | mean of {a['seeds']} | {_cell(a['best_val_srcc'])} | "
                     f"{_cell(a['best_test_srcc'])} | {_cell(a['epochs'])} | | {ratio} | | |")
    if rungs:
        lines += ["", "ASHA's rungs ranked against the end (from random_full, where every trial runs every epoch):", "",
                  "| seed | rung epoch | trials | Spearman(val at rung, best val) | rank of the final best at the rung |",
                  "|---|---|---|---|---|"]
        for seed, entries in rungs.items():
            lines += [f"| {seed} | {e['rung']} | {e['trials']} | {_cell(e['spearman'])} | {_cell(e['winner_rank'])} |"
                      for e in entries]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"


# --- running the searches ---------------------------------------------------------------------

def quick_space(out: Path) -> Path:
    """The demo space with one training patch and one evaluation crop per image: seconds per epoch."""
    import yaml

    space = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    space["fixed"] = {**space.get("fixed", {}), "train_patches": 1, "test_patches": 1}
    path = out / "quick_space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_search(args, method: str, seed: int, out: Path, space: Path | None) -> tuple[Path, Path, float]:
    name = f"{method}-s{seed}"
    if method == "random_full" and args.full_from:  # ASHA flags do not change it: reuse an earlier run's
        out = Path(args.full_from).resolve()
    experiment, export = out / "ray" / name, out / "exports" / name
    if (export / "metrics.json").is_file():  # kept from an earlier, interrupted bench run
        return experiment, export, json.loads((out / "walls.json").read_text()).get(name, math.nan)
    if experiment.exists():
        raise SystemExit(f"{experiment}: an unfinished search from an earlier run; delete it and run again")
    argv = [sys.executable, str(REPO / "tuning" / "search.py"), "--seed", str(seed), "--num-samples",
            str(args.num_samples), "--max-epochs", str(args.max_epochs), "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--storage-path", str(out / "ray"), "--name", name, "--export-dir", str(export),
            *(["--space", str(space)] if space else []), *method_flags(method, args.max_epochs),
            *(shlex.split(args.asha_flags) if method != "random_full" else [])]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(argv[1:])}", flush=True)
    start = time.monotonic()
    with open(out / "logs" / f"{name}.log", "w") as log:
        # A Ray of its own even where the shell (or a Ray Job) sets RAY_ADDRESS to a cluster.
        env = {**os.environ, "RAY_ADDRESS": "local"}
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    wall = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {out / 'logs' / (name + '.log')}")
    walls_file = out / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    walls_file.write_text(json.dumps({**walls, name: wall}, indent=2))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {wall / 60:.1f} min", flush=True)
    return experiment, export, wall


def main(argv: list[str] | None = None) -> int:
    from tuning.sweep.plan import DEMO_MAX_EPOCHS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated search seeds (default 0,1)")
    p.add_argument("--num-samples", type=int, help="trials per search (default 8; --quick 4)")
    p.add_argument("--max-epochs", type=int, help=f"epochs of a trial never stopped (default {DEMO_MAX_EPOCHS}; --quick 3)")
    p.add_argument("--asha-flags", default="", help="extra search.py flags for the two ASHA methods, e.g. "
                                                    "'--grace-period 3' (random_full keeps its own)")
    p.add_argument("--full-from", metavar="DIR", help="take random_full from an earlier --out of the same demo space "
                                                       "and epochs (it has no ASHA rungs, so --asha-flags and ASHA "
                                                       "defaults do not change it)")
    p.add_argument("--quick", action="store_true", help="1 patch per image, 4 trials of 3 epochs: checks the pipeline")
    p.add_argument("--note", default="", help="a line saying how the machine was loaded, for the table")
    p.add_argument("--out", default="search_quality", help="folder for the searches, search_quality.json and .md")
    args = p.parse_args(argv)
    args.num_samples = args.num_samples or (4 if args.quick else 8)
    args.max_epochs = args.max_epochs or (3 if args.quick else DEMO_MAX_EPOCHS)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    space = quick_space(out) if args.quick else None
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, rungs = [], {}
    for seed in seeds:
        full_exp, export, wall = run_search(args, "random_full", seed, out, space)
        full = summarise("random_full", seed, full_exp, export, None, wall)
        for method in ("asha_tpe", "asha_random"):
            exp, export, wall = run_search(args, method, seed, out, space)
            rows.append(summarise(method, seed, exp, export, full, wall))
        rows.append(full)
        # the rungs the ASHA searches had (their saved plan), ranked on the full-budget curves
        rungs[seed] = rung_agreement(load_trials(full_exp), plan_rungs(exp))
    rows.sort(key=lambda r: (METHODS.index(r["method"]), r["seed"]))
    settings = {"num_samples": args.num_samples, "max_epochs": args.max_epochs, "asha_flags": args.asha_flags,
                "quick": args.quick, "seeds": seeds, "within": WITHIN, "note": args.note or "machine load not stated",
                "full_from": args.full_from}
    agg = aggregate(rows)
    result = {"settings": settings, "runs": rows, "aggregate": agg, "rung_agreement": rungs}
    (out / "search_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows, agg, rungs, settings)
    (out / "search_quality.md").write_text(table)
    print(table)
    return 0


def _value(value) -> float:
    return float(value) if finite(value) else math.nan


def _same(a, b) -> bool:
    if finite(a) and finite(b):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _mean(values: list) -> float:
    values = [v for v in values if finite(v)]
    return sum(values) / len(values) if values else math.nan


def _round(value, digits: int = 4):
    return round(float(value), digits) if finite(value) else None


if __name__ == "__main__":
    sys.exit(main())
