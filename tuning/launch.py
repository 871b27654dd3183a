"""Ray side of a search: start or join Ray, check resources, build or restore the Tuner."""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from hyperiqa.utils import UserError
from tuning.plan import Plan
from tuning.trainable import train_trial

REPO_ROOT = Path(__file__).resolve().parent.parent
KEEP_CHECKPOINTS = 2  # per trial, ranked by the metric: the best epoch survives (see trainable.restore_point)


def start_ray(address: str | None, dashboard_host: str, dashboard_port: int | None, log=print) -> None:
    """Start a local Ray (dashboard on loopback unless told otherwise) or join `address`; print the dashboard URL."""
    # Local workers inherit this environment: they import hyperiqa/tuning even when the project is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # Trials log to their own train.log; Ray's INFO lines (one per checkpoint) would bury the progress table.
    kwargs: dict = {"logging_level": "WARNING", "logging_config": ray.LoggingConfig(log_level="WARNING")}
    missing = _dashboard_missing()
    if address:
        kwargs["address"] = address
    elif missing:
        kwargs["include_dashboard"] = False
    else:
        if not _is_loopback(dashboard_host):
            log(f"warning: the dashboard will listen on {dashboard_host}: anyone who can reach it and holds the "
                "token in ~/.ray/auth_token can run code on this machine; keep it on a trusted network")
        kwargs.update(include_dashboard=True, dashboard_host=dashboard_host, dashboard_port=dashboard_port)
    try:
        context = ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({exc})") from None
    except ValueError as exc:  # e.g. an explicit --dashboard-port that is taken
        raise UserError(f"cannot start Ray: {exc}") from None
    url = getattr(context, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url} (token authentication on: `ray get-auth-token` prints the token)")
    elif missing:
        log(f"Ray dashboard: not started, its packages are missing ({missing}); pip install 'ray[default]'")
    else:
        log("Ray dashboard: not running on this cluster (start the head with `ray start --head --include-dashboard=true`)")


def _dashboard_missing() -> str | None:
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def max_concurrent(plan: Plan) -> int:
    """Trials that fit at once: bounded by --gpus (the user's total) and by the cluster's CPUs and GPUs."""
    resources = ray.cluster_resources()
    have_gpus = resources.get("GPU", 0.0)
    if plan.gpus > have_gpus:
        raise UserError(f"--gpus {plan.gpus:g}: the Ray cluster has {have_gpus:g} GPU(s)"
                        + ("" if have_gpus else "; use --gpus 0 to train on CPU"))
    cpus = resources.get("CPU", 0.0)
    if plan.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {plan.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPU(s)")
    limit = math.floor(cpus / plan.cpus_per_trial + 1e-9)
    if plan.gpus_per_trial:
        limit = min(limit, math.floor(plan.gpus / plan.gpus_per_trial + 1e-9))
    return max(1, min(limit, plan.num_samples, plan.max_concurrent or limit))


def make_trainable(plan: Plan):
    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    trainable = tune.with_parameters(train_trial, base=plan.base, space=plan.search_space, metric=plan.metric)
    return tune.with_resources(trainable, resources)


def make_searcher(plan: Plan) -> OptunaSearch:
    import optuna

    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=plan.seed)
    else:  # TPE, after a few random trials (fewer than optuna's 10 so that small searches still use TPE)
        sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=min(10, max(3, plan.num_samples // 3)))
    space = plan.search_space
    return OptunaSearch(space=space, metric=plan.metric, mode="max", sampler=sampler,
                        points_to_evaluate=[dict(p) for p in space.start] or None)


def run_config(plan: Plan) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=plan.metric,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=2))


def build_tuner(plan: Plan) -> tune.Tuner:
    scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs, grace_period=plan.grace_period,
                              reduction_factor=plan.reduction_factor)
    tune_config = tune.TuneConfig(metric=plan.metric, mode="max", search_alg=make_searcher(plan),
                                  scheduler=scheduler, num_samples=plan.num_samples,
                                  max_concurrent_trials=max_concurrent(plan),
                                  # a finished trial's worker runs the next one: no new process, torch
                                  # and timm already imported (seconds per trial on a small CPU machine)
                                  reuse_actors=True)
    return tune.Tuner(make_trainable(plan), tune_config=tune_config, run_config=run_config(plan))


def restore_tuner(plan: Plan) -> tune.Tuner:
    """Continue an experiment: finished trials stay finished, unfinished and errored ones resume from checkpoints."""
    if not tune.Tuner.can_restore(plan.experiment_path):
        raise UserError(f"--resume: {plan.experiment_path} holds no Ray Tune experiment state to resume")
    max_concurrent(plan)  # the same resource checks as a new search
    return tune.Tuner.restore(plan.experiment_path, trainable=make_trainable(plan), resume_errored=True)
