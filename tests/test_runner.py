"""The fixed-configuration runner (shared by ablate.py and confirm.py): every run at full budget on Ray,
the same numbers as training the configuration without Ray, and a description that --resume reloads."""

from __future__ import annotations

import math

import pytest
import ray

from hyperiqa.solver import Solver
from tuning.engine import runner
from tuning.engine.experiment_folder import ABLATION
from tuning.engine.options import Resources

pytestmark = pytest.mark.timeout(300)


def args_for(tmp_path, **changes) -> runner.RunOptions:
    values = dict(resources=Resources(0.0, 0.0, 1.0, 2), name="runs", storage_path=str(tmp_path / "ray"),
                  out=str(tmp_path / "out"))
    return runner.RunOptions(**{**values, **changes})


def test_runs_report_every_epoch_and_match_training_without_ray(tiny_cfg, tmp_path):
    configs = {"lr-high": tiny_cfg(epochs=2, backbone_lr=2e-3), "lr-low": tiny_cfg(epochs=2, backbone_lr=1e-5)}
    runs = [(run_id, {"variant": run_id}, cfg) for run_id, cfg in configs.items()]
    runset = runner.make_runset("ablate", runs, args_for(tmp_path), metric="val_srcc", default_name="x")
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # not a Ray another run left here
    try:
        curves, interrupted = runner.execute(runset)
    finally:
        ray.shutdown()
    assert runner.load_runset(runset.experiment_path, ABLATION) == runset and interrupted is False
    assert [m["epoch"] for m in curves["lr-high"]] == [1, 2] and len(curves["lr-low"]) == 2
    # The runner adds nothing to the training: the same configuration without Ray gives the same numbers.
    alone = list(Solver(configs["lr-high"].replace(num_threads=1), log=lambda *_: None).epochs())
    for ray_epoch, plain_epoch in zip(curves["lr-high"], alone):
        for key in ("val_srcc", "test_srcc", "train_loss"):
            a, b = ray_epoch[key], plain_epoch[key]
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), key


def test_run_ids_must_be_unique_and_paths_become_absolute(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(epochs=1, cache_dir="relative-cache")
    runset = runner.make_runset("confirm", [("a", {}, cfg)], args_for(tmp_path, storage_path="ray", out=None),
                                metric="val_srcc", default_name="x")
    assert runset.runs[0]["config"]["cache_dir"] == str(tmp_path / "relative-cache")
    assert runset.storage_path == str(tmp_path / "ray") and runset.out_dir == str(tmp_path / "confirm_results" / "runs")
    assert runset.runs[0]["config"]["device"] == "cpu" and runset.runs[0]["config"]["num_threads"] == 1
    with pytest.raises(ValueError, match="unique"):
        runner.make_runset("confirm", [("a", {}, cfg), ("a", {}, cfg)], args_for(tmp_path), metric="val_srcc",
                           default_name="x")
