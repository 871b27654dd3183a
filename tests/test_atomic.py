"""Checkpoint folders are replaced in one step, and every written file or folder honours the umask."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from hyperiqa import checkpoint as ckpt
from hyperiqa.solver import Solver
from hyperiqa.utils import UserError, atomic_dir, atomic_write_bytes, make_dir_honouring_umask

EXACT = ("epoch", "train_loss", "val_srcc", "val_plcc", "test_srcc", "best_epoch", "status")


def quiet(*_):
    pass


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def fail_at_call(monkeypatch, n: int) -> None:
    """Make checkpoint's n-th file write fail as on a full disk."""
    real, calls = ckpt.atomic_write_bytes, []

    def write(path, data):
        calls.append(path)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", write)


def test_a_save_failing_half_way_leaves_the_previous_checkpoint_and_resume_is_exact(tiny_cfg, tmp_path,
                                                                                    monkeypatch):
    cfg = tiny_cfg(epochs=2)
    solver = Solver(cfg, log=quiet)
    run = solver.epochs()
    folder = tmp_path / "last"
    solver.save_checkpoint(folder, next(run))
    before = snapshot(folder)
    second = next(run)
    with monkeypatch.context() as patch:
        fail_at_call(patch, 2)  # the weights are written, the trainer state is not
        with pytest.raises(OSError, match="No space left"):
            solver.save_checkpoint(folder, second)
    assert snapshot(folder) == before  # epoch 1's folder, byte for byte, not epoch-2 weights beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # the half-written folder is gone
    resumed = Solver(cfg, log=quiet)
    resumed.load_checkpoint(folder)
    assert resumed.epoch == 1
    again = list(resumed.epochs())
    assert [{k: m[k] for k in EXACT} for m in again] == [{k: second[k] for k in EXACT}]


def test_resume_refuses_an_incomplete_folder_and_one_that_mixes_two_epochs(tiny_cfg, tmp_path):
    solver = Solver(tiny_cfg(epochs=2), log=quiet)
    run = solver.epochs()
    solver.save_checkpoint(tmp_path / "one", next(run))
    solver.save_checkpoint(tmp_path / "two", next(run))
    mixed = tmp_path / "mixed"  # what the old one-file-at-a-time save left after a failure
    mixed.mkdir()
    for name, data in snapshot(tmp_path / "one").items():
        (mixed / name).write_bytes(data)
    (mixed / ckpt.WEIGHTS).write_bytes((tmp_path / "two" / ckpt.WEIGHTS).read_bytes())
    with pytest.raises(UserError, match=r"mixes two epochs: model.safetensors is from epoch 2, "
                                        r"trainer_state.pt from epoch 1") as exc:
        Solver(tiny_cfg(epochs=2), log=quiet).load_checkpoint(mixed)
    assert "\n" not in str(exc.value)
    (tmp_path / "two" / ckpt.METRICS).unlink()
    with pytest.raises(UserError, match=r"two is incomplete \(no metrics.json\)"):
        Solver(tiny_cfg(epochs=2), log=quiet).load_checkpoint(tmp_path / "two")
    (tmp_path / "one" / ckpt.TRAINER_STATE).unlink()  # an export, or an ended trial under --keep-checkpoints
    with pytest.raises(UserError, match=r"one holds weights but no optimizer state \(trainer_state.pt\): it can "
                                        r"be evaluated, predicted with and converted, not resumed"):
        Solver(tiny_cfg(epochs=2), log=quiet).load_checkpoint(tmp_path / "one")


def test_saving_into_an_existing_empty_folder_works(tiny_cfg, tmp_path):
    """tuning/engine/trainable.py saves into a fresh TemporaryDirectory, then hands it to Ray."""
    solver = Solver(tiny_cfg(epochs=1), log=quiet)
    (tmp_path / "ck").mkdir()
    solver.save_checkpoint(tmp_path / "ck", next(solver.epochs()))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(ckpt.FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    state = ckpt.load_resume_state(tmp_path / "ck")
    assert state["epoch"] == 1 and torch.equal(state["model"]["label_shift"], solver.model.label_shift.cpu())


def test_atomic_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("stop")
    assert (target / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_written_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "file.bin", b"x")
        with atomic_dir(tmp_path / "folder") as tmp:
            atomic_write_bytes(tmp / "inner.json", b"{}")
        made = make_dir_honouring_umask(tmp_path, ".staging-")
    finally:
        os.umask(previous)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "file.bin") == file_mode and mode(tmp_path / "folder" / "inner.json") == file_mode
    assert mode(tmp_path / "folder") == dir_mode and mode(made) == dir_mode
