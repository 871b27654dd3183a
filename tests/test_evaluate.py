"""Cross-dataset evaluation: a checkpoint trained on the csv tiny dataset scores generated TID2013- and
KADID-10k-layout folders with its own preprocessing; metrics checked against an independent computation."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import stats

from hyperiqa import evaluate
from hyperiqa import metrics as M
from hyperiqa.checkpoint import load_model
from hyperiqa.config import TrainConfig
from hyperiqa.evaluation import evaluate_checkpoint, resize_rule, score_checkpoint
from hyperiqa.solver import Solver
from tests.test_cli import cli

PATCH = 32


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    """One epoch on tiny_dataset (labels declared on 0-9), images cached at short side 32 = the patch."""
    tmp = tmp_path_factory.mktemp("xeval")
    cfg = TrainConfig.from_dict(dict(
        dataset="csv", data_root=str(tiny_dataset),
        dataset_options={"csv": "labels.csv", "image_column": "image", "label_column": "label",
                         "group_column": "group", "raw_range": "0,9"},
        backbone="test_resnet", pretrained=False, patch_size=PATCH, resize_short_side=PATCH, train_patches=2,
        test_patches=2, batch_size=8, eval_batch_size=16, epochs=1, backbone_lr=1e-3,
        val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp / "cache"), cache_workers=1, device="cpu"),
        source="test")
    solver = Solver(cfg, log=lambda *_: None)
    solver.save_checkpoint(tmp / "ck", next(solver.epochs()))
    return tmp / "ck"


def textures(n_refs: int, levels: int, size: int):
    """(reference, level, image): level k blurred and darkened, so a trained model scores them apart."""
    rng = np.random.default_rng(size)
    for r in range(n_refs):
        base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        for k in range(levels):
            im = Image.fromarray(base).filter(ImageFilter.GaussianBlur(radius=k))
            yield r, k, Image.fromarray((np.asarray(im) * (1 - 0.15 * k)).astype(np.uint8))


@pytest.fixture(scope="module")
def tid2013(tmp_path_factory):
    """TID2013 layout, 8 images of 64x64 (MOS 0-9, the checkpoint's scale). Returns (root, {name: mos})."""
    root = tmp_path_factory.mktemp("tid2013")
    (root / "distorted_images").mkdir()
    labels = {}
    for r, k, im in textures(2, 4, 64):
        name = f"i{r + 1:02d}_01_{k + 1}.bmp"
        im.save(root / "distorted_images" / name)
        labels[name] = round(7.5 - 1.5 * k + 0.1 * r, 3)
    (root / "mos_with_names.txt").write_text("".join(f"{m} {n}\n" for n, m in labels.items()))
    return root, labels


@pytest.fixture(scope="module")
def kadid(tmp_path_factory):
    """KADID-10k layout, 6 images of 32x32 (DMOS 1-5, another scale). Returns (root, {name: dmos})."""
    root = tmp_path_factory.mktemp("kadid10k")
    (root / "images").mkdir()
    labels = {}
    for r, k, im in textures(2, 3, 32):
        name = f"I{r + 1:02d}_01_{k + 1:02d}.png"
        im.save(root / "images" / name)
        labels[name] = round(4.5 - 1.2 * k - 0.2 * r, 3)
    rows = "".join(f"{n},I{n[1:3]}.png,{d},0.5\n" for n, d in labels.items())
    (root / "dmos.csv").write_text("dist_img,ref_img,dmos,var\n" + rows)
    return root, labels


def whole_image_scores(checkpoint, paths) -> np.ndarray:
    """The model on each image resized (PIL, Lanczos) to short side 32: the image is its only crop."""
    model, _ = load_model(checkpoint)
    mean, std = torch.tensor(model.input_mean).view(1, 3, 1, 1), torch.tensor(model.input_std).view(1, 3, 1, 1)
    out = []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if rgb.size != (PATCH, PATCH):
            rgb = rgb.resize((PATCH, PATCH), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div(255)[None]
        with torch.no_grad():
            out.append(model((x - mean) / std).item())
    return np.array(out)


@pytest.mark.parametrize("target, same_scale", [("tid2013", True), ("kadid", False)])
def test_cross_dataset_scores_every_image_and_metrics_match_an_independent_computation(
        checkpoint, target, same_scale, request):
    root, labels = request.getfixturevalue(target)
    name = {"tid2013": "tid2013", "kadid": "kadid10k"}[target]
    scores = score_checkpoint(checkpoint, name, str(root), device="cpu")
    assert len(scores.paths) == len(labels) and scores.split == "all"
    # tid2013 images are 64x64: only the checkpoint's rule (short side 32) makes each one a single crop.
    expected = whole_image_scores(checkpoint, scores.paths)
    assert scores.predictions == pytest.approx(expected, abs=1e-6)  # float32 rounding; spread ~1e-2
    assert np.ptp(expected) > 0  # the model tells the images apart: the correlations are defined
    pred, mos = scores.predictions, np.array([labels[p.rsplit("/", 1)[-1]] for p in scores.paths])
    result = evaluate_checkpoint(checkpoint, name, str(root), device="cpu")
    assert result["n_images"] == len(labels) and (result["dataset"], result["split"]) == (name, "all")
    assert result["srcc"] == pytest.approx(stats.spearmanr(pred, mos)[0], abs=1e-9)
    assert result["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0], abs=1e-9)
    assert result["krcc"] == pytest.approx(stats.kendalltau(pred, mos)[0], abs=1e-9)
    assert result["plcc_logistic"] == M.finite_or_none(M.plcc_logistic(pred, mos))
    assert ("rmse" in result) is same_scale
    if same_scale:
        assert result["rmse"] == pytest.approx(math.sqrt(np.mean((pred - mos) ** 2)), abs=1e-9)

def test_resize_rule_prefers_the_checkpoints_rule_then_the_target_default():
    koniq = types.SimpleNamespace(name="koniq10k", default_short_side=384)
    assert resize_rule({"short_side": 512, "resize_to": None}, koniq) == (512, None, "the checkpoint's")
    assert resize_rule({"short_side": None, "resize_to": [384, 512]}, koniq) == (None, (384, 512), "the checkpoint's")
    # Trained at original size (e.g. on CSIQ): KonIQ's 1024x768 photos go in at KonIQ's own scale.
    assert resize_rule({"short_side": None, "resize_to": None}, koniq) == (384, None, "koniq10k's default")
    assert resize_rule(None, koniq) == (384, None, "koniq10k's default")


def test_cli_json_last_line_and_reader_options(checkpoint, tiny_dataset, capsys):
    argv = ["--checkpoint", str(checkpoint), "--device", "cpu", "--dataset", "csv", "--data-root", str(tiny_dataset),
            "--option", "csv=labels.csv", "--option", "group_column=group", "--option", "raw_range=0,9", "--json"]
    code, out, err = cli(evaluate.main, argv, capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["n_images"], result["dataset"], result["split"]) == (24, "csv", "all")
    assert {"srcc", "plcc", "plcc_logistic", "krcc", "rmse"} <= set(result)  # raw_range 0,9: one scale


def test_cli_text_names_the_rule_and_why_rmse_is_missing(checkpoint, kadid, capsys):
    code, out, _ = cli(evaluate.main, ["--checkpoint", str(checkpoint), "--device", "cpu", "--dataset", "kadid10k",
                                       "--data-root", str(kadid[0])], capsys)
    assert code == 0
    assert "images: short side 32 (the checkpoint's rule), 2 crops of 32 px" in out
    assert "rmse omitted: the checkpoint predicts on 0..9, kadid10k labels are on 1..5" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("kadid10k all (6 images): srcc ") and " plcc_logistic " in last and "rmse" not in last


def test_cli_own_split_keeps_its_behaviour_and_shows_plcc_logistic(checkpoint, capsys):
    code, out, err = cli(evaluate.main, ["--checkpoint", str(checkpoint), "--device", "cpu"], capsys)
    assert code == 0, err
    # 4 test images: too few for the logistic fit, shown as undefined.
    assert out.strip().splitlines()[-1].startswith("csv test (4 images): srcc ")
    assert "plcc_logistic -  krcc" in out and " rmse " in out


@pytest.mark.parametrize("extra, expected", [
    (["--dataset", "csiq", "--data-root", "{missing}"], "--dataset csiq --data-root {missing}: csiq: data root "
                                                        "{missing} does not exist"),
    (["--dataset", "tid2013", "--data-root", "{kadid}"], "--dataset tid2013 --data-root {kadid}: tid2013: "
                                                         "annotation file {kadid}/mos_with_names.txt not found"),
    (["--dataset", "kadid10k", "--data-root", "{kadid}", "--split", "test"], "--split test: with --dataset"),
    (["--data-root", "{kadid}"], "--data-root and --option describe the dataset of --dataset NAME"),
])
def test_cli_dataset_mistakes_are_one_line(checkpoint, kadid, tmp_path, capsys, extra, expected):
    paths = {"missing": str(tmp_path / "nope"), "kadid": str(kadid[0])}
    argv = ["--checkpoint", str(checkpoint)] + [a.format(**paths) for a in extra]
    code, _, err = cli(evaluate.main, argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and expected.format(**paths) in err
