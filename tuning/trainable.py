"""The Ray Tune trial: drive Solver.epochs() and report every epoch with a checkpoint.

The only module that calls tune.report / tune.get_checkpoint. A trial is a plain function trainable:
the sampled parameters arrive as `config`; the base TrainConfig, the search space and the metric
name come through tune.with_parameters. Same numbers as `python -m hyperiqa.train --config` with the
trial's configuration: the trial adds nothing to the training, it only reports and checkpoints.
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from hyperiqa.config import TrainConfig
from tuning.space import SearchSpace

# Reported every epoch (the solver's keys); None (undefined, diverged) goes to Ray as NaN, which
# ASHA, the checkpoint ranking and Optuna all treat as the worst value instead of failing on it.
NUMERIC_KEYS = ("epoch", "val_srcc", "val_plcc", "val_plcc_logistic", "val_krcc", "val_rmse", "test_srcc",
                "test_plcc", "test_plcc_logistic", "test_krcc", "test_rmse", "train_loss", "train_srcc",
                "lr_backbone", "lr_head", "patches_per_s", "time_s", "best_epoch")


def train_trial(config: dict[str, Any], *, base: dict, space: SearchSpace, metric: str) -> None:
    """One trial: build the configuration, resume from Ray's checkpoint if any, run the epochs."""
    from hyperiqa.solver import Solver  # heavy (torch, timm): imported in the worker only

    cfg = space.config_for(TrainConfig.from_dict(base), config, source="sampled configuration")
    log_file = _log_file()
    _append(log_file, f"node {ray.get_runtime_context().get_node_id()}; sampled {config}")
    solver = Solver(cfg, log=lambda *parts: _append(log_file, " ".join(map(str, parts))))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry after a failure, or a resumed experiment
        restored = restore(solver, checkpoint)
        _append(log_file, f"resumed from {restored} after epoch {solver.epoch}")
    for metrics in solver.epochs():
        report = to_report(metrics, metric)
        with tempfile.TemporaryDirectory(prefix="hyperiqa-ckpt-") as directory:
            solver.save_checkpoint(directory, metrics)
            # report() copies the folder to the trial's storage before returning.
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))


def restore(solver, checkpoint: tune.Checkpoint) -> str:
    """Load the newest readable checkpoint of this trial; return its path.

    Ray keeps the latest checkpoint while the driver runs, but its experiment snapshot (what --resume
    reads) lags up to ~10 s behind: if the driver dies in that window, the snapshot's "latest" may
    already have been deleted by the best-N ranking, while a newer one exists beside it. So try the
    trial's checkpoint folders newest first, then the one Ray handed us.
    """
    import pyarrow.fs

    fs, parent = checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/"))
    infos = fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and i.base_name.startswith("checkpoint_")), reverse=True)
    candidates = [tune.Checkpoint(posixpath.join(parent, n), filesystem=fs) for n in names] + [checkpoint]
    errors = []
    for candidate in candidates:
        try:
            with candidate.as_directory() as directory:
                solver.load_checkpoint(directory)
            return candidate.path
        except Exception as exc:  # a folder half-written when the process died, or deleted by the ranking
            errors.append(f"{candidate.path}: {exc}")
    raise RuntimeError("no readable checkpoint for this trial: " + "; ".join(errors))


def to_report(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """The solver's metrics as Ray wants them: numbers (None -> NaN), the status string, the metric present."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in NUMERIC_KEYS or key.startswith("best_"):
            out[key] = float("nan") if value is None else value
        elif isinstance(value, (str, int, float, bool)):
            out[key] = value
    out.setdefault(metric, float("nan"))
    out.setdefault("status", "running")
    return out


def _log_file() -> Path | None:
    try:
        return Path(tune.get_context().get_trial_dir()) / "train.log"
    except Exception:  # outside a Tune session (unit tests call the function directly)
        return None


def _append(path: Path | None, line: str) -> None:
    if path is None:
        print(line)
        return
    with open(path, "a") as fh:
        fh.write(line + "\n")
