"""Stand-ins for tuning.sweep.tuner.train_trial in the tests that need a trial to behave in a scripted way
(what a GPU worker sees, a trial that diverges, one that pauses until its driver is killed).

Each has train_trial's signature plus keyword arguments bound with functools.partial; each reports
the solver's keys and writes a checkpoint folder holding metrics.json, as the real trial does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

# How long a probe waits for the others to start. Only a scheduling bug should reach it (the test then
# fails on its count); generous because starting a Ray worker on a loaded 2-core machine can take tens of
# seconds, and a probe that gives up early would make the count depend on the machine's speed.
BARRIER_S = 180
PAUSED_PREFIX = "paused-"  # pause_dir/paused-<pid>: a worker waiting there for pause_dir/resumed


def _report(metrics: dict, checkpoint: bool = True, files: dict | None = None) -> None:
    """files: {name: size in bytes} written beside metrics.json (the solver's weights and trainer state)."""
    if not checkpoint:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
        for name, size in (files or {}).items():
            (Path(folder) / name).write_bytes(b"\0" * size)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _restored_epoch(files: dict | None = None) -> int:
    """The epoch of the checkpoint this trial resumes from. With `files`, as the real trial does
    (trainable.restore): the trial's newest folder holding all of them (weights and trainer state), since
    Ray's snapshot may name an older one whose optimizer state --keep-checkpoints has already deleted."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    if not files:
        with checkpoint.as_directory() as folder:
            return int(json.loads((Path(folder) / "metrics.json").read_text())["epoch"])
    from tuning.engine.trainable import restore

    class Loader:  # stands in for the Solver: a folder loads when it holds every file the trial writes
        epoch = 0

        def load_checkpoint(self, folder) -> None:
            missing = [name for name in files if not (Path(folder) / name).is_file()]
            if missing:
                raise RuntimeError(f"{folder} cannot be resumed: no {', '.join(missing)}")
            self.epoch = int(json.loads((Path(folder) / "metrics.json").read_text())["epoch"])

    loader = Loader()
    restore(loader, checkpoint)
    return loader.epoch


def gpu_probe(config, *, base, space, metric, barrier: str, expected: int, total_memory_gib: float) -> None:
    """Report what this trial's worker sees and what the solver would derive from it, after `expected`
    trials (this one included) are running at the same time, or BARRIER_S have passed."""
    from hyperiqa import runtime

    cfg = space.config_for(base, config, source="probe")
    folder = Path(barrier)
    (folder / tune.get_context().get_trial_id()).touch()
    start, deadline = time.time(), time.time() + BARRIER_S
    while len(list(folder.iterdir())) < expected and time.time() < deadline:
        time.sleep(0.2)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    # Ray gives the worker only its own GPU, so torch's current device there is index 0.
    device = runtime.resolve_device(cfg.device, cuda_available=bool(visible), current_index=0)
    budget = runtime.device_cache_budget(cfg.device_cache_gb, cfg.gpu_memory_fraction, int(total_memory_gib * 2**30))
    _report({"epoch": 1, metric: 0.5, "status": "completed", "start": start, "end": time.time(),
             "gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "visible": visible, "device": str(device),
             "memory_fraction": cfg.gpu_memory_fraction or 1.0, "cache_gib": budget / 2**30})


def scripted(config, *, base, space, metric, curves: dict, pause_dir: str | None = None,
             files: dict | None = None) -> None:
    """Report curves[str(backbone_lr)] epoch by epoch (NaN -> status diverged, then stop). With
    `pause_dir`, a trial whose curve is named in pause_dir/pause.json waits after that many epochs
    until pause_dir/resumed exists (the test kills the driver in between). `files`: see _report."""
    values = curves[repr(config["backbone_lr"])]
    pause = json.loads((Path(pause_dir) / "pause.json").read_text()) if pause_dir else {}
    for epoch in range(_restored_epoch(files) + 1, len(values) + 1):
        value = values[epoch - 1]
        diverged = value is None or math.isnan(value)
        status = "diverged" if diverged else ("completed" if epoch == len(values) else "running")
        metrics = {"epoch": epoch, metric: math.nan if diverged else value, "status": status}
        if diverged:
            metrics["message"] = f"diverged at epoch {epoch}: non-finite training loss"
        _report(metrics, files=files)
        if diverged:
            return
        if pause.get(repr(config["backbone_lr"])) == epoch:
            (Path(pause_dir) / f"{PAUSED_PREFIX}{os.getpid()}").write_text(_start_time(os.getpid()))  # kill_paused
            while not (Path(pause_dir) / "resumed").exists():
                time.sleep(0.2)


def kill_paused(pause_dir: Path, timeout_s: float = 30) -> None:
    """SIGKILL the workers of scripted trials paused in `pause_dir` and wait until they are gone.

    Killing a driver's process group does not reach its trials: Ray starts each worker in a process group
    of its own, and a paused worker outlives the driver for a few seconds. Released by pause_dir/resumed
    in that time, it would train and checkpoint the next epoch after the test meant the search dead."""
    for marker in Path(pause_dir).glob(f"{PAUSED_PREFIX}*"):
        pid, started = int(marker.name[len(PAUSED_PREFIX):]), marker.read_text()
        if _running(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _running(pid, started):
            if time.monotonic() > deadline:
                raise TimeoutError(f"paused trial worker {pid} still runs {timeout_s:g} s after SIGKILL")
            time.sleep(0.1)


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux: /proc/<pid>/stat, field 22), None if it is gone or a zombie. With the
    pid it names a process: a pid reused by another process after the worker died has another start time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # fields 3.. (state first)
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _running(pid: int, started: str) -> bool:
    return _start_time(pid) == started


def failing(config, *, base, space, metric) -> None:
    """End at once as tuning/trainable.run_trial ends a trial whose data or configuration its node refused."""
    from tuning.engine.trainable import FAILED

    tune.report({"epoch": 0, metric: math.nan, "status": FAILED,
                 "message": f"node test: backbone_lr {config['backbone_lr']!r}: refused by the stub"})


def stalling(config, *, base, space, metric, epochs: int, stall_lr: float, pid_dir: str) -> None:
    """Report `epochs` epochs; the trial with backbone_lr `stall_lr` stops its own worker (SIGSTOP: a hung
    CUDA call or NFS read, as the watchdog sees it) after the first epoch of each attempt, unless that was its
    last, writing the worker's pid to pid_dir/<pid> first."""
    for epoch in range(_restored_epoch() + 1, epochs + 1):
        status = "completed" if epoch == epochs else "running"
        _report({"epoch": epoch, metric: 0.1 * epoch + config["backbone_lr"], "status": status})
        if config["backbone_lr"] == stall_lr and status != "completed":
            (Path(pid_dir) / str(os.getpid())).write_text(_start_time(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
