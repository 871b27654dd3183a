"""--keep-checkpoints (tuning/engine/retention.py): which checkpoint files a search keeps, and that the export still
takes the best epoch of the best trial. That a killed search resumes from its trials' latest checkpoints is in
tests/test_resume.py."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pyarrow.fs
import pytest
import ray

from hyperiqa.checkpoint import TRAINER_STATE, WEIGHTS
from tests.stub_trials import scripted
from tests.test_search_scripted import argv_for, rows, trial_ids_by_lr
from tuning import search
from tuning.engine import retention

pytestmark = pytest.mark.timeout(400)

FILES = {WEIGHTS: 3000, TRAINER_STATE: 5000}  # a checkpoint in miniature: weights and optimizer state


# --- the policy on folders -------------------------------------------------------------------------
def make_trial(folder: Path, values: list[float]) -> list[Path]:
    """A trial folder with one checkpoint per value (epochs 1..n), each holding both big files."""
    out = []
    for epoch, value in enumerate(values, 1):
        ckpt = folder / f"checkpoint_{epoch - 1:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "metrics.json").write_text(json.dumps({"epoch": epoch, "val_srcc": value}))
        for name, size in FILES.items():
            (ckpt / name).write_bytes(b"\0" * size)
        out.append(ckpt)
    return out


def files_in(ckpt: Path) -> set[str]:
    return {p.name for p in ckpt.iterdir()}


def test_a_running_trial_keeps_optimizer_state_in_its_newest_checkpoint_only(tmp_path):
    ckpts = make_trial(tmp_path / "trial", [0.5, 0.7, 0.6])
    freed = retention.drop_old_optimizer_state(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"), str(ckpts[-1]))
    assert freed == 2 * FILES[TRAINER_STATE]
    assert [TRAINER_STATE in files_in(c) for c in ckpts] == [False, False, True]
    assert all(WEIGHTS in files_in(c) and "metrics.json" in files_in(c) for c in ckpts)


def test_an_ended_trial_keeps_the_weights_of_the_epoch_the_export_takes(tmp_path):
    # A tie at 0.7: the export takes the later epoch (3), so its weights stay; NaN never wins.
    ckpts = make_trial(tmp_path / "trial", [0.5, 0.7, 0.7, math.nan])
    retention.finish_trial(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"), "val_srcc")
    assert [files_in(c) for c in ckpts] == [{"metrics.json"}, {"metrics.json"}, {"metrics.json", WEIGHTS},
                                            {"metrics.json"}]


def test_a_trial_without_a_finite_epoch_keeps_its_weights_but_no_optimizer_state(tmp_path):
    ckpts = make_trial(tmp_path / "trial", [math.nan])
    retention.finish_trial(pyarrow.fs.LocalFileSystem(), str(tmp_path / "trial"), "val_srcc")
    assert files_in(ckpts[0]) == {"metrics.json", WEIGHTS}


def test_resume_after_the_policy_is_exact(tiny_cfg, tmp_path):
    """Real checkpoints: with trainer_state.pt left in the newest only, a trial whose Ray snapshot names an
    older checkpoint (it lags ~10 s) still resumes from the newest and trains the epoch as if never stopped."""
    from ray import tune

    from hyperiqa.solver import Solver
    from tuning.engine import trainable

    cfg = tiny_cfg(epochs=4)
    straight = Solver(cfg, log=lambda *_: None)
    folder = tmp_path / "trial"
    for metrics in straight.epochs():
        if metrics["epoch"] < 4:  # the driver dies during epoch 4
            straight.save_checkpoint(folder / f"checkpoint_{metrics['epoch'] - 1:06d}", metrics)
    retention.drop_old_optimizer_state(pyarrow.fs.LocalFileSystem(), str(folder))
    assert [(c / TRAINER_STATE).is_file() for c in sorted(folder.iterdir())] == [False, False, True]
    resumed = Solver(cfg, log=lambda *_: None)
    restored, known = trainable.restore(resumed, tune.Checkpoint(str(folder / "checkpoint_000001")))
    assert restored.endswith("checkpoint_000002") and resumed.epoch == 3 and known == 2
    (last,) = list(resumed.epochs())
    assert {k: last[k] for k in ("epoch", "train_loss", "val_srcc")} == \
        {k: straight.history[-1][k] for k in ("epoch", "train_loss", "val_srcc")}


def test_keep_checkpoints_values():
    assert [retention.parse_keep(v) for v in ("all", "Best", "top-3")] == ["all", "best", "top-3"]
    assert retention.top_k("top-3") == 3 and retention.top_k("best") == 0
    for bad in ("top-0", "top", "3", "newest"):
        with pytest.raises(ValueError, match="all, best or top-K"):
            retention.parse_keep(bad)


# --- a scripted search -------------------------------------------------------------------------------
# 16 epochs would show the same thing more slowly; 4 with a rung at 2 has a trial stopped by ASHA.
CURVES = {repr(1e-3): [0.5, 0.8, 0.7, 0.75],   # best at epoch 2, then ends: completed
          repr(1e-4): [0.6, 0.85, 0.8, 0.9],   # best trial, best at its last epoch
          repr(1e-5): [0.3, 0.35, 0.4, 0.45]}  # below the rung at epoch 2: stopped by ASHA


def stored(experiment: Path) -> dict[str, dict[int, set[str]]]:
    """{trial id: {epoch: big files in that checkpoint}} of every checkpoint folder kept."""
    out = {}
    for trial_id, path in retention.trial_paths(str(experiment)).items():
        kept = {}
        for ckpt in Path(path).glob("checkpoint_*"):
            try:
                epoch = json.loads((ckpt / "metrics.json").read_text())["epoch"]
            except (OSError, ValueError):  # being uploaded while the test polls
                continue
            kept[epoch] = {p.name for p in ckpt.iterdir()} & set(FILES)
        out[trial_id] = kept
    return out


def test_search_keeps_best_weights_per_trial_then_only_the_top_k(tiny_dataset, tiny_cache_dir, tmp_path, capsys):
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, CURVES, "kept", "--max-epochs", "4",
                    "--grace-period", "2", "--keep-checkpoints", "top-2")
    try:
        assert search.main(argv, trial_fn=functools.partial(scripted, curves=CURVES, files=FILES)) == 0
    finally:
        ray.shutdown()
    experiment = tmp_path / "ray" / "kept"
    ids = trial_ids_by_lr(experiment)
    kept = stored(experiment)
    # No optimizer state anywhere once every trial ended; weights in each top-2 trial's best epoch only.
    assert kept[ids[repr(1e-3)]][2] == {WEIGHTS} and kept[ids[repr(1e-4)]][4] == {WEIGHTS}
    for lr, best_epoch in ((repr(1e-3), 2), (repr(1e-4), 4)):
        assert all(not files for epoch, files in kept[ids[lr]].items() if epoch != best_epoch)
    assert all(not files for files in kept[ids[repr(1e-5)]].values())  # outside the top 2
    # The export (before the pruning) took the best epoch of the best trial, with its weights.
    export = tmp_path / "export"
    metrics = json.loads((export / "metrics.json").read_text())
    assert (metrics["trial"], metrics["epoch"], metrics["val_srcc"]) == (ids[repr(1e-4)], 4, 0.9)
    assert (export / "checkpoint" / WEIGHTS).stat().st_size == FILES[WEIGHTS]
    ended = {lr: rows(export)[ids[lr]]["ended"] for lr in CURVES}
    assert ended == {repr(1e-3): "completed", repr(1e-4): "completed", repr(1e-5): "stopped by ASHA"}
    assert "--keep-checkpoints top-2: removed the weights of 1 trials outside the 2 best" in capsys.readouterr().out
