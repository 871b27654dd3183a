"""The built-in `photos` dataset: real photos shipped by installed packages, distorted, metric-labelled."""

from __future__ import annotations

from pathlib import Path

from hyperiqa.data.readers.base import DatasetSpec, check_options
from hyperiqa.data.readers.generic import read_csv_dataset


def read_photos(root: Path, options: dict) -> DatasetSpec:
    """Generated into `root` on first use (no download; needs the `photos` extra), then read from
    root/labels.csv: labels 100 x HaarPSI, higher is better, groups = source photos.
    """
    check_options("photos", options, [])
    from hyperiqa.data.photos import ensure_photos_dataset  # lazy: generation code is only needed here

    root = Path(ensure_photos_dataset(root))
    return read_csv_dataset(root, {"csv": "labels.csv", "group_column": "group", "raw_range": "0,100"},
                            name="photos", by_reference=True)
