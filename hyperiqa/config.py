"""TrainConfig: every choice that shapes one training run, with the paper's defaults.

Loaded strictly: an unknown key, a wrong type or an out-of-range value raises ConfigError naming
the field, the value and what is allowed. A config round-trips through YAML unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyperiqa.errors import ConfigError as ConfigError  # importable from here, where it is raised


def _f(default, *, choices=None, min=None, max=None, min_exclusive=False, doc=""):
    meta = {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


SCHEDULES = ("step", "cosine", "constant", "exponential")
OPTIMIZERS = ("adam", "adamw")
SELECTION_METRICS = ("val_srcc", "val_plcc", "test_srcc", "test_plcc")
SPLIT_MODES = ("random", "official", "file")
LABEL_NORMS = ("none", "standardize")
HEADS = ("hyper", "plain")
LOSSES = ("l1", "plcc", "l1_rank")  # hyperiqa/losses.py
# Settings of the machine a run happens on, not of the model: a search sets them per trial (one GPU
# share, one thread per CPU), and every checkpoint stores them reset so it loads on any machine.
RUNTIME_FIELDS = ("device", "num_threads", "gpu_memory_fraction")
# Behaviours of the original solver (SSL92/hyperIQA) that the fixed one corrects, each reproducible on
# its own so that an ablation can measure what it costs (docs/original-defects.md). Epochs 1-based.
LEGACY_DEFECTS = {
    "backbone_lr_constant": "the backbone group keeps its initial LR; only the head follows the schedule",
    "optimizer_reset": "a new Adam before every epoch after the first (moment estimates and step counts lost)",
    "head_frozen_after_epoch1": "the head group is empty from epoch 2 on: gradients computed, never applied",
    "lr_ratio_reset": "head LR = the scheduled backbone LR (ratio 1) from epoch 11 on",
    "lr_one_epoch_late": "LRs change once per epoch, one epoch late: epoch e uses the schedule's epoch e-1",
    "random_eval_crops": "new evaluation crops at every epoch's evaluation, seeded by (seed, epoch)",
}


@dataclass(frozen=True)
class TrainConfig:
    # --- data -------------------------------------------------------------------------------
    dataset: str = _f("demo", doc="dataset reader name (see hyperiqa.data.datasets.DATASETS)")
    data_root: str | None = _f(None, doc="dataset folder; None for the demo (generated under cache_dir)")
    dataset_options: dict = _f({}, doc="reader options, e.g. csv columns: {csv: labels.csv, image_column: ...}")
    split: str = _f("random", choices=SPLIT_MODES, doc="random (seeded, by group), official, or file")
    split_file: str | None = _f(None, doc="CSV written by an earlier run (columns path,split); implies split=file")
    val_fraction: float = _f(0.1, min=0.0, max=0.5, doc="fraction of groups for validation")
    test_fraction: float = _f(0.2, min=0.0, max=0.5, doc="fraction of groups for test")
    split_seed: int | None = _f(None, min=0, doc="seed of the split; None uses seed")
    resize_short_side: int | None = _f(None, min=0, doc="cache images with this short side (aspect kept); "
                                       "None = the dataset's default rule, 0 = original size")
    resize_to: list | None = _f(None, doc="[width, height]: exact resize (the original code's KonIQ rule is [384, 512])")
    cache_dir: str | None = _f(None, doc="decoded-image cache folder; None = $HYPERIQA_CACHE or ~/.cache/hyperiqa")
    # --- model ------------------------------------------------------------------------------
    backbone: str = _f("resnet50.tv_in1k", doc="timm model name with features_only support; resnet50.tv_in1k "
                                                "= torchvision's ImageNet weights, as the original used")
    pretrained: bool = _f(True, doc="load ImageNet weights through timm (needs the internet or a warm HF cache)")
    backbone_weights: str | None = _f(None, doc="local backbone weights file (.safetensors/.pth); overrides pretrained")
    multiscale: bool = _f(False, doc="feed all backbone stages (pooled to the last stage's size) to the hyper network")
    frozen_stages: int = _f(0, min=0, max=8, doc="freeze the stem and the first N backbone stages (0 = none)")
    head: str = _f("hyper", choices=HEADS,
                   doc="hyper: HyperIQA's hyper network and target network (the paper); plain: global average "
                       "pooling of the last stage + MLP C-512-1 on the same backbone, the baseline IQA papers "
                       "compare HyperIQA against (a control for the hyper network; exports as onnx only)")
    # --- patches ----------------------------------------------------------------------------
    patch_size: int = _f(224, min=32, max=1024)
    train_patches: int = _f(25, min=1, doc="random patches per training image per epoch")
    test_patches: int = _f(25, min=1, doc="fixed crops per evaluation image")
    hflip: bool = _f(True, doc="random horizontal flips of training patches")
    batch_size: int = _f(96, min=1)
    eval_batch_size: int = _f(256, min=1)
    # --- optimisation -----------------------------------------------------------------------
    optimizer: str = _f("adam", choices=OPTIMIZERS)
    backbone_lr: float = _f(2e-5, min=0.0, min_exclusive=True, max=1.0)
    lr_ratio: float = _f(10.0, min=0.0, min_exclusive=True, max=1e4, doc="head LR = backbone_lr * lr_ratio")
    weight_decay: float = _f(5e-4, min=0.0, max=1.0)
    epochs: int = _f(16, min=1, max=10000)
    schedule: str = _f("step", choices=SCHEDULES)
    step_size: int = _f(6, min=1, doc="step: epochs between decays")
    step_factor: float = _f(0.1, min=0.0, min_exclusive=True, max=1.0, doc="step: multiply LR by this")
    exp_gamma: float = _f(0.9, min=0.0, min_exclusive=True, max=1.0, doc="exponential: LR factor per epoch")
    min_lr_ratio: float = _f(0.01, min=0.0, max=1.0, doc="cosine: floor as a fraction of the initial LR")
    warmup_epochs: float = _f(0.0, min=0.0, doc="linear warmup length in epochs (fractions allowed)")
    grad_clip: float = _f(0.0, min=0.0, doc="clip the gradient norm to this (0 = off)")
    loss: str = _f("l1", choices=LOSSES,
                   doc="l1: mean absolute error (the paper); plcc: 1 - Pearson correlation over the batch "
                       "(pyiqa's HyperIQA recipe; 1 where undefined: a constant batch or one patch); "
                       "l1_rank: l1 + 1.0 x mean pairwise ranking hinge over the batch's pairs")
    label_norm: str = _f("none", choices=LABEL_NORMS,
                         doc="standardize: the model's output is scaled and shifted by the training labels' "
                             "std and mean (so its random-init output starts at the label mean); none: the "
                             "paper's raw labels")
    # --- selection and stopping -------------------------------------------------------------
    selection_metric: str = _f("val_srcc", choices=SELECTION_METRICS)
    patience: int = _f(0, min=0, doc="stop after this many epochs without a new best (0 = never)")
    train_eval_images: int = _f(0, min=0, doc="after every epoch also evaluate this many training images (a "
                                              "fixed seeded subset) as val/test are: train_image_srcc/plcc, "
                                              "image level beside the patch-level train_srcc (0 = off)")
    # --- the original solver's defects, for ablations -------------------------------------------
    legacy: list = _f([], doc="original-solver defects to reproduce (docs/original-defects.md), or [all]: "
                              + ", ".join(LEGACY_DEFECTS) + "; [] = the fixed solver")
    # --- runtime ----------------------------------------------------------------------------
    seed: int = _f(0, min=0)
    device: str = _f("auto", doc="auto, cpu, cuda or cuda:N")
    amp: bool = _f(True, doc="bf16 autocast on GPUs of compute capability >= 8.0; fp32 on older GPUs and the CPU")
    channels_last: bool = _f(True, doc="channels_last memory format on CUDA")
    compile: bool = _f(False, doc="torch.compile the model")
    gpu_memory_fraction: float | None = _f(None, min=0.0, min_exclusive=True, max=1.0,
                                           doc="cap this process's share of GPU memory (set by the tuner)")
    device_cache_gb: float = _f(8.0, min=0.0, doc="keep the decoded training images on the GPU up to this size")
    num_threads: int = _f(0, min=0, doc="torch CPU threads (0 = torch's default)")
    cache_workers: int = _f(0, min=0, doc="processes decoding images into the cache (0 = one per CPU the process may use)")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            hint = _close_match(unknown[0], fields)
            raise ConfigError(f"{source}: unknown key '{unknown[0]}'{hint}. Allowed keys: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        values = {name: _check(name, data[name], hints[name], fields[name].metadata, source) for name in data}
        cfg = cls(**values)
        cfg.validate(source=source)
        return cfg

    def validate(self, *, source: str = "config") -> None:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(f"{source}: val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}; "
                              "must be below 0.9 so that training keeps data")
        if self.resize_to is not None and (len(self.resize_to) != 2 or
                                           not all(isinstance(v, int) and v > 0 for v in self.resize_to)):
            raise ConfigError(f"{source}: resize_to = {self.resize_to!r}; expected [width, height], positive integers")
        unknown = [n for n in self.legacy if not (isinstance(n, str) and (n == "all" or n in LEGACY_DEFECTS))]
        if unknown:
            raise ConfigError(f"{source}: legacy = {self.legacy!r}: unknown name {unknown[0]!r}; allowed: all, "
                              f"{', '.join(LEGACY_DEFECTS)}")
        if self.split == "file" and not self.split_file:
            raise ConfigError(f"{source}: split = 'file' needs split_file (a CSV written by an earlier run)")

    @property
    def legacy_defects(self) -> frozenset[str]:
        """The `legacy` names with `all` expanded."""
        return frozenset(LEGACY_DEFECTS) if "all" in self.legacy else frozenset(self.legacy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def portable(self) -> TrainConfig:
        """This config with RUNTIME_FIELDS at their defaults: what a checkpoint or an export stores."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in RUNTIME_FIELDS}
        return self.replace(**defaults)

    # --- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        from hyperiqa.utils import read_text

        path = Path(path)
        try:
            text = read_text(path, "config file", ConfigError)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
        return cls.from_dict(data or {}, source=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from hyperiqa.utils import atomic_write_text

        atomic_write_text(path, self.to_yaml())

    def with_overrides(self, assignments: list[str], *, source: str = "--set") -> TrainConfig:
        """Apply `key=value` strings (values parsed as YAML scalars) strictly."""
        return TrainConfig.from_dict({**self.to_dict(), **parse_assignments(assignments, source=source)},
                                     source=source)


def parse_assignments(assignments: list[str], *, source: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source} {item!r}: expected key=value, e.g. {source} backbone_lr=1e-4")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def demo_config(**overrides) -> TrainConfig:
    """The built-in demo: a small random-init CNN on the generated demo dataset, sized for 2 CPU cores."""
    base = dict(dataset="demo", backbone="test_resnet", pretrained=False, patch_size=64, train_patches=6,
                test_patches=4, batch_size=32, backbone_lr=1e-3, lr_ratio=1.0, weight_decay=0.0, epochs=6,
                schedule="cosine", test_fraction=0.2, val_fraction=0.2, label_norm="standardize")
    return TrainConfig.from_dict({**base, **overrides}, source="demo config")


def photos_config(**overrides) -> TrainConfig:
    """The real miniature: EfficientNet-Lite0 with ImageNet weights (shipped inside a package, so
    offline) fine-tuned on the packaged real photos with the paper's optimisation shape: Adam, backbone
    LR 2e-5, head x10, weight decay 5e-4, nothing frozen, two /10 steps (here after epochs 2 and 4 of
    6; the paper: 6 and 12 of 16). Sized for 2 CPU cores: one 64 px patch per training image and
    epoch (~90 Adam steps of batch 16; its time: docs/demos.md), 2 fixed crops per evaluation image; 4 of
    the 22 photos for validation and 4 for test. Labels are standardised: L1 on raw 0-100 labels would
    spend these few steps moving the output to the labels' mean."""
    base = dict(dataset="photos", backbone="tf_efficientnet_lite0", pretrained=True, frozen_stages=0,
                patch_size=64, train_patches=1, test_patches=2, batch_size=16, backbone_lr=2e-5, lr_ratio=10.0,
                weight_decay=5e-4, epochs=6, schedule="step", step_size=2, step_factor=0.1, test_fraction=0.2,
                val_fraction=0.2, label_norm="standardize")
    return TrainConfig.from_dict({**base, **overrides}, source="photos config")


# Datasets that need no --data-root and bring their own CPU-sized configuration.
PRESETS = {"demo": demo_config, "photos": photos_config}


# --- strict type checking ---------------------------------------------------------------------

def _check(name: str, value: Any, hint: Any, meta: dict, source: str) -> Any:
    where = f"{source}: {name} = {value!r}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    expected = hint if isinstance(hint, type) else typing.get_origin(hint) or hint
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{where}: expected an integer")
    elif expected is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number")
    elif expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
    elif expected is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        value = dict(value)
    elif expected is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list")
        value = list(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: allowed values are {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            bound = f"{op} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
            raise ConfigError(f"{where}: must be {bound}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: must be <= {hi:g}")
    return value


def _close_match(key: str, fields: dict) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def field_docs() -> dict[str, str]:
    """Field name -> one-line description, for --help texts and docs/configuration.md."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(TrainConfig)}
