"""Run configs as YAML: build one from nested dicts (a `--config` file, options), merge,
save it as config.yaml, and compare a saved one with a new one (`config_drift`).

Precedence: dataclass defaults < `--config FILE.yaml` < command-line options.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from pkd.config.choices import is_datasets_object
from pkd.config.sections import (
    DataConfig,
    DistillConfig,
    PretrainConfig,
    TextConfig,
    TrainConfig,
)
from pkd.errors import PkdError
from pkd.fsio import atomic_write

# Settings that cannot change what a run learns: a resumed or reused run may differ in these.
NO_EFFECT = ("quiet", "logging_steps", "keep_checkpoints", "save_steps", "save_total_limit")
NO_EFFECT += ("eval_batch_size", "cache_dir", "allow_weak_teacher")
NO_EFFECT += ("preset", "preset_source")  # the values a preset sets are compared themselves
NO_EFFECT += ("report_to",)  # where the scalars go, not what is learnt
NOT_SETTINGS = ("output", "overwrite", "resume", "resume_from", "trust_remote_code", "meta")


SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
    "text": TextConfig,
    "pretrain": PretrainConfig,
}


def _coerce(name: str, type_name: str, value, source: str):
    """A YAML value as its field's type, or a PkdError naming the option.

    YAML 1.1 reads `lr: 1e-5` as the string '1e-5' (no dot), so numbers given as text are
    parsed here; anything else of the wrong type (`epochs: four`) is an error, not a crash.
    """
    flag = "--" + name.rsplit(".", 1)[-1].replace("_", "-")
    kind = type_name.split("|")[0].strip()

    def bad(expected: str) -> PkdError:
        return PkdError(f"{source}: {name} ({flag}) expects {expected}, got {value!r}")

    if value is None:
        if "None" in type_name:
            return None
        raise bad("a value")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("a number")
        try:
            number = float(value)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("text")
        return str(value)
    if kind.startswith("list["):
        item = kind[5:-1]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            items = [items]
        items = [x.strip() if isinstance(x, str) else x for x in items]
        return [_coerce(name, item, x, source) for x in items if x != ""]
    return value


def build(cls, values: dict[str, Any], source: str = "config"):
    """Build a run config from a nested dict, rejecting unknown keys by name."""
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key == "meta":  # provenance written by save(); not an option
            continue
        if key not in names:
            raise PkdError(f"{source}: unknown option {key!r}; valid: {', '.join(names)}")
        if key in SECTIONS:
            value = {} if value is None else value  # an empty `train:` section in YAML
            if not isinstance(value, dict):
                raise PkdError(f"{source}: section {key!r} must be a mapping of options")
            sub = SECTIONS[key]
            subfields = {f.name: f for f in dataclasses.fields(sub)}
            unknown = set(value) - set(subfields)
            if unknown:
                raise PkdError(f"{source}: unknown option(s) {sorted(unknown)} in section {key!r}")
            value = {
                k: _coerce(f"{key}.{k}", str(subfields[k].type), v, source)
                for k, v in value.items()
            }
            # Only what the section's factory sets differently from the dataclass (distill's
            # lr 5e-5): defaults resolved from other options (data.max_length from the task)
            # must resolve again here, not be copied from a default instance.
            plain = dataclasses.asdict(sub())
            base = {
                k: v
                for k, v in dataclasses.asdict(names[key].default_factory()).items()
                if v != plain[k]
            }
            kwargs[key] = sub(**{**base, **value})
        else:
            kwargs[key] = _coerce(key, str(names[key].type), value, source)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise PkdError(f"{source}: {e}") from None


def load_yaml(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        raise PkdError(f"--config: {path} is a directory, not a YAML file")
    if not p.is_file():
        raise PkdError(f"--config: {path} not found")
    try:
        data = yaml.safe_load(p.read_bytes()) or {}  # bytes: bad encodings are YAMLErrors
    except yaml.YAMLError as e:
        raise PkdError(f"--config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PkdError(f"--config: {path} must hold a mapping of options")
    for key in SECTIONS:  # checked here: merge() would let command-line options hide it
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise PkdError(f"{path}: section {key!r} must be a mapping of options")
    return data


def merge(base: dict, override: dict) -> dict:
    """Nested dict merge: values in override win."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe_data(value):
    """A value of a config as YAML can hold it: an in-memory `datasets` object as a
    description of its rows (config.yaml records what was read; it cannot re-read it)."""
    if isinstance(value, list):
        return [describe_data(v) for v in value]
    if not is_datasets_object(value):
        return copy.deepcopy(value)
    if isinstance(value, dict):
        rows = ", ".join(f"{name} {len(split)}" for name, split in value.items())
        return f"<in-memory DatasetDict: {rows} rows>"
    return f"<in-memory {type(value).__name__}: {len(value)} rows>"


def to_dict(cfg) -> dict:
    """A config as nested dicts of plain values (`describe_data`), as config.yaml holds it."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else describe_data(value)
    return out


def config_drift(saved: dict, new: dict) -> list[str]:
    """`section.option: old -> new` for each setting that differs between two run configs.

    Both are nested dicts as `to_dict` makes them (`saved`: a run's config.yaml). Settings
    that cannot change what a run learns (NO_EFFECT) and paths of the run itself
    (NOT_SETTINGS) are left out; existing paths are compared resolved.
    """

    def norm(value):
        if isinstance(value, str) and value and Path(value).exists():
            return str(Path(value).resolve())
        return value

    diffs = []
    for key, value in new.items():
        if key in NOT_SETTINGS:
            continue
        if not isinstance(value, dict):
            if norm(saved.get(key)) != norm(value):
                diffs.append(f"{key}: {saved.get(key)!r} -> {value!r}")
            continue
        old_section = saved.get(key) or {}
        for name, v in value.items():
            old = old_section.get(name)
            if name not in NO_EFFECT and norm(old) != norm(v):
                diffs.append(f"{key}.{name}: {old!r} -> {v!r}")
    return diffs


def save(cfg, path: Path, meta: dict | None = None) -> None:
    """Write the resolved config (plus provenance under `meta`) as YAML."""
    data = to_dict(cfg)
    if meta:
        data["meta"] = meta
    atomic_write(path, yaml.safe_dump(data, sort_keys=False))
