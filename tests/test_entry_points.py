"""The ways to run the four tuning commands: `python tuning/X.py`, `python -m tuning.X` and the console
scripts of pyproject.toml (which this test cannot install: it checks the callables they name)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("search", "ablate", "confirm", "export")
# What the command prints first under --help: its usage line names the script users know.
USAGE = {name: f"usage: python tuning/{name}.py" for name in COMMANDS}


def scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+, the project runs on 3.10)."""
    text = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return {name.strip(): value.strip().strip('"') for name, value in pairs}


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_a_console_script_whose_callable_runs_the_cli(name, monkeypatch, capsys):
    target = scripts()[f"hyperiqa-{name}"]
    module_name, _, attr = target.partition(":")
    assert module_name == f"tuning.{name}"
    module = importlib.import_module(module_name)
    monkeypatch.setattr(sys, "argv", [f"hyperiqa-{name}", "--help"])
    with pytest.raises(SystemExit) as exc_info:
        getattr(module, attr)()
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.startswith(USAGE[name])
    with pytest.raises(SystemExit) as exc_info:
        module.main(["--help"])
    assert exc_info.value.code == 0


def test_a_console_script_turns_a_user_mistake_into_one_line(monkeypatch, capsys):
    from tuning import export

    monkeypatch.setattr(sys, "argv", ["hyperiqa-export", str(ROOT / "no-such-experiment")])
    with pytest.raises(SystemExit) as exc_info:
        export.cli()
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_the_script_form_runs_this_checkouts_packages_with_no_tuning_folder_on_the_path(tmp_path):
    """Run as a script, tuning/ would be first on sys.path: none of its modules may shadow a package.
    (The `python -m tuning.search` form runs in tests/test_search.py.)"""
    argv = [str(ROOT / "tuning" / "search.py")]
    probe = tmp_path / "sitecustomize.py"  # imported at start-up: reports sys.path and where tuning came from
    probe.write_text("import atexit, sys\n"
                     "def report():\n"
                     "    t = sys.modules.get('tuning')\n"
                     "    print('PROBE', t and t.__file__, [p for p in sys.path if p.rstrip('/').endswith('tuning')])\n"
                     "atexit.register(report)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(USAGE["search"])
    probe_line = [line for line in proc.stdout.splitlines() if line.startswith("PROBE")][-1]
    assert probe_line == f"PROBE {ROOT / 'tuning' / '__init__.py'} []"
