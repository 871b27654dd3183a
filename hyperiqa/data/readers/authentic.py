"""Readers for datasets of authentically distorted photos: one image per content, groups = images.

Layouts (docs/datasets.md) are exactly as the datasets are distributed.
"""

from __future__ import annotations

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
    read_xlsx,
    require_dir,
    to_float,
)

KONIQ_SCORES = "koniq10k_scores_and_distributions.csv"
KONIQ_SETS = "koniq10k_distributions_sets.csv"
KONIQ_FOLDERS = ("1024x768", "512x384")
KONIQ_SET_NAMES = {"training": "train", "validation": "val", "test": "test"}


def read_koniq10k(root: Path, options: dict) -> DatasetSpec:
    """KonIQ-10k: MOS_zscore (0-100, higher is better); images in 1024x768/ or 512x384/.

    Option `image_folder` picks the folder; otherwise 1024x768/ if present, else 512x384/.
    The official split comes from the `set` column of koniq10k_distributions_sets.csv when present.
    Default cache rule: short side 384 (1024x768 -> 512x384, the resolution the paper trains at).
    """
    name = "koniq10k"
    check_options(name, options, ["image_folder"])
    table = read_csv(name, root / KONIQ_SCORES)
    images, mos = table.strings("image_name"), table.numbers("MOS_zscore")
    folder = _koniq_folder(root, options.get("image_folder"))
    index = FolderIndex(folder)
    rows = [(index.path(img), m, img) for img, m in zip(images, mos)]
    return build_spec(name, root, rows, direction="higher", raw_range=(0.0, 100.0), by_reference=False,
                      default_short_side=384, official_split=_koniq_sets(root, images), sources=table.sources())


def _koniq_folder(root: Path, option: str | None) -> Path:
    if option is not None:
        return require_dir("koniq10k", root / str(option), "image_folder")
    for sub in KONIQ_FOLDERS:
        if (root / sub).is_dir():
            return root / sub
    raise DatasetError(f"koniq10k: no image folder under {root}; expected {KONIQ_FOLDERS[0]}/ or "
                       f"{KONIQ_FOLDERS[1]}/ (or set the option image_folder)")


def _koniq_sets(root: Path, images: list[str]) -> tuple[str, ...] | None:
    path = root / KONIQ_SETS
    if not path.is_file():
        return None
    table = read_csv("koniq10k", path)
    if "set" not in table.header:
        return None
    by_image = dict(zip(table.strings("image_name"), table.strings("set")))
    unknown = sorted({s for s in by_image.values() if s not in KONIQ_SET_NAMES})
    if unknown:
        raise DatasetError(f"koniq10k: {path}: unknown set '{unknown[0]}'; expected "
                           f"{', '.join(KONIQ_SET_NAMES)}")
    absent = [img for img in images if img not in by_image]
    if absent:
        raise DatasetError(f"koniq10k: {path} has no set for {len(absent)} images of {KONIQ_SCORES}, "
                           f"e.g. {', '.join(absent[:5])}")
    return tuple(KONIQ_SET_NAMES[by_image[img]] for img in images)


def read_livec(root: Path, options: dict) -> DatasetSpec:
    """LIVE Challenge: MOS 0-100 from Data/AllMOS_release.mat, names from Data/AllImages_release.mat.

    The first 7 entries are the study's training images and are skipped (1162 remain). The images
    are 500x500 as distributed (the original HyperIQA code trains at that size), so no default resize.
    """
    name = "livec"
    check_options(name, options, [])
    names = mat_strings(load_mat_var(name, root / "Data" / "AllImages_release.mat", "AllImages_release"))
    mos = mat_numbers(load_mat_var(name, root / "Data" / "AllMOS_release.mat", "AllMOS_release"))
    if len(names) != len(mos):
        raise DatasetError(f"livec: {root / 'Data'}: AllImages_release has {len(names)} entries but "
                           f"AllMOS_release has {len(mos)}")
    index = FolderIndex(root / "Images")
    rows = [(index.path(n), m, n) for n, m in list(zip(names, mos))[7:]]
    names_file = root / "Data" / "AllImages_release.mat"
    return build_spec(name, root, rows, direction="higher", raw_range=(0.0, 100.0), by_reference=False,
                      default_short_side=None, sources=[(names_file, f"entry {i}") for i in range(8, len(names) + 1)])


def read_bid(root: Path, options: dict) -> DatasetSpec:
    """BID: DatabaseGrades.xlsx (column 1 image number, column 2 MOS 0-5, from row 2);
    images DatabaseImage%04d.JPG in the root. Default cache rule: short side 512 (photos up to 2816 px).
    """
    name = "bid"
    check_options(name, options, [])
    table = read_xlsx(name, root / "DatabaseGrades.xlsx")
    index = FolderIndex(root)
    rows, sources = [], []
    for line, row in zip(table.lines, table.rows):
        if len(row) < 2 or row[0] is None:
            continue
        where = f"{table.path} row {line}"
        number = to_float(name, row[0], f"{where} column 1 (image number)")
        mos = to_float(name, row[1], f"{where} column 2 (MOS)")
        image = f"DatabaseImage{int(number):04d}.JPG"
        rows.append((index.path(image), mos, image))
        sources.append((table.path, f"row {line}"))
    return build_spec(name, root, rows, direction="higher", raw_range=(0.0, 5.0), by_reference=False,
                      default_short_side=512, sources=sources)


def read_spaq(root: Path, options: dict) -> DatasetSpec:
    """SPAQ: MOS 0-100 in 'Annotations/MOS and Image attribute scores.xlsx' (columns `Image name`, `MOS`);
    images in TestImage/. Default cache rule: short side 512 (the phone photos are around 4000x3000).
    """
    name = "spaq"
    check_options(name, options, [])
    table = read_xlsx(name, root / "Annotations" / "MOS and Image attribute scores.xlsx")
    images, mos = table.strings("Image name"), table.numbers("MOS")
    index = FolderIndex(root / "TestImage")
    rows = [(index.path(img), m, img) for img, m in zip(images, mos)]
    return build_spec(name, root, rows, direction="higher", raw_range=(0.0, 100.0), by_reference=False,
                      default_short_side=512, sources=table.sources())
