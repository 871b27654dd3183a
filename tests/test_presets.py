"""Datasets with a preset (demo, photos): every CLI starts from the preset's configuration without
--data-root, and the photos miniature searches and ablates what README "Why the first epoch was best"
says it does. Nothing is trained or generated here."""

from __future__ import annotations

import argparse

import pytest

from hyperiqa.config import PRESETS, TrainConfig, demo_config, photos_config

FIVE = {"backbone_lr", "lr_ratio", "weight_decay", "schedule", "frozen_stages"}


def test_photos_config_is_the_papers_optimisation_on_a_pretrained_backbone():
    cfg = photos_config()
    assert (cfg.dataset, cfg.backbone, cfg.pretrained, cfg.frozen_stages) == ("photos", "tf_efficientnet_lite0",
                                                                             True, 0)
    paper = TrainConfig()  # the defaults are the paper's configuration
    assert (cfg.optimizer, cfg.backbone_lr, cfg.lr_ratio, cfg.weight_decay, cfg.schedule, cfg.step_factor) == \
        (paper.optimizer, paper.backbone_lr, paper.lr_ratio, paper.weight_decay, paper.schedule, paper.step_factor)
    # two /10 steps at the paper's fractions of the run (6 and 12 of 16 there): 2 and 4 of 6 here
    assert [e for e in range(1, cfg.epochs) if e % cfg.step_size == 0] == [2, 4]
    assert photos_config(epochs=3).epochs == 3 and set(PRESETS.values()) == {demo_config, photos_config}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_cli_starts_from_the_preset_without_a_data_root(name):
    from hyperiqa import train
    from tuning.engine import options

    expected = PRESETS[name]()
    assert options.base_config(name, None, []) == expected
    assert train.resolve_config(train.build_parser().parse_args(["--dataset", name])) == expected


def test_photos_search_defaults_search_all_five_settings(tmp_path, monkeypatch):
    import tuning.sweep.plan as plan_module
    from tuning.sweep.experiment import build_parser, search_flags

    monkeypatch.setattr(plan_module, "check_dataset", lambda cfg: None)  # no images generated here
    plan = plan_module.make_plan(search_flags(build_parser().parse_args(["--dataset", "photos", "--storage-path",
                                                                         str(tmp_path), "--name", "p"])))
    assert plan.space_source.endswith("search_spaces/photos.yaml")
    assert set(plan.space["params"]) >= FIVE
    assert plan.space["params"]["frozen_stages"] == {"type": "int", "low": 0, "high": 4}  # lite0 has 4 stages
    assert (plan.max_epochs, plan.grace_period, plan.num_samples) == (plan_module.PHOTOS_MAX_EPOCHS,
                                                                       plan_module.PHOTOS_GRACE_PERIOD, 8)
    assert plan.base["backbone"] == "tf_efficientnet_lite0" and plan.base["epochs"] == plan.max_epochs
    start = plan.space["start"][0]  # the paper's optimisation first
    assert {k: start[k] for k in ("backbone_lr", "lr_ratio", "weight_decay", "schedule", "frozen_stages")} == \
        {"backbone_lr": 2e-5, "lr_ratio": 10, "weight_decay": 5e-4, "schedule": "step", "frozen_stages": 0}


def test_photos_ablation_runs_its_variants_on_the_preset(monkeypatch):
    from tuning.ablation import experiment as ablate
    from tuning.engine import runner

    args = ablate.build_parser().parse_args(["--dataset", "photos"])
    assert ablate.ablation_base(args) == photos_config(patience=0)
    seen = {}

    def fake_runset(kind, runs, args, **kwargs):
        seen["runs"] = runs
        return argparse.Namespace(experiment_path="/nonexistent/ablation")

    monkeypatch.setattr(runner, "make_runset", fake_runset)
    ablate.new_runset(args)
    assert [labels["variant"] for _, labels, _ in seen["runs"]] == ablate.PHOTOS_VARIANTS * 3
    assert [cfg.legacy for _, _, cfg in seen["runs"][:3]] == [[], ["head_frozen_after_epoch1"], ["all"]]
    ablate.new_runset(ablate.build_parser().parse_args(["--dataset", "photos", "--variants", "fixed,optimizer_reset"]))
    assert [labels["variant"] for _, labels, _ in seen["runs"]] == ["fixed", "optimizer_reset"] * 3
