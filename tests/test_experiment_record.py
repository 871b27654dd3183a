"""experiment_folder's record: the one way search, ablation and confirmation save, load and find their
newest experiment for --resume without --name (no Ray, no training)."""

from __future__ import annotations

import json
import os

import pytest

from hyperiqa.utils import UserError
from tuning.engine.experiment_folder import (
    ABLATION,
    CONFIRMATION,
    RECORD_VERSION,
    RUNS_FILE,
    SEARCH,
    SEARCH_FILE,
    load_record,
    newest,
)


def record(folder, name: str, file: str, age: int, kind: str | None = None) -> None:
    (folder / name).mkdir(parents=True)
    path = folder / name / file
    path.write_text(json.dumps({"kind": kind} if kind else {"name": name}, indent=2))
    os.utime(path, (1_000_000 + age, 1_000_000 + age))


def test_the_newest_of_its_kind_is_found_whatever_else_is_newer(tmp_path):
    record(tmp_path, "search-a", SEARCH_FILE, 1)
    record(tmp_path, "abl-a", RUNS_FILE, 2, "ablate")
    record(tmp_path, "conf-a", RUNS_FILE, 3, "confirm")
    record(tmp_path, "abl-b", RUNS_FILE, 4, "ablate")
    record(tmp_path, "search-b", SEARCH_FILE, 5)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RUNS_FILE).write_text("{not json")  # a foreign file is not an ablation
    assert newest(str(tmp_path), SEARCH) == "search-b"
    assert newest(str(tmp_path), ABLATION) == "abl-b"
    assert newest(str(tmp_path), CONFIRMATION) == "conf-a"


def test_none_of_the_kind_or_a_remote_storage_is_one_line(tmp_path):
    record(tmp_path, "abl-a", RUNS_FILE, 1, "ablate")
    with pytest.raises(UserError, match=f"no confirmation under {tmp_path}; give --storage-path and --name"):
        newest(str(tmp_path), CONFIRMATION)
    with pytest.raises(UserError, match="remote --storage-path needs --name"):
        newest("s3://bucket/ray", ABLATION)


def test_a_record_is_saved_with_its_kind_and_version_and_read_back(tmp_path):
    from tuning.engine import runner

    runset = runner.RunSet("confirm", ({"id": "a", "labels": {}, "config": {}},), "val_srcc", 0, 0, 1, str(tmp_path),
                           "conf", str(tmp_path / "out"))
    runner.save_runset(runset)
    saved = json.loads((tmp_path / "conf" / RUNS_FILE).read_text())
    assert (saved["kind"], saved["version"]) == ("confirm", RECORD_VERSION)
    assert runner.load_runset(runset.experiment_path, CONFIRMATION) == runset
    with pytest.raises(UserError, match=r"conf: written by tuning/confirm.py, not tuning/ablate.py"):
        runner.load_runset(runset.experiment_path, ABLATION)


def test_a_plan_saved_before_records_had_a_kind_or_version_still_loads(tmp_path):
    from tuning.sweep.plan import load_plan, save_plan

    save_plan(plan := plan_like(tmp_path))
    old = json.loads((tmp_path / "old" / SEARCH_FILE).read_text())
    del old["kind"], old["version"]
    (tmp_path / "old" / SEARCH_FILE).write_text(json.dumps(old))
    assert load_plan(str(tmp_path / "old")) == plan


def test_a_record_that_cannot_be_read_is_one_line_naming_its_file(tmp_path):
    folder = tmp_path / "x"
    with pytest.raises(UserError, match=f"{folder}: no {SEARCH_FILE}; not a folder written by tuning/search.py"):
        load_record(str(folder), SEARCH, dict)
    folder.mkdir()
    for text, words in (("{not json", "not a record written by tuning/search.py"),
                        ('{"kind": "search", "version": 99}', "record version 99, newer than this code reads"),
                        ('{"kind": "search", "surprise": 1}', "not a record written by tuning/search.py")):
        (folder / SEARCH_FILE).write_text(text)
        with pytest.raises(UserError) as exc_info:
            load_record(str(folder), SEARCH, lambda name: name)
        assert str(exc_info.value).startswith(f"{folder / SEARCH_FILE}: {words}") and "\n" not in str(exc_info.value)


def plan_like(tmp_path):
    from tuning.sweep.plan import Plan

    return Plan({"dataset": "demo"}, {"params": {}}, "space.yaml", "val_srcc", "optuna", 0, 2, 2, 1, 2.0, 0, 0, 1,
                str(tmp_path), "old", str(tmp_path / "export"))
