"""IQA datasets read exactly as distributed: name -> reader -> DatasetSpec (records of path, label, group).

Labels are turned to "higher is better" (raw labels and their direction are kept on the spec), and
every image file is checked before training starts, so a wrong folder fails in seconds, not epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hyperiqa.config import TrainConfig
from hyperiqa.data.readers.authentic import read_bid, read_koniq10k, read_livec, read_spaq
from hyperiqa.data.readers.base import DatasetError, DatasetSpec, Record, missing_files, require_dir
from hyperiqa.data.readers.generic import read_csv_dataset, read_demo
from hyperiqa.data.readers.photos import read_photos
from hyperiqa.data.readers.synthetic import read_csiq, read_kadid10k, read_live, read_tid2013
from hyperiqa.utils import default_cache_dir

__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "Record", "dataset_from_config", "load_dataset", "parse_options",
           "missing_files"]

DATASETS: dict[str, Callable[[Path, dict], DatasetSpec]] = {
    "koniq10k": read_koniq10k,
    "livec": read_livec,
    "bid": read_bid,
    "live": read_live,
    "csiq": read_csiq,
    "tid2013": read_tid2013,
    "kadid10k": read_kadid10k,
    "spaq": read_spaq,
    "csv": read_csv_dataset,
    "demo": read_demo,
    "photos": read_photos,
}

DEMO_FOLDER = "demo-v1"  # bump when the demo generator changes, so old caches are not reused
# the datasets generated on first use: no data root needed, and the folder they go to under the cache dir
GENERATED = {"demo": DEMO_FOLDER, "photos": "photos-v1"}
MISSING_LISTED = 5


def load_dataset(name: str, root: str | None, options: dict | None = None, *, cache_dir: Path | None = None,
                 check_files: bool = True) -> DatasetSpec:
    """Read dataset `name` from folder `root` (None only for a GENERATED one, made under cache_dir).

    With check_files, every image must exist: otherwise one DatasetError counts the missing files
    and lists the first few.
    """
    reader = DATASETS.get(name)
    if reader is None:
        raise DatasetError(f"unknown dataset '{name}'; allowed: {', '.join(DATASETS)}")
    if root is None:
        if name not in GENERATED:
            raise DatasetError(f"{name}: no data root given; set data_root (--data-root) to the dataset folder")
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root_path = folder.expanduser().resolve() / GENERATED[name]
    elif name in GENERATED:  # generated on first use, so the folder need not exist yet
        root_path = Path(root).expanduser().resolve()
    else:
        root_path = require_dir(name, Path(root).expanduser().resolve(), "data root")
    spec = reader(root_path, dict(options or {}))
    if check_files:
        missing = missing_files(spec.paths)
        if missing:
            first = ", ".join(missing[:MISSING_LISTED])
            raise DatasetError(f"{name}: {len(missing)} of {len(spec.records)} image files are missing "
                               f"under {spec.root}; first {min(len(missing), MISSING_LISTED)}: {first}")
    return spec


def dataset_from_config(cfg: TrainConfig) -> DatasetSpec:
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    return load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options, cache_dir=cache_dir)


def parse_options(items: list[str]) -> dict[str, str]:
    """The reader options of repeated --option KEY=VALUE flags (python -m hyperiqa.data, hyperiqa.evaluate)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"--option {item!r}: expected KEY=VALUE, e.g. --option csv=labels.csv")
        options[key.strip()] = value
    return options
