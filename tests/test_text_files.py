"""Text files users write (label tables, configs, search spaces) are UTF-8; anything else is one clear line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hyperiqa.config import ConfigError, TrainConfig
from hyperiqa.data.datasets import DatasetError, load_dataset
from tuning.sweep.space import SpaceError, load_space


def images(root, names) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)


def test_a_cp1252_label_table_is_refused_naming_the_file_and_offset(tmp_path):
    root = tmp_path / "photos"
    images(root, ["café.png", "b.png"])
    text = "image,µ label\ncafé.png,2\nb.png,3\n"
    (root / "labels.csv").write_bytes(text.encode("cp1252"))  # Excel's "CSV" on Windows
    with pytest.raises(DatasetError, match=rf"csv: annotation file {root / 'labels.csv'}: byte 0xb5 at offset 6 "
                                           r"\(line 1\) is not UTF-8; re-save the file as UTF-8") as exc:
        load_dataset("csv", str(root), {"csv": "labels.csv", "label_column": "µ label"})
    assert "\n" not in str(exc.value)
    (root / "labels.csv").write_bytes(text.encode("utf-8-sig"))  # Excel's "CSV UTF-8": with a BOM
    spec = load_dataset("csv", str(root), {"csv": "labels.csv", "label_column": "µ label"})
    assert [r.path for r in spec.records] == [str(root / "café.png"), str(root / "b.png")]


def test_a_cp1252_config_or_search_space_is_refused_in_one_line(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_bytes("# réglages\nepochs: 3\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=rf"config file {config}: byte 0xe9 at offset 3 \(line 1\) is not UTF-8"):
        TrainConfig.load(config)
    config.write_bytes("# réglages\nepochs: 3\n".encode("utf-8-sig"))
    assert TrainConfig.load(config).epochs == 3
    space = tmp_path / "space.yaml"
    space.write_bytes("description: têst\nparams:\n  backbone_lr: {loguniform: [1e-5, 1e-3]}\n".encode("cp1252"))
    with pytest.raises(SpaceError, match=rf"search space {space}: byte 0xea at offset 14 \(line 1\) is not UTF-8"):
        load_space(str(space))
