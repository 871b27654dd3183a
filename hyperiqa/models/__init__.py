"""HyperIQA on timm backbones, and loading of original-format checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hyperiqa.models.backbone import Backbone
from hyperiqa.models.hypernet import HyperIQA
from hyperiqa.models.plain import PlainIQA

if TYPE_CHECKING:
    from hyperiqa.config import TrainConfig

__all__ = ["Backbone", "HyperIQA", "PlainIQA", "build_model"]


def build_model(cfg: TrainConfig) -> HyperIQA | PlainIQA:
    """The model a TrainConfig describes (backbone_weights, when given, overrides pretrained)."""
    cls = PlainIQA if cfg.head == "plain" else HyperIQA
    return cls(cfg.backbone, pretrained=cfg.pretrained, backbone_weights=cfg.backbone_weights,
               multiscale=cfg.multiscale, frozen_stages=cfg.frozen_stages, patch_size=cfg.patch_size)
