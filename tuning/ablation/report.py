"""The ablation folder: table.csv/.md, runs.csv, curves.png and summary.md, from tuning/ablation/stats.py.

No Ray imports. The sentences of summary.md are generated from the numbers (and say so), so a
re-summarised experiment and a fresh one read the same.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from itertools import cycle
from pathlib import Path

import numpy as np

from hyperiqa.text import csv_number
from hyperiqa.utils import atomic_write_text
from tuning import curves_plot
from tuning.ablation import stats as S
from tuning.ablation.stats import pm
from tuning.ablation.summary import answer, summary_markdown
from tuning.engine.result_folder import staging

RAW_KEYS = ("val_srcc", "val_plcc", "test_srcc", "test_plcc", "train_loss", "train_srcc", "train_image_srcc",
            "train_image_plcc", "lr_backbone", "lr_head", "status")


def table_rows(stats: list[S.VariantStats]) -> list[dict]:
    """table.csv: one row per variant; means and SDs over seeds, paired differences from the fixed solver."""
    fixed = next((s for s in stats if s.variant == S.FIXED), None)
    rows = []
    for s in stats:
        row = {"variant": s.variant, "legacy": " ".join(s.legacy) or "-", "changes": changes_text(s.changes),
               "seeds": len(s.runs),
               "incomplete_runs": s.incomplete,
               "peak_epochs": " ".join(str(e) for e in s.values("peak_epoch"))}
        for name in ("peak", "final", "drop", "test_at_val_best"):
            row[f"{name}_mean"], row[f"{name}_sd"] = (csv_number(v) for v in s.agg(name))
        row["val_best_epochs"] = " ".join(str(e) for e in s.values("val_best_epoch"))
        for name in ("final", "test_at_val_best"):
            diffs = S.paired(s, fixed, name) if s is not fixed else []
            row[f"{name}_vs_fixed_mean"], row[f"{name}_vs_fixed_sd"] = (csv_number(v) for v in S.mean_sd(diffs))
        row["verdict"], row["note"] = s.verdict, s.no_effect or ""
        rows.append(row)
    return rows


def markdown_table(stats: list[S.VariantStats]) -> str:
    """The table for people: test SRCC, mean ± SD over seeds; per-seed epochs; differences paired by seed."""
    head = ("| variant | peak epoch (per seed) | peak | final | drop (peak - final) | val-best epoch | "
            "test at val-best | vs fixed (test at val-best) | verdict |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    fixed = next((s for s in stats if s.variant == S.FIXED), None)
    for s in stats:
        vs = "-" if s is fixed else pm(*S.mean_sd(S.paired(s, fixed, "test_at_val_best")), signed=True)
        cells = [f"`{s.variant}`", _epochs(s.values("peak_epoch")), pm(*s.agg("peak")), pm(*s.agg("final")),
                 pm(*s.agg("drop")), _epochs(s.values("val_best_epoch")), pm(*s.agg("test_at_val_best")), vs,
                 s.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(stats: list[S.VariantStats]) -> str:
    """The terminal's version of the table (fixed-width)."""
    fixed = next((s for s in stats if s.variant == S.FIXED), None)
    rows = [("variant", "peak ep", "peak", "final", "drop", "test@val-best", "vs fixed", "verdict")]
    for s in stats:
        vs = "-" if s is fixed else pm(*S.mean_sd(S.paired(s, fixed, "test_at_val_best")), signed=True)
        rows.append((s.variant, _epochs(s.values("peak_epoch")), pm(*s.agg("peak")), pm(*s.agg("final")),
                     pm(*s.agg("drop")), pm(*s.agg("test_at_val_best")), vs, s.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def raw_rows(runs: list[dict], curves: dict[str, list[dict]]) -> list[dict]:
    """runs.csv: every run's every epoch, with its variant and seed."""
    out = []
    for run in runs:
        for epoch in curves.get(run["id"], []):
            row = {"run": run["id"], "variant": run["labels"]["variant"], "seed": run["labels"]["seed"],
                   "legacy": " ".join(run["config"]["legacy"]) or "-",
                   "changes": changes_text(run["labels"].get("changes") or {}), "epoch": int(epoch["epoch"])}
            row.update({k: _raw(epoch.get(k)) for k in RAW_KEYS})
            out.append(row)
    return out


def changes_text(changes: dict) -> str:
    """A control's config changes as 'head=plain loss=plcc'; '-' for none."""
    return " ".join(f"{k}={v}" for k, v in changes.items()) or "-"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def write_folder(out_dir: str | Path, runs: list[dict], curves: dict[str, list[dict]], *, title: str,
                 source: str, config_line: str, experiment: str | None = None) -> tuple[list[S.VariantStats], str]:
    """Write the folder (built beside it and swapped in, replacing only a folder written this way, never the
    experiment's); return the statistics and the answer's sentences."""
    stats = S.summarize(runs, curves)
    sentences = answer(stats, runs[0]["config"])
    with staging(Path(out_dir), experiment) as tmp:  # a reader never sees half a folder
        atomic_write_text(tmp / "table.csv", csv_text(table_rows(stats)))
        atomic_write_text(tmp / "table.md", markdown_table(stats) + "\n")
        atomic_write_text(tmp / "runs.csv", csv_text(raw_rows(runs, curves)))
        plot(S.curves_of(runs, curves), stats, tmp / "curves.png", title=title)
        atomic_write_text(tmp / "summary.md", summary_markdown(stats, sentences, title=title, source=source,
                                                               config_line=config_line,
                                                               table=markdown_table(stats)))
    return stats, "\n".join(sentences)


# tab10 without its red and grey: those would read as `all` and `fixed`
OTHER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot(curves: list[S.RunCurve], stats: list[S.VariantStats], path: Path, *, title: str) -> None:
    """Val, test and train SRCC per epoch: each variant's mean over seeds, the band spanning its seeds.

    The train panel draws patch-level SRCC (during the epoch) solid and, where the runs reported it,
    image-level SRCC on fixed training images (after the epoch) dashed; the panels share one y scale,
    so the image-level train curve reads against val and test directly."""
    panels = [curves_plot.Panel("val SRCC (image level)"), curves_plot.Panel("test SRCC (image level)"),
              curves_plot.Panel("train SRCC: patch level during the epoch (solid),\nimage level after it (dashed)")]
    emphasis = {S.FIXED: ("black", 2.6), S.ALL: ("tab:red", 2.6)}
    others = cycle(OTHER_COLORS)
    series = []
    for s in stats:
        mine = [c for c in curves if c.variant == s.variant and c.epochs]
        if not mine:
            continue
        color, width = emphasis.get(s.variant) or (next(others), 1.3)
        epochs = sorted({e for c in mine for e in c.epochs})
        solid = {panel: _spread(mine, attr, epochs) for panel, attr in enumerate(("val", "test", "train"))}
        series.append(curves_plot.Series(s.variant + (" (no effect)" if s.no_effect else ""),
                                         {panel: c for panel, c in solid.items() if c is not None}, color=color,
                                         width=width, style=":" if s.no_effect else "-", marker="o"))
        image = _spread(mine, "train_image", epochs)  # shares the train panel, dashed
        if image is not None:
            series.append(curves_plot.Series(None, {2: image}, color=color, width=width, style="--"))
    seeds = max((len(s.runs) for s in stats), default=0)
    curves_plot.plot(panels, series, path, title=f"{title}: mean over {seeds} seed(s); band = lowest to highest seed",
                     legend=curves_plot.LEGEND_BELOW, dpi=100)


def _spread(mine: list[S.RunCurve], attr: str, epochs: list[int]) -> curves_plot.Curve | None:
    """The seeds' mean per epoch, with the band from the lowest to the highest seed when there are several;
    None when no seed reported a finite value."""
    grid = np.array([[_at(c, attr, e) for e in epochs] for c in mine])
    if not np.isfinite(grid).any():
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():  # an epoch no seed has: a gap in the line
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, low, high = np.nanmean(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
    if len(mine) == 1:
        return curves_plot.Curve(epochs, list(mean))
    return curves_plot.Curve(epochs, list(mean), list(low), list(high))


def _at(curve: S.RunCurve, attr: str, epoch: int) -> float:
    values = getattr(curve, attr)
    if epoch not in curve.epochs or len(values) != len(curve.epochs):  # train_image: [] when not reported
        return math.nan
    return values[curve.epochs.index(epoch)]


def _epochs(values: list) -> str:
    return ", ".join("-" if v is None else str(v) for v in values) or "-"


def _raw(value):
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return "" if value is None else value
