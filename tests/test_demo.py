"""The generated demo dataset: deterministic bytes, quality falling with distortion strength, groups."""

import csv
import threading
from collections import defaultdict

import pytest

from hyperiqa.data import demo
from hyperiqa.data.demo import DISTORTIONS, NUM_REFERENCES, ensure_demo_dataset
from hyperiqa.data.generated import MARKER

PER_REFERENCE = 1 + sum(len(strengths) for strengths, _ in DISTORTIONS.values())


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "demo")


def _rows(root):
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_counts_and_groups(demo_root):
    rows = _rows(demo_root)
    assert len(rows) == NUM_REFERENCES * PER_REFERENCE == 1020
    assert len({r["group"] for r in rows}) == NUM_REFERENCES
    assert all((demo_root / r["image"]).is_file() for r in rows)
    assert len(list(demo_root.glob("*.png"))) == len(rows)


def test_quality_falls_with_strength(demo_root):
    by_group = defaultdict(dict)
    for r in _rows(demo_root):
        by_group[r["group"]][r["image"].split("_", 1)[1][:-4]] = float(r["label"])
    for labels in by_group.values():
        for kind, (strengths, _) in DISTORTIONS.items():
            chain = [labels["original"]] + [labels[f"{kind}{k}"] for k in range(1, len(strengths) + 1)]
            assert chain == sorted(chain, reverse=True) and len(set(chain)) == len(chain)
    originals = sorted(labels["original"] for labels in by_group.values())
    assert originals[0] < originals[-1]  # per-reference offsets: labels interleave across contents


def test_same_bytes_when_generated_again(demo_root, tmp_path):
    demo._generate(tmp_path, references=2)  # the first two references, from scratch
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes() == (demo_root / path.name).read_bytes(), path.name
    assert len(list(tmp_path.glob("*.png"))) == 2 * PER_REFERENCE


def test_generated_once_and_half_written_folder_redone(tmp_path, monkeypatch):
    calls = []
    original = demo._generate

    def small(root, references=2):
        calls.append(root)
        original(root, references)

    monkeypatch.setattr(demo, "_generate", small)
    root = tmp_path / "d"
    threads = [threading.Thread(target=ensure_demo_dataset, args=(root,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (root / MARKER).is_file()
    ensure_demo_dataset(root)
    assert len(calls) == 1  # complete: not generated again
    (root / MARKER).unlink()  # as if a generator had died before finishing
    (root / "ref00_blur1.png").unlink()
    ensure_demo_dataset(root)
    assert len(calls) == 2 and (root / "ref00_blur1.png").is_file()
