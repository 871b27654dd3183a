"""Export pieces that need no Ray: how trials ended, rows, importance, the atomic folder swap."""

from __future__ import annotations

import csv
import math

import pytest

from tuning import report
from tuning.export import _staging, _write_trials_csv
from tuning.space import parse_space

SPACE = parse_space({"params": {"backbone_lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
                                "schedule": {"type": "choice", "values": ["step", "cosine"]},
                                "step_size": {"type": "int", "low": 1, "high": 4, "when": {"schedule": "step"}}}},
                    source="mem")


def _epochs(values, last_status="running"):
    out = [{"epoch": i + 1, "val_srcc": v, "status": "running"} for i, v in enumerate(values)]
    out[-1]["status"] = last_status
    return out


@pytest.mark.parametrize("ray_status, epochs, expected", [
    ("TERMINATED", _epochs([0.5, 0.6, 0.7], "completed"), report.COMPLETED),
    ("TERMINATED", _epochs([0.5]), report.ASHA),
    ("TERMINATED", _epochs([0.5, 0.4, 0.3], "early_stopped"), report.DECLINE),
    ("TERMINATED", _epochs([0.5, math.nan], "diverged"), report.DIVERGED),
    ("ERROR", _epochs([0.5]), report.ERROR),
    ("RUNNING", _epochs([0.5]), report.UNFINISHED),
    ("PENDING", [], report.UNFINISHED),
])
def test_how_a_trial_ended(ray_status, epochs, expected):
    row = report.make_row("t", {}, ray_status, epochs, "val_srcc", max_epochs=3)
    assert row.ended == expected


def test_row_keeps_the_last_report_of_a_repeated_epoch_and_the_later_of_tied_bests():
    # After a resume an epoch can be reported twice; the later report is the one the checkpoint holds.
    epochs = _epochs([0.2, 0.5, 0.9]) + [{"epoch": 3, "val_srcc": 0.7, "status": "running"},
                                         {"epoch": 4, "val_srcc": 0.7, "status": "completed"}]
    row = report.make_row("t", {}, "TERMINATED", epochs, "val_srcc", max_epochs=4)
    assert row.curve == [(1, 0.2), (2, 0.5), (3, 0.7), (4, 0.7)]
    assert (row.best, row.best_epoch, row.last, row.epochs_run) == (0.7, 4, 0.7, 4)


def test_table_sorts_best_first_and_csv_round_trips(tmp_path):
    rows = [report.make_row("a", {"backbone_lr": 1e-3, "schedule": "cosine"}, "TERMINATED", _epochs([0.3]),
                            "val_srcc", 3),
            report.make_row("b", {"backbone_lr": 2e-3, "schedule": "step", "step_size": 2}, "TERMINATED",
                            _epochs([0.4, 0.8, 0.6], "completed"), "val_srcc", 3),
            report.make_row("c", {}, "ERROR", [], "val_srcc", 3)]
    entries = report.table(rows, "val_srcc", ["backbone_lr", "schedule", "step_size"])
    assert [e["trial"] for e in entries] == ["b", "a", "c"]
    _write_trials_csv(tmp_path / "trials.csv", entries)
    with open(tmp_path / "trials.csv") as fh:
        read = list(csv.DictReader(fh))
    assert read[0]["best_val_srcc"] == "0.8" and read[0]["best_epoch"] == "2" and read[0]["ended"] == "completed"
    assert read[1]["step_size"] == "" and read[1]["ended"] == report.ASHA
    assert "best_val_srcc" in report.text_table(entries)


def test_importance_ranks_the_parameter_that_matters():
    rows = []
    for i in range(12):
        lr = 10 ** (-5 + 3 * i / 11)
        schedule = "step" if i % 2 else "cosine"
        params = {"backbone_lr": lr, "schedule": schedule, **({"step_size": 2} if schedule == "step" else {})}
        srcc = 0.2 + 0.6 * i / 11  # depends on the learning rate only
        rows.append(report.make_row(str(i), params, "TERMINATED", _epochs([srcc], "completed"), "val_srcc", 1))
    result = report.importance(rows, SPACE.distributions())
    values = result["importances"]
    assert values["backbone_lr"] > values["schedule"]


def test_importance_with_too_few_trials_says_why():
    rows = [report.make_row("a", {"backbone_lr": 1e-3}, "TERMINATED", _epochs([0.5], "completed"), "val_srcc", 1)]
    result = report.importance(rows, SPACE.distributions())
    assert result["importances"] == {} and "1 trials" in result["note"] and result["reliable"] is False


def _asha_rows(reached: int, stopped: int) -> list:
    """`reached` trials ran 2 epochs (the first rung), `stopped` only 1; the value follows the LR."""
    rows = []
    for i in range(reached + stopped):
        epochs = 2 if i < reached else 1
        lr = 10 ** (-5 + 3 * i / (reached + stopped))
        values = [0.2 + 0.6 * i / (reached + stopped)] * epochs
        rows.append(report.make_row(str(i), {"backbone_lr": lr, "schedule": "cosine"}, "TERMINATED",
                                    _epochs(values, "completed" if epochs == 2 else "running"), "val_srcc", 2))
    return rows


@pytest.mark.parametrize("reached, reliable", [(10, True), (9, False)])
def test_importance_is_flagged_unreliable_below_ten_trials_at_the_first_rung(reached, reliable):
    # 12 trials either way: what counts is how many got past ASHA's first rung (epoch 2).
    result = report.importance(_asha_rows(reached, 12 - reached), SPACE.distributions(), first_rung=2)
    assert result["reliable"] is reliable and result["trials_at_first_rung"] == reached
    assert result["trials_used"] == 12 and result["importances"]  # computed on both sides
    assert ("unreliable: only 9 trials reached the first ASHA rung (epoch 2)" in result["note"]) is not reliable
    # Without the rung every trial that reported an epoch counts: all 12.
    assert report.importance(_asha_rows(reached, 12 - reached), SPACE.distributions())["reliable"] is True


def test_staging_replaces_the_folder_only_on_success(tmp_path):
    target = tmp_path / "export"
    with _staging(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), _staging(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("export failed")
    assert (target / "a.txt").read_text() == "one"
    with _staging(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folders left behind


def test_curves_png_is_written(tmp_path):
    rows = [report.make_row("a", {}, "TERMINATED", _epochs([0.3, 0.5], "completed"), "val_srcc", 2),
            report.make_row("b", {}, "TERMINATED", _epochs([0.2]), "val_srcc", 2)]
    report.plot_curves(rows, "val_srcc", "a", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
