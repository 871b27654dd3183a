"""End-to-end: one tiny search, killed mid-way and resumed, then exported. Several checks share it.

Trials run one at a time (--max-concurrent 1) so that ASHA sees them in a fixed order: the start
points put a slow learner after a fast one, so the first rung stops at least one trial.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hyperiqa.checkpoint import METRICS, TRAINER_STATE, WEIGHTS, load_weights
from hyperiqa.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(420)

SPACE = {
    "params": {
        "backbone_lr": {"type": "loguniform", "low": 1.0e-6, "high": 3.0e-3},
        "schedule": {"type": "choice", "values": ["cosine", "step"]},
        "step_size": {"type": "int", "low": 1, "high": 2, "when": {"schedule": "step"}},
    },
    "start": [{"backbone_lr": 2.0e-3, "schedule": "cosine"},
              {"backbone_lr": 1.0e-6, "schedule": "step", "step_size": 1},
              {"backbone_lr": 1.0e-3, "schedule": "step", "step_size": 2}],
}
NUM_TRIALS, MAX_EPOCHS = 3, 3


def search_argv(tiny_dataset, tiny_cache_dir, root: Path) -> list[str]:
    options = "{csv: labels.csv, image_column: image, label_column: label, group_column: group}"
    sets = [f"dataset_options={options}", "backbone=test_resnet", "pretrained=false", "patch_size=32",
            "train_patches=4", "test_patches=2", "batch_size=8", "eval_batch_size=16", "lr_ratio=10",
            "val_fraction=0.2", "test_fraction=0.2", f"cache_dir={tiny_cache_dir}", "cache_workers=1"]
    return [sys.executable, str(ROOT / "tuning" / "search.py"), "--dataset", "csv", "--data-root", str(tiny_dataset),
            *[a for s in sets for a in ("--set", s)], "--space", str(root / "space.yaml"),
            "--num-samples", str(NUM_TRIALS), "--max-epochs", str(MAX_EPOCHS), "--grace-period", "1",
            "--reduction-factor", "2", "--patience", "0", "--max-concurrent", "1", "--seed", "0",
            "--storage-path", str(root / "ray"), "--name", "e2e", "--export-dir", str(root / "export"),
            "--no-dashboard"]  # tests/test_ports.py starts one; here it would cost each search 3 CPU-seconds


def results_per_trial(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for path in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out


def ray_statuses(experiment: Path) -> dict[str, str]:
    from ray import tune

    return {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(experiment)).trials}


@pytest.fixture(scope="module")
def search(tiny_dataset, tiny_cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    argv = search_argv(tiny_dataset, tiny_cache_dir, root)
    experiment = root / "ray" / "e2e"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # 1. Run until the last trial has reported once, then kill the driver and every Ray process it started.
    with open(root / "run1.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and len(results_per_trial(experiment)) < 3:
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(results_per_trial(experiment)) >= 3, (root / "run1.log").read_text()[-3000:]
    before = {"status": ray_statuses(experiment), "results": results_per_trial(experiment)}
    # 2. Resume: finished trials stay as they are, the rest continue, the export covers all.
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"root": root, "experiment": experiment, "export": root / "export", "before": before,
            "after": results_per_trial(experiment), "stdout": resumed.stdout}


def trials_csv(search) -> list[dict]:
    import csv

    with open(search["export"] / "trials.csv") as fh:
        return list(csv.DictReader(fh))


def test_asha_stopped_at_least_one_trial(search):
    rows = trials_csv(search)
    assert len(rows) == NUM_TRIALS
    assert sum(r["ended"] == "stopped by ASHA" for r in rows) >= 1, rows
    assert all(r["ended"] in ("completed", "stopped by ASHA", "stopped for decline", "diverged") for r in rows)
    # The paper-style start points are evaluated first, in order.
    first = sorted(search["after"].values(), key=lambda lines: lines[0]["timestamp"])[0]
    assert first[0]["config"]["backbone_lr"] == SPACE["start"][0]["backbone_lr"]


def test_export_holds_the_best_epoch_and_it_reevaluates_to_its_metrics(search):
    from hyperiqa.solver import Solver

    export = search["export"]
    metrics = json.loads((export / "metrics.json").read_text())
    best_row = trials_csv(search)[0]  # best first
    assert metrics["trial"] == best_row["trial"] and metrics["epoch"] == int(best_row["best_epoch"])
    scores = [line["val_srcc"] for lines in search["after"].values() for line in lines
              if line["val_srcc"] is not None and math.isfinite(line["val_srcc"])]
    assert metrics["val_srcc"] == pytest.approx(max(scores), abs=1e-9)
    trial_scores = {line["epoch"]: line["val_srcc"] for line in search["after"][metrics["trial"]]}
    assert trial_scores[metrics["epoch"]] == pytest.approx(metrics["val_srcc"], abs=1e-9)
    # The weights of that epoch (--keep-checkpoints best, the default, keeps no optimizer state there).
    assert json.loads((export / "checkpoint" / METRICS).read_text())["epoch"] == metrics["epoch"]
    assert not (export / "checkpoint" / TRAINER_STATE).exists()
    cfg = TrainConfig.load(export / "best_config.yaml").replace(device="cpu")
    solver = Solver(cfg, log=lambda *a: None)
    solver.model.load_state_dict(load_weights(export / "checkpoint" / WEIGHTS))
    assert solver.evaluate("val")["srcc"] == pytest.approx(metrics["val_srcc"], abs=1e-5)


def test_best_config_is_the_best_trials_full_config(search):
    cfg = TrainConfig.load(search["export"] / "best_config.yaml")
    metrics = json.loads((search["export"] / "metrics.json").read_text())
    for key, value in metrics["params"].items():
        assert getattr(cfg, key) == pytest.approx(value)
    assert (cfg.dataset, cfg.backbone, cfg.epochs, cfg.device) == ("csv", "test_resnet", MAX_EPOCHS, "auto")


def test_resume_keeps_finished_trials_and_continues_the_rest(search):
    before, after = search["before"], search["after"]
    assert set(before["results"]) <= set(after) and len(after) == NUM_TRIALS
    finished = [t for t, s in before["status"].items() if s == "TERMINATED"]
    assert finished, before["status"]
    for trial in finished:  # not run again: no new results
        assert len(after[trial]) == len(before["results"][trial])
    for trial, lines in after.items():  # nobody restarted from scratch, no epoch missing
        epochs = [line["epoch"] for line in lines]
        assert epochs[0] == 1 and set(epochs) == set(range(1, max(epochs) + 1)), (trial, epochs)
        # an epoch reported twice (a resumed trial catching Ray up) is one the driver had already seen
        assert len(epochs) - len(set(epochs)) <= 2, (trial, epochs)
    unfinished = [t for t, s in before["status"].items() if s != "TERMINATED"]
    continued = [t for t in unfinished if len(after[t]) > len(before["results"].get(t, []))
                 and before["results"].get(t)]
    for trial in continued:
        log = next(search["experiment"].glob(f"*{trial}*/train.log")).read_text()
        assert "resumed from" in log


def test_export_folder_is_complete(search):
    export = search["export"]
    for name in ("best_config.yaml", "checkpoint/model.safetensors", "metrics.json", "trials.csv", "curves.png",
                 "importance.json", "summary.md"):
        assert (export / name).is_file(), name
    importance = json.loads((export / "importance.json").read_text())
    assert set(importance["importances"]) <= {"backbone_lr", "schedule", "step_size"}
    assert "next steps" in search["stdout"] and "best_val_srcc" in search["stdout"]


def test_the_resumed_search_ended_with_a_progress_line(search):
    # tuning/engine/progress.py: the resumed run got its own line (the 60 s ones need a longer search)
    found = re.findall(r"progress: 3/3 trials finished, 0 running, 0 pending; (\d+) epochs done of at most (\d+); "
                       r"elapsed \S+; done", search["stdout"])
    epochs = sum(int(row["epochs_run"]) for row in trials_csv(search))
    assert found == [(str(epochs), str(epochs))], search["stdout"][-3000:]


def test_reexport_from_the_experiment_path(search, tmp_path):
    from tuning.sweep.export_folder import export_experiment

    result = export_experiment(str(search["experiment"]), str(tmp_path / "again"), log=lambda *a: None,
                               formats=["onnx"])
    assert (tmp_path / "again" / "trials.csv").read_text() == (search["export"] / "trials.csv").read_text()
    assert result.best is not None
    assert (tmp_path / "again" / "hyperiqa.onnx").is_file()
    assert "importance.json, hyperiqa.onnx." in (tmp_path / "again" / "summary.md").read_text()


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path):
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("params: {learning_rate: {type: uniform, low: 0, high: 1}}\n")
    for args, words in ((["--set", "bogus=1"], "unknown key 'bogus'"),
                        (["--space", str(bad_space)], "learning_rate"),
                        (["--gpus-per-trial", "0.5"], "needs --gpus")):
        proc = subprocess.run([sys.executable, "-m", "tuning.search", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
