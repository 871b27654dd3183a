"""What the Ray CLIs refuse before Ray starts: flags whose value cannot run, a storage path that cannot be
written, an experiment folder another search holds, a damaged experiment state to resume from; and a
run that ends on a full disk. No Ray cluster is started here."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hyperiqa.utils import UserError
from tests.test_paper import plan_for
from tests.test_search import ROOT
from tuning.engine import experiment_folder, launch, options, runner
from tuning.sweep import experiment as search

# Another search's claim, as experiment_folder.claim makes it (without importing torch: seconds on 2 cores).
HOLDER = """
import fcntl, os, sys, time
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(600)
"""


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("flags, words", [
    (["--cpus-per-trial", "nan"], "--cpus-per-trial nan: must be a finite number"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial inf: must be a finite number"),
    (["--gpus", "inf"], "--gpus inf: must be a finite number"),
    (["--reduction-factor", "nan"], "--reduction-factor nan: must be a finite number"),
    (["--reduction-factor", "inf"], "--reduction-factor inf: must be a finite number"),
    (["--reduction-factor", "1"], "--reduction-factor 1: must be > 1"),
    (["--max-epochs", "0"], "--max-epochs 0: must be >= 1"),
    (["--max-epochs", "-1"], "--max-epochs -1: must be >= 1"),
    (["--grace-period", "0"], "--grace-period 0: must be >= 1"),
    (["--max-epochs", "3", "--grace-period", "4"], "--grace-period 4: must be between 1 and --max-epochs (3)"),
    (["--num-samples", "0"], "--num-samples 0: must be >= 1"),
    (["--num-samples", "-1"], "--num-samples -1: must be >= 1"),
    (["--patience", "-1"], "--patience -1: must be >= 0"),
])
def test_a_number_that_cannot_run_is_one_line_naming_its_flag(tiny_dataset, tiny_cache_dir, tmp_path, flags, words):
    with pytest.raises(UserError) as exc_info:
        plan_for(tiny_dataset, tiny_cache_dir, tmp_path, *flags)
    assert words in one_line(exc_info)


def test_zero_epochs_or_grace_is_never_read_as_not_given(tiny_dataset, tiny_cache_dir, tmp_path):
    plan = plan_for(tiny_dataset, tiny_cache_dir, tmp_path, "--max-epochs", "2", "--grace-period", "1")
    assert (plan.max_epochs, plan.grace_period, plan.base["epochs"]) == (2, 1, 2)


def test_a_run_with_a_non_finite_cpu_share_is_refused(tiny_cfg, tmp_path):
    with pytest.raises(UserError) as exc_info:
        args = runner_args(tmp_path, cpus_per_trial=math.nan)
        runner.make_runset("ablate", [("a", {}, tiny_cfg(epochs=1))], args, metric="val_srcc", default_name="x")
    assert "--cpus-per-run nan: must be a finite number" in one_line(exc_info)


def runner_args(tmp_path, **changes) -> runner.RunOptions:
    """ablate.py's resource and folder flags as it turns them into RunOptions (resources checked there)."""
    import argparse

    values = dict(gpus=0, gpus_per_trial=None, cpus_per_trial=1, max_concurrent=1, name="runs",
                  storage_path=str(tmp_path / "ray"), out=str(tmp_path / "out"))
    args = argparse.Namespace(**{**values, **changes})
    return runner.RunOptions(options.resources(args.gpus, args.gpus_per_trial, args.cpus_per_trial,
                                               args.max_concurrent, unit="run"), args.storage_path, args.name,
                             args.out)


# --- the storage path ---------------------------------------------------------------------------

def test_a_storage_path_that_is_a_file_or_under_one_is_refused_by_the_search(tiny_dataset, tiny_cache_dir, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for storage in (a_file, a_file / "ray"):
        with pytest.raises(UserError) as exc_info:
            plan_for(tiny_dataset, tiny_cache_dir, tmp_path, "--storage-path", str(storage))
        assert one_line(exc_info).startswith(f"--storage-path {storage}: {a_file} is a file, not a folder")


def test_a_storage_folder_this_user_cannot_write_is_refused(tiny_cfg, tmp_path, monkeypatch):
    # Tests run as root, which writes anywhere: what the check asks the system is replaced instead.
    locked = tmp_path / "shared"
    locked.mkdir()
    asked = []
    monkeypatch.setattr(options.os, "access", lambda path, mode: asked.append((Path(path), mode)) and False)
    args = runner_args(tmp_path, storage_path=str(locked / "ray"))
    with pytest.raises(UserError) as exc_info:
        runner.make_runset("ablate", [("a", {}, tiny_cfg(epochs=1))], args, metric="val_srcc", default_name="x")
    assert one_line(exc_info).startswith(f"--storage-path {locked / 'ray'}: cannot create files in {locked}")
    assert asked == [(locked, os.W_OK | os.X_OK)]  # the nearest folder that exists, the one Ray writes into


# --- one search per experiment folder ------------------------------------------------------------

@pytest.fixture
def holder(tmp_path):
    """Start a process that claims an experiment folder; yields (folder, process)."""
    folder = tmp_path / "ray" / "plan"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / experiment_folder.LOCK_FILE)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_search_in_a_held_folder_is_refused_before_ray_starts(tiny_dataset, tiny_cache_dir, tmp_path,
                                                                        holder, monkeypatch):
    folder, _ = holder

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started although another search holds the folder")

    monkeypatch.setattr(launch, "start_ray", no_ray)
    argv = search_flags(tiny_dataset, tiny_cache_dir, tmp_path)
    for flags in (argv, [*argv, "--resume"]):
        with pytest.raises(UserError) as exc_info:
            search.main(flags)
        text = one_line(exc_info)
        assert text.startswith(f"{folder}: another search, ablation or confirmation is running") and "--name" in text


def search_flags(tiny_dataset, tiny_cache_dir, tmp_path) -> list[str]:
    options_ = "{csv: labels.csv, image_column: image, label_column: label, group_column: group}"
    sets = [f"dataset_options={options_}", "backbone=test_resnet", "pretrained=false", "patch_size=32",
            f"cache_dir={tiny_cache_dir}", "cache_workers=1"]
    if not (tmp_path / "ray" / "plan" / "hyperiqa_search.json").exists():  # what --resume loads
        from tuning.sweep.plan import save_plan

        save_plan(plan_for(tiny_dataset, tiny_cache_dir, tmp_path / "ray"))
    return ["--dataset", "csv", "--data-root", str(tiny_dataset), *[a for s in sets for a in ("--set", s)],
            "--storage-path", str(tmp_path / "ray"), "--name", "plan"]


def test_a_killed_holder_leaves_no_claim_behind(holder):
    folder, proc = holder
    with pytest.raises(UserError, match="another search"), experiment_folder.claim(str(folder), new=False):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / experiment_folder.LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    with experiment_folder.claim(str(folder), new=False):  # --resume after the search was killed
        pass


def test_a_new_run_refuses_a_folder_holding_an_experiment(tmp_path):
    folder = tmp_path / "ray" / "x"
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    with pytest.raises(UserError) as exc_info, experiment_folder.claim(str(folder), new=True):
        pass
    assert one_line(exc_info) == f"{folder} already holds an experiment; add --resume to continue it or choose " \
                                 "another --name"
    with experiment_folder.claim(str(folder), new=False):
        pass


def test_remote_storage_is_not_locked_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with experiment_folder.claim("s3://bucket/ray/x", new=True), experiment_folder.claim("s3://bucket/ray/x",
                                                                                         new=True):
        pass
    assert not any(tmp_path.iterdir())


# --- a damaged experiment state -----------------------------------------------------------------

def write_state(folder: Path, stamp: str, text: str) -> Path:
    path = folder / f"experiment_state-{stamp}.json"
    path.write_text(text)
    return path


def test_resume_from_a_truncated_state_is_one_line_naming_it(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    damaged = write_state(folder, "2026-01-02_00-00-00", '{"trial_data": [["{\\"trial_id')
    with pytest.raises(UserError) as exc_info:
        experiment_folder.check_resumable(str(folder), "export it")
    text = one_line(exc_info)
    assert text.startswith(f"Ray's experiment state {damaged} is unreadable (JSONDecodeError")
    assert text.endswith("cannot be resumed; export it")
    older = write_state(folder, "2026-01-01_00-00-00", '{"trial_data": []}')
    with pytest.raises(UserError) as exc_info:
        experiment_folder.check_resumable(str(folder), "export it")
    assert one_line(exc_info).endswith(f"move that file out of the folder and --resume continues from the older "
                                       f"state {older.name}")
    damaged.unlink()
    experiment_folder.check_resumable(str(folder), "export it")  # the older one parses: nothing to say


def test_ablate_resume_checks_the_state_before_ray_starts(tmp_path, monkeypatch):
    from tuning.ablation import experiment as ablate

    folder = tmp_path / "ray" / "abl"
    folder.mkdir(parents=True)
    runner.save_runset(runner.RunSet("ablate", (), "val_srcc", 0, 0, 1, str(tmp_path / "ray"), "abl",
                                     str(tmp_path / "out")))
    damaged = write_state(folder, "2026-01-01_00-00-00", "{")
    monkeypatch.setattr(launch, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError) as exc_info:
        ablate.main(["--resume", "--storage-path", str(tmp_path / "ray"), "--name", "abl"])
    assert str(damaged) in one_line(exc_info) and f"tuning/ablate.py --summarize {folder}" in str(exc_info.value)


# --- a full disk ----------------------------------------------------------------------------------

def fail_with(exc: BaseException, folder: str, cause: BaseException | None = None):
    with experiment_folder.disk_full_is_one_line(folder, "RESUME"):
        raise exc from cause


def test_no_space_during_the_run_is_one_line_saying_how_to_continue(tmp_path):
    cause = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "state.json"))
    with pytest.raises(UserError) as exc_info:
        fail_with(RuntimeError("Tune failed"), str(tmp_path), cause)  # Ray may wrap it
    assert one_line(exc_info) == (f"disk full at {tmp_path / 'state.json'}: the run stopped; what it saved is kept "
                                  f"in {tmp_path}; free space, then continue with: RESUME")


def test_an_eof_error_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    import shutil

    with pytest.raises(EOFError):  # plenty of space: an unrelated failure stays what it is
        fail_with(EOFError("Ran out of input"), str(tmp_path))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(experiment_folder.shutil, "disk_usage",
                        lambda path: usage._replace(free=1024 if Path(path) == tmp_path else usage.free))
    with pytest.raises(UserError, match=f"^disk full at {tmp_path}: "):
        fail_with(EOFError("Ran out of input"), str(tmp_path))
    with pytest.raises(ValueError):  # not a failure a full disk causes
        fail_with(ValueError("bad"), str(tmp_path))


def test_an_intact_copy_in_rays_staging_folder_is_named(tmp_path, monkeypatch):
    # Measured on a full 4 MiB tmpfs as --storage-path: the upload cut the experiment state short, while the
    # driver's staging copy under Ray's temp folder stayed whole; copying it back let --resume finish.
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    folder = tmp_path / "ray" / "x"
    folder.mkdir(parents=True)
    damaged = write_state(folder, "2026-01-01_00-00-00", '{"trial_data": [')
    staging = tmp_path / "tmp" / "ray" / "session_1" / "artifacts" / "2026-01-01" / "x" / "driver_artifacts"
    staging.mkdir(parents=True)
    write_state(staging, "2026-01-01_00-00-00", '{"trial_data": []}')
    with pytest.raises(UserError) as exc_info:
        experiment_folder.check_resumable(str(folder), "export it")
    assert one_line(exc_info).endswith(f"Ray's driver still holds an intact copy: copy the contents of {staging} "
                                       f"into {folder} (cp -r {staging}/. {folder}/), then --resume")
    assert str(damaged) in str(exc_info.value)
