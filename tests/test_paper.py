"""Where the project claims the paper's setting, it has it: the original's ImageNet weights, and the
paper's protocol (selection on test) training on all non-test data (docs/protocols.md)."""

from __future__ import annotations

import pytest
import timm

from hyperiqa.config import TrainConfig
from hyperiqa.solver import Solver
from hyperiqa.utils import UserError
from tuning.sweep.experiment import build_parser, search_flags
from tuning.sweep.space import load_space


def test_default_and_paper_backbone_are_torchvisions_resnet50_weights():
    # timm's plain `resnet50` resolves to a1_in1k, a different training recipe than the original's.
    assert timm.create_model("resnet50", pretrained=False, features_only=True).pretrained_cfg["tag"] != "tv_in1k"
    for name in (TrainConfig().backbone, load_space("paper").fixed["backbone"]):
        cfg = timm.create_model(name, pretrained=False, features_only=True).pretrained_cfg  # nothing downloaded
        assert (cfg["architecture"], cfg["tag"]) == ("resnet50", "tv_in1k")


def plan_for(tiny_dataset, tiny_cache_dir, tmp_path, *extra):
    from tuning.sweep.plan import make_plan

    options = "{csv: labels.csv, image_column: image, label_column: label, group_column: group}"
    sets = [f"dataset_options={options}", "backbone=test_resnet", "pretrained=false", "patch_size=32",
            f"cache_dir={tiny_cache_dir}", "cache_workers=1"]
    argv = ["--dataset", "csv", "--data-root", str(tiny_dataset), *[a for s in sets for a in ("--set", s)],
            "--storage-path", str(tmp_path), "--name", "plan", *extra]
    return make_plan(search_flags(build_parser().parse_args(argv)))


def test_test_metric_trains_on_all_non_test_data_unless_val_fraction_is_set(tiny_dataset, tiny_cache_dir, tmp_path):
    default_val = TrainConfig().val_fraction
    assert default_val > 0
    assert plan_for(tiny_dataset, tiny_cache_dir, tmp_path).base["val_fraction"] == default_val
    paper = plan_for(tiny_dataset, tiny_cache_dir, tmp_path, "--metric", "test_srcc").base
    assert (paper["val_fraction"], paper["selection_metric"]) == (0.0, "test_srcc")
    assert paper["test_fraction"] == TrainConfig().test_fraction
    chosen = plan_for(tiny_dataset, tiny_cache_dir, tmp_path, "--metric", "test_plcc", "--set", "val_fraction=0.2")
    assert chosen.base["val_fraction"] == 0.2


def test_solver_without_a_val_split_selects_on_test(tiny_cfg):
    solver = Solver(tiny_cfg(epochs=2, val_fraction=0.0, selection_metric="test_srcc"), log=lambda *_: None)
    assert solver.data.val is None and len(solver.data.split.val) == 0
    assert len(solver.data.split.train) == 20  # 5 of the 6 groups: all but the test group
    history = list(solver.epochs())
    assert all(m[f"val_{k}"] is None for m in history for k in ("srcc", "plcc", "krcc", "rmse"))
    assert all(m["test_plcc"] is not None for m in history)
    best = max(range(2), key=lambda i: (history[i]["test_srcc"], -i))  # a tie keeps the earlier epoch
    assert history[-1]["best_epoch"] == best + 1
    assert history[-1]["best_test_srcc"] == history[best]["test_srcc"]
    with pytest.raises(UserError, match="split 'val' has no images"):
        solver.evaluate("val")


def test_asha_first_rung_is_epoch_4_on_the_demo_and_max_epochs_over_8_elsewhere(tiny_dataset, tiny_cache_dir,
                                                                                 tmp_path, monkeypatch):
    import tuning.sweep.plan as plan_module

    # 16 epochs (the TrainConfig default) on a real-data reader: max(1, 16 // 8)
    assert plan_for(tiny_dataset, tiny_cache_dir, tmp_path).grace_period == 2
    assert plan_for(tiny_dataset, tiny_cache_dir, tmp_path, "--grace-period", "5").grace_period == 5
    # the demo (bench/search_quality.py: its first epochs from random init do not rank trials)
    monkeypatch.setattr(plan_module, "check_dataset", lambda cfg: None)  # no images generated here
    argv = ["--storage-path", str(tmp_path), "--name", "demo-plan"]
    assert plan_module.make_plan(search_flags(build_parser().parse_args(argv))).grace_period == plan_module.DEMO_GRACE_PERIOD == 4
    short = plan_module.make_plan(search_flags(build_parser().parse_args([*argv, "--max-epochs", "3"])))
    assert short.grace_period == 3  # never past the last epoch
