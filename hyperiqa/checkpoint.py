"""Checkpoint folders and loading models for inference.

A checkpoint folder (written by Solver.save_checkpoint) holds:
  model.safetensors  the model's state dict          trainer_state.pt  optimizer, schedule, epoch, RNG, history
  config.yaml        the TrainConfig                 metrics.json      the metrics of the saved epoch
  split.csv          path,split of every image       preprocess.json   patch size, mean/std, resize rule,
                                                                       label range (the output's scale)
Nothing is unpickled: weights are safetensors, trainer_state.pt loads with torch.load(weights_only=True).

A folder is written under a temporary name beside its place and renamed in when complete (utils.atomic_dir),
so a failed save (full disk, a killed process) leaves the previous checkpoint as it was. The weights carry
their epoch in the safetensors metadata; resuming refuses a folder whose files are missing or whose
weights and trainer state come from different epochs (a folder put together by hand, or by an old version
that wrote the files one by one into place).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from hyperiqa.config import TrainConfig
from hyperiqa.utils import UserError, atomic_dir, atomic_write_bytes, atomic_write_json

WEIGHTS, TRAINER_STATE, CONFIG, METRICS, SPLIT, PREPROCESS = (
    "model.safetensors", "trainer_state.pt", "config.yaml", "metrics.json", "split.csv", "preprocess.json")
FILES = (WEIGHTS, TRAINER_STATE, CONFIG, METRICS, SPLIT, PREPROCESS)
EPOCH_KEY = "epoch"  # safetensors metadata of the weights: the epoch they were saved after
ORIGINAL_SUFFIXES = (".pkl", ".pth", ".pt")


# --- RNG state as tensors and plain Python (weights_only-safe) -------------------------------------
# The CUDA generators only when the run computes on CUDA: torch.cuda.get_rng_state_all() initialises
# CUDA (a context of several hundred MB on every visible GPU), and a CPU trial on a GPU host, whose
# GPUs Ray 2.60 no longer hides, must not pay for it or hold GPU memory that others use.
def rng_state(*, cuda: bool) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else []}


def set_rng_state(state: dict, *, cuda: bool) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(state["torch"])
    if cuda and state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ---------------------------------------------------------------------------------------
def save_checkpoint_files(directory: Path, *, model_state: dict, trainer_state: dict, cfg: TrainConfig,
                          metrics: dict, data, mean, std) -> None:
    """Write a checkpoint folder: built beside `directory`, then renamed over it in one step."""
    with atomic_dir(directory) as tmp:
        _write_files(tmp, model_state=model_state, trainer_state=trainer_state, cfg=cfg, metrics=metrics,
                     data=data, mean=mean, std=std)


def _write_files(directory: Path, *, model_state: dict, trainer_state: dict, cfg: TrainConfig,
                 metrics: dict, data, mean, std) -> None:
    from hyperiqa.data.splits import save_split

    # clone(): safetensors refuses tensors that share storage; contiguous() undoes channels_last.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    epoch = {EPOCH_KEY: str(trainer_state["epoch"])} if "epoch" in trainer_state else None
    atomic_write_bytes(directory / WEIGHTS, safetensors.torch.save(weights, metadata=epoch))
    buffer = io.BytesIO()
    torch.save(trainer_state, buffer)
    atomic_write_bytes(directory / TRAINER_STATE, buffer.getvalue())
    cfg.portable().save(directory / CONFIG)  # no device, GPU share or threads of the machine that trained it
    atomic_write_json(directory / METRICS, metrics)
    save_split(directory / SPLIT, data.spec, data.split)
    short_side = cfg.resize_short_side if cfg.resize_short_side is not None else data.spec.default_short_side
    # label_range: the model predicts (higher is better) on its training dataset's raw label range;
    # evaluation on another dataset reports RMSE only when that dataset's range is the same.
    atomic_write_json(directory / PREPROCESS, {"patch_size": cfg.patch_size, "mean": list(mean), "std": list(std),
                                               "short_side": short_side or None, "resize_to": cfg.resize_to,
                                               "label_range": list(data.spec.raw_range)})


# --- reading ---------------------------------------------------------------------------------------
def load_weights(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint weights {path} not found (expected a folder written by hyperiqa.train)")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


def load_trainer_state(directory: Path) -> dict:
    path = directory / TRAINER_STATE
    if not path.is_file():
        raise UserError(f"{path} not found: {directory} is not a checkpoint folder written by Solver.save_checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot be loaded as trainer state ({exc})") from None


def load_resume_state(directory: Path) -> dict:
    """The full Solver state of a checkpoint folder, refusing one that is incomplete or mixes two epochs."""
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing == [TRAINER_STATE]:  # weights only: an export, or a search's ended trial (--keep-checkpoints)
        raise UserError(f"checkpoint {directory} holds weights but no optimizer state ({TRAINER_STATE}): it can "
                        f"be evaluated, predicted with and converted, not resumed. A search keeps optimizer "
                        f"state only in a running trial's newest checkpoint (--keep-checkpoints best or top-K)")
    if missing and len(missing) < len(FILES):  # none at all: load_trainer_state says it is no checkpoint
        raise UserError(f"checkpoint {directory} is incomplete (no {', '.join(missing)}): its save was "
                        f"interrupted; resume from another checkpoint or start the run again")
    state = load_trainer_state(directory)
    state["model"] = load_weights(directory / WEIGHTS)
    saved = _weights_epoch(directory / WEIGHTS)
    if saved is not None and saved != str(state["epoch"]):
        raise UserError(f"checkpoint {directory} mixes two epochs: {WEIGHTS} is from epoch {saved}, "
                        f"{TRAINER_STATE} from epoch {state['epoch']}; resume from another checkpoint")
    return state


def _weights_epoch(path: Path) -> str | None:
    with safetensors.safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get(EPOCH_KEY)


def read_preprocess(path) -> dict | None:
    """preprocess.json of a checkpoint folder (or beside its model.safetensors); None if absent."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = folder / PREPROCESS
    return json.loads(file.read_text()) if file.is_file() else None


def load_model(path) -> tuple:
    """(model in eval mode, TrainConfig or None) from one of:

    - a checkpoint folder of this project, or its model.safetensors with config.yaml beside it;
    - an original HyperIQA state dict (.pkl/.pth/.pt, SSL92 layout) -> ResNet-50 HyperIQA, config None.
    """
    from hyperiqa.models import HyperIQA, build_model

    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if path.is_dir() or path.suffix == ".safetensors":
        folder = path if path.is_dir() else path.parent
        if not (folder / CONFIG).is_file():
            raise UserError(f"{folder}: no {CONFIG}; expected a checkpoint folder written by hyperiqa.train "
                            f"(model.safetensors + config.yaml) or an original .pkl/.pth file")
        cfg = TrainConfig.load(folder / CONFIG)
        # The weights come from the checkpoint: never download or read the backbone's initial weights.
        model = build_model(cfg.replace(pretrained=False, backbone_weights=None))
        weights = load_weights(folder / WEIGHTS if path.is_dir() else path)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise UserError(f"{path}: weights do not match the model in {folder / CONFIG}: {exc}") from None
        return model.eval(), cfg
    if path.suffix in ORIGINAL_SUFFIXES:
        # Read with weights_only=True inside; a file that is not an original state dict is a UserError.
        return HyperIQA.from_original_checkpoint(path).eval(), None
    raise UserError(f"checkpoint {path}: expected a checkpoint folder, a model.safetensors inside one, "
                    f"or an original HyperIQA state dict ({', '.join(ORIGINAL_SUFFIXES)})")
