"""tuning/confirm.py: paired splits, both selection protocols, the bootstrap interval and its sentence, the
report files; end to end on the tiny dataset through confirm.py and through search.py --confirm."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperiqa.utils import UserError
from tests.test_search import ROOT, search_argv
from tuning.confirmation import experiment as confirm
from tuning.confirmation import report as cr
from tuning.engine.options import Resources
from tuning.engine.runner import RunOptions, RunSet

pytestmark = pytest.mark.timeout(400)

ENV = dict(os.environ)  # no RAY_ADDRESS (conftest): confirm.py starts a Ray of its own, as for users
TINY = ["backbone=test_resnet", "pretrained=false", "patch_size=32", "train_patches=2", "test_patches=2",
        "batch_size=8", "eval_batch_size=16", "cache_workers=1", "epochs=2"]


def epoch(e, val, test, plcc=0.5):
    return {"epoch": e, "val_srcc": val, "test_srcc": test, "test_plcc": plcc, "test_plcc_logistic": plcc}


# --- protocols --------------------------------------------------------------------------------

def test_honest_picks_the_val_best_epoch_and_paper_style_the_test_best():
    curve = [epoch(1, 0.5, 0.80, 0.1), epoch(2, 0.9, 0.60, 0.2), epoch(3, math.nan, 0.99, 0.3),
             epoch(4, 0.9, 0.70, 0.4), epoch(5, 0.7, 0.85, 0.5)]
    row = cr.run_row({"config_id": "c1", "split": 0}, curve)
    # honest: val best is 0.9 at epochs 2 and 4 -> the earliest (the solver's best/); NaN val never wins
    assert (row["honest_epoch"], row["honest_test_srcc"], row["honest_test_plcc"]) == (2, 0.60, 0.2)
    # paper-style: the best TEST epoch and the PLCC of that same epoch, as the original tracked them
    assert (row["paper_epoch"], row["paper_test_srcc"], row["paper_test_plcc"]) == (3, 0.99, 0.3)
    assert row["paper_test_plcc_logistic"] == 0.3 and row["epochs_run"] == 5
    empty = cr.run_row({"config_id": "c1", "split": 1}, [])
    assert empty["honest_epoch"] == "" and math.isnan(empty["honest_test_srcc"])


def test_describe_gives_median_mean_std_and_iqr():
    s = cr.describe([0.1, 0.2, 0.3, 0.4, math.nan])
    assert s["n"] == 4 and s["median"] == pytest.approx(0.25) and s["mean"] == pytest.approx(0.25)
    assert s["std"] == pytest.approx(0.1290994, abs=1e-6) and s["iqr"] == pytest.approx(0.15)


# --- bootstrap and sentence -------------------------------------------------------------------

def test_a_constant_paired_difference_gives_a_zero_width_interval_at_that_value():
    mean, low, high = cr.bootstrap_mean([0.02] * 6)
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02) and high == pytest.approx(0.02)


def test_symmetric_noise_gives_an_interval_containing_zero_and_the_seed_fixes_it():
    d = [0.03, -0.03, 0.01, -0.01, 0.02, -0.02, 0.005, -0.005]
    mean, low, high = cr.bootstrap_mean(d, seed=3)
    assert mean == pytest.approx(0.0) and low < 0 < high
    assert cr.bootstrap_mean(d, seed=3) == (mean, low, high)  # seeded: reproducible
    assert cr.bootstrap_mean(d, seed=4) != (mean, low, high)


def test_paired_differences_pair_by_split_and_skip_missing_values():
    rows = [{"config_id": c, "split": k, "honest_test_srcc": v}
            for c, k, v in (("baseline", 0, 0.5), ("baseline", 1, 0.6), ("baseline", 2, math.nan),
                            ("c1", 1, 0.65), ("c1", 0, 0.52), ("c1", 2, 0.9))]
    assert cr.paired_differences(rows, "c1", "baseline") == pytest.approx([0.02, 0.05])


def test_the_sentence_says_whether_the_interval_excludes_zero():
    assert "beats the baseline beyond split noise" in cr.verdict("w", 0.01, 0.004, 0.02, 10)
    assert "excludes 0" in cr.verdict("w", 0.01, 0.004, 0.02, 10)
    text = cr.verdict("w", 0.003, -0.002, 0.008, 10)
    assert text.startswith("w does not beat the baseline beyond split noise") and "includes 0" in text
    assert "worse than the baseline" in cr.verdict("w", -0.01, -0.02, -0.004, 10)
    assert "rough" in cr.verdict("w", 0.01, 0.004, 0.02, 3) and "rough" not in cr.verdict("w", 0.01, 0.004, 0.02, 10)
    assert "nothing to confirm" in cr.verdict("w", 0.0, 0.0, 0.0, 10, identical=True)


# --- the runs ---------------------------------------------------------------------------------

def where(tmp_path) -> RunOptions:
    return RunOptions(Resources(0.0, 0.0, 1.0, 2), str(tmp_path / "ray"), "c", str(tmp_path / "out"))


def test_every_configuration_sees_the_same_fresh_splits_and_seeds(tiny_cfg, tmp_path):
    inputs = [confirm.Candidate("a", "a.yaml", tiny_cfg(backbone_lr=1e-3, seed=2)),
              confirm.Candidate("b", "b.yaml", tiny_cfg(backbone_lr=3e-4, patience=2, val_fraction=0.3))]
    runset = confirm.make_confirm_runset(inputs, 3, [f"{s}" for s in TINY], where(tmp_path))
    by_config: dict[str, list] = {}
    for run in runset.runs:
        cfg, labels = run["config"], run["labels"]
        assert cfg["seed"] == cfg["split_seed"] == labels["seed"] == labels["split_seed"]
        assert cfg["patience"] == 0 and cfg["selection_metric"] == "val_srcc"
        assert cfg["val_fraction"] == 0.2 and cfg["epochs"] == 2  # the first input's fractions; --set for all
        by_config.setdefault(labels["config_id"], []).append(cfg["split_seed"])
    # split 2 used by input a for its own split: skipped, so nobody is judged on the split it was picked on
    assert by_config == {"baseline": [1, 3, 4], "c1": [1, 3, 4], "c2": [1, 3, 4]}
    base = next(r["config"] for r in runset.runs if r["labels"]["config_id"] == "baseline")
    assert (base["backbone_lr"], base["lr_ratio"], base["dataset"]) == (2e-5, 10.0, "csv")  # the paper's setting


def test_identical_configurations_run_once(tiny_cfg, tmp_path):
    same = tiny_cfg(backbone_lr=1e-3)
    runset = confirm.make_confirm_runset([confirm.Candidate("a", "a", same), confirm.Candidate("a", "b", same)],
                                         2, TINY, where(tmp_path))
    assert {r["labels"]["config_id"] for r in runset.runs} == {"baseline", "c1"}
    described = runset.settings["candidates"]
    assert described[2]["same_as"] == "c1" and described[2]["label"] == "a (2)"


def test_input_mistakes_are_user_errors(tiny_cfg, tmp_path):
    a = confirm.Candidate("a", "a.yaml", tiny_cfg())
    other = confirm.Candidate("b", "b.yaml", tiny_cfg(data_root=str(tmp_path)))
    with pytest.raises(UserError, match="different datasets"):
        confirm.make_confirm_runset([a, other], 3, TINY, where(tmp_path))
    with pytest.raises(UserError, match="--set seed"):
        confirm.make_confirm_runset([a], 3, ["seed=3"], where(tmp_path))
    with pytest.raises(UserError, match="--splits 1"):
        confirm.make_confirm_runset([a], 1, TINY, where(tmp_path))
    with pytest.raises(UserError, match="no such export"):
        confirm.load_input(str(tmp_path / "missing.yaml"))


def test_report_files_from_synthetic_runs(tmp_path):
    """write_report without Ray: the winner is 0.02 better on every split -> beyond split noise."""
    candidates = [{"id": "baseline", "label": "base", "source": "-", "same_as": None},
                  {"id": "c1", "label": "win", "source": "-", "same_as": None}]
    runs, curves = [], {}
    for cid, shift in (("baseline", 0.0), ("c1", 0.02)):
        for k in range(3):
            run_id = f"{cid}-split{k}"
            runs.append({"id": run_id, "labels": {"config_id": cid, "config": cid, "split": k, "split_seed": k + 1,
                                                  "seed": k + 1}, "config": {}})
            curves[run_id] = [epoch(1, 0.5, 0.6 + 0.01 * k + shift), epoch(2, 0.6, 0.5 + shift),
                              epoch(3, 0.55, 0.9)]
    runset = RunSet("confirm", tuple(runs), "val_srcc", 0, 0, 1, str(tmp_path), "x", str(tmp_path / "out"),
                    settings={"candidates": candidates, "split_seeds": [1, 2, 3], "winner": "c1", "notes": [],
                              "dataset": "csv"})
    result = confirm.write_report(runset, curves)
    out = tmp_path / "out"
    with open(out / "confirm.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["honest_epoch"] for r in rows} == {"2"} and {r["paper_epoch"] for r in rows} == {"3"}
    assert result["paired"]["c1"]["mean"] == pytest.approx(0.02) and result["paired"]["c1"]["low"] == pytest.approx(0.02)
    summary = (out / "summary.md").read_text()
    assert "**win beats the baseline beyond split noise" in summary and "OPTIMISTIC" in summary
    assert result["stats"]["c1"]["paper"]["test_srcc"]["median"] == pytest.approx(0.9)
    assert (out / "curves.png").stat().st_size > 0 and json.loads((out / "confirm.json").read_text())["paired"]


# --- end to end on Ray ------------------------------------------------------------------------

def split_files(experiment: Path) -> dict[str, str]:
    """{run id: the split.csv its checkpoint saved}."""
    out = {}
    for result in experiment.glob("*/result.json"):
        first = json.loads(result.read_text().splitlines()[0])
        checkpoint = sorted(result.parent.glob("checkpoint_*/split.csv"))[-1]
        out[first["config"]["run"]] = checkpoint.read_text()
    return out


def test_confirm_cli_end_to_end(tiny_cfg, tmp_path):
    a = tmp_path / "a.yaml"
    tiny_cfg(backbone_lr=2e-3).save(a)
    argv = [sys.executable, str(ROOT / "tuning" / "confirm.py"), str(a), "--splits", "2",
            *[x for s in TINY[:-1] + ["epochs=1"] for x in ("--set", s)], "--max-concurrent", "2",
            "--storage-path", str(tmp_path / "ray"), "--name", "conf", "--out", str(tmp_path / "out"), "--no-dashboard"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    with open(out / "confirm.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["config_id"], r["split"]) for r in rows) == [(c, k) for c in ("baseline", "c1") for k in "01"]
    assert all(r["honest_epoch"] == "1" and r["honest_test_srcc"] for r in rows)
    # paired: each split's runs trained on the same images, and the two splits differ
    splits = split_files(tmp_path / "ray" / "conf")
    for k in (0, 1):
        assert splits[f"baseline-split{k}"] == splits[f"c1-split{k}"]
    assert splits["c1-split0"] != splits["c1-split1"]
    summary = (out / "summary.md").read_text()
    assert "the baseline beyond split noise" in summary and "split seeds [1, 2]" in summary
    assert (out / "curves.png").is_file() and "report:" in proc.stdout
    # --summarize writes the same report again from the experiment folder alone, running nothing
    assert confirm.main(["--summarize", str(tmp_path / "ray" / "conf"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "confirm.csv").read_text() == (out / "confirm.csv").read_text()
    with pytest.raises(UserError, match="written by tuning/confirm.py, not tuning/ablate.py"):
        from tuning.ablation import experiment as ablate

        ablate.main(["--summarize", str(tmp_path / "ray" / "conf")])


def test_search_then_confirm_the_top_trial(tiny_dataset, tiny_cache_dir, tmp_path):
    import yaml

    from tests.test_search import SPACE

    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, "start": SPACE["start"][:1]}))
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)
    argv[argv.index("--num-samples") + 1] = "1"
    argv[argv.index("--max-epochs") + 1] = "1"
    argv += ["--set", "epochs=1", "--confirm", "1", "--confirm-splits", "2",
             "--max-concurrent", "2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "export-confirm"
    with open(out / "confirm.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["config_id"], r["split_seed"]) for r in rows) == [("baseline", "1"), ("baseline", "2"),
                                                                       ("c1", "1"), ("c1", "2")]
    runs = json.loads((tmp_path / "ray" / "e2e-confirm" / "hyperiqa_runs.json").read_text())["runs"]
    trial = {r["labels"]["config_id"]: r["config"] for r in runs}
    # the top trial rebuilt from its parameters; the baseline took the search's --set, not the space's values
    assert trial["c1"]["backbone_lr"] == SPACE["start"][0]["backbone_lr"] and trial["baseline"]["backbone_lr"] == 2e-5
    assert trial["baseline"]["backbone"] == "test_resnet" and trial["baseline"]["epochs"] == 1
    assert "confirming the top 1 trial(s)" in proc.stdout
