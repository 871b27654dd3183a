"""The Ray Tune trial: drive Solver.epochs() and report every epoch with a checkpoint.

The only module that calls tune.report / tune.get_checkpoint. A trial is a plain function trainable:
the sampled parameters arrive as `config`; the base TrainConfig, the search space and the metric
name come through tune.with_parameters. Same numbers as `python -m hyperiqa.train --config` with the
trial's configuration: the trial adds nothing to the training, it only reports and checkpoints.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from hyperiqa.config import TrainConfig
from hyperiqa.utils import UserError

# Reported every epoch (the solver's keys); None (undefined, diverged) goes to Ray as NaN, which the
# scheduler and searcher (tuning/sweep/asha.py, optuna_search.py) rank below every finite value.
NUMERIC_KEYS = ("epoch", "val_srcc", "val_plcc", "val_plcc_logistic", "val_krcc", "val_rmse", "test_srcc",
                "test_plcc", "test_plcc_logistic", "test_krcc", "test_rmse", "train_loss", "train_srcc",
                "train_image_srcc", "train_image_plcc",
                "lr_backbone", "lr_head", "patches_per_s", "time_s", "best_epoch")
FAILED = "failed"  # the status of a trial that could not start (data, cache or configuration on its node)
LOG_NAME = "train.log"


def fixed_trial(config: dict[str, Any], *, runs: dict[str, dict], metric: str) -> None:
    """A run of a fixed configuration (ablate.py, confirm.py): config["run"] names it in `runs`."""
    run_id = config["run"]
    run_trial(lambda: TrainConfig.from_dict(runs[run_id], source=f"run {run_id}"), f"run {run_id}", metric)


def hide_gpus_from_cpu_trial() -> None:
    """A trial Ray gave no GPU sees none: Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone in 0-GPU workers, and
    torch's Adam.step initialises CUDA whenever a GPU is visible (hundreds of MB of context on a GPU that
    another trial trains on). Set before anything in this process touches CUDA."""
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run_trial(make_config: Callable[[], TrainConfig], what: str, metric: str) -> None:
    """Build the configuration, resume from Ray's checkpoint if any, run and report the epochs."""
    hide_gpus_from_cpu_trial()
    from hyperiqa.solver import Solver  # heavy (torch, timm): imported in the worker only
    from hyperiqa.text import epoch_line

    # Ray runs each trial in its own working directory on its node and, with sync_artifacts on (see
    # launch.run_config), uploads that folder to the trial's storage with every checkpoint.
    log = TrialLog(Path.cwd() / LOG_NAME)
    node = _node()
    log(f"node {node}; {what}")
    try:
        cfg = make_config()
        solver = Solver(cfg, log=log)
    except UserError as exc:  # ConfigError included
        # Missing data or cache on this node, or a configuration the backbone refuses: a retry on the
        # same node would fail the same way (retries are for crashes), so end the trial with its reason.
        message = f"node {node}: {exc}"
        log(message)
        tune.report({"epoch": 0, metric: float("nan"), "status": FAILED, "message": message})
        return
    report = _report_with_checkpoint(solver, metric)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry after a failure, or a resumed experiment
        restored, known = restore(solver, checkpoint)
        log(f"resumed from {restored} after epoch {solver.epoch}")
        catch_up(solver, known, metric, report)
    for metrics in solver.epochs():
        log(epoch_line(metrics, cfg.epochs))
        report(metrics)


def _report_with_checkpoint(solver, metric: str) -> Callable[..., None]:
    def report(metrics: dict, checkpoint: bool = True) -> None:
        if not checkpoint:
            tune.report(to_report(metrics, metric))
            return
        with tempfile.TemporaryDirectory(prefix="hyperiqa-ckpt-") as directory:
            solver.save_checkpoint(directory, metrics)
            # report() copies the folder to the trial's storage before returning.
            tune.report(to_report(metrics, metric), checkpoint=tune.Checkpoint.from_directory(directory))

    return report


def restore(solver, checkpoint: tune.Checkpoint) -> tuple[str, int]:
    """Load the newest readable checkpoint of this trial; (its path, the epoch of `checkpoint`).

    Ray keeps the latest checkpoint while the driver runs, but its experiment snapshot (what --resume
    reads) lags up to ~10 s behind: if the driver dies in that window, the snapshot's "latest" may
    already have been deleted by the best-N ranking, while a newer one exists beside it. So try the
    trial's checkpoint folders newest first, then the one Ray handed us. The epoch of the handed
    checkpoint (0 if it is gone) says how far Ray's own record of this trial reaches.
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
            return candidate.path, _epoch_of(checkpoint)
        except Exception as exc:  # a folder half-written when the process died, or deleted by the ranking
            errors.append(f"{candidate.path}: {exc}")
    raise RuntimeError("no readable checkpoint for this trial: " + "; ".join(errors))


def catch_up(solver, known_epoch: int, metric: str, report: Callable[..., None]) -> None:
    """Report again the epochs a resumed trial finished after the last one Ray recorded.

    Their checkpoints reached storage but their results never reached the driver before it died, so
    ASHA, the searcher and the trial's results would miss them. The restored epoch is reported with a
    checkpoint of the restored state (Ray ranks it with the others); earlier ones without. An epoch
    Ray did record may come twice: its rung is already recorded and the export keeps the later report.
    """
    missing = [m for m in solver.history if m["epoch"] > known_epoch]
    for metrics in missing:
        report(metrics, checkpoint=metrics["epoch"] == solver.epoch)


def _epoch_of(checkpoint: tune.Checkpoint) -> int:
    try:
        with checkpoint.as_directory() as directory:
            return int(json.loads((Path(directory) / "metrics.json").read_text())["epoch"])
    except Exception:  # deleted by the ranking after the snapshot: assume Ray recorded nothing of it
        return 0


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


def _node() -> str:
    context = ray.get_runtime_context()
    return f"{context.get_node_id()} ({ray.util.get_node_ip_address()})"


class TrialLog:
    """Appends lines to the trial's train.log (a file opened per line: trials may run for days)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, *parts) -> None:
        with open(self.path, "a") as fh:
            fh.write(" ".join(map(str, parts)) + "\n")
