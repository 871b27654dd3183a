"""A search on an existing two-node Ray cluster (--address), one CPU per node: the trials use both nodes."""

from __future__ import annotations

import re

import pytest
import ray
from ray.cluster_utils import Cluster

from hyperiqa.utils import UserError
from tests.test_search import search_argv
from tuning import search

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_search_runs_trials_on_both_nodes(cluster, tiny_dataset, tiny_cache_dir, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    argv += ["--address", cluster.address, "--num-samples", "2", "--max-epochs", "1", "--max-concurrent", "2",
             "--name", "cluster"]
    try:
        assert search.main(argv) == 0
    finally:
        ray.shutdown()
    logs = sorted((tmp_path / "ray" / "cluster").glob("*/train.log"))
    assert len(logs) == 2
    nodes = {re.search(r"node (\w+)", log.read_text()).group(1) for log in logs}
    assert nodes == {node.node_id for node in cluster.list_all_nodes()}
    assert (tmp_path / "export" / "checkpoint" / "model.safetensors").is_file()
    assert "Ray dashboard: not running" in capsys.readouterr().out


def test_more_gpus_than_the_cluster_has_is_a_clear_error(cluster, tiny_dataset, tiny_cache_dir, tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    try:
        with pytest.raises(UserError, match=r"--gpus 2: the Ray cluster has 0 GPU"):
            search.main([*argv, "--address", cluster.address, "--gpus", "2", "--name", "gpus"])
    finally:
        ray.shutdown()
