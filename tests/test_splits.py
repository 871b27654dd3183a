"""Splits: by group, deterministic, official, and reproducible through the split file."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hyperiqa.config import TrainConfig
from hyperiqa.data.datasets import DatasetError, load_dataset
from hyperiqa.data.readers.base import build_spec
from hyperiqa.data.splits import load_split, make_split, official_split, random_split, save_split

ROOT = Path("/data/live")


def reference_spec(refs: int = 20, per_ref: int = 5, shuffle_seed: int | None = None):
    """LIVE/CSIQ/TID-like: `refs` reference images with `per_ref` distorted versions each."""
    rows = [(str(ROOT / f"ref{r:02d}_d{d}.png"), float(r * per_ref + d), f"ref{r:02d}")
            for r in range(refs) for d in range(per_ref)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return build_spec("live", ROOT, rows, direction="lower", raw_range=(0, 100), by_reference=True,
                      default_short_side=None)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def groups_of(spec, indices) -> set[str]:
    return {spec.records[i].group for i in indices}


def test_random_split_is_by_group_with_documented_fractions():
    spec = reference_spec()
    split = make_split(spec, cfg(seed=0))
    train, val, test = (groups_of(spec, s) for s in (split.train, split.val, split.test))
    assert not (train & val or train & test or val & test)
    assert (len(train), len(val), len(test)) == (14, 2, 4)          # 0.1 and 0.2 of 20 groups
    assert split.sizes() == {"train": 70, "val": 10, "test": 20}
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(100))
    assert split.train.dtype == np.int64 and np.all(np.diff(split.test) > 0)


def test_split_is_deterministic_and_independent_of_record_order():
    spec = reference_spec()
    split = make_split(spec, cfg(seed=0))
    # pinned: PCG64 doubles are platform-independent, so this must hold on every machine
    assert sorted(groups_of(spec, split.test)) == ["ref02", "ref03", "ref11", "ref13"]
    assert sorted(groups_of(spec, split.val)) == ["ref01", "ref15"]
    again = make_split(spec, cfg(seed=0))
    assert all(np.array_equal(getattr(split, k), getattr(again, k)) for k in ("train", "val", "test"))
    shuffled = reference_spec(shuffle_seed=3)
    assert groups_of(shuffled, make_split(shuffled, cfg(seed=0)).test) == groups_of(spec, split.test)


def test_seeds_differ_and_split_seed_overrides_seed():
    spec = reference_spec()
    tests = {seed: groups_of(spec, make_split(spec, cfg(seed=seed)).test) for seed in range(4)}
    assert len({frozenset(t) for t in tests.values()}) == 4
    assert groups_of(spec, make_split(spec, cfg(seed=7, split_seed=2)).test) == tests[2]


def test_one_image_per_group_splits_per_image():
    rows = [(f"/k/{i}.jpg", float(i), f"{i}.jpg") for i in range(10)]
    spec = build_spec("koniq10k", Path("/k"), rows, direction="higher", raw_range=(0, 100),
                      by_reference=False, default_short_side=384)
    assert random_split(spec, val_fraction=0.2, test_fraction=0.3, seed=0).sizes() == {"train": 5, "val": 2,
                                                                                        "test": 3}


def test_too_small_dataset_and_zero_fractions():
    with pytest.raises(DatasetError, match=r"live: 2 groups \(10 images\) are too few for val_fraction=0.1"):
        make_split(reference_spec(refs=2), cfg())
    tiny = reference_spec(refs=3)
    split = make_split(tiny, cfg())                                  # every split gets a group
    assert [len(groups_of(tiny, s)) for s in (split.train, split.val, split.test)] == [1, 1, 1]
    no_val = make_split(reference_spec(refs=2), cfg(val_fraction=0.0, test_fraction=0.5))
    assert no_val.sizes() == {"train": 5, "val": 0, "test": 5}


def test_official_split_and_its_absence():
    spec = replace(reference_spec(refs=2, per_ref=2), official_split=("train", "test", "val", "train"))
    split = official_split(spec)  # make_split would refuse its 1-image val and test splits
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0, 3], [2], [1])
    with pytest.raises(DatasetError, match="dataset 'csiq' ships no official split"):
        make_split(replace(spec, name="csiq", official_split=None), cfg(split="official"))


def test_koniq_official_split_from_the_sets_file(tmp_path):
    (tmp_path / "1024x768").mkdir()
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(
        "image_name,MOS,MOS_zscore\na.jpg,3,60\nb.jpg,2,30\nc.jpg,4,80\nd.jpg,3,50\n")
    (tmp_path / "koniq10k_distributions_sets.csv").write_text(
        "image_name,set\nd.jpg,training\nc.jpg,validation\nb.jpg,test\na.jpg,training\n")
    spec = load_dataset("koniq10k", str(tmp_path), check_files=False)
    split = official_split(spec)
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0, 3], [2], [1])


def test_save_load_round_trip_with_relative_paths(tmp_path):
    spec = reference_spec()
    split = make_split(spec, cfg(seed=5))
    path = tmp_path / "run" / "split.csv"
    save_split(path, spec, split)
    lines = path.read_text().splitlines()
    assert lines[0] == "path,split" and len(lines) == 101 and lines[1].startswith("ref00_d0.png,")
    moved = replace(spec, root="/elsewhere/live",
                    records=tuple(replace(r, path=r.path.replace(str(ROOT), "/elsewhere/live"))
                                  for r in spec.records))
    loaded = make_split(moved, cfg(split_file=str(path)))            # split_file wins over split=random
    assert all(np.array_equal(getattr(split, k), getattr(loaded, k)) for k in ("train", "val", "test"))


def test_load_split_errors_name_the_file(tmp_path):
    spec = reference_spec(refs=3, per_ref=2)
    path = tmp_path / "split.csv"
    save_split(path, spec, random_split(spec, val_fraction=0.1, test_fraction=0.2, seed=0))
    text = path.read_text()
    path.write_text(text + "stranger.png,train\n")
    with pytest.raises(DatasetError, match=f"split_file {path}: 1 paths are not images of dataset 'live'.*stranger"):
        load_split(path, spec)
    path.write_text("\n".join(text.splitlines()[:-1]) + "\n")
    with pytest.raises(DatasetError, match=f"split_file {path}: 1 images of dataset 'live' have no row"):
        load_split(path, spec)
    with pytest.raises(DatasetError, match="split_file .*missing.csv: cannot read it"):
        load_split(tmp_path / "missing.csv", spec)


def test_load_split_refuses_an_image_listed_twice(tmp_path):
    spec = reference_spec(refs=3, per_ref=3)
    path = tmp_path / "split.csv"
    save_split(path, spec, random_split(spec, val_fraction=0.1, test_fraction=0.2, seed=0))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[3]]) + "\n")  # line 4 again, as line 11
    image = lines[3].split(",")[0]
    with pytest.raises(DatasetError, match=f"split_file {path}: image {image} is listed twice, lines 4 and 11"):
        load_split(path, spec)


def test_splits_too_small_for_a_correlation_are_refused_in_one_line():
    per_image = build_spec("koniq10k", Path("/k"), [(f"/k/{i}.jpg", float(i), f"{i}.jpg") for i in range(12)],
                           direction="higher", raw_range=(0, 100), by_reference=False, default_short_side=384)
    with pytest.raises(DatasetError, match=r"koniq10k: the val split of the random split has 1 image \(12 in the "
                                           r"dataset\); a correlation needs at least 3: raise val_fraction \(now 0.1\), "
                                           r"or use a larger dataset") as exc:
        make_split(per_image, cfg())
    assert "\n" not in str(exc.value) and "set it to 0" not in str(exc.value)  # val selects the best epoch
    with pytest.raises(DatasetError, match=r"the test split of the random split has 2 images .* raise test_fraction "
                                           r"\(now 0.2\), set it to 0 to drop the test split"):
        make_split(per_image, cfg(val_fraction=0.25, test_fraction=0.2))
    assert make_split(per_image, cfg(val_fraction=0.25, test_fraction=0.0)).sizes() == {"train": 9, "val": 3,
                                                                                          "test": 0}
    official = replace(per_image, official_split=("train",) * 10 + ("val", "test"))
    with pytest.raises(DatasetError, match="val split of the official split has 1 image.*use split=random"):
        make_split(official, cfg(split="official"))
    no_train = replace(per_image, official_split=("val",) * 6 + ("test",) * 6)
    with pytest.raises(DatasetError, match="the official split leaves no training images"):
        make_split(no_train, cfg(split="official"))
