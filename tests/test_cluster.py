"""A search on an existing two-node Ray cluster (--address), one CPU per node: the trials use both nodes."""

from __future__ import annotations

import re

import pytest
import ray
from ray.cluster_utils import Cluster

from hyperiqa.utils import UserError
from tests.test_search import search_argv
from tuning.sweep import experiment as search

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_search_runs_trials_on_both_nodes_and_every_log_reaches_the_experiment(cluster, tiny_dataset,
                                                                             tiny_cache_dir, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    # 4 trials on 2 one-CPU nodes: trials 3 and 4 reuse a finished trial's worker, whose Ray log folder
    # is node-local (before train.log went with the checkpoints, only the first two logs arrived).
    argv += ["--address", cluster.address, "--num-samples", "4", "--max-epochs", "1", "--max-concurrent", "2",
             "--name", "cluster"]
    try:
        assert search.main(argv) == 0
    finally:
        ray.shutdown()
    logs = sorted((tmp_path / "ray" / "cluster").glob("*/train.log"))
    assert len(logs) == 4
    nodes = {re.search(r"node (\w+)", log.read_text()).group(1) for log in logs}
    assert nodes == {node.node_id for node in cluster.list_all_nodes()}
    assert all("epoch 1/1" in log.read_text() for log in logs)  # the last line, written before the last report
    assert (tmp_path / "export" / "checkpoint" / "model.safetensors").is_file()
    assert "Ray dashboard: not running" in capsys.readouterr().out


def test_a_trial_whose_node_lacks_its_cache_folder_fails_once_with_the_node_and_path(
        cluster, tiny_dataset, tiny_cache_dir, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    argv += ["--address", cluster.address, "--num-samples", "1", "--max-epochs", "1", "--name", "nocache",
             "--set", f"cache_dir={blocked / 'cache'}"]
    try:
        assert search.main(argv) == 1  # every trial failed to start: exported, and not a success
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert re.search(rf"failed and is not retried: node \w+ \([\d.]+\): decoded cache: cannot create {blocked}", out)
    log = next((tmp_path / "ray" / "nocache").glob("*/train.log")).read_text()
    assert log.count("sampled") == 1  # one attempt: a retry on the same node would fail the same way
    with open(tmp_path / "export" / "trials.csv") as fh:
        assert "failed to start" in fh.read()


def test_a_trial_no_single_node_can_hold_is_refused_before_any_trial_starts(cluster, tiny_dataset,
                                                                             tiny_cache_dir, tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    try:  # 2 CPUs in the cluster, 1 per node: Ray would leave this trial PENDING forever
        with pytest.raises(UserError, match=r"--cpus-per-trial 2 --gpus-per-trial 0: no node"):
            search.main([*argv, "--address", cluster.address, "--cpus-per-trial", "2", "--name", "big"])
    finally:
        ray.shutdown()
    assert not (tmp_path / "ray" / "big").exists()


def test_more_gpus_than_the_cluster_has_is_a_clear_error(cluster, tiny_dataset, tiny_cache_dir, tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    try:
        with pytest.raises(UserError, match=r"--gpus 2: the Ray cluster has 0 GPU"):
            search.main([*argv, "--address", cluster.address, "--gpus", "2", "--name", "gpus"])
    finally:
        ray.shutdown()
