"""tuning/ablate.py and its report: the statistics and sentences on synthetic curves (no Ray), and one tiny
ablation end to end (paired splits, the folder's files, re-summarising without running)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hyperiqa.config import LEGACY_DEFECTS
from tuning.ablation import report as R
from tuning.ablation import stats as S
from tuning.ablation.summary import answer

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 8
CONFIG = dict(epochs=EPOCHS, lr_ratio=10.0, schedule="step", step_size=3, warmup_epochs=0.0, pretrained=False,
              backbone_weights=None, backbone="test_resnet")
FIXED_LRS = [(1e-3, 1e-2)] * 3 + [(1e-4, 1e-3)] * 3 + [(1e-5, 1e-4)] * 2


def synthetic(curves_by_variant: dict[str, list[dict]], config: dict | None = None):
    """RunSet-like runs and runner.collect-like curves: {variant: [per-seed {"test": [...], ...}]}."""
    runs, curves = [], {}
    for variant, per_seed in curves_by_variant.items():
        legacy = [] if variant == S.FIXED else [variant]
        for seed, c in enumerate(per_seed):
            run_id = f"{variant}-s{seed}"
            runs.append({"id": run_id, "labels": {"variant": variant, "seed": seed},
                         "config": {**CONFIG, **(config or {}), "legacy": legacy}})
            lrs = c.get("lrs", FIXED_LRS)
            curves[run_id] = [{"epoch": e + 1, "test_srcc": t, "val_srcc": c.get("val", c["test"])[e],
                               "train_srcc": 0.5 + 0.05 * e, "lr_backbone": lrs[e][0], "lr_head": lrs[e][1]}
                              for e, t in enumerate(c["test"])]
    return runs, curves


def rising(offset):
    return {"test": [0.5 + offset + 0.03 * e for e in range(EPOCHS)]}


def declining(offset, drop=0.2):
    return {"test": [0.8 + offset - drop * e / (EPOCHS - 1) for e in range(EPOCHS)]}


def test_run_stats_peak_drop_and_test_at_val_best():
    curve = S.RunCurve("r", "fixed", 0, 4, [1, 2, 3, 4], val=[0.4, 0.6, 0.65, 0.5],
                       test=[0.5, 0.7, 0.6, 0.55], train=[math.nan] * 4, lrs=[])
    stats = S.run_stats(curve)
    assert (stats.peak_epoch, stats.peak, stats.final) == (2, 0.7, 0.55)
    assert stats.drop == pytest.approx(0.15) and stats.val_best_epoch == 3 and stats.test_at_val_best == 0.6
    # Ties go to the first epoch (the solver's best epoch); NaN (a diverged epoch) is never a peak.
    assert S.peak([1, 2, 3], [math.nan, 0.4, 0.4]) == (2, 0.4)
    assert S.peak([1, 2], [math.nan] * 2)[0] is None


def test_verdicts_paired_differences_and_no_effect_from_reported_lrs():
    offsets = [0.0, 0.02, -0.02]  # the split's difficulty, shared by every variant of a seed
    late = {"test": [0.5 + 0.03 * e for e in range(EPOCHS)], "lrs": [(1e-3, 1e-2)] * 4 + [(1e-4, 1e-3)] * 4}
    runs, curves = synthetic({
        S.FIXED: [rising(o) for o in offsets],
        "head_frozen_after_epoch1": [declining(o) for o in offsets],
        "lr_ratio_reset": [rising(o) for o in offsets],             # the fixed solver's LRs: no effect
        "lr_one_epoch_late": [late, late, late],                     # other LRs, a similar curve: it acted
        "optimizer_reset": [{"test": [0.6 + o + 0.004 * (-1) ** e for e in range(EPOCHS)]} for o in offsets],
        S.ALL: [declining(o, drop=0.3) for o in offsets],
    })
    stats = {s.variant: s for s in S.summarize(runs, curves)}
    frozen = stats["head_frozen_after_epoch1"]
    assert frozen.verdict == S.DECLINES and frozen.values("peak_epoch") == [1, 1, 1]
    assert frozen.agg("drop")[0] == pytest.approx(0.2)
    # Paired by seed: the offsets cancel, so the difference from fixed has no spread.
    diffs = S.paired(frozen, stats[S.FIXED], "final")
    assert diffs == pytest.approx([0.6 - 0.71] * 3)
    assert stats[S.FIXED].verdict == S.NO_DECLINE and stats[S.FIXED].agg("drop")[0] == 0
    assert stats["optimizer_reset"].verdict == S.NO_DECLINE  # a noisy flat curve: drop 0.008 < MIN_DROP
    assert stats["lr_ratio_reset"].verdict == S.NO_EFFECT
    assert "acts from epoch 11; these runs have 8 epochs" in stats["lr_ratio_reset"].no_effect
    assert stats["lr_one_epoch_late"].no_effect is None  # its LRs differ from the fixed solver's
    assert stats[S.ALL].verdict == S.DECLINES


def test_decline_is_judged_against_the_seed_spread():
    # A drop of 0.05 whose final values scatter with SD 0.05 over seeds: within the spread.
    runs, curves = synthetic({S.FIXED: [rising(0)] * 3,
                              S.ALL: [declining(o, drop=0.05) for o in (0.0, 0.05, -0.05)]})
    every = next(s for s in S.summarize(runs, curves) if s.variant == S.ALL)
    assert every.spread == pytest.approx(0.05) and every.verdict == S.NO_DECLINE
    runs, curves = synthetic({S.FIXED: [rising(0)] * 3,
                              S.ALL: [declining(o, drop=0.05) for o in (0.0, 0.005, -0.005)]})
    every = next(s for s in S.summarize(runs, curves) if s.variant == S.ALL)
    assert every.verdict == S.DECLINES


def test_no_effect_reasons_and_identical_numbers():
    runs, curves = synthetic({S.FIXED: [rising(0)] * 2, "lr_ratio_reset": [rising(0)] * 2,
                              "random_eval_crops": [rising(0)] * 2}, config={"lr_ratio": 1.0, "epochs": 16})
    stats = {s.variant: s for s in S.summarize(runs, curves)}
    assert "lr_ratio is 1" in stats["lr_ratio_reset"].no_effect
    assert stats["random_eval_crops"].no_effect.startswith("every number it reported equals")


def test_generated_sentences_state_the_answer():
    offsets = [0.0, 0.02, -0.02]
    runs, curves = synthetic({S.FIXED: [rising(o) for o in offsets],
                              "head_frozen_after_epoch1": [declining(o) for o in offsets],
                              "lr_ratio_reset": [rising(o) for o in offsets],
                              S.ALL: [declining(o, drop=0.25) for o in offsets]})
    stats = S.summarize(runs, curves)
    text = "\n".join(answer(stats, runs[0]["config"]))
    assert "**The original's symptom is reproduced:** with every switch on, test SRCC peaks early (epoch 1) " \
           "and falls by 0.250 ± 0.000" in text
    assert "Alone, 1 of the 1 switch that acted declines: `head_frozen_after_epoch1` (0.200 ± 0.000)" in text
    assert "is 80% of the drop with every switch on" in text
    assert "`lr_ratio_reset` had no effect in this configuration" in text
    assert "its final test SRCC is 0.160 ± 0.000 lower (lower in 3 of 3 seeds)" in text  # 0.55 vs 0.71
    assert "The fixed solver ends at its highest test SRCC in every seed (0.710 ± 0.020): no decline." in text
    assert "starts from random weights" in text
    md = R.markdown_table(stats)
    assert "| `head_frozen_after_epoch1` | 1, 1, 1 | 0.800 ± 0.020 | 0.600 ± 0.020 | 0.200 ± 0.000 |" in md
    rows = {r["variant"]: r for r in R.table_rows(stats)}
    assert rows[S.ALL]["drop_mean"] == 0.25 and rows[S.ALL]["final_vs_fixed_mean"] == pytest.approx(-0.16)


def test_no_symptom_is_said_plainly():
    runs, curves = synthetic({S.FIXED: [rising(0)] * 2, S.ALL: [rising(-0.1)] * 2})
    text = "\n".join(answer(S.summarize(runs, curves), runs[0]["config"]))
    assert "does not show the original's symptom" in text


def test_variants_are_paired_and_the_budget_is_full(tiny_cfg):
    from hyperiqa.utils import UserError
    from tuning.ablation import experiment as ablate

    runs = ablate.variant_runs(tiny_cfg(seed=5), 2, ablate.DEFECT_VARIANTS)
    assert len(runs) == 16 and {labels["seed"] for _, labels, _ in runs} == {0, 1}
    for k in (0, 1):
        configs = [cfg.to_dict() for _, labels, cfg in runs if labels["seed"] == k]
        assert {c["seed"] for c in configs} == {5 + k} and {c["split_seed"] for c in configs} == {None}
        assert all({**c, "legacy": []} == {**configs[0], "legacy": []} for c in configs)  # only legacy differs
    assert [cfg.legacy for _, labels, cfg in runs[:8]] == [[], *[[n] for n in LEGACY_DEFECTS], ["all"]]
    args = ablate.build_parser().parse_args(["--set", "backbone_lr=1e-4"])
    base = ablate.ablation_base(args)
    assert (base.epochs, base.patience, base.backbone_lr, base.batch_size) == (6, 0, 1e-4, 16)
    with pytest.raises(UserError, match="--set legacy"):
        ablate.ablation_base(ablate.build_parser().parse_args(["--set", "legacy=[all]"]))


def test_a_control_changes_its_field_and_is_described_as_a_control(tiny_cfg):
    from tuning.ablation import experiment as ablate

    table = {S.FIXED: ablate.Variant(), "no_decay": ablate.Variant(changes={"weight_decay": 0.0}, about="no decay")}
    runs = ablate.variant_runs(tiny_cfg(seed=2, weight_decay=5e-4), 2, [S.FIXED, "no_decay"], table)
    by_id = {run_id: (labels, cfg.to_dict()) for run_id, labels, cfg in runs}
    labels, cfg = by_id["no_decay-s1"]
    assert labels == {"variant": "no_decay", "seed": 1, "changes": {"weight_decay": 0.0}, "about": "no decay"}
    assert {**cfg, "weight_decay": 5e-4} == by_id["fixed-s1"][1] and cfg["weight_decay"] == 0.0 and cfg["seed"] == 3
    # The report pairs it with the fixed solver by seed and names it a control, not a switch
    offsets = [0.0, 0.02, -0.02]
    syn_runs, curves = synthetic({S.FIXED: [rising(o) for o in offsets], "no_decay": [declining(o) for o in offsets],
                                  S.ALL: [rising(o) for o in offsets]})
    for r in syn_runs:
        if r["labels"]["variant"] == "no_decay":
            r["labels"].update(changes={"weight_decay": 0.0}, about="no decay")
            r["config"]["legacy"] = []
    stats = {s.variant: s for s in S.summarize(syn_runs, curves)}
    assert stats["no_decay"].is_control and stats["no_decay"].verdict == S.DECLINES
    text = "\n".join(answer(list(stats.values()), syn_runs[0]["config"]))
    assert "`no_decay` (no decay; a control, not a defect) peaks at epoch 1 in all 3 seeds" in text
    assert ("Its verdict differs from the fixed solver's (no decline), and weight_decay=0.0 is all that differs "
            "between the two.") in text
    assert "that acted" not in text  # no switch ran alone: the control is not counted as one
    rows = {r["variant"]: r for r in R.table_rows(list(stats.values()))}
    assert (rows["no_decay"]["legacy"], rows["no_decay"]["changes"]) == ("-", "weight_decay=0.0")
    assert rows["no_decay"]["final_vs_fixed_mean"] == pytest.approx(0.6 - 0.71)


def test_controls_are_in_the_table_and_not_run_by_default():
    from tuning.ablation import experiment as ablate

    assert ablate.VARIANTS["plain_head"].changes == {"head": "plain"} and not ablate.VARIANTS["plain_head"].legacy
    assert ablate.VARIANTS["plcc_loss"].changes == {"loss": "plcc"}
    assert ablate.PRESET_ABLATIONS[("demo", "default")].variants == [S.FIXED, *LEGACY_DEFECTS, S.ALL]
    assert ablate.PRESET_ABLATIONS[("photos", "default")].variants == [S.FIXED, "head_frozen_after_epoch1", S.ALL]
    paper = ablate.PRESET_ABLATIONS[("photos", "paper")]
    assert paper.seeds == 2 and paper.variants == [S.FIXED, S.ALL, "optimizer_reset", "head_frozen_after_epoch1",
                                                   "plain_head"]
    assert ablate.PAPER_REGIME == {"train_patches": ablate.PAPER_REGIME_TRAIN_PATCHES, "epochs": 4,
                                   "step_size": 6, "train_eval_images": 256}


def test_regime_paper_is_for_photos_and_set_may_not_fight_a_variant():
    from hyperiqa.utils import UserError
    from tuning.ablation import experiment as ablate

    with pytest.raises(UserError, match="--regime paper: defined for --dataset photos only, not demo"):
        ablate.preset(ablate.build_parser().parse_args(["--regime", "paper"]))
    args = ablate.build_parser().parse_args(["--set", "weight_decay=0"])
    with pytest.raises(UserError, match="--set head: the variant plain_head sets it"):
        ablate.ablation_base(ablate.build_parser().parse_args(["--set", "head=plain"]), ["fixed", "plain_head"])
    assert ablate.ablation_base(args, ["fixed"]).weight_decay == 0


def test_paper_regime_config():
    """Needs the head/loss/train_eval_images fields (model-options branch)."""
    from hyperiqa.config import photos_config
    from tuning.ablation import experiment as ablate

    args = ablate.build_parser().parse_args(["--dataset", "photos", "--regime", "paper"])
    base = ablate.ablation_base(args, ablate.preset(args).variants)
    assert base == photos_config(train_patches=ablate.PAPER_REGIME_TRAIN_PATCHES, epochs=4, step_size=6,
                                 train_eval_images=256, patience=0)
    runs = {run_id: cfg for run_id, _, cfg in ablate.variant_runs(base, 2, [*ablate.preset(args).variants, "plcc_loss"])}
    assert (runs["plain_head-s1"].head, runs["plcc_loss-s1"].loss, runs["fixed-s1"].head) == ("plain", "plcc", "hyper")


def test_image_level_train_srcc_is_carried_to_the_curves_and_runs_csv(tmp_path):
    runs, curves = synthetic({S.FIXED: [rising(0)] * 2, S.ALL: [declining(0)] * 2})
    for epoch in curves["fixed-s0"]:
        epoch["train_image_srcc"] = 0.3 + 0.01 * epoch["epoch"]
    by_id = {c.run_id: c for c in S.curves_of(runs, curves)}
    assert by_id["fixed-s0"].train_image[:2] == pytest.approx([0.31, 0.32])
    assert all(math.isnan(v) for v in by_id["all-s0"].train_image)  # not reported: NaN, not missing
    rows = R.raw_rows(runs, curves)
    assert rows[0]["train_image_srcc"] == repr(0.31) and rows[-1]["train_image_srcc"] == ""
    R.write_folder(tmp_path / "out", runs, curves, title="t", source="s", config_line="c")
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


# --- end to end -------------------------------------------------------------------------------------------

def ablate_argv(tiny_dataset, tiny_cache_dir, root: Path) -> list[str]:
    options = "{csv: labels.csv, image_column: image, label_column: label, group_column: group}"
    sets = [f"dataset_options={options}", "backbone=test_resnet", "pretrained=false", "patch_size=32",
            "train_patches=2", "test_patches=2", "batch_size=8", "eval_batch_size=16", "epochs=2",
            "backbone_lr=1e-3", "val_fraction=0.2", "test_fraction=0.2", f"cache_dir={tiny_cache_dir}",
            "cache_workers=1"]
    return [sys.executable, str(ROOT / "tuning" / "ablate.py"), "--dataset", "csv", "--data-root", str(tiny_dataset),
            *[a for s in sets for a in ("--set", s)], "--seeds", "2", "--variants", "fixed,all",
            "--max-concurrent", "2", "--storage-path", str(root / "ray"), "--name", "abl", "--out", str(root / "out"),
            "--no-dashboard"]


def no_ray_env(tmp_path: Path) -> dict:
    """The environment of a process in which `import ray` fails (a package named ray that raises first)."""
    import os

    poison = tmp_path / "poison"
    (poison / "ray").mkdir(parents=True)
    (poison / "ray" / "__init__.py").write_text("raise ImportError('ray was imported')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(ROOT)])}


def csv_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def run_splits(experiment: Path) -> dict[str, str]:
    """{run id: the split.csv its checkpoint saved}."""
    out = {}
    for params in experiment.glob("*/params.json"):
        run_id = json.loads(params.read_text())["run"]
        split = sorted(params.parent.glob("checkpoint_*/split.csv"))
        out[run_id] = split[-1].read_text() if split else ""
    return out


@pytest.fixture(scope="module")
def ray_ablation(tiny_dataset, tiny_cache_dir, tmp_path_factory):
    """The tiny ablation on Ray: (its root folder, the finished process)."""
    root = tmp_path_factory.mktemp("ray_ablation")
    proc = subprocess.run(ablate_argv(tiny_dataset, tiny_cache_dir, root), capture_output=True, text=True,
                          timeout=280)
    return root, proc


@pytest.mark.timeout(300)
def test_ablation_end_to_end_paired_splits_and_folder(ray_ablation):
    tmp_path, proc = ray_ablation
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"curves.png", "table.csv", "table.md", "runs.csv", "summary.md",
                                              ".hyperiqa-export"}
    assert f"results: {out}" in proc.stdout
    with open(out / "runs.csv") as fh:
        raw = list(csv.DictReader(fh))
    assert sorted({(r["variant"], r["seed"], r["epoch"]) for r in raw}) == sorted(
        (v, str(s), str(e)) for v in ("fixed", "all") for s in (0, 1) for e in (1, 2))
    # The paired design: seed k of every variant trained and was evaluated on the same split.
    splits = run_splits(tmp_path / "ray" / "abl")
    assert len(splits) == 4 and all(splits.values())
    for k in (0, 1):
        assert len({splits[f"{v}-s{k}"] for v in ("fixed", "all")}) == 1
    with open(out / "table.csv") as fh:
        table = {r["variant"]: r for r in csv.DictReader(fh)}
    assert table["fixed"]["seeds"] == "2" and table["fixed"]["incomplete_runs"] == "0"
    # Re-summarising reads the same experiment and writes the same table, without Ray.
    from tuning.ablation import experiment as ablate

    assert ablate.main(["--summarize", str(tmp_path / "ray" / "abl"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "table.csv").read_text() == (out / "table.csv").read_text()
    summary = (out / "summary.md").read_text()
    assert "## What the data says" in summary and "![curves](curves.png)" in summary


@pytest.mark.timeout(420)
def test_processes_runner_writes_the_ray_runners_folder_without_ray(ray_ablation, tiny_dataset, tiny_cache_dir,
                                                                   tmp_path):
    ray_root, ray_proc = ray_ablation
    assert ray_proc.returncode == 0, ray_proc.stdout[-3000:] + ray_proc.stderr[-3000:]
    env = no_ray_env(tmp_path)
    argv = ablate_argv(tiny_dataset, tiny_cache_dir, tmp_path) + ["--runner", "processes"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ray was imported" not in proc.stdout + proc.stderr
    out, ray_out = tmp_path / "out", ray_root / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ray_out.iterdir())
    for name in ("runs.csv", "table.csv"):
        assert list(csv_rows(out / name)[0]) == list(csv_rows(ray_out / name)[0]), name
    ids = [(r["run"], r["epoch"]) for r in csv_rows(out / "runs.csv")]
    assert ids == [(r["run"], r["epoch"]) for r in csv_rows(ray_out / "runs.csv")] and len(ids) == 8
    assert "fixed-s1: epoch 2/2" in proc.stdout  # progress, one line per epoch
    # Paired: seed k of both variants trained on one split
    experiment = tmp_path / "ray" / "abl"
    for k in (0, 1):
        assert len({(experiment / f"{v}-s{k}" / "split.csv").read_text() for v in ("fixed", "all")}) == 1
    # --resume keeps the finished runs (nothing restarts); --summarize rewrites the same table; neither needs Ray
    again = subprocess.run([sys.executable, str(ROOT / "tuning" / "ablate.py"), "--resume", "--storage-path",
                            str(tmp_path / "ray"), "--name", "abl", "--out", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 runs, 4 already finished" in again.stdout and ": starts" not in again.stdout
    summary = subprocess.run([sys.executable, str(ROOT / "tuning" / "ablate.py"), "--summarize", str(experiment),
                              "--out", str(tmp_path / "summary")], capture_output=True, text=True, timeout=120, env=env)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert (tmp_path / "summary" / "table.csv").read_text() == (out / "table.csv").read_text()


def test_a_failed_run_fails_the_ablation_after_writing_the_folder(tiny_dataset, tiny_cache_dir, tmp_path,
                                                                  monkeypatch, capsys):
    from tests.fake_train import FAIL_SEED
    from tuning.ablation import experiment as ablate
    from tuning.engine import local_runs

    fake = Path(__file__).resolve().parent / "fake_train.py"
    monkeypatch.setattr(local_runs, "command", lambda folder, resume: [
        sys.executable, str(fake), "--config", str(folder / "config.yaml"), "--out", str(folder)])
    argv = ablate_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:] + [
        "--runner", "processes", "--set", f"seed={FAIL_SEED - 1}"]
    assert ablate.main(argv) == 1
    assert "fixed-s1: FAILED" in capsys.readouterr().out
    rows = csv_rows(tmp_path / "out" / "runs.csv")
    assert {r["run"] for r in rows} == {"fixed-s0", "all-s0"}  # seed 1 (FAIL_SEED) failed in both variants


def test_an_out_folder_holding_other_files_is_refused_before_any_run(tiny_dataset, tiny_cache_dir, tmp_path):
    import ray

    from hyperiqa.utils import UserError
    from tuning.ablation import experiment as ablate

    out = tmp_path / "out"  # the folder ablate_argv names with --out
    out.mkdir()
    (out / "paper.md").write_text("mine")
    with pytest.raises(UserError, match="paper.md"):
        ablate.main(ablate_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:])
    assert not ray.is_initialized() and not (tmp_path / "ray" / "abl").exists()
    assert (out / "paper.md").read_text() == "mine"
