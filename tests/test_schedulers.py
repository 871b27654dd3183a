"""The searcher and scheduler a search runs with, driven directly (no Ray cluster): Optuna learns each
trial's best value, undefined values rank last at ASHA's rungs, and rungs can be refilled after a resume."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from tuning.sweep.asha import METRIC_FLOOR, ResumableASHA
from tuning.sweep.optuna_search import BestValueOptunaSearch
from tuning.sweep.space import parse_space

SPACE = parse_space({"params": {"backbone_lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2}}}, source="mem")


def searcher() -> BestValueOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return BestValueOptunaSearch(space=SPACE, metric="val_srcc", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0))


def run(search: BestValueOptunaSearch, trial_id: str, values: list[float], *, status: str = "completed",
        error: bool = False) -> None:
    search.suggest(trial_id)
    results = [{"epoch": e, "val_srcc": v, "status": "running"} for e, v in enumerate(values, 1)]
    results[-1]["status"] = status
    for result in results[:-1]:
        search.on_trial_result(trial_id, result)
    search.on_trial_complete(trial_id, results[-1], error=error)


def test_optuna_learns_the_best_value_not_the_last():
    search = searcher()
    run(search, "declined", [0.5, 0.8, 0.6], status="early_stopped")  # stopped for decline after its peak
    run(search, "rising", [0.3, 0.7])
    trials = search._ot_study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in trials] == [0.8, 0.7]
    assert trials[0].intermediate_values == {1: 0.5, 2: 0.8, 3: 0.6}  # per epoch, step = epoch


def test_a_diverged_or_undefined_trial_is_pruned_and_a_failed_one_is_failed():
    search = searcher()
    run(search, "diverged", [0.4, math.nan], status="diverged")  # finite, then NaN
    run(search, "undefined", [math.nan, math.nan])                 # constant predictions: SRCC undefined
    run(search, "no_data", [math.nan], status="failed")            # could not start on its node
    run(search, "crashed", [0.5], error=True)
    states = [t.state for t in search._ot_study.trials]
    S = optuna.trial.TrialState
    assert states == [S.PRUNED, S.PRUNED, S.FAIL, S.FAIL]  # none left RUNNING (Optuna refuses NaN values)
    assert search._ot_study.trials[0].intermediate_values == {1: 0.4}


def test_an_epoch_reported_again_after_a_resume_is_one_intermediate_value():
    search = searcher()
    search.suggest("t")
    for epoch, value in ((1, 0.2), (2, 0.4), (2, 0.4), (3, 0.5)):
        search.on_trial_result("t", {"epoch": epoch, "val_srcc": value})
    search.on_trial_complete("t", {"epoch": 3, "val_srcc": 0.5, "status": "completed"})
    assert search._ot_study.trials[0].intermediate_values == {1: 0.2, 2: 0.4, 3: 0.5}


def asha(**kwargs) -> ResumableASHA:
    return ResumableASHA(time_attr="epoch", metric="val_srcc", mode="max",
                         **{"max_t": 8, "grace_period": 1, "reduction_factor": 2, **kwargs})


def report(scheduler, trial_id: str, epoch: int, value: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    if trial_id not in scheduler._trial_info:
        scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_srcc": value})


def test_a_nan_trial_is_stopped_at_the_first_rung():
    scheduler = asha()
    assert report(scheduler, "good", 1, 0.5) == TrialScheduler.CONTINUE
    # Ray's ASHA: nanpercentile skips NaN and `nan < cutoff` is False, so this trial would run forever.
    assert report(scheduler, "nan", 1, math.nan) == TrialScheduler.STOP
    assert scheduler.rungs()[1] == {"good": 0.5, "nan": METRIC_FLOOR}


def test_replayed_rungs_stop_a_resumed_trial_below_the_cutoff():
    scheduler = asha(max_t=4, grace_period=2)
    scheduler.replay("finished", [(1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8)])
    scheduler.replay("resumed", [(1, 0.1)])  # reported epoch 1 before the driver died
    assert scheduler.rungs() == {4: {"finished": 0.8}, 2: {"finished": 0.6}}
    assert report(scheduler, "resumed", 2, 0.2) == TrialScheduler.STOP
    fresh = asha(max_t=4, grace_period=2)  # what a resumed search had before: empty rungs
    assert report(fresh, "resumed", 2, 0.2) == TrialScheduler.CONTINUE


def test_replay_records_a_trial_once_per_rung_as_live_results_do():
    live, replayed = asha(), asha()
    curve = [(1, 0.3), (2, 0.4), (3, 0.45), (4, 0.5), (5, 0.55), (6, math.nan)]
    for epoch, value in curve:
        report(live, "t", epoch, value)
    replayed.replay("t", curve)
    assert replayed.rungs() == live.rungs()
    assert pickle.loads(pickle.dumps(replayed)).rungs() == live.rungs()  # survives tuner.pkl


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_non_finite_value_counts_as_the_floor(value):
    scheduler = asha()
    report(scheduler, "a", 1, 0.1)
    report(scheduler, "b", 1, value)
    assert scheduler.rungs()[1]["b"] == METRIC_FLOOR
