"""tuning/engine/local_runs.py (ablate.py --runner processes) with a stand-in trainer (tests/fake_train.py): which
runs start, continue or are kept, a failing run, the time limit, GPU pinning, the collected curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tests.fake_train import FAIL_MESSAGE, FAIL_SEED
from tuning.engine import local_runs
from tuning.engine.experiment_folder import RUNS_FILE
from tuning.engine.runner import RunSet

FAKE = Path(__file__).resolve().parent / "fake_train.py"


@pytest.fixture
def fake_trainer(monkeypatch):
    """hyperiqa.train replaced by the stand-in (same arguments)."""
    monkeypatch.setattr(local_runs, "command",
                        lambda folder, resume: [sys.executable, str(FAKE), *(["--resume"] if resume else
                                                                             ["--config", str(folder / "config.yaml")]),
                                                "--out", str(folder)])


def runset(tmp_path: Path, tiny_cfg, seeds=(0, 1), epochs=3, **kw) -> RunSet:
    runs = tuple({"id": f"fixed-s{s}", "labels": {"variant": "fixed", "seed": i},
                  "config": tiny_cfg(seed=s, epochs=epochs).to_dict()} for i, s in enumerate(seeds))
    base = dict(kind="ablate", runs=runs, metric="val_srcc", gpus=0.0, gpus_per_trial=0.0, cpus_per_trial=1.0,
                storage_path=str(tmp_path / "runs"), name="exp", out_dir=str(tmp_path / "out"), max_concurrent=2,
                settings={"runner": "processes"})
    return RunSet(**{**base, **kw})


def calls(rs: RunSet, run_id: str) -> list[str]:
    path = Path(rs.experiment_path) / run_id / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_runs_every_run_and_collects_its_epochs(tmp_path, tiny_cfg, fake_trainer):
    rs = runset(tmp_path, tiny_cfg)
    printed = []
    curves, failed = local_runs.execute(rs, out=lambda *a, **k: printed.append(" ".join(map(str, a))))
    assert failed == [] and (Path(rs.experiment_path) / RUNS_FILE).is_file()
    assert [e["epoch"] for e in curves["fixed-s1"]] == [1, 2, 3]
    assert curves["fixed-s1"][2]["test_srcc"] == pytest.approx(0.16) and curves["fixed-s1"][2]["status"] == "completed"
    assert math.isnan(curves["fixed-s0"][0]["train_srcc"])  # None in metrics.jsonl: NaN, as Ray reports it
    # One line per epoch and per run end, naming the run
    assert sum(line.startswith("fixed-s0: epoch ") for line in printed) == 3
    assert any(line.startswith("fixed-s1: completed after") for line in printed)
    assert all("--config" in c for c in calls(rs, "fixed-s0"))


def test_resume_keeps_finished_runs_and_continues_the_others(tmp_path, tiny_cfg, fake_trainer):
    rs = runset(tmp_path, tiny_cfg)
    local_runs.execute(rs, out=lambda *a, **k: None)
    # fixed-s1 interrupted after epoch 1: one metrics line, a last/ checkpoint
    folder = Path(rs.experiment_path) / "fixed-s1"
    metrics = folder / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    finished_before = (Path(rs.experiment_path) / "fixed-s0" / "metrics.jsonl").read_text()
    curves, failed = local_runs.execute(rs, resume=True, out=lambda *a, **k: None)
    assert failed == [] and len(calls(rs, "fixed-s0")) == 1  # kept: not started again
    assert (Path(rs.experiment_path) / "fixed-s0" / "metrics.jsonl").read_text() == finished_before
    assert "--resume" in calls(rs, "fixed-s1")[-1] and [e["epoch"] for e in curves["fixed-s1"]] == [1, 2, 3]


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, tiny_cfg, fake_trainer):
    rs = runset(tmp_path, tiny_cfg, seeds=(0, FAIL_SEED, 2), max_concurrent=1)
    printed = []
    curves, failed = local_runs.execute(rs, out=lambda *a, **k: printed.append(" ".join(map(str, a))))
    bad = f"fixed-s{FAIL_SEED}"
    assert failed == [bad] and curves[bad] == []
    assert len(curves["fixed-s0"]) == len(curves["fixed-s2"]) == 3  # the run after the failure still ran
    text = "\n".join(printed)
    assert f"{bad}: FAILED" in text and "exit code 3" in text and FAIL_MESSAGE in text  # its log's tail


def test_time_limit_stops_the_runs_and_resume_continues_them(tmp_path, tiny_cfg, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.3")
    rs = runset(tmp_path, tiny_cfg, seeds=(0,), epochs=1000)
    # 8 s: long enough for the fake trainer to start and write an epoch on a loaded 2-core machine (2 s was not)
    curves, failed = local_runs.execute(rs, time_limit=8.0, out=lambda *a, **k: None)
    reached = len(curves["fixed-s0"])
    assert failed == [] and 0 < reached < 1000 and curves["fixed-s0"][-1]["status"] == "running"
    monkeypatch.setenv("FAKE_EPOCH_S", "0")
    curves, failed = local_runs.execute(rs, resume=True, out=lambda *a, **k: None)
    assert len(curves["fixed-s0"]) == 1000 and "--resume" in calls(rs, "fixed-s0")[-1]


def test_slots_pin_gpus_and_share_them(tmp_path, tiny_cfg, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = dict(gpus=2.0, gpus_per_trial=0.5, max_concurrent=None)
    assert local_runs.slots(runset(tmp_path, tiny_cfg, **gpu), cpus=16) == ["0", "0", "1", "1"]
    assert local_runs.slots(runset(tmp_path, tiny_cfg, **gpu), cpus=3) == ["0", "0", "1"]  # 1 CPU per run
    assert local_runs.slots(runset(tmp_path, tiny_cfg, **{**gpu, "max_concurrent": 2}), cpus=16) == ["0", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # hand out what this process was given
    assert local_runs.slots(runset(tmp_path, tiny_cfg, gpus=2.0, gpus_per_trial=1.0), cpus=16) == ["3", "5"]
    cpu = runset(tmp_path, tiny_cfg, cpus_per_trial=2.0, max_concurrent=None)
    assert local_runs.slots(cpu, cpus=5) == [None, None]
    env = local_runs.child_env({"num_threads": 2}, "5")
    assert (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) == ("5", "2")
    assert local_runs.child_env({}, None)["CUDA_VISIBLE_DEVICES"] == ""  # a CPU run cannot initialise CUDA
    assert env["PYTHONPATH"].split(":")[0] == str(local_runs.ROOT)  # the children run this checkout's code
