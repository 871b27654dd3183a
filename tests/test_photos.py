"""The `photos` dataset: packaged photos, deterministic bytes, labels falling with level, groups = photos.

A few photos and crops are generated (seconds); the full set is generated only by its users.
"""

import csv
from collections import defaultdict

import pytest
from PIL import Image

from hyperiqa.data import photos
from hyperiqa.data.datasets import DatasetError, load_dataset
from hyperiqa.data.splits import random_split

SUBSET = ("chelsea", "camera")  # one colour photo (7 distortion types), one grayscale (6)
PER_CROP = {"chelsea": 7 * 4, "camera": 6 * 4}


def _small(root, photos_=SUBSET, max_crops=1):
    photos.generate(root, photos_, max_crops)


def _rows(root):
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    _small(root)
    return root


def test_every_packaged_photo_is_there_and_real_sized():
    for photo in photos.PHOTOS:
        image, digest = photos.load_photo(photo)
        assert image.mode == ("L" if photo.grey else "RGB"), photo.name
        assert min(image.size) >= 172 and len(digest) == 64, photo.name


def test_crop_grid():
    assert [c.size for c in photos.crops(Image.new("RGB", (576, 384)))] == [(192, 192)] * 6
    assert len(photos.crops(Image.new("RGB", (1000, 872)))) == 4  # shrunk to short side 384 first
    assert len(photos.crops(Image.new("L", (448, 172)))) == 2     # too small: enlarged to 192


def test_same_bytes_and_labels_when_generated_again(small_root, tmp_path):
    _small(tmp_path)
    names = sorted(p.name for p in small_root.glob("*.png"))
    assert names == sorted(p.name for p in tmp_path.glob("*.png")) and len(names) == sum(PER_CROP.values())
    for name in names:
        assert (tmp_path / name).read_bytes() == (small_root / name).read_bytes(), name
    assert (tmp_path / "labels.csv").read_bytes() == (small_root / "labels.csv").read_bytes()


def test_labels_fall_with_level(small_root):
    chains = defaultdict(dict)
    for r in _rows(small_root):
        chains[(r["group"], r["crop"], r["distortion"])][int(r["level"])] = float(r["label"])
    kinds = {group: {k for g, _, k in chains if g == group} for group in SUBSET}
    assert "saturation" in kinds["chelsea"] and "saturation" not in kinds["camera"]
    for key, levels in chains.items():
        chain = [100.0] + [levels[level] for level in sorted(levels)]  # the undistorted crop scores 100
        assert len(levels) == 4 and chain == sorted(chain, reverse=True) and len(set(chain)) == 5, key


def test_reader_spec_groups_and_split(tmp_path, monkeypatch):
    original = photos.generate
    monkeypatch.setattr(photos, "generate", lambda root: original(root, SUBSET, 2))
    spec = load_dataset("photos", None, cache_dir=tmp_path)
    assert spec.root == str(tmp_path / "photos-v1") and spec.by_reference
    assert len(spec.records) == 2 * sum(PER_CROP.values())
    assert set(spec.groups) == set(SUBSET)
    assert all(0 < r.label < 100 and r.label == r.raw_label for r in spec.records)
    split = random_split(spec, val_fraction=0.0, test_fraction=0.5, seed=0)
    train = {spec.groups[i] for i in split.train}
    test = {spec.groups[i] for i in split.test}
    assert train and test and not train & test  # both crops of a photo go to the same side


def test_missing_package_is_one_error_naming_the_extra(tmp_path, monkeypatch):
    real = photos.find_spec
    monkeypatch.setattr(photos, "find_spec", lambda name: None if name == "piq" else real(name))
    with pytest.raises(DatasetError, match=r"piq .*hyperiqa-tune\[photos\]"):
        load_dataset("photos", None, cache_dir=tmp_path)
    assert not (tmp_path / "photos-v1").exists()
