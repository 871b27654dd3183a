"""Load checkpoints saved by the original HyperIQA code (SSL92/hyperIQA) into HyperIQA("resnet50").

The original state dict holds `res.*` (torchvision-layout ResNet-50 plus the LDA branches), `conv1.*`
(the hyper network's 1x1 convs) and `fc{1..4}w_conv.*`, `fc{1..5}b_fc.*`, `fc5w_fc.*` (the weight
generators). ResNet-50's keys are identical in torchvision and timm, so they pass through unchanged.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from hyperiqa.models.backbone import read_state_dict
from hyperiqa.utils import UserError

# (original prefix, our prefix); the backbone (`res.` minus the LDA keys) is handled separately.
_HEAD_PREFIXES = (
    *((f"res.lda{i + 1}_pool.0.", f"lda.branches.{i}.conv.") for i in range(3)),
    *((f"res.lda{i + 1}_fc.", f"lda.branches.{i}.fc.") for i in range(3)),
    ("res.lda4_fc.", "lda.last."),
    ("conv1.", "hyper."),
    *((f"fc{i + 1}w_conv.", f"generator.w_convs.{i}.") for i in range(4)),
    *((f"fc{i + 1}b_fc.", f"generator.b_fcs.{i}.") for i in range(5)),
    ("fc5w_fc.", "generator.w_last."),
)
_IGNORED = ("res.fc.",)  # the ImageNet classifier, unused by HyperIQA


def split_original(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """Original keys -> (head/LDA dict in our names, backbone dict in timm names, keys not understood)."""
    head, backbone, unknown = {}, {}, []
    for key, value in state.items():
        while key.startswith("module."):  # saved from DataParallel
            key = key[len("module."):]
        ours = next((new + key[len(old):] for old, new in _HEAD_PREFIXES if key.startswith(old)), None)
        if ours is not None:
            head[ours] = value
        elif key.startswith(_IGNORED):
            continue
        elif key.startswith("res."):
            backbone[key[len("res."):]] = value
        else:
            unknown.append(key)
    return head, backbone, unknown


def to_original_name(ours: str) -> str:
    return next((old + ours[len(new):] for old, new in _HEAD_PREFIXES if ours.startswith(new)), ours)


def load_original(cls, path_or_state_dict):
    """Build cls("resnet50") and fill it from an original checkpoint; returned in eval mode."""
    if isinstance(path_or_state_dict, dict):
        state, source = path_or_state_dict, "original HyperIQA state dict"
    else:
        state = read_state_dict(path_or_state_dict, label="original HyperIQA checkpoint")
        source = str(Path(path_or_state_dict))
    head, backbone, unknown = split_original(state)
    model = cls("resnet50", pretrained=False)
    own = model.state_dict()
    expected = [k for k in own if not k.startswith("backbone.") and not k.startswith("label_")]
    missing = [to_original_name(k) for k in expected if k not in head]
    if missing or not backbone:
        raise UserError(f"{source}: not an original HyperIQA checkpoint (keys res.*, conv1.*, fc1w_conv.* ...): "
                        f"{len(missing)} head keys missing (e.g. {', '.join(missing[:4]) or 'none'}), "
                        f"{len(backbone)} res.* backbone keys found; unknown keys: {', '.join(unknown[:4]) or 'none'}")
    model.backbone.load_timm_state_dict(backbone, source=f"{source} (res.*)")
    wrong = [f"{to_original_name(k)} {tuple(v.shape)}" for k, v in head.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        raise UserError(f"{source}: tensor shapes differ from the original resnet50 HyperIQA: {'; '.join(wrong[:4])}")
    model.load_state_dict(head, strict=False)
    return model.eval()
