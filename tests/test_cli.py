"""The train, predict and evaluate CLIs on the tiny dataset; user mistakes give one line and exit code 2."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest

from hyperiqa import evaluate, predict, train
from hyperiqa.utils import UserError, run_cli


def cli(main, argv, capsys) -> tuple[int, str, str]:
    """Run a CLI body in-process through run_cli, exactly as `python -m` does; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: main(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """`python -m hyperiqa.train` in a subprocess for 2 epochs; returns (run folder, stdout)."""
    tmp = tmp_path_factory.mktemp("cli_run")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"""dataset: csv
data_root: {tiny_dataset}
dataset_options: {{csv: labels.csv, image_column: image, label_column: label, group_column: group}}
backbone: test_resnet
pretrained: false
patch_size: 32
train_patches: 2
test_patches: 2
batch_size: 8
epochs: 2
backbone_lr: 0.001
cache_dir: {tmp / 'cache'}
cache_workers: 1
device: cpu
""")
    out = tmp / "run"
    proc = subprocess.run([sys.executable, "-m", "hyperiqa.train", "--config", str(cfg), "--out", str(out),
                           "--set", "schedule=cosine"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_train_writes_run_folder_and_prints_epoch_lines(trained_run):
    out, stdout = trained_run
    assert "epoch 1/2" in stdout and "epoch 2/2" in stdout and "train_srcc(patch)" in stdout
    assert "patches/s" in stdout and "best epoch" in stdout
    for name in ("config.yaml", "split.csv", "metrics.jsonl", "best/model.safetensors", "last/trainer_state.pt"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["status"] == "completed"
    assert "schedule: cosine" in (out / "config.yaml").read_text()


def test_train_resume_continues_with_more_epochs(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    code, stdout, _ = cli(train.main, ["--out", str(out), "--resume", "--set", "epochs=3"], capsys)
    assert code == 0
    assert "resumed from" in stdout and "epoch 3/3" in stdout and "epoch 2/3" not in stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_evaluate_reproduces_the_checkpoint_metrics(trained_run, capsys):
    best = trained_run[0] / "best"
    code, stdout, _ = cli(evaluate.main, ["--checkpoint", str(best), "--split", "test", "--json"], capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    saved = json.loads((best / "metrics.json").read_text())
    assert result["srcc"] == pytest.approx(saved["test_srcc"], abs=1e-9)
    assert result["rmse"] == pytest.approx(saved["test_rmse"], rel=1e-6)
    assert result["plcc_logistic"] == saved["test_plcc_logistic"]  # None: 4 test images are too few to fit
    assert (result["dataset"], result["split"], result["n_images"]) == ("csv", "test", 4)


def copy_images(source, folder, names):
    folder.mkdir()
    for name in names:
        shutil.copy(source / name, folder / name)
    return folder


def test_predict_scores_a_folder_and_skips_a_non_image(trained_run, tiny_dataset, tmp_path, capsys):
    folder = copy_images(tiny_dataset, tmp_path / "images", ("g0_l0.png", "g0_l3.png", "g1_l1.png"))
    (folder / "notes.jpg").write_text("not an image")
    argv = ["--checkpoint", str(trained_run[0] / "best"), str(folder), "--crops", "3"]
    code, stdout, stderr = cli(predict.main, argv, capsys)
    assert code == 1
    assert "notes.jpg" in stderr and "Traceback" not in stderr
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["g0_l0.png", "g0_l3.png", "g1_l1.png"]
    (folder / "notes.jpg").unlink()
    code, again, _ = cli(predict.main, argv + ["--out", str(tmp_path / "s.csv")], capsys)
    assert code == 0 and (tmp_path / "s.csv").read_text() == stdout  # crops fixed by the seed


@pytest.mark.parametrize("override, field", [
    ("backbone_lrr=0.1", "backbone_lrr"),        # typo in a key
    ("backbone_lr=-0.001", "backbone_lr"),       # negative learning rate
    ("frozen_stages=7", "frozen_stages"),        # test_resnet has 4 stages
    ("legacy=[optimiser_reset]", "optimiser_reset"),  # not a defect name (optimizer_reset)
])
def test_bad_config_is_one_line_naming_the_field(tiny_cfg, tmp_path, capsys, override, field):
    cfg = tmp_path / "cfg.yaml"
    tiny_cfg().save(cfg)
    code, _, err = cli(train.main, ["--config", str(cfg), "--set", override, "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in err


def test_bad_config_file_key_and_missing_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("dataset: demo\nbackbone_lr: 0.001\nlr_raito: 5\n")
    code, _, err = cli(train.main, ["--config", str(cfg)], capsys)
    assert code == 2 and "lr_raito" in err and "lr_ratio" in err and str(cfg) in err
    code, _, err = cli(predict.main, ["--checkpoint", str(tmp_path / "nope"), str(tmp_path)], capsys)
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1


def test_predict_accepts_an_original_checkpoint(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from hyperiqa.models import HyperIQA
    from hyperiqa.models.convert import to_original_name

    torch.manual_seed(0)
    ours = HyperIQA("resnet50", pretrained=False).eval()
    prefix = "backbone.features."
    original = {("res." + k[len(prefix):]) if k.startswith(prefix) else to_original_name(k): v
                for k, v in ours.state_dict().items()}
    torch.save(original, tmp_path / "koniq_pretrained.pkl")
    pixels = np.random.default_rng(1).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    code, out, err = cli(predict.main, ["--checkpoint", str(tmp_path / "koniq_pretrained.pkl"),
                                        str(tmp_path / "a.png"), "--crops", "2"], capsys)
    assert code == 0, err
    score = float(out.strip().splitlines()[1].split(",")[1])
    # A 224x224 image is its own crop: the score is the model on the ImageNet-normalised image.
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)[None]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = ours((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).item()
    assert score == pytest.approx(expected, abs=1e-5)


def test_a_dataset_too_small_for_a_correlation_is_refused_before_training(tiny_dataset, tiny_cfg, tmp_path, capsys):
    root = copy_images(tiny_dataset, tmp_path / "three", ("g0_l0.png", "g1_l1.png", "g2_l2.png"))
    (root / "labels.csv").write_text("image,label\ng0_l0.png,9\ng1_l1.png,7\ng2_l2.png,5\n")
    cfg = tiny_cfg(data_root=str(root), dataset_options={"csv": "labels.csv"}, val_fraction=0.1, test_fraction=0.2)
    cfg.save(tmp_path / "cfg.yaml")
    code, out, err = cli(train.main, ["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "epoch 1" not in out and not (tmp_path / "r" / "last").exists()
    assert err.strip() == ("error: csv: the val split of the random split has 1 image (3 in the dataset); a correlation "
                           "needs at least 3: raise val_fraction (now 0.1), or use a larger dataset")
    from tuning.engine.options import check_dataset

    with pytest.raises(UserError, match="the val split of the random split has 1 image"):
        check_dataset(cfg)  # the search CLIs call it before Ray starts
