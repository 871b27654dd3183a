"""tuning/curves_plot.py: the one figure code of the trials report, the confirmation and the ablation."""

from __future__ import annotations

import math

from tuning import curves_plot as C

PNG = b"\x89PNG\r\n\x1a\n"


def test_panels_with_bands_gaps_and_an_empty_panel_make_one_png(tmp_path):
    banded = C.Curve([1, 2, 3], [0.5, 0.6, 0.7], low=[0.4, 0.55, 0.6], high=[0.6, 0.65, 0.8])
    gap = C.Curve([1, 2, 3, 4], [0.3, 0.4, math.nan, 0.5])  # an epoch without a value: a gap in the line
    series = [C.Series("a", {0: banded, 1: gap}, marker="o"),
              C.Series(None, {1: C.Curve([1, 2], [0.2, 0.3])}, color="black", style="--", end_marker="x")]
    panels = [C.Panel("val", ylabel="SRCC"), C.Panel("test"), C.Panel("train", empty_text="no train values")]
    for name, legend in (("inside", "lower right"), ("below", C.LEGEND_BELOW)):
        path = tmp_path / f"{name}.png"
        C.plot(panels, series, path, title="t", legend=legend, dpi=50)
        assert path.read_bytes()[:8] == PNG


def test_no_series_at_all_still_makes_a_figure_that_says_so(tmp_path):
    C.plot([C.Panel("val", empty_text="no trial reported a finite val")], [], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG
