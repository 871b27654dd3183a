"""Export pieces that need no Ray: how trials ended, rows, importance, the atomic folder swap."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest

from hyperiqa.utils import UserError
from tuning.engine.result_folder import staging as _staging
from tuning.sweep import trials_report as report
from tuning.sweep.export_folder import _write_trials_csv
from tuning.sweep.space import parse_space

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
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folders left behind


MARKER = ".hyperiqa-export"  # the file that makes a folder an export's own (README "The export folder")


def _export_into(target, experiment=None) -> None:
    with _staging(target, experiment) as tmp:
        (tmp / "summary.md").write_text("new")


def test_staging_uses_an_empty_folder_and_then_replaces_only_its_own(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    _export_into(target)
    assert (target / MARKER).is_file() and (target / "summary.md").read_text() == "new"
    (target / "summary.md").write_text("old")
    _export_into(target)  # an export folder written earlier: replaced whole
    assert (target / "summary.md").read_text() == "new"


def test_staging_refuses_a_folder_of_someone_elses_files_and_keeps_them(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError) as refused:
        _export_into(target)
    message = str(refused.value)
    assert "\n" not in message and str(target) in message and "thesis.tex" in message
    assert "choose another --out/--export-dir, or empty it" in message
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing staged beside it either
    file = tmp_path / "notes.txt"
    file.write_text("keep")
    with pytest.raises(UserError, match="a file, not a folder"):
        _export_into(file)
    assert file.read_text() == "keep"


def test_staging_never_replaces_the_experiment_a_folder_holding_it_or_one_inside_it(tmp_path):
    experiment = tmp_path / "ray" / "search"
    (experiment / "trial_0").mkdir(parents=True)
    (experiment / MARKER).write_text("")  # not even when it looks like an export's folder
    for target in (experiment, tmp_path / "ray", tmp_path, experiment / "trial_0", experiment / "new"):
        with pytest.raises(UserError, match="the experiment"):
            _export_into(target, str(experiment))
    assert (experiment / "trial_0").is_dir() and not (experiment / "new").exists()
    _export_into(tmp_path / "export", str(experiment))  # beside it: fine
    assert (tmp_path / "export" / "summary.md").is_file()


def test_staging_refuses_the_current_folder(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", ".."):  # empty or not: the shell would be left in a deleted folder
        with pytest.raises(UserError, match="current folder"):
            _export_into(Path(target))
    assert here.is_dir()


def test_files_put_into_the_folder_while_the_export_ran_are_kept(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(UserError, match="late.txt"), _staging(target) as tmp:
        (tmp / "summary.md").write_text("new")
        target.mkdir()
        (target / "late.txt").write_text("written during a long cross-dataset scoring")
    assert [p.name for p in target.iterdir()] == ["late.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_curves_png_is_written(tmp_path):
    rows = [report.make_row("a", {}, "TERMINATED", _epochs([0.3, 0.5], "completed"), "val_srcc", 2),
            report.make_row("b", {}, "TERMINATED", _epochs([0.2]), "val_srcc", 2)]
    report.plot_curves(rows, "val_srcc", "a", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_the_export_folder_gets_the_modes_the_umask_gives(tmp_path, umask, folder_mode, file_mode):
    # tempfile's 0o700 folders would hide an export from colleagues on shared storage.
    old = os.umask(umask)
    try:
        _export_into(tmp_path / "export")
    finally:
        os.umask(old)
    assert (tmp_path / "export").stat().st_mode & 0o777 == folder_mode
    assert (tmp_path / "export" / "summary.md").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "export" / MARKER).stat().st_mode & 0o777 == file_mode
