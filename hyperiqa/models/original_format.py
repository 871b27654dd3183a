"""Write a HyperIQA as the state dicts other HyperIQA code loads: the original's (SSL92/hyperIQA) and pyiqa's.

Both hold this model's tensors under other names (the inverse of hyperiqa/models/convert.py for the
original). The only arithmetic: neither has an output affine, so `label_scale`/`label_shift` (score =
target-net output * scale + shift) are folded into the generators of the last target-net layer. Its
weights and bias are linear in the pooled hyper feature p (w5 = A p + a, b5 = B p + b), hence
scale * (w5 . q + b5) + shift = (scale A p + scale a) . q + (scale B p + scale b + shift).
"""

from __future__ import annotations

from torch import Tensor

from hyperiqa.models.convert import to_original_name
from hyperiqa.models.hypernet import HyperIQA
from hyperiqa.utils import UserError

PATCH = 224                          # both hard-code AvgPool2d(7) grids and a 7x7 hyper map: 224 crops only
STAGE_CHANNELS = [256, 512, 1024, 2048]  # their LDA convs and hyper network are sized for these
_LAST_W, _LAST_B = "generator.w_last.", "generator.b_fcs.4."

# pyiqa's HyperNet module names (pyiqa/archs/hypernet_arch.py): each LDA branch is Sequential(conv, pool,
# flatten, linear), the last one Sequential(pool, flatten, linear); pooled generators are
# Sequential(pool, flatten, linear).
_PYIQA_PREFIXES = (
    *((f"lda.branches.{i}.conv.", f"lda_modules.{i}.0.") for i in range(3)),
    *((f"lda.branches.{i}.fc.", f"lda_modules.{i}.3.") for i in range(3)),
    ("lda.last.", "lda_modules.3.2."),
    ("hyper.", "conv1."),
    *((f"generator.w_convs.{i}.", f"fc_w_modules.{i}.") for i in range(4)),
    ("generator.w_last.", "fc_w_modules.4.2."),
    *((f"generator.b_fcs.{i}.", f"fc_b_modules.{i}.2.") for i in range(5)),
    ("backbone.features.", "base_model."),
)


def refusal(model, patch_size: int, fmt: str) -> str | None:
    """Why `model` (trained on `patch_size` crops) cannot be written in `fmt`; None when it can."""
    problems = []
    if not isinstance(model, HyperIQA):  # head = plain: an MLP, no hyper network or target net to hold
        problems.append("head = plain: the format holds HyperIQA's hyper network and target net only")
    arch = model.backbone_name.split(".")[0]
    if fmt == "original" and arch != "resnet50":
        problems.append(f"backbone {model.backbone_name}: the original code builds a torchvision ResNet-50")
    elif fmt == "pyiqa" and (model.backbone.channels != STAGE_CHANNELS or model.backbone.out_indices != [1, 2, 3, 4]
                             or model.backbone.reductions != [4, 8, 16, 32]):
        problems.append(f"backbone {model.backbone_name} has stages {model.backbone.channels}: pyiqa's HyperNet drops "
                        f"the first timm feature and sizes its layers for {STAGE_CHANNELS} (ResNet-50-shaped)")
    if model.multiscale:
        problems.append("multiscale = true: the hyper network reads all stages, the original format's reads layer4 only")
    if patch_size != PATCH:
        problems.append(f"patch_size {patch_size}: that code scores {PATCH}x{PATCH} crops only, which this model "
                        "was not trained on")
    return "; ".join(problems) or None


def check_exportable(model, patch_size: int, fmt: str, *, source: str) -> None:
    why = refusal(model, patch_size, fmt)
    if why:
        raise UserError(f"{source}: cannot be written as --format {fmt}: {why}. Use --format onnx or the "
                        "checkpoint folder itself")


def _folded(model) -> dict[str, Tensor]:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    scale, shift = state.pop("label_scale").float(), state.pop("label_shift").float()
    for prefix in (_LAST_W, _LAST_B):
        state[prefix + "weight"] = state[prefix + "weight"] * scale
        state[prefix + "bias"] = state[prefix + "bias"] * scale
    state[_LAST_B + "bias"] = state[_LAST_B + "bias"] + shift
    return state


def to_original(model, patch_size: int, *, source: str = "model") -> dict[str, Tensor]:
    """The state dict SSL92's models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7) loads strictly."""
    check_exportable(model, patch_size, "original", source=source)
    out = {}
    for key, value in _folded(model).items():
        if key.startswith("backbone.features."):  # timm's ResNet-50 names are torchvision's
            out["res." + key[len("backbone.features."):]] = value
        else:
            name = to_original_name(key)
            if name == key:
                raise UserError(f"{source}: tensor {key} has no place in the original format")
            out[name] = value
    return out


def to_pyiqa(model, patch_size: int, *, source: str = "model") -> dict[str, Tensor]:
    """The state dict pyiqa's HyperNet loads (strict) from pretrained_model_path, under its 'params' key."""
    check_exportable(model, patch_size, "pyiqa", source=source)
    out = {}
    for key, value in _folded(model).items():
        new = next((theirs + key[len(ours):] for ours, theirs in _PYIQA_PREFIXES if key.startswith(ours)), None)
        if new is None:
            raise UserError(f"{source}: tensor {key} has no place in pyiqa's HyperNet")
        out[new] = value
    return out
