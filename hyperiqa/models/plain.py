"""A plain regression head on HyperIQA's backbone (cfg.head = plain): the control for the hyper network.

Global average pooling of the last stage (of every stage, concatenated, with multiscale) and an MLP
C -> 512 -> 1: the fine-tuned-backbone baseline IQA papers compare HyperIQA against. One set of head
weights scores every image, where HyperIQA generates a target network per image, so a run with this
head tells whether the hyper network is what overfits. No dropout: HyperIQA's head has none, and the
control should differ from it in the head's structure only, not in added regularisation.

The interface is HyperIQA's (what the solver, checkpoints, predict and the ONNX export use):
backbone_parameters / head_parameters, the label affine buffers, frozen stages, input mean/std.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperiqa.models.base import BackboneModel

HIDDEN = 512


class PlainIQA(BackboneModel):
    """Score a (B,3,H,W) batch, normalised with `input_mean`/`input_std`, as a (B,) float32 tensor."""

    def __init__(self, backbone: str = "resnet50", *, pretrained: bool = False, backbone_weights: str | None = None,
                 multiscale: bool = False, frozen_stages: int = 0, patch_size: int = 224) -> None:
        super().__init__(backbone, pretrained=pretrained, backbone_weights=backbone_weights, multiscale=multiscale,
                         patch_size=patch_size)
        channels = self.backbone.channels
        c = sum(channels) if multiscale else channels[-1]
        self.head = nn.Sequential(nn.Linear(c, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, 1))
        nn.init.kaiming_normal_(self.head[0].weight)  # as HyperIQA's layers; the rest PyTorch's default
        self.freeze_stages(frozen_stages)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The MLP: the group HyperIQA's hyper network is in (backbone_lr * lr_ratio, legacy switches)."""
        return [p for p in self.head.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        used = feats if self.multiscale else feats[-1:]
        pooled = torch.cat([f.mean((2, 3)) for f in used], 1)
        # fp32 under bf16 autocast, as HyperIQA's target net: bf16 scores would be too coarse to rank.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            score = self.head(pooled.float()).reshape(-1)
        return score * self.label_scale + self.label_shift
