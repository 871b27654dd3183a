"""Shared fixtures: a tiny learnable image dataset and a matching small TrainConfig (CPU, offline)."""

from __future__ import annotations

import csv
import os

# One intra-op thread, here and in every subprocess a test starts: the tensors are tiny, and on a
# 2-core machine OpenMP threads that spin against any other load made steps 20x slower.
# HYPERIQA_TEST_THREADS=2 runs the suite with another thread count: no test may depend on it.
THREADS = int(os.environ.get("HYPERIQA_TEST_THREADS", "1"))
# No test downloads: a backbone that tried to reach the Hugging Face hub fails at once instead of waiting.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = str(THREADS)
# The suite runs as users do: without --address, launch.start_ray starts a Ray of the run's own, whatever
# /tmp/ray/ray_current_cluster names (a test's Cluster in the other xdist worker, another run on this
# machine); a RAY_ADDRESS of the shell (or of a Ray Job running the suite) would make every search join it.
# Tests that call ray.init() themselves pass address="local"; tests of --address pass theirs.
os.environ.pop("RAY_ADDRESS", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from hyperiqa.config import TrainConfig  # noqa: E402

torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _suite_threads():
    """Every test starts at the suite's thread count: a Solver with cfg.num_threads changes the process's
    count, and a later test comparing with a subprocess (which starts at OMP_NUM_THREADS) would then
    compare runs made with different reduction orders."""
    torch.set_num_threads(THREADS)

TINY_GROUPS, TINY_LEVELS, TINY_SIZE = 6, 4, 48


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """24 images of 48x48 in 6 groups (one "reference" texture each) and root/labels.csv.

    Level k of a group is blurred (radius k) and darkened (x(1 - 0.15k)); its label is 9 - 2k plus a
    little noise, so the label is learnable from brightness and sharpness.
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    rng = np.random.default_rng(0)
    rows = []
    for g in range(TINY_GROUPS):
        base = rng.integers(0, 256, size=(TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
        for k in range(TINY_LEVELS):
            im = Image.fromarray(base).filter(ImageFilter.GaussianBlur(radius=k))
            im = Image.fromarray((np.asarray(im) * (1 - 0.15 * k)).astype(np.uint8))
            name = f"g{g}_l{k}.png"
            im.save(root / name)
            rows.append({"image": name, "label": round(9 - 2 * k + rng.normal(0, 0.1), 3), "group": f"g{g}"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="session")  # a pure factory: module-scoped fixtures may share one run
def tiny_cfg(tiny_dataset, tiny_cache_dir):
    """A TrainConfig for tiny_dataset: random-init test_resnet (timm's smallest ResNet), 32x32 patches, 4 iterations per epoch."""

    def make(**overrides) -> TrainConfig:
        base = dict(dataset="csv", data_root=str(tiny_dataset),
                    dataset_options={"csv": "labels.csv", "image_column": "image", "label_column": "label",
                                     "group_column": "group"},
                    backbone="test_resnet", pretrained=False, patch_size=32, train_patches=2, test_patches=2,
                    batch_size=8, eval_batch_size=16, epochs=3, backbone_lr=1e-3, lr_ratio=10.0,
                    val_fraction=0.2, test_fraction=0.2, cache_dir=str(tiny_cache_dir), cache_workers=1,
                    device="cpu")
        return TrainConfig.from_dict({**base, **overrides}, source="tiny_cfg")

    return make
