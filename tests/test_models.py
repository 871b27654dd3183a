"""HyperIQA model: equivalence with the original architecture, timm backbones, freezing, weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from hyperiqa.config import ConfigError, demo_config
from hyperiqa.models import HyperIQA, build_model
from hyperiqa.models.hypernet import target_net
from hyperiqa.utils import UserError


# --- the original architecture (docs/original-defects.md#the-original-code), with its attribute names --
class OriginalRes(nn.Module):
    """torchvision ResNet-50 body plus the LDA branches, as the original `res` module."""

    def __init__(self) -> None:
        super().__init__()
        body = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = body.conv1, body.bn1, body.relu, body.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = body.layer1, body.layer2, body.layer3, body.layer4
        for i, (c, grid) in enumerate([(256, 8), (512, 4), (1024, 2)], start=1):
            setattr(self, f"lda{i}_pool", nn.Sequential(nn.Conv2d(c, 16 * 2 ** (i - 1), 1, bias=False),
                                                        nn.AvgPool2d(7, stride=7)))
            setattr(self, f"lda{i}_fc", nn.Linear(16 * 2 ** (i - 1) * grid * grid, 16))
        self.lda4_pool = nn.AvgPool2d(7, stride=7)
        self.lda4_fc = nn.Linear(2048, 224 - 16 * 3)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        vec = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            vec.append(getattr(self, f"lda{i}_fc")(getattr(self, f"lda{i}_pool")(x).flatten(1)))
        return torch.cat(vec, 1), x


class OriginalHyperNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.res = OriginalRes()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(nn.Conv2d(2048, 1024, 1), nn.ReLU(), nn.Conv2d(1024, 512, 1), nn.ReLU(),
                                   nn.Conv2d(512, 112, 1), nn.ReLU())
        self.sizes = [224, 112, 56, 28, 14, 1]
        for k in range(4):
            setattr(self, f"fc{k + 1}w_conv", nn.Conv2d(112, self.sizes[k] * self.sizes[k + 1] // 49, 3, padding=1))
            setattr(self, f"fc{k + 1}b_fc", nn.Linear(112, self.sizes[k + 1]))
        self.fc5w_fc = nn.Linear(112, 14)
        self.fc5b_fc = nn.Linear(112, 1)

    def forward(self, img):
        vec, feat = self.res(img)
        h = self.conv1(feat)
        pooled = self.pool(h).flatten(1)
        q = vec.view(-1, 224, 1, 1)
        for k in range(5):
            if k < 4:
                w = getattr(self, f"fc{k + 1}w_conv")(h).view(-1, self.sizes[k + 1], self.sizes[k], 1, 1)
            else:
                w = self.fc5w_fc(pooled).view(-1, 1, 14, 1, 1)
            b = getattr(self, f"fc{k + 1}b_fc")(pooled).view(-1, self.sizes[k + 1])
            batch = w.shape[0]  # per-image weights as a grouped convolution, groups = batch
            q = F.conv2d(q.reshape(1, -1, 1, 1), w.reshape(-1, w.shape[2], 1, 1), b.reshape(-1), groups=batch)
            q = q.view(batch, -1, 1, 1)
            if k < 4:
                q = torch.sigmoid(q)
        return q.flatten()


def test_resnet50_reproduces_original_forward(tmp_path):
    torch.manual_seed(0)
    original = OriginalHyperNet()
    for m in original.modules():  # non-trivial statistics, so a BatchNorm buffer lost in mapping shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    original.eval()
    state = {f"module.{k}": v for k, v in original.state_dict().items()}  # as saved from DataParallel
    state["module.res.fc.weight"] = torch.zeros(1000, 2048)  # classifier left in some checkpoints: ignored
    torch.save(state, tmp_path / "hyperiqa_koniq.pkl")

    model = HyperIQA.from_original_checkpoint(tmp_path / "hyperiqa_koniq.pkl")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = original(x), model(x)
    assert got.shape == (2,) and got.dtype == torch.float32
    assert (expected[0] - expected[1]).abs() > 1e-3  # the comparison is not between constants
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_not_an_original_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="other.pth.*fc1w_conv"):
        HyperIQA.from_original_checkpoint(path)


def test_batched_target_net_equals_per_image_layers():
    torch.manual_seed(0)
    sizes = [224, 112, 56, 28, 14, 1]
    x = torch.randn(3, 224)
    weights = [torch.randn(3, o, i) / i**0.5 for i, o in zip(sizes, sizes[1:])]
    biases = [torch.randn(3, o) for o in sizes[1:]]
    expected = []
    for n in range(3):
        q = x[n]
        for k in range(5):
            q = F.linear(q, weights[k][n], biases[k][n])
            q = torch.sigmoid(q) if k < 4 else q
        expected.append(q)
    torch.testing.assert_close(target_net(x, weights, biases), torch.cat(expected))


# --- timm backbones -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet10t", "convnext_tiny"])
def test_channels_come_from_feature_info_and_small_patches_work(name):
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    stages = [c for c, r in zip(info.channels(), info.reduction()) if r >= 4]
    model = HyperIQA(name, patch_size=64).eval()
    assert model.num_stages == 4
    assert [b.conv.in_channels for b in model.lda.branches] == stages[:3]
    assert model.lda.last.in_features == stages[-1]
    assert model.hyper[0].in_channels == stages[-1]
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2,) and torch.isfinite(y).all()


def test_swin_features_are_nchw_and_multiscale_runs():
    name = "swin_tiny_patch4_window7_224"
    model = HyperIQA(name).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 224, 224))
        assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14),
                                                    (1, 768, 7, 7)]
        assert model(torch.randn(1, 3, 224, 224)).shape == (1,)
    multi = HyperIQA(name, multiscale=True, frozen_stages=1).eval()
    assert multi.hyper[0].in_channels == 96 + 192 + 384 + 768
    with torch.no_grad():
        assert multi(torch.randn(1, 3, 224, 224)).shape == (1,)
    frozen = {n for n, p in multi.backbone.named_parameters() if not p.requires_grad}
    assert any("patch_embed" in n for n in frozen) and any("layers_0" in n for n in frozen)
    assert not any("layers_1" in n for n in frozen)


def test_bad_backbone_names_are_config_errors():
    with pytest.raises(ConfigError, match="backbone = 'resnet5O'"):
        HyperIQA("resnet5O")
    with pytest.raises(ConfigError, match=r"frozen_stages = 5: backbone test_resnet has 4 stages; allowed 0\.\.4"):
        build_model(demo_config(frozen_stages=5))


def test_scores_are_float32_under_autocast():
    model = HyperIQA("resnet10t", patch_size=64).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 64, 64))
    assert y.dtype == torch.float32 and y.shape == (2,)


# --- freezing and parameter groups ----------------------------------------------------------------------
def test_frozen_stages_stay_bit_identical_while_the_rest_trains():
    torch.manual_seed(0)
    model = HyperIQA("resnet10t", patch_size=64, frozen_stages=2)
    features = model.backbone.features
    frozen = {n for n, p in features.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in frozen)
    assert all(p.requires_grad for n, p in features.named_parameters() if n.startswith(("layer3", "layer4")))
    before = {k: v.clone() for k, v in features.state_dict().items()}

    opt = torch.optim.Adam(model.backbone_parameters() + model.head_parameters(), lr=1e-2)
    model.train()
    assert not features.layer1[0].bn1.training and features.layer3[0].bn1.training
    for _ in range(2):
        loss = (model(torch.randn(2, 3, 64, 64)) - 1).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    after = features.state_dict()
    for key, value in before.items():
        if key.startswith(("conv1", "bn1", "layer1", "layer2")):  # weights and BatchNorm statistics
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    assert not torch.equal(after["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])


def test_every_trainable_parameter_is_in_exactly_one_group():
    model = HyperIQA("resnet10t", patch_size=64, frozen_stages=1)
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert backbone.isdisjoint(head) and backbone | head == trainable
    assert {id(p) for p in model.lda.parameters()} <= backbone  # LDA trains at the backbone rate, as `res.*`
    assert len(model.backbone_parameters()) == len(backbone)  # no duplicates


# --- local backbone weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_backbone_weights_load_from_a_local_file(tmp_path, fmt):
    torch.manual_seed(1)
    state = timm.create_model("resnet10t", pretrained=False).state_dict()  # timm layout, classifier included
    path = tmp_path / f"resnet10t.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = HyperIQA("resnet10t", backbone_weights=str(path), patch_size=64)
    loaded = model.backbone.features.state_dict()
    assert torch.equal(loaded["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_backbone_weights_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="backbone_weights = .*nowhere.safetensors.*no such file"):
        HyperIQA("resnet10t", backbone_weights=str(tmp_path / "nowhere.safetensors"))
    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    with pytest.raises(UserError, match="resnet18.safetensors.*backbone resnet10t"):
        HyperIQA("resnet10t", backbone_weights=str(path), patch_size=64)
