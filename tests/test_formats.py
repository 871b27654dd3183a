"""Export formats (hyperiqa/convert.py): the original code's state dict, pyiqa's, and ONNX under onnxruntime.

Each is checked by loading the written file where its users load it (stand-ins of the original code and
of pyiqa's arch, tests/original_hyperiqa.py and tests/pyiqa_hypernet.py) and comparing scores with this
project's predict path on the same crops. Random-init backbones; nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hyperiqa.convert import main as convert_main
from hyperiqa.convert import write_format
from hyperiqa.inference import score
from hyperiqa.models import HyperIQA, build_model
from hyperiqa.utils import UserError
from tests import original_hyperiqa, pyiqa_hypernet

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _varied(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and label affine, so a lost buffer or an unfolded scale shows."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    model.label_scale.fill_(17.5)
    model.label_shift.fill_(55.0)
    return model.eval()


def _checkpoint(folder, cfg, seed=0):
    torch.manual_seed(seed)
    model = _varied(build_model(cfg), seed)
    folder.mkdir()
    cfg.save(folder / "config.yaml")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "preprocess.json").write_text(json.dumps({"patch_size": cfg.patch_size, "mean": IMAGENET_MEAN,
                                                        "std": IMAGENET_STD, "short_side": 384, "resize_to": None,
                                                        "label_range": [1.0, 100.0]}))
    return model


def _crops(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _to_tensor(crops: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor on each crop: (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255


def _ours(model, crops: np.ndarray) -> np.ndarray:
    """This project's score of each crop, through predict's scoring function (one crop per 'image')."""
    return score(model, list(crops[:, None]), mean=model.input_mean, std=model.input_std, device="cpu",
                 batch_size=8)


@pytest.fixture(scope="module")
def resnet50_checkpoint(tiny_cfg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("r50") / "checkpoint"
    model = _checkpoint(folder, tiny_cfg(backbone="resnet50", patch_size=224))
    return folder, model, _crops(2, 224)


def test_original_format_loads_in_the_original_code_and_scores_the_same(resnet50_checkpoint, tmp_path):
    folder, model, crops = resnet50_checkpoint
    out = tmp_path / "hyperiqa_koniq.pkl"
    assert convert_main([str(folder), "--to", "original", str(out)]) == 0
    original = original_hyperiqa.HyperNet(16, 112, 224, 112, 56, 28, 14, 7)
    original.load_state_dict(torch.load(out, weights_only=True))  # strict: every key, no extra one
    original.train(False)
    # The original demo's preprocessing after its resize: ToTensor, then Normalize with ImageNet mean/std.
    x = (_to_tensor(crops) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        paras = original(x)
        theirs = original_hyperiqa.TargetNet(paras)(paras["target_in_vec"]).numpy()
    ours = _ours(model, crops)
    assert abs(ours[0] - ours[1]) > 1e-3  # two different scores, not a constant
    # ours include label_scale 17.5 and label_shift 55 (_varied): equal only if the export folded them in
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-4)
    # and the file reads back into this project (hyperiqa/models/convert.py) with the same scores
    back = HyperIQA.from_original_checkpoint(out)
    np.testing.assert_allclose(_ours(back, crops), ours, rtol=1e-5, atol=1e-4)


def test_pyiqa_format_loads_in_pyiqas_hypernet_and_scores_the_same(resnet50_checkpoint, tmp_path):
    folder, model, crops = resnet50_checkpoint
    out = write_format(folder, "pyiqa", tmp_path / "hyperiqa_pyiqa.pth")
    net = pyiqa_hypernet.HyperNet("resnet50")
    net.load_pretrained(out)
    net.eval()
    with torch.no_grad():
        theirs = net.forward_patch(_to_tensor(crops)).reshape(-1).numpy()
    np.testing.assert_allclose(theirs, _ours(model, crops), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", ["original", "pyiqa"])
@pytest.mark.parametrize("overrides, named", [
    ({"backbone": "resnet10t", "patch_size": 224}, "backbone resnet10t"),
    ({"backbone": "resnet50", "patch_size": 96}, "patch_size 96"),
    ({"backbone": "resnet50", "patch_size": 224, "multiscale": True}, "multiscale"),
    ({"backbone": "resnet50", "patch_size": 224, "head": "plain"}, "head = plain"),
])
def test_what_the_format_cannot_hold_is_refused_by_name(tiny_cfg, tmp_path, fmt, overrides, named):
    folder = tmp_path / "ckpt"
    _checkpoint(folder, tiny_cfg(**overrides))
    with pytest.raises(UserError, match=rf"cannot be written as --format {fmt}: .*{named}") as info:
        write_format(folder, fmt, tmp_path / "out.bin")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("head", ["hyper", "plain"])
def test_onnx_scores_match_predict_under_onnxruntime(tiny_cfg, tmp_path, head):
    import onnxruntime as ort  # the `onnx` extra, part of `test`: a missing package fails, not skips

    folder = tmp_path / "ckpt"
    model = _checkpoint(folder, tiny_cfg(backbone="resnet10t", patch_size=64, head=head))
    out = write_format(folder, "onnx", tmp_path / "hyperiqa.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["patch_size"] == "64" and json.loads(meta["label_range"]) == [1.0, 100.0]
    crops = _crops(5, 64)
    ours = _ours(model, crops)
    assert np.ptp(ours) > 1e-2
    for batch in (crops[:1], crops):  # the batch dimension is dynamic, down to one crop
        got = session.run(["scores"], {"crops": _to_tensor(batch).numpy()})[0]
        # ONNX Runtime's kernels sum in another order than PyTorch's, so fp32 rounding differs: on this
        # model about 1e-7 relative in the scores (4e-6 absolute on scores near 56, measured on a 2-core
        # VM). rtol 1e-4 (~6e-3) leaves a 1000x margin for other CPUs' kernels, yet a graph without the
        # normalisation misses by ~1 here, and by more with a layer wrong.
        np.testing.assert_allclose(got, ours[:len(batch)], rtol=1e-4, atol=1e-4)


def test_export_folder_gets_each_requested_format_once(resnet50_checkpoint, tmp_path):
    from tuning.sweep.export_folder import write_formats

    folder, _, _ = resnet50_checkpoint
    written = write_formats(folder, ["pyiqa", "original", "pyiqa"], tmp_path)
    assert [p.name for p in written] == ["hyperiqa_pyiqa.pth", "hyperiqa_original.pkl"]
    pyiqa_keys = set(torch.load(written[0], weights_only=True)["params"])
    assert pyiqa_keys == set(pyiqa_hypernet.HyperNet("resnet50").state_dict())
