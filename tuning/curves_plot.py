"""Per-epoch curves in side-by-side panels, saved as a PNG: the one figure code of the search's trials
report, the confirmation and the ablation.

The callers say what to draw (panels, and series with their look); plot() does all the matplotlib work.
No Ray imports and no project imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

BAND_ALPHA = 0.12  # a band's shade: light enough that a few bands overlapping still show their lines
LEGEND_BELOW = "below"  # legend placement: one legend for the figure, under its panels


@dataclass
class Panel:
    title: str
    ylabel: str = ""
    empty_text: str = ""  # written across the panel when no series has a curve in it


@dataclass
class Curve:
    """One series' values in one panel; NaN leaves a gap. low/high: a band around the line, or none."""

    epochs: list[int]
    values: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


@dataclass
class Series:
    """One line in one or more panels, drawn the same in each."""

    label: str | None  # None: not in the legend
    curves: dict[int, Curve]  # panel index -> its curve there
    color: str | None = None  # None: the next colour of matplotlib's cycle
    width: float = 1.5
    style: str = "-"
    marker: str | None = None  # at every point, small
    alpha: float = 1.0
    end_marker: str | None = None  # at the last point, large: how the series ended


def plot(panels: list[Panel], series: list[Series], path: str | Path, *, title: str | None = None,
         legend: str = "lower right", dpi: int = 110) -> None:
    """Draw the series into the panels (sharing both axes) and save the figure at `path`.

    legend: a matplotlib location inside the last panel, or LEGEND_BELOW; one entry per labelled series.
    title: over all the panels (a single panel's own title is its Panel.title).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(max(8.0, 5.3 * len(panels)), 5), sharex=True, sharey=True,
                             squeeze=False)
    axes = axes[0]
    palette = cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    handles, labels = [], []
    for s in series:
        color, drawn = s.color or next(palette), []
        for index, curve in sorted(s.curves.items()):
            ax = axes[index]
            drawn += ax.plot(curve.epochs, curve.values, color=color, lw=s.width, ls=s.style, marker=s.marker,
                             ms=3, alpha=s.alpha)
            if curve.low is not None and curve.high is not None:
                ax.fill_between(curve.epochs, curve.low, curve.high, color=color, alpha=BAND_ALPHA, lw=0)
            if s.end_marker:
                ax.plot(curve.epochs[-1:], curve.values[-1:], s.end_marker, color=color, ms=8)
        if s.label is not None and drawn:
            handles.append(drawn[0])
            labels.append(s.label)
    for ax, panel in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
        if panel.empty_text and not ax.get_lines():
            ax.text(0.5, 0.5, panel.empty_text, ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=11)
    bottom = 0.0
    if labels and legend == LEGEND_BELOW:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
        bottom = 0.12
    elif labels:
        axes[-1].legend(handles, labels, loc=legend, fontsize=7)
    fig.tight_layout(rect=(0, bottom, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
