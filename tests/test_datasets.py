"""Every reader on a tiny fixture written in the dataset's real on-disk format, plus the check CLI."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import scipy.io
from PIL import Image

from hyperiqa.config import TrainConfig
from hyperiqa.data.__main__ import main as check_main
from hyperiqa.data.datasets import DATASETS, DatasetError, dataset_from_config, load_dataset
from hyperiqa.utils import UserError, run_cli

_IMAGE_BYTES: dict[str, bytes] = {}


def write_images(folder: Path, names, fmt: str = "PNG") -> None:
    """Tiny valid images; one encoded buffer reused so hundreds of files cost nothing."""
    if fmt not in _IMAGE_BYTES:
        buf = io.BytesIO()
        Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(buf, format=fmt)
        _IMAGE_BYTES[fmt] = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(_IMAGE_BYTES[fmt])


def write_xlsx(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)


def cell(strings) -> np.ndarray:
    """A MATLAB cell array of strings as scipy.io.savemat writes it (object array, 1 x N)."""
    arr = np.empty((1, len(strings)), dtype=object)
    arr[0, :] = strings
    return arr


# --- KonIQ-10k ----------------------------------------------------------------------------------

KONIQ = [("10004.jpg", 70.5, "training"), ("10005.jpg", 20.25, "test"), ("10006.jpg", 55.0, "validation"),
         ("10007.jpg", 60.0, "training")]


def make_koniq(root: Path, folder: str = "1024x768", sets: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ['"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"']
    lines += [f'"{n}",0,1,2,3,4,10,3.1,0.5,{z}' for n, z, _ in KONIQ]
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines) + "\n")
    if sets:
        sets_lines = ["image_name,c1,c2,c3,c4,c5,c_total,set"] + [f"{n},0,1,2,3,4,10,{s}" for n, _, s in KONIQ]
        (root / "koniq10k_distributions_sets.csv").write_text("\n".join(sets_lines) + "\n")
    write_images(root / folder, [n for n, _, _ in KONIQ], "JPEG")
    return root


def test_koniq_records_official_split_and_folder_choice(tmp_path):
    root = make_koniq(tmp_path / "koniq")
    write_images(root / "512x384", [n for n, _, _ in KONIQ], "JPEG")
    spec = load_dataset("koniq10k", str(root))
    assert [Path(r.path).name for r in spec.records] == [n for n, _, _ in KONIQ]
    assert all(Path(r.path).parent == root / "1024x768" for r in spec.records)  # preferred folder
    assert spec.labels.tolist() == [70.5, 20.25, 55.0, 60.0]
    assert spec.official_split == ("train", "test", "val", "train")
    assert spec.default_short_side == 384 and not spec.by_reference
    assert len(set(spec.groups)) == 4
    small = load_dataset("koniq10k", str(root), {"image_folder": "512x384"})
    assert Path(small.records[0].path).parent == root / "512x384"


def test_koniq_without_sets_file_and_only_small_folder(tmp_path):
    root = make_koniq(tmp_path / "koniq", folder="512x384", sets=False)
    spec = load_dataset("koniq10k", str(root))
    assert spec.official_split is None
    assert Path(spec.records[0].path).parent.name == "512x384"


def test_koniq_errors_name_the_path(tmp_path):
    root = make_koniq(tmp_path / "koniq")
    (root / "1024x768" / "10005.jpg").unlink()
    (root / "1024x768" / "10007.jpg").unlink()
    with pytest.raises(DatasetError, match=r"koniq10k: 2 of 4 image files are missing") as err:
        load_dataset("koniq10k", str(root))
    assert str(root / "1024x768" / "10005.jpg") in str(err.value)
    with pytest.raises(DatasetError, match="image_folder .*nope does not exist"):
        load_dataset("koniq10k", str(root), {"image_folder": "nope"})
    with pytest.raises(DatasetError, match="unknown dataset option 'folder'; allowed options: image_folder"):
        load_dataset("koniq10k", str(root), {"folder": "x"})
    (root / "koniq10k_scores_and_distributions.csv").unlink()
    with pytest.raises(DatasetError, match=r"koniq10k: annotation file .*koniq10k_scores_and_distributions"):
        load_dataset("koniq10k", str(root))


def test_missing_column_lists_the_header(tmp_path):
    root = make_koniq(tmp_path / "koniq")
    (root / "koniq10k_scores_and_distributions.csv").write_text("image_name,MOS\n10004.jpg,3.0\n")
    with pytest.raises(DatasetError, match=r"has no column 'MOS_zscore' \(columns: image_name, MOS\)"):
        load_dataset("koniq10k", str(root))


def test_many_missing_images_counted_first_five_listed(tmp_path):
    root = tmp_path / "csvset"
    root.mkdir()
    (root / "labels.csv").write_text("image,label\n" + "".join(f"m{i:02d}.png,{i}\n" for i in range(12)))
    with pytest.raises(DatasetError) as err:
        load_dataset("csv", str(root), {"csv": "labels.csv"})
    message = str(err.value)
    assert "12 of 12 image files are missing" in message and str(root) in message
    assert "m04.png" in message and "m05.png" not in message


# --- LIVE Challenge, BID, SPAQ ------------------------------------------------------------------

def test_livec_skips_the_first_seven_entries(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    names = [f"t{i}.bmp" for i in range(7)] + ["100.bmp", "101.JPG", "102.bmp"]
    mos = np.array([[50.0] * 7 + [63.5, 12.0, 80.25]])
    (root / "Data").mkdir(parents=True)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell(names).T})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    write_images(root / "Images", names[7:], "JPEG")
    spec = load_dataset("livec", str(root))
    assert [Path(r.path).name for r in spec.records] == ["100.bmp", "101.JPG", "102.bmp"]
    assert spec.labels.tolist() == [63.5, 12.0, 80.25] and spec.direction == "higher"
    assert spec.default_short_side is None
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"MOS": mos})
    with pytest.raises(DatasetError, match=r"AllMOS_release.mat has no variable 'AllMOS_release' \(variables: MOS\)"):
        load_dataset("livec", str(root))


def test_bid_reads_xlsx_rows_from_row_two(tmp_path):
    root = tmp_path / "BID"
    write_xlsx(root / "DatabaseGrades.xlsx", [("Image Number", "Average Grade"), (1, 3.5), (2, 1.25),
                                              (10, 4.0), (None, None)])
    write_images(root, ["DatabaseImage0001.JPG", "DatabaseImage0002.JPG", "DatabaseImage0010.JPG"], "JPEG")
    spec = load_dataset("bid", str(root))
    assert [Path(r.path).name for r in spec.records] == ["DatabaseImage0001.JPG", "DatabaseImage0002.JPG",
                                                         "DatabaseImage0010.JPG"]
    assert spec.labels.tolist() == [3.5, 1.25, 4.0] and spec.raw_range == (0.0, 5.0)
    assert spec.default_short_side == 512


def test_spaq_reads_named_columns(tmp_path):
    root = tmp_path / "SPAQ"
    write_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx",
               [("Image name", "MOS", "Brightness"), ("00001.jpg", 42.5, 40), ("00002.jpg", 88.0, 70)])
    write_images(root / "TestImage", ["00001.jpg", "00002.jpg"], "JPEG")
    spec = load_dataset("spaq", str(root))
    assert [(Path(r.path).name, r.label) for r in spec.records] == [("00001.jpg", 42.5), ("00002.jpg", 88.0)]
    assert spec.default_short_side == 512


# --- LIVE, CSIQ, TID2013, KADID-10k ---------------------------------------------------------------

LIVE_COUNTS = {"jp2k": 227, "jpeg": 233, "wn": 174, "gblur": 174, "fastfading": 174}


def make_live(root: Path) -> Path:
    n = sum(LIVE_COUNTS.values())
    dmos = np.arange(n, dtype=np.float64) % 90          # entry i has DMOS i % 90
    orgs = np.zeros(n)
    orgs[[0, 300, 981]] = 1                             # three reference copies, excluded
    refs = [f"ref{i % 29:02d}.bmp" for i in range(n)]
    root.mkdir(parents=True)
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": dmos[None], "orgs": orgs[None]})
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": cell(refs)})
    for folder, count in LIVE_COUNTS.items():
        write_images(root / folder, [f"img{i}.bmp" for i in range(1, count + 1)], "BMP")
    write_images(root / "refimgs", sorted(set(refs)), "BMP")
    return root


def test_live_order_exclusion_flip_and_groups(tmp_path):
    spec = load_dataset("live", str(make_live(tmp_path / "live")))
    assert len(spec.records) == 982 - 3
    first = spec.records[0]                              # entry 0 excluded: entry 1 = jp2k/img2.bmp
    assert Path(first.path).parts[-2:] == ("jp2k", "img2.bmp")
    jpeg1 = spec.records[227 - 1]                        # entry 227 = first of jpeg/
    assert Path(jpeg1.path).parts[-2:] == ("jpeg", "img1.bmp") and jpeg1.raw_label == 227 % 90
    assert jpeg1.label == pytest.approx(100 - 227 % 90)  # lower-is-better flipped on (0, 100)
    assert jpeg1.group == "ref24.bmp" and spec.by_reference  # 227 % 29
    assert Path(spec.records[-1].path).parts[-2:] == ("fastfading", "img173.bmp")
    assert len(set(spec.groups)) == 29 and spec.direction == "lower"


def test_live_wrong_entry_count_is_reported(tmp_path):
    root = make_live(tmp_path / "live")
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": cell(["a.bmp"] * 10)})
    with pytest.raises(DatasetError, match="'refnames_all' has 10 entries; expected 982"):
        load_dataset("live", str(root))


def test_csiq_groups_by_reference_and_flips(tmp_path):
    root = tmp_path / "CSIQ"
    root.mkdir()
    rows = [("1600.AWGN.1.png", 0.061989), ("1600.JPEG.5.png", 0.8), ("aerial_city.blur.2.png", 0.25)]
    (root / "csiq_label.txt").write_text("".join(f"{n} {d}\n" for n, d in rows) + "\n")
    write_images(root / "dst_imgs_all", [n for n, _ in rows])
    spec = load_dataset("csiq", str(root))
    assert spec.groups == ["1600", "1600", "aerial_city"]
    assert spec.labels == pytest.approx([1 - 0.061989, 0.2, 0.75])
    assert np.argmax(spec.labels) == 0                   # the least distorted image ranks best
    assert [r.raw_label for r in spec.records] == [d for _, d in rows]


def test_tid2013_case_insensitive_names_and_groups(tmp_path):
    root = tmp_path / "tid2013"
    root.mkdir()
    (root / "mos_with_names.txt").write_text("5.51429 i01_01_1.bmp\n3.0 i01_02_5.bmp\n6.25 i25_01_1.bmp\n")
    write_images(root / "distorted_images", ["I01_01_1.BMP", "i01_02_5.bmp", "i25_01_1.bmp"], "BMP")
    spec = load_dataset("tid2013", str(root))
    assert Path(spec.records[0].path).name == "I01_01_1.BMP"  # resolved to the name on disk
    assert spec.groups == ["01", "01", "25"] and spec.labels.tolist() == [5.51429, 3.0, 6.25]
    (root / "mos_with_names.txt").write_text("5.5 reference.bmp\n")
    with pytest.raises(DatasetError, match="line 1: image name 'reference.bmp' is not like i01_01_1.bmp"):
        load_dataset("tid2013", str(root))


def test_kadid_groups_by_ref_img(tmp_path):
    root = tmp_path / "kadid10k"
    root.mkdir()
    (root / "dmos.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\n"
                                   "I01_01_05.png,I01.png,2.1,0.7\nI02_03_02.png,I02.png,3.33,0.5\n")
    write_images(root / "images", ["I01_01_01.png", "I01_01_05.png", "I02_03_02.png", "I01.png"])
    spec = load_dataset("kadid10k", str(root))
    assert spec.groups == ["I01.png", "I01.png", "I02.png"]
    assert spec.labels.tolist() == [4.57, 2.1, 3.33] and spec.direction == "higher"


# --- csv and demo -------------------------------------------------------------------------------

def test_csv_reader_options(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "meta.csv").write_text("file,score,scene\na.png,2,s1\nb.png,9,s1\nc.png,4,s2\n")
    write_images(root / "imgs", ["a.png", "b.png", "c.png"])
    options = {"csv": "meta.csv", "image_column": "file", "label_column": "score", "group_column": "scene",
               "direction": "lower", "image_folder": "imgs", "raw_range": "0,10"}
    spec = load_dataset("csv", str(root), options)
    assert spec.labels.tolist() == [8.0, 1.0, 6.0] and spec.groups == ["s1", "s1", "s2"]
    assert spec.by_reference and Path(spec.records[0].path) == root / "imgs" / "a.png"
    plain = load_dataset("csv", str(root), {"csv": str(root / "meta.csv"), "image_column": "file",
                                            "label_column": "score", "image_folder": "imgs"})
    assert plain.labels.tolist() == [2.0, 9.0, 4.0] and plain.groups == ["a.png", "b.png", "c.png"]
    with pytest.raises(DatasetError, match="meta.csv has no column 'image'"):
        load_dataset("csv", str(root), {"csv": "meta.csv"})
    with pytest.raises(DatasetError, match="direction = 'up'; allowed: higher, lower"):
        load_dataset("csv", str(root), {**options, "direction": "up"})


def test_demo_generates_into_cache_dir_and_reads_labels(tmp_path, monkeypatch):
    calls = []

    def ensure_demo_dataset(root: Path) -> Path:
        calls.append(root)
        write_images(root, ["r0_blur1.png", "r0_clean.png", "r1_clean.png"])
        (root / "labels.csv").write_text("image,label,group\nr0_blur1.png,0.3,r0\nr0_clean.png,0.9,r0\n"
                                         "r1_clean.png,0.8,r1\n")
        return root

    monkeypatch.setitem(sys.modules, "hyperiqa.data.demo",
                        types.SimpleNamespace(ensure_demo_dataset=ensure_demo_dataset))
    spec = dataset_from_config(TrainConfig(dataset="demo", cache_dir=str(tmp_path / "cache")))
    assert calls == [tmp_path / "cache" / "demo-v1"]
    assert spec.name == "demo" and spec.by_reference and spec.groups == ["r0", "r0", "r1"]
    assert spec.labels.tolist() == [0.3, 0.9, 0.8]


# --- registry and root errors -------------------------------------------------------------------

def test_registry_and_root_errors(tmp_path):
    assert set(DATASETS) == {"koniq10k", "livec", "bid", "live", "csiq", "tid2013", "kadid10k", "spaq",
                             "csv", "demo", "photos"}
    with pytest.raises(DatasetError, match="unknown dataset 'koniq'; allowed: koniq10k, livec"):
        load_dataset("koniq", str(tmp_path))
    with pytest.raises(DatasetError, match=f"csiq: data root {tmp_path / 'nope'} does not exist"):
        load_dataset("csiq", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="tid2013: no data root given"):
        load_dataset("tid2013", None)
    with pytest.raises(DatasetError, match=f"csiq: annotation file {tmp_path / 'csiq_label.txt'} not found"):
        load_dataset("csiq", str(tmp_path))
    assert issubclass(DatasetError, UserError)


# --- the check CLI ------------------------------------------------------------------------------

def test_check_cli_json(tmp_path, capsys):
    root = make_koniq(tmp_path / "koniq")
    assert check_main(["--dataset", "koniq10k", "--data-root", str(root), "--json", "--verify-images"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "koniq10k" and out["num_images"] == 4 and out["num_groups"] == 4
    assert (out["label_min"], out["label_max"]) == (20.25, 70.5)
    assert out["splits"] == {"train": 2, "val": 1, "test": 1}  # 4 groups: round(0.1*4) -> at least 1
    assert out["official_splits"] == {"train": 2, "val": 1, "test": 1}
    assert out["missing"] == [] and out["unreadable"] == [] and out["direction"] == "higher"
    assert "the val split of the random split has 1 image" in out["split_errors"]["random"]  # training refuses it


def test_check_cli_reports_missing_unreadable_and_user_errors(tmp_path, capsys):
    root = make_koniq(tmp_path / "koniq")
    (root / "1024x768" / "10004.jpg").unlink()
    (root / "1024x768" / "10006.jpg").write_bytes(b"not a jpeg")
    assert check_main(["--dataset", "koniq10k", "--data-root", str(root), "--verify-images"]) == 1
    text = capsys.readouterr().out
    assert "missing     1\n" in text and "10004.jpg" in text
    assert "unreadable  1\n" in text and "10006.jpg" in text
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: check_main(["--dataset", "csiq", "--data-root", str(tmp_path / "nope")]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'nope'} does not exist")


# --- an image listed twice ----------------------------------------------------------------------

def test_an_image_listed_twice_is_refused_with_both_rows(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "labels.csv").write_text("image,label\na.png,2\nb.png,9\n\nc.png,4\na.png,3\n")  # a blank line 4
    write_images(root, ["a.png", "b.png", "c.png"])
    with pytest.raises(DatasetError, match=f"csv: image {root / 'a.png'} is listed twice, in "
                                           f"{root / 'labels.csv'} row 2 and row 6; keep one row per image"):
        load_dataset("csv", str(root), {"csv": "labels.csv"})
    tid = tmp_path / "tid2013"
    tid.mkdir()
    (tid / "mos_with_names.txt").write_text("5.5 i01_01_1.bmp\n3.0 i01_02_5.bmp\n5.4 I01_01_1.BMP\n")
    write_images(tid / "distorted_images", ["i01_01_1.bmp", "i01_02_5.bmp"], "BMP")
    with pytest.raises(DatasetError, match=r"tid2013: image .*i01_01_1.bmp is listed twice, in "
                                           r".*mos_with_names.txt line 1 and line 3"):
        load_dataset("tid2013", str(tid))  # the same file on disk, whatever the case in the list


def test_verify_images_decodes_and_reports_a_truncated_jpeg(tmp_path, capsys):
    root = make_koniq(tmp_path / "koniq")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    (root / "1024x768" / "10006.jpg").write_bytes(data[:len(data) // 2])  # header intact, scan cut
    assert check_main(["--dataset", "koniq10k", "--data-root", str(root), "--verify-images"]) == 1
    text = capsys.readouterr().out
    assert "unreadable  1\n" in text and "10006.jpg  (OSError: image file is truncated" in text
    assert check_main(["--dataset", "koniq10k", "--data-root", str(root), "--verify-images", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["unreadable"] == [str(root / "1024x768" / "10006.jpg")]
