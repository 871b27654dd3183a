"""What a search keeps of its trials' checkpoints (--keep-checkpoints).

A checkpoint folder holds the weights (model.safetensors; ResNet-50: 110 MB), the optimizer state
(trainer_state.pt; 219 MB) and small files (config, metrics, split, preprocess). Ray keeps each trial's
KEEP_CHECKPOINTS best epochs by the metric, plus its latest. What each of them is needed for:

- the optimizer state only to continue a trial that has not ended: its latest checkpoint (trainable.restore
  reads the newest folder first);
- the weights only for the export, which takes the best epoch of the best trial (and for a re-export,
  which may use another trial's best epoch only if the search is resumed and that trial overtakes).

Policies (KEEP_CHOICES):
  all    Ray's ranking only: every kept checkpoint keeps both files (before this module existed).
  best   while the search runs, trainer_state.pt is deleted from every checkpoint of a trial but its newest;
         when a trial ends (completed, stopped by ASHA or for decline, diverged, refused), it keeps the weights
         of its best epoch only and no optimizer state. An errored trial keeps everything (--resume retries it).
  top-K  as best, and after the export of a finished search, trials outside the K best keep no weights.

Small files are never deleted: metrics.json of every kept epoch stays, so the trial folders still read as
before (trial_folders.py). Deletion goes through the storage's pyarrow filesystem (Ray's for the driver's
callback, pyarrow's from_uri for the pruning after the export), so local folders, NFS and s3:// behave alike.
"""

from __future__ import annotations

import json
import math
import posixpath
import re

from hyperiqa.checkpoint import METRICS, TRAINER_STATE, WEIGHTS

ALL, BEST = "all", "best"
KEEP_CHOICES = "all, best or top-K (K >= 1)"
# best: what a user needs (resume, the export, confirm) and no more; at ResNet-50 size it keeps a sixth of the
# bytes `all` keeps (docs/scale.md). top-K deletes trained models, so it is never the default.
DEFAULT_KEEP = BEST
CHECKPOINT_PREFIX = "checkpoint_"


def parse_keep(value: str) -> str:
    """The --keep-checkpoints value, normalised; ValueError with the accepted forms otherwise."""
    text = str(value).strip().lower()
    if text in (ALL, BEST) or top_k(text):
        return text
    raise ValueError(f"--keep-checkpoints {value!r}: expected {KEEP_CHOICES}")


def top_k(keep: str) -> int:
    """K of 'top-K', 0 for the other policies."""
    match = re.fullmatch(r"top-([0-9]+)", keep)
    return int(match.group(1)) if match and int(match.group(1)) >= 1 else 0


def _checkpoint_folders(fs, trial_path: str) -> list[str]:
    """The trial's checkpoint folders, oldest first (Ray numbers them checkpoint_000000, 000001, ...)."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
    return [posixpath.join(trial_path, n) for n in names]


def _delete(fs, folder: str, names) -> int:
    """Delete these files of `folder` where present; the bytes freed."""
    import pyarrow.fs

    freed = 0
    for name in names:
        path = posixpath.join(folder, name)
        info = fs.get_file_info(path)
        if info.type != pyarrow.fs.FileType.File:
            continue
        try:
            fs.delete_file(path)
        except FileNotFoundError:  # Ray's ranking deleted the folder meanwhile
            continue
        freed += info.size or 0
    return freed


def _metrics(fs, folder: str) -> dict | None:
    try:
        with fs.open_input_stream(posixpath.join(folder, METRICS)) as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None


def best_folder(fs, folders: list[str], metric: str) -> str | None:
    """The folder export.py would take: the highest finite metric, the later epoch on a tie."""
    scored = []
    for folder in folders:
        metrics = _metrics(fs, folder) or {}
        value = metrics.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            scored.append(((value, metrics.get("epoch", 0)), folder))
    return max(scored)[1] if scored else None


def drop_old_optimizer_state(fs, trial_path: str, newest: str | None = None) -> int:
    """A running trial: trainer_state.pt stays in its newest checkpoint folder only (`newest`, or the last by
    name). Called after the newest is complete in storage, so a trial always has one it can resume from."""
    folders = _checkpoint_folders(fs, trial_path)
    newest = (newest or (folders[-1] if folders else "")).rstrip("/")
    return sum(_delete(fs, f, [TRAINER_STATE]) for f in folders if f != newest)


def finish_trial(fs, trial_path: str, metric: str) -> int:
    """An ended trial: no optimizer state anywhere; weights in its best epoch's folder only."""
    folders = _checkpoint_folders(fs, trial_path)
    best = best_folder(fs, folders, metric)
    freed = 0
    for folder in folders:
        # No finite epoch at all: nothing for the export to take, but keep the weights to look at.
        drop = [TRAINER_STATE] if best is None or folder == best else [TRAINER_STATE, WEIGHTS]
        freed += _delete(fs, folder, drop)
    return freed


def drop_weights(fs, trial_path: str) -> int:
    """A trial outside the top K after the export: no weights, no optimizer state (metrics stay)."""
    return sum(_delete(fs, f, [TRAINER_STATE, WEIGHTS]) for f in _checkpoint_folders(fs, trial_path))


def filesystem(experiment_path: str):
    """(pyarrow filesystem, path inside it) of an experiment folder or URI."""
    import pyarrow.fs

    if "://" in experiment_path:
        return pyarrow.fs.FileSystem.from_uri(experiment_path)
    return pyarrow.fs.LocalFileSystem(), experiment_path


def prune_outside_top(experiment_path: str, paths: dict[str, str], ranked: list[str], k: int) -> int:
    """After the export: trials not among the first k of `ranked` (trial ids, best first) keep no weights.
    paths: {trial id: its folder inside the experiment's filesystem} (trial_paths)."""
    fs, _ = filesystem(experiment_path)
    keep = set(ranked[:k])
    return sum(drop_weights(fs, path) for trial_id, path in paths.items() if trial_id not in keep)


def trial_paths(experiment_path: str) -> dict[str, str]:
    """{trial id: its folder} of an experiment, from the first line of each trial's result.json."""
    import pyarrow.fs

    fs, root = filesystem(experiment_path)
    out = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, "result.json")) as fh:
                first = fh.read(1 << 20).split(b"\n", 1)[0]
            out[str(json.loads(first)["trial_id"])] = info.path
        except (OSError, ValueError, KeyError):
            continue  # not a trial folder, or one that never reported
    return out
