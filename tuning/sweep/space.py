"""Search spaces: YAML files under search_spaces/ turned into an Optuna define-by-run function.

Schema (every key is optional; a space without params runs its fixed configuration)::

    description: "what this space is for"
    fixed: {backbone: resnet50}          # TrainConfig values set for every trial of this space
    params:                              # TrainConfig fields to search
      backbone_lr: {type: loguniform, low: 1.0e-6, high: 1.0e-4}
      lr_ratio: {type: choice, values: [1, 3, 10, 30]}
      weight_decay: {type: loguniform, low: 1.0e-6, high: 1.0e-2}
      schedule: {type: choice, values: [step, cosine, constant, exponential]}
      step_size: {type: int, low: 2, high: 8, when: {schedule: step}}
      frozen_stages: {type: int, low: 0, high: 4}
    start:                               # points evaluated first, in order (e.g. the paper's setting)
      - {backbone_lr: 2.0e-5, lr_ratio: 10, weight_decay: 5.0e-4, schedule: step, step_size: 6, frozen_stages: 0}

Types: `uniform` and `loguniform` (floats; optional `step` for uniform), `int` (optional `log: true`,
`step`), `choice` (`values`: a list of numbers, strings or booleans). `when: {other: value}` (or
`{other: [v1, v2]}`) samples a parameter only when another parameter took one of those values (the
parameters are sampled in the file's order, moved where needed so that `other` comes first);
otherwise the base configuration's value stays. A start point may leave parameters out (they are
sampled) but may not set a conditional parameter whose condition it does not meet.

Everything is checked before Ray starts: an unknown parameter (not a TrainConfig field), an unknown
type or key, low > high, a bound <= 0 on a log scale, a `when` naming an unknown parameter (or a cycle),
bounds TrainConfig rejects, or a start point outside the space raise one SpaceError naming the file
and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hyperiqa.config import ConfigError, TrainConfig
from hyperiqa.utils import UserError, read_text

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
TYPES = ("uniform", "loguniform", "int", "choice")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "values", "when"}


class SpaceError(UserError):
    """A mistake in a search-space file; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    values: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # ((other_param, allowed values), ...)

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(other in chosen and chosen[other] in allowed for other, allowed in self.when)

    def suggest(self, trial) -> Any:
        if self.type == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step,
                                   log=self.type == "loguniform")

    def distribution(self):
        import optuna.distributions as od

        if self.type == "choice":
            return od.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return od.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return od.FloatDistribution(float(self.low), float(self.high), step=self.step,
                                    log=self.type == "loguniform")

    def contains(self, value: Any) -> bool:
        if self.type == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; calling it with an Optuna trial samples one configuration."""

    source: str
    description: str
    fixed: dict
    params: tuple[Param, ...]
    start: tuple[dict, ...]

    def __call__(self, trial) -> None:
        # Define-by-run (OptunaSearch records every suggest_* call): conditional parameters are
        # only suggested when their condition holds, so Optuna never sees meaningless values.
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.name] = param.suggest(trial)

    def distributions(self) -> dict:
        return {p.name: p.distribution() for p in self.params}

    def config_for(self, base: dict[str, Any], params: dict[str, Any], *, source: str = "trial") -> TrainConfig:
        """The base configuration (a validated TrainConfig's fields: Plan.base) with this space's fixed values
        and the sampled ones, validated once."""
        return TrainConfig.from_dict({**base, **self.fixed, **params}, source=source)


def space_path(name_or_path: str) -> Path:
    """`default` -> search_spaces/default.yaml; anything with a suffix or a slash is a path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return candidate.resolve()
    path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SpaceError(f"--space {name_or_path!r}: no such search space; built in: {', '.join(names)} "
                         "(or give a path to a .yaml file)")
    return path


def load_space(name_or_path: str) -> SearchSpace:
    path = space_path(name_or_path)
    try:
        data = yaml.safe_load(read_text(path, "search space", SpaceError))
    except OSError as exc:
        raise SpaceError(f"cannot read search space {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    return parse_space(data, source=str(path))


def parse_space(data: Any, *, source: str) -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with 'params' (and optionally description, fixed, start)")
    unknown = sorted(set(data) - {"description", "fixed", "params", "start"})
    if unknown:
        raise SpaceError(f"{source}: unknown key '{unknown[0]}'; allowed: description, fixed, params, start")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{source}: fixed: expected a mapping of TrainConfig fields")
    _check_config(fixed, f"{source}: fixed")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise SpaceError(f"{source}: params: expected a mapping of TrainConfig fields to distributions")
    params: list[Param] = []
    for name in _conditions_first(raw_params, source):
        spec = raw_params[name]
        params.append(_parse_param(str(name), spec, [p.name for p in params], f"{source}: params.{name}"))
        if name in fixed:
            raise SpaceError(f"{source}: params.{name}: also set in fixed; a value is either fixed or searched")
    start = data.get("start") or []
    if not isinstance(start, list):
        raise SpaceError(f"{source}: start: expected a list of points (mappings of parameter: value)")
    space = SearchSpace(source, str(data.get("description", "")), dict(fixed), tuple(params), tuple(start))
    for i, point in enumerate(start):
        _check_point(space, point, f"{source}: start[{i}]")
    return space


def _conditions_first(raw_params: dict, source: str) -> list:
    """The parameters' names in their given order, except that each comes after those its `when` names.
    A record whose keys were sorted (a plan.json) then reads like the file it was written from."""
    def parents(name) -> list:
        spec = raw_params[name]
        when = spec.get("when") if isinstance(spec, dict) else None
        return [p for p in when if p in raw_params and p != name] if isinstance(when, dict) else []

    ordered: list = []
    pending = list(raw_params)
    while pending:
        ready = [n for n in pending if all(p in ordered for p in parents(n))]
        if not ready:
            raise SpaceError(f"{source}: params: {', '.join(map(str, pending))}: their 'when' conditions name "
                             "each other in a cycle")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered


def _parse_param(name: str, spec: Any, earlier: list[str], where: str) -> Param:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise SpaceError(f"{where}: '{name}' is not a TrainConfig field")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected a mapping like {{type: loguniform, low: 1.0e-6, high: 1.0e-4}}")
    unknown = sorted(set(spec) - _PARAM_KEYS)
    if unknown:
        raise SpaceError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(_PARAM_KEYS))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise SpaceError(f"{where}.type: {kind!r} is not a distribution; allowed: {', '.join(TYPES)}")
    when = _parse_when(spec.get("when"), earlier, f"{where}.when")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}.values: expected a non-empty list")
        for v in values:
            _check_config({name: v}, f"{where}.values")
        return Param(name, kind, values=tuple(values), when=when)
    low, high = (_number(spec.get(k), f"{where}.{k}") for k in ("low", "high"))
    if low > high:
        raise SpaceError(f"{where}: low ({low:g}) > high ({high:g})")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if log and low <= 0:
        raise SpaceError(f"{where}.low: {low:g}; a log scale needs bounds > 0")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{where}: low and high of an int parameter must be integers")
    step = spec.get("step")
    if step is not None and (_number(step, f"{where}.step") <= 0 or (log and kind != "int")):
        raise SpaceError(f"{where}.step: must be > 0 (and cannot be combined with a log scale)")
    for bound in (low, high):
        _check_config({name: int(bound) if kind == "int" else bound}, where)
    cast = int if kind == "int" else float
    return Param(name, kind, cast(low), cast(high), log=log, step=step, when=when)


def _parse_when(when: Any, earlier: list[str], where: str) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise SpaceError(f"{where}: expected a mapping like {{schedule: step}}")
    out = []
    for other, allowed in when.items():
        if other not in earlier:
            raise SpaceError(f"{where}.{other}: not another parameter in params")
        out.append((str(other), tuple(allowed) if isinstance(allowed, list) else (allowed,)))
    return tuple(out)


def _check_point(space: SearchSpace, point: Any, where: str) -> None:
    if not isinstance(point, dict):
        raise SpaceError(f"{where}: expected a mapping of parameter: value")
    by_name = {p.name: p for p in space.params}
    chosen: dict[str, Any] = {}
    for key in point:
        if key not in by_name:
            raise SpaceError(f"{where}.{key}: not a parameter of this space ({', '.join(by_name)})")
    for param in space.params:
        if param.name not in point:
            continue
        value = point[param.name]
        if not param.active(chosen):
            cond = ", ".join(f"{k} in {list(v)}" for k, v in param.when)
            raise SpaceError(f"{where}.{param.name}: only sampled when {cond}; leave it out of this point")
        if not param.contains(value):
            allowed = list(param.values) if param.type == "choice" else f"[{param.low:g}, {param.high:g}]"
            raise SpaceError(f"{where}.{param.name}: {value!r} is outside the space ({allowed})")
        chosen[param.name] = value
    _check_config({**space.fixed, **point}, where)


def _check_config(values: dict, where: str) -> None:
    try:
        TrainConfig.from_dict({**TrainConfig().to_dict(), **values}, source=where)
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where}: expected a number, got {value!r}")
    return value
