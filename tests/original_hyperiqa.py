"""A stand-in for the original HyperIQA model code (SSL92/hyperIQA models.py), written from its description.

Same public API and state-dict keys as the original: `HyperNet(16, 112, 224, 112, 56, 28, 14, 7)` returns
the dict of generated target-net parameters (`target_in_vec`, `target_fc{1..5}w`, `target_fc{1..5}b`),
and `TargetNet(paras)(paras['target_in_vec'])` scores it, as the original's demo.py does. The ResNet-50
body is torchvision's (random init, no download), under `res.` with the LDA branches, no classifier.
Su et al., CVPR 2020, Sec. 3: the parts marked "paper:" below are the equations these tests check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class ResNetWithLDA(nn.Module):
    """`res`: torchvision ResNet-50 stages and the local distortion aware (LDA) branches."""

    def __init__(self, lda_out: int, target_in: int) -> None:
        super().__init__()
        body = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(body, name))  # the classifier (fc) is not part of `res`
        # layers 1-3: 1x1 conv, then AvgPool(7, 7) on 56/28/14 maps -> 8x8, 4x4, 2x2 grids, then a linear
        for i, (channels, width, grid) in enumerate([(256, 16, 8), (512, 32, 4), (1024, 64, 2)], start=1):
            setattr(self, f"lda{i}_pool", nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.AvgPool2d(7, 7)))
            setattr(self, f"lda{i}_fc", nn.Linear(width * grid * grid, lda_out))
        self.lda4_pool = nn.AvgPool2d(7, 7)
        self.lda4_fc = nn.Linear(2048, target_in - 3 * lda_out)

    def forward(self, img: torch.Tensor) -> dict:
        x = self.maxpool(self.relu(self.bn1(self.conv1(img))))
        parts = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            parts.append(getattr(self, f"lda{i}_fc")(getattr(self, f"lda{i}_pool")(x).flatten(1)))
        # paper: v_x, the multi-scale content feature the target network takes as input
        return {"target_in_vec": torch.cat(parts, 1), "hyper_in_feat": x}


class HyperNet(nn.Module):
    def __init__(self, lda_out, hyper_in, target_in, f1, f2, f3, f4, feature_size) -> None:
        super().__init__()
        self.sizes, self.hyper_in, self.feature_size = [target_in, f1, f2, f3, f4], hyper_in, feature_size
        self.res = ResNetWithLDA(lda_out, target_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True), nn.Conv2d(1024, 512, 1),
                                   nn.ReLU(inplace=True), nn.Conv2d(512, hyper_in, 1), nn.ReLU(inplace=True))
        for k in range(4):  # layer k+1's weights from a 3x3 conv on the 7x7 map, its bias from the pooled map
            n_in, n_out = self.sizes[k], self.sizes[k + 1]
            setattr(self, f"fc{k + 1}w_conv", nn.Conv2d(hyper_in, n_in * n_out // feature_size**2, 3, padding=1))
            setattr(self, f"fc{k + 1}b_fc", nn.Linear(hyper_in, n_out))
        self.fc5w_fc = nn.Linear(hyper_in, f4)
        self.fc5b_fc = nn.Linear(hyper_in, 1)

    def forward(self, img: torch.Tensor) -> dict:
        res = self.res(img)
        h = self.conv1(res["hyper_in_feat"])  # paper: S(x), the semantic feature the hyper network reads
        pooled = self.pool(h).flatten(1)
        b = img.shape[0]
        # paper: theta_x = H(S(x), gamma), the target network's weights generated per image
        paras = {"target_in_vec": res["target_in_vec"].view(b, -1, 1, 1)}
        for k in range(4):
            w = getattr(self, f"fc{k + 1}w_conv")(h)
            paras[f"target_fc{k + 1}w"] = w.reshape(b, self.sizes[k + 1], self.sizes[k], 1, 1)
            paras[f"target_fc{k + 1}b"] = getattr(self, f"fc{k + 1}b_fc")(pooled).view(b, -1)
        paras["target_fc5w"] = self.fc5w_fc(pooled).view(b, 1, self.sizes[4], 1, 1)
        paras["target_fc5b"] = self.fc5b_fc(pooled).view(b, 1)
        return paras


class _PerImageFC(nn.Module):
    """One fully connected layer whose weights differ per image: a grouped 1x1 conv, groups = batch."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # (B, out, in, 1, 1), (B, out): plain tensors, not parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n_out, n_in = self.weight.shape[:3]
        y = F.conv2d(x.reshape(1, b * n_in, 1, 1), self.weight.reshape(b * n_out, n_in, 1, 1),
                     self.bias.reshape(b * n_out), groups=b)
        return y.view(b, n_out, 1, 1)


class TargetNet(nn.Module):
    """paper: q = phi(v_x, theta_x); five layers 224-112-56-28-14-1, a sigmoid after each of the first four."""

    def __init__(self, paras: dict) -> None:
        super().__init__()
        layers = []
        for k in range(1, 6):
            layers.append(_PerImageFC(paras[f"target_fc{k}w"], paras[f"target_fc{k}b"]))
            if k < 5:
                layers.append(nn.Sigmoid())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze()
