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
from hyperiqa.utils import atomic_write_text


@dataclass(frozen=True, eq=False)
class Split:
    train: np.ndarray   # int64 record indices, ascending
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}


def make_split(spec: DatasetSpec, cfg: TrainConfig) -> Split:
    """The split cfg asks for: split_file (or split=file) > official > random."""
    if cfg.split_file or cfg.split == "file":
        if not cfg.split_file:
            raise DatasetError("split = 'file' needs split_file (a CSV written by an earlier run)")
        return load_split(cfg.split_file, spec)
    if cfg.split == "official":
        return official_split(spec)
    seed = cfg.split_seed if cfg.split_seed is not None else cfg.seed
    return random_split(spec, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=seed)


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
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"split_file {path}: cannot read it ({exc.strerror})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [h.strip() for h in rows[0]] != ["path", "split"]:
        raise DatasetError(f"split_file {path}: expected a CSV with the header 'path,split'")
    index = {os.path.normpath(p): i for i, p in enumerate(spec.paths)}
    assigned: dict[int, str] = {}
    unknown = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or row[1] not in SPLIT_NAMES:
            raise DatasetError(f"split_file {path} line {line}: expected '<path>,<train|val|test>', got {row}")
        i = index.get(os.path.normpath(os.path.join(spec.root, row[0])))  # join keeps absolute paths
        if i is None:
            unknown.append(row[0])
        else:
            assigned[i] = row[1]
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
