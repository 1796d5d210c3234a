"""`pkd sweep`: the paper's hyper-parameter search (or your own search space) on Optuna.

The authors chose every reported number as the best of a grid (SPEC §1: T in {5,10,20},
alpha in {0.2,0.5,0.7}, beta in {10,100,500,1000}, lr in {1e-5,2e-5,5e-5}), run with shell
scripts. Here the grid (or a YAML search space) is an Optuna study:

1. check everything before any trial: the options, the search space (file:line errors), the
   teacher's depth against every layer map, one DistillRunConfig per grid point, and the
   teacher and data (`pkd.api.distill(dry_run=True)`);
2. open the study in `--storage` (default: a journal file inside --output, so running
   `pkd sweep` again continues it). A grid study holds every grid point as an enqueued
   trial, put there once by the process that created the study; workers pop them with
   Optuna's atomic WAITING -> RUNNING step, so several processes or machines on one storage
   never run a point twice. TPE asks Optuna for new points until `--trials` are used;
3. each trial is an ordinary `pkd.api.distill` run in OUTPUT/trials/trial-{number}; all
   share one teacher cache (same teacher, training rows and max length -> same
   fingerprint). After each epoch the selection metric is reported to the pruner, which
   may stop the trial (its run dir gets pruned.json and no metrics.json); a trial's last
   epoch is never pruned (it is trained already). A TPE proposal that repeats the
   parameters of a complete trial reuses that trial's result (0 s; it counts toward
   `--trials`): TPE over the paper's discrete grid proposes repeats;
4. a trial whose process died (SIGKILL, a lost machine) stays RUNNING in the study. On start
   a worker fails it (only one worker can: the RUNNING -> FAIL step is atomic) and that
   worker enqueues its parameters again, so the point is re-run exactly once;
5. when the study is complete: trials.csv, trials.md, summary.json, importance.png,
   history.png, best.yaml (re-runs with `pkd distill --config best.yaml`), best/ (the best
   student's run: model/, config.yaml, metrics.json) and, with --seeds, the best config
   re-run per seed (mean ± std).

Honest selection: with `--selection-split holdout` a fixed share of train is held out
(`DataConfig.holdout_fraction`); it picks both the epoch and the config, and dev is reported
for the chosen config without having chosen anything.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pkd import config as C
from pkd import report as R
from pkd.errors import PkdError
from pkd.mapping import STRATEGIES, layer_map

logger = logging.getLogger(__name__)

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
SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
SELECTION_SPLITS = ("dev", "holdout")
DEFAULT_HOLDOUT = 0.1
DEFAULT_TPE_TRIALS = 20
STUDY_NAME = "pkd-sweep"
JOURNAL = "study.journal"
HEARTBEAT_SECONDS = 30.0
# Settings that do not change what a trial learns: excluded from the study's identity, like
# paths, which differ between machines sharing one --storage.
# (`preset` stays in: a sweep has none, and existing studies' identities list it.)
NO_EFFECT = tuple(k for k in C.NO_EFFECT if k != "preset")
PATHS = ("data_dir", "train_file", "validation_file", "test_file", "student_init")

# Trial user attributes (the study is the record; run dirs may be on other machines).
POINT, RETRY_OF, SURPLUS = "pkd_point", "pkd_retry_of", "pkd_surplus"
HOST, PID, BEAT = "pkd_host", "pkd_pid", "pkd_heartbeat"
RUN_DIR, EPOCHS, ERROR = "pkd_run_dir", "pkd_epochs", "pkd_error"
WALL, SCORES, CACHE = "pkd_wall_seconds", "pkd_scores", "pkd_teacher_cache"
DUPLICATE_OF = "pkd_duplicate_of"
# Study user attributes.
IDENTITY, ENQUEUED = "pkd_sweep", "pkd_enqueued"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise PkdError(
            "pkd sweep needs Optuna: pip install optuna (or pip install 'pkd[sweep]')"
        ) from None
    return optuna


# ---------------------------------------------------------------------------------------------
# Search space


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

    def suggest(self, trial):
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
        str(name): _parse_param(str(name), value, f"{path}:{lines.get(name, 1)}")
        for name, value in data.items()
    }


def _parse_param(name: str, value, where: str) -> Param:
    if name not in PARAMS:
        raise PkdError(f"{where}: unknown parameter {name!r}; valid: {', '.join(PARAMS)}")
    if isinstance(value, dict):
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
        values = p.choices if p.choices is not None else [p.low, p.high]
        for v in values:
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


# ---------------------------------------------------------------------------------------------
# The plan: everything resolved before the study opens


@dataclass
class SweepPlan:
    teacher: str
    output: Path
    base: dict  # nested config values shared by every trial (without the parameters)
    space: dict[str, Param]
    points: list[dict] | None  # grid studies: every point, in order
    sampler: str
    pruner: str
    pruner_startup_trials: int
    trials: int  # budget: trials that count (complete, pruned, running, failed with an error)
    seeds: list[int]
    selection_split: str
    eval_split: str  # the task's dev split (dev, dev_matched)
    metric: str
    task: str
    storage: str
    study_name: str
    stale_after: float
    max_epochs: int

    @property
    def select(self) -> str:
        from pkd.api import HOLDOUT

        return HOLDOUT if self.selection_split == "holdout" else self.eval_split

    def config(self, params: dict, output: Path, seed: int | None = None) -> C.DistillRunConfig:
        values = copy.deepcopy(self.base)
        for name, value in params.items():
            section, key = PARAMS[name]
            values[section][key] = to_config(name, value)
        if seed is not None:
            values["train"]["seed"] = seed
        values["output"] = str(output)
        values["overwrite"] = True  # trial numbers are unique: a leftover dir is stale
        return C.build(C.DistillRunConfig, values, "sweep")

    def identity(self) -> dict:
        """What makes two invocations the same study: the resolved settings every trial shares
        (paths, which differ between machines, and cosmetic settings aside) and the space."""
        resolved = C.to_dict(self.config(_range_probes(self.space)[0], self.output / "trials"))
        fixed = {
            f"{section}.{k}": v
            for section in ("data", "train", "distill")
            for k, v in sorted(resolved[section].items())
            if k not in NO_EFFECT and k not in PATHS and k not in _varied(self.space)
        }
        return json.loads(
            json.dumps(
                {
                    "task": self.task,
                    "space": {n: p.describe() for n, p in self.space.items()},
                    "sampler": self.sampler,
                    "selection_split": self.selection_split,
                    "fixed": fixed,
                }
            )
        )


def _varied(space: dict[str, Param]) -> set[str]:
    return {PARAMS[n][1] for n in space} | ({"strategy"} if "layer_map" in space else set())


def _clean_base(base: dict | None, space: dict[str, Param]) -> dict:
    base = copy.deepcopy(base or {})
    for key in ("teacher", "output", "overwrite", "resume", "resume_from", "meta"):
        if base.pop(key, None) not in (None, False) and key != "meta":
            logger.warning("sweep ignores %r from the config; it uses --%s", key, key)
    unknown = set(base) - {"data", "train", "distill", "trust_remote_code"}
    if unknown:
        raise PkdError(
            f"--config: unknown option(s) {sorted(unknown)} for sweep; "
            "valid: data, train, distill, trust_remote_code"
        )
    for section in ("data", "train", "distill"):
        base[section] = dict(base.get(section) or {})
    if base["distill"].get("preset"):
        raise PkdError("--preset: a sweep searches the settings a preset would fix; drop it")
    for name, p in space.items():
        section, key = PARAMS[name]
        if key in base[section]:
            raise PkdError(
                f"--{key.replace('_', '-')}: also varied by the search space ({p.where}); "
                "give it in one place"
            )
    return base


def plan_sweep(
    teacher: str,
    output: str,
    base: dict | None = None,
    *,
    method: str = "pkd",
    strategies: list[str] | None = None,
    student_layers: int = 3,
    grid: str | None = None,
    space: str | dict | None = None,
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str = "none",
    pruner_startup_trials: int = 3,
    seeds: list[int] | None = None,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    selection_split: str | None = None,
    stale_after: float = 600.0,
) -> SweepPlan:
    """Resolve and check every option and the search space; loads no model weights."""
    from pkd.api import check_not_input, resolve_task, run_inputs
    from pkd.models import load_config, num_layers, resolve_model

    if method not in METHOD_PARAMS:
        raise PkdError(f"--method: {method!r} is not one of {', '.join(METHOD_PARAMS)}")
    if (grid is None) == (space is None):
        raise PkdError("--grid/--space: give exactly one (--grid paper, or --space FILE.yaml)")
    if grid is not None and grid != "paper":
        raise PkdError(f"--grid: {grid!r} is not a known grid; valid: paper")
    if pruner not in PRUNERS:
        raise PkdError(f"--pruner: {pruner!r} is not one of {', '.join(PRUNERS)}")
    if sampler is not None and sampler not in SAMPLERS:
        raise PkdError(f"--sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if trials is not None and trials < 1:
        raise PkdError(f"--trials: must be >= 1, got {trials}")
    if pruner_startup_trials < 0:
        raise PkdError(f"--pruner-startup-trials: must be >= 0, got {pruner_startup_trials}")
    if stale_after <= 0:
        raise PkdError(f"--stale-after: must be > 0 seconds, got {stale_after}")
    seeds = list(seeds or [])
    if len(set(seeds)) != len(seeds):
        raise PkdError(f"--seeds: repeated values in {seeds}")
    for value in seeds:
        C.check_seed("seeds", value)

    if grid == "paper":
        params = paper_grid(method)
    elif isinstance(space, dict):
        params = {
            str(n): _parse_param(str(n), v, "space") if not isinstance(v, Param) else v
            for n, v in space.items()
        }
        if not params:
            raise PkdError("--space: no parameters to search")
    else:
        params = load_space(str(space))
    strategies = list(strategies or [])
    if strategies and method != "pkd":
        raise PkdError(f"--strategy: only --method pkd has a layer map, not {method}")
    if len(strategies) != len(set(strategies)):
        raise PkdError(f"--strategy: repeated values in {strategies}")
    for s in strategies:
        if s not in STRATEGIES:
            raise PkdError(f"--strategy: {s!r} is not one of {', '.join(STRATEGIES)}")
    if len(strategies) > 1:
        if "strategy" in params or "layer_map" in params:
            raise PkdError("--strategy: the search space already varies strategy/layer_map")
        params = {"strategy": Param("strategy", strategies, where="--strategy"), **params}

    teacher = resolve_model(teacher, "teacher")
    n_teacher = num_layers(
        load_config(teacher, "teacher", bool((base or {}).get("trust_remote_code")))
    )
    layer_map("skip", n_teacher, student_layers)  # 1 <= M < N
    check_space(params, method, n_teacher, student_layers)

    base = _clean_base(base, params)
    C.check_method_options(method, base["distill"])  # before the points name it
    base["teacher"] = teacher
    base["distill"].update(method=method, student_layers=student_layers)
    if len(strategies) == 1:
        base["distill"]["strategy"] = strategies[0]
    base["train"].setdefault("quiet", True)  # one line per trial instead of per-step bars
    fraction = base["data"].get("holdout_fraction")
    if selection_split is None:
        selection_split = "holdout" if fraction else "dev"
    if selection_split not in SELECTION_SPLITS:
        raise PkdError(
            f"--selection-split: {selection_split!r} is not one of {', '.join(SELECTION_SPLITS)}"
        )
    if selection_split == "holdout":
        base["data"]["holdout_fraction"] = fraction or DEFAULT_HOLDOUT
    elif fraction:
        raise PkdError("--holdout-fraction: only with --selection-split holdout")

    ranges = [p.name for p in params.values() if p.is_range]
    sampler = sampler or ("tpe" if ranges else "grid")
    if sampler == "grid" and ranges:
        raise PkdError(
            f"--sampler grid: {', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}"
            "; give lists of values, or use --sampler tpe"
        )
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PkdError(f"--output: {output} exists and is not a directory")
    seed = int(base["train"].get("seed", C.TrainConfig().seed))
    points = grid_points(params, seed) if sampler == "grid" else None
    budget = len(points) if points is not None else DEFAULT_TPE_TRIALS
    if trials is not None:
        if points is not None and trials > len(points):
            logger.warning("--trials %d exceeds the %d grid points; running all", trials, budget)
        budget = min(trials, budget) if points is not None else trials

    plan = SweepPlan(
        teacher=teacher,
        output=out,
        base=base,
        space=params,
        points=points,
        sampler=sampler,
        pruner=pruner,
        pruner_startup_trials=pruner_startup_trials,
        trials=budget,
        seeds=seeds,
        selection_split=selection_split,
        eval_split="dev",
        metric="",
        task="",
        storage=storage or str(out / JOURNAL),
        study_name=study_name,
        stale_after=stale_after,
        max_epochs=1,
    )
    # One config per grid point (or per range end) catches what the dataclasses check
    # (e.g. batch size vs gradient accumulation) before anything runs.
    probes = points if points is not None else _range_probes(params)
    cfgs = []
    for point in probes:
        try:
            cfgs.append(plan.config(point, out / "trials" / "check"))
        except PkdError as e:
            where = "; ".join(f"{k}={v}" for k, v in point.items())
            raise PkdError(f"{where}: {e}") from None
    check_not_input(out, "--output", run_inputs(cfgs[0]))
    spec = resolve_task(cfgs[0].data)
    plan.eval_split, plan.metric, plan.task = spec.eval_splits[0], spec.main_metric, spec.name
    plan.max_epochs = max(math.ceil(c.train.epochs) for c in cfgs)
    return plan


def _range_probes(space: dict[str, Param]) -> list[dict]:
    first = {n: (p.choices[0] if p.choices else p.low) for n, p in space.items()}
    probes = [first]
    for n, p in space.items():
        for v in p.choices[1:] if p.choices else [p.high]:
            probes.append({**first, n: v})
    return probes


# ---------------------------------------------------------------------------------------------
# The study: storage, identity, grid points, stale trials


def redact(url: str) -> str:
    """A storage URL without its password, for reports and messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url: str):
    """An RDB URL (sqlite:///x.db, postgresql://...) or a journal file path."""
    optuna = _optuna()
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # bad URL, missing driver, unreachable server
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PkdError(f"--storage: cannot open {redact(url)} ({first})") from None
    from optuna.storages.journal import JournalFileBackend

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(url)))


def _sampler(plan: SweepPlan, n_existing: int):
    optuna = _optuna()
    if plan.sampler == "grid":

        class QueuedGridSampler(optuna.samplers.GridSampler):
            """GridSampler over the plan's grid; points come from the enqueued trials, and the
            sweep (not the sampler) decides when the grid is done: GridSampler.after_trial
            expects its own grid ids, which enqueued trials do not carry."""

            def after_trial(self, study, trial, state, values) -> None:
                return None

        return QueuedGridSampler({n: p.choices for n, p in plan.space.items()}, seed=0)
    # Differs per process and per invocation: workers sharing a study (and a resumed sweep)
    # must not replay the same random start-up points.
    seed = int(plan.base["train"].get("seed", 42)) * 1_000_003 + n_existing * 7919 + os.getpid()
    return optuna.samplers.TPESampler(
        seed=seed % 2**32, n_startup_trials=max(2, min(10, plan.trials // 4))
    )


def _pruner(plan: SweepPlan):
    optuna = _optuna()
    if plan.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=plan.pruner_startup_trials)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(plan.max_epochs, 1), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def open_study(plan: SweepPlan, wait_seconds: float = 120.0):
    """Create or load the study; the creator records its identity and enqueues the grid."""
    optuna = _optuna()
    storage = open_storage(plan.storage)
    pruner = _pruner(plan)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=plan.study_name,
            direction="maximize",
            sampler=_sampler(plan, 0),
            pruner=pruner,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        n = len(optuna.load_study(study_name=plan.study_name, storage=storage).trials)
        study = optuna.load_study(
            study_name=plan.study_name, storage=storage, sampler=_sampler(plan, n), pruner=pruner
        )
        created = False
    identity = plan.identity()
    if created:
        study.set_user_attr(IDENTITY, identity)
        if plan.points is not None:
            _enqueue_points(study, plan.points, range(len(plan.points)))
            study.set_user_attr(ENQUEUED, len(plan.points))
        return study
    deadline = time.monotonic() + wait_seconds
    while True:  # the creator may still be enqueueing the grid
        attrs = study.user_attrs
        ready = IDENTITY in attrs and (plan.points is None or ENQUEUED in attrs)
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if IDENTITY not in attrs:
        study.set_user_attr(IDENTITY, identity)
    elif attrs[IDENTITY] != identity:
        diffs = _diff(attrs[IDENTITY], identity)
        raise PkdError(
            f"--output: the study {plan.study_name!r} in {redact(plan.storage)} was made with other "
            f"settings ({'; '.join(diffs[:3])}); use another --output or --study-name"
        )
    if plan.points is not None and ENQUEUED not in attrs:
        # Its creator died while enqueueing: add the points it did not get to.
        have = {t.user_attrs.get(POINT) for t in study.get_trials(deepcopy=False)}
        _enqueue_points(study, plan.points, [i for i in range(len(plan.points)) if i not in have])
        study.set_user_attr(ENQUEUED, len(plan.points))
    return study


def _enqueue_points(study, points: list[dict], indices) -> None:
    for i in indices:
        study.enqueue_trial(points[i], user_attrs={POINT: i})


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old and prefix == "fixed.":  # a setting newer than the study's pkd
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial, stale_after: float, now: float | None = None) -> bool:
    """A RUNNING trial whose process is gone: dead pid on this host, or no heartbeat lately."""
    attrs = trial.user_attrs
    if attrs.get(HOST) == socket.gethostname() and attrs.get(PID):
        if attrs[PID] == os.getpid():
            return False
        if not _alive(int(attrs[PID])):
            return True
    last = attrs.get(BEAT) or (trial.datetime_start.timestamp() if trial.datetime_start else None)
    return last is not None and (now or time.time()) - last > stale_after


def recover_stale(
    study, stale_after: float, points: list[dict] | None = None
) -> list[tuple[int, int]]:
    """Fail stale RUNNING trials and enqueue their parameters again: [(failed, retry)].

    Several workers may find the same stale trial; the storage lets exactly one of them move
    it from RUNNING to FAIL (the others get UpdateFinishedTrialError), and only that one
    enqueues the retry, so the point is run again exactly once.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after):
            continue
        try:
            # Optuna's own fail_stale_trials does this through the storage as well.
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        user = {RETRY_OF: t.number}
        params = dict(t.params)  # may be incomplete if it died at once
        if POINT in t.user_attrs:
            user[POINT] = t.user_attrs[POINT]
            if points is not None:
                params = points[t.user_attrs[POINT]]
        study.enqueue_trial(params, user_attrs=user)
        retry = next(
            x.number
            for x in reversed(study.get_trials(deepcopy=False))
            if x.user_attrs.get(RETRY_OF) == t.number
        )
        run_dir = t.user_attrs.get(RUN_DIR)
        if run_dir and Path(run_dir).is_dir():
            _mark(
                Path(run_dir),
                "failed.json",
                {"trial": t.number, "error": "process died", "retry": retry},
            )
        logger.warning(
            "trial %d: its process died; failed it, retrying as trial %d", t.number, retry
        )
        done.append((t.number, retry))
    return done


def _mark(run_dir: Path, name: str, data: dict) -> None:
    """pruned.json / failed.json: the run dir says how it ended (metrics.json: finished)."""
    R.write_json(run_dir / name, data)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _counts_toward_budget(t, retried: set[int]) -> bool:
    from optuna.trial import TrialState

    if t.user_attrs.get(SURPLUS):
        return False
    if t.state == TrialState.FAIL:
        return t.number not in retried
    return t.state != TrialState.WAITING


def _retried(trials) -> set[int]:
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


# ---------------------------------------------------------------------------------------------
# One trial


class _Surplus(Exception):
    """A trial asked for after the budget was used up (a race between workers): not run."""


class _Heartbeat:
    """Records a timestamp on the trial every HEARTBEAT_SECONDS, so other machines can tell a
    running trial from one whose process died."""

    def __init__(self, trial, interval: float = HEARTBEAT_SECONDS):
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(self.interval):
            try:
                self.trial.set_user_attr(BEAT, time.time())
            except Exception:  # the trial ended meanwhile, or the storage is unreachable
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _finished_twin(trials, params: dict):
    """The first complete trial with exactly these parameters, if any."""
    for t in trials:
        if t.state.name == "COMPLETE" and t.params == params and SCORES in t.user_attrs:
            return t
    return None


def _reuse(trial, twin) -> float:
    """Record `twin`'s result as this trial's (a repeated proposal is not trained again)."""
    trial.set_user_attr(DUPLICATE_OF, twin.number)
    for key in (EPOCHS, SCORES, RUN_DIR):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr(WALL, 0.0)
    return twin.value


def _objective(plan: SweepPlan, study):
    optuna = _optuna()
    from pkd import api

    def objective(trial) -> float:
        trials = study.get_trials(deepcopy=False)
        retried = _retried(trials)
        before = [t for t in trials if t.number < trial.number]
        used = sum(_counts_toward_budget(t, retried) for t in before)
        fresh = POINT not in trial.user_attrs and RETRY_OF not in trial.user_attrs
        if (plan.points is not None and fresh) or (fresh and used >= plan.trials):
            trial.set_user_attr(SURPLUS, True)
            raise _Surplus(f"trial {trial.number}: nothing left to run")
        params = {name: p.suggest(trial) for name, p in plan.space.items()}
        same = _finished_twin(before, params)
        if same is not None:
            return _reuse(trial, same)
        run_dir = plan.output / "trials" / f"trial-{trial.number}"
        for key, value in (
            (HOST, socket.gethostname()),
            (PID, os.getpid()),
            (BEAT, time.time()),
            (RUN_DIR, str(run_dir.resolve())),
        ):
            trial.set_user_attr(key, value)
        cfg = plan.config(params, run_dir)
        last_epoch = _planned_epochs(plan, params)
        epochs: list[dict] = []

        def on_evaluate(step: int, epoch: int, metrics: dict) -> None:
            row = {"epoch": len(epochs) + 1, "step": step}
            row.update({split: m[plan.metric] for split, m in metrics.items()})
            epochs.append(row)
            trial.set_user_attr(EPOCHS, [dict(e) for e in epochs])
            trial.report(row[plan.select], len(epochs))
            if len(epochs) < last_epoch and trial.should_prune():
                raise optuna.TrialPruned(
                    f"{plan.metric} on {plan.select} {row[plan.select]:.4f} after epoch {len(epochs)}"
                )

        t0 = time.perf_counter()
        try:
            with _Heartbeat(trial):
                metrics = api.distill(cfg, on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            trial.set_user_attr(WALL, round(time.perf_counter() - t0, 2))
            _mark(
                run_dir, "pruned.json", {"trial": trial.number, "params": params, "epochs": epochs}
            )
            raise
        except KeyboardInterrupt:
            # Interrupted, not wrong: queue the point again (only this process can, it owns
            # the trial), then let Optuna record the trial as FAIL and stop.
            user = {
                RETRY_OF: trial.number,
                **({POINT: trial.user_attrs[POINT]} if POINT in trial.user_attrs else {}),
            }
            study.enqueue_trial(params, user_attrs=user)
            raise
        except Exception as e:
            message = (str(e).splitlines() or [type(e).__name__])[0]
            trial.set_user_attr(ERROR, f"{type(e).__name__}: {message}")
            trial.set_user_attr(WALL, round(time.perf_counter() - t0, 2))
            if run_dir.is_dir():
                _mark(run_dir, "failed.json", {"trial": trial.number, "error": message})
            raise
        best = metrics["best"]["metrics"]
        trial.set_user_attr(SCORES, {split: m[plan.metric] for split, m in best.items()})
        trial.set_user_attr(WALL, round(time.perf_counter() - t0, 2))
        cache = metrics.get("teacher_cache") or {}
        if cache:
            trial.set_user_attr(
                CACHE,
                {
                    "reused": cache.get("reused"),
                    "build_seconds": cache.get("build_seconds"),
                    "path": cache.get("path"),
                },
            )
        return best[plan.select][plan.metric]

    return objective


# ---------------------------------------------------------------------------------------------
# sweep


def sweep(
    teacher: str,
    output: str,
    base: dict | None = None,
    *,
    method: str = "pkd",
    strategies: list[str] | None = None,
    student_layers: int = 3,
    grid: str | None = None,
    space: str | dict | None = None,
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str = "none",
    pruner_startup_trials: int = 3,
    seeds: list[int] | None = None,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    selection_split: str | None = None,
    stale_after: float = 600.0,
    dry_run: bool = False,
    quiet: bool = False,
) -> dict:
    """Run (or continue, or join) a hyper-parameter sweep of `pkd distill` on Optuna.

    Args:
        teacher: fine-tuned teacher: a model or run directory, or a Hub name.
        output: sweep directory: trials/, the study journal (default storage), reports
            (must not hold an input).
        base: nested dict with "data", "train", "distill" sections shared by every trial.
        method: ft | kd | pkd. strategies: PKD layer maps to search (one: fixed).
        student_layers: student depth M.
        grid: "paper" for the authors' grid. space: a YAML file (or a dict) instead.
        trials: trial budget (default: the whole grid; 20 for TPE).
        sampler: grid | tpe (default: grid when every parameter is a list).
        pruner: none | median | hyperband, on the per-epoch selection metric;
            pruner_startup_trials: finished trials before the median pruner prunes.
        seeds: re-run the best config with these seeds (mean ± std).
        storage: Optuna storage: RDB URL or journal file (default OUTPUT/study.journal).
        study_name: the study's name in the storage.
        selection_split: dev (the paper's) | holdout (data.holdout_fraction of train, 0.1 by
            default); picks epochs and the best config.
        stale_after: seconds without a heartbeat after which another machine's RUNNING
            trial counts as dead (on this host a dead process id is enough).
        dry_run: check everything and describe the study; train nothing.
        quiet: no progress bar or per-trial lines.

    Returns:
        summary.json's content plus "markdown" (trials.md).

    Raises:
        PkdError: bad options or search space, a teacher or data that does not load, a
            study in the storage made with other settings.
    """
    from pkd import api

    optuna = _optuna()
    plan = plan_sweep(
        teacher,
        output,
        base,
        method=method,
        strategies=strategies,
        student_layers=student_layers,
        grid=grid,
        space=space,
        trials=trials,
        sampler=sampler,
        pruner=pruner,
        pruner_startup_trials=pruner_startup_trials,
        seeds=seeds,
        storage=storage,
        study_name=study_name,
        selection_split=selection_split,
        stale_after=stale_after,
    )
    first = plan.config(
        plan.points[0] if plan.points else _range_probes(plan.space)[0],
        plan.output / "trials" / "check",
    )
    checked = api.distill(first, dry_run=True)  # teacher, data, labels, teacher strength
    if dry_run:
        return _describe(plan, checked)

    with _quiet_logs(optuna):
        plan.output.mkdir(parents=True, exist_ok=True)
        if plan.selection_split == "holdout":
            _record_holdout(plan, first)
        study = open_study(plan)
        t0 = time.perf_counter()
        ran = _work(study, plan, quiet)
        result = finish(study, plan, checked, quiet)
    result["wall_seconds"]["this_invocation"] = round(time.perf_counter() - t0, 2)
    result["trials_run_here"] = ran
    R.write_json(plan.output / "summary.json", {k: v for k, v in result.items() if k != "markdown"})
    return result


@contextlib.contextmanager
def _quiet_logs(optuna):
    """One line per trial from the sweep instead of Optuna's and the training loop's logs."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # pkd.api's warnings (a weak teacher, a collapsed student) were shown by the up-front
    # check, or show in the trial's line (its per-epoch metric): not repeated per trial.
    loud = {"pkd.train": logging.WARNING, "pkd.cache": logging.WARNING, "pkd.api": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in loud}
    for name, level in loud.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _record_holdout(plan: SweepPlan, cfg: C.DistillRunConfig) -> None:
    from pkd.api import HOLDOUT, HOLDOUT_SEED, load_splits

    _, splits = load_splits(cfg.data, ["train"])
    held = splits[HOLDOUT]
    R.write_json(
        plan.output / "holdout.json",
        {
            "fraction": cfg.data.holdout_fraction,
            "seed": HOLDOUT_SEED,
            "examples": len(held),
            "train_examples": len(splits["train"]),
            "ids": held.ids,
        },
    )


def _work(study, plan: SweepPlan, quiet: bool) -> int:
    """Run trials until the budget is used (or the grid is done); returns how many ran here."""
    optuna = _optuna()
    from optuna.trial import TrialState

    from pkd.progress import progress

    objective = _objective(plan, study)
    catch = (Exception,)  # a failed trial is recorded (state FAIL, pkd_error) and the sweep goes on
    bar = progress(plan.trials, "sweep", "trial", quiet)
    ran = errors = 0
    while True:
        recover_stale(study, plan.stale_after, plan.points)
        trials = study.get_trials(deepcopy=False)
        retried = _retried(trials)
        used = sum(_counts_toward_budget(t, retried) for t in trials)
        finished = sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (
                t.state == TrialState.FAIL
                and t.number not in retried
                and not t.user_attrs.get(SURPLUS)
            )
            for t in trials
        )
        bar.n = min(finished, plan.trials)
        bar.refresh()
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if used >= plan.trials or (plan.points is not None and not waiting):
            break
        done: list = []  # the trial optimize() ran, from its callback
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=catch,
                callbacks=[lambda _study, trial, done=done: done.append(trial)],
            )
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:
            # Another worker failed this trial as stale (its heartbeat was late): go on.
            logger.warning("a trial was ended by another worker: %s", e)
            continue
        if not done or done[0].user_attrs.get(SURPLUS):
            continue
        t = done[0]
        ran += 1
        if not quiet:
            bar.write(_trial_line(t, plan), file=sys.stderr)
        if t.state == TrialState.FAIL:
            errors += 1
            ok = any(
                x.state in (TrialState.COMPLETE, TrialState.PRUNED)
                for x in study.get_trials(deepcopy=False)
            )
            if not ok and errors >= 2:
                raise PkdError(
                    f"sweep: the first trials all failed (last: trial {t.number}: "
                    f"{t.user_attrs.get(ERROR, 'unknown error')}); fix that and re-run"
                )
        _free_memory()
    bar.close()
    return ran


def _free_memory() -> None:
    """Give the last trial's GPU memory back (on the CPU, Python's own gc is enough: a full
    collection costs ~0.4 s with torch and transformers loaded)."""
    import torch

    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_line(t, plan: SweepPlan) -> str:
    epochs = t.user_attrs.get(EPOCHS) or []
    curve = ", ".join(R.pct(e.get(plan.select)) for e in epochs)
    value = R.pct(t.value) if t.value is not None and t.state.name == "COMPLETE" else "-"
    extra = f" ({t.user_attrs[ERROR]})" if ERROR in t.user_attrs else ""
    return (
        f"trial {t.number:>3} {t.state.name.lower():<8} {plan.metric} on {plan.select} {value}"
        f" [epochs: {curve}] {_fmt_params(t.params)} {t.user_attrs.get(WALL, 0):.1f}s{extra}"
    )


# ---------------------------------------------------------------------------------------------
# Reports


def trial_rows(study, plan: SweepPlan) -> list[dict]:
    """One row per trial that ran or runs (surplus trials, never run, are left out)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    rows = []
    for t in trials:
        if t.user_attrs.get(SURPLUS) or t.state.name == "WAITING":
            continue
        epochs = t.user_attrs.get(EPOCHS) or []
        scores = t.user_attrs.get(SCORES) or {}
        cache = t.user_attrs.get(CACHE) or {}
        state = t.state.name.lower()
        if t.state.name == "FAIL" and t.number in retried:
            state = "fail (retried)"
        row = {
            "trial": t.number,
            "state": state,
            **{n: t.params.get(n) for n in plan.space},
            "value": t.value if t.state.name == "COMPLETE" else None,
            "dev": scores.get(plan.eval_split),
            "holdout": scores.get("holdout"),
            "epochs_run": len(epochs),
            f"{plan.eval_split}_by_epoch": ";".join(
                f"{e[plan.eval_split]:.4f}" for e in epochs if plan.eval_split in e
            ),
            "holdout_by_epoch": ";".join(f"{e['holdout']:.4f}" for e in epochs if "holdout" in e),
            "last": epochs[-1].get(plan.select) if epochs else None,
            "wall_seconds": t.user_attrs.get(WALL),
            "teacher_cache": None if not cache else ("reused" if cache.get("reused") else "built"),
            "cache_build_seconds": cache.get("build_seconds"),
            "retry_of": t.user_attrs.get(RETRY_OF),
            "duplicate_of": t.user_attrs.get(DUPLICATE_OF),
            "host": t.user_attrs.get(HOST),
            "run_dir": t.user_attrs.get(RUN_DIR),
            "error": t.user_attrs.get(ERROR),
            "params": dict(t.params),
            "curve": epochs,  # per-epoch metrics ("epochs" may be a parameter)
        }
        rows.append(row)
    return rows


def best_row(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    return max(done, key=lambda r: (r["value"], -r["trial"])) if done else None


def finish(study, plan: SweepPlan, checked: dict, quiet: bool = False) -> dict:
    """Write the reports; when the study is complete, best.yaml, best/ and the seed re-runs."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    pending = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    used = sum(_counts_toward_budget(t, retried) for t in trials)
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    complete = not running and (used >= plan.trials or (plan.points is not None and not waiting))
    rows = trial_rows(study, plan)
    best = best_row(rows)
    out = plan.output
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary: dict[str, Any] = {
        "task": plan.task,
        "metric": plan.metric,
        "selection_split": plan.select,
        "eval_split": plan.eval_split,
        "method": plan.base["distill"]["method"],
        "student_layers": plan.base["distill"]["student_layers"],
        "space": {n: p.describe() for n, p in plan.space.items()},
        "sampler": plan.sampler,
        "pruner": plan.pruner,
        "storage": redact(plan.storage),
        "study_name": plan.study_name,
        "trials_budget": plan.trials,
        "grid_points": len(plan.points) if plan.points is not None else None,
        "counts": counts,
        "complete": complete,
        "pending": pending,
        "teacher": {"path": plan.teacher, "metrics": checked.get("teacher", {}).get("dev")},
        "best": None,
        "seeds": None,
        "wall_seconds": _wall(rows, plan),
    }
    if best is not None:
        summary["best"] = {
            "trial": best["trial"],
            "params": best["params"],
            plan.select: best["value"],
            plan.eval_split: best["dev"],
            "holdout": best["holdout"],
            "run_dir": best["run_dir"],
        }
    if complete and best is not None:
        with _exclusive(out / ".finish.lock") as mine:
            if mine:
                summary["best"].update(_write_best(plan, best))
                if plan.seeds:
                    summary["seeds"] = _run_seeds(plan, best, quiet)
            else:
                logger.warning("another process is writing best/ and the seed runs; skipped here")
    columns = ["trial", "state", *plan.space, "value", "dev", "holdout", "epochs_run",
               f"{plan.eval_split}_by_epoch", "holdout_by_epoch", "wall_seconds",
               "teacher_cache", "retry_of", "duplicate_of", "host", "run_dir",
               "error"]  # fmt: skip
    if plan.selection_split != "holdout":
        columns = [c for c in columns if not c.startswith("holdout")]
    R.write_csv(out / "trials.csv", rows, columns)
    summary["markdown"] = to_markdown(summary, rows, plan)
    R.write_text(out / "trials.md", summary["markdown"])
    importance = _importances(study, plan)
    summary["importance"] = importance
    if rows:
        importance_plot(rows, plan, importance, out / "importance.png")
        history_plot(rows, plan, out / "history.png")
    if not complete and not quiet:
        print(
            f"sweep: {len(running)} trial(s) still running elsewhere, {len(waiting)} waiting; "
            "run `pkd sweep` again (same options) for the final report",
            file=sys.stderr,
        )
    return summary


def _wall(rows: list[dict], plan: SweepPlan) -> dict:
    """Time spent, and saved by pruning (estimated from complete trials) and the shared cache."""
    # repeated proposals (wall 0 s) are left out by the wall-time test
    done = [r for r in rows if r["state"] == "complete" and r["wall_seconds"] and r["epochs_run"]]
    per_epoch = sum(r["wall_seconds"] / r["epochs_run"] for r in done) / len(done) if done else None
    planned = {r["trial"]: _planned_epochs(plan, r["params"]) for r in rows}
    pruned = [r for r in rows if r["state"] == "pruned"]
    saved_pruning = (
        sum(max(0, planned[r["trial"]] - r["epochs_run"]) for r in pruned) * per_epoch
        if per_epoch
        else 0.0
    )
    builds = [r for r in rows if r["teacher_cache"] == "built"]
    reuses = [r for r in rows if r["teacher_cache"] == "reused"]
    build_s = sum(r["cache_build_seconds"] or 0 for r in builds)
    one_build = (
        build_s / len(builds)
        if builds
        else max([r["cache_build_seconds"] or 0 for r in reuses], default=0.0)
    )
    return {
        "trials": round(sum(r["wall_seconds"] or 0 for r in rows), 2),
        "cache_builds": len(builds),
        "cache_build": round(build_s, 2),
        "saved_by_shared_cache": round(one_build * len(reuses), 2),
        "saved_by_pruning_estimate": round(saved_pruning, 2),
    }


def _planned_epochs(plan: SweepPlan, params: dict) -> int:
    epochs = params.get("epochs", plan.base["train"].get("epochs", C.TrainConfig().epochs))
    return math.ceil(float(epochs))


@contextlib.contextmanager
def _exclusive(path: Path):
    """A lock file (host, pid); one left by a dead process on this host is taken over."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
            except (OSError, ValueError):
                host, pid = "", "0"
            if host == socket.gethostname() and not _alive(int(pid)):
                path.unlink(missing_ok=True)
                continue
            yield False
            return
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}")
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


def _write_best(plan: SweepPlan, best: dict) -> dict:
    """best.yaml (a full DistillRunConfig writing to OUTPUT/best-rerun) and best/ (a copy)."""
    out = plan.output
    cfg = plan.config(best["params"], out / "best-rerun")
    # A re-run of its own: it refuses to overwrite, and shows progress (trials run quietly).
    cfg = dataclasses.replace(
        cfg, overwrite=False, train=dataclasses.replace(cfg.train, quiet=False)
    )
    C.save(cfg, out / "best.yaml", meta={"sweep_trial": best["trial"], "study": plan.study_name})
    info = {"config": str(out / "best.yaml"), "model": None}
    src = Path(best["run_dir"] or "")
    if (src / "metrics.json").is_file():
        dst = out / "best"
        tmp = out / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copytree(src / "model", tmp / "model")
        for name in ("config.yaml", "metrics.json"):
            shutil.copy2(src / name, tmp / name)
        R.write_json(tmp / "sweep_trial.json", {"trial": best["trial"], "params": best["params"]})
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        info["model"] = str(dst / "model")
    else:
        logger.warning(
            "the best trial's run %s is not on this machine (host %s); best/ not written",
            best["run_dir"],
            best["host"],
        )
    return info


def _run_seeds(plan: SweepPlan, best: dict, quiet: bool) -> dict:
    """The best config re-run once per seed (finished runs are reused)."""
    from pkd import api

    runs = []
    for seed in plan.seeds:
        path = plan.output / "seeds" / f"trial-{best['trial']}-seed{seed}"
        if not R.is_finished(path):
            if not quiet:
                print(f"seed {seed}: re-running trial {best['trial']}'s config", file=sys.stderr)
            api.distill(plan.config(best["params"], path, seed=seed))
        m = R.read_metrics(path)["best"]["metrics"]
        runs.append(
            {
                "seed": seed,
                plan.eval_split: m[plan.eval_split][plan.metric],
                "holdout": m.get("holdout", {}).get(plan.metric),
                "path": str(path),
            }
        )
    out = {"runs": runs}
    for key in (plan.eval_split, "holdout"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[f"{key}_mean"], out[f"{key}_std"] = R.mean_std(values)
    return out


def _importances(study, plan: SweepPlan) -> dict[str, float]:
    """Optuna's importance of each varied parameter (its default evaluator; empty with fewer
    than 3 complete trials)."""
    import warnings

    optuna = _optuna()
    varied = [n for n, p in plan.space.items() if p.is_range or len(p.choices) > 1]
    try:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 3 or not varied:
            return {}
        with warnings.catch_warnings():  # e.g. "importances will be equal" on tiny studies
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, params=varied))
    except Exception as e:  # e.g. a parameter that never varied among complete trials
        logger.info("parameter importance not computed: %s", e)
        return {}


def to_markdown(summary: dict, rows: list[dict], plan: SweepPlan) -> str:
    metric, select, dev = plan.metric, plan.select, plan.eval_split
    lines = [
        f"# pkd sweep: {plan.task}, {summary['method']} -> {summary['student_layers']} layers",
        "",
        f"Study {plan.study_name!r} in {redact(plan.storage)}; sampler {plan.sampler}, pruner "
        f"{plan.pruner}; {metric} in %, selection on **{select}**"
        + (" (a fixed share of train, see holdout.json)" if select == "holdout" else "")
        + ".",
        "",
        "States: "
        + ", ".join(f"{n} {k}" for k, n in sorted(summary["counts"].items()))
        + f" (budget {plan.trials}"
        + (f", grid of {summary['grid_points']}" if summary["grid_points"] else "")
        + ")"
        + (
            ""
            if summary["complete"]
            else f"; **not complete**, pending trials {summary['pending']}"
        ),
        "",
    ]
    best = summary.get("best")
    if best:
        lines += ["## Best configuration", ""]
        lines.append(f"Trial {best['trial']}: {_fmt_params(best['params'])}.")
        if select == "holdout":
            lines.append(
                f"{metric} on holdout (selected on) {R.pct(best['holdout'])}; on {dev} "
                f"{R.pct(best[dev])} (not used for any choice)."
            )
        else:
            lines.append(
                f"{metric} on {dev} {R.pct(best[dev])} (selected on {dev}, as the paper: "
                "optimistic; use --selection-split holdout for an unbiased dev score)."
            )
        if best.get("config"):
            lines.append(
                f"Re-run: `pkd distill --config {best['config']}`; model: {best.get('model')}."
            )
        lines.append("")
    seeds = summary.get("seeds")
    if seeds:
        lines += ["## Best configuration over seeds", ""]
        headers = ["seed", f"{dev} (%)"] + (["holdout (%)"] if select == "holdout" else [])
        table = [
            [r["seed"], R.pct(r[dev])] + ([R.pct(r["holdout"])] if select == "holdout" else [])
            for r in seeds["runs"]
        ]
        table.append(
            ["mean ± std", R.pm(seeds[f"{dev}_mean"], seeds[f"{dev}_std"])]
            + ([R.pm(seeds["holdout_mean"], seeds["holdout_std"])] if select == "holdout" else [])
        )
        lines += [R.markdown_table(headers, table)]
    lines += ["## Trials", ""]
    headers = ["trial", "state", *plan.space, f"{select} (%)"]
    if select == "holdout":
        headers.append(f"{dev} (%)")
    headers += [f"{dev} per epoch (%)"]
    if select == "holdout":
        headers.append("holdout per epoch (%)")
    headers += ["wall (s)", "cache"]
    table = []
    for r in rows:
        sel = r["value"] if r["state"] == "complete" else r["last"]
        row = [
            r["trial"],
            r["state"]
            + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
            + (f" (= trial {r['duplicate_of']})" if r["duplicate_of"] is not None else ""),
        ]
        row += [r["params"].get(n) for n in plan.space]
        row.append(R.pct(sel) if sel is not None else "-")
        if select == "holdout":
            row.append(R.pct(r["dev"]) if r["dev"] is not None else "-")
        row.append(", ".join(R.pct(e.get(dev)) for e in r["curve"]))
        if select == "holdout":
            row.append(", ".join(R.pct(e.get("holdout")) for e in r["curve"]))
        row += [r["wall_seconds"], r["teacher_cache"]]
        table.append(row)
    lines += [R.markdown_table(headers, table)]
    w = summary["wall_seconds"]
    lines += [
        "## Wall time (seconds)",
        "",
        R.markdown_table(
            ["what", "seconds"],
            [
                ["all trials", w["trials"]],
                [f"teacher cache, {w['cache_builds']} build(s)", w["cache_build"]],
                [
                    "saved by the shared cache (one build per reusing trial)",
                    w["saved_by_shared_cache"],
                ],
                [
                    "saved by pruning (skipped epochs x mean epoch time)",
                    w["saved_by_pruning_estimate"],
                ],
            ],
        ),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas, never pyplot)


def _figure(n_panels: int, width: float = 4.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, max(1, n_panels))
    rows = math.ceil(max(1, n_panels) / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, n_panels))]
    return fig, axes


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def importance_plot(rows: list[dict], plan: SweepPlan, importance: dict, path: Path) -> None:
    """The selection metric against each hyper-parameter (pruned: last epoch's value, x)."""
    names = list(plan.space)
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names, strict=False):
        p = plan.space[name]
        categorical = p.choices is not None and (
            name in CATEGORICAL_ONLY or not all(isinstance(v, (int, float)) for v in p.choices)
        )
        for state, marker, color in (("complete", "o", "C0"), ("pruned", "x", "grey")):
            pts = [
                (r["params"].get(name), r["value"] if state == "complete" else r["last"])
                for r in rows
                if r["state"] == state and r["params"].get(name) is not None
            ]
            pts = [(x, y) for x, y in pts if y is not None]
            if not pts:
                continue
            xs = [p.choices.index(x) if categorical else x for x, _ in pts]
            ax.scatter(
                xs, [100 * y for _, y in pts], marker=marker, color=color, label=state, alpha=0.8
            )
        if categorical:
            ax.set_xticks(range(len(p.choices)))
            ax.set_xticklabels([str(c) for c in p.choices])
        elif (
            p.log
            or name in ("lr", "beta")
            and min(_numeric(p)) > 0
            and max(_numeric(p)) / min(_numeric(p)) >= 50
        ):
            ax.set_xscale("log")
        title = name + (f" (importance {importance[name]:.2f})" if name in importance else "")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(name)
        ax.set_ylabel(f"{plan.metric} on {plan.select} (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(fig, path)


def _numeric(p: Param) -> list[float]:
    values = p.choices if p.choices is not None else [p.low, p.high]
    return [float(v) for v in values]


def history_plot(rows: list[dict], plan: SweepPlan, path: Path) -> None:
    """Left: each trial's value by trial number and the best so far. Right: per-epoch curves."""
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = _figure(2, width=5.0, height=3.6)
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] == "complete" and r["value"] is not None:
            left.scatter(r["trial"], 100 * r["value"], color="C0", marker="o")
            best = r["value"] if best is None else max(best, r["value"])
        elif r["state"] == "pruned" and r["last"] is not None:
            left.scatter(r["trial"], 100 * r["last"], color="grey", marker="x")
        if best is not None:
            xs.append(r["trial"])
            ys.append(100 * best)
    left.step(xs, ys, where="post", color="C1", label="best so far")
    left.set_xlabel("trial")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel(f"{plan.metric} on {plan.select} (%)")
    left.set_title("trials (x: pruned)", fontsize="medium")
    left.grid(True, alpha=0.3)
    left.legend(fontsize="small")
    for r in rows:
        values = [e.get(plan.select) for e in r["curve"]]
        if not values:
            continue
        pruned = r["state"] == "pruned"
        right.plot(
            range(1, len(values) + 1),
            [100 * v for v in values],
            color="grey" if pruned else "C0",
            linestyle="--" if pruned else "-",
            marker="o",
            alpha=0.6,
        )
    right.set_xlabel("epoch")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel(f"{plan.metric} on {plan.select} (%)")
    right.set_title("per-epoch curves (dashed: pruned)", fontsize="medium")
    right.grid(True, alpha=0.3)
    _save(fig, path)


def _describe(plan: SweepPlan, checked: dict) -> dict:
    n = len(plan.points) if plan.points is not None else None
    lines = [
        f"# pkd sweep (dry run): {plan.task}, {plan.base['distill']['method']} -> "
        f"{plan.base['distill']['student_layers']} layers",
        "",
        f"Teacher {plan.teacher}: {checked['teacher']['dev']}.",
        f"Sampler {plan.sampler}"
        + (f" over {n} grid points" if n else "")
        + f", budget {plan.trials} "
        f"trials, pruner {plan.pruner}, selection on {plan.select}; storage {redact(plan.storage)} "
        f"(study {plan.study_name!r}).",
        "",
        R.markdown_table(
            ["parameter", "values"], [[k, p.describe()] for k, p in plan.space.items()]
        ),
    ]
    from pkd.dryrun import sweep_lines  # map, loss, cache and timed estimate of a trial

    lines += sweep_lines(checked, plan.trials)
    return {
        "dry_run": True,
        "plan": {k: checked.get(k) for k in ("layer_map", "loss", "teacher_cache", "estimate")},
        "space": {k: p.describe() for k, p in plan.space.items()},
        "grid_points": n,
        "trials": plan.trials,
        "storage": redact(plan.storage),
        "selection_split": plan.select,
        "markdown": "\n".join(lines),
    }
