"""Which Ray a run uses, and the token's permissions (issue 30, points 2 and 3).

Without --address and RAY_ADDRESS a run starts a Ray of its own, even where Ray's bootstrap file names
another cluster (a head that ended without `ray stop`); RAY_ADDRESS, as inside a Ray Job, joins. Before a
Ray starts here, its token file is written readable by its owner only. The two tests that start Ray run
it in a subprocess under their own RAY_TMPDIR and HOME, and end only the processes they started.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from tests.ray_dirs import BOOTSTRAP_FILE, free_port, own_ray_tmpdir, ray_head
from tuning.engine import launch, options, ray_token

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

# In a subprocess: start or join Ray as a search does, then run one task on it.
DRIVER = """
import json, os, sys
import ray
from tuning.engine import launch
port = int(sys.argv[1]) if len(sys.argv) > 1 else None
launch.start_ray(None, None, port, dashboard=port is not None)
print(json.dumps({"cpus": ray.cluster_resources().get("CPU"), "task": ray.get(ray.remote(lambda: 7).remote()),
                  "gcs": ray.get_runtime_context().gcs_address, "auth_mode": os.environ.get("RAY_AUTH_MODE")}))
"""


def _env(tmpdir: Path, **extra: str) -> dict:
    """This process's environment without Ray's address or token settings, Ray's folders and HOME in `tmpdir`."""
    home = tmpdir / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                            "RAY_AUTH_TOKEN_PATH")}
    return {**env, "RAY_TMPDIR": str(tmpdir), "HOME": str(home), "PYTHONPATH": str(ROOT), **extra}


def _drive(env: dict, *args: str, timeout: float = 150) -> tuple[dict, list[str]]:
    try:
        proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"start_ray did not return within {timeout:g} s (joining a Ray that is not there?): "
                    f"{(exc.stdout or b'')[-2000:]!r} {(exc.stderr or b'')[-2000:]!r}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    *lines, result = proc.stdout.strip().splitlines()
    return json.loads(result), lines


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_stale_bootstrap_file_is_not_joined_and_the_new_token_is_private():
    """A head that ended without `ray stop` leaves its address in ray/ray_current_cluster. Before, ray.init()
    tried that address forever; now the run starts its own Ray, with a token only its owner can read."""
    with own_ray_tmpdir() as tmpdir:
        (tmpdir / BOOTSTRAP_FILE).parent.mkdir()
        dead = free_port()
        (tmpdir / BOOTSTRAP_FILE).write_text(f"127.0.0.1:{dead}")  # nothing listens there
        env = _env(tmpdir)
        result, lines = _drive(env)
        token = Path(env["HOME"]) / ".ray" / "auth_token"
        assert result["task"] == 7 and not result["gcs"].endswith(f":{dead}")
        assert result["auth_mode"] == "token"  # Ray turned token authentication on and took the token below
        assert _mode(token.parent) == 0o700 and _mode(token) == 0o600
        text = token.read_text()
        assert len(text) == 64 and int(text, 16) >= 0  # 32 random bytes in hex, no newline, as Ray writes them
        assert not any("warning" in line for line in lines), lines


def test_ray_address_joins_its_cluster_and_says_so_once():
    """RAY_ADDRESS (which Ray sets inside a Ray Job) joins the head it names, with token authentication
    on both sides and the token file this project wrote; --dashboard-port is ignored in one line."""
    with own_ray_tmpdir() as tmpdir:
        env = _env(tmpdir, RAY_AUTH_MODE="token")
        path = ray_token.prepare(create=True, log=pytest.fail, environ=env)
        assert path == Path(env["HOME"]) / ".ray" / "auth_token" and _mode(path) == 0o600
        with ray_head(env) as address:
            result, lines = _drive({**env, "RAY_ADDRESS": address}, "8266")
        assert result["gcs"] == address and result["cpus"] == 1 and result["task"] == 7
        joining = [line for line in lines if "RAY_ADDRESS" in line]
        assert joining == [
            f"Ray: joining the cluster at {address} that RAY_ADDRESS names (as inside a Ray Job); unset RAY_ADDRESS "
            "for a Ray of this run's own",
            "warning: --dashboard-port is ignored inside a Ray Job (RAY_ADDRESS): the cluster's dashboard was set "
            "up by `ray start --head` (give them there)"], lines


@pytest.mark.parametrize("flag, environ, joins", [
    (None, {}, None), (None, {"RAY_ADDRESS": ""}, None), (None, {"RAY_ADDRESS": "local"}, None),
    (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"), ("auto", {"RAY_ADDRESS": "10.0.0.1:6379"}, "auto"),
    ("10.0.0.2:6379", {}, "10.0.0.2:6379"), ("local", {"RAY_ADDRESS": "10.0.0.1:6379"}, None)])
def test_cluster_to_join_is_the_flag_else_ray_address_never_a_bootstrap_file(flag, environ, joins):
    assert options.cluster_to_join(flag, environ) == joins


def test_a_local_start_names_local_and_ray_address_joins(monkeypatch):
    seen: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs) or SimpleNamespace(dashboard_url=None))
    monkeypatch.setattr(ray_token, "prepare", lambda **kwargs: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lines: list[str] = []
    launch.start_ray(None, None, None, log=lines.append, dashboard=False)
    assert seen[-1]["address"] == "local" and lines == ["Ray dashboard: not started (--no-dashboard)"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    lines.clear()
    launch.start_ray(None, None, None, log=lines.append, dashboard=False)
    assert seen[-1]["address"] == "10.0.0.1:6379" and "include_dashboard" not in seen[-1]
    assert lines[0].startswith("Ray: joining the cluster at 10.0.0.1:6379 that RAY_ADDRESS names")
    assert lines[1].startswith("warning: --no-dashboard is ignored inside a Ray Job (RAY_ADDRESS)")
    lines.clear()
    launch.start_ray("10.0.0.2:6379", None, None, log=lines.append)  # --address wins, without the line
    assert seen[-1]["address"] == "10.0.0.2:6379" and not any("RAY_ADDRESS" in line for line in lines)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_a_token_others_can_read_gets_the_chmod_that_fixes_it(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("a" * 64)
    token.chmod(0o644)
    lines: list[str] = []
    assert ray_token.prepare(create=True, log=lines.append) == token
    assert token.read_text() == "a" * 64 and _mode(token) == 0o644  # reported, not changed behind the user's back
    assert len(lines) == 1 and lines[0].endswith(f"fix it with: chmod 600 {token}") and "0644" in lines[0]
    token.chmod(0o600)
    lines.clear()
    ray_token.prepare(create=True, log=lines.append)
    assert lines == [] and token.read_text() == "a" * 64


def test_ray_auth_token_path_and_mode_are_respected(home, monkeypatch):
    lines: list[str] = []
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert ray_token.prepare(create=True, log=lines.append) is None
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_token.prepare(create=True, log=lines.append) is None
    assert not (home / ".ray").exists() and lines == []
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert ray_token.prepare(create=False, log=lines.append) == home / ".ray" / "auth_token"  # joining: Ray's to say
    assert not (home / ".ray").exists()
    custom = home / "secrets" / "ray-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(custom))
    assert ray_token.prepare(create=True, log=lines.append) == custom
    assert _mode(custom) == 0o600 and _mode(custom.parent) == 0o700 and len(custom.read_text()) == 64
    assert not (home / ".ray").exists() and lines == []
