"""Every use of Ray's private attributes, in small functions: the one place to check on a Ray upgrade.

Checked against Ray 2.60.0 (the version pinned in pyproject.toml). Each function names the Ray source it
reaches into; the rest of the project uses Ray's public API only. What relies on each:

- restored_run_config: a resumed run gets a new progress line (tuning/engine/progress.py).
- restored_tune_config: a resumed search gets a new ASHA and concurrency (tuning/sweep/tuner.py), a
  resumed fixed-configuration run a new concurrency (tuning/engine/launch.py).
- single_node_mode: a local Ray listens on loopback only (launch.start_ray).
- fit_stopped_by_sigint: Ctrl-C during a run is told apart from a finished run (launch.fit).
- ASHA's bracket and rungs: a resumed search refills them (tuning/sweep/asha.py).
- OptunaSearch's study and trials: the searcher tells Optuna each trial's best value (tuning/sweep/optuna_search.py).
- set_search_budget: a finished search grows (tuning/sweep/grow.py).
- The MLflow and W&B logger callbacks' state (tuning/engine/ray_callbacks.py).
- trial_process, trial_failures, restored_run_config: the stall watchdog kills a silent trial's actor and
  is given to a restored Tuner (tuning/engine/watch.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import ray
import ray._private.ray_constants as ray_constants
from ray import tune
from ray.air.integrations.wandb import _WandbLoggingActor as WandbLoggingActor

CHECKED_WITH = ("2.60.0",)

__all__ = ["CHECKED_WITH", "WandbLoggingActor", "after_study_setup", "asha_metric_op", "asha_record", "asha_rungs", "fit_stopped_by_sigint",
           "mlflow_trial_runs", "optuna_completed", "optuna_storage", "optuna_study", "optuna_trials",
           "restored_run_config", "restored_tune_config", "set_search_budget", "set_wandb_actor", "single_node_mode",
           "trial_failures", "trial_process", "wandb_module"]


def restored_tune_config(tuner: tune.Tuner) -> tune.TuneConfig:
    """The TuneConfig a restored Tuner will run with (ray/tune/impl/tuner_internal.py).

    Ray 2.60 has no public way to give a restored Tuner a new scheduler or concurrency limit."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if not isinstance(config, tune.TuneConfig):
        raise RuntimeError(f"ray {ray.__version__}: cannot reach the restored Tuner's TuneConfig; "
                           f"this project needs ray {' or '.join(CHECKED_WITH)}")
    return config


def restored_run_config(tuner: tune.Tuner) -> tune.RunConfig:
    """The RunConfig a restored Tuner will run with, callbacks included, as unpickled from the experiment's
    tuner.pkl (ray/tune/impl/tuner_internal.py, TunerInternal.get_run_config)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if not isinstance(config, tune.RunConfig):
        raise RuntimeError(f"ray {ray.__version__}: cannot reach the restored Tuner's RunConfig; "
                           f"this project needs ray {' or '.join(CHECKED_WITH)}")
    return config


@contextlib.contextmanager
def single_node_mode():
    """A Ray started meanwhile takes 127.0.0.1 as its node IP, so its servers listen on loopback only.

    Ray 2.60 on Linux resolves a node IP of 127.0.0.1 (also an explicit `_node_ip_address`) to the machine's
    routable address; then GCS, raylet, object manager and worker gRPC listen on [::], the agents and the
    Prometheus endpoints on 0.0.0.0 or that address. With ENABLE_RAY_CLUSTER off (Ray's single-node mode, as
    on macOS; the env var RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER sets it, but only when Ray is imported) the node IP
    is 127.0.0.1, and every process Ray starts binds loopback. Its children take the IP from their command
    line, so the switch is needed only while ray.init() starts them. Joining a cluster takes the IP from the
    node it joins, whatever the switch.
    """
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def fit_stopped_by_sigint(tuner: tune.Tuner) -> bool:
    """Run the tuner; True if the user stopped it (Ctrl-C: SIGINT).

    Tune catches the first SIGINT itself: it ends the run, saves its state, returns from fit() as after
    a finished run and keeps its flag to itself (ray/tune/tune.py, _setup_signal_catching). What shows is
    the SIGINT handler: Tune puts back the one it found when the signal comes, and leaves its own in place
    otherwise. Tune installs one only in the main thread and without TUNE_DISABLE_SIGINT_HANDLER (a SIGINT
    then raises KeyboardInterrupt as usual). tests/test_search_scripted.py checks it.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    try:
        tuner.fit()
    finally:
        after = signal.getsignal(signal.SIGINT)
        if main and before is not None:  # a later Ctrl-C (the export) must stop us, not reach the finished run
            signal.signal(signal.SIGINT, before)
    return main and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")) and after is before


# ASHA (ray/tune/schedulers/async_hyperband.py): the scheduler's brackets, each a list of rungs
# (milestone, {trial_id: recorded value}); a trial's result is recorded by _Bracket.on_result.

def asha_record(scheduler, trial, epoch: int, value: float) -> None:
    """Record `value` (already signed by the scheduler's mode) for `trial` at `epoch` in the first bracket."""
    scheduler._brackets[0].on_result(trial, epoch, value)


def asha_metric_op(scheduler) -> float | None:
    """1.0 for max, -1.0 for min; None before Tune has given the scheduler its metric and mode."""
    return scheduler._metric_op


def asha_rungs(scheduler) -> list[tuple[float, dict]]:
    return list(scheduler._brackets[0]._rungs)


# SearchGenerator (ray/tune/search/search_generator.py)

def set_search_budget(generator, total: int) -> None:
    """Let a restored SearchGenerator create trials up to `total` (its saved `num_samples` otherwise stops it)."""
    generator._total_samples = total
    generator._finished = False  # set only when the searcher ran out of points or the run was stopped


# OptunaSearch (ray/tune/search/optuna/optuna_search.py)

def after_study_setup(searcher_cls, hook) -> None:
    """Make OptunaSearch subclass `searcher_cls` call hook(searcher) each time Ray has created or loaded its
    study (OptunaSearch._setup_study, from __init__ or set_search_properties)."""
    ray_setup = searcher_cls._setup_study

    def _setup_study(self, mode) -> None:
        ray_setup(self, mode)
        hook(self)

    searcher_cls._setup_study = _setup_study


def optuna_study(searcher):
    return searcher._ot_study


def optuna_trials(searcher) -> dict:
    """{Ray trial id: its optuna Trial} of the trials the searcher asked for."""
    return searcher._ot_trials


def optuna_completed(searcher) -> set:
    """The Ray trial ids already told to Optuna."""
    return searcher._completed_trials


def optuna_storage(searcher):
    return searcher._storage


# Logger callbacks (ray/air/integrations/mlflow.py, wandb.py)

def mlflow_trial_runs(callback) -> dict:
    """MLflowLoggerCallback's {trial: MLflow run id} of the runs it opened."""
    return callback._trial_runs


def wandb_module(actor):
    """The wandb module a _WandbLoggingActor logs through."""
    return actor._wandb


def set_wandb_actor(callback_cls, actor_cls) -> None:
    """Make WandbLoggerCallback subclass `callback_cls` log each trial through `actor_cls`."""
    callback_cls._logger_actor_cls = actor_cls


# A trial's process and failures (ray/tune/experiment/trial.py), for the stall watchdog (tuning/engine/watch.py)

def trial_process(trial) -> tuple:
    """(its actor handle or None, its node's IP, its worker's pid). From the GCS's actor table
    (ray/_private/state.py, no dashboard needed), which knows them before the trial's first result; else
    from the location Tune took from its last result."""
    actor, location = trial.temporary_state.ray_actor, trial.temporary_state.location
    node, pid = location.hostname, location.pid
    if actor is not None:
        try:
            import ray._private.state

            entry = ray._private.state.actors(actor._actor_id.hex())
            node, pid = entry["Address"]["IPAddress"] or node, entry["Pid"] or pid
        except Exception:  # noqa: BLE001 - the location from the last result is the fallback
            pass
    return actor, node, pid


def trial_failures(trial) -> tuple[int, int]:
    """(failures counted so far, FailureConfig's max_failures); Ray retries while failures <= max_failures."""
    return trial.run_metadata.num_failures, trial.max_failures
