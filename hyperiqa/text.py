"""How numbers and epochs are written in the text a user reads (the console, train.log, tables, summaries).

One formatter, `fmt`, so that a value missing from a run reads the same everywhere.
"""

from __future__ import annotations

import math


def fmt(value, spec: str = ".4f", missing: str = "-", *, finite_only: bool = False) -> str:
    """`value` formatted with `spec`; `missing` for None (and, with finite_only, for NaN, inf and non-numbers)."""
    if value is None:
        return missing
    if finite_only and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return missing
    return format(value, spec)


def csv_number(value: float):
    """A metric for a CSV cell: rounded to 4 decimals; empty when it is NaN or infinite."""
    return round(value, 4) if math.isfinite(value) else ""


def epoch_line(m: dict, epochs: int) -> str:
    image = f"(image) {fmt(m['train_image_srcc'])}  " if "train_image_srcc" in m else ""
    return (f"epoch {m['epoch']}/{epochs}  loss {fmt(m['train_loss'])}  train_srcc(patch) {fmt(m['train_srcc'])}  "
            f"{image}"
            f"val srcc {fmt(m['val_srcc'])} plcc {fmt(m['val_plcc'])}  "
            f"test srcc {fmt(m['test_srcc'])} plcc {fmt(m['test_plcc'])}  "
            f"lr {fmt(m['lr_backbone'], '.2e')}/{fmt(m['lr_head'], '.2e')}  "
            f"{m['patches_per_s']:.0f} patches/s  {m['time_s']:.1f}s  [{m['status']}]")
