"""An experiment's trials read from their own folders, for when Ray's experiment state cannot be read
(a search that ended on a full disk leaves it truncated).

Each trial folder holds what the trial itself wrote: result.json (one line per report, with the trial id
and its config), params.json and its kept checkpoint_* folders (each with the metrics.json of its epoch).
What only Ray's state knows is lost: its status (TERMINATED after an ASHA stop, ERROR), so such a trial
reads as unfinished unless its own last report says how it ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderTrial:
    """What export and collect need of a ray.tune.Result, read from the trial's folder."""

    trial_id: str
    path: str
    config: dict
    epochs: list[dict]  # the reported results in order
    best_checkpoints: list = field(default_factory=list)  # [(tune.Checkpoint, its metrics)], like Result's


def read_trials(experiment_path: str) -> list[FolderTrial]:
    """Every trial folder under the experiment that reported at least once, in folder-name order."""
    trials = []
    for result_file in sorted(Path(experiment_path).glob("*/result.json")):
        epochs = _reports(result_file)
        if epochs:
            folder = result_file.parent
            config = epochs[0].get("config") or _params(folder)
            trials.append(FolderTrial(str(epochs[0].get("trial_id") or folder.name), str(folder), config, epochs,
                                      _checkpoints(folder)))
    return trials


def _reports(result_file: Path) -> list[dict]:
    """Its complete lines; a last line cut short by a full disk is left out."""
    out = []
    for line in result_file.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _params(folder: Path) -> dict:
    try:
        return json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        return {}


def _checkpoints(folder: Path) -> list:
    from ray import tune

    kept = []
    for checkpoint in sorted(folder.glob("checkpoint_*")):
        try:
            metrics = json.loads((checkpoint / "metrics.json").read_text())
        except (OSError, ValueError):
            continue  # written only in part: not a checkpoint to export
        kept.append((tune.Checkpoint.from_directory(str(checkpoint)), metrics))
    return kept
