"""A finished 2-trial search grown to 4 with `--resume --num-samples 4` (tuning/sweep/grow.py): the new trials
run from the same study and meet the old trials' values at ASHA's rung; the old trials are left as they were.

Real Ray, real Tuner, trials scripted by tests/stub_trials.scripted; one trial at a time, so ASHA sees them in
a fixed order. The space's four start points are the four curves: a search of 2 evaluates the first two, the
grown one the other two, as a search of 4 would have.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import optuna
import pytest
import ray

from hyperiqa.utils import UserError
from tests.stub_trials import scripted
from tests.test_search_scripted import argv_for, rows, study, trial_ids_by_lr
from tuning.sweep import experiment as search
from tuning.sweep import tuner as tuner_module
from tuning.sweep.plan import load_plan

pytestmark = pytest.mark.timeout(400)

A, B, C, D = repr(1e-3), repr(2e-3), repr(1e-5), repr(3e-3)
# ASHA's only rung is epoch 3 (grace period 3, 4 epochs). C (new) is below the old trials there: stopped.
CURVES = {A: [0.5, 0.6, 0.7, 0.8], B: [0.6, 0.7, 0.75, 0.9], C: [0.1, 0.2, 0.3, 0.4], D: [0.55, 0.65, 0.8, 0.85]}


def _files(experiment: Path, trial_ids) -> dict[str, tuple[int, str]]:
    """{path: (mtime_ns, sha256)} of every file in these trials' folders."""
    out = {}
    for result in experiment.glob("*/result.json"):
        if json.loads(result.read_text().splitlines()[0])["trial_id"] in trial_ids:
            for f in sorted(p for p in result.parent.rglob("*") if p.is_file()):
                out[str(f)] = (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def grown(tiny_dataset, tiny_cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("grown")
    argv = argv_for(root, tiny_dataset, tiny_cache_dir, CURVES, "grown", "--max-epochs", "4", "--grace-period", "3",
                    "--num-samples", "2")
    trial_fn = functools.partial(scripted, curves=CURVES)
    experiment = root / "ray" / "grown"
    try:
        assert search.main(argv, trial_fn=trial_fn) == 0
    finally:
        ray.shutdown()
    old = trial_ids_by_lr(experiment)
    before = _files(experiment, set(old.values()))
    schedulers = []

    def spy(plan):
        schedulers.append(make_scheduler(plan))
        return schedulers[-1]

    make_scheduler = tuner_module.make_scheduler
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuner_module, "make_scheduler", spy)
        try:  # the whole first command line again, as a user repeats it: the unchanged flags are accepted
            assert search.main([*argv, "--resume", "--num-samples", "4"], trial_fn=trial_fn) == 0
        finally:
            ray.shutdown()
    return {"root": root, "argv": argv, "experiment": experiment, "old": old, "before": before,
            "scheduler": schedulers[-1]}


def test_a_grown_search_runs_the_missing_trials_and_exports_all_of_them(grown):
    ids = trial_ids_by_lr(grown["experiment"])
    assert set(ids) == set(CURVES) and {ids[A], ids[B]} == set(grown["old"].values())
    trials = rows(grown["root"] / "export")
    assert set(trials) == set(ids.values())
    # C met A's 0.7 and B's 0.75 at the rung (epoch 3): stopped there, as in one search of 4 trials. In a
    # search started anew it would have been the first at an empty rung and run all 4 epochs.
    assert trials[ids[C]]["ended"] == "stopped by ASHA" and trials[ids[C]]["epochs_run"] == "3"
    assert trials[ids[D]]["ended"] == trials[ids[A]]["ended"] == "completed"
    assert grown["scheduler"].rungs()[3] == {ids[A]: 0.7, ids[B]: 0.75, ids[C]: 0.3, ids[D]: 0.8}
    metrics = json.loads((grown["root"] / "export" / "metrics.json").read_text())
    assert (metrics["trial"], metrics["epoch"], metrics["val_srcc"]) == (ids[B], 4, 0.9)
    assert load_plan(str(grown["experiment"])).num_samples == 4  # a later --resume or export knows it


def test_the_new_trials_were_asked_from_the_study_that_holds_the_old_ones(grown):
    ids = trial_ids_by_lr(grown["experiment"])
    trials = sorted(study(grown["experiment"]).trials, key=lambda t: t.number)
    assert [t.user_attrs["ray_trial_id"] for t in trials] == [ids[A], ids[B], ids[C], ids[D]]
    assert [t.value for t in trials] == [0.8, 0.9, 0.3, 0.85]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_the_old_trials_were_not_rerun_and_their_folders_are_unchanged(grown):
    after = _files(grown["experiment"], set(grown["old"].values()))
    assert after == grown["before"] and len(after) > 4


def test_a_search_flag_that_cannot_change_is_refused_in_one_line(grown, capsys):
    for flags, named in ((["--max-epochs", "5"], "--max-epochs 5"), (["--metric", "test_srcc"], "--metric test_srcc"),
                         (["--set", "lr_ratio=5"], "--set lr_ratio=5")):
        with pytest.raises(UserError) as exc_info:
            search.main([*grown["argv"], "--resume", "--num-samples", "6", *flags])
        message = str(exc_info.value)
        assert message.startswith(f"--resume: {named} differs from the search's ") and "\n" not in message
    assert not ray.is_initialized() and load_plan(str(grown["experiment"])).num_samples == 4


def test_a_num_samples_at_the_trials_run_has_nothing_to_add_and_reexports(grown, capsys):
    (grown["root"] / "export" / "trials.csv").unlink()  # as if the search had been killed before its export
    try:
        assert search.main(["--resume", "--storage-path", str(grown["root"] / "ray"), "--name", "grown",
                            "--num-samples", "4"], trial_fn=functools.partial(scripted, curves=CURVES)) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "--num-samples 4: grown already has a budget of 4 trials; nothing to add" in out
    assert "search finished" in out and len(list(grown["experiment"].glob("*/result.json"))) == 4
    assert len(rows(grown["root"] / "export")) == 4 and load_plan(str(grown["experiment"])).num_samples == 4
