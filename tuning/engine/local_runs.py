"""Run a RunSet without Ray: each run is a local `python -m hyperiqa.train` process (ablate.py --runner processes).

For a machine where Ray is not installed (a lent GPU machine, say). The experiment folder
(--storage-path/--name) holds the RunSet (its record, experiment_folder.RUNS_FILE) and one folder per run id, which
hyperiqa.train fills: config.yaml, metrics.jsonl (one line per epoch), best/, last/; its output goes
to train.log there. At most `concurrency` runs at once, each with its own torch/OpenMP threads; with
GPUs each process sees one device (CUDA_VISIBLE_DEVICES), which 1/gpus_per_trial runs share when that
is a fraction (their memory capped by the config's gpu_memory_fraction, as under Ray). `collect` reads
the curves back in the format tuning/runner.collect returns, so both runners write the same report.
The stall watchdog applies here too (tuning/engine/stall.py): a run whose metrics.jsonl has not grown for
too long is killed (its process group, SIGKILL) and started again from last/, MAX_RETRIES times; then it
counts as failed, and the experiment folder's stalls.json lists it as stalled.
No Ray imports here, nor anything that imports Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperiqa.checkpoint import CONFIG, TRAINER_STATE
from hyperiqa.config import TrainConfig
from hyperiqa.text import fmt
from hyperiqa.utils import UserError
from tuning.engine import stall
from tuning.engine.options import is_uri
from tuning.engine.runner import RunSet, save_runset

ROOT = Path(__file__).resolve().parents[2]  # the children import this checkout's hyperiqa
LOG, METRICS = "train.log", "metrics.jsonl"
FINISHED = ("completed", "early_stopped", "diverged")  # the solver's statuses after which a run is done
POLL_S = 0.5
LOG_TAIL_LINES = 25
STOP_GRACE_S = 10.0  # SIGTERM, then this long before SIGKILL


def run_folder(runset: RunSet, run_id: str) -> Path:
    if is_uri(runset.storage_path):
        raise UserError(f"--storage-path {runset.storage_path}: --runner processes writes local folders; "
                        "give a local path")
    return Path(runset.experiment_path) / run_id


def read_epochs(folder: Path) -> list[dict]:
    """The run's metrics.jsonl as runner.collect returns epochs: numbers (None -> NaN), strings kept."""
    try:
        lines = (folder / METRICS).read_text().splitlines()
    except OSError:
        return []
    epochs = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # written atomically, so only a foreign file gets here
            continue
        row = {k: math.nan if v is None else v for k, v in record.items()
               if v is None or isinstance(v, (str, int, float, bool))}
        if int(row.get("epoch", 0)) >= 1:
            epochs[int(row["epoch"])] = row
    return [epochs[e] for e in sorted(epochs)]


def collect(runset: RunSet) -> dict[str, list[dict]]:
    """{run id: its epochs in epoch order}; [] for a run that reported none."""
    return {r["id"]: read_epochs(run_folder(runset, r["id"])) for r in runset.runs}


def is_finished(epochs: list[dict]) -> bool:
    return bool(epochs) and epochs[-1].get("status") in FINISHED


def slots(runset: RunSet, cpus: int | None = None) -> list[str | None]:
    """One entry per process that may run at once: the CUDA_VISIBLE_DEVICES it gets, or None on the CPU.

    CPU: as many as the machine's CPUs allow at cpus_per_trial each. GPUs: each of ceil(gpus) devices
    takes 1/gpus_per_trial runs (1 for a whole GPU), still bounded by the CPUs. --max-concurrent caps both.
    """
    cpus = cpus or _cpu_count()
    by_cpu = max(1, math.floor(cpus / runset.cpus_per_trial + 1e-9))
    if runset.gpus_per_trial:
        devices = _devices(math.ceil(runset.gpus - 1e-9))
        out = []
        for i, device in enumerate(devices):
            share = min(1.0, runset.gpus - i)
            out += [device] * math.floor(share / runset.gpus_per_trial + 1e-9)
    else:
        out = [None] * by_cpu
    return out[:min(by_cpu, runset.max_concurrent or by_cpu)]


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use, not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _devices(count: int) -> list[str]:
    """The device ids this process may hand out: its own CUDA_VISIBLE_DEVICES list, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    if len(ids) < count:
        raise UserError(f"--gpus {count}: CUDA_VISIBLE_DEVICES={visible!r} shows {len(ids)} device(s)")
    return ids[:count]


def command(folder: Path, resume: bool) -> list[str]:
    """The run's hyperiqa.train command line (a list: nothing passes through a shell)."""
    if resume:
        return [sys.executable, "-m", "hyperiqa.train", "--resume", "--out", str(folder)]
    return [sys.executable, "-m", "hyperiqa.train", "--config", str(folder / CONFIG), "--out", str(folder)]


def child_env(config: dict, device: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    threads = str(max(1, int(config.get("num_threads") or 1)))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # A CPU slot sees no GPU: torch's Adam.step initialises CUDA wherever one is visible.
    env["CUDA_VISIBLE_DEVICES"] = "" if device is None else device
    return env


@dataclass
class Job:
    run_id: str
    folder: Path
    epochs: int
    slot: str | None
    proc: subprocess.Popen
    log: object
    started: float = field(default_factory=time.monotonic)
    reported: int = 0  # epochs already printed
    run: dict = field(default_factory=dict)  # the RunSet's entry, to start it again after a stall


def execute(runset: RunSet, *, resume: bool = False, time_limit: float | None = None,
            cpus: int | None = None, out=print) -> tuple[dict[str, list[dict]], list[str]]:
    """Run (or continue) every run; return (collect()'s curves, the ids of the runs that failed)."""
    if not resume:
        save_runset(runset)
    todo, kept = [], 0
    for run in runset.runs:
        folder = run_folder(runset, run["id"])
        if resume and is_finished(read_epochs(folder)):
            kept += 1
            continue
        folder.mkdir(parents=True, exist_ok=True)
        TrainConfig.from_dict(run["config"], source=f"run {run['id']}").save(folder / CONFIG)
        todo.append((run, folder))
    free = slots(runset, cpus)
    out(f"experiment: {runset.experiment_path} ({len(runset.runs)} runs, {kept} already finished; at most "
        f"{len(free)} at once{_where(free)}; each run's log: <run>/{LOG})", flush=True)
    start = time.monotonic()
    failed: list[str] = []
    running: list[Job] = []
    watch, stalls = stall.Watch(runset.stall_timeout), {}  # stalls: {run id: times it stalled}
    previous = _sigterm_as_interrupt()
    try:
        while todo or running:
            stop = time_limit is not None and time.monotonic() - start > time_limit
            if stop:
                _stop(running, out, f"time limit ({time_limit:.0f} s) reached")
                out(f"{len(running)} run(s) stopped, {len(todo)} not started: continue them with --resume",
                    flush=True)
                running.clear()
                break
            while todo and free:
                running.append(_start(*todo.pop(0), free.pop(0), out))
                watch.started(running[-1].run_id, time.monotonic())
            time.sleep(POLL_S)
            for job in list(running):
                if _report_epochs(job, out, start):
                    watch.reported(job.run_id, time.monotonic())
                silent = watch.stalled(job.run_id, time.monotonic()) if job.proc.poll() is None else None
                if silent is not None:
                    running.remove(job)
                    free.append(job.slot)
                    if _end_stalled(job, runset, watch, stalls, silent, out):
                        todo.insert(0, (job.run, job.folder))
                    else:
                        failed.append(job.run_id)
                    continue
                if job.proc.poll() is not None:
                    watch.forget(job.run_id)
                    running.remove(job)
                    free.append(job.slot)
                    if not _finish(job, out, start):
                        failed.append(job.run_id)
    finally:
        if running:  # interrupted (Ctrl-C, SIGTERM): leave no training process behind
            _stop(running, out, "interrupted")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return collect(runset), failed


def _end_stalled(job: Job, runset: RunSet, watch: stall.Watch, stalls: dict, silent: float, out) -> bool:
    """Kill a stalled run's process group, say so in one line and record it; True if it is to be retried."""
    _signal(job, signal.SIGKILL)  # also a stopped (SIGSTOP) or hung process: SIGKILL needs no cooperation
    job.proc.wait()
    job.log.close()
    stalls[job.run_id] = stalls.get(job.run_id, 0) + 1
    retry = stalls[job.run_id] <= stall.MAX_RETRIES
    most = watch.limit_for(job.run_id) or 0.0
    watch.forget(job.run_id)
    node = socket.gethostname()
    out(stall.stall_line(f"run {job.run_id}", node, silent, most, retry), flush=True)
    stall.add(None, runset.experiment_path,
              record=stall.stall_record(job.run_id, node, job.proc.pid, silent, most, retry),
              ended=None if retry else job.run_id)
    return retry


def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, so the children (in their own sessions) are stopped too; returns
    the previous handler (None off the main thread, where handlers cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _where(free: list) -> str:
    devices = sorted({d for d in free if d is not None})
    return f" on GPU {', '.join(devices)} (CUDA_VISIBLE_DEVICES)" if devices else " on the CPU"


def _start(run: dict, folder: Path, slot: str | None, out) -> Job:
    """Start the run: continue from last/ when a checkpoint is there, else from the beginning."""
    resume = (folder / "last" / TRAINER_STATE).is_file()
    log = open(folder / LOG, "a")  # noqa: SIM115 - closed in _finish/_stop; appended: a resume keeps the history
    proc = subprocess.Popen(command(folder, resume), cwd=ROOT, env=child_env(run["config"], slot), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    job = Job(run["id"], folder, int(run["config"]["epochs"]), slot, proc, log,
              reported=len(read_epochs(folder)), run=run)
    where = "" if slot is None else f" on GPU {slot}"
    out(f"{job.run_id}: {'continues after epoch ' + str(job.reported) if resume else 'starts'}{where}", flush=True)
    return job


def _report_epochs(job: Job, out, start: float) -> bool:
    """One line per epoch the run finished since the last look; True if there was one."""
    epochs = read_epochs(job.folder)
    for m in epochs[job.reported:]:
        out(f"{job.run_id}: epoch {int(m['epoch'])}/{job.epochs}  val srcc {fmt(m.get('val_srcc'), finite_only=True)}  test srcc "
            f"{fmt(m.get('test_srcc'), finite_only=True)}  [{m.get('status')}]  run {_mmss(time.monotonic() - job.started)}, "
            f"all {_mmss(time.monotonic() - start)}", flush=True)
    new = len(epochs) > job.reported
    job.reported = max(job.reported, len(epochs))
    return new


def _finish(job: Job, out, start: float) -> bool:
    """Report how the run ended; False if it failed (its log's tail is printed)."""
    _report_epochs(job, out, start)
    job.log.close()
    epochs = read_epochs(job.folder)
    status = epochs[-1].get("status") if epochs else None
    took = f"after {_mmss(time.monotonic() - job.started)}"
    # hyperiqa.train exits 1 after a diverged run: a result (the variant diverges), not a failure
    if (job.proc.returncode == 0 or status == "diverged") and status in FINISHED:
        out(f"{job.run_id}: {status} {took} (epoch {int(epochs[-1]['epoch'])})", flush=True)
        return True
    tail = _tail(job.folder / LOG)
    out(f"{job.run_id}: FAILED {took}, exit code {job.proc.returncode}; the end of {job.folder / LOG}:\n{tail}",
        flush=True)
    return False


def _stop(running: list[Job], out, why: str) -> None:
    """End every running process group (SIGTERM, SIGKILL after a grace period); checkpoints stay."""
    for job in running:
        _signal(job, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for job in running:
        try:
            job.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(job, signal.SIGKILL)
            job.proc.wait()
        job.log.close()
        out(f"{job.run_id}: stopped ({why}) after epoch {len(read_epochs(job.folder))}", flush=True)


def _signal(job: Job, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.proc.pid, sig)  # its own session: the group holds the run's cache workers too


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
