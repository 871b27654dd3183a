"""Search-space files: validation errors name the file and the key; sampling honours conditions."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from hyperiqa.config import TrainConfig
from tuning.sweep.space import SPACES_DIR, SpaceError, load_space, parse_space

GOOD = {
    "params": {
        "backbone_lr": {"type": "loguniform", "low": 1e-6, "high": 1e-4},
        "schedule": {"type": "choice", "values": ["step", "cosine"]},
        "step_size": {"type": "int", "low": 2, "high": 8, "when": {"schedule": "step"}},
    },
    "start": [{"backbone_lr": 2e-5, "schedule": "step", "step_size": 6}],
}


def _write(tmp_path, data) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return data


@pytest.mark.parametrize("data, key, words", [
    (_with(params__learning_rate={"type": "uniform", "low": 0, "high": 1}), "params.learning_rate",
     "not a TrainConfig field"),
    (_with(params__backbone_lr={"type": "loguniform", "low": 1e-3, "high": 1e-5}), "params.backbone_lr",
     "low (0.001) > high"),
    (_with(params__backbone_lr={"type": "loguniform", "low": 0.0, "high": 1e-4}), "params.backbone_lr.low",
     "log scale"),
    (_with(params__step_size={"type": "int", "low": 0, "high": 4, "log": True}), "params.step_size.low",
     "log scale"),
    (_with(params__backbone_lr={"type": "gaussian", "low": 1, "high": 2}), "params.backbone_lr.type",
     "not a distribution"),
    (_with(params__step_size={"type": "int", "low": 2, "high": 8, "when": {"optimizer": "adam"}}),
     "params.step_size.when.optimizer", "not another parameter"),
    (_with(params__step_size={"type": "int", "low": 2, "high": 8, "when": {"step_size": 4}}),
     "params.step_size.when.step_size", "not another parameter"),
    (_with(params__schedule={"type": "choice", "values": ["step"], "when": {"step_size": 4}}),
     "params: schedule, step_size", "cycle"),
    (_with(params__step_size={"type": "int", "low": 0, "high": 8}), "params.step_size", "step_size = 0"),
    (_with(params__schedule={"type": "choice", "values": ["step", "linear"]}), "params.schedule.values",
     "allowed values"),
    (_with(start=[{"backbone_lr": 1.0, "schedule": "step"}]), "start[0].backbone_lr", "outside the space"),
    (_with(start=[{"backbone_lr": 2e-5, "schedule": "cosine", "step_size": 3}]), "start[0].step_size",
     "only sampled when schedule"),
    (_with(start=[{"momentum": 0.9}]), "start[0].momentum", "not a parameter"),
    (_with(fixed={"backbone": 5}), "fixed", "backbone"),
    (_with(params__backbone_lr={"type": "uniform", "low": 1e-6, "high": 1e-4, "scale": 2}),
     "params.backbone_lr.scale", "unknown key"),
])
def test_space_errors_name_file_and_key(tmp_path, data, key, words):
    path = _write(tmp_path, data)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert path in message and key in message and words in message


def test_unknown_builtin_space_lists_the_builtin_ones():
    with pytest.raises(SpaceError, match="default.*demo|demo.*default"):
        load_space("nonexistent")


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_spaces_load_and_start_points_make_valid_configs(path):
    space = load_space(path.stem)
    for point in space.start:
        cfg = space.config_for(TrainConfig().to_dict(), point)
        assert all(getattr(cfg, k) == v for k, v in point.items())


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_spaces_read_back_from_a_record_with_sorted_keys(path):
    """plan.json records written before the plan kept its order sorted every key: the default space's
    exp_gamma (when schedule) then came before schedule, and its search could not be exported."""
    space = parse_space(json.loads(json.dumps(yaml.safe_load(path.read_text()), sort_keys=True)), source="plan")
    names = [p.name for p in space.params]
    assert sorted(names) == sorted(p.name for p in load_space(path.stem).params)
    assert all(names.index(other) < names.index(p.name) for p in space.params for other, _ in p.when)


def test_default_space_starts_with_the_paper_configuration():
    paper, pyiqa = load_space("default").start
    assert paper == {"backbone_lr": 2e-5, "lr_ratio": 10, "weight_decay": 5e-4, "schedule": "step",
                     "step_size": 6, "frozen_stages": 0, "loss": "l1"}
    # pyiqa's retraining recipe second: the paper's optimiser with a PLCC loss and early LR steps.
    assert pyiqa == {**paper, "step_size": 2, "loss": "plcc"}
    assert load_space("swin").fixed["backbone"] == "swin_tiny_patch4_window7_224"


def test_sampling_honours_conditions_and_start_point():
    space = parse_space(GOOD, source="mem")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(space.start[0])
    seen = []
    for _ in range(30):
        trial = study.ask()
        space(trial)
        seen.append(dict(trial.params))
        study.tell(trial, 0.5)
    assert seen[0] == GOOD["start"][0]
    assert {p["schedule"] for p in seen} == {"step", "cosine"}
    for params in seen:
        assert ("step_size" in params) == (params["schedule"] == "step")
        assert 1e-6 <= params["backbone_lr"] <= 1e-4
        cfg = space.config_for(TrainConfig().to_dict(), params)
        assert cfg.backbone_lr == params["backbone_lr"]


def test_distributions_match_what_the_sampler_records():
    space = parse_space(GOOD, source="mem")
    study = optuna.create_study()
    trial = study.ask()
    space(trial)
    dists = space.distributions()
    for name, dist in trial.distributions.items():
        assert dists[name] == dist
