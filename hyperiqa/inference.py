"""Scoring images with a trained model, apart from training: what the solver, evaluation and predict share.

- predict_images: the mean score of each image of an EvalCrops (Solver.evaluate, cross-dataset evaluation),
  so a checkpoint scores an image the same way whichever dataset the image comes from.
- load_image, crops, score: images from disk, as `python -m hyperiqa.predict` scores them.
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


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when amp is on; the CPU always runs fp32."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict_images(forward, crops, *, device: torch.device, amp: bool) -> np.ndarray:
    """Mean score of each image of `crops` (an EvalCrops), in the order of crops.indices.

    Shared by Solver.evaluate and cross-dataset evaluation (hyperiqa.evaluation), so a checkpoint
    scores an image the same way whichever dataset the image comes from. The caller sets eval mode.
    """
    scores, positions = [], []
    with torch.inference_mode(), autocast(device, amp):
        for x, pos in crops.batches():
            scores.append(forward(x).float())
            positions.append(pos)
    patch = torch.cat(scores).cpu().numpy()
    pos = torch.cat(positions).cpu().numpy()
    return M.image_scores(patch, pos, crops.num_images)


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


@torch.inference_mode()
def score(model, batches, *, mean, std, device, batch_size: int) -> np.ndarray:
    """Run crops (uint8 NHWC arrays, one per image) through the model; mean score per image."""
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    flat = np.concatenate(batches)
    owner = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    out = []
    for i in range(0, len(flat), batch_size):
        x = torch.from_numpy(flat[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float().div_(255)
        out.append(model((x - mean_t) / std_t).float().cpu())
    patch_scores = torch.cat(out).numpy().astype(np.float64)
    return np.bincount(owner, weights=patch_scores) / np.bincount(owner)
