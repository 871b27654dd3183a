"""Scoring images with a trained model, apart from training: what the solver, evaluation and predict share.

- Scoring: how this process scores images (device, autocast dtype, memory format, normalisation),
  the one path of Solver.evaluate, `python -m hyperiqa.evaluate` (its own split and other datasets,
  so a search's --cross scores too) and `python -m hyperiqa.predict`: a checkpoint scores an image
  the same way whichever of them asks.
- amp_dtype: the autocast dtype of a device, by its compute capability (training uses it too).
- load_image, crops: images from disk, as `python -m hyperiqa.predict` cuts them.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hyperiqa import metrics as M
from hyperiqa.data.cache import decode_image

EVAL_SPLITS = ("val", "test", "train", "all")

# bf16 autocast needs compute capability 8.0 (A100, H100, L4, RTX 30xx and later) to run natively.
# Below it (V100, T4) bf16 is emulated, slower than fp32. There AMP falls back to fp32, not to fp16 with a
# GradScaler: fp16 would add loss scaling, a scaler state to every checkpoint, skipped steps that shift
# the LR schedule against the epochs, and an overflow risk beside grad_clip, for a speed-up on
# cards few runs use; fp32 gives the same numbers as the CPU and keeps one checkpoint format.
BF16_MIN_CAPABILITY = (8, 0)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for `device` with TrainConfig.amp = `amp`; None runs fp32.

    bf16 on a CUDA device of compute capability >= BF16_MIN_CAPABILITY, fp32 elsewhere (older GPUs and
    the CPU, where bf16 autocast is slower than fp32 on most processors).
    """
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY else None


def use_channels_last(device: torch.device, channels_last: bool) -> bool:
    """TrainConfig.channels_last applies on CUDA (tensor cores want NHWC); the CPU keeps NCHW."""
    return device.type == "cuda" and channels_last


class Scoring:
    """A model, the device it runs on, its autocast dtype and memory format: how this process scores.

    Scoring.load puts a model on this machine (runtime, device, memory format, eval mode); the Solver
    builds one around the model it trains. images() scores EvalCrops (a dataset's cache), arrays()
    uint8 crops cut from files; both normalise with the training data's normaliser, run under the
    same autocast and average crop scores per image with metrics.image_scores.
    """

    def __init__(self, forward, device: torch.device, *, amp: bool, channels_last: bool):
        self.forward, self.device = forward, torch.device(device)
        self.dtype = amp_dtype(self.device, amp)
        self.channels_last = use_channels_last(self.device, channels_last)

    @classmethod
    def load(cls, model, *, device: str = "auto", amp: bool = True, channels_last: bool = True,
             num_threads: int = 0, gpu_memory_fraction: float | None = None) -> Scoring:
        """Set this process's runtime (hyperiqa.runtime) and put `model` on its device, in eval mode."""
        from hyperiqa.runtime import apply_runtime, resolve_device

        dev = resolve_device(device)
        apply_runtime(dev, num_threads=num_threads, gpu_memory_fraction=gpu_memory_fraction)
        scoring = cls(model, dev, amp=amp, channels_last=channels_last)
        model.to(dev).eval()
        if scoring.channels_last:
            model.to(memory_format=torch.channels_last)
        return scoring

    def autocast(self):
        """The autocast context of training steps and scoring (a no-op when dtype is None)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        precision = "fp32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"
        return f"{self.device}, {precision}, {'channels_last' if self.channels_last else 'NCHW'}"

    def images(self, crops) -> np.ndarray:
        """Mean score of each image of `crops` (an EvalCrops), in the order of crops.indices.

        The caller sets eval mode (a training solver switches back and forth) and builds the crops with
        this object's device and channels_last.
        """
        scores, positions = [], []
        with torch.inference_mode(), self.autocast():
            for x, pos in crops.batches():
                scores.append(self.forward(x).float())
                positions.append(pos)
        patch = torch.cat(scores).cpu().numpy()
        pos = torch.cat(positions).cpu().numpy()
        return M.image_scores(patch, pos, crops.num_images)

    def arrays(self, batches: list[np.ndarray], *, mean, std, batch_size: int) -> np.ndarray:
        """Mean score of each image given as its crops (one uint8 (n, P, P, 3) array per image)."""
        from hyperiqa.data.patches import _Normaliser  # the normalisation EvalCrops applies, exactly

        normalise = _Normaliser(mean, std, self.device, self.channels_last)
        flat = np.concatenate(batches)
        owner = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
        out = []
        with torch.inference_mode(), self.autocast():
            for i in range(0, len(flat), batch_size):
                x = torch.from_numpy(flat[i:i + batch_size]).to(self.device)
                out.append(self.forward(normalise(x, 0)).float().cpu())
        return M.image_scores(torch.cat(out).numpy(), owner, len(batches))


def load_image(path: Path, *, patch: int, short_side: int | None, resize_to) -> np.ndarray:
    """RGB uint8 (H, W, 3) exactly as the training cache stored it: the same decode and resize function."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return decode_image(str(path), short_side=short_side, resize_to=tuple(resize_to) if resize_to else None,
                            min_size=patch)


def crops(image: np.ndarray, *, patch: int, n: int, seed: int) -> np.ndarray:
    """(n, patch, patch, 3) crops at positions fixed by `seed` and the image size."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    ys = rng.integers(0, h - patch + 1, size=n)
    xs = rng.integers(0, w - patch + 1, size=n)
    return np.stack([image[y:y + patch, x:x + patch] for y, x in zip(ys, xs)])


def score(model, batches, *, mean, std, device, batch_size: int) -> np.ndarray:
    """Scoring.arrays in fp32 and NCHW on `device`, with the model where it is (ONNX comparisons, tests)."""
    return Scoring(model, torch.device(device), amp=False, channels_last=False).arrays(
        batches, mean=mean, std=std, batch_size=batch_size)
