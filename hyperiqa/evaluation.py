"""Score a checkpoint on its own saved split, or on every image of another dataset (cross-dataset).

The reusable side of `python -m hyperiqa.evaluate`: evaluate_checkpoint() returns the metrics as a
dict, for the CLI and for tables over several datasets.

On another dataset the checkpoint's own preprocessing is used: its patch size, normalisation and
test_patches crops (seeded by its seed), and its resize rule when it has one (preprocess.json
short_side or resize_to). The model learned quality at that image scale: blur radius, noise grain and
JPEG block size are all measured in pixels, so the target's images are shown to it at the same scale,
as IQA cross-dataset tests do. A checkpoint trained at original size has no scale to impose; the
target is then resized by its own dataset's default rule (KonIQ 1024x768 -> short side 384, SPAQ
-> 512, the others kept), the scale that dataset is trained at. TrainConfig overrides of
resize_short_side or resize_to replace both.

RMSE needs predictions and labels on one scale. The model predicts on its training labels' range
(preprocess.json label_range, the training reader's raw range); on another dataset RMSE is reported
only when that dataset's raw range is the same: between a 0-100 prediction and a 1-5 label it
measures the scales, not the model. The correlations do not depend on the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hyperiqa import checkpoint as ckpt
from hyperiqa import metrics as M
from hyperiqa.config import TrainConfig
from hyperiqa.utils import UserError, default_cache_dir


@dataclass
class Scores:
    """Per-image predictions of one evaluation; metrics() summarises them."""

    dataset: str
    split: str                  # "all" on another dataset
    paths: list[str]
    predictions: np.ndarray     # on the checkpoint's training label scale, higher is better
    labels: np.ndarray          # the dataset's labels, higher is better
    same_scale: bool            # predictions and labels on one scale: RMSE means something
    notes: list[str] = field(default_factory=list)  # preprocessing and omissions, in words

    def metrics(self) -> dict:
        """srcc, plcc, plcc_logistic, krcc, (rmse when same_scale), n_images, dataset, split; None = undefined."""
        values = M.correlations(self.predictions, self.labels)
        out = {k: M.finite_or_none(values[k]) for k in M.IMAGE_METRICS if k != "rmse" or self.same_scale}
        return {**out, "n_images": len(self.paths), "dataset": self.dataset, "split": self.split}


def evaluate_checkpoint(checkpoint, dataset: str | None = None, data_root: str | None = None, *,
                        split: str | None = None, options: dict | None = None, device: str = "auto",
                        overrides: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Metrics of a checkpoint folder (see Scores.metrics and score_checkpoint)."""
    return score_checkpoint(checkpoint, dataset, data_root, split=split, options=options, device=device,
                            overrides=overrides, log=log).metrics()


def score_checkpoint(checkpoint, dataset: str | None = None, data_root: str | None = None, *,
                     split: str | None = None, options: dict | None = None, device: str = "auto",
                     overrides: dict | None = None, log: Callable[[str], None] = print) -> Scores:
    """Predictions of a checkpoint folder (or its model.safetensors).

    dataset None: the checkpoint's own dataset and saved split.csv; split is test (default), val, train
    or all. dataset NAME: every image of that dataset under data_root (a reader of
    hyperiqa.data.datasets, with reader `options`), preprocessed as the module docstring says; split
    is then "all". device: where to compute (auto, cpu, cuda, cuda:N), whatever the checkpoint was
    trained on. overrides: TrainConfig fields changed for this evaluation (eval_batch_size, cache_dir,
    ...). A missing or wrong dataset folder raises DatasetError (a UserError).
    """
    folder = Path(checkpoint)
    if folder.suffix == ".safetensors":
        folder = folder.parent
    if not (folder / ckpt.CONFIG).is_file():
        raise UserError(f"checkpoint {checkpoint}: expected a checkpoint folder with {ckpt.CONFIG} (original-format "
                        "checkpoints carry no configuration; score images with hyperiqa.predict)")
    model, cfg = ckpt.load_model(folder)
    overrides = dict(overrides or {})
    # This machine's runtime, whatever the checkpoint's trainer used (a GPU share, a CUDA device, threads).
    cfg = cfg.portable().replace(device=device)
    if dataset is None:
        return _own_split(folder, model, cfg, split or "test", overrides, log)
    if split not in (None, "all"):
        raise UserError(f"split {split!r}: on another dataset every image is scored (split 'all')")
    return _other_dataset(folder, model, cfg, dataset, data_root, options or {}, overrides, log)


def _own_split(folder: Path, model, cfg: TrainConfig, split: str, overrides: dict, log) -> Scores:
    from hyperiqa.solver import Solver

    changes = {"device_cache_gb": 0.0}  # evaluation only: keep training images off the GPU
    if (folder / ckpt.SPLIT).is_file():
        changes.update(split="file", split_file=str((folder / ckpt.SPLIT).resolve()))
    cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes, **overrides}, source="--set")
    solver = Solver(cfg, model=model, log=log)
    indices, pred = solver.predict(split)
    paths = [solver.data.spec.records[i].path for i in indices]
    return Scores(cfg.dataset, split, paths, pred, solver.data.labels[indices].astype(np.float64), True)


def resize_rule(preprocess: dict | None, target) -> tuple[int | None, tuple[int, int] | None, str]:
    """(short_side, resize_to, whose rule) for showing dataset spec `target` to a checkpoint whose
    preprocess.json is `preprocess`: the checkpoint's rule if it has one, else the target's default."""
    pre = preprocess or {}
    if pre.get("resize_to"):
        return None, tuple(pre["resize_to"]), "the checkpoint's"
    if pre.get("short_side"):
        return int(pre["short_side"]), None, "the checkpoint's"
    return target.default_short_side, None, f"{target.name}'s default"


def _other_dataset(folder: Path, model, cfg: TrainConfig, dataset: str, data_root: str | None, options: dict,
                   overrides: dict, log) -> Scores:
    from hyperiqa.data import DecodedCache, EvalCrops
    from hyperiqa.data.datasets import load_dataset
    from hyperiqa.inference import Scoring

    cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides}, source="--set")
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    spec = load_dataset(dataset, data_root, options, cache_dir=cache_dir)
    pre = ckpt.read_preprocess(folder) or {}
    if "resize_short_side" in overrides or "resize_to" in overrides:
        short_side, resize_to, whose = cfg.resize_short_side or None, cfg.resize_to, "the overriding"
    else:
        short_side, resize_to, whose = resize_rule(pre, spec)
    size = (f"resized to {resize_to[0]}x{resize_to[1]}" if resize_to else
            f"short side {short_side}" if short_side else "original size")
    notes = [f"images: {size} ({whose} rule), {cfg.test_patches} crops of {cfg.patch_size} px"]
    cache = DecodedCache.build_or_open(spec.paths, cache_dir=cache_dir / "decoded", short_side=short_side,
                                       resize_to=tuple(resize_to) if resize_to else None,
                                       min_size=cfg.patch_size, workers=cfg.cache_workers, log=log)
    scoring = Scoring.load(model, device=cfg.device, amp=cfg.amp, channels_last=cfg.channels_last,
                           num_threads=cfg.num_threads, gpu_memory_fraction=cfg.gpu_memory_fraction)
    crops = EvalCrops(cache, np.arange(len(spec.records)), patch_size=cfg.patch_size,
                      crops_per_image=cfg.test_patches, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                      device=scoring.device, mean=model.input_mean, std=model.input_std,
                      channels_last=scoring.channels_last)
    pred = scoring.images(crops)
    label_range = pre.get("label_range")
    same_scale = label_range is not None and tuple(float(v) for v in label_range) == spec.raw_range
    if label_range is None:
        notes.append("rmse omitted: the checkpoint does not record its label scale (saved before label_range)")
    elif not same_scale:
        notes.append(f"rmse omitted: the checkpoint predicts on {label_range[0]:g}..{label_range[1]:g}, "
                     f"{spec.name} labels are on {spec.raw_range[0]:g}..{spec.raw_range[1]:g}")
    return Scores(spec.name, "all", spec.paths, pred, spec.labels, same_scale, notes)
