"""--cross NAME=ROOT: score the exported checkpoint on datasets the search never saw.

IQA papers judge a model by how it ranks images of other datasets (trained on KonIQ, tested on
LIVE Challenge, ...). Each NAME=ROOT is a dataset reader of hyperiqa.data.datasets and its folder;
`csv=FILE.csv` reads a label table with columns `image` and `label`, images beside it. Every image
is scored with the checkpoint's own preprocessing (hyperiqa.evaluation.evaluate_checkpoint): srcc,
plcc, plcc_logistic, krcc, and rmse only when the labels are on the checkpoint's scale.
The datasets are read before Ray starts, so a wrong name or folder fails at once.
"""

from __future__ import annotations

from pathlib import Path

from hyperiqa.text import fmt
from hyperiqa.utils import UserError

METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")


def parse(values: list[str]) -> list[list[str]]:
    """['NAME=ROOT', ...] -> [[NAME, absolute ROOT], ...], each named and present."""
    from hyperiqa.data.datasets import DATASETS

    out = []
    for value in values:
        name, sep, root = value.partition("=")
        name = name.strip()
        if not sep or not name or not root:
            raise UserError(f"--cross {value!r}: expected NAME=ROOT, e.g. --cross kadid10k=/data/kadid10k")
        if name not in DATASETS:
            raise UserError(f"--cross {value}: unknown dataset '{name}'; allowed: {', '.join(DATASETS)}")
        path = Path(root).expanduser().resolve()
        if not path.exists():
            raise UserError(f"--cross {value}: {path} does not exist")
        out.append([name, str(path)])
    return out


def reader_args(name: str, root: str) -> tuple[str, dict]:
    """(data root, reader options): `csv=FILE` names the table itself; the images are beside it."""
    if name == "csv" and Path(root).is_file():
        return str(Path(root).parent), {"csv": Path(root).name}
    return root, {}


def check(cross: list[list[str]], cache_dir: str | None) -> None:
    """Read every dataset (every image must exist) before Ray starts."""
    from hyperiqa.data.datasets import load_dataset

    for name, root in cross:
        data_root, options = reader_args(name, root)
        try:
            load_dataset(name, data_root, options, cache_dir=Path(cache_dir) if cache_dir else None)
        except UserError as exc:
            raise UserError(f"--cross {name}={root}: {exc}") from None


def evaluate(checkpoint: Path, cross: list[list[str]], log=print) -> list[dict]:
    """One entry per dataset: its metrics, or `error` if it could not be scored (the rest of the export stands)."""
    from hyperiqa.evaluation import score_checkpoint

    out = []
    for name, root in cross:
        data_root, options = reader_args(name, root)
        log(f"cross-dataset: scoring the exported checkpoint on {name} ({root})")
        try:
            scores = score_checkpoint(checkpoint, name, data_root, options=options, log=log)
        except UserError as exc:  # the folder moved since the search started, or a corrupt image
            log(f"cross-dataset: {name}: {exc}")
            out.append({"dataset": name, "data_root": root, "error": str(exc)})
            continue
        out.append({**scores.metrics(), "data_root": root, "notes": scores.notes})
    return out


def markdown(entries: list[dict]) -> list[str]:
    """summary.md lines: one row per dataset, '-' for undefined, 'n/a' for rmse on another label scale."""
    if not entries:
        return []
    lines = ["## Cross-dataset (every image, the checkpoint's preprocessing)", "",
             "| dataset | images | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    notes = []
    for e in entries:
        if "error" in e:
            lines.append(f"| {e['dataset']} | - | " + " | ".join("-" for _ in METRICS) + " |")
            notes.append(f"- {e['dataset']} ({e['data_root']}): not scored: {e['error']}")
            continue
        cells = [_cell(e, k) for k in METRICS]
        lines.append(f"| {e['dataset']} | {e['n_images']} | " + " | ".join(cells) + " |")
        notes += [f"- {e['dataset']} ({e['data_root']}): {n}" for n in e.get("notes", [])]
    return lines + [""] + notes + [""]


def text(entries: list[dict]) -> str:
    """The same for the terminal."""
    rows = []
    for e in entries:
        if "error" in e:
            rows.append(f"  {e['dataset']}: not scored ({e['error']})")
        else:
            values = "  ".join(f"{k} {_cell(e, k)}" for k in METRICS)
            rows.append(f"  {e['dataset']} ({e['n_images']} images): {values}")
    return "cross-dataset (exported checkpoint):\n" + "\n".join(rows) if rows else ""


def _cell(entry: dict, key: str) -> str:
    if key not in entry:
        return "n/a"  # rmse between two label scales: left out by evaluate_checkpoint
    return fmt(entry[key])
