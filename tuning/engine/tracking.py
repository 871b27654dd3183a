"""Experiment tracking and dashboards: where a search's trials show up besides the export folder.

    --log-to tensorboard,mlflow,wandb    Ray Tune's own logger callbacks (launch.tracking_callbacks)
    --optuna-storage URL                 the searcher's Optuna study in a database, for optuna-dashboard
    --cross NAME=ROOT                    (the flag only; tuning/sweep/crosseval.py scores the export on it)

No Ray imports here: the flags are checked and the tools' stores opened before Ray starts, so a missing
package or an unreachable store is one line, not a traceback after the cluster came up. After the
export, the best trial's MLflow run is tagged (tag_mlflow_runs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hyperiqa.utils import UserError

TRACKERS = ("tensorboard", "mlflow", "wandb")
# tracker -> (the module it needs, the extra of pyproject.toml that installs it)
MODULES = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
DEFAULT_WANDB_PROJECT = "hyperiqa-tune"
# Tags of the MLflow run of each trial: which Ray trial it is, and what the export made of it.
TRIAL_TAG, BEST_TAG, ENDED_TAG = "ray.trial_id", "hyperiqa.best", "hyperiqa.ended"


def add_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("tracking and integrations")
    g.add_argument("--log-to", action="append", default=[], metavar="TOOLS",
                   help="also log every trial's parameters and per-epoch metrics to these tools: "
                        "tensorboard, mlflow, wandb (comma list or repeated)")
    g.add_argument("--mlflow-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db in the current folder, made absolute)")
    g.add_argument("--wandb-project", metavar="PROJECT", help="W&B project (default: $WANDB_PROJECT, else "
                   f"{DEFAULT_WANDB_PROJECT}); WANDB_MODE=offline keeps the runs on disk")
    g.add_argument("--optuna-storage", metavar="URL", help="keep the searcher's Optuna study (named after the "
                   "experiment) in this database, e.g. sqlite:///exports/study.db or postgresql://...; view it "
                   "with optuna-dashboard URL")
    g.add_argument("--cross", action="append", default=[], metavar="NAME=ROOT",
                   help="score the exported checkpoint on every image of another dataset (a --dataset reader and "
                        "its folder; csv=FILE.csv for a table with columns image,label); repeatable; the table "
                        "goes to summary.md and metrics.json")
    return g


def parse_log_to(values: list[str]) -> list[str]:
    tools: list[str] = []
    for value in values:
        for tool in filter(None, (t.strip().lower() for t in value.split(","))):
            if tool not in TRACKERS:
                raise UserError(f"--log-to {tool}: unknown tool; allowed: {', '.join(TRACKERS)}")
            if tool not in tools:
                tools.append(tool)
    return tools


def plan_fields(log_to: list[str], mlflow_uri: str | None, wandb_project: str | None,
                optuna_storage: str | None) -> dict:
    """The tracking settings a Plan saves (so --resume and re-exports repeat them) from the values of
    add_flags' flags (None: not given), checked and absolute."""
    tools = parse_log_to(log_to)
    if mlflow_uri and "mlflow" not in tools:
        raise UserError("--mlflow-uri is used with --log-to mlflow; add it")
    if wandb_project and "wandb" not in tools:
        raise UserError("--wandb-project is used with --log-to wandb; add it")
    mlflow_uri = absolute_store_uri(mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db",
                                    "--mlflow-uri") if "mlflow" in tools else None
    wandb_project = (wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT) \
        if "wandb" in tools else None
    storage = absolute_store_uri(optuna_storage, "--optuna-storage") if optuna_storage else None
    if storage and "://" not in storage.split("?")[0]:
        raise UserError(f"--optuna-storage {optuna_storage}: a database URL is expected, e.g. "
                        "sqlite:///exports/study.db or postgresql://user:password@host/db")
    return {"log_to": tools, "mlflow_uri": mlflow_uri, "wandb_project": wandb_project, "optuna_storage": storage}


def absolute_store_uri(uri: str, flag: str) -> str:
    """Relative sqlite paths and plain folders made absolute: trials and re-exports run elsewhere."""
    if uri.startswith("sqlite:///"):
        path, query = (uri[len("sqlite:///"):].split("?", 1) + [""])[:2]
        if path in ("", ":memory:"):
            raise UserError(f"{flag} {uri}: an in-memory database would vanish with the driver; give a file")
        if not path.startswith("/"):
            path = str(Path(path).expanduser().resolve())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}" + (f"?{query}" if query else "")
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri


def check_installed(tools: list[str]) -> None:
    """One line with the pip command for the first missing package (before Ray starts)."""
    import importlib.util

    for tool in tools:
        module, extra = MODULES[tool]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--log-to {tool}: the Python package {module} is not installed; "
                            f"pip install -e \".[{extra}]\"")


def prepare(plan, *, resume: bool, log=print) -> None:
    """Before Ray starts: packages present, MLflow and Optuna stores reachable; say where to look."""
    check_installed(plan.log_to)
    if "mlflow" in plan.log_to:
        _open_mlflow(plan.mlflow_uri)
    if plan.optuna_storage:
        _check_study(plan.optuna_storage, plan.name, resume)
    for line in where_to_look(plan):
        log(line)


def _open_mlflow(uri: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        raise UserError(f"--mlflow-uri {uri}: cannot open the MLflow store: {_first_line(exc)}") from None


def _check_study(url: str, name: str, resume: bool) -> None:
    """A new search starts a new study; a resumed one continues the study it created."""
    import optuna

    try:
        names = optuna.study.get_all_study_names(storage=url)
    except Exception as exc:  # whatever the database says: a missing driver, a refused connection, a bad URL
        raise UserError(f"--optuna-storage {url}: cannot open it: {_first_line(exc)}") from None
    if resume and name not in names:
        raise UserError(f"--optuna-storage {url}: holds no study '{name}' to continue (deleted or moved?); the "
                        "resumed search would lose what its searcher learnt")
    if not resume and name in names:
        raise UserError(f"--optuna-storage {url}: already holds a study '{name}'; choose another --name or "
                        f"delete it: optuna delete-study --study-name {name} --storage {url}")


def where_to_look(plan) -> list[str]:
    lines = []
    if "tensorboard" in plan.log_to:
        lines.append(f"TensorBoard: tensorboard --logdir {plan.experiment_path}")
    if "mlflow" in plan.log_to:
        view = f"mlflow ui --backend-store-uri {plan.mlflow_uri}" if _is_local_store(plan.mlflow_uri) \
            else plan.mlflow_uri
        lines.append(f"MLflow: experiment {plan.name} at {plan.mlflow_uri}; view it with {view}")
    if "wandb" in plan.log_to:
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        where = (f"offline runs: {wandb_dir(plan)}/wandb/offline-run-* (upload them with wandb sync)" if offline
                 else "runs uploaded as they go")
        lines.append(f"W&B: project {plan.wandb_project}, group {plan.name}; {where}")
    if plan.optuna_storage:
        lines.append(f"Optuna: study {plan.name}; view it with optuna-dashboard {plan.optuna_storage}")
    return lines


def wandb_dir(plan) -> str:
    """Where W&B keeps its run folders (offline runs stay there for `wandb sync`): $WANDB_DIR, else the
    experiment folder when it is local, else the current folder. Not the trial folders: Ray copies those
    from its staging area at a trial's end, before the W&B logging actor has finished writing."""
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"]
    return os.getcwd() if "://" in plan.experiment_path else plan.experiment_path


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/"))


def tag_mlflow_runs(plan, rows, best_id: str | None, log=print) -> None:
    """After the export: `hyperiqa.best` true on the best trial's run (false on the others, so a re-export
    that picks another trial moves it) and `hyperiqa.ended` (completed, stopped by ASHA, ...) on each."""
    if "mlflow" not in plan.log_to:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=plan.mlflow_uri)
        experiment = client.get_experiment_by_name(plan.name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        by_trial = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in runs}
        for row in rows:
            run_id = by_trial.get(row.trial_id)
            if run_id:
                client.set_tag(run_id, BEST_TAG, str(row.trial_id == best_id).lower())
                client.set_tag(run_id, ENDED_TAG, row.ended)
    except Exception as exc:  # the export is written: a tracking server that is down must not undo it
        log(f"warning: could not tag the MLflow runs at {plan.mlflow_uri}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
