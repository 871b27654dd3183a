"""A stand-in for pyiqa's HyperNet arch (pyiqa/archs/hypernet_arch.py, pyiqa 0.1.16), written from its description.

What the tests rely on, as pyiqa has it: a timm `features_only` backbone named `base_model` whose first
(stride-2) feature is dropped; `lda_modules`, `fc_w_modules`, `fc_b_modules` and `conv1` laid out as
below; weights read by `load_pretrained_network(net, path, strict=True, weight_keys='params')` (a
leading `module.` stripped); input RGB in [0, 1], normalised inside with `default_mean`/`default_std`;
224x224 patches (`forward_patch`), 25 crops averaged at test time. The backbone is random-init here.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZES = [224, 112, 56, 28, 14, 1]  # the target net's widths


def _pooled_linear(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, n_out))


class HyperNet(nn.Module):
    def __init__(self, base_model_name="resnet50", default_mean=IMAGENET_MEAN, default_std=IMAGENET_STD) -> None:
        super().__init__()
        self.base_model = timm.create_model(base_model_name, pretrained=False, features_only=True)
        branches = [nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.AvgPool2d(7, stride=7), nn.Flatten(),
                                  nn.Linear(w * g * g, 16))
                    for c, w, g in [(256, 16, 8), (512, 32, 4), (1024, 64, 2)]]
        branches.append(nn.Sequential(nn.AvgPool2d(7, stride=7), nn.Flatten(), nn.Linear(2048, 224 - 48)))
        self.lda_modules = nn.ModuleList(branches)
        self.fc_w_modules = nn.ModuleList([nn.Conv2d(112, SIZES[k] * SIZES[k + 1] // 49, 3, padding=1)
                                           for k in range(4)] + [_pooled_linear(112, SIZES[4])])
        self.fc_b_modules = nn.ModuleList([_pooled_linear(112, SIZES[k + 1]) for k in range(5)])
        self.conv1 = nn.Sequential(nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True), nn.Conv2d(1024, 512, 1),
                                   nn.ReLU(inplace=True), nn.Conv2d(512, 112, 1), nn.ReLU(inplace=True))
        self.mean = torch.tensor(default_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(default_std).view(1, 3, 1, 1)

    def load_pretrained(self, path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)["params"]
        self.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)

    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) in [0, 1] -> (B, 1) scores."""
        feats = self.base_model((x - self.mean) / self.std)[1:]
        target_in = torch.cat([m(f) for m, f in zip(self.lda_modules, feats)], 1)
        h = self.conv1(feats[-1])
        b = h.shape[0]
        q = target_in.unsqueeze(1)  # (B, 1, 224): row vectors times each image's (in, out) matrices
        for k in range(5):
            w = self.fc_w_modules[k](h).reshape(b, SIZES[k + 1], -1)
            q = torch.bmm(q, w.transpose(1, 2)) + self.fc_b_modules[k](h).unsqueeze(1)
            if k < 4:
                q = torch.sigmoid(q)
        return q.squeeze(-1)
