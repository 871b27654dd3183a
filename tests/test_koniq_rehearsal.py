"""bench/koniq_rehearsal.py's generator writes KonIQ-10k's layout: the koniq10k reader reads it, with the
official split and its proportions, and every image is a 1024x768 JPEG (the full run is not a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from hyperiqa.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("koniq_rehearsal", ROOT / "bench" / "koniq_rehearsal.py")
kr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kr)


def test_generated_folder_is_read_as_koniq10k_with_its_official_split(tmp_path):
    info = kr.generate(tmp_path, 20, workers=1, log=lambda line: None)
    assert info["images"] == 20
    files = sorted((tmp_path / "1024x768").iterdir())
    assert len(files) == 20 and all(f.suffix == ".jpg" and f.stem.isdigit() for f in files)
    with Image.open(files[0]) as im:
        assert (im.format, im.size) == ("JPEG", (1024, 768))
    data = load_dataset("koniq10k", str(tmp_path), {})
    assert len(data.records) == 20 and data.official_split is not None
    assert {s: data.official_split.count(s) for s in ("train", "val", "test")} == {"train": 14, "val": 2, "test": 4}
    labels = [r.label for r in data.records]
    assert 0 <= min(labels) < max(labels) <= 100  # MOS_zscore, not the 1-5 MOS beside it


def test_full_size_split_has_konIQs_counts():
    sets = kr.set_names(kr.KONIQ_IMAGES)
    assert [sets.count(name) for name, _ in kr.KONIQ_SETS] == [7058, 1000, 2015]
