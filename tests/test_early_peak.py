"""The original's symptom on a search's trials (best early, then falling): the flag in trials.csv, the
lines and the warning in summary.md, the warning at the end of the search. No Ray."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from tuning.ablation.stats import MIN_DROP
from tuning.sweep import experiment as search
from tuning.sweep import trials_report as report
from tuning.sweep.export_folder import _summary, _write_trials_csv

DECLINE = [0.80, 0.74, 0.70, 0.66, 0.63, 0.60, 0.58, 0.55]  # the original's shape: best at epoch 1, then down
RISING = [0.50, 0.60, 0.65, 0.70, 0.72, 0.74, 0.75, 0.76]
# Best at epoch 2 of 8 (inside the first quarter), 0.009 above the last: noise around a plateau, not a fall.
FLAT_NOISY = [0.700, 0.705, 0.698, 0.702, 0.699, 0.695, 0.700, 0.696]


def _curve(values):
    return list(enumerate(values, start=1))


def _row(trial_id, values, ray_status="TERMINATED", max_epochs=8):
    epochs = [{"epoch": i + 1, "val_srcc": v, "status": "running"} for i, v in enumerate(values)]
    epochs[-1]["status"] = "completed" if len(values) == max_epochs else "running"
    return report.make_row(trial_id, {}, ray_status, epochs, "val_srcc", max_epochs)


@pytest.mark.parametrize("values, expected", [
    (DECLINE, True),
    (DECLINE[:4], True),  # 4 epochs: best at epoch 1 is the first quarter
    (RISING, False),
    (FLAT_NOISY, False),
    (FLAT_NOISY[:-1] + [0.705 - 2 * MIN_DROP], True),  # the same curve with a real fall at the end
    ([0.80, 0.50], False),  # an ASHA-stopped trial of 2 epochs cannot show it
    ([0.80, 0.60, 0.55], False),
    ([0.60, 0.80, 0.70, 0.60], False),  # best at epoch 2 of 4: past the first quarter
    ([0.80, 0.70, 0.65, math.nan], False),  # diverged: its own ending
])
def test_early_peak_rule(values, expected):
    assert report.early_peak(_curve(values)) is expected


def test_the_first_quarter_is_of_the_epochs_the_trial_ran():
    # Best at epoch 2 of 8: flagged. Stopped after 6 of 8 planned epochs: 2 > 6 / 4, not flagged.
    values = [0.70, 0.80, 0.75, 0.72, 0.70, 0.68, 0.66, 0.64]
    assert report.early_peak(_curve(values))
    assert not report.early_peak(_curve(values[:6]))


def test_trials_csv_has_the_flag_for_every_trial(tmp_path):
    rows = [_row("down", DECLINE), _row("up", RISING), _row("short", [0.9, 0.5], max_epochs=8)]
    entries = report.table(rows, "val_srcc", [])
    _write_trials_csv(tmp_path / "trials.csv", entries)
    with open(tmp_path / "trials.csv") as fh:
        flags = {r["trial"]: r["early_peak"] for r in csv.DictReader(fh)}
    assert flags == {"down": "true", "up": "false", "short": "false"}


def _plan():
    return SimpleNamespace(name="s", base={"dataset": "demo"}, space_source="space.yaml", searcher="optuna", seed=0,
                           metric="val_srcc", max_epochs=8, grace_period=2, reduction_factor=2.0)


def _summary_of(rows):
    return _summary(_plan(), rows, None, report.table(rows, "val_srcc", []), {}, [], [])


def test_summary_warns_when_most_trials_peak_early_and_fall(capsys):
    # 2 of the 3 trials that ran >= 4 epochs; the 2-epoch trials are not counted either way.
    rows = [_row("a", DECLINE), _row("b", DECLINE[:5]), _row("c", RISING), _row("d", [0.9, 0.4]),
            _row("e", [0.9, 0.4])]
    text = _summary_of(rows)
    assert "- trial a: early peak, then decline: val_srcc 0.8000 at epoch 1 of 8, 0.5500 at the last" in text
    assert "- trial b: early peak" in text and "- trial c: early peak" not in text
    assert "> **Warning:** Early peak, then decline in 2 of the 3 trials" in text
    assert "symptom this project was built to diagnose" in text and "python tuning/ablate.py" in text
    search._print_early_peak(rows, "val_srcc")
    assert "warning: Early peak, then decline in 2 of the 3 trials" in capsys.readouterr().out


def test_no_warning_when_half_or_fewer_peak_early(capsys):
    rows = [_row("a", DECLINE), _row("c", RISING), _row("f", FLAT_NOISY), _row("d", [0.9, 0.4])]
    text = _summary_of(rows)
    assert "- trial a: early peak" in text and "- trial f: early peak" not in text
    assert "Warning" not in text and "Early peak" not in text
    search._print_early_peak(rows, "val_srcc")
    assert capsys.readouterr().out == ""
