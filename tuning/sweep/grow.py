"""Growing a finished search: `--resume --num-samples N`, N above the search's budget, runs the missing trials.

The grown search is the same search with a larger budget: the same space, metric, searcher and ASHA.
- The finished trials are not rerun: Ray restores them TERMINATED and their folders are left as they are.
- TPE is conditioned on every finished trial. Ray restores the searcher with the experiment, and with it
  the Optuna study: in memory (pickled with the searcher state) or in the --optuna-storage database. The
  study already holds every finished trial with the value it was told, so nothing needs replaying; the new
  trials are asked from that same study. Replaying the trials into a new sampler (study.add_trial) would
  only be needed if the searcher state were lost, and then Ray could not resume the experiment at all.
- What Ray does not let grow is the budget: its SearchGenerator saves `num_samples` with its state and,
  restored, creates no trial past it (Ray 2.60, ray/tune/search/search_generator.py; the TuneConfig's
  num_samples is not read on a restore). GrowingSearch raises the restored budget to N.
- ASHA's rungs are refilled from every saved result by tuner.restore_tuner, so a new trial meets the old
  trials' values at each rung and is stopped as it would have been in one search of N trials.
- Start points beyond the old budget (a search of N would have evaluated them) are asked first.

What cannot change on a resume (the space, metric, dataset, budget per trial) is refused in one line; a
--num-samples at or below the search's budget says there is nothing to add, and the resume goes on as usual.
"""

from __future__ import annotations

import argparse
import dataclasses

from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from hyperiqa.config import TrainConfig, parse_assignments
from hyperiqa.utils import UserError
from tuning.engine import ray_private
from tuning.engine.options import PATH_FIELDS, absolute
from tuning.sweep.plan import Plan, load_plan, save_plan

# The flags whose value a search is made of: {argparse dest: flag}. Resource, tracking and output flags may
# differ on a resume (they are ignored, or --export-dir applied); these may only repeat the saved value.
FIXED = {"dataset": "--dataset", "data_root": "--data-root", "set": "--set", "space": "--space",
         "metric": "--metric", "searcher": "--searcher", "seed": "--seed", "max_epochs": "--max-epochs",
         "grace_period": "--grace-period", "reduction_factor": "--reduction-factor", "patience": "--patience",
         "cross": "--cross", "optuna_storage": "--optuna-storage"}
# TrainConfig fields a search sets from its own flags or the resources (tuning/sweep/plan.make_plan, for_ray):
# a --set of one of them is not compared, the flag that sets it is.
SET_BY_THE_SEARCH = {"epochs", "selection_metric", "patience", "seed", "val_fraction", "device", "num_threads",
                     "gpu_memory_fraction"}


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """{dest: value} of the FIXED flags typed on the command line (a flag given with its default counts)."""
    for action in parser._actions:  # (set_defaults would put SUPPRESS in the namespace, not leave the dest out)
        if action.dest in FIXED:
            action.default = argparse.SUPPRESS
    args, _ = parser.parse_known_args(argv)
    return {dest: value for dest, value in vars(args).items() if dest in FIXED}


def check_unchanged(plan: Plan, given: dict) -> None:
    """Refuse in one line a FIXED flag whose value differs from the search's saved one."""
    for dest, value in given.items():
        for typed, shown, saved, saved_shown in _compared(plan, dest, value):
            if typed != saved:
                raise UserError(f"--resume: {FIXED[dest]} {shown} differs from the search's {saved_shown}; a "
                                "resumed search keeps its space, metric, searcher, dataset and budget per trial "
                                "(leave the flag out, or start a new search with another --name)")


def _compared(plan: Plan, dest: str, value) -> list[tuple]:
    """[(typed value, as typed, saved value, as shown)] for the flag `dest`, both values in one form."""
    if dest == "set":
        return _set_values(plan, value)
    if dest == "space":
        from tuning.sweep.plan import _raw_space
        from tuning.sweep.space import load_space

        return [(_raw_space(load_space(value)), value, plan.space, f"space (saved from {plan.space_source})")]
    if dest == "data_root":
        saved = plan.base.get("data_root")
        return [(absolute(value), value, saved, saved)]
    if dest == "cross":
        from tuning.sweep import crosseval

        saved = [list(c) for c in plan.cross]
        return [(crosseval.parse(value), " ".join(value), saved, " ".join("=".join(c) for c in saved) or "none")]
    if dest == "optuna_storage":
        from tuning.engine.tracking import absolute_store_uri

        return [(absolute_store_uri(value, "--optuna-storage"), value, plan.optuna_storage, plan.optuna_storage)]
    saved = plan.base.get(dest) if dest in ("dataset", "patience") else getattr(plan, dest)
    return [(value, value, saved, saved)]


def _set_values(plan: Plan, sets: list[str]) -> list[tuple]:
    """Each --set field as typed (through TrainConfig, paths absolute) and as the saved base has it."""
    typed = TrainConfig.from_dict(plan.base, source="the saved search").with_overrides(sets).to_dict()
    out = []
    for key, raw in parse_assignments(sets).items():
        if key not in SET_BY_THE_SEARCH:
            value = absolute(typed[key]) if key in PATH_FIELDS and typed[key] else typed[key]
            out.append((value, f"{key}={raw}", plan.base.get(key), f"{key}={plan.base.get(key)}"))
    return out


def resumed_plan(plan: Plan, num_samples: int | None) -> Plan:
    """The plan a `--resume [--num-samples N]` runs: `plan` grown to N trials if N is above its budget.

    At or below the budget there is nothing to add, which is said; the resume goes on as without the flag
    (unfinished trials continue, and the export is written again: a search killed after its last trial
    ended but before its export gets one)."""
    if num_samples is None:
        return plan
    if num_samples > plan.num_samples:
        print(f"growing {plan.name} from {plan.num_samples} to {num_samples} trials: its trials stay as they are; "
              "the new ones are proposed by its searcher from their results and meet their values at ASHA's rungs")
        return dataclasses.replace(plan, num_samples=num_samples)
    print(f"--num-samples {num_samples}: {plan.name} already has a budget of {plan.num_samples} trials; nothing to "
          f"add (a --num-samples above {plan.num_samples} grows it). Resuming it as it is: unfinished trials "
          "continue, the export is written again")
    return plan


def save_if_grown(plan: Plan) -> None:
    """Record the grown budget (a later --resume or export reads it) once the restored search accepted it."""
    if plan.num_samples > load_plan(plan.experiment_path).num_samples:
        save_plan(plan)


def raise_budget(config, plan: Plan) -> None:
    """Give the restored TuneConfig a search that creates trials up to plan.num_samples at the concurrency
    computed for this run (see GrowingSearch).

    Every resume gets it, grown or not: Ray's own wrapping would restore the limiter's saved concurrency
    over the one `restore_tuner` computed for the cluster the search resumes on."""
    start = [dict(p) for p in plan.search_space.start]
    config.search_alg = GrowingSearch(config.search_alg, plan.num_samples, config.max_concurrent_trials, start)
    config.max_concurrent_trials = None  # the limiter is inside GrowingSearch: Tune wraps a Searcher only


class GrowingSearch(SearchGenerator):
    """Ray's SearchGenerator over a ConcurrencyLimiter (as Tune builds them from a Searcher and
    max_concurrent_trials, so the saved state has the same layout), whose restored budget is raised.

    Restoring sets the budget, the trials created so far and the limiter's concurrency from the saved
    state; the budget and the concurrency computed for this run replace the saved ones there."""

    def __init__(self, searcher, total: int, max_concurrent: int, start: list[dict]):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self._grow_to, self._max_concurrent, self._start = total, max_concurrent, start

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        before = self.total_samples
        ray_private.set_search_budget(self, max(before, self._grow_to))
        self.searcher.set_max_concurrency(self._max_concurrent)
        # The start points a search of this size would have evaluated and the smaller one did not (start
        # points run first, so every old trial was one of the earlier ones). skip_if_exists: a grow killed
        # before Ray saved its budget left them WAITING in an --optuna-storage study; they are not added twice.
        study = ray_private.optuna_study(self.searcher.searcher)
        for point in self._start[before:self._grow_to]:
            study.enqueue_trial(point, skip_if_exists=True)
