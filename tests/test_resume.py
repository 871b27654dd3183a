"""A scripted search killed mid-way and continued with --resume: ASHA's rungs, the Optuna study, the MLflow
runs and the kept checkpoints all go on from where the killed search left them.

One kill-and-resume carries every check: each of them needs the same two driver starts, the costliest thing
a test here does. Real Ray, real Tuner; the trials follow tests/stub_trials.scripted and write checkpoint
files of a few KB (tests/test_retention.FILES).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray

from hyperiqa.checkpoint import TRAINER_STATE, WEIGHTS
from tests.stub_trials import PAUSED_PREFIX, kill_paused, scripted
from tests.test_retention import FILES, stored
from tests.test_search import ROOT
from tests.test_search_scripted import DRIVER, _snapshot_has_checkpoint, argv_for, rows, trial_ids_by_lr
from tuning.engine import ray_private, retention, tracking
from tuning.sweep import tuner as tuner_module
from tuning.sweep.plan import load_plan

pytestmark = pytest.mark.timeout(600)

GOOD, BAD = repr(1e-3), repr(1e-6)
# One trial at a time: GOOD runs to the end, then BAD pauses after epoch 2, one epoch before ASHA's only rung
# (grace period 3), and the driver is killed there.
CURVES = {GOOD: [0.5, 0.6, 0.7, 0.8], BAD: [0.1, 0.2, 0.3, 0.4]}
PAUSED_AFTER = 2


def kill_then_resume(tmp_path: Path, argv: list[str], pause: Path, experiment: Path) -> dict:
    """Run the scripted search in a driver process; once BAD waits after PAUSED_AFTER epochs and the driver has
    processed that checkpoint, SIGKILL the driver and the paused worker; then finish the search with --resume.
    Returns the checkpoint files the killed search left (tests/test_retention.stored)."""
    cmd = [sys.executable, "-c", DRIVER]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen([*cmd, json.dumps([argv, CURVES, str(pause), FILES])], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300  # a Ray worker may take minutes to start on a loaded 2-core machine
        while time.monotonic() < deadline and proc.poll() is None and not (
                any(pause.glob(f"{PAUSED_PREFIX}*")) and _bad_checkpoint_processed(experiment)):
            time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # The worker too: released by pause/resumed, it would write the next epoch's checkpoint, and the resumed
        # trial would restore that (the newest whole folder) instead of continuing from the kill.
        kill_paused(pause)
    assert _bad_checkpoint_processed(experiment), (tmp_path / "run1.log").read_text()[-3000:]
    killed = stored(experiment)
    (pause / "resumed").touch()  # only the resumed run's trials see it
    resumed = subprocess.run([*cmd, json.dumps([[*argv, "--resume"], CURVES, str(pause), FILES])], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return killed


def _bad_checkpoint_processed(experiment: Path) -> bool:
    """BAD's checkpoint of epoch PAUSED_AFTER is stored, the driver has processed it (BAD's older checkpoints
    hold no optimizer state any more) and Ray's snapshot (what --resume reads) knows a checkpoint of BAD."""
    kept = stored(experiment).get(trial_ids_by_lr(experiment).get(BAD), {})
    processed = PAUSED_AFTER in kept and all(TRAINER_STATE not in f for e, f in kept.items() if e != PAUSED_AFTER)
    return processed and _snapshot_has_checkpoint(experiment, BAD)


@pytest.fixture(scope="module")
def resumed(tiny_dataset, tiny_cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resumed")
    pause = root / "pause"
    pause.mkdir()
    (pause / "pause.json").write_text(json.dumps({BAD: PAUSED_AFTER}))
    urls = {"mlflow": f"sqlite:///{root}/mlflow.db", "optuna": f"sqlite:///{root}/study.db"}
    argv = argv_for(root, tiny_dataset, tiny_cache_dir, CURVES, "resumed", "--max-epochs", "4",
                    "--grace-period", "3", "--reduction-factor", "2", "--keep-checkpoints", "best",
                    "--log-to", "mlflow", "--mlflow-uri", urls["mlflow"], "--optuna-storage", urls["optuna"])
    experiment = root / "ray" / "resumed"
    killed = kill_then_resume(root, argv, pause, experiment)
    return {"root": root, "experiment": experiment, "urls": urls, "ids": trial_ids_by_lr(experiment),
            "trials": rows(root / "export"), "killed": killed}


def test_a_resumed_trial_below_a_restored_rung_is_stopped_there(resumed):
    ids, trials = resumed["ids"], resumed["trials"]
    # At epoch 3 (the rung) the resumed trial's 0.3 is below the finished trial's 0.7: stopped there.
    # Before the rungs were replayed it was the first arrival at an empty rung and ran all 4 epochs.
    assert trials[ids[BAD]]["ended"] == "stopped by ASHA" and trials[ids[BAD]]["epochs_run"] == "3"
    assert trials[ids[GOOD]]["ended"] == "completed"


def test_a_resumed_search_recomputes_its_concurrency_for_the_cluster_it_resumes_on(resumed):
    ids = resumed["ids"]
    plan = dataclasses.replace(load_plan(str(resumed["experiment"])), max_concurrent=None)
    ray.init(address="local", num_cpus=3, include_dashboard=False)  # not a Ray another run left here
    try:
        tuner = tuner_module.restore_tuner(plan, fn=functools.partial(scripted, curves=CURVES))
        config = ray_private.restored_tune_config(tuner)
        # 3 CPUs, 2 trials (the run was created with 1): the limiter Ray restores gets it, not its saved 1
        assert config.search_alg.searcher.max_concurrent == 2 and config.max_concurrent_trials is None
        assert config.scheduler.rungs()[3] == {ids[GOOD]: 0.7, ids[BAD]: 0.3}
    finally:
        ray.shutdown()


def test_the_resumed_trial_continued_from_its_latest_checkpoint_which_kept_its_optimizer_state(resumed):
    ids, killed = resumed["ids"], resumed["killed"]
    # Killed while BAD ran: its newest checkpoint has both files, the older one no optimizer state; GOOD had
    # ended, so it kept its best epoch's weights only.
    assert killed[ids[BAD]][PAUSED_AFTER] == set(FILES) and killed[ids[BAD]][1] <= {WEIGHTS}
    assert killed[ids[GOOD]][4] == {WEIGHTS} and all(not f for e, f in killed[ids[GOOD]].items() if e != 4)
    path = Path(retention.trial_paths(str(resumed["experiment"]))[ids[BAD]])
    epochs = [json.loads(line)["epoch"] for line in (path / "result.json").read_text().splitlines()]
    assert epochs[-1] == 3 and 1 not in epochs[PAUSED_AFTER:]  # continued, not restarted
    final = stored(resumed["experiment"])[ids[BAD]]  # ended: its best epoch's weights, nothing else
    assert final[3] == {WEIGHTS} and all(not files for epoch, files in final.items() if epoch != 3)
    metrics = json.loads((resumed["root"] / "export" / "metrics.json").read_text())
    assert (metrics["trial"], metrics["epoch"], metrics["val_srcc"]) == (ids[GOOD], 4, 0.8)


def test_resume_continues_the_optuna_study_and_the_mlflow_runs(resumed):
    import mlflow

    urls, trials = resumed["urls"], resumed["trials"]
    # One Optuna trial per Ray trial, each finished with the trial's best value: the resumed trial's
    # epoch 3 went to the trial asked before the kill.
    study = optuna.load_study(study_name="resumed", storage=urls["optuna"])
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray) == set(trials) and len(study.trials) == len(trials)
    for trial, t in by_ray.items():
        assert t.value == pytest.approx(float(trials[trial]["best_val_srcc"]))
    assert by_ray[resumed["ids"][GOOD]].state == optuna.trial.TrialState.COMPLETE
    assert sorted(t.value for t in study.trials) == [0.3, 0.8]
    bad = by_ray[resumed["ids"][BAD]]
    assert bad.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    # One MLflow run per trial: the resumed trial logged on to the run it had.
    mlflow.set_tracking_uri(urls["mlflow"])
    runs = mlflow.search_runs(experiment_names=["resumed"])
    assert sorted(runs[f"tags.{tracking.TRIAL_TAG}"]) == sorted(trials)
    assert set(runs["status"]) == {"FINISHED"}
    run_id = runs.loc[runs[f"tags.{tracking.TRIAL_TAG}"] == resumed["ids"][BAD], "run_id"].item()
    history = mlflow.MlflowClient(urls["mlflow"]).get_metric_history(run_id, "val_srcc")
    assert sorted(m.value for m in history) == pytest.approx([0.1, 0.2, 0.3])
