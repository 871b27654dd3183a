"""bench/search_quality.py's bookkeeping: epochs consumed in arrival order, the epochs-to-within-0.01 ratio,
ASHA's rung epochs and the rung ranking (no searches run here)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("search_quality", ROOT / "bench" / "search_quality.py")
sq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sq)


def write_trial(experiment: Path, trial_id: str, order: int, reports: list[tuple[int, int, float]]) -> None:
    """reports: (timestamp, epoch, val_srcc), written as Ray's result.json lines."""
    folder = experiment / f"train_trial_{trial_id}_{order}_backbone_lr=0.001_2026-11-28_10-00-00"
    folder.mkdir(parents=True)
    lines = [json.dumps({"trial_id": trial_id, "timestamp": t, "epoch": e, "val_srcc": v, "config": {"lr": order}})
             for t, e, v in reports]
    (folder / "result.json").write_text("\n".join(lines) + "\n")


def test_epochs_are_counted_in_arrival_order_until_the_running_best_is_close_enough(tmp_path):
    # trial 1 runs epochs 1-3 at t=10,20,30; trial 2 epochs 1-2 at t=15,20 (same second as trial 1's
    # epoch 2: creation order breaks the tie), and reaches 0.80 at its epoch 2
    write_trial(tmp_path, "a", 1, [(10, 1, 0.50), (20, 2, 0.60), (30, 3, 0.70)])
    write_trial(tmp_path, "b", 2, [(15, 1, math.nan), (20, 2, 0.80), (20, 2, 0.80)])  # epoch 2 reported twice
    trials = sq.load_trials(tmp_path)
    assert [t["id"] for t in trials] == ["a", "b"] and sq.total_epochs(trials) == 5
    events = sq.arrivals(trials)
    assert [(e[1], e[2]) for e in events] == [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3)]
    assert sq.epochs_to_target(events, 0.80 - sq.WITHIN) == 4   # 0.80 arrives as the 4th epoch consumed
    assert sq.epochs_to_target(events, 0.60) == 3               # trial a's epoch 2 (the NaN never counts)
    assert sq.epochs_to_target(events, 0.81) is None            # never reached
    assert sq.best_value(trials) == pytest.approx(0.80)


def test_ratio_is_epochs_to_target_over_the_full_budget_methods_epochs(tmp_path, monkeypatch):
    full, asha = tmp_path / "full", tmp_path / "asha"
    for i in range(4):  # full budget: 4 trials x 3 epochs; the best (0.9) is the last epoch to arrive
        write_trial(full, f"f{i}", i, [(100 * i + e, e, 0.3 * e if i == 3 else 0.1 * e) for e in (1, 2, 3)])
    write_trial(asha, "x", 1, [(1, 1, 0.5), (2, 2, 0.895)])  # within 0.01 of 0.9 after 2 epochs
    write_trial(asha, "y", 2, [(3, 1, 0.2)])
    for folder, value in ((full, 0.9), (asha, 0.895)):
        export = folder / "export"
        export.mkdir()
        (export / "metrics.json").write_text(json.dumps({"trial": "f3" if folder == full else "x", "val_srcc": value,
                                                         "test_srcc": 0.7, "epoch": 3 if folder == full else 2}))
    monkeypatch.setattr("tuning.sweep.plan.load_plan", lambda path: SimpleNamespace(space={"start": [{"lr": 1}]}))
    row_full = sq.summarise("random_full", 0, full, full / "export", None, 60.0)
    row_asha = sq.summarise("asha_tpe", 0, asha, asha / "export", row_full, 30.0)
    assert (row_full["epochs"], row_full["epochs_to_within"], row_full["ratio"]) == (12, 12, 1.0)
    assert (row_asha["epochs"], row_asha["epochs_to_within"], row_asha["ratio"]) == (3, 2, pytest.approx(2 / 12, abs=1e-4))
    assert row_asha["best_is_start_point"] and not row_full["best_is_start_point"]


def test_asha_rungs_and_the_full_budget_setting():
    assert sq.asha_rungs(1, 2, 12) == [1, 2, 4, 8]
    assert sq.asha_rungs(2, 2, 12) == [2, 4, 8]
    assert sq.asha_rungs(12, 2, 12) == []  # grace = max epochs: no rung before a trial's end
    assert sq.method_flags("random_full", 12) == ["--searcher", "random", "--grace-period", "12", "--patience", "0"]


def test_rung_agreement_finds_a_rung_that_ranks_backwards(tmp_path):
    # three trials whose epoch-1 order is the reverse of their final order, epoch 2 already right
    for i, (first, second, last) in enumerate(((0.6, 0.5, 0.6), (0.5, 0.6, 0.7), (0.4, 0.7, 0.9))):
        write_trial(tmp_path, f"t{i}", i, [(1, 1, first), (2, 2, second), (3, 3, last)])
    rungs = sq.rung_agreement(sq.load_trials(tmp_path), [1, 2])
    assert rungs[0] == {"rung": 1, "trials": 3, "spearman": -1.0, "winner_rank": 3}
    assert rungs[1] == {"rung": 2, "trials": 3, "spearman": 1.0, "winner_rank": 1}
