"""A sweep's options (`SweepOptions`, checked when built) and its plan (`SweepPlan`: everything
resolved and checked before the study opens: the teacher's depth against every layer map, one
DistillRunConfig per grid point, the task and its metric). No Optuna here."""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from pkd.config.choices import STRATEGIES, check_method_options, check_seed
from pkd.config.files import NO_EFFECT as RUN_NO_EFFECT
from pkd.config.files import build, to_dict
from pkd.config.runs import DistillRunConfig, resolve_model
from pkd.config.sections import TrainConfig
from pkd.data.loading import HOLDOUT, resolve_task
from pkd.errors import PkdError
from pkd.models.encoders import load_config, num_layers
from pkd.objectives.mapping import layer_map
from pkd.recipes.sweep.space import (
    METHOD_PARAMS,
    PARAMS,
    Param,
    check_space,
    grid_points,
    range_probes,
    search_space,
    to_config,
    varied,
)
from pkd.training.rundir import check_not_replaced, run_inputs

logger = logging.getLogger(__name__)

SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
SELECTION_SPLITS = ("dev", "holdout")
DEFAULT_HOLDOUT = 0.1
DEFAULT_TPE_TRIALS = 20
STUDY_NAME = "pkd-sweep"
JOURNAL = "study.journal"
# Settings that do not change what a trial learns: excluded from the study's identity, like
# paths, which differ between machines sharing one --storage.
# (`preset` stays in: a sweep has none, and existing studies' identities list it.)
NO_EFFECT = tuple(k for k in RUN_NO_EFFECT if k != "preset")
PATHS = ("data_dir", "train_file", "validation_file", "test_file", "student_init")
PATHS += ("dataset", "dataset_config")  # where the data comes from, as data_dir


@dataclass
class SweepOptions:
    """What `pkd sweep` was asked for; the options that need no file are checked on creation.

    Args:
        teacher: fine-tuned teacher: a model or run directory, or a Hub name.
        output: sweep directory: trials/, the study journal (default storage), reports
            (must not hold an input).
        base: nested dict with "data", "train", "distill" sections shared by every trial.
        method: ft | kd | pkd.
        strategies: PKD layer maps to search (one: fixed; default skip).
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

    Raises:
        PkdError: an option out of its range or choices, naming the option.
    """

    teacher: str
    output: str
    base: dict | None = None
    method: str = "pkd"
    strategies: list[str] = field(default_factory=list)
    student_layers: int = 3
    grid: str | None = None
    space: str | dict | None = None
    trials: int | None = None
    sampler: str | None = None
    pruner: str = "none"
    pruner_startup_trials: int = 3
    seeds: list[int] = field(default_factory=list)
    storage: str | None = None
    study_name: str = STUDY_NAME
    selection_split: str | None = None
    stale_after: float = 600.0

    def __post_init__(self) -> None:
        self.strategies = list(self.strategies or [])
        self.seeds = list(self.seeds or [])
        if self.method not in METHOD_PARAMS:
            raise PkdError(f"--method: {self.method!r} is not one of {', '.join(METHOD_PARAMS)}")
        if (self.grid is None) == (self.space is None):
            raise PkdError("--grid/--space: give exactly one (--grid paper, or --space FILE.yaml)")
        if self.grid is not None and self.grid != "paper":
            raise PkdError(f"--grid: {self.grid!r} is not a known grid; valid: paper")
        _check_choice("--pruner", self.pruner, PRUNERS)
        if self.sampler is not None:
            _check_choice("--sampler", self.sampler, SAMPLERS)
        if self.trials is not None and self.trials < 1:
            raise PkdError(f"--trials: must be >= 1, got {self.trials}")
        if self.pruner_startup_trials < 0:
            raise PkdError(
                f"--pruner-startup-trials: must be >= 0, got {self.pruner_startup_trials}"
            )
        if not 0 < self.stale_after < math.inf:  # nan too: no dead trial would be reclaimed
            raise PkdError(
                f"--stale-after: must be a finite number of seconds > 0, got {self.stale_after}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise PkdError(f"--seeds: repeated values in {self.seeds}")
        for value in self.seeds:
            check_seed("seeds", value)
        if self.strategies and self.method != "pkd":
            raise PkdError(f"--strategy: only --method pkd has a layer map, not {self.method}")
        if len(self.strategies) != len(set(self.strategies)):
            raise PkdError(f"--strategy: repeated values in {self.strategies}")
        for s in self.strategies:
            _check_choice("--strategy", s, STRATEGIES)
        if self.selection_split is not None:
            _check_choice("--selection-split", self.selection_split, SELECTION_SPLITS)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PkdError(f"{option}: {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved: the shared config values, the space, the budget and the task."""

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
        """The split that picks epochs and the best config."""
        return HOLDOUT if self.selection_split == "holdout" else self.eval_split

    def config(self, params: dict, output: Path, seed: int | None = None) -> DistillRunConfig:
        """One trial's complete config: the shared values with these parameters."""
        return trial_config(self.base, params, output, seed)

    def planned_epochs(self, params: dict) -> int:
        """How many epochs a trial with these parameters trains (started epochs count)."""
        epochs = params.get("epochs", self.base["train"].get("epochs", TrainConfig().epochs))
        return math.ceil(float(epochs))

    def identity(self) -> dict:
        """What makes two invocations the same study: the resolved settings every trial shares
        (paths, which differ between machines, and cosmetic settings aside) and the space."""
        resolved = to_dict(self.config(range_probes(self.space)[0], self.output / "trials"))
        fixed = {
            f"{section}.{k}": v
            for section in ("data", "train", "distill")
            for k, v in sorted(resolved[section].items())
            if k not in NO_EFFECT and k not in PATHS and k not in varied(self.space)
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


def trial_config(
    base: dict, params: dict, output: Path, seed: int | None = None
) -> DistillRunConfig:
    """The shared config values with a trial's parameters (and seed), writing to `output`."""
    values = copy.deepcopy(base)
    for name, value in params.items():
        section, key = PARAMS[name]
        values[section][key] = to_config(name, value)
    if seed is not None:
        values["train"]["seed"] = seed
    values["output"] = str(output)
    values["overwrite"] = True  # trial numbers are unique: a leftover dir is stale
    return build(DistillRunConfig, values, "sweep")


def plan_sweep(options: SweepOptions) -> SweepPlan:
    """Resolve and check the search space, the teacher's depth and one config per grid point
    (per range end with TPE), so that nothing a trial would refuse is found after the first
    trial; loads no model weights."""
    o = options
    space = search_space(o.method, o.grid, o.space, o.strategies)
    teacher = resolve_model(o.teacher, "teacher")
    trust = bool((o.base or {}).get("trust_remote_code"))
    n_teacher = num_layers(load_config(teacher, "teacher", trust))
    layer_map("skip", n_teacher, o.student_layers)  # 1 <= M < N
    check_space(space, o.method, n_teacher, o.student_layers)
    base, selection_split = _shared_values(o, space, teacher)

    ranges = [p.name for p in space.values() if p.is_range]
    sampler = o.sampler or ("tpe" if ranges else "grid")
    if sampler == "grid" and ranges:
        raise PkdError(
            f"--sampler grid: {', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}"
            "; give lists of values, or use --sampler tpe"
        )
    out = Path(o.output)
    if out.exists() and not out.is_dir():
        raise PkdError(f"--output: {o.output} exists and is not a directory")
    seed = int(base["train"].get("seed", TrainConfig().seed))
    points = grid_points(space, seed) if sampler == "grid" else None
    budget = _budget(o.trials, points)
    cfgs = _check_configs(base, points if points is not None else range_probes(space), out)
    check_not_replaced(out, ("trials", "best", "seeds"), run_inputs(cfgs[0]))
    spec = resolve_task(cfgs[0].data)
    return SweepPlan(
        teacher=teacher,
        output=out,
        base=base,
        space=space,
        points=points,
        sampler=sampler,
        pruner=o.pruner,
        pruner_startup_trials=o.pruner_startup_trials,
        trials=budget,
        seeds=o.seeds,
        selection_split=selection_split,
        eval_split=spec.eval_splits[0],
        metric=spec.main_metric,
        task=spec.name,
        storage=o.storage or str(out / JOURNAL),
        study_name=o.study_name,
        stale_after=o.stale_after,
        max_epochs=max(math.ceil(c.train.epochs) for c in cfgs),
    )


def _shared_values(o: SweepOptions, space: dict[str, Param], teacher: str) -> tuple[dict, str]:
    """The config values every trial shares, and the selection split they imply."""
    base = _clean_base(o.base, space)
    check_method_options(o.method, base["distill"])  # before the points name it
    base["teacher"] = teacher
    base["distill"].update(method=o.method, student_layers=o.student_layers)
    if len(o.strategies) == 1:
        base["distill"]["strategy"] = o.strategies[0]
    base["train"].setdefault("quiet", True)  # one line per trial instead of per-step bars
    fraction = base["data"].get("holdout_fraction")
    selection_split = o.selection_split or ("holdout" if fraction else "dev")
    if selection_split == "holdout":
        base["data"]["holdout_fraction"] = fraction or DEFAULT_HOLDOUT
    elif fraction:
        raise PkdError("--holdout-fraction: only with --selection-split holdout")
    return base, selection_split


def _clean_base(base: dict | None, space: dict[str, Param]) -> dict:
    """The data/train/distill sections of a config, without what the sweep sets itself."""
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


def _budget(trials: int | None, points: list[dict] | None) -> int:
    """Trials that count: --trials, at most the grid (default: the grid, or 20 for TPE)."""
    budget = len(points) if points is not None else DEFAULT_TPE_TRIALS
    if trials is None:
        return budget
    if points is not None and trials > len(points):
        logger.warning("--trials %d exceeds the %d grid points; running all", trials, budget)
    return min(trials, budget) if points is not None else trials


def _check_configs(base: dict, probes: list[dict], out: Path) -> list[DistillRunConfig]:
    """One config per grid point (or per range end): catches what the dataclasses check (e.g.
    batch size vs gradient accumulation) before anything runs."""
    cfgs = []
    for point in probes:
        try:
            cfgs.append(trial_config(base, point, out / "trials" / "check"))
        except PkdError as e:
            where = "; ".join(f"{k}={v}" for k, v in point.items())
            raise PkdError(f"{where}: {e}") from None
    return cfgs
