"""Ray for every experiment: start or join Ray, check resources, the run settings, fixed-configuration Tuners.

A search's own Tuner (searcher, scheduler) is built in tuning/sweep/tuner.py on top of these.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import urllib.request
from pathlib import Path

import ray
from ray import tune

from hyperiqa.utils import UserError
from tuning.engine import options, progress, ray_private, ray_token, retention, stall, tracking
from tuning.engine.trainable import FAILED, fixed_trial
from tuning.engine.watch import StallWatch, replace_in

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEP_CHECKPOINTS = 2  # per trial, ranked by the metric: the best epoch survives (see trainable.restore)
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
_gpus_here: list[str] | None = None  # the GPUs start_ray gave a Ray it started; None: Ray was joined


def start_ray(address: str | None, dashboard_host: str | None, dashboard_port: int | None, log=print,
              dashboard: bool = True, gpus: float | None = None) -> None:
    """Start a Ray of this run's own (dashboard on loopback unless told otherwise) or join `address`
    (or RAY_ADDRESS: see options.cluster_to_join); print the dashboard URL.
    A Ray of its own gets `gpus` (rounded up) of the GPUs this process may use, the first ones (None: Ray counts)."""
    if not dashboard and (dashboard_host is not None or dashboard_port is not None):
        raise UserError("--no-dashboard: --dashboard-host and --dashboard-port set up the dashboard it turns off; "
                        "give one or the other")
    joining = options.cluster_to_join(address)
    from_env = joining is not None and not (address and address.strip())
    address = joining
    source = "RAY_ADDRESS" if from_env else "--address"
    if from_env:
        log(f"Ray: joining the cluster at {address} that RAY_ADDRESS names (as inside a Ray Job); "
            "unset RAY_ADDRESS for a Ray of this run's own")
    # Local workers inherit this environment: they import hyperiqa/tuning even when the project is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # Trials log to their own train.log; Ray's INFO lines (one per checkpoint) would bury the progress table.
    # "local": a Ray of this run's own, even where a bootstrap file names another cluster (cluster_to_join).
    kwargs: dict = {"address": address or "local", "logging_level": "WARNING",
                    "logging_config": ray.LoggingConfig(log_level="WARNING")}
    missing = _dashboard_missing()
    global _gpus_here
    _gpus_here = None
    if gpus is not None and address is None:
        _gpus_here = _first_gpus(gpus)
        kwargs["num_gpus"] = len(_gpus_here)
    if address:
        ignored = [flag for flag, given in (("--dashboard-host", dashboard_host is not None),
                                            ("--dashboard-port", dashboard_port is not None),
                                            ("--no-dashboard", not dashboard)) if given]
        if ignored:
            where = "inside a Ray Job (RAY_ADDRESS)" if from_env else "with --address"
            log(f"warning: {'/'.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored {where}: the "
                "cluster's dashboard was set up by `ray start --head` (give them there)")
    elif missing or not dashboard:
        kwargs["include_dashboard"] = False
    else:
        host = dashboard_host or DEFAULT_DASHBOARD_HOST
        if not _is_loopback(host):
            log(f"warning: the dashboard will listen on {host}: anyone who can reach it and holds the "
                "token in ~/.ray/auth_token can run code on this machine; keep it on a trusted network")
        kwargs.update(include_dashboard=True, dashboard_host=host, dashboard_port=dashboard_port)
    ray_token.prepare(create=not address, log=log)  # before Ray would write a token others can read
    try:
        with contextlib.nullcontext() if address else ray_private.single_node_mode():
            context = ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as exc:
        raise UserError(f"{source} {address}: the cluster uses token authentication and refused this "
                        f"machine's token ({str(exc).splitlines()[0]}); copy the head's ~/.ray/auth_token here "
                        "or set RAY_AUTH_TOKEN") from None
    except ConnectionError as exc:
        raise UserError(f"{source} {address}: cannot connect to a Ray cluster there ({exc})") from None
    except ValueError as exc:  # e.g. an explicit --dashboard-port that is taken
        raise UserError(f"cannot start Ray: {exc}") from None
    url = getattr(context, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url} ({auth_note(dashboard_auth_mode(url))})")
    elif not dashboard and not address:
        log("Ray dashboard: not started (--no-dashboard)")
    elif missing:
        log(f"Ray dashboard: not started, its packages are missing ({missing}); pip install 'ray[default]'")
    else:
        log("Ray dashboard: not running on this cluster (start the head with `ray start --head --include-dashboard=true`)")


def start_for(record, args, caches: list):
    """Ray for a sweep Plan or runner.RunSet, started (start_ray) from the CLI's cluster flags, with the decoded
    caches of `caches` (TrainConfigs) built before any trial: in this process before a Ray of its own starts,
    one task per node on a joined cluster (tuning/engine/node_cache.py). Returns the record with --gpus auto
    settled on the GPUs found."""
    from tuning.engine import node_cache

    joined = options.joins_cluster(args.address)
    if not joined:
        node_cache.build_local(caches)  # the trials open it instead of queueing on its lock with idle GPUs
    start_ray(args.address, args.dashboard_host, args.dashboard_port, dashboard=args.dashboard, gpus=record.gpus)
    record = settle_gpus(record)  # --gpus auto on a joined cluster: its GPUs, known now
    if joined:
        node_cache.build_on_nodes(caches, record.cpus_per_trial, record.gpus_per_trial)
    return record


def _first_gpus(gpus: float) -> list[str]:
    """The first ceil(gpus) GPUs this process may use, made the only ones a Ray started now sees: its raylet and
    trial workers inherit CUDA_VISIBLE_DEVICES, and Ray hands each trial one of them."""
    ids = options.visible_gpus()
    wanted = math.ceil(gpus - 1e-9)
    if wanted > len(ids):  # options.resources checked a new run; a resumed one may be on another machine
        raise UserError(f"--gpus {gpus:g} (the experiment's): this process may use {len(ids)} GPU(s)"
                        f"{options.visible_note()}; continue it where it may use {wanted}")
    if wanted < len(ids):
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:wanted])
    return ids[:wanted]


def settle_gpus(record):
    """A sweep Plan or runner.RunSet of --gpus auto on a joined cluster, on the cluster's GPUs (known once
    connected); any other record as it is."""
    if record.gpus is not None:
        return record
    unit = "run" if hasattr(record, "runs") else "trial"
    settled = options.settle(None, record.gpus_per_trial, record.cpus_per_trial, record.max_concurrent, unit,
                             found=ray.cluster_resources().get("GPU", 0.0))
    return record.with_resources(settled)


def dashboard_auth_mode(url: str, timeout: float = 3.0) -> str | None:
    """The dashboard's own answer to whether it requires a token ('token', 'disabled'); None if unknown."""
    try:
        with urllib.request.urlopen(f"http://{url}/api/authentication_mode", timeout=timeout) as response:
            return str(json.loads(response.read())["authentication_mode"])
    except (OSError, ValueError, KeyError):
        return None


def auth_note(mode: str | None) -> str:
    if mode == "token":
        return "token authentication on: `ray get-auth-token` prints the token the page asks for"
    if mode == "disabled":
        return ("token authentication OFF: anyone who can reach this port can run code on the cluster; "
                "start it with RAY_AUTH_MODE=token")
    return "could not ask it whether it requires a token"


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


def max_concurrent(plan) -> int:
    """Trials (of a sweep Plan or a runner.RunSet) that fit at once: bounded by --gpus (the user's total), the cluster, and what one node holds."""
    resources = ray.cluster_resources()
    have_gpus = resources.get("GPU", 0.0)
    if plan.gpus > have_gpus:
        raise UserError(f"--gpus {plan.gpus:g}: the Ray cluster has {have_gpus:g} GPU(s)"
                        + ("" if have_gpus else "; use --gpus 0 to train on CPU"))
    cpus = resources.get("CPU", 0.0)
    if plan.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {plan.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPU(s)")
    check_fits_one_node(plan.cpus_per_trial, plan.gpus_per_trial, _alive_nodes())
    limit = math.floor(cpus / plan.cpus_per_trial + 1e-9)
    if plan.gpus_per_trial:
        limit = min(limit, math.floor(plan.gpus / plan.gpus_per_trial + 1e-9))
    at_once = max(1, min(limit, plan.num_samples, plan.max_concurrent or limit))
    used = options.Resources(plan.gpus, plan.gpus_per_trial, plan.cpus_per_trial)
    print(options.concurrency_line(at_once, used, "run" if hasattr(plan, "runs") else "trial", _gpus_here), flush=True)
    return at_once


def _alive_nodes() -> list[dict]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def check_fits_one_node(cpus: float, gpus: float, nodes: list[dict]) -> None:
    """A trial runs on one node: if no node holds its CPUs and GPUs, Ray would leave it PENDING forever."""
    if any(n.get("CPU", 0) + 1e-9 >= cpus and n.get("GPU", 0) + 1e-9 >= gpus for n in nodes):
        return
    sizes = ", ".join(sorted({f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes})) or "none"
    raise UserError(f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no node of the Ray cluster holds "
                    f"one trial (nodes: {sizes}); a trial runs on a single node")


class FailedTrialReporter(tune.Callback):
    """One line on the driver when a trial could not start on its node (its message names node and path)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("status") == FAILED:
            print(f"trial {trial.trial_id} failed and is not retried: {result.get('message')}", flush=True)


class RetentionCallback(tune.Callback):
    """--keep-checkpoints best/top-K while the search runs (tuning/engine/retention.py): after each checkpoint,
    the trial's older ones lose their optimizer state; a trial that ended keeps its best epoch's weights only.
    A failed deletion is a warning: it must not stop Ray from registering the checkpoint."""

    def __init__(self, metric: str):
        self.metric = metric

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Ray calls this once the worker has uploaded `checkpoint`, before ranking it with the others.
        self._quietly(retention.drop_old_optimizer_state, checkpoint.filesystem, trial.path, checkpoint.path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._quietly(retention.finish_trial, trial.storage.storage_filesystem, trial.path, self.metric)

    @staticmethod
    def _quietly(fn, *args) -> None:
        try:
            fn(*args)
        except OSError as exc:
            print(f"warning: --keep-checkpoints could not delete old checkpoint files ({exc})", flush=True)


def tracking_callbacks(plan) -> list:
    """Ray Tune's logger callbacks for --log-to (a runner.RunSet has none). TensorBoard event files are
    written by Ray's default TBXLoggerCallback anyway; naming it here only makes it explicit."""
    tools = getattr(plan, "log_to", None) or []
    callbacks: list = []
    if "tensorboard" in tools:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in tools:
        from tuning.engine.ray_callbacks import MLflowTrialRuns

        callbacks.append(MLflowTrialRuns(tracking_uri=plan.mlflow_uri, experiment_name=plan.name))
    if "wandb" in tools:
        from tuning.engine.ray_callbacks import WandbTrialRuns

        # resume="allow": a trial continued by --resume logs on to its own run (id = the trial id).
        # WANDB_MODE is passed on because the logging actors may start under another environment
        # (a cluster's raylet started by `ray start`).
        extra = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
        callbacks.append(WandbTrialRuns(project=plan.wandb_project, group=plan.name, resume="allow",
                                        dir=tracking.wandb_dir(plan), **extra))
    return callbacks


def run_config(plan) -> tune.RunConfig:
    """Storage, checkpoint ranking, log upload, retries and --log-to callbacks, for a Plan or a runner.RunSet."""
    return tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=plan.metric,
                                                checkpoint_score_order="max"),
        # Upload each trial's working directory (its train.log) with every checkpoint: it lives on the
        # trial's node, which on a cluster is not the driver's.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        failure_config=tune.FailureConfig(max_failures=stall.MAX_RETRIES),
        callbacks=[FailedTrialReporter(), *retention_callbacks(plan), *tracking_callbacks(plan),
                   StallWatch(stall_timeout(plan)), progress.for_experiment(plan)])


def stall_timeout(plan) -> float:
    """--stall-timeout of a Plan or runner.RunSet (records from before the watchdog: the default)."""
    return getattr(plan, "stall_timeout", stall.DEFAULT_STALL_TIMEOUT)


def refresh_callbacks(tuner: tune.Tuner, plan) -> None:
    """A restored Tuner runs the callbacks pickled when the experiment was created: give it the watchdog with
    the record's setting and a fresh progress line (an experiment from before them had neither)."""
    config = ray_private.restored_run_config(tuner)
    config.callbacks = replace_in(config.callbacks, stall_timeout(plan))
    progress.refresh(config, plan)


def retention_callbacks(plan) -> list:
    """A runner.RunSet (ablate, confirm) has no --keep-checkpoints: it gets the default."""
    keep = getattr(plan, "keep_checkpoints", retention.DEFAULT_KEEP)
    return [] if keep == retention.ALL else [RetentionCallback(plan.metric)]


def fit(tuner: tune.Tuner) -> bool:
    """Run the tuner; True if the user stopped it with Ctrl-C (see ray_private.fit_stopped_by_sigint)."""
    return ray_private.fit_stopped_by_sigint(tuner)


def build_fixed_tuner(runset, fn=fixed_trial) -> tune.Tuner:
    """Every run of a runner.RunSet at full budget: a grid over run ids, no searcher, no scheduler."""
    tune_config = tune.TuneConfig(max_concurrent_trials=max_concurrent(runset), reuse_actors=True)
    return tune.Tuner(_fixed_trainable(runset, fn), param_space={"run": tune.grid_search([r["id"] for r in runset.runs])},
                      tune_config=tune_config, run_config=run_config(runset))


def restore_fixed_tuner(runset, fn=fixed_trial) -> tune.Tuner:
    if not tune.Tuner.can_restore(runset.experiment_path):
        raise UserError(f"--resume: {runset.experiment_path} holds no Ray Tune experiment state to resume")
    concurrency = max_concurrent(runset)
    tuner = tune.Tuner.restore(runset.experiment_path, trainable=_fixed_trainable(runset, fn), resume_errored=True)
    ray_private.restored_tune_config(tuner).max_concurrent_trials = concurrency
    refresh_callbacks(tuner, runset)
    return tuner


def _fixed_trainable(runset, fn):
    trainable = tune.with_parameters(fn, runs=runset.configs(), metric=runset.metric)
    return tune.with_resources(trainable, {"cpu": runset.cpus_per_trial, "gpu": runset.gpus_per_trial})
