"""The built-in demo dataset: generated offline and deterministically, small enough for a CPU.

60 reference images with natural image statistics (1/f colour noise with flat shapes and sharp edges
on top), each distorted by blur, Gaussian noise, JPEG and contrast reduction at 4 strengths. Quality
falls with strength at a rate per distortion type, plus a small per-reference offset so that labels
of different references and types interleave as human scores do. Groups are references, so a split
by group keeps every content in one split.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hyperiqa.data.generated import ensure_generated
from hyperiqa.utils import atomic_write_text

VERSION = "hyperiqa-demo-1"  # change when the generator changes: existing folders are regenerated
NUM_REFERENCES = 60
SIZE = 128
SEED = 20200614
# name -> (strength per level 1..4, quality points lost per level). Of the variants tried (stronger
# levels, equal losses, smoother content), these gave the demo config the best val SRCC in 5 epochs.
DISTORTIONS = {
    "blur": ((0.8, 1.5, 2.5, 4.0), 19.0),        # Gaussian radius in pixels
    "noise": ((5.0, 10.0, 18.0, 30.0), 21.0),    # standard deviation on the 0-255 scale
    "jpeg": ((40, 20, 10, 5), 17.0),             # JPEG quality
    "contrast": ((0.7, 0.5, 0.35, 0.22), 15.0),  # remaining fraction of the contrast
}
REFERENCE_OFFSET = 4.0  # per-reference label offset, uniform in +-this: contents differ a little in quality
SPECTRUM_SLOPE = (0.9, 1.3)  # amplitude ~ 1/f^a; natural scenes have a close to 1
REFERENCE_QUALITY = 92.0


def ensure_demo_dataset(root: str | Path) -> Path:
    """Generate the demo under `root` unless a complete copy is there; concurrent callers generate once."""
    return ensure_generated(root, VERSION, lambda folder: _generate(folder))  # looked up late: tests patch it


def _generate(root: Path, references: int = NUM_REFERENCES) -> None:
    rows = []
    for ref in range(references):
        rng = np.random.default_rng([SEED, ref])
        group = f"ref{ref:02d}"
        image = reference_image(rng)
        offset = float(rng.uniform(-REFERENCE_OFFSET, REFERENCE_OFFSET))
        name = f"{group}_original.png"
        _save_png(image, root / name)
        rows.append((name, REFERENCE_QUALITY + offset, group))
        for kind, (strengths, drop) in DISTORTIONS.items():
            for level, strength in enumerate(strengths, start=1):
                name = f"{group}_{kind}{level}.png"
                _save_png(distort(image, kind, strength, rng), root / name)
                rows.append((name, REFERENCE_QUALITY + offset - drop * level, group))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "label", "group"])
    writer.writerows((name, f"{label:.2f}", group) for name, label, group in rows)
    atomic_write_text(root / "labels.csv", text.getvalue())


def reference_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """1/f^a colour noise (the power spectrum of natural scenes) with flat shapes: smooth areas, texture, edges."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    amplitude = radius ** -rng.uniform(*SPECTRUM_SLOPE)
    channels = [np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * amplitude).real for _ in range(3)]
    field = np.stack(channels, axis=-1) @ rng.normal(0.0, 1.0, (3, 3))  # correlated colour channels
    field = (field - field.mean()) / (field.std() + 1e-9) * 0.18 + rng.uniform(0.3, 0.7, 3)
    img = Image.fromarray(_to_uint8(field * 255))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.integers(0, size - 16, 2)
        x1, y1 = x0 + rng.integers(12, size // 2), y0 + rng.integers(12, size // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.rectangle if rng.random() < 0.6 else draw.ellipse
        shape([int(x0), int(y0), int(x1), int(y1)], fill=colour)
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(arr, (1, 99))  # every reference uses the full range: contrast loss is visible
    return _to_uint8((arr - lo) / max(hi - lo, 1.0) * 255)


def distort(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(strength)))
    if kind == "noise":
        return _to_uint8(image + rng.normal(0.0, strength, image.shape))
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(strength))
        return np.asarray(Image.open(buf).convert("RGB"))
    if kind == "contrast":
        mean = image.mean(axis=(0, 1), keepdims=True)
        return _to_uint8(mean + strength * (image - mean))
    raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(DISTORTIONS)}")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG")
