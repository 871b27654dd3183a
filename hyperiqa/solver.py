"""The fixed HyperIQA solver: one optimizer and one LR schedule for the whole run (docs/original-defects.md).

Compared with the original solver: both param groups decay together and keep their ratio, the Adam
state persists across epochs, every trainable parameter sits in exactly one group, evaluation uses
fixed crops averaged per image, model selection uses cfg.selection_metric (validation by default),
and the whole state (weights, optimizer, schedule, RNG, best epoch) can be saved and resumed exactly.
cfg.legacy brings the original's defects back one by one, for ablations: the LR and optimizer rules
live in hyperiqa/schedules.py (group_factors, epoch_start), random evaluation crops in _eval_crops.

Metrics per epoch: train_loss (cfg.loss per batch, averaged over patches) and train_srcc (PATCH level, on
the patches seen during the epoch); val_*/test_* are image level (metrics.IMAGE_METRICS: srcc, plcc,
plcc_logistic, krcc, rmse). With cfg.train_eval_images > 0 also train_image_srcc/plcc: a fixed seeded
subset of the training images evaluated exactly as val and test are (same crops rule, same averaging).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hyperiqa import checkpoint as ckpt
from hyperiqa import metrics as M
from hyperiqa.config import ConfigError, TrainConfig
from hyperiqa.inference import EVAL_SPLITS, Scoring
from hyperiqa.losses import loss_function
from hyperiqa.runtime import apply_runtime, resolve_device
from hyperiqa.schedules import build_scheduler, epoch_start
from hyperiqa.utils import UserError, seed_everything

_TRAIN_SUBSET_STREAM = 0x7EA1_5E7  # separates the train_eval_images subset's random draw from other seeded ones


class Solver:
    """Train and evaluate one TrainConfig. `epochs()` drives the run; state_dict() resumes it exactly."""

    def __init__(self, cfg: TrainConfig, *, model=None, data=None, log=print):
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        apply_runtime(self.device, num_threads=cfg.num_threads, gpu_memory_fraction=cfg.gpu_memory_fraction)
        seed_everything(cfg.seed)  # before the model is built: random init depends on it
        if model is None:
            from hyperiqa.models import build_model

            model = build_model(cfg)
        source = getattr(getattr(model, "backbone", None), "weights_source", None)
        if source:  # where the backbone weights came from, in the run log and each trial's train.log
            log(f"backbone {cfg.backbone}: {source}")
        self.model = model.to(self.device)
        # How this run computes (autocast dtype by the GPU's capability, memory format): training steps,
        # evaluation, hyperiqa.evaluate and hyperiqa.predict all go through this one object's rules.
        self.scoring = Scoring(self.model, self.device, amp=cfg.amp, channels_last=cfg.channels_last)
        if self.scoring.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cuda and cfg.amp and self.scoring.dtype is None:
            log(f"amp: fp32 on {torch.cuda.get_device_name(self.device)}: compute capability "
                f"{'.'.join(map(str, torch.cuda.get_device_capability(self.device)))} has no native bf16")
        if data is None:
            from hyperiqa.data import prepare_data

            data = prepare_data(cfg, device=self.device, mean=model.input_mean, std=model.input_std, log=log)
        self.data = data
        self._check_selection_metric()
        if cfg.label_norm == "standardize":
            self._standardize_output()
        # torch.compile wraps the module; self.model stays the plain one so state_dict keys never change.
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.scoring.forward = self.forward
        self.loss_fn = loss_function(cfg.loss)
        self.train_eval = self._crops(self._train_eval_indices()) if cfg.train_eval_images else None
        self.optimizer = self._build_optimizer()
        self.iters_per_epoch = max(len(data.train), 1)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.iters_per_epoch)
        self.epoch = 0
        self.best: dict | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self.done = False
        self.diverged_at: int | None = None

    # --- setup ------------------------------------------------------------------------------
    def _check_selection_metric(self) -> None:
        split = self.cfg.selection_metric.split("_")[0]
        if getattr(self.data, split) is None:
            raise ConfigError(f"selection_metric = {self.cfg.selection_metric!r}, but the split has no {split} "
                              f"images; raise {split}_fraction or choose another selection_metric")

    def _standardize_output(self) -> None:
        """Start the model's output at the training labels' mean and spread (load_state_dict keeps them)."""
        labels = self.data.labels[self.data.split.train]
        self.model.label_shift.fill_(float(labels.mean()))
        self.model.label_scale.fill_(max(float(labels.std()), 1e-6))

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = [{"params": list(self.model.backbone_parameters()), "lr": cfg.backbone_lr, "name": "backbone"},
                  {"params": list(self.model.head_parameters()), "lr": cfg.backbone_lr * cfg.lr_ratio,
                   "name": "head"}]
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=cfg.backbone_lr, weight_decay=cfg.weight_decay, **self._optimizer_kernel())

    def _optimizer_kernel(self) -> dict:
        """Adam's implementation on this device: one fused kernel per step on CUDA, torch's default elsewhere."""
        return {"fused": True} if self.cuda else {}

    def _prepare_optimizer(self, epoch: int) -> None:
        """Put the optimizer in the state schedules.epoch_start gives for 0-based `epoch` (a no-op by default)."""
        start = epoch_start(self.cfg, epoch)
        head = next(g for g in self.optimizer.param_groups if g["name"] == "head")
        if start.train_head != bool(head["params"]):
            for p in head["params"]:
                self.optimizer.state.pop(p, None)  # state_dict() cannot save state of a param in no group
            head["params"] = list(self.model.head_parameters()) if start.train_head else []
        if start.reset_optimizer:
            self.optimizer.state.clear()

    def _autocast(self):
        return self.scoring.autocast()

    # --- training ---------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """One pass over the training patches. Syncs with the device once at the end (plus progress lines)."""
        cfg, sampler = self.cfg, self.data.train
        self.model.train()
        n_batches, epoch = len(sampler), self.epoch + 1
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        preds, labels = [], []
        start = last_log = time.monotonic()
        seen, check_every = 0, max(n_batches // 10, 1)
        self._prepare_optimizer(self.epoch)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        for i, (x, y) in enumerate(sampler.epoch(self.epoch), 1):
            with self._autocast():
                pred = self.forward(x).float()
            loss = self.loss_fn(pred, y)
            # Through the model, not the optimizer: a head left out of the optimizer (legacy
            # head_frozen_after_epoch1) must not accumulate gradients into a later grad_clip norm.
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            lrs = [g["lr"] for g in self.optimizer.param_groups]  # the LRs this step uses
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            preds.append(pred.detach())
            labels.append(y)
            seen += len(y)
            if i < n_batches and i % check_every == 0:  # ~10 checks per epoch, one sync each
                if not torch.isfinite(loss_sum):
                    break
                now = time.monotonic()
                if now - last_log >= 10:  # progress only for slow epochs, at most every 10 s
                    last_log = now
                    self.log(f"  epoch {epoch} [{i}/{n_batches}] loss {loss_sum.item() / seen:.4f} "
                             f"{seen / (now - start):.0f} patches/s")
        total = loss_sum.item()  # the epoch's one sync
        elapsed = max(time.monotonic() - start, 1e-9)
        out = {M.LR_BACKBONE: lrs[0], M.LR_HEAD: lrs[1], M.PATCHES_PER_S: seen / elapsed}
        if not math.isfinite(total):
            self.diverged_at = epoch
            return {M.TRAIN_LOSS: None, M.TRAIN_SRCC: None, **out}
        pred = torch.cat(preds).cpu().numpy() if preds else []
        target = torch.cat(labels).cpu().numpy() if labels else []
        srcc = M.correlations(pred, target)["srcc"] if seen else float("nan")
        return {M.TRAIN_LOSS: total / max(seen, 1), M.TRAIN_SRCC: M.finite_or_none(srcc), **out}

    # --- evaluation -------------------------------------------------------------------------
    def _eval_indices(self, split: str):
        s = self.data.split
        if split == "all":
            return np.concatenate([s.train, s.val, s.test])
        return getattr(s, split)

    def _eval_crops(self, split: str):
        if split not in EVAL_SPLITS:
            raise UserError(f"split {split!r}: allowed values are {', '.join(EVAL_SPLITS)}")
        crops = getattr(self.data, split, None) if split in ("val", "test") else None
        if crops is not None:
            return crops
        indices = self._eval_indices(split)
        if len(indices) == 0:
            raise UserError(f"split {split!r} has no images in this dataset split")
        return self._crops(indices)

    def _crops(self, indices: np.ndarray):
        """Fixed evaluation crops of `indices` (cache records), by the rule prepare_data uses for val/test."""
        from hyperiqa.data.patches import EvalCrops

        cfg = self.cfg
        return EvalCrops(self.data.cache, indices, patch_size=cfg.patch_size, crops_per_image=cfg.test_patches,
                         batch_size=cfg.eval_batch_size, seed=cfg.seed, device=self.device,
                         mean=self.model.input_mean, std=self.model.input_std,
                         channels_last=self.scoring.channels_last)

    def _train_eval_indices(self) -> np.ndarray:
        """min(cfg.train_eval_images, #train) training records, in split order: a pure function of the seed
        and the split that draws from its own generator, so the training RNG stream stays untouched."""
        train = self.data.split.train
        rng = np.random.default_rng([self.cfg.seed, _TRAIN_SUBSET_STREAM])
        n = min(self.cfg.train_eval_images, len(train))
        return train[np.sort(rng.choice(len(train), size=n, replace=False))]

    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(record indices, predictions) of `split` (val, test, train or all): fixed crops, averaged per image.

        With legacy random_eval_crops the crops change with the number of epochs trained, as the
        original's random test crops did, but seeded by (seed, epoch): a run, its resumption and a
        re-evaluated checkpoint see the same ones.
        """
        return self._predict(self._eval_crops(split))

    def _predict(self, crops) -> tuple[np.ndarray, np.ndarray]:
        if "random_eval_crops" in self.cfg.legacy_defects:
            crops.draw(epoch=self.epoch)
        self.model.eval()
        return crops.indices, self.scoring.images(crops)

    def evaluate(self, split: str) -> dict:
        """metrics.correlations (srcc, plcc, plcc_logistic, krcc, rmse) of `split`, image level."""
        indices, pred = self.predict(split)
        return M.correlations(pred, self.data.labels[indices])

    # --- the run ----------------------------------------------------------------------------
    def epochs(self) -> Iterator[dict]:
        """Run the remaining epochs; yield one metrics dict per epoch (see the module docstring).

        Stops after cfg.epochs ("completed"), after cfg.patience epochs without a new best
        ("early_stopped") or on a non-finite training loss ("diverged", never an exception).
        """
        while not self.done:
            if self.epoch >= self.cfg.epochs:
                self.done = True
                return
            yield self._run_epoch()

    def _run_epoch(self) -> dict:
        start = time.monotonic()
        metrics = {M.EPOCH: self.epoch + 1, **self.train_epoch()}
        self.epoch += 1
        if self.diverged_at is not None:
            metrics.update({f"{s}_{k}": None for s in ("val", "test") for k in M.IMAGE_METRICS})
            if self.train_eval is not None:
                metrics.update({M.TRAIN_IMAGE_SRCC: None, M.TRAIN_IMAGE_PLCC: None})
            metrics[M.STATUS] = "diverged"
            metrics["message"] = f"diverged at epoch {self.epoch}: non-finite training loss"
            self.log(metrics["message"])
            self.done = True
        else:
            for split in ("val", "test"):
                result = self.evaluate(split) if getattr(self.data, split) is not None else {}
                for key in M.IMAGE_METRICS:
                    metrics[f"{split}_{key}"] = M.finite_or_none(result.get(key))
            if self.train_eval is not None:
                metrics.update(self._evaluate_train_subset())
            metrics[M.STATUS] = self._update_best_and_status(metrics)
        metrics["best_epoch"] = self.best_epoch
        metrics[f"best_{self.cfg.selection_metric}"] = self.best[self.cfg.selection_metric] if self.best else None
        metrics["time_s"] = time.monotonic() - start
        self.history.append(metrics)
        return metrics

    def _evaluate_train_subset(self) -> dict:
        indices, pred = self._predict(self.train_eval)
        result = M.correlations(pred, self.data.labels[indices])
        return {M.TRAIN_IMAGE_SRCC: M.finite_or_none(result["srcc"]),
                M.TRAIN_IMAGE_PLCC: M.finite_or_none(result["plcc"])}

    def _update_best_and_status(self, metrics: dict) -> str:
        name = self.cfg.selection_metric
        value = metrics[name]  # None when NaN/undefined: never counts as a best
        if value is not None and (self.best is None or value > self.best[name]):
            self.best, self.best_epoch = dict(metrics), self.epoch
        if self.epoch >= self.cfg.epochs:
            self.done = True
            return "completed"
        if self.cfg.patience and self.epoch - (self.best_epoch or 0) >= self.cfg.patience:
            self.done = True
            self.log(f"early stop: no new best {name} for {self.cfg.patience} epochs")
            return "early_stopped"
        return "running"

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly; tensors and plain Python only (loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "history": self.history,
                "diverged_at": self.diverged_at, "rng": ckpt.rng_state(cuda=self.cuda), "config": self.cfg.portable().to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if state["epoch"] > 0:  # the saved optimizer has the groups of the last epoch trained
            self._prepare_optimizer(state["epoch"] - 1)
        live = [{k: g[k] for k in KERNEL_SETTINGS if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        _keep_kernel_settings(self.optimizer, live)
        _match_parameter_layout(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.history = list(state["history"])
        self.diverged_at = state.get("diverged_at")
        # A finished run stays finished, except that a larger cfg.epochs extends a completed one.
        last = self.history[-1].get(M.STATUS) if self.history else None
        self.done = self.diverged_at is not None or last == "early_stopped"
        ckpt.set_rng_state(state["rng"], cuda=self.cuda)

    def save_checkpoint(self, directory, metrics: dict) -> None:
        """model.safetensors, trainer_state.pt, config.yaml, metrics.json, split.csv, preprocess.json."""
        state = self.state_dict()
        ckpt.save_checkpoint_files(Path(directory), model_state=state.pop("model"), trainer_state=state,
                                   cfg=self.cfg, metrics=metrics, data=self.data,
                                   mean=self.model.input_mean, std=self.model.input_std)

    def load_checkpoint(self, directory) -> None:
        """Restore a folder written by save_checkpoint (weights, optimizer, schedule, RNG, history)."""
        self.load_state_dict(ckpt.load_resume_state(Path(directory)))


# Param-group settings that say how Adam computes on this machine, not what it has learned.
KERNEL_SETTINGS = ("fused", "foreach", "capturable")


def _keep_kernel_settings(optimizer: torch.optim.Optimizer, live: list[dict]) -> None:
    """Give the groups back this machine's KERNEL_SETTINGS after Optimizer.load_state_dict.

    load_state_dict copies every saved group setting over the live one: a state written by a CPU run
    (fused None, foreach True) turned a CUDA run's fused Adam into the slower foreach path for the rest
    of the run, silently. Adam keeps `step` on the parameter's device (float32) when fused or
    capturable and on the CPU otherwise, and load_state_dict placed it by the saved settings: place it
    by the live ones.
    """
    for group, settings in zip(optimizer.param_groups, live):
        group.update(settings)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if torch.is_tensor(step):
                where = {"device": param.device, "dtype": torch.float32} if on_device else {"device": "cpu"}
                optimizer.state[param]["step"] = step.to(**where)


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor its parameter's strides.

    Optimizer.load_state_dict moves state to the parameter's device and dtype but keeps the saved
    strides: moments saved from a CPU (contiguous) run beside channels_last CUDA weights make the fused
    Adam kernel refuse the step. empty_like(param) has the parameter's layout; copy_ keeps the values.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
