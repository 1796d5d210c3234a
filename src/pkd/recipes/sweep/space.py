"""The search space: parameters, the paper's grid, YAML spaces (file:line errors) and the grid's
points. Pure Python: no Optuna, no models (a Param suggests through the trial it is given)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from pkd.config.choices import STRATEGIES
from pkd.errors import PkdError
from pkd.objectives.mapping import layer_map

# parameter -> (config section, field). Everything a search space may vary.
PARAMS = {
    "lr": ("train", "lr"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "temperature": ("distill", "temperature"),
    "alpha": ("distill", "alpha"),
    "beta": ("distill", "beta"),
    "strategy": ("distill", "strategy"),
    "layer_map": ("distill", "layer_map"),
    "pt_normalize": ("distill", "pt_normalize"),
}
CATEGORICAL_ONLY = ("strategy", "layer_map", "pt_normalize")
INTEGER = ("batch_size",)
# Which parameters exist for each method: FT has no teacher terms, KD no patient loss.
METHOD_PARAMS = {
    "ft": ("lr", "epochs", "batch_size"),
    "kd": ("lr", "epochs", "batch_size", "temperature", "alpha"),
    "pkd": tuple(PARAMS),
}
# The authors' grid (SPEC §1); beta only where there is a patient loss.
PAPER_GRID = {
    "temperature": [5, 10, 20],
    "alpha": [0.2, 0.5, 0.7],
    "beta": [10, 100, 500, 1000],
    "lr": [1e-5, 2e-5, 5e-5],
}


@dataclass
class Param:
    """One hyper-parameter: a list of choices, or a range low..high (optionally log-scaled)."""

    name: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    where: str = ""  # "FILE:LINE" of its definition, for error messages

    @property
    def is_range(self) -> bool:
        return self.choices is None

    @property
    def values(self) -> list:
        """The choices, or a range's two ends."""
        return self.choices if self.choices is not None else [self.low, self.high]

    def suggest(self, trial):
        """This parameter's value for an Optuna trial (suggest_categorical/int/float)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.integer:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self):
        if self.choices is not None:
            return list(self.choices)
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


def to_config(name: str, value):
    """A parameter value as stored in Optuna -> its config value (layer maps are '2,4')."""
    if name == "layer_map":
        return [int(x) for x in str(value).split(",") if x.strip()]
    if name == "epochs" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def paper_grid(method: str) -> dict[str, Param]:
    """The authors' grid for a method: T, alpha, beta, lr (beta only for PKD)."""
    allowed = METHOD_PARAMS[method]
    return {
        name: Param(name, list(values), where="--grid paper")
        for name, values in PAPER_GRID.items()
        if name in allowed
    }


def search_space(
    method: str, grid: str | None, space: str | dict | None, strategies: list[str]
) -> dict[str, Param]:
    """The parameters a sweep varies: the paper's grid or a space (a YAML file or a dict), with
    the layer-map strategies as one more dimension when there are several."""
    if grid == "paper":
        params = paper_grid(method)
    elif isinstance(space, dict):
        params = {
            str(n): parse_param(str(n), v, "space") if not isinstance(v, Param) else v
            for n, v in space.items()
        }
        if not params:
            raise PkdError("--space: no parameters to search")
    else:
        params = load_space(str(space))
    if len(strategies) > 1:
        if "strategy" in params or "layer_map" in params:
            raise PkdError("--strategy: the search space already varies strategy/layer_map")
        params = {"strategy": Param("strategy", strategies, where="--strategy"), **params}
    return params


def load_space(path: str) -> dict[str, Param]:
    """Read a YAML search space: `name: [choices]`, `name: value` or `name: {low, high, log}`."""
    p = Path(path)
    if not p.is_file():
        raise PkdError(f"--space: {path} not found")
    text = p.read_bytes()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise PkdError(f"--space: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise PkdError(f"--space: {path} must map parameter names to choices or ranges")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return {
        str(name): parse_param(str(name), value, f"{path}:{lines.get(name, 1)}")
        for name, value in data.items()
    }


def parse_param(name: str, value, where: str) -> Param:
    """One entry of a search space: a range ({low, high, log, step}), a list or one value."""
    if name not in PARAMS:
        raise PkdError(f"{where}: unknown parameter {name!r}; valid: {', '.join(PARAMS)}")
    if isinstance(value, dict):
        return _parse_range(name, value, where)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PkdError(f"{where}: {name}: empty list of choices")
    if name == "layer_map":
        values = [_map_text(v, where) for v in values]
    elif name == "strategy":
        values = [str(v) for v in values]
    elif name == "pt_normalize":
        if any(not isinstance(v, bool) for v in values):
            raise PkdError(f"{where}: pt_normalize takes true/false, got {values}")
    else:
        values = [_number(name, v, where) for v in values]
    if len(set(map(str, values))) != len(values):
        raise PkdError(f"{where}: {name}: repeated choices in {values}")
    return Param(name, values, where=where)


def _parse_range(name: str, value: dict, where: str) -> Param:
    if name in CATEGORICAL_ONLY:
        raise PkdError(f"{where}: {name} takes a list of choices, not a range")
    unknown = set(value) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(value):
        raise PkdError(
            f"{where}: a range of {name} needs low and high (and optionally log, step); "
            f"got {sorted(value)}"
        )
    low, high = _number(name, value["low"], where), _number(name, value["high"], where)
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise PkdError(f"{where}: {name}: log must be true or false, got {log!r}")
    step = None if value.get("step") is None else _number(name, value["step"], where)
    if not low < high:
        raise PkdError(f"{where}: {name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise PkdError(f"{where}: {name}: a log range needs low > 0, got {low}")
    if log and step is not None:
        raise PkdError(f"{where}: {name}: a range cannot have both log and step")
    integer = name in INTEGER or (
        name == "epochs" and all(float(v).is_integer() for v in (low, high, step or 1))
    )
    return Param(name, None, low, high, log, step, integer, where)


def _number(name: str, value, where: str):
    if isinstance(value, str):  # YAML 1.1 reads `1e-5` as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PkdError(f"{where}: {name} takes numbers, got {value!r}")
    if name in INTEGER:
        if not float(value).is_integer():
            raise PkdError(f"{where}: {name} takes integers, got {value!r}")
        return int(value)
    return value


def _map_text(value, where: str) -> str:
    """A layer map (list of ints, or '2,4') as the text Optuna stores: '2,4'."""
    items = value if isinstance(value, list) else str(value).replace(" ", "").split(",")
    try:
        return ",".join(str(int(x)) for x in items if str(x) != "")
    except (TypeError, ValueError):
        raise PkdError(f"{where}: layer_map takes lists of layer numbers, got {value!r}") from None


def check_space(
    space: dict[str, Param], method: str, teacher_layers: int, student_layers: int
) -> None:
    """Every value of every parameter is possible for this method and these depths."""
    allowed = METHOD_PARAMS[method]
    if "strategy" in space and "layer_map" in space:
        raise PkdError(
            f"{space['layer_map'].where}: give strategy or layer_map, not both (a map overrides it)"
        )
    for p in space.values():
        if p.name not in allowed:
            raise PkdError(
                f"{p.where}: {p.name} has no effect with --method {method} "
                f"(it varies {', '.join(allowed)})"
            )
        for v in p.values:
            _check_value(p, v, teacher_layers, student_layers)


def _check_value(p: Param, v, teacher_layers: int, student_layers: int) -> None:
    bad = None
    if p.name in ("lr", "temperature", "epochs") and not v > 0:
        bad = "must be > 0"
    elif p.name == "batch_size" and not v >= 1:
        bad = "must be >= 1"
    elif p.name == "beta" and v < 0:
        bad = "must be >= 0"
    elif p.name == "alpha" and not 0 <= v <= 1:
        bad = "must be in [0, 1]"
    elif p.name == "strategy" and v not in STRATEGIES:
        bad = f"is not one of {', '.join(STRATEGIES)}"
    if bad:
        raise PkdError(f"{p.where}: {p.name} {v!r} {bad}")
    if p.name == "layer_map":
        try:
            layer_map(None, teacher_layers, student_layers, to_config("layer_map", v))
        except PkdError as e:
            reason = str(e).removeprefix("--layer-map: ")
            raise PkdError(
                f"{p.where}: layer_map [{v}] is impossible for a {teacher_layers}-layer teacher "
                f"and {student_layers}-layer student ({reason})"
            ) from None


def grid_points(space: dict[str, Param], seed: int) -> list[dict]:
    """Every combination of the choices, in a fixed shuffled order (a partial --trials budget
    then covers the grid evenly instead of varying only the last parameter)."""
    names = list(space)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(
        *(space[n].choices for n in names)
    )]  # fmt: skip
    random.Random(seed).shuffle(points)
    return points


def range_probes(space: dict[str, Param]) -> list[dict]:
    """Points that between them take every choice and both ends of every range once: the first
    value of everything, then each other value changed alone."""
    first = {n: (p.choices[0] if p.choices else p.low) for n, p in space.items()}
    probes = [first]
    for n, p in space.items():
        for v in p.choices[1:] if p.choices else [p.high]:
            probes.append({**first, n: v})
    return probes


def varied(space: dict[str, Param]) -> set[str]:
    """The config fields the space varies (a layer map overrides the strategy too)."""
    return {PARAMS[n][1] for n in space} | ({"strategy"} if "layer_map" in space else set())
