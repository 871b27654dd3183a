"""Readers for datasets of synthetic distortions of reference images: groups = reference images,
so a split by group never shows one content in two splits. Layouts: docs/datasets.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from hyperiqa.data.readers.base import (
    DatasetError,
    DatasetSpec,
    FolderIndex,
    build_spec,
    check_options,
    load_mat_var,
    mat_numbers,
    mat_strings,
    read_csv,
    read_lines,
    to_float,
)

# LIVE release 2 numbers its 982 DMOS entries through these folders, in this order.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def read_live(root: Path, options: dict) -> DatasetSpec:
    """LIVE release 2: DMOS (lower is better) from dmos_realigned.mat (`dmos_new`, `orgs`), reference
    names from refnames_all.mat; images img<N>.bmp in jp2k/ jpeg/ wn/ gblur/ fastfading/.
    Entries with orgs == 1 are the references themselves and are excluded (779 images remain).
    """
    name = "live"
    check_options(name, options, [])
    dmos_path, refs_path = root / "dmos_realigned.mat", root / "refnames_all.mat"
    dmos = mat_numbers(load_mat_var(name, dmos_path, "dmos_new"))
    orgs = mat_numbers(load_mat_var(name, dmos_path, "orgs"))
    refs = mat_strings(load_mat_var(name, refs_path, "refnames_all"))
    paths = [str(root / folder / f"img{i}.bmp") for folder, n in LIVE_FOLDERS for i in range(1, n + 1)]
    for what, values, path in (("dmos_new", dmos, dmos_path), ("orgs", orgs, dmos_path),
                               ("refnames_all", refs, refs_path)):
        if len(values) != len(paths):
            raise DatasetError(f"live: {path}: '{what}' has {len(values)} entries; expected {len(paths)} "
                               f"(one per image of {', '.join(f for f, _ in LIVE_FOLDERS)})")
    rows = [(p, d, r) for p, d, o, r in zip(paths, dmos, orgs, refs) if o != 1]
    return build_spec(name, root, rows, direction="lower", raw_range=(0.0, 100.0), by_reference=True,
                      default_short_side=None)


def read_csiq(root: Path, options: dict) -> DatasetSpec:
    """CSIQ: csiq_label.txt lines `<name> <dmos>` (DMOS 0-1, lower is better); images in dst_imgs_all/;
    reference = the name up to its first dot (1600.AWGN.1.png -> 1600).
    """
    name = "csiq"
    check_options(name, options, [])
    path = root / "csiq_label.txt"
    index = FolderIndex(root / "dst_imgs_all")
    lines = read_lines(name, path, 2)
    rows = [(index.path(img), to_float(name, dmos, f"{path} line {line}"), img.split(".")[0])
            for line, (img, dmos) in lines]
    return build_spec(name, root, rows, direction="lower", raw_range=(0.0, 1.0), by_reference=True,
                      default_short_side=None, sources=[(path, f"line {line}") for line, _ in lines])


_TID_REFERENCE = re.compile(r"^i(\d+)_", re.IGNORECASE)


def read_tid2013(root: Path, options: dict) -> DatasetSpec:
    """TID2013: mos_with_names.txt lines `<mos> <name>` (MOS 0-9, higher is better); images in
    distorted_images/ (names matched case-insensitively); reference id from i01_01_1.bmp -> 01.
    """
    name = "tid2013"
    check_options(name, options, [])
    path = root / "mos_with_names.txt"
    index = FolderIndex(root / "distorted_images")
    rows, sources = [], []
    for line, (mos, img) in read_lines(name, path, 2):
        match = _TID_REFERENCE.match(img)
        if match is None:
            raise DatasetError(f"tid2013: {path} line {line}: image name {img!r} is not like i01_01_1.bmp")
        rows.append((index.path(img), to_float(name, mos, f"{path} line {line}"), match.group(1)))
        sources.append((path, f"line {line}"))
    return build_spec(name, root, rows, direction="higher", raw_range=(0.0, 9.0), by_reference=True,
                      default_short_side=None, sources=sources)


def read_kadid10k(root: Path, options: dict) -> DatasetSpec:
    """KADID-10k: dmos.csv (columns dist_img, ref_img, dmos; 1-5, higher is better); images in images/."""
    name = "kadid10k"
    check_options(name, options, [])
    table = read_csv(name, root / "dmos.csv")
    images, refs, dmos = table.strings("dist_img"), table.strings("ref_img"), table.numbers("dmos")
    index = FolderIndex(root / "images")
    rows = [(index.path(img), d, ref) for img, ref, d in zip(images, refs, dmos)]
    return build_spec(name, root, rows, direction="higher", raw_range=(1.0, 5.0), by_reference=True,
                      default_short_side=None, sources=table.sources())
