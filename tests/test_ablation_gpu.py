"""bench/ablation_gpu.py: its plan's arithmetic, and its --smoke form end to end (the GPU recipe's whole path on
the CPU: the process runner, the folder). The one slower test of the ablation (about 40 s on 2 idle cores)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import ablation_gpu  # noqa: E402


def test_the_cuda_plan_fits_the_budget_by_cutting_patches():
    mode = ablation_gpu.MODES["cuda"]
    patches, planned, text = ablation_gpu.plan(mode, {"train": 1488, "val": 284, "test": 472})
    # 5 runs x 16 epochs x (1488 + (284 + 472 + 256) / 2.5) / 3600 = 42.06 s per patch; (480 - 100) / 42.06 = 9.03
    assert patches == 9 and planned == pytest.approx(100 + 9 * 80 * (1488 + 1012 / 2.5) / 3600)
    assert planned < mode["target_s"] < mode["budget_s"] == 540 and "42.1 s per patch per image" in text
    assert mode["sets"]["epochs"] == 16 and mode["sets"]["step_size"] == 6  # the paper's schedule is not cut
    assert ablation_gpu.plan({**mode, "seeds": 2}, {"train": 1488, "val": 284, "test": 472})[0] == 4


@pytest.mark.timeout(320)
def test_smoke_runs_the_recipe_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    # --budget 280: a loaded shared machine must not stop the runs (alone it ends in about 40 s)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ablation_gpu.py"), "--smoke", "--workdir",
                           str(tmp_path / "work"), "--out", str(out), "--budget", "280"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plan: 2 runs x 2 epochs x (68 training images + 34 evaluated / 2.5)" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"curves.png", "table.csv", "table.md", "runs.csv", "summary.md",
                                              ".hyperiqa-export"}
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["run"], r["epoch"]) for r in rows) == [
        ("fixed-s0", "1"), ("fixed-s0", "2"), ("optimizer_reset-s0", "1"), ("optimizer_reset-s0", "2")]
    assert {r["legacy"] for r in rows} == {"-", "optimizer_reset"}
