"""Train/val/test splits: seeded and by group (no content in two splits), official, or from a file.

Defaults (TrainConfig): val_fraction 0.1 and test_fraction 0.2 of the GROUPS, seeded by split_seed
(or seed). Groups are reference images for LIVE/CSIQ/TID2013/KADID/demo and the images themselves
otherwise, so a random split never shows one content in two splits.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperiqa.config import TrainConfig
from hyperiqa.data.readers.base import SPLIT_NAMES, DatasetError, DatasetSpec
from hyperiqa.utils import atomic_write_text, read_text


@dataclass(frozen=True, eq=False)
class Split:
    train: np.ndarray   # int64 record indices, ascending
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}


MIN_EVAL_IMAGES = 3  # the fewest images an SRCC/PLCC means anything on (1: undefined, 2: always +-1)


def make_split(spec: DatasetSpec, cfg: TrainConfig) -> Split:
    """The split cfg asks for, refused when it cannot train or give a correlation (check_split)."""
    split = choose_split(spec, cfg)
    check_split(spec, split, cfg)
    return split


def choose_split(spec: DatasetSpec, cfg: TrainConfig) -> Split:
    """split_file (or split=file) > official > random, whatever the sizes."""
    if cfg.split_file or cfg.split == "file":
        if not cfg.split_file:
            raise DatasetError("split = 'file' needs split_file (a CSV written by an earlier run)")
        return load_split(cfg.split_file, spec)
    if cfg.split == "official":
        return official_split(spec)
    seed = cfg.split_seed if cfg.split_seed is not None else cfg.seed
    return random_split(spec, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=seed)


def check_split(spec: DatasetSpec, split: Split, cfg: TrainConfig) -> None:
    """Refuse, before any training, a split with no training image or a val/test split of 1-2 images.

    Such a run used to train to nothing: every epoch's val/test SRCC undefined (1 image) or +-1
    (2 images), no best epoch, exit code 0. An empty val/test split is allowed (fraction 0); the
    selection metric's split must then exist, which the Solver and tuning's check_dataset check.
    """
    sizes = split.sizes()
    if sizes["train"] == 0:
        raise DatasetError(f"{spec.name}: the {_source(cfg)} leaves no training images; {_fix(cfg, 'train')}")
    for name in ("val", "test"):
        if 0 < sizes[name] < MIN_EVAL_IMAGES:
            raise DatasetError(f"{spec.name}: the {name} split of the {_source(cfg)} has {sizes[name]} "
                               f"image{'s' if sizes[name] > 1 else ''} ({len(spec.records)} in the dataset); "
                               f"a correlation needs at least {MIN_EVAL_IMAGES}: {_fix(cfg, name)}")


def _source(cfg: TrainConfig) -> str:
    if cfg.split_file or cfg.split == "file":
        return f"split_file {cfg.split_file}"
    return "official split" if cfg.split == "official" else "random split"


def _fix(cfg: TrainConfig, name: str) -> str:
    if cfg.split_file or cfg.split == "file":
        return f"give it more rows in {cfg.split_file}"
    if cfg.split == "official" or name == "train":
        return "use split=random with smaller val/test fractions, or a larger dataset"
    drop = "" if cfg.selection_metric.startswith(f"{name}_") else f", set it to 0 to drop the {name} split"
    return f"raise {name}_fraction (now {getattr(cfg, f'{name}_fraction'):g}){drop}, or use a larger dataset"


def random_split(spec: DatasetSpec, *, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Shuffle the sorted unique groups with PCG64(seed); the first go to test, the next to val.

    The order comes from argsort of PCG64 doubles, which do not depend on the platform, the record
    order on disk, or numpy's shuffling algorithm: the same seed gives the same split anywhere.
    """
    groups = np.array(spec.groups)
    names, inverse = np.unique(groups, return_inverse=True)  # sorted: independent of record order
    n = len(names)
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n_test + n_val >= n:
        raise DatasetError(
            f"{spec.name}: {n} groups ({len(groups)} images) are too few for val_fraction={val_fraction:g} "
            f"and test_fraction={test_fraction:g}: each split needs at least one group and train needs "
            "the rest; lower the fractions (0 disables a split) or use a larger dataset")
    order = np.argsort(np.random.Generator(np.random.PCG64(seed)).random(n), kind="stable")
    assignment = np.zeros(n, dtype=np.int64)  # 0 train, 1 val, 2 test (per group)
    assignment[order[:n_test]] = 2
    assignment[order[n_test:n_test + n_val]] = 1
    per_record = assignment[inverse.ravel()]
    return Split(*(np.flatnonzero(per_record == k).astype(np.int64) for k in range(3)))


def _count(fraction: float, n: int) -> int:
    """Groups for a fraction: round half up, at least one unless the fraction is 0."""
    if fraction <= 0:
        return 0
    return max(1, int(np.floor(fraction * n + 0.5)))


def official_split(spec: DatasetSpec) -> Split:
    if spec.official_split is None:
        raise DatasetError(f"split = 'official', but dataset '{spec.name}' ships no official split; "
                           "use split=random or a split_file")
    labels = np.array(spec.official_split)
    return Split(*(np.flatnonzero(labels == name).astype(np.int64) for name in SPLIT_NAMES))


def save_split(path: str | Path, spec: DatasetSpec, split: Split) -> None:
    """CSV with columns path,split; paths relative to the dataset root, so the file works on any
    machine that has the dataset (absolute for images outside the root)."""
    names = _per_record(spec, split)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "split"])
    for record, name in zip(spec.records, names):
        if name:
            writer.writerow([_relative(record.path, spec.root), name])
    atomic_write_text(path, out.getvalue())


def load_split(path: str | Path, spec: DatasetSpec) -> Split:
    """Read a save_split CSV; every row must name a dataset image and every image must have a row."""
    path = Path(path)
    try:
        text = read_text(path, "split_file", DatasetError)
    except OSError as exc:
        raise DatasetError(f"split_file {path}: cannot read it ({exc.strerror})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [h.strip() for h in rows[0]] != ["path", "split"]:
        raise DatasetError(f"split_file {path}: expected a CSV with the header 'path,split'")
    index = {os.path.normpath(p): i for i, p in enumerate(spec.paths)}
    assigned: dict[int, str] = {}
    line_of: dict[int, int] = {}
    unknown = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or row[1] not in SPLIT_NAMES:
            raise DatasetError(f"split_file {path} line {line}: expected '<path>,<train|val|test>', got {row}")
        i = index.get(os.path.normpath(os.path.join(spec.root, row[0])))  # join keeps absolute paths
        if i is None:
            unknown.append(row[0])
        elif i in assigned:
            raise DatasetError(f"split_file {path}: image {row[0]} is listed twice, lines {line_of[i]} and {line}; "
                               "keep one row per image")
        else:
            assigned[i], line_of[i] = row[1], line
    if unknown:
        raise DatasetError(f"split_file {path}: {len(unknown)} paths are not images of dataset '{spec.name}' "
                           f"(root {spec.root}), e.g. {', '.join(unknown[:5])}")
    absent = [spec.paths[i] for i in range(len(spec.records)) if i not in assigned]
    if absent:
        raise DatasetError(f"split_file {path}: {len(absent)} images of dataset '{spec.name}' have no row, "
                           f"e.g. {', '.join(absent[:5])}")
    names = np.array([assigned[i] for i in range(len(spec.records))])
    return Split(*(np.flatnonzero(names == name).astype(np.int64) for name in SPLIT_NAMES))


def _per_record(spec: DatasetSpec, split: Split) -> list[str]:
    names = [""] * len(spec.records)
    for name in SPLIT_NAMES:
        for i in getattr(split, name):
            names[int(i)] = name
    return names


def _relative(path: str, root: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
