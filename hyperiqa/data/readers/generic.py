"""The `csv` reader (any folder plus a label table) and the built-in `demo` dataset, which uses it."""

from __future__ import annotations

from pathlib import Path

from hyperiqa.data.readers.base import (
    DatasetError,
    DatasetSpec,
    FolderIndex,
    build_spec,
    check_options,
    parse_range,
    read_csv,
    require_dir,
)

CSV_OPTIONS = ("csv", "image_column", "label_column", "group_column", "direction", "image_folder", "raw_range")


def read_csv_dataset(root: Path, options: dict, *, name: str = "csv", by_reference: bool | None = None,
                     ) -> DatasetSpec:
    """Any folder plus a CSV of labels.

    Options: csv (the table; relative to the root or absolute), image_column (default `image`),
    label_column (default `label`), group_column (optional; groups default to the image name),
    direction (`higher` or `lower` is better, default higher), image_folder (where image names are
    resolved, relative to the root; default the root), raw_range (`lo,hi`; default the labels' min
    and max; used to flip lower-is-better labels as lo + hi - raw).
    """
    check_options(name, options, CSV_OPTIONS)
    if "csv" not in options:
        raise DatasetError(f"{name}: the option 'csv' is required (the label table, e.g. "
                           "--option csv=labels.csv)")
    direction = str(options.get("direction", "higher"))
    if direction not in ("higher", "lower"):
        raise DatasetError(f"{name}: direction = {direction!r}; allowed: higher, lower")
    table = read_csv(name, root / str(options["csv"]))  # an absolute csv path replaces the root
    images = table.strings(str(options.get("image_column", "image")))
    raw = table.numbers(str(options.get("label_column", "label")))
    group_column = options.get("group_column")
    groups = table.strings(str(group_column)) if group_column else images
    folder = root / str(options.get("image_folder", "."))
    if "image_folder" in options:
        require_dir(name, folder, "image_folder")
    index = FolderIndex(folder)
    paths = [img if Path(img).is_absolute() else index.path(img) if "/" not in img
             else str(folder / img) for img in images]
    if "raw_range" in options:
        raw_range = parse_range(name, options["raw_range"])
    else:
        raw_range = (min(raw), max(raw)) if raw else (0.0, 1.0)
    if by_reference is None:
        by_reference = bool(group_column)
    return build_spec(name, root, zip(paths, raw, groups), direction=direction, raw_range=raw_range,
                      by_reference=by_reference, default_short_side=None, sources=table.sources())


def read_demo(root: Path, options: dict) -> DatasetSpec:
    """The built-in synthetic dataset: generated into `root` on first use (no download), then read
    from root/labels.csv (columns image, label, group; higher is better; groups = reference images).
    """
    check_options("demo", options, [])
    from hyperiqa.data.demo import ensure_demo_dataset  # lazy: generation code is only needed here

    root = Path(ensure_demo_dataset(root))
    return read_csv_dataset(root, {"csv": "labels.csv", "group_column": "group"}, name="demo",
                            by_reference=True)
