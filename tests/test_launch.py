"""Ray-side pieces that need no cluster: what the dashboard line claims, how joining a cluster fails,
and how a resumed trial brings Ray's record of its epochs up to date."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from types import SimpleNamespace

import pytest
import ray
from ray import tune

from hyperiqa.solver import Solver
from hyperiqa.utils import UserError
from tuning.engine import launch, trainable
from tuning.sweep import experiment as search


class _AuthModeHandler(http.server.BaseHTTPRequestHandler):
    mode = "token"

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"authentication_mode": self.mode}).encode()
        self.send_response(200 if self.path == "/api/authentication_mode" else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _no_token_check(monkeypatch):
    """These tests read start_ray's dashboard lines: a token file of this machine's others can read
    would add its warning (tests/test_ray_start.py tests that line)."""
    monkeypatch.setattr(launch.ray_token, "prepare", lambda **kwargs: None)


@pytest.fixture
def dashboard():
    """A stand-in dashboard answering /api/authentication_mode (public in Ray 2.60, no token needed)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _AuthModeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("mode, words", [("token", "token authentication on"),
                                         ("disabled", "token authentication OFF")])
def test_the_dashboard_line_says_what_the_dashboard_itself_reports(dashboard, monkeypatch, mode, words):
    monkeypatch.setattr(_AuthModeHandler, "mode", mode)
    url = f"127.0.0.1:{dashboard.server_port}"
    monkeypatch.setattr(ray, "init", lambda **kwargs: SimpleNamespace(dashboard_url=url))
    lines: list[str] = []
    launch.start_ray("auto", None, None, log=lines.append)
    assert lines == [f"Ray dashboard: http://{url} ({launch.auth_note(mode)})"] and words in lines[0]
    assert "token authentication on" not in launch.auth_note("disabled")


def test_an_unreachable_dashboard_claims_nothing_about_authentication():
    assert launch.dashboard_auth_mode("127.0.0.1:9", timeout=0.5) is None
    assert "token authentication" not in launch.auth_note(None)


def test_dashboard_flags_with_address_warn_that_they_are_ignored(monkeypatch):
    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(dashboard_url=None))
    lines: list[str] = []
    launch.start_ray("10.0.0.1:6379", "0.0.0.0", 8266, log=lines.append)
    assert "dashboard_host" not in seen and seen["address"] == "10.0.0.1:6379"
    assert lines[0].startswith("warning: --dashboard-host/--dashboard-port are ignored with --address")
    lines.clear()
    launch.start_ray("10.0.0.1:6379", None, None, log=lines.append)
    assert not any(line.startswith("warning") for line in lines)


def test_no_dashboard_starts_a_local_ray_without_it_and_refuses_dashboard_flags(monkeypatch):
    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs) or SimpleNamespace(dashboard_url=None))
    lines: list[str] = []
    launch.start_ray(None, None, None, log=lines.append, dashboard=False)
    assert seen["include_dashboard"] is False and "dashboard_host" not in seen
    assert lines == ["Ray dashboard: not started (--no-dashboard)"]
    with pytest.raises(UserError, match="^--no-dashboard: --dashboard-host and --dashboard-port .*one or the other$"):
        launch.start_ray(None, None, 8266, log=lines.append, dashboard=False)
    parsed = search.build_parser().parse_args(["--no-dashboard"])
    assert parsed.dashboard is False and search.build_parser().parse_args([]).dashboard is True


def test_a_refused_token_is_one_line(monkeypatch):
    def refuse(**kwargs):
        raise ray.exceptions.AuthenticationError(
            "Token authentication is enabled but the authentication token is invalid or incorrect.\nDetails...")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UserError) as exc:
        launch.start_ray("10.0.0.1:6379", None, None, log=lambda *_: None)
    message = str(exc.value)
    assert "\n" not in message and "--address 10.0.0.1:6379" in message and "auth_token" in message


@pytest.fixture(scope="module")
def trial_folder(tmp_path_factory, tiny_cfg):
    """A trial's storage folder after 3 epochs: checkpoint_000000..2 hold epochs 1..3."""
    cfg = tiny_cfg(epochs=3)
    folder = tmp_path_factory.mktemp("trial")
    solver = Solver(cfg, log=lambda *_: None)
    for metrics in solver.epochs():
        solver.save_checkpoint(folder / f"checkpoint_{metrics['epoch'] - 1:06d}", metrics)
    return folder, cfg


def _resume(trial_folder, handed: str, tmp_path):
    folder, cfg = trial_folder
    copy = tmp_path / "trial"
    shutil.copytree(folder, copy)
    solver = Solver(cfg, log=lambda *_: None)
    reported: list[tuple[int, bool]] = []
    if handed != "checkpoint_000001":
        shutil.rmtree(copy / handed)  # deleted by the best-N ranking after Ray's last snapshot
    restored, known = trainable.restore(solver, tune.Checkpoint(str(copy / handed)))
    trainable.catch_up(solver, known, "val_srcc", lambda m, checkpoint: reported.append((m["epoch"], checkpoint)))
    return solver, restored, known, reported


def test_a_resumed_trial_reports_the_epochs_ray_never_received(trial_folder, tmp_path):
    # Ray's snapshot named epoch 2's checkpoint; epoch 3's checkpoint reached storage, its result did not.
    solver, restored, known, reported = _resume(trial_folder, "checkpoint_000001", tmp_path)
    assert restored.endswith("checkpoint_000002") and solver.epoch == 3 and known == 2
    assert reported == [(3, True)]


def test_when_the_named_checkpoint_is_gone_every_epoch_is_reported_again(trial_folder, tmp_path):
    solver, restored, known, reported = _resume(trial_folder, "checkpoint_000000", tmp_path)
    assert solver.epoch == 3 and known == 0
    assert reported == [(1, False), (2, False), (3, True)]
