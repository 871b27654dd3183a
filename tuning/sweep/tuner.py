"""A search's Tuner: the trainable with the plan's base and space, a new search, and a resumed one.

The searcher is built in tuning/sweep/optuna_search.py, the scheduler in tuning/sweep/asha.py; the Ray
settings every experiment shares (storage, checkpoints, retries, concurrency) in tuning/engine/launch.py.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from hyperiqa.utils import UserError
from tuning.engine.launch import max_concurrent, refresh_callbacks, run_config
from tuning.engine.ray_private import restored_tune_config
from tuning.engine.trainable import run_trial
from tuning.sweep import grow
from tuning.sweep import trials_report as report
from tuning.sweep.asha import make_scheduler
from tuning.sweep.optuna_search import make_searcher
from tuning.sweep.plan import Plan
from tuning.sweep.space import SearchSpace


def train_trial(config: dict[str, Any], *, base: dict, space: SearchSpace, metric: str) -> None:
    """A search trial: the base configuration with the space's fixed and sampled values."""
    run_trial(lambda: space.config_for(base, config, source="sampled configuration"), f"sampled {config}", metric)


def make_trainable(plan: Plan, fn=train_trial):
    trainable = tune.with_parameters(fn, base=plan.base, space=plan.search_space, metric=plan.metric)
    return tune.with_resources(trainable, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


def build_tuner(plan: Plan, fn=train_trial) -> tune.Tuner:
    """A new search; `fn` replaces the training function in tests only."""
    tune_config = tune.TuneConfig(metric=plan.metric, mode="max", search_alg=make_searcher(plan),
                                  scheduler=make_scheduler(plan), num_samples=plan.num_samples,
                                  max_concurrent_trials=max_concurrent(plan),
                                  # a finished trial's worker runs the next one: no new process, torch
                                  # and timm already imported (seconds per trial on a small CPU machine)
                                  reuse_actors=True)
    return tune.Tuner(make_trainable(plan, fn), tune_config=tune_config, run_config=run_config(plan))


def restore_tuner(plan: Plan, fn=train_trial) -> tune.Tuner:
    """Continue an experiment: finished trials stay finished, unfinished and errored ones resume from checkpoints.

    Ray restores the TuneConfig written when the experiment was created: ASHA with empty rungs and the
    concurrency of that moment. Both are replaced: the rungs refilled from the trials' saved results,
    the concurrency recomputed for the cluster as it is now.
    """
    if not tune.Tuner.can_restore(plan.experiment_path):
        raise UserError(f"--resume: {plan.experiment_path} holds no Ray Tune experiment state to resume")
    concurrency = max_concurrent(plan)
    scheduler = make_scheduler(plan)
    for trial_id, epochs in saved_results(plan).items():
        scheduler.replay(trial_id, report.curve(epochs, plan.metric))
    tuner = tune.Tuner.restore(plan.experiment_path, trainable=make_trainable(plan, fn), resume_errored=True)
    config = restored_tune_config(tuner)
    config.scheduler, config.max_concurrent_trials = scheduler, concurrency
    refresh_callbacks(tuner, plan)
    # Ray's restored search would stop at the saved budget and concurrency: this run's replace them
    grow.raise_budget(config, plan)
    return tuner


def saved_results(plan: Plan) -> dict[str, list[dict]]:
    """Every trial's reported results, from the experiment's storage (local folder or URI)."""
    analysis = tune.ExperimentAnalysis(plan.experiment_path, default_metric=plan.metric, default_mode="max")
    frames = analysis.trial_dataframes
    return {t.trial_id: frames[t.trial_id].to_dict("records") for t in analysis.trials
            if t.trial_id in frames and len(frames[t.trial_id])}
