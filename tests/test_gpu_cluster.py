"""What only GPUs would show, on a CPU: a Ray cluster with 4 logical GPUs, trials swapped for a probe
(tests/stub_trials.gpu_probe) that reports what its worker sees and what the solver would derive."""

from __future__ import annotations

import functools
import json
from collections import Counter

import pytest
import ray
from ray.cluster_utils import Cluster

from hyperiqa.runtime import CUDA_CONTEXT_ALLOWANCE_GIB
from hyperiqa.utils import UserError
from tests.stub_trials import gpu_probe
from tests.test_search import search_argv
from tuning.engine import launch
from tuning.sweep import experiment as search

pytestmark = pytest.mark.timeout(400)
CARD_GIB = 40  # the memory the probe assumes for each logical GPU


@pytest.fixture(scope="module")
def gpu_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 4, "include_dashboard": False})
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def probe_search(cluster, tiny_dataset, tiny_cache_dir, tmp_path, name: str, expected: int, *flags: str) -> list[dict]:
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    barrier = tmp_path / f"barrier-{name}"
    barrier.mkdir()
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    at = argv.index("--max-concurrent")
    del argv[at:at + 2]  # let the GPUs decide
    argv += ["--address", cluster.address, "--num-samples", "8", "--max-epochs", "1", "--name", name,
             "--export-dir", str(tmp_path / f"export-{name}"), *flags]
    fn = functools.partial(gpu_probe, barrier=str(barrier), expected=expected, total_memory_gib=CARD_GIB)
    try:
        assert search.main(argv, trial_fn=fn) == 0
    finally:
        ray.shutdown()
    results = [json.loads(p.read_text().splitlines()[-1]) for p in (tmp_path / "ray" / name).glob("*/result.json")]
    assert len(results) == 8
    return results


def most_at_once(results: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def overlapping_pairs(results: list[dict]) -> list[tuple[dict, dict]]:
    return [(a, b) for i, a in enumerate(results) for b in results[i + 1:]
            if a["start"] < b["end"] and b["start"] < a["end"]]


def test_four_gpus_run_four_trials_at_once_each_on_its_own_gpu(gpu_cluster, tiny_dataset, tiny_cache_dir, tmp_path):
    # No --gpus: auto, on a joined cluster the cluster's four (tuning/engine/launch.settle_gpus).
    results = probe_search(gpu_cluster, tiny_dataset, tiny_cache_dir, tmp_path, "whole", 4)
    assert most_at_once(results) == 4
    pairs = overlapping_pairs(results)
    assert len(pairs) >= 6 and all(a["gpu_ids"] != b["gpu_ids"] for a, b in pairs)  # never two on one GPU
    for r in results:
        assert r["visible"] == r["gpu_ids"]  # CUDA_VISIBLE_DEVICES holds the trial's GPU only
        assert r["device"] == "cuda:0" and r["memory_fraction"] == 1.0 and r["cache_gib"] == 8.0


def test_half_a_gpu_per_trial_runs_eight_sharing_in_pairs_with_capped_memory(gpu_cluster, tiny_dataset,
                                                                               tiny_cache_dir, tmp_path):
    results = probe_search(gpu_cluster, tiny_dataset, tiny_cache_dir, tmp_path, "half", 8,
                           "--gpus", "4", "--gpus-per-trial", "0.5")
    assert most_at_once(results) == 8  # all at once, so each GPU holds two of them
    assert sorted(Counter(r["gpu_ids"] for r in results).values()) == [2, 2, 2, 2]
    for r in results:
        assert r["device"] == "cuda:0" and r["memory_fraction"] == 0.5
        # a quarter of its 20 GiB share less the CUDA context's allowance, not the default 8
        assert r["cache_gib"] == pytest.approx((CARD_GIB * 0.5 - CUDA_CONTEXT_ALLOWANCE_GIB) / 4)


def test_a_trial_that_no_node_can_hold_fails_before_any_trial_starts():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    launch.check_fits_one_node(8, 1, nodes)
    with pytest.raises(UserError, match=r"--cpus-per-trial 16 --gpus-per-trial 0: no node .* 8 CPU/1 GPU"):
        launch.check_fits_one_node(16, 0, nodes)  # 16 CPUs in the cluster, but never on one node
    with pytest.raises(UserError, match="no node"):  # the GPU and the CPUs must be on the same node
        launch.check_fits_one_node(2, 1, [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}])


def test_more_than_one_gpu_per_trial_is_refused_with_the_reason(tiny_dataset, tiny_cache_dir, tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n")
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    with pytest.raises(UserError, match="a trial trains on one GPU"):
        search.main([*argv, "--gpus", "4", "--gpus-per-trial", "2"])
