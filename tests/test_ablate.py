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
from tuning import ablation_report as R
from tuning import ablation_stats as S
from tuning.ablation_summary import answer

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
    from tuning import ablate

    runs = ablate.variant_runs(tiny_cfg(seed=5), 2, list(ablate.VARIANTS))
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


# --- end to end -------------------------------------------------------------------------------------------

def ablate_argv(tiny_dataset, tiny_cache_dir, root: Path) -> list[str]:
    options = "{csv: labels.csv, image_column: image, label_column: label, group_column: group}"
    sets = [f"dataset_options={options}", "backbone=resnet10t", "pretrained=false", "patch_size=32",
            "train_patches=2", "test_patches=2", "batch_size=8", "eval_batch_size=16", "epochs=2",
            "backbone_lr=1e-3", "val_fraction=0.2", "test_fraction=0.2", f"cache_dir={tiny_cache_dir}",
            "cache_workers=1"]
    return [sys.executable, str(ROOT / "tuning" / "ablate.py"), "--dataset", "csv", "--data-root", str(tiny_dataset),
            *[a for s in sets for a in ("--set", s)], "--seeds", "2", "--variants", "fixed,all",
            "--max-concurrent", "2", "--storage-path", str(root / "ray"), "--name", "abl", "--out", str(root / "out")]


def run_splits(experiment: Path) -> dict[str, str]:
    """{run id: the split.csv its checkpoint saved}."""
    out = {}
    for params in experiment.glob("*/params.json"):
        run_id = json.loads(params.read_text())["run"]
        split = sorted(params.parent.glob("checkpoint_*/split.csv"))
        out[run_id] = split[-1].read_text() if split else ""
    return out


@pytest.mark.timeout(300)
def test_ablation_end_to_end_paired_splits_and_folder(tiny_dataset, tiny_cache_dir, tmp_path):
    proc = subprocess.run(ablate_argv(tiny_dataset, tiny_cache_dir, tmp_path), capture_output=True, text=True,
                          timeout=280)
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
    from tuning import ablate

    assert ablate.main(["--summarize", str(tmp_path / "ray" / "abl"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "table.csv").read_text() == (out / "table.csv").read_text()
    summary = (out / "summary.md").read_text()
    assert "## What the data says" in summary and "![curves](curves.png)" in summary


def test_an_out_folder_holding_other_files_is_refused_before_any_run(tiny_dataset, tiny_cache_dir, tmp_path):
    import ray

    from hyperiqa.utils import UserError
    from tuning import ablate

    out = tmp_path / "out"  # the folder ablate_argv names with --out
    out.mkdir()
    (out / "paper.md").write_text("mine")
    with pytest.raises(UserError, match="paper.md"):
        ablate.main(ablate_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:])
    assert not ray.is_initialized() and not (tmp_path / "ray" / "abl").exists()
    assert (out / "paper.md").read_text() == "mine"
