"""A timm `features_only` backbone: per-stage NCHW feature maps, stage freezing, local weight files.

Channel sizes and strides come from timm's `feature_info`, never from a table here, so any timm model
with features_only support plugs in (resnet*, convnext*, swin*, ...).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from hyperiqa.config import ConfigError
from hyperiqa.models.packaged import PACKAGED, install_hint, load_packaged, packaged_file
from hyperiqa.utils import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREFIXES = ("module.", "model.")  # DataParallel / timm feature-getter wrappers


class Backbone(nn.Module):
    """Feature extractor returning one NCHW map per stage (stride >= 4; a stride-2 stem is not a stage)."""

    def __init__(self, name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                 img_size: int = 224) -> None:
        super().__init__()
        self.name = name
        # Precedence for pretrained = true: a packaged weights file (offline), else timm's hub download.
        packaged = packaged_file(name) if pretrained and weights is None else None
        hub = pretrained and weights is None and packaged is None
        self.features = _create(name, pretrained=hub, img_size=img_size)
        info = self.features.feature_info
        # timm lists a stride-2 stem (resnet's act1) as a feature; HyperIQA's stages start at stride 4.
        self.out_indices = [i for i, r in enumerate(info.reduction()) if r >= 4]
        self.channels = [info.channels()[i] for i in self.out_indices]
        self.reductions = [info.reduction()[i] for i in self.out_indices]
        self.stage_modules = [info.module_name()[i] for i in self.out_indices]
        self.num_stages = len(self.out_indices)
        fmt = getattr(self.features, "output_fmt", "NCHW")
        self.nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"  # swin's list wrapper yields NHWC
        cfg = getattr(self.features, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
        self.frozen_stages = 0
        self._frozen_modules: list[nn.Module] = []
        self.weights_source = "random init"  # a line for the run log: where the weights came from
        if weights is not None:
            self.load_timm_state_dict(read_state_dict(weights), source=str(weights))
            self.weights_source = f"weights from {weights}"
        elif packaged is not None:
            state, self.weights_source = load_packaged(name, packaged, self.features)
            self.load_timm_state_dict(state, source=f"{packaged} (package weights)")
        elif hub:
            self.weights_source = f"ImageNet weights from timm's hub ({cfg.get('hf_hub_id') or cfg.get('url')})"

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = self.features(x)
        outs = [outs[i] for i in self.out_indices]
        if self.nhwc:
            # A permuted view is already channels_last in memory: no copy needed.
            outs = [o.permute(0, 3, 1, 2) for o in outs]
        return outs

    # --- freezing ---------------------------------------------------------------------------
    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first n stages: no gradients, normalisation statistics fixed."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.num_stages:
            raise ConfigError(f"frozen_stages = {n!r}: backbone {self.name} has {self.num_stages} stages; "
                              f"allowed 0..{self.num_stages}")
        for p in self.features.parameters():
            p.requires_grad_(True)
        self.frozen_stages = n
        self._frozen_modules = self._modules_up_to_stage(n) if n else []
        for module in self._frozen_modules:
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
        self.train(self.training)

    def _modules_up_to_stage(self, n: int) -> list[nn.Module]:
        """Modules in registration (= forward) order up to the end of stage n, without their ancestors."""
        named = list(self.features.named_modules())
        target = _norm_key(self.stage_modules[n - 1])
        stage = next(name for name, _ in named if _norm_key(_strip(name)) == target)
        last = max(i for i, (name, _) in enumerate(named) if name == stage or name.startswith(stage + "."))
        later = [name for name, _ in named[last + 1:]]
        frozen = []
        for name, module in named[:last + 1]:
            if name == "" or any(k.startswith(name + ".") for k in later):
                # A wrapper of later stages too: freeze only its own tensors (e.g. a ViT's pos_embed).
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)
            else:
                frozen.append(module)
        return frozen

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._frozen_modules:  # keep BatchNorm statistics and dropout of frozen stages fixed
            module.training = False
        return self

    # --- weights ----------------------------------------------------------------------------
    def load_timm_state_dict(self, state: dict[str, Tensor], *, source: str) -> None:
        """Load weights in timm's layout for this model (classifier keys ignored)."""
        own = self.features.state_dict()
        by_norm = {_norm_key(_strip(k)): k for k in own}
        given = {_norm_key(_strip(k)): v for k, v in state.items()}
        missing = [k for n, k in by_norm.items() if n not in given and not k.endswith("num_batches_tracked")]
        if missing:
            unexpected = [k for k in state if _norm_key(_strip(k)) not in by_norm]
            raise UserError(f"{source}: not weights for timm backbone {self.name}: {len(missing)} of its "
                            f"{len(own)} tensors are missing (e.g. {', '.join(missing[:4])}); unused keys in the "
                            f"file: {', '.join(unexpected[:4]) or 'none'}")
        wrong = [f"{k} {tuple(given[n].shape)} != {tuple(own[k].shape)}" for n, k in by_norm.items()
                 if n in given and given[n].shape != own[k].shape]
        if wrong:
            raise UserError(f"{source}: tensor shapes do not match backbone {self.name}: {'; '.join(wrong[:4])}")
        self.features.load_state_dict({k: given[n] for n, k in by_norm.items() if n in given}, strict=False)


def read_state_dict(path: str | Path, *, label: str = "backbone_weights") -> dict[str, Tensor]:
    """A tensor dict from .safetensors or a torch file (never unpickles arbitrary objects)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{label} = {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with objects, ...: one clear line
        raise UserError(f"{label} = {str(path)!r}: cannot read it as weights: {exc}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers around the tensors
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{label} = {str(path)!r}: expected a dict of tensors (a state dict)")
    return state


def _create(name: str, *, pretrained: bool, img_size: int) -> nn.Module:
    if not isinstance(name, str) or not timm.is_model(name):
        raise ConfigError(f"backbone = {name!r}: not a timm model name (e.g. resnet50, resnet18, convnext_tiny, "
                          "swin_tiny_patch4_window7_224; see timm.list_models())")
    kwargs = {}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = img_size  # swin & co. are built for one input size: the patch size
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except OSError as exc:  # download failures (URLError, HTTP errors, HF's LocalEntryNotFound) are OSErrors
        fix = install_hint(name) if name in PACKAGED else "go online, set pretrained: false, or give backbone_weights: PATH"
        raise UserError(f"backbone {name}: cannot download ImageNet weights (pretrained = true): {_first_line(exc)}; "
                        f"{fix}") from None
    except (RuntimeError, AssertionError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"backbone = {name!r}: timm cannot build it with features_only=True "
                          f"(img_size={img_size}): {exc}") from None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:200]


def _strip(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _norm_key(key: str) -> str:
    # timm's list wrapper flattens `layers.0` into `layers_0`; compare names with both spellings folded.
    return key.replace(".", "_")
