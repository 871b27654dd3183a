"""Turn the search flags into a validated plan before Ray starts (no Ray imports here).

Everything a user can get wrong is checked here: the space file, --set values (through TrainConfig),
the dataset (every image present), resource flags. Paths become absolute because trials do not run
in the launch folder. The plan is saved beside the experiment (SEARCH_FILE) so that --resume and
`tuning/export.py` need nothing but the experiment path.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperiqa.config import TrainConfig, parse_assignments
from hyperiqa.utils import UserError, read_text
from tuning.engine import tracking
from tuning.engine.options import (
    absolute,
    at_least,
    base_config,
    check_dataset,
    check_name,
    finite,
    for_ray,
    read_experiment_file,
    resources,
    writable_storage,
    write_experiment_file,
)
from tuning.presets import (  # noqa: F401  (the defaults' names, read here too)
    DEMO_GRACE_PERIOD,
    DEMO_MAX_EPOCHS,
    PHOTOS_GRACE_PERIOD,
    PHOTOS_MAX_EPOCHS,
    PRESET_SEARCHES,
)
from tuning.sweep import crosseval
from tuning.sweep.space import SearchSpace, load_space, parse_space

SEARCH_FILE = "hyperiqa_search.json"
@dataclass(frozen=True)
class Plan:
    base: dict            # TrainConfig.to_dict() every trial starts from (before the space's fixed/sampled values)
    space: dict           # the parsed YAML, so a resumed/re-exported experiment needs no space file
    space_source: str
    metric: str
    searcher: str
    seed: int
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    gpus: float
    gpus_per_trial: float
    cpus_per_trial: float
    storage_path: str     # absolute local folder or a URI (s3://, gs://, ...)
    name: str
    export_dir: str
    max_concurrent: int | None = None  # None: as many trials at once as the resources allow
    # tracking and integrations (tuning/engine/tracking.py, tuning/sweep/crosseval.py); plans saved before them load with these
    log_to: list = field(default_factory=list)   # tensorboard, mlflow, wandb
    mlflow_uri: str | None = None
    wandb_project: str | None = None
    optuna_storage: str | None = None
    cross: list = field(default_factory=list)    # [[dataset name, absolute root], ...]
    keep_checkpoints: str = "all"  # tuning/engine/retention.py; plans saved before it kept everything, and still do

    @property
    def base_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.base, source="search base configuration")

    @property
    def search_space(self) -> SearchSpace:
        return parse_space(self.space, source=self.space_source)

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def to_json(self) -> str:  # unsorted: the space's parameters keep their order (their sampling order)
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Plan:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{source}: not a search description written by tuning/search.py ({exc})") from None


def make_plan(args) -> Plan:
    """Validate the flags of a new search (args: the argparse namespace of tuning/search.py)."""
    _check_budget_flags(args)
    storage = writable_storage(args.storage_path)
    base = base_config(args)
    preset = PRESET_SEARCHES.get(base.dataset)
    space_file = load_space(args.space or (preset.space if preset else "default"))
    if args.metric.startswith("test_") and "val_fraction" not in parse_assignments(args.set or []):
        # The paper's protocol picks the epoch on the test split and trains on everything else: a
        # validation split nobody selects on would only take training images away.
        base = base.replace(val_fraction=0.0)
    max_epochs = args.max_epochs if args.max_epochs is not None else (preset.max_epochs if preset else base.epochs)
    patience = base.patience if args.patience is None and base.patience else args.patience
    if patience is None:
        patience = max(3, max_epochs // 4)
    gpus, gpus_per_trial, cpus_per_trial = resources(args)
    base = for_ray(base.replace(epochs=max_epochs, selection_metric=args.metric, patience=patience, seed=args.seed),
                   gpus_per_trial, cpus_per_trial)
    for i, point in enumerate(space_file.start):
        space_file.config_for(base, point, source=f"{space_file.source}: start[{i}] with the base configuration")
    space_file.config_for(base, {}, source=f"{space_file.source}: fixed values with the base configuration")
    default_grace = min(preset.grace_period, max_epochs) if preset else max(1, max_epochs // 8)
    grace = args.grace_period if args.grace_period is not None else default_grace
    _check_grace(max_epochs, grace)
    tracked = tracking.plan_fields(args)
    cross_sets = crosseval.parse(args.cross)
    crosseval.check(cross_sets, base.cache_dir)
    check_dataset(base)  # last: for the demo and photos this generates the images
    name = check_name(args.name or f"{base.dataset}-{Path(space_file.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    export_dir = absolute(args.export_dir or str(Path("exports") / name))
    num_samples = args.num_samples or (preset.num_samples if preset else 32)
    raw_space = _raw_space(space_file)
    return Plan(base.to_dict(), raw_space, space_file.source, args.metric, args.searcher, args.seed, num_samples,
                max_epochs, grace, args.reduction_factor, gpus, gpus_per_trial, cpus_per_trial, storage, name,
                export_dir, args.max_concurrent, cross=cross_sets, keep_checkpoints=_keep(args), **tracked)


def _keep(args) -> str:
    from tuning.engine import retention

    try:
        return retention.parse_keep(getattr(args, "keep_checkpoints", None) or retention.DEFAULT_KEEP)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_budget_flags(args) -> None:
    """Each number as typed, before any default or the TrainConfig sees it: a 0 is refused, never read as
    "not given", and a mistake names the flag rather than the config field it becomes."""
    at_least("--max-epochs", args.max_epochs, 1)
    at_least("--grace-period", args.grace_period, 1)
    at_least("--num-samples", args.num_samples, 1)
    at_least("--patience", args.patience, 0, " (0 = never stop a trial for decline)")
    if finite("--reduction-factor", args.reduction_factor) <= 1:
        raise UserError(f"--reduction-factor {args.reduction_factor:g}: must be > 1 (2 keeps the better half at "
                        "each rung)")


def _check_grace(max_epochs: int, grace: int) -> None:
    if grace > max_epochs:
        raise UserError(f"--grace-period {grace}: must be between 1 and --max-epochs ({max_epochs})")


def _raw_space(space: SearchSpace) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(read_text(space.source, "search space"))


def describe_defaults() -> dict[str, str]:
    """Help texts for flags whose default depends on the dataset."""
    def each(field: str) -> str:
        return ", ".join(f"{getattr(p, field)} for {name}" for name, p in PRESET_SEARCHES.items())

    return {"space": f"search_spaces/<dataset>.yaml for {' and '.join(PRESET_SEARCHES)}, default otherwise",
            "num_samples": f"{each('num_samples')}, 32 otherwise",
            "max_epochs": f"{each('max_epochs')}, else the base configuration's epochs (16 unless --set)",
            "grace_period": f"{each('grace_period')}, else max(1, max_epochs // 8)",
            "patience": "the base configuration's patience if set (--set patience=N), else max(3, max_epochs // 4)"}


def load_plan(experiment_path: str) -> Plan:
    text = read_experiment_file(experiment_path, SEARCH_FILE, written_by="tuning/search.py")
    return Plan.from_json(text, source=f"{experiment_path}/{SEARCH_FILE}")


def save_plan(plan: Plan) -> None:
    write_experiment_file(plan.experiment_path, SEARCH_FILE, plan.to_json())
