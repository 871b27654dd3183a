"""A worker node lost mid-trial (issue 30): on a three-node Ray cluster (a head without CPUs, so trials run on
the two workers), the node running the only trial is removed without warning. The trial goes on from its
checkpoint on the other node, and every epoch is recorded once: in the trial's results (trials.csv), in
ASHA's rungs and in the Optuna study. Real Ray, real Tuner; the trial follows tests/stub_trials.scripted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.stub_trials import PAUSED_PREFIX, kill_paused, scripted
from tests.test_search import ROOT
from tests.test_search_scripted import _snapshot_has_checkpoint, argv_for, rows, study, trial_ids_by_lr
from tuning.sweep import asha
from tuning.sweep.plan import load_plan
from tuning.sweep.tuner import saved_results

pytestmark = pytest.mark.timeout(300)

LR = repr(1e-3)
CURVES = {LR: [0.5, 0.6, 0.7]}  # three epochs; the node is removed after the first
NODE_PREFIX = "node-"  # pause_dir/node-<pid>: the Ray node id of a worker that ran the trial

# The search in a driver process of its own: the trial records its node; the driver writes ASHA's live
# rungs to rungs.json when the search has ended.
DRIVER = """
import functools, json, sys
from tests.test_node_loss import located
from tuning.sweep import experiment as search, tuner
argv, curves, pause_dir, rungs = json.loads(sys.argv[1])
made = []
def make_scheduler(plan, _make=tuner.make_scheduler):
    made.append(_make(plan))
    return made[-1]
tuner.make_scheduler = make_scheduler
code = search.main(argv, trial_fn=functools.partial(located, curves=curves, pause_dir=pause_dir))
open(rungs, "w").write(json.dumps({str(k): v for k, v in made[0].rungs().items()}))
sys.exit(code)
"""


def located(config, *, pause_dir: str, **kwargs) -> None:
    """tests/stub_trials.scripted, after writing this worker's node id to pause_dir/node-<pid>."""
    (Path(pause_dir) / f"{NODE_PREFIX}{os.getpid()}").write_text(ray.get_runtime_context().get_node_id())
    scripted(config, pause_dir=pause_dir, **kwargs)


@pytest.fixture(scope="module")
def lost_node(tiny_dataset, tiny_cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lost_node")
    pause = root / "pause"
    pause.mkdir()
    (pause / "pause.json").write_text(json.dumps({LR: 1}))  # the trial waits after epoch 1
    # Ray marks a node dead after health_check_failure_threshold missed checks: seconds, not Ray's 30 s default.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        argv = argv_for(root, tiny_dataset, tiny_cache_dir, CURVES, "lost", "--max-epochs", "3",
                        "--grace-period", "1", "--reduction-factor", "2", "--address", cluster.address)
        experiment = root / "ray" / "lost"
        cmd = [sys.executable, "-c", DRIVER, json.dumps([argv, CURVES, str(pause), str(root / "rungs.json")])]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(root / "driver.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and proc.poll() is None and not (
                        any(pause.glob(f"{PAUSED_PREFIX}*")) and _snapshot_has_checkpoint(experiment, LR)):
                    time.sleep(1)  # each poll reads Ray's experiment state: CPU the search needs
                assert proc.poll() is None and any(pause.glob(f"{PAUSED_PREFIX}*")), \
                    (root / "driver.log").read_text()[-3000:]
                (first,) = [p.read_text() for p in pause.glob(f"{NODE_PREFIX}*")]
                (node,) = [w for w in workers if w.node_id == first]
                removed_at = time.monotonic()
                cluster.remove_node(node, allow_graceful=False)
                kill_paused(pause)  # gone with its raylet; a survivor would write epoch 2 into the trial folder
                (pause / "resumed").touch()  # a retry that started over would pause again: not wait for ever
                code = proc.wait(timeout=180)
                recovered_s = time.monotonic() - removed_at
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        assert code == 0, (root / "driver.log").read_text()[-3000:]
        nodes = {p.name: p.read_text() for p in pause.glob(f"{NODE_PREFIX}*")}
        yield {"root": root, "experiment": experiment, "removed": first, "nodes": nodes,
               "log": (root / "driver.log").read_text(),
               "survivor": next(w.node_id for w in workers if w is not node), "recovered_s": recovered_s}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_trial_of_a_removed_node_continues_from_its_checkpoint_on_the_other_node(lost_node):
    print(f"search ended {lost_node['recovered_s']:.1f} s after the node was removed")
    assert sorted(lost_node["nodes"].values()) == sorted([lost_node["removed"], lost_node["survivor"]])
    # One of the trial's retries (launch.run_config: FailureConfig(max_failures=2)), in Ray's words.
    # (Ray names the cause as it finds it first: the worker's connection lost or the node marked dead.)
    assert "errored after 1 iterations" in lost_node["log"]
    assert "The trial terminated successfully after retrying." in lost_node["log"]
    (trial,) = trial_ids_by_lr(lost_node["experiment"]).values()
    results = [json.loads(line) for line in next(lost_node["experiment"].glob("*/result.json")).read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2, 3]  # continued from epoch 1: nothing reported twice
    row = rows(lost_node["root"] / "export")[trial]
    assert (row["ended"], row["epochs_run"], row["best_val_srcc"]) == ("completed", "3", "0.7")


def test_every_epoch_is_recorded_once_in_the_rungs_and_the_optuna_study(lost_node):
    (trial,) = trial_ids_by_lr(lost_node["experiment"]).values()
    live = json.loads((lost_node["root"] / "rungs.json").read_text())
    assert live == {"2": {trial: 0.6}, "1": {trial: 0.5}}
    # What a --resume would rebuild them from (tuning/sweep/tuner.restore_tuner): the saved results.
    plan = load_plan(str(lost_node["experiment"]))
    scheduler = asha.make_scheduler(plan)
    for trial_id, epochs in saved_results(plan).items():
        scheduler.replay(trial_id, [(int(e["epoch"]), e["val_srcc"]) for e in epochs])
    assert scheduler.rungs() == {2: {trial: 0.6}, 1: {trial: 0.5}}
    (optuna_trial,) = study(lost_node["experiment"]).trials
    assert optuna_trial.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7} and optuna_trial.value == 0.7
