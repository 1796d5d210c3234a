"""`pkd compare`'s plan: the students it trains (one `Run` per depth x method x seed, each a
checked DistillRunConfig with its run directory's status), and the dry run's description of
them (layer map, loss, teacher cache and timed estimate per depth and method).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from pkd.config.choices import check_seed
from pkd.config.files import build, merge, to_dict
from pkd.config.files import config_drift as settings_drift
from pkd.config.presets import apply
from pkd.config.runs import DistillRunConfig, for_method
from pkd.deploy import report as R
from pkd.errors import PkdError
from pkd.models.results import RunResult
from pkd.objectives.mapping import layer_map
from pkd.recipes.distill import plan_distill
from pkd.recipes.dryrun import human_bytes, human_seconds

logger = logging.getLogger("pkd.recipes.compare")


METHODS = {
    "ft": ("ft", "skip"),
    "kd": ("kd", "skip"),
    "pkd-skip": ("pkd", "skip"),
    "pkd-last": ("pkd", "last"),
}
SET_BY_COMPARE = ("method", "strategy", "student_layers", "layer_map")  # from --methods etc.
IGNORED_TOP_LEVEL = ("teacher", "output", "overwrite", "meta")  # e.g. a saved config.yaml


@dataclass
class Run:
    name: str
    layers: int
    method: str
    seed: int
    path: Path
    cfg: DistillRunConfig
    status: str  # train | reuse (finished) | replace (unfinished, overwritten)


# ---------------------------------------------------------------------------------------------
# Planning and up-front checks


@dataclass
class StudentGrid:
    """The students `compare` trains: one run per depth x method x seed."""

    student_layers: list[int]
    methods: list[str]  # from METHODS
    seeds: list[int]

    def __post_init__(self):
        if not self.methods:
            raise PkdError(f"--methods: give at least one of {', '.join(METHODS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PkdError(f"--methods: unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
        for option, values in (
            ("methods", self.methods),
            ("seeds", self.seeds),
            ("student-layers", self.student_layers),
        ):
            if not values:
                raise PkdError(f"--{option}: give at least one value")
            if len(set(values)) != len(values):
                raise PkdError(f"--{option}: repeated values in {values}")
        for seed in self.seeds:
            check_seed("seeds", seed)


def _clean_base(base: dict) -> dict:
    """The shared data/train/distill sections; settings compare decides itself are dropped."""
    base = dict(base or {})
    for key in IGNORED_TOP_LEVEL:
        if key in base and key != "meta":
            logger.warning("compare ignores %r from the config; it uses --%s", key, key)
        base.pop(key, None)
    unknown = set(base) - {"data", "train", "distill", "trust_remote_code"}
    if unknown:
        raise PkdError(
            f"--config: unknown option(s) {sorted(unknown)} for compare; "
            "valid: data, train, distill, trust_remote_code"
        )
    distill = dict(base.get("distill") or {})
    for key in SET_BY_COMPARE:
        if distill.pop(key, None) is not None:
            logger.warning(
                "compare ignores distill.%s from the config; --methods/--student-layers set it", key
            )
    base["distill"] = distill
    return base


def plan_runs(
    teacher: str, output: str, base: dict, grid: StudentGrid, options: dict | None = None
) -> list[Run]:
    """One validated DistillRunConfig per depth x method x seed, with its run dir's status.

    With `distill.preset`, each run gets the authors' values for its task, method and depth:
    base < preset < options (the command-line options, which override the preset).
    """
    base = _clean_base(base)
    options = {k: v for k, v in (options or {}).items() if k in ("data", "train", "distill")}
    options.setdefault("distill", {})
    warned: set = set()  # one preset message per method and depth, not per seed
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PkdError(f"--output: {output} exists and is not a directory")
    runs = []
    for layers in grid.student_layers:
        for method in grid.methods:
            for seed in grid.seeds:
                name = R.run_name(layers, method, seed)
                path = out / "runs" / name
                finished = RunResult.exists(path)
                unfinished = path.exists() and not finished
                kind, strategy = METHODS[method]
                shared = for_method(base, kind)  # alpha/beta, a transfer set: where they act
                values = {
                    "teacher": teacher,
                    "output": str(path),
                    "overwrite": unfinished,
                    "trust_remote_code": bool(base.get("trust_remote_code", False)),
                    "data": dict(shared.get("data") or {}),
                    "train": {**(base.get("train") or {}), "seed": seed},
                    "distill": {
                        **shared["distill"],
                        "method": kind,
                        "strategy": strategy,
                        "student_layers": layers,
                    },
                }
                own = {"method": kind, "strategy": strategy, "student_layers": layers}
                forced = {"train": {"seed": seed}, "distill": own}
                given = for_method(options, kind)
                values = apply(values, merge(given, forced), warned)
                cfg = build(DistillRunConfig, values, "compare")
                status = "reuse" if finished else ("replace" if unfinished else "train")
                runs.append(Run(name, layers, method, seed, path, cfg, status))
    return runs


def config_drift(run: Run) -> list[str]:
    """Settings in which a finished run's config.yaml differs from the one compare would use."""
    path = run.path / "config.yaml"
    if not path.is_file():
        logger.warning("%s has no config.yaml; reusing it unchecked", run.path)
        return []
    return settings_drift(yaml.safe_load(path.read_text()) or {}, to_dict(run.cfg))


@dataclass
class Checked:
    spec: object
    teacher_layers: int
    teacher_eval: dict  # split -> metrics


def describe(runs: list[Run], teacher: str, checked: Checked, timed: bool = True) -> dict:
    spec = checked.spec
    split = spec.eval_splits[0]
    t_value = checked.teacher_eval[split][spec.main_metric]
    table = R.markdown_table(
        ["run", "layers", "method", "seed", "status", "directory"],
        [[r.name, r.layers, r.method, r.seed, r.status, str(r.path)] for r in runs],
    )
    todo = sum(r.status != "reuse" for r in runs)
    markdown = (
        f"# pkd compare (dry run): {spec.name}\n\n"
        f"Teacher: {teacher} ({checked.teacher_layers} layers), {spec.main_metric} on {split}: "
        f"{R.pct(t_value)}.\n{len(runs)} runs, {todo} to train, {len(runs) - todo} finished.\n\n"
        + table
    )
    plans = describe_compare(runs, checked) if timed else None
    if plans:
        markdown += "\n" + plans["markdown"]
    return {
        "plans": plans,
        "dry_run": True,
        "task": spec.name,
        "teacher": {
            "path": teacher,
            "layers": checked.teacher_layers,
            "metrics": checked.teacher_eval,
        },
        "runs": [
            {
                "name": r.name,
                "layers": r.layers,
                "method": r.method,
                "seed": r.seed,
                "status": r.status,
                "path": str(r.path),
            }
            for r in runs
        ],
        "markdown": markdown,
    }


def _preset_label(preset: dict | None) -> str:
    if not preset:
        return "-"
    source = preset["source"] or ""
    return "none (defaults)" if source.startswith("none") else source.rsplit("/", 1)[-1]


def describe_compare(runs, checked) -> dict:
    """Per depth x method of a `compare` grid: layer map, loss, cache and a timed estimate.

    One plan (teacher, data, student) per student depth, reusing the teacher scores that
    `compare.validate` measured; each method's steps are timed on it.
    """
    plans, groups = {}, {}
    for run in runs:
        key = (run.layers, run.method)
        if key in groups:
            continue
        if run.layers not in plans:
            plans[run.layers] = plan_distill(run.cfg, teacher_metrics=checked.teacher_eval)
        d = run.cfg.distill
        pairs = layer_map(d.strategy, checked.teacher_layers, d.student_layers, d.layer_map)
        plan = dataclasses.replace(plans[run.layers], cfg=run.cfg, pairs=pairs)
        groups[key] = plan.summary()
    cache = next((g["teacher_cache"] for g in groups.values() if g["teacher_cache"]["bytes"]), None)
    todo = [r for r in runs if r.status != "reuse"]
    students = sum(
        groups[(r.layers, r.method)]["estimate"]["seconds"]["train"]
        + groups[(r.layers, r.method)]["estimate"]["seconds"]["evaluation"]
        for r in todo
    )
    builds = (
        cache is not None
        and not cache["exists"]
        and any(groups[(r.layers, r.method)]["estimate"]["seconds"]["teacher_cache"] for r in todo)
    )
    cache_s = (
        max(g["estimate"]["seconds"]["teacher_cache"] for g in groups.values()) if builds else 0.0
    )
    rows = []
    for (layers, method), g in groups.items():
        e = g["estimate"]
        rows.append(
            [
                layers,
                method,
                " ".join(f"{a}->{b}" for a, b in g["layer_map"]) or "-",
                g["loss"]["formula"],
                _preset_label(g["preset"]),
                human_seconds(e["seconds"]["train"] + e["seconds"]["evaluation"]),
            ]
        )
    lines = [
        "## Plan per depth and method",
        "",
        R.markdown_table(
            ["layers", "method", "teacher->student map", "loss", "preset", "time per run"], rows
        ),
    ]
    if cache:
        state = "exists, reused" if cache["exists"] else "to build"
        lines.append(
            f"Teacher cache: {human_bytes(cache['bytes'])} on disk at {cache['path']} ({state})."
        )
    else:
        lines.append("Teacher cache: not needed.")
    first = next(iter(groups.values()))["estimate"]
    lines.append(
        f"Estimate: about {human_seconds(students + cache_s)} for {len(todo)} runs "
        f"(teacher cache {human_seconds(cache_s)}; benchmark not included), from {first['from']}."
    )
    return {
        "groups": [
            {
                "layers": k[0],
                "method": k[1],
                **{x: g[x] for x in ("layer_map", "loss", "estimate", "preset")},
            }
            for k, g in groups.items()
        ],
        "teacher_cache": cache,
        "estimate_seconds": round(students + cache_s, 1),
        "markdown": "\n".join(lines),
    }
