"""Ray side of a search: start or join Ray, check resources, build or restore the Tuner."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import signal
import threading
import urllib.request
from pathlib import Path

import ray
import ray._private.ray_constants as ray_constants
from ray import tune

from hyperiqa.utils import UserError
from tuning import report, retention, tracking
from tuning.plan import Plan
from tuning.schedulers import BestValueOptunaSearch, ResumableASHA
from tuning.trainable import FAILED, fixed_trial, train_trial

REPO_ROOT = Path(__file__).resolve().parent.parent
KEEP_CHECKPOINTS = 2  # per trial, ranked by the metric: the best epoch survives (see trainable.restore)
DEFAULT_DASHBOARD_HOST = "127.0.0.1"


def start_ray(address: str | None, dashboard_host: str | None, dashboard_port: int | None, log=print) -> None:
    """Start a local Ray (dashboard on loopback unless told otherwise) or join `address`; print the dashboard URL."""
    # Local workers inherit this environment: they import hyperiqa/tuning even when the project is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # Trials log to their own train.log; Ray's INFO lines (one per checkpoint) would bury the progress table.
    kwargs: dict = {"logging_level": "WARNING", "logging_config": ray.LoggingConfig(log_level="WARNING")}
    missing = _dashboard_missing()
    if address:
        kwargs["address"] = address
        if dashboard_host is not None or dashboard_port is not None:
            log("warning: --dashboard-host/--dashboard-port are ignored with --address: the cluster's dashboard "
                "was set up by `ray start --head` (give them there)")
    elif missing:
        kwargs["include_dashboard"] = False
    else:
        host = dashboard_host or DEFAULT_DASHBOARD_HOST
        if not _is_loopback(host):
            log(f"warning: the dashboard will listen on {host}: anyone who can reach it and holds the "
                "token in ~/.ray/auth_token can run code on this machine; keep it on a trusted network")
        kwargs.update(include_dashboard=True, dashboard_host=host, dashboard_port=dashboard_port)
    try:
        with contextlib.nullcontext() if address else _loopback_node():
            context = ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as exc:
        raise UserError(f"--address {address}: the cluster uses token authentication and refused this "
                        f"machine's token ({str(exc).splitlines()[0]}); copy the head's ~/.ray/auth_token here "
                        "or set RAY_AUTH_TOKEN") from None
    except ConnectionError as exc:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({exc})") from None
    except ValueError as exc:  # e.g. an explicit --dashboard-port that is taken
        raise UserError(f"cannot start Ray: {exc}") from None
    url = getattr(context, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url} ({auth_note(dashboard_auth_mode(url))})")
    elif missing:
        log(f"Ray dashboard: not started, its packages are missing ({missing}); pip install 'ray[default]'")
    else:
        log("Ray dashboard: not running on this cluster (start the head with `ray start --head --include-dashboard=true`)")


@contextlib.contextmanager
def _loopback_node():
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


def max_concurrent(plan: Plan) -> int:
    """Trials that fit at once: bounded by --gpus (the user's total), the cluster, and what one node holds."""
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
    return max(1, min(limit, plan.num_samples, plan.max_concurrent or limit))


def _alive_nodes() -> list[dict]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def check_fits_one_node(cpus: float, gpus: float, nodes: list[dict]) -> None:
    """A trial runs on one node: if no node holds its CPUs and GPUs, Ray would leave it PENDING forever."""
    if any(n.get("CPU", 0) + 1e-9 >= cpus and n.get("GPU", 0) + 1e-9 >= gpus for n in nodes):
        return
    sizes = ", ".join(sorted({f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes})) or "none"
    raise UserError(f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no node of the Ray cluster holds "
                    f"one trial (nodes: {sizes}); a trial runs on a single node")


def make_trainable(plan: Plan, fn=train_trial):
    trainable = tune.with_parameters(fn, base=plan.base, space=plan.search_space, metric=plan.metric)
    return tune.with_resources(trainable, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


def make_searcher(plan: Plan) -> BestValueOptunaSearch:
    import optuna

    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=plan.seed)
    else:  # TPE, after a few random trials (fewer than optuna's 10 so that small searches still use TPE)
        sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=min(10, max(3, plan.num_samples // 3)))
    space = plan.search_space
    # --optuna-storage: the study lives in that database under the experiment's name (optuna-dashboard
    # shows it while the search runs); otherwise in memory, pickled with the experiment's searcher state.
    storage = optuna.storages.RDBStorage(plan.optuna_storage) if plan.optuna_storage else None
    # Start points are enqueued in the study up front: those beyond --num-samples would never run and
    # would stay WAITING in a stored study.
    start = [dict(p) for p in space.start[:plan.num_samples]]
    return BestValueOptunaSearch(space=space, metric=plan.metric, mode="max", sampler=sampler,
                                 points_to_evaluate=start or None,
                                 storage=storage, study_name=plan.name if storage else None)


def make_scheduler(plan: Plan) -> ResumableASHA:
    return ResumableASHA(time_attr="epoch", max_t=plan.max_epochs, grace_period=plan.grace_period,
                         reduction_factor=plan.reduction_factor)  # metric and mode come from TuneConfig


class FailedTrialReporter(tune.Callback):
    """One line on the driver when a trial could not start on its node (its message names node and path)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("status") == FAILED:
            print(f"trial {trial.trial_id} failed and is not retried: {result.get('message')}", flush=True)


class RetentionCallback(tune.Callback):
    """--keep-checkpoints best/top-K while the search runs (tuning/retention.py): after each checkpoint, the
    trial's older ones lose their optimizer state; a trial that ended keeps its best epoch's weights only.
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
        from tuning.ray_callbacks import MLflowTrialRuns

        callbacks.append(MLflowTrialRuns(tracking_uri=plan.mlflow_uri, experiment_name=plan.name))
    if "wandb" in tools:
        from tuning.ray_callbacks import WandbTrialRuns

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
        failure_config=tune.FailureConfig(max_failures=2),
        callbacks=[FailedTrialReporter(), *retention_callbacks(plan), *tracking_callbacks(plan)])


def retention_callbacks(plan) -> list:
    """A runner.RunSet (ablate, confirm) has no --keep-checkpoints: it gets the default."""
    keep = getattr(plan, "keep_checkpoints", retention.DEFAULT_KEEP)
    return [] if keep == retention.ALL else [RetentionCallback(plan.metric)]


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
    config = _restored_tune_config(tuner)
    config.scheduler, config.max_concurrent_trials = scheduler, concurrency
    return tuner


def saved_results(plan: Plan) -> dict[str, list[dict]]:
    """Every trial's reported results, from the experiment's storage (local folder or URI)."""
    analysis = tune.ExperimentAnalysis(plan.experiment_path, default_metric=plan.metric, default_mode="max")
    frames = analysis.trial_dataframes
    return {t.trial_id: frames[t.trial_id].to_dict("records") for t in analysis.trials
            if t.trial_id in frames and len(frames[t.trial_id])}


def _restored_tune_config(tuner: tune.Tuner) -> tune.TuneConfig:
    # Ray 2.60 has no public way to give a restored Tuner a new scheduler or concurrency limit; the
    # TuneConfig it will run with is this attribute (ray/tune/impl/tuner_internal.py). Pinned in pyproject.
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if not isinstance(config, tune.TuneConfig):
        raise RuntimeError(f"ray {ray.__version__}: cannot reach the restored Tuner's TuneConfig; "
                           "this project needs ray 2.60.0")
    return config


def fit(tuner: tune.Tuner) -> bool:
    """Run the tuner; True if the user stopped it (Ctrl-C: SIGINT).

    Tune catches the first SIGINT itself: it ends the run, saves its state, returns from fit() as after
    a finished run and keeps its flag to itself (ray/tune/tune.py, _setup_signal_catching). What shows is
    the SIGINT handler: Tune puts back the one it found when the signal comes, and leaves its own in place
    otherwise. Tune installs one only in the main thread and without TUNE_DISABLE_SIGINT_HANDLER (a SIGINT
    then raises KeyboardInterrupt as usual). Ray pinned in pyproject; tests/test_search_scripted.py checks it.
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
    _restored_tune_config(tuner).max_concurrent_trials = concurrency
    return tuner


def _fixed_trainable(runset, fn):
    trainable = tune.with_parameters(fn, runs=runset.configs(), metric=runset.metric)
    return tune.with_resources(trainable, {"cpu": runset.cpus_per_trial, "gpu": runset.gpus_per_trial})
