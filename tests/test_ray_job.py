"""A search as a Ray Job (issue 30): a head from `ray start --head` on loopback, `ray job submit`, `ray job stop`
mid-search, a second job with --resume that finishes it, `ray job logs`. Inside a job Ray sets RAY_ADDRESS, and
the search (started without --address) joins that cluster instead of starting a Ray of its own.

The head runs in a temp dir of its own and is ended by killing its processes (never `ray stop`, which ends every
Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stub_trials import PAUSED_PREFIX, kill_paused
from tests.test_search import ROOT
from tests.test_search_scripted import DRIVER, _snapshot_has_checkpoint, argv_for, rows, trial_ids_by_lr

pytestmark = pytest.mark.timeout(300)

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this Python
NO_AGENT = "No available agent to submit job"  # what the head answers until its dashboard agent has started
FIRST, SECOND = repr(1e-3), repr(1e-4)
CURVES = {FIRST: [0.5, 0.6], SECOND: [0.4, 0.5]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return out


def head_processes(group: int) -> set[int]:
    """The processes of the head started in process group `group`, and every process they started (Ray puts
    workers in process groups of their own, and the job's entrypoint too)."""
    table = _processes()
    found = {pid for pid, (_, pgid) in table.items() if pgid == group}
    frontier = list(found)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def end_head(group: int, timeout_s: float = 30) -> None:
    """SIGKILL the head's processes (found anew until none is left: a dying raylet's children are seen late)."""
    deadline = time.monotonic() + timeout_s
    while pids := head_processes(group):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray head processes {sorted(pids)} still run {timeout_s:g} s after SIGKILL")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def head():
    """A Ray head on 127.0.0.1 with its dashboard (the job API) on a free port, in a temp dir of its own."""
    temp = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
    # Free ports for the dashboard and for the two servers with a fixed default port (dashboard agent 52365, Ray
    # client 10001), which another Ray on the machine may hold: then the agent never starts and no job runs.
    port, agent_port, client_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a RAY_ADDRESS of the shell would be joined
    # Token authentication with a token of its own, for the head, the `ray job` commands and the jobs (which
    # inherit the head's environment): the user's ~/.ray/auth_token is neither read nor created.
    env.update(RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    start = subprocess.Popen([*RAY, "start", "--head", "--port=0", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                              "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port),
                              "--dashboard-agent-listen-port", str(agent_port), "--ray-client-server-port", str(client_port),
                              "--temp-dir", str(temp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out[-3000:]
        yield {"address": f"http://127.0.0.1:{port}", "port": port, "env": env}
    finally:
        if start.poll() is None:
            start.kill()
        end_head(start.pid)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def ray_job(head, *args: str, timeout: float = 120) -> str:
    """`ray job COMMAND --address HEAD ARGS...`; a submit is repeated while the head's job agent is not up yet."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([*RAY, "job", args[0], "--address", head["address"], *args[1:]], env=head["env"],
                              capture_output=True, text=True, timeout=timeout)
        out = done.stdout + done.stderr
        if done.returncode == 0 or NO_AGENT not in out or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, out[-3000:]
    return out


def job_status(head, job_id: str) -> str:
    """The job's status from the head's job API (what `ray job status` asks, without starting a Python each poll)."""
    request = urllib.request.Request(f"{head['address']}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {head['env']['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["status"]


def submit(head, job_id: str, argv: list[str]) -> None:
    # The job's environment: the project importable, one torch thread and no downloads, as in this process.
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
                                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}}
    ray_job(head, "submit", "--no-wait", "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env),
            "--", *argv)  # the CLI quotes each word for the shell it runs the entrypoint in


def test_a_search_submitted_as_a_ray_job_stopped_and_resumed_by_a_second_job(head, tiny_dataset, tiny_cache_dir,
                                                                            tmp_path):
    # tuning/search.py's main() with scripted trials (tests/test_search_scripted.DRIVER): the first trial waits
    # after epoch 1, so the first job is stopped mid-search whatever the machine's speed.
    pause = tmp_path / "pause"
    pause.mkdir()
    (pause / "pause.json").write_text(json.dumps({FIRST: 1}))
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, CURVES, "job", "--max-epochs", "2", "--grace-period", "2")
    experiment = tmp_path / "ray" / "job"
    started = time.monotonic()
    submit(head, "search-1", [sys.executable, "-c", DRIVER, json.dumps([argv, CURVES, str(pause), None])])
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and job_status(head, "search-1") in ("PENDING", "RUNNING") and not (
            any(pause.glob(f"{PAUSED_PREFIX}*")) and _snapshot_has_checkpoint(experiment, FIRST)):
        time.sleep(0.5)
    assert job_status(head, "search-1") == "RUNNING", ray_job(head, "logs", "search-1")[-3000:]
    ray_job(head, "stop", "search-1")
    assert job_status(head, "search-1") == "STOPPED"
    kill_paused(pause)  # a worker outliving its job would write epoch 2 once released
    (pause / "resumed").touch()

    submit(head, "search-2", [sys.executable, "-c", DRIVER, json.dumps([[*argv, "--resume"], CURVES, str(pause), None])])
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and job_status(head, "search-2") in ("PENDING", "RUNNING"):
        time.sleep(0.5)
    logs = ray_job(head, "logs", "search-2")
    print(f"two jobs in {time.monotonic() - started:.1f} s")
    assert job_status(head, "search-2") == "SUCCEEDED", logs[-3000:]
    # The search joined the head's cluster (RAY_ADDRESS, set by Ray inside the job): the head's dashboard.
    assert f"Ray dashboard: http://127.0.0.1:{head['port']}" in logs
    assert f"experiment: {experiment} (2 trials, up to 2 epochs each)" in logs and "search finished" in logs
    ids = trial_ids_by_lr(experiment)
    trials = rows(tmp_path / "export")
    assert {lr: (trials[ids[lr]]["ended"], trials[ids[lr]]["epochs_run"]) for lr in CURVES} == \
        {FIRST: ("completed", "2"), SECOND: ("completed", "2")}
    results = (next(p for p in experiment.glob("*/result.json") if ids[FIRST] in p.read_text())).read_text()
    assert [json.loads(line)["epoch"] for line in results.splitlines()] == [1, 2]  # continued, not restarted
