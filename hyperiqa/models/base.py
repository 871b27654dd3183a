"""What every IQA model here shares: a timm backbone, frozen stages, and the label affine on its output.

HyperIQA (hypernet.py) and the plain control head (plain.py) differ only in what sits on the features;
the solver, checkpoints, predict and the ONNX export use this interface: backbone_parameters /
head_parameters, the label_scale / label_shift buffers, freeze_stages, input_mean / input_std.
"""

from __future__ import annotations

import torch
from torch import nn

from hyperiqa.models.backbone import Backbone


class BackboneModel(nn.Module):
    """A subclass builds its head after this __init__, then calls self.freeze_stages(frozen_stages)."""

    def __init__(self, backbone: str, *, pretrained: bool, backbone_weights: str | None, multiscale: bool,
                 patch_size: int) -> None:
        super().__init__()
        self.backbone_name, self.multiscale, self.patch_size = backbone, multiscale, patch_size
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=backbone_weights, img_size=patch_size)
        self.num_stages = self.backbone.num_stages
        self.input_mean, self.input_std = self.backbone.mean, self.backbone.std
        # score = head output * label_scale + label_shift. Identity by default (the paper); the solver sets
        # them from the training labels for cfg.label_norm = standardize. Saved with the weights.
        self.register_buffer("label_scale", torch.ones(()))
        self.register_buffer("label_shift", torch.zeros(()))

    @property
    def frozen_stages(self) -> int:
        return self.backbone.frozen_stages

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first n backbone stages."""
        self.backbone.freeze_stages(n)
