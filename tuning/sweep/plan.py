"""Turn the search flags into a validated plan before Ray starts (no Ray imports here).

Everything a user can get wrong is checked here: the space file, --set values (through TrainConfig),
the dataset (every image present), resource flags. Paths become absolute because trials do not run
in the launch folder. The plan is the experiment's record (experiment_folder.save_record) so that --resume
and `tuning/export.py` need nothing but the experiment path.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperiqa.config import TrainConfig, parse_assignments
from hyperiqa.utils import UserError, read_text
from tuning.engine import experiment_folder
from tuning.engine.experiment_folder import SEARCH
from tuning.engine.options import (
    Resources,
    absolute,
    at_least,
    base_config,
    check_dataset,
    check_name,
    finite,
    for_ray,
    stall_timeout,
    writable_storage,
)
from tuning.engine.stall import DEFAULT_STALL_TIMEOUT
from tuning.presets import (  # noqa: F401  (the defaults' names, read here too)
    DEMO_GRACE_PERIOD,
    DEMO_MAX_EPOCHS,
    PHOTOS_GRACE_PERIOD,
    PHOTOS_MAX_EPOCHS,
    PRESET_SEARCHES,
)
from tuning.sweep import crosseval
from tuning.sweep.space import SearchSpace, load_space, parse_space


@dataclass(frozen=True)
class SearchFlags:
    """The flags of a new search as tuning/search.py parsed them (None: not given); make_plan checks the rest."""

    dataset: str
    data_root: str | None
    sets: tuple[str, ...]
    space: str | None
    metric: str
    searcher: str
    seed: int
    num_samples: int | None
    max_epochs: int | None
    grace_period: int | None
    reduction_factor: float
    patience: int | None
    resources: Resources
    storage_path: str
    name: str | None
    export_dir: str | None
    keep_checkpoints: str
    tracking: dict            # tracking.plan_fields: checked, as the Plan saves them
    cross: tuple[str, ...]    # NAME=ROOT as given
    stall_timeout: float | None = None  # None: the default (tuning/engine/stall.py)


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
    gpus: float | None            # None (with --gpus auto on a joined cluster) until launch.settle_gpus
    gpus_per_trial: float | None
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
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # tuning/engine/stall.py; plans saved before it get the default

    def with_resources(self, r: Resources) -> Plan:
        """The plan on resources settled after connecting (launch.settle_gpus): every trial's device and share."""
        base = for_ray(TrainConfig.from_dict(self.base, source="the plan's base"), r).to_dict()
        return dataclasses.replace(self, base=base, gpus=r.gpus, gpus_per_trial=r.gpus_per_trial)

    @property
    def search_space(self) -> SearchSpace:
        return parse_space(self.space, source=self.space_source)

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


def make_plan(flags: SearchFlags) -> Plan:
    """Validate the flags of a new search."""
    _check_budget_flags(flags)
    storage = writable_storage(flags.storage_path)
    base = base_config(flags.dataset, flags.data_root, list(flags.sets))
    preset = PRESET_SEARCHES.get(base.dataset)
    space_file = load_space(flags.space or (preset.space if preset else "default"))
    changes = {}
    if flags.metric.startswith("test_") and "val_fraction" not in parse_assignments(list(flags.sets)):
        # The paper's protocol picks the epoch on the test split and trains on everything else: a
        # validation split nobody selects on would only take training images away.
        changes["val_fraction"] = 0.0
    max_epochs = flags.max_epochs if flags.max_epochs is not None else (preset.max_epochs if preset else base.epochs)
    patience = base.patience if flags.patience is None and base.patience else flags.patience
    if patience is None:
        patience = max(3, max_epochs // 4)
    base = for_ray(base, flags.resources, **changes, epochs=max_epochs, selection_metric=flags.metric,
                   patience=patience, seed=flags.seed)
    fields = base.to_dict()
    for i, point in enumerate(space_file.start):
        space_file.config_for(fields, point, source=f"{space_file.source}: start[{i}] with the base configuration")
    space_file.config_for(fields, {}, source=f"{space_file.source}: fixed values with the base configuration")
    default_grace = min(preset.grace_period, max_epochs) if preset else max(1, max_epochs // 8)
    grace = flags.grace_period if flags.grace_period is not None else default_grace
    _check_grace(max_epochs, grace)
    cross_sets = crosseval.parse(list(flags.cross))
    crosseval.check(cross_sets, base.cache_dir)
    check_dataset(base)  # last: for the demo and photos this generates the images
    name = check_name(flags.name or f"{base.dataset}-{Path(space_file.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    export_dir = absolute(flags.export_dir or str(Path("exports") / name))
    num_samples = flags.num_samples or (preset.num_samples if preset else 32)
    r = flags.resources
    return Plan(fields, _raw_space(space_file), space_file.source, flags.metric, flags.searcher, flags.seed,
                num_samples, max_epochs, grace, flags.reduction_factor, r.gpus, r.gpus_per_trial, r.cpus_per_trial,
                storage, name, export_dir, r.max_concurrent, cross=cross_sets,
                keep_checkpoints=_keep(flags.keep_checkpoints), stall_timeout=stall_timeout(flags.stall_timeout),
                **flags.tracking)


def _keep(policy: str) -> str:
    from tuning.engine import retention

    try:
        return retention.parse_keep(policy)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_budget_flags(flags: SearchFlags) -> None:
    """Each number as typed, before any default or the TrainConfig sees it: a 0 is refused, never read as
    "not given", and a mistake names the flag rather than the config field it becomes."""
    at_least("--max-epochs", flags.max_epochs, 1)
    at_least("--grace-period", flags.grace_period, 1)
    at_least("--num-samples", flags.num_samples, 1)
    at_least("--patience", flags.patience, 0, " (0 = never stop a trial for decline)")
    if finite("--reduction-factor", flags.reduction_factor) <= 1:
        raise UserError(f"--reduction-factor {flags.reduction_factor:g}: must be > 1 (2 keeps the better half at "
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
    return experiment_folder.load_record(experiment_path, SEARCH, Plan)


def save_plan(plan: Plan) -> None:
    experiment_folder.save_record(plan.experiment_path, SEARCH, dataclasses.asdict(plan))
