"""A test's own Ray folders and its own `ray start --head`, ended by the test itself (never `ray stop`).

Ray keeps its sessions and the bootstrap file that `ray start` leaves (ray/ray_current_cluster) under
$RAY_TMPDIR (else $TMPDIR, else /tmp). A test that starts or fakes a cluster under a folder of its own
neither sees nor disturbs the Rays of other tests and runs on this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOTSTRAP_FILE = Path("ray") / "ray_current_cluster"


@contextlib.contextmanager
def own_ray_tmpdir():
    """A fresh folder for RAY_TMPDIR, removed afterwards. Short and under /tmp: Ray's Unix sockets live
    in it, and a socket path may not exceed 107 bytes (pytest's tmp_path can be too long)."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def ray_head(env: dict, timeout: float = 90):
    """`ray start --head --block` on loopback, one CPU and free ports, in its own process group, under
    env (which should name an own RAY_TMPDIR); yields the GCS address from its bootstrap file. Ended by
    SIGTERM then SIGKILL to that group: every process the head started (GCS, raylet, agents, workers)."""
    argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", "0",
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false",
            "--disable-usage-stats", "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", "0"]
    bootstrap = Path(env["RAY_TMPDIR"]) / BOOTSTRAP_FILE
    log = Path(env["RAY_TMPDIR"]) / "ray_start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (bootstrap.is_file() and bootstrap.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield bootstrap.read_text().strip()
    finally:
        _end_group(proc)


def free_port() -> int:
    """A port free right now (for the flags of `ray start` that refuse 0); another process may still take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
