"""HyperIQA (Su et al., CVPR 2020) on any timm backbone.

With resnet50 at 224x224 this is the original architecture, layer for layer (docs/original-defects.md):
LDA branches -> 224-d target-net input; a hyper network on the last stage generates the weights of a
five-layer target network 224-112-56-28-14-1, applied per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperiqa.config import ConfigError
from hyperiqa.models.base import BackboneModel

TARGET_SIZES = (224, 112, 56, 28, 14)  # target-net widths; the last layer maps 14 -> 1
HYPER_CHANNELS = 112                   # channels of the hyper-network feature map
HYPER_GRID = 7                         # its spatial size: 224 * 112 weights = 512 channels x 7 x 7
LDA_OUT = 16                           # target-net input dimensions contributed by each early stage


class LDABranch(nn.Module):
    """Local distortion-aware features of one early stage: 1x1 conv, pool to a fixed grid, linear."""

    def __init__(self, in_channels: int, channels: int, grid: int, out_features: int = LDA_OUT) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        # Adaptive pooling to a fixed grid equals the original AvgPool(7, 7) at 224 input and
        # keeps the Linear's size independent of the patch size.
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(channels * grid * grid, out_features)
        nn.init.kaiming_normal_(self.conv.weight)
        nn.init.kaiming_normal_(self.fc.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


class LDA(nn.Module):
    """All stages -> the target network's input vector (16 per early stage, the rest from the last)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        early = channels[:-1]
        self.branches = nn.ModuleList(
            LDABranch(c, LDA_OUT * 2**i, max(1, 8 >> i)) for i, c in enumerate(early))
        self.last = nn.Linear(channels[-1], TARGET_SIZES[0] - LDA_OUT * len(early))
        nn.init.kaiming_normal_(self.last.weight)

    def forward(self, feats: list[Tensor]) -> Tensor:
        parts = [branch(f) for branch, f in zip(self.branches, feats[:-1])]
        parts.append(self.last(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1)))
        return torch.cat(parts, 1)


class WeightGenerator(nn.Module):
    """Hyper-network map (B,112,7,7) -> per-image weights and biases of the target network."""

    def __init__(self) -> None:
        super().__init__()
        pairs = list(zip(TARGET_SIZES[:-1], TARGET_SIZES[1:]))  # (in, out) of the first four layers
        self.w_convs = nn.ModuleList(
            nn.Conv2d(HYPER_CHANNELS, i * o // HYPER_GRID**2, 3, padding=1) for i, o in pairs)
        self.b_fcs = nn.ModuleList(nn.Linear(HYPER_CHANNELS, o) for o in [*TARGET_SIZES[1:], 1])
        self.w_last = nn.Linear(HYPER_CHANNELS, TARGET_SIZES[-1])
        for m in [*self.w_convs, *self.b_fcs, self.w_last]:
            nn.init.kaiming_normal_(m.weight)  # as the original; biases keep PyTorch's default init

    def forward(self, h: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        b = h.shape[0]
        pooled = h.mean((2, 3))
        pairs = zip(TARGET_SIZES[:-1], TARGET_SIZES[1:])
        weights = [conv(h).reshape(b, o, i) for conv, (i, o) in zip(self.w_convs, pairs)]
        weights.append(self.w_last(pooled).reshape(b, 1, TARGET_SIZES[-1]))
        biases = [fc(pooled) for fc in self.b_fcs]
        return weights, biases


def target_net(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """Apply each image's own fully connected layers as batched products: (B,224) -> (B,)."""
    q = x.unsqueeze(2)
    for k, (w, b) in enumerate(zip(weights, biases)):
        q = torch.baddbmm(b.unsqueeze(2), w, q)
        if k < len(weights) - 1:
            q = torch.sigmoid(q)
    return q.reshape(-1)


class HyperIQA(BackboneModel):
    """Score a (B,3,H,W) batch, normalised with `input_mean`/`input_std`, as a (B,) float32 tensor."""

    def __init__(self, backbone: str = "resnet50", *, pretrained: bool = False, backbone_weights: str | None = None,
                 multiscale: bool = False, frozen_stages: int = 0, patch_size: int = 224) -> None:
        super().__init__(backbone, pretrained=pretrained, backbone_weights=backbone_weights, multiscale=multiscale,
                         patch_size=patch_size)
        if self.num_stages < 2 or self.num_stages > 14:
            raise ConfigError(f"backbone = {backbone!r}: has {self.num_stages} feature stages of "
                              "stride >= 4; HyperIQA needs 2..14")
        channels = self.backbone.channels
        self.lda = LDA(channels)
        c = sum(channels) if multiscale else channels[-1]
        # 1x1 convs C -> C/2 -> C/4 -> 112 (2048 -> 1024 -> 512 -> 112 for resnet50), default init as the original
        self.hyper = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(c // 2, c // 4, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(c // 4, HYPER_CHANNELS, 1), nn.ReLU(inplace=True))
        self.generator = WeightGenerator()
        self.freeze_stages(frozen_stages)  # the stem and the first n stages; the LDA branches stay trainable

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone and LDA parameters (the original's `res.*` group)."""
        return [p for m in (self.backbone, self.lda) for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable hyper network and target-net weight generators."""
        return [p for m in (self.hyper, self.generator) for p in m.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        target_in = self.lda(feats)
        last = feats[-1]
        if self.multiscale:
            size = last.shape[-2:]
            last = torch.cat([F.adaptive_avg_pool2d(f, size) for f in feats], 1)
        if last.shape[-2:] != (HYPER_GRID, HYPER_GRID):  # e.g. 64-pixel patches: the generators need 7x7
            last = F.adaptive_avg_pool2d(last, HYPER_GRID)
        h = self.hyper(last)
        # Outside bf16 autocast: a bf16 score of 64-100 (MOS) moves in steps of 0.5, coarser than the
        # differences the metrics rank. Every tensor here is fp32. The target net's batched products are
        # true fp32 (torch leaves cuBLAS TF32 off); the generator's 3x3 convolutions run in TF32 on Ampere
        # and later GPUs (cuDNN's TF32 is on by default): their inputs are rounded to 10 mantissa bits and
        # summed in fp32, so the generated weights carry TF32 rounding but their outputs, and the scores,
        # are fp32 numbers, without bf16's steps. Left on: the convolutions are tiny (7x7 maps), and a
        # cudnn.allow_tf32 switch inside forward() would not survive torch.compile reliably.
        with torch.autocast(device_type=h.device.type, enabled=False):
            weights, biases = self.generator(h.float())
            score = target_net(target_in.float(), weights, biases)
        return score * self.label_scale + self.label_shift

    @classmethod
    def from_original_checkpoint(cls, path_or_state_dict) -> HyperIQA:
        """A resnet50 HyperIQA holding the weights of a checkpoint saved by the original code."""
        from hyperiqa.models.convert import load_original

        return load_original(cls, path_or_state_dict)
