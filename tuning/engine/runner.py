"""Full-budget Ray runs of fixed configurations (ablate.py, confirm.py): no searcher, no ASHA.

A RunSet is a list of complete TrainConfigs, each with an id and labels (variant, seed, split...). The
runs go to Ray as one grid over their ids, through the search's own launch code (resources, per-node
checks, storage, logs, retries, resume); each reports every epoch, and `collect` returns their curves.
The RunSet is the experiment's record (experiment_folder.save_record): --resume and re-summarising need
only the path.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from hyperiqa.config import TrainConfig
from hyperiqa.errors import UserError
from tuning.engine import experiment_folder
from tuning.engine.experiment_folder import KINDS, Kind
from tuning.engine.options import (
    Resources,
    absolute,
    check_dataset,
    check_name,
    for_ray,
    resume_command,
    writable_storage,
)
from tuning.engine.stall import DEFAULT_STALL_TIMEOUT


@dataclass(frozen=True)
class RunSet:
    kind: str                 # "ablate" or "confirm": which CLI wrote it
    runs: tuple[dict, ...]    # {"id": str, "labels": {...}, "config": TrainConfig.to_dict()}
    metric: str               # the selection metric every run reports (checkpoints are ranked by it)
    gpus: float | None            # None (with --gpus auto on a joined cluster) until launch.settle_gpus
    gpus_per_trial: float | None
    cpus_per_trial: float
    storage_path: str
    name: str
    out_dir: str
    max_concurrent: int | None = None
    settings: dict = dataclasses.field(default_factory=dict)  # the CLI's own choices, for its summary
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # tuning/engine/stall.py; records saved before it get the default

    @property
    def num_samples(self) -> int:
        return len(self.runs)

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def configs(self) -> dict[str, dict]:
        return {r["id"]: r["config"] for r in self.runs}

    def with_resources(self, r: Resources) -> RunSet:
        """The runs on resources settled after connecting (launch.settle_gpus): each run's device and share."""
        runs = tuple({**run, "config": for_ray(TrainConfig.from_dict(run["config"], source=f"run {run['id']}"),
                                                r).to_dict()} for run in self.runs)
        return dataclasses.replace(self, runs=runs, gpus=r.gpus, gpus_per_trial=r.gpus_per_trial)


@dataclass(frozen=True)
class RunOptions:
    """What ablate.py and confirm.py ask of a run set besides its runs: resources, and where it goes."""

    resources: Resources
    storage_path: str
    name: str | None = None  # None: <default_name>-<time>
    out: str | None = None   # None: <kind>_results/<name>
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # --stall-timeout, checked


def make_runset(kind: str, runs: list[tuple[str, dict, TrainConfig]], options: RunOptions, *, metric: str,
                default_name: str, settings: dict | None = None) -> RunSet:
    """Check every configuration for Ray (device, threads, GPU share, absolute paths) and its dataset."""
    ids = [run_id for run_id, _, _ in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"run ids must be unique: {ids}")
    checked: set[str] = set()
    out = []
    for run_id, labels, cfg in runs:
        cfg = for_ray(cfg, options.resources)
        key = json.dumps({k: cfg.to_dict()[k] for k in ("dataset", "data_root", "dataset_options", "split",
                                                        "split_file", "split_seed", "seed", "val_fraction",
                                                        "test_fraction", "selection_metric")}, sort_keys=True)
        if key not in checked:  # each distinct split once (for the demo the first also generates the images)
            check_dataset(cfg)
            checked.add(key)
        out.append({"id": run_id, "labels": labels, "config": cfg.to_dict()})
    name = check_name(options.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    storage = writable_storage(options.storage_path)
    out_dir = absolute(options.out or str(Path(f"{kind}_results") / name))
    r = options.resources
    return RunSet(kind, tuple(out), metric, r.gpus, r.gpus_per_trial, r.cpus_per_trial, storage, name, out_dir,
                  r.max_concurrent, settings or {}, options.stall_timeout)


def save_runset(runset: RunSet) -> None:
    experiment_folder.save_record(runset.experiment_path, KINDS[runset.kind], dataclasses.asdict(runset))


def load_runset(experiment_path: str, kind: Kind) -> RunSet:
    """The RunSet of a `kind` experiment (experiment_folder.ABLATION or CONFIRMATION)."""
    return experiment_folder.load_record(experiment_path, kind, runset_builder(kind))


def runset_builder(kind: Kind):
    """Build a RunSet from its record's fields (experiment_folder.load_record, resume)."""
    return lambda runs, **fields: RunSet(kind.name, tuple(runs), **fields)


def execute(runset: RunSet, *, resume: bool = False, fn=None) -> tuple[dict[str, list[dict]], bool]:
    """Run (or continue) every run on the Ray cluster already started; return collect()'s curves and
    whether the user stopped the runs with Ctrl-C (launch.fit)."""
    from tuning.engine import launch

    kwargs = {"fn": fn} if fn else {}
    if resume:
        tuner = launch.restore_fixed_tuner(runset, **kwargs)
    else:
        tuner = launch.build_fixed_tuner(runset, **kwargs)
        save_runset(runset)
    print(f"experiment: {runset.experiment_path} ({len(runset.runs)} runs at full budget)", flush=True)
    with experiment_folder.disk_full_is_one_line(runset.experiment_path,
                                                 resume_command(f"{runset.kind}.py", runset.experiment_path)):
        interrupted = launch.fit(tuner)
    return collect(runset), interrupted


def collect_saved(runset: RunSet) -> dict[str, list[dict]]:
    """collect() for --summarize (it runs nothing): one line if Ray saved no experiment state there yet."""
    try:
        return collect(runset)
    except ValueError as exc:  # the runs file was written, but Ray saved no experiment state yet
        raise UserError(f"--summarize {runset.experiment_path}: no Ray Tune experiment state there ({exc})") from None


def collect(runset: RunSet) -> dict[str, list[dict]]:
    """{run id: its reported epochs in epoch order (the last report of an epoch counts)}; [] if none."""
    out: dict[str, list[dict]] = {r["id"]: [] for r in runset.runs}
    for config, epochs in _reported(runset):
        run_id = (config or {}).get("run")
        if run_id in out and epochs:
            by_epoch = {int(r["epoch"]): r for r in epochs if r.get("epoch", 0) >= 1}
            out[run_id] = [by_epoch[e] for e in sorted(by_epoch)]
    return out


def _reported(runset: RunSet) -> list[tuple[dict, list[dict]]]:
    """(config, reported results) per run, from Ray's experiment state, or from the runs' own folders when
    a full disk left that state unreadable."""
    from ray import tune

    damaged = experiment_folder.damaged_state(runset.experiment_path)
    if damaged is not None:
        from tuning.engine.trial_folders import read_trials

        print(f"warning: {damaged}; read the runs from their own folders instead", flush=True)
        return [(t.config, t.epochs) for t in read_trials(runset.experiment_path)]
    analysis = tune.ExperimentAnalysis(runset.experiment_path, default_metric=runset.metric, default_mode="max")
    out = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        out.append((trial.config, frame.to_dict("records") if frame is not None and len(frame) else []))
    return out
