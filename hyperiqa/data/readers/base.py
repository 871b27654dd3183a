"""Records, dataset specs and the file-reading helpers every reader shares.

Every error a reader raises is a DatasetError whose message names the dataset, the path involved
and what was expected there, so a wrong folder is caught before any training starts.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperiqa.utils import UserError, read_text

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(UserError):
    """A dataset that cannot be read as asked: wrong root, missing file/column/variable, missing images."""


@dataclass(frozen=True)
class Record:
    path: str          # absolute image path
    label: float       # higher is better (flipped for lower-is-better datasets)
    group: str         # content identity: reference image, or the image itself
    raw_label: float   # the label as the dataset ships it


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str
    records: tuple[Record, ...]
    direction: str                      # direction of the RAW labels: "higher" or "lower" is better
    raw_range: tuple[float, float]      # documented scale of the raw labels
    by_reference: bool                  # groups are reference images
    official_split: tuple[str, ...] | None
    default_short_side: int | None      # cache resize rule when cfg.resize_short_side is None

    def __post_init__(self):
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower', got {self.direction!r}")
        if self.official_split is not None and len(self.official_split) != len(self.records):
            raise ValueError("official_split needs one entry per record")

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.float64)

    @property
    def raw_labels(self) -> np.ndarray:
        return np.array([r.raw_label for r in self.records], dtype=np.float64)

    @property
    def groups(self) -> list[str]:
        return [r.group for r in self.records]


def build_spec(name: str, root: Path, rows: Iterable[tuple[str, float, str]], *, direction: str,
               raw_range: tuple[float, float], by_reference: bool, default_short_side: int | None,
               official_split: Sequence[str] | None = None,
               sources: Sequence[tuple[Path, str]] | None = None) -> DatasetSpec:
    """Turn (path, raw label, group) rows into a spec; lower-is-better labels become lo + hi - raw.

    `sources`: where each row comes from, (file, "row 7"), for the error on an image listed twice.
    """
    lo, hi = raw_range
    records = tuple(
        Record(path=str(path), label=float(lo + hi - raw) if direction == "lower" else float(raw),
               group=str(group), raw_label=float(raw))
        for path, raw, group in rows)
    if not records:
        raise DatasetError(f"{name}: no images listed under {root}")
    check_unique(name, [r.path for r in records], sources or [(root, f"entry {i}") for i in range(1, len(records) + 1)])
    return DatasetSpec(name=name, root=str(root), records=records, direction=direction,
                       raw_range=(float(lo), float(hi)), by_reference=by_reference,
                       official_split=tuple(official_split) if official_split is not None else None,
                       default_short_side=default_short_side)


def check_unique(name: str, paths: Sequence[str], sources: Sequence[tuple[Path, str]]) -> None:
    """Refuse an image listed twice: the split, the cache and evaluation all key images by path."""
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = os.path.normpath(path)
        if key in first:
            (file_a, where_a), (file_b, where_b) = sources[first[key]], sources[i]
            places = f"{file_a} {where_a} and {where_b}" if file_a == file_b else \
                f"{file_a} {where_a} and {file_b} {where_b}"
            raise DatasetError(f"{name}: image {path} is listed twice, in {places}; keep one row per image")
        first[key] = i


# --- options ------------------------------------------------------------------------------------

def check_options(name: str, options: dict, allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        allowed_text = ", ".join(allowed) if allowed else "none"
        raise DatasetError(f"{name}: unknown dataset option '{unknown[0]}'; allowed options: {allowed_text}")


def parse_range(name: str, value) -> tuple[float, float]:
    """raw_range option: [lo, hi] or "lo,hi"."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise DatasetError(f"{name}: raw_range = {value!r}; expected two numbers, e.g. 0,100") from None
    if not lo < hi:
        raise DatasetError(f"{name}: raw_range = {value!r}; the first number must be below the second")
    return lo, hi


# --- files --------------------------------------------------------------------------------------

def require_dir(name: str, path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{name}: {what} {path} is not a folder" if path.exists()
                           else f"{name}: {what} {path} does not exist")
    return path


def require_file(name: str, path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{name}: {what} {path} not found")
    return path


class FolderIndex:
    """Resolves file names in one folder, falling back to a case-insensitive match.

    Datasets are copied between Windows and Linux and some (TID2013, BID) mix cases in their own
    lists; a name that matches nothing keeps its nominal path so the missing-file check reports it.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        self._exact = set(names)
        self._lower = {n.lower(): n for n in sorted(names)}

    def path(self, name: str) -> str:
        if name not in self._exact:
            name = self._lower.get(name.lower(), name)
        return str(self.folder / name)


def missing_files(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if not os.path.isfile(p)]


# --- tables -------------------------------------------------------------------------------------

class Table:
    """Rows of a CSV or XLSX file with named columns; column lookups fail with the file and the header."""

    def __init__(self, name: str, path: Path, header: list[str], rows: list[list], lines: list[int] | None = None):
        self.name, self.path, self.header, self.rows = name, path, header, rows
        # The row number of each row in the file (blank lines skipped), for error messages.
        self.lines = lines if lines is not None else list(range(2, len(rows) + 2))

    def sources(self) -> list[tuple[Path, str]]:
        return [(self.path, f"row {line}") for line in self.lines]

    def column(self, column: str) -> list:
        if column not in self.header:
            raise DatasetError(f"{self.name}: {self.path} has no column '{column}' "
                               f"(columns: {', '.join(self.header)})")
        i = self.header.index(column)
        return [row[i] if i < len(row) else None for row in self.rows]

    def numbers(self, column: str) -> list[float]:
        values = []
        for line, value in zip(self.lines, self.column(column)):
            values.append(to_float(self.name, value, f"{self.path} row {line} column '{column}'"))
        return values

    def strings(self, column: str) -> list[str]:
        values = self.column(column)
        for line, value in zip(self.lines, values):
            if value is None or str(value).strip() == "":
                raise DatasetError(f"{self.name}: {self.path} row {line}: empty '{column}'")
        return [str(v).strip() for v in values]


def to_float(name: str, value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{name}: {where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DatasetError(f"{name}: {where}: expected a finite number, got {value!r}")
    return number


def read_csv(name: str, path: Path) -> Table:
    require_file(name, path, "annotation file")
    reader = csv.reader(io.StringIO(read_text(path, f"{name}: annotation file", DatasetError), newline=""))
    rows, numbers = [], []
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append(row)
            numbers.append(reader.line_num)
    if not rows:
        raise DatasetError(f"{name}: annotation file {path} is empty")
    return Table(name, path, [h.strip() for h in rows[0]], rows[1:], numbers[1:])


def read_xlsx(name: str, path: Path) -> Table:
    """First sheet of a workbook; row 1 is the header."""
    import openpyxl

    require_file(name, path, "annotation file")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several unrelated types for a bad file
        raise DatasetError(f"{name}: cannot read {path} as an .xlsx workbook: {exc}") from None
    try:
        rows = [list(r) for r in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()
    numbers = [n for n, r in enumerate(rows, 1) if any(v is not None and str(v).strip() for v in r)]
    rows = [rows[n - 1] for n in numbers]
    if not rows:
        raise DatasetError(f"{name}: annotation file {path} is empty")
    return Table(name, path, ["" if h is None else str(h).strip() for h in rows[0]], rows[1:], numbers[1:])


def read_lines(name: str, path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """Whitespace-separated text lines with `fields` fields: (line number, fields)."""
    require_file(name, path, "annotation file")
    out = []
    for number, line in enumerate(read_text(path, f"{name}: annotation file", DatasetError).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            raise DatasetError(f"{name}: {path} line {number}: expected {fields} fields, got {line!r}")
        out.append((number, parts))
    if not out:
        raise DatasetError(f"{name}: annotation file {path} is empty")
    return out


# --- MATLAB files -------------------------------------------------------------------------------

def load_mat_var(name: str, path: Path, var: str) -> np.ndarray:
    import scipy.io

    require_file(name, path, "annotation file")
    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy's message for MATLAB v7.3 (HDF5) files
        raise DatasetError(f"{name}: {path} is a MATLAB v7.3 file; re-save it with save(..., '-v7')") from None
    except Exception as exc:
        raise DatasetError(f"{name}: cannot read {path} as a .mat file: {exc}") from None
    if var not in data:
        present = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise DatasetError(f"{name}: {path} has no variable '{var}' (variables: {present})")
    return data[var]


def mat_numbers(value: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(value, dtype=np.float64).ravel(order="F")]


def mat_strings(value: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings, or a padded char matrix, as a list of str."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":  # char matrix: loadmat gives one (padded) string per row
        return [str(s).strip() for s in arr.ravel()]
    out = []
    for item in arr.ravel(order="F"):
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item).strip())
    return out
