"""experiment_folder.newest: the one way search, ablation and confirmation find their newest experiment
for --resume without --name (no Ray, no training)."""

from __future__ import annotations

import json
import os

import pytest

from hyperiqa.utils import UserError
from tuning.engine.experiment_folder import newest
from tuning.engine.runner import RUNS_FILE
from tuning.sweep.plan import SEARCH_FILE


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
    assert newest(str(tmp_path), SEARCH_FILE, what="experiment") == "search-b"
    assert newest(str(tmp_path), RUNS_FILE, what="ablation", kind="ablate") == "abl-b"
    assert newest(str(tmp_path), RUNS_FILE, what="confirmation", kind="confirm") == "conf-a"


def test_none_of_the_kind_or_a_remote_storage_is_one_line(tmp_path):
    record(tmp_path, "abl-a", RUNS_FILE, 1, "ablate")
    with pytest.raises(UserError, match=f"no confirmation under {tmp_path}; give --storage-path and --name"):
        newest(str(tmp_path), RUNS_FILE, what="confirmation", kind="confirm")
    with pytest.raises(UserError, match="remote --storage-path needs --name"):
        newest("s3://bucket/ray", RUNS_FILE, what="ablation", kind="ablate")
