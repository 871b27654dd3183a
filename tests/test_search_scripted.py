"""Searches whose trials follow a script (tests/stub_trials.scripted): what ASHA, Optuna and the export
do with a resumed experiment and with trials that diverge. Real Ray, real Tuner, no training."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
import yaml

from hyperiqa.utils import UserError
from tests.stub_trials import failing, scripted
from tests.test_search import ROOT, search_argv
from tuning.engine import progress
from tuning.sweep import experiment as search
from tuning.sweep import trials_report as report
from tuning.sweep.export_folder import ExportResult
from tuning.sweep.optuna_search import BestValueOptunaSearch

pytestmark = pytest.mark.timeout(400)

# A search driver in a process of its own (to be killed or sent Ctrl-C): argv, curves, pause_dir and the
# checkpoint files of tests/stub_trials.scripted, as one JSON argument.
DRIVER = """
import functools, json, sys
from tests.stub_trials import scripted
from tuning.sweep import experiment as search
argv, curves, pause_dir, files = json.loads(sys.argv[1])
sys.exit(search.main(argv, trial_fn=functools.partial(scripted, curves=curves, pause_dir=pause_dir, files=files)))
"""


def space_for(curves: dict) -> dict:
    """One trial per curve, in order: the start points are evaluated first."""
    lrs = [float(k) for k in curves]
    return {"params": {"backbone_lr": {"type": "choice", "values": lrs}}, "start": [{"backbone_lr": lr} for lr in lrs]}


def argv_for(root: Path, tiny_dataset, tiny_cache_dir, curves: dict, name: str, *flags: str) -> list[str]:
    (root / "space.yaml").write_text(yaml.safe_dump(space_for(curves)))
    argv = search_argv(tiny_dataset, tiny_cache_dir, root)[2:]
    return [*argv, "--num-samples", str(len(curves)), "--name", name, *flags]


def rows(export: Path) -> dict[str, dict]:
    with open(export / "trials.csv") as fh:
        return {r["trial"]: r for r in csv.DictReader(fh)}


def trial_ids_by_lr(experiment: Path) -> dict[str, str]:
    out = {}
    for path in experiment.glob("*/result.json"):
        first = json.loads(path.read_text().splitlines()[0])
        out[repr(first["config"]["backbone_lr"])] = first["trial_id"]
    return out


def study(experiment: Path) -> optuna.Study:
    searcher = BestValueOptunaSearch()
    searcher.restore_from_dir(str(experiment))
    return searcher._ot_study


def _snapshot_has_checkpoint(experiment: Path, lr: str) -> bool:
    """Ray's experiment snapshot (what --resume reads) knows a checkpoint of the trial with this lr."""
    if not any(experiment.glob("experiment_state-*.json")):
        return False
    from ray import tune

    try:
        analysis = tune.ExperimentAnalysis(str(experiment))
    except Exception:  # written while we read it
        return False
    return any(repr(t.config.get("backbone_lr")) == lr and t.checkpoint is not None for t in analysis.trials)


def run_scripted_search(tmp_path, tiny_dataset, tiny_cache_dir, curves: dict, name: str) -> Path:
    """A 4-epoch search without early stopping whose trials follow `curves`; returns the experiment path."""
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, curves, name, "--max-epochs", "4", "--grace-period", "4")
    try:
        assert search.main(argv, trial_fn=functools.partial(scripted, curves=curves)) == 0
    finally:
        ray.shutdown()
    return tmp_path / "ray" / name


def test_diverged_trials_rank_by_their_best_finite_epoch_and_optuna_learns_best_values(
        tiny_dataset, tiny_cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "DEFAULT_INTERVAL_S", 0)  # a progress line at every step of Tune's loop
    # 1e-3 also has the original's shape (best at epoch 1, then falling): the only trial with 4 epochs.
    curves = {repr(1e-3): [0.8, 0.7, 0.65, 0.6], repr(1e-4): [0.6, 0.9, math.nan], repr(1e-5): [0.4, math.nan]}
    experiment = run_scripted_search(tmp_path, tiny_dataset, tiny_cache_dir, curves, "mixed")
    ids = trial_ids_by_lr(experiment)
    trials = rows(tmp_path / "export")
    assert [trials[ids[k]]["ended"] for k in curves] == ["completed", "diverged", "diverged"]
    # The best trial diverged after its best epoch: exported anyway (Ray's own max is NaN for it).
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert (metrics["trial"], metrics["epoch"], metrics["val_srcc"]) == (ids[repr(1e-4)], 2, 0.9)
    by_number = {t.number: t for t in study(experiment).trials}
    values = {lr: by_number[i].value for i, lr in enumerate(curves)}
    states = {lr: by_number[i].state for i, lr in enumerate(curves)}
    assert values[repr(1e-3)] == 0.8  # its best, not its last (0.6)
    assert states[repr(1e-4)] == states[repr(1e-5)] == optuna.trial.TrialState.PRUNED
    out = capsys.readouterr().out
    assert "diverged at epoch 3" in out
    # tuning/engine/progress.py: a line with an estimate once a running trial has reported an epoch (Tune
    # handles one result per step), and the last one
    assert re.search(r"^progress: [0-2]/3 trials finished, 1 running, [0-2] pending; \d+ epochs done of at most "
                     r"\d+; elapsed \w+; ETA about \w+$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^progress: 3/3 trials finished, 0 running, 0 pending; (\d+) epochs done of at most \1; "
                     r"elapsed \w+; done$", out, re.MULTILINE), out[-3000:]
    # The early peak: flagged for that trial only (the others ran fewer than 4 epochs), and it is 1 of 1.
    assert [trials[ids[k]]["early_peak"] for k in curves] == ["true", "false", "false"]
    assert "warning: Early peak, then decline in 1 of the 1 trials" in out
    summary = (tmp_path / "export" / "summary.md").read_text()
    assert f"- trial {ids[repr(1e-3)]}: early peak, then decline: val_srcc 0.8000 at epoch 1 of 4" in summary
    assert "> **Warning:** Early peak, then decline in 1 of the 1 trials" in summary


def test_a_search_in_which_every_trial_diverges_exports_its_best_finite_epoch(tiny_dataset, tiny_cache_dir,
                                                                              tmp_path, capsys):
    curves = {repr(1e-3): [0.5, 0.7, math.nan], repr(1e-4): [0.6, math.nan]}
    run_scripted_search(tmp_path, tiny_dataset, tiny_cache_dir, curves, "diverged")
    out = capsys.readouterr().out
    assert "every trial diverged" in out and "Traceback" not in out
    trials = rows(tmp_path / "export")
    assert {r["ended"] for r in trials.values()} == {"diverged"}
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert (metrics["epoch"], metrics["val_srcc"]) == (2, 0.7)


def test_a_search_in_which_every_trial_failed_to_start_exits_1_naming_the_first_reason(
        tiny_dataset, tiny_cache_dir, tmp_path, capsys):
    curves = {repr(1e-3): [0.5], repr(1e-4): [0.6]}
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, curves, "failed", "--max-epochs", "1", "--grace-period", "1")
    try:
        code = search.main(argv, trial_fn=failing)
    finally:
        ray.shutdown()
    out, err = capsys.readouterr()
    assert code == 1
    first = next(iter(rows(tmp_path / "export")))  # trials.csv: the table the summary printed, same order
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "every trial failed to start (2 of 2)" in lines[0]
    assert "refused by the stub" in lines[0] and first in out
    assert {r["ended"] for r in rows(tmp_path / "export").values()} == {report.FAILED}  # exported all the same


def test_a_search_stopped_with_ctrl_c_exports_what_it_has_says_how_to_continue_and_exits_130(
        tiny_dataset, tiny_cache_dir, tmp_path):
    first, second = repr(1e-3), repr(1e-4)
    curves = {first: [0.5, 0.6], second: [0.4, 0.5]}
    pause = tmp_path / "pause"
    pause.mkdir()
    (pause / "pause.json").write_text(json.dumps({first: 1}))  # waits after epoch 1 until the test is done
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, curves, "stopped", "--max-epochs", "2",
                    "--grace-period", "2")
    experiment = tmp_path / "ray" / "stopped"
    cmd = [sys.executable, "-c", DRIVER, json.dumps([argv, curves, str(pause), None])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not _snapshot_has_checkpoint(experiment, first):
            time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole foreground group
        out, _ = proc.communicate(timeout=180)
    finally:
        (pause / "resumed").touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    assert "search interrupted" in out
    hint = next(line for line in out.splitlines() if line.startswith("continue it with: "))
    assert shlex.split(hint.partition(": ")[2])[-4:] == ["--storage-path", str(tmp_path / "ray"), "--name", "stopped"]
    # The paused trial, and the second one if Optuna had proposed it yet (one trial runs at a time).
    trials = rows(tmp_path / "export")
    assert {r["ended"] for r in trials.values()} == {report.UNFINISHED}
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert (metrics["epoch"], metrics["val_srcc"]) == (1, 0.5)  # the paused trial's epoch, exported


SPACED = "/tmp/my searches"


def _summary_of_a_search(capsys, **interrupted) -> str:
    plan = SimpleNamespace(experiment_path=f"{SPACED}/ray/run 1", metric="val_srcc")
    row = report.make_row("t1", {}, "RUNNING", [{"epoch": 1, "val_srcc": 0.5, "status": "running"}], "val_srcc", 3)
    result = ExportResult(Path(f"{SPACED}/exports/run 1"), [row], row, report.table([row], "val_srcc", []))
    search._print_summary(plan, result, 1.0, **interrupted)
    return capsys.readouterr().out


def test_the_printed_commands_paste_into_a_shell_with_spaces_in_paths(capsys):
    out = _summary_of_a_search(capsys)
    commands = {line.split()[2] if line.split()[1] == "-m" else line.split()[1]: shlex.split(line.partition("#")[0])
                for line in out.splitlines() if line.startswith("  python ")}
    export = f"{SPACED}/exports/run 1"
    assert commands["hyperiqa.evaluate"][3:5] == ["--checkpoint", f"{export}/checkpoint"]
    assert commands["hyperiqa.predict"][3:5] == ["--checkpoint", f"{export}/checkpoint"]
    assert commands["hyperiqa.train"][3:5] == ["--config", f"{export}/best_config.yaml"]
    assert commands["tuning/export.py"] == ["python", "tuning/export.py", f"{SPACED}/ray/run 1"]
    hint = next(line for line in out.splitlines() if line.startswith("continue it with: "))
    assert shlex.split(hint.partition(": ")[2]) == ["python", "tuning/search.py", "--resume", "--storage-path",
                                                   f"{SPACED}/ray", "--name", "run 1"]


def test_unfinished_trials_without_ctrl_c_are_not_called_an_interruption(capsys):
    out = _summary_of_a_search(capsys, interrupted=False)
    assert "search finished" in out and "interrupted after" not in out
    assert "continue it with: " in out  # --resume still continues the unfinished trial


def test_an_export_dir_holding_other_files_is_refused_before_ray_starts(tiny_dataset, tiny_cache_dir, tmp_path):
    mine = tmp_path / "export"  # the folder argv_for names with --export-dir
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    curves = {repr(1e-3): [0.5]}
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, curves, "refused", "--max-epochs", "1")
    with pytest.raises(UserError, match="notes.txt"):
        search.main(argv, trial_fn=functools.partial(scripted, curves=curves))
    assert not ray.is_initialized() and not (tmp_path / "ray" / "refused").exists()
    assert (mine / "notes.txt").read_text() == "mine"
    storage = tmp_path / "ray"
    for inside in (storage, storage / "refused" / "exports"):  # the experiment's own folders: never
        with pytest.raises(UserError, match="the experiment"):
            search.main([*argv, "--export-dir", str(inside)], trial_fn=functools.partial(scripted, curves=curves))
    assert not ray.is_initialized()


def test_a_truncated_experiment_state_exports_from_the_trial_folders_and_resume_says_why(
        tiny_dataset, tiny_cache_dir, tmp_path, capsys, monkeypatch):
    from hyperiqa.utils import UserError
    from tuning.sweep.export_folder import export_experiment

    curves = {repr(1e-3): [0.5, 0.8, 0.6], repr(1e-4): [0.6, 0.7, 0.75]}
    experiment = run_scripted_search(tmp_path, tiny_dataset, tiny_cache_dir, curves, "truncated")
    intact = json.loads((tmp_path / "export" / "metrics.json").read_text())
    # What a write cut short by a full disk leaves: Ray writes this file in place.
    state = sorted(experiment.glob("experiment_state-*.json"))[-1]
    state.write_bytes(state.read_bytes()[:len(state.read_bytes()) // 2])
    export_experiment(str(experiment), str(tmp_path / "again"))
    assert f"warning: Ray's experiment state {state} is unreadable (JSONDecodeError" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert (again["trial"], again["epoch"], again["val_srcc"]) == (intact["trial"], intact["epoch"], intact["val_srcc"])
    assert (again["trial"], again["epoch"], again["val_srcc"]) == (trial_ids_by_lr(experiment)[repr(1e-3)], 2, 0.8)
    assert {k: (r["best_val_srcc"], r["ended"]) for k, r in rows(tmp_path / "again").items()} == \
        {k: (r["best_val_srcc"], r["ended"]) for k, r in rows(tmp_path / "export").items()}
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, curves, "truncated", "--resume")
    with pytest.raises(UserError) as exc_info:
        search.main(argv)  # refused before Ray starts: Ray itself fails with a JSONDecodeError traceback
    assert "Ray's driver still holds an intact copy: copy the contents of " in str(exc_info.value)  # /tmp/ray/...
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "elsewhere"))  # the copy gone (another machine, a reboot)
    with pytest.raises(UserError) as exc_info:
        search.main(argv)
    assert str(exc_info.value).startswith(f"Ray's experiment state {state} is unreadable (JSONDecodeError")
    assert str(exc_info.value).endswith(f"cannot be resumed; `python tuning/export.py {experiment}` exports what "
                                        "its trials saved") and "\n" not in str(exc_info.value)


def test_a_full_disk_during_the_search_is_one_line_saying_how_to_continue(tiny_dataset, tiny_cache_dir, tmp_path,
                                                                         monkeypatch):
    import errno

    from ray.tune.execution.tune_controller import TuneController

    from hyperiqa.utils import UserError

    def no_space(self):
        raise OSError(errno.ENOSPC, "No space left on device", self.experiment_state_path)

    monkeypatch.setattr(TuneController, "save_to_dir", no_space)
    curves = {repr(1e-3): [0.5, 0.8, 0.6]}
    with pytest.raises(UserError) as exc_info:
        run_scripted_search(tmp_path, tiny_dataset, tiny_cache_dir, curves, "full")
    experiment = tmp_path / "ray" / "full"
    assert str(exc_info.value).startswith("disk full at /") and "experiment_state-" in str(exc_info.value)
    assert str(exc_info.value).endswith(f"what it saved is kept in {experiment}; free space, then continue with: "
                                        f"python tuning/search.py --resume --storage-path {experiment.parent} "
                                        "--name full")
    assert (experiment / "hyperiqa_search.json").is_file()
