"""The `photos` dataset: real photographs that installed packages ship, with real distortions, offline.

22 photos from scikit-image, scikit-learn, matplotlib, PyWavelets and mahotas (docs/datasets.md lists
each with its licence note) are read as files from the installed packages, never through their
loaders (some of those download). Each photo is scaled so its short side lies in [SIZE, WORK_SIDE] and
cut into a centred grid of SIZE x SIZE crops; each crop is distorted by 7 types (6 for grayscale
photos) at 4 levels. Labels are 100 x HaarPSI(distorted, crop) computed with piq: a full-reference
METRIC, not human opinion scores. Groups are the source photos, so crops of one photo share a split.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from hyperiqa.data.generated import ensure_generated, is_complete
from hyperiqa.data.readers.base import DatasetError
from hyperiqa.utils import atomic_write_text

VERSION = "hyperiqa-photos-1"  # change when the generator changes: existing folders are regenerated
SIZE = 192        # crop side: fits 128-px patches, and MS-SSIM-style metrics need > 160
WORK_SIDE = 384   # larger photos are shrunk to this short side first, so a crop shows a scene, not a detail
SEED = 20260517
EXTRA = "pip install 'hyperiqa-tune[photos]'"
# import name -> distribution, for the error message; piq computes the labels, the rest ship photos
PACKAGES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "pywt": "PyWavelets", "mahotas": "mahotas",
            "piq": "piq"}
# name -> strength per level 1..4 (levels chosen so the weakest is near-invisible, the strongest obvious)
DISTORTIONS = {
    "blur": (0.6, 1.2, 2.0, 3.2),            # Gaussian radius in pixels
    "noise": (4.0, 8.0, 15.0, 25.0),         # standard deviation on the 0-255 scale
    "jpeg": (40, 20, 10, 5),                 # JPEG quality
    "jpeg2000": (16, 32, 64, 128),           # compression ratio
    "contrast": (0.7, 0.5, 0.35, 0.22),      # remaining fraction of the contrast
    "saturation": (0.75, 0.5, 0.3, 0.15),    # remaining fraction of the colour (colour photos only)
    "resample": (1.5, 2.0, 3.0, 4.0),        # bicubic downscale factor, then back up
}


@dataclass(frozen=True)
class Photo:
    name: str     # the group
    package: str  # import name
    file: str     # inside the installed package
    grey: bool


PHOTOS = (
    Photo("astronaut", "skimage", "data/astronaut.png", False),
    Photo("chelsea", "skimage", "data/chelsea.png", False),
    Photo("coffee", "skimage", "data/coffee.png", False),
    Photo("rocket", "skimage", "data/rocket.jpg", False),
    Photo("motorcycle", "skimage", "data/motorcycle_left.png", False),  # _right: the same scene
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", False),
    Photo("immunohistochemistry", "skimage", "data/ihc.png", False),
    Photo("retina", "skimage", "data/retina.jpg", False),
    Photo("camera", "skimage", "data/camera.png", True),
    Photo("brick", "skimage", "data/brick.png", True),
    Photo("grass", "skimage", "data/grass.png", True),
    Photo("gravel", "skimage", "data/gravel.png", True),
    Photo("coins", "skimage", "data/coins.png", True),
    Photo("moon", "skimage", "data/moon.png", True),
    Photo("page", "skimage", "data/page.png", True),
    Photo("text", "skimage", "data/text.png", True),
    Photo("china", "sklearn", "datasets/images/china.jpg", False),
    Photo("flower", "sklearn", "datasets/images/flower.jpg", False),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", False),
    Photo("ascent", "pywt", "data/ascent.npz", True),
    Photo("aero", "pywt", "data/aero.npz", True),
    Photo("luispedro", "mahotas", "demos/data/luispedro.jpg", False),
)


def ensure_photos_dataset(root: str | Path) -> Path:
    """Generate the dataset under `root` unless a complete copy is there; concurrent callers generate once."""
    if not is_complete(Path(root).expanduser().resolve(), VERSION):
        require_packages()  # before creating anything: a missing package leaves no empty folder behind
    return ensure_generated(root, VERSION, generate)


def require_packages() -> None:
    missing = [dist for module, dist in PACKAGES.items() if find_spec(module) is None]
    if missing:
        raise DatasetError(f"photos: the packages {', '.join(missing)} are not installed (they ship the "
                           f"photos and compute the labels); install them with {EXTRA}")


def generate(root: Path, photos: tuple[str, ...] | None = None, max_crops: int | None = None) -> None:
    """Write the images, labels.csv and sources.csv; `photos`/`max_crops` select a subset (tests)."""
    require_packages()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small images: extra threads only contend (docs/datasets.md, the photos dataset)
    try:
        _generate(root, photos, max_crops)
    finally:
        torch.set_num_threads(threads)


def _generate(root: Path, photos: tuple[str, ...] | None, max_crops: int | None) -> None:
    rows, sources = [], []
    for index, photo in enumerate(PHOTOS):
        if photos is not None and photo.name not in photos:
            continue
        image, digest = load_photo(photo)
        sources.append((photo.name, PACKAGES.get(photo.package, photo.package), photo.file, digest,
                        "grey" if photo.grey else "colour"))
        for c, crop in enumerate(crops(image)[:max_crops]):
            rng = np.random.default_rng([SEED, index, c])  # by position in PHOTOS: subsets give the same bytes
            names, images = [], []
            for kind, strengths in DISTORTIONS.items():
                if kind == "saturation" and photo.grey:
                    continue
                for level, strength in enumerate(strengths, start=1):
                    names.append((f"{photo.name}_{c}_{kind}{level}.png", kind, level))
                    images.append(distort(crop, kind, strength, rng))
            for (name, kind, level), img, label in zip(names, images, metric_labels(crop, images)):
                img.save(root / name, format="PNG")
                rows.append((name, f"{label:.3f}", photo.name, c, kind, level))
    _write_csv(root / "labels.csv", ["image", "label", "group", "crop", "distortion", "level"], rows)
    _write_csv(root / "sources.csv", ["group", "package", "file", "sha256", "colour"], sources)


def load_photo(photo: Photo) -> tuple[Image.Image, str]:
    """The photo as an 'L' or 'RGB' image, and the sha256 of the file it came from."""
    spec = find_spec(photo.package)
    path = Path(next(iter(spec.submodule_search_locations))) / photo.file
    data = path.read_bytes()
    if path.suffix == ".npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            image = Image.fromarray(np.asarray(archive["data"], dtype=np.uint8))
    else:
        image = Image.open(io.BytesIO(data))
    return image.convert("L" if photo.grey else "RGB"), hashlib.sha256(data).hexdigest()


def crops(image: Image.Image) -> list[Image.Image]:
    """Short side scaled into [SIZE, WORK_SIDE], then the centred grid of whole SIZE x SIZE crops."""
    w, h = image.size
    short = min(w, h)
    scale = min(max(short, SIZE), WORK_SIDE) / short
    if scale != 1:
        w, h = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    rows, cols = h // SIZE, w // SIZE
    top, left = (h - rows * SIZE) // 2, (w - cols * SIZE) // 2
    return [image.crop((left + j * SIZE, top + i * SIZE, left + (j + 1) * SIZE, top + (i + 1) * SIZE))
            for i in range(rows) for j in range(cols)]


def distort(image: Image.Image, kind: str, strength: float, rng: np.random.Generator) -> Image.Image:
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(strength))
    if kind == "noise":
        arr = np.asarray(image, dtype=np.float64)
        return _from_float(arr + rng.normal(0.0, strength, arr.shape))
    if kind in ("jpeg", "jpeg2000"):
        buf = io.BytesIO()
        if kind == "jpeg":
            image.save(buf, format="JPEG", quality=int(strength))
        else:
            image.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(strength)])
        with Image.open(io.BytesIO(buf.getvalue())) as decoded:
            return decoded.convert(image.mode)
    if kind == "contrast":
        arr = np.asarray(image, dtype=np.float64)
        mean = arr.mean(axis=(0, 1), keepdims=True)
        return _from_float(mean + strength * (arr - mean))
    if kind == "saturation":
        return ImageEnhance.Color(image).enhance(strength)
    if kind == "resample":
        w, h = image.size
        small = image.resize((round(w / strength), round(h / strength)), Image.Resampling.BICUBIC)
        return small.resize((w, h), Image.Resampling.BICUBIC)
    raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(DISTORTIONS)}")


def metric_labels(reference: Image.Image, images: list[Image.Image]) -> list[float]:
    """100 x HaarPSI of each image against the reference, one image at a time (no batch-size effects)."""
    import piq
    import torch

    def tensor(image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]

    ref = tensor(reference)
    with torch.no_grad():
        return [100.0 * float(piq.haarpsi(tensor(im), ref, data_range=1.0)) for im in images]


def _from_float(values: np.ndarray) -> Image.Image:  # 2-D -> 'L', 3 channels -> 'RGB'
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
