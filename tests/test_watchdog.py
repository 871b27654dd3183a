"""The stall watchdog (issue 30): the Ray-free rule (tuning/engine/stall.py), a search on Ray whose trial
hangs (tuning/engine/watch.py) and a --runner processes ablation whose run hangs (tuning/engine/local_runs.py)."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest

from hyperiqa.utils import UserError
from tests.fake_train import STALL_SEED
from tests.stub_trials import _running, stalling
from tests.test_local_runs import fake_trainer, runset  # noqa: F401  (fake_trainer: a fixture)
from tuning.engine import local_runs, stall


def test_a_run_is_stalled_after_the_floor_or_three_of_its_slowest_epochs():
    watch = stall.Watch(10.0)
    watch.started("a", 0.0)
    assert watch.stalled("a", 9.0) is None and watch.stalled("a", 11.0) == 11.0  # warm-up: the floor alone
    watch.reported("a", 5.0)   # the first report ends the warm-up: no epoch measured yet
    watch.reported("a", 25.0)  # a 20 s epoch: the limit is now 60 s
    assert watch.limit_for("a") == 60.0 and watch.stalled("a", 84.0) is None and watch.stalled("a", 86.0) == 61.0
    watch.reported("a", 27.0)  # a faster epoch does not lower it
    assert watch.limit_for("a") == 60.0
    watch.started("a", 100.0)  # a restart keeps the slowest epoch, and its warm-up is not an epoch
    watch.reported("a", 150.0)
    assert watch.limit_for("a") == 60.0 and watch.stalled("a", 161.0) is None
    watch.forget("a")
    assert watch.stalled("a", 1e9) is None and watch.stalled("never-started", 1e9) is None


def test_zero_turns_the_watchdog_off_and_a_bad_value_is_one_line():
    watch = stall.Watch(0.0)
    watch.started("a", 0.0)
    assert watch.stalled("a", 1e9) is None and stall.limit(0, 100.0) is None
    assert stall.limit(1800, None) == 1800 and stall.limit(1800, 900) == 2700
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--stall-timeout"):
            stall.check_stall_timeout(bad)


def test_the_record_lists_each_stall_and_the_runs_that_ended_stalled(tmp_path):
    stall.add(None, str(tmp_path), record=stall.stall_record("t1", "10.0.0.2", 42, 31.2, 30, True))
    stall.add(None, str(tmp_path), record=stall.stall_record("t1", "10.0.0.2", 43, 30.5, 30, False), ended="t1")
    data = stall.read_stalls(str(tmp_path))
    assert [s["pid"] for s in data["stalls"]] == [42, 43] and stall.stalled_ids(str(tmp_path)) == {"t1"}
    assert stall.read_stalls(str(tmp_path / "none")) == {"stalls": [], "stalled": []}


@pytest.mark.timeout(300)  # without the watchdog the search never ends (generous: Ray starts slowly under load)
def test_a_hung_trial_is_killed_retried_and_ends_stalled_while_the_search_exports(
        tiny_dataset, tiny_cache_dir, tmp_path, capsys):
    import ray

    from tests.test_search_scripted import argv_for
    from tuning.engine import ray_private
    from tuning.engine.watch import StallWatch
    from tuning.sweep import experiment as search
    from tuning.sweep import tuner as tuner_module

    lrs = {"0.001": None, "0.002": None}  # one trial each; 0.002 hangs after the first epoch of each attempt
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, lrs, "hang", "--max-epochs", "4", "--grace-period",
                    "4", "--max-concurrent", "2", "--stall-timeout", "8")
    pids = tmp_path / "pids"
    pids.mkdir()
    try:
        fn = functools.partial(stalling, epochs=4, stall_lr=0.002, pid_dir=str(pids))
        code = search.main(argv, trial_fn=fn)
        # --resume keeps the saved setting unless given again, and the restored Tuner (whose callbacks Ray
        # unpickles from the experiment) runs the watchdog with it
        resume = [*argv, "--resume"]
        assert search.resume_plan(search.build_parser().parse_args(resume)).stall_timeout == 8.0
        plan = search.resume_plan(search.build_parser().parse_args([*resume, "--stall-timeout", "7"]))
        callbacks = ray_private.restored_run_config(tuner_module.restore_tuner(plan, fn)).callbacks
        assert [c.stall_timeout for c in callbacks if isinstance(c, StallWatch)] == [7.0]
    finally:
        ray.shutdown()
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "ray" / "hang" / stall.STALLS_FILE).read_text())
    (stalled,) = record["stalled"]
    lines = [line for line in out.splitlines() if line.startswith(f"stalled: trial {stalled} ")]
    # Attempts 1 and 2 are retried (FailureConfig max_failures=2), the third ends the trial: one line each
    assert len(lines) == 3 and all("on node 127.0.0.1 reported nothing for " in line for line in lines), out
    assert "retried from its last checkpoint" in lines[0] and "ends as stalled" in lines[2]
    stopped = list(pids.iterdir())  # each attempt that reported its epoch stopped its worker: all were killed
    assert stopped and not any(_running(int(marker.name), marker.read_text()) for marker in stopped)
    with open(tmp_path / "export" / "trials.csv") as fh:
        ended = {r["trial"]: (r["ended"], int(r["epochs_run"])) for r in csv.DictReader(fh)}
    # 3 epochs, one per attempt (fewer only if a loaded machine made an attempt's warm-up exceed 8 s)
    assert ended.pop(stalled) == ("stalled", len(stopped)) and list(ended.values()) == [("completed", 4)]
    assert [s["trial"] for s in record["stalls"]].count(stalled) == 3
    assert (tmp_path / "export" / "checkpoint").is_dir()


@pytest.mark.timeout(120)
def test_a_hung_local_process_is_killed_retried_and_reported(tmp_path, tiny_cfg, fake_trainer):  # noqa: F811
    rs = runset(tmp_path, tiny_cfg, seeds=(0, STALL_SEED), epochs=4, stall_timeout=3.0)
    printed = []
    curves, failed = local_runs.execute(rs, out=lambda *a, **k: printed.append(" ".join(map(str, a))))
    bad = f"fixed-s{STALL_SEED}"
    lines = [line for line in printed if line.startswith("stalled: ")]
    assert len(lines) == 3 and all(line.startswith(f"stalled: run {bad} on node ") for line in lines), printed
    assert "ends as stalled" in lines[-1] and failed == [bad]
    assert [e["epoch"] for e in curves[bad]] == [1, 2, 3] and len(curves["fixed-s0"]) == 4  # resumed each time
    assert stall.stalled_ids(rs.experiment_path) == {bad}
    assert len(Path(rs.experiment_path, bad, "calls.txt").read_text().splitlines()) == 3


def test_an_ablation_and_a_confirmation_on_ray_are_watched_with_their_own_setting(tmp_path, tiny_cfg):
    """The Ray test above runs a search; ablate.py and confirm.py build their Tuners from the same run_config."""
    from tuning.ablation import experiment as ablation
    from tuning.engine import launch, runner
    from tuning.engine.options import Resources
    from tuning.engine.watch import StallWatch

    def watched(runset) -> list[float]:
        return [c.stall_timeout for c in launch.run_config(runset).callbacks if isinstance(c, StallWatch)]

    args = ablation.build_parser().parse_args(["--dataset", "demo", "--gpus", "0", "--stall-timeout", "42",
                                               "--storage-path", str(tmp_path / "ray"), "--name", "abl"])
    assert watched(ablation.new_runset(args)) == [42.0]
    where = runner.RunOptions(Resources(0.0, 0.0, 1.0, 1), str(tmp_path / "ray"), "conf", str(tmp_path / "out"), 7.0)
    confirm = runner.make_runset("confirm", [("a", {}, tiny_cfg(epochs=1))], where, metric="val_srcc", default_name="x")
    assert watched(confirm) == [7.0]
