"""`pkd compare`: the paper's comparison in one command.

Teacher vs FT / KD / PKD-Skip / PKD-Last students at one or more depths and seeds:

1. check everything up front (methods, depths against the teacher, the student init, the
   data, finished runs' settings) and score the teacher on the dev split(s);
2. run each student with `pkd.recipes.distill.distill` into `OUTPUT/runs/L{layers}-{method}-seed{seed}`;
   all runs share one teacher cache (same teacher, data and max length -> same fingerprint),
   built by the first run that needs it. A run dir with metrics.json is finished and reused;
   an unfinished one is replaced;
3. evaluate every saved model on the dev split(s) and benchmark it against the teacher on
   identical inputs (`pkd.deploy.bench`);
4. write results.json, results.md, results.csv (via `pkd.deploy.report`) and pareto.png.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pkd.config.choices import check_seed
from pkd.config.files import build, merge, to_dict
from pkd.config.files import config_drift as settings_drift
from pkd.config.presets import apply
from pkd.config.runs import DistillRunConfig, for_method, inference_data, resolve_model
from pkd.data.loading import check_label_sets, load_splits, majority_baselines, resolve_task
from pkd.deploy import report as R
from pkd.deploy.bench import benchmark, check_bench_options, describe_device
from pkd.errors import PkdError
from pkd.fsio import atomic_write, write_json
from pkd.models.card import write_model_card
from pkd.models.encoders import (
    load_config,
    load_finetuned,
    model_labels,
    num_layers,
    token_positions,
)
from pkd.models.students import student_init
from pkd.objectives.mapping import layer_map
from pkd.recipes.distill import check_teacher_strength, distill, plan_distill, teacher_task
from pkd.recipes.dryrun import describe_distill, human_bytes, human_seconds
from pkd.recipes.inference import evaluate
from pkd.tasks import readable_labels
from pkd.training.rundir import check_not_replaced, read_run_config, run_inputs, run_lock

logger = logging.getLogger(__name__)

# compare's method name -> (DistillConfig.method, DistillConfig.strategy)
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
                finished = R.is_finished(path)
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


def validate(runs: list[Run], teacher: str, bench_seq_length: int | None = None) -> Checked:
    """Everything that can fail before the first run: teacher, depths, init, data, old runs."""
    cfg = runs[0].cfg
    trust = cfg.trust_remote_code
    model = load_finetuned(teacher, "teacher", trust)
    n = num_layers(model.config)
    positions = token_positions(model.config)
    if bench_seq_length and positions and bench_seq_length > positions:
        raise PkdError(
            f"--bench-seq-length: {bench_seq_length} exceeds the teacher's {positions} positions"
        )
    for run in runs:
        layer_map(run.cfg.distill.strategy, n, run.layers)  # 1 <= M < N for every method
    init = student_init(cfg.teacher, model.config, cfg.distill.student_init)
    init_layers = num_layers(load_config(init, "student-init", trust))
    deepest = max(r.layers for r in runs)
    if deepest > init_layers:
        raise PkdError(f"--student-layers: {deepest} > the {init_layers} layers of {init}")
    labels = readable_labels(model_labels(model))
    spec = resolve_task(cfg.data)
    spec, splits = load_splits(
        cfg.data, ["train", *spec.eval_splits], labels if spec.source == "custom" else ()
    )
    check_label_sets(spec, splits)
    spec = teacher_task(spec, model, teacher)
    for run in runs:
        if run.status == "reuse":
            diffs = config_drift(run)
            if diffs:
                raise PkdError(
                    f"--output: {run.path} was trained with other settings ({'; '.join(diffs[:3])}); "
                    "use another --output or delete that run"
                )
    del model
    teacher_eval = evaluate_model(teacher, cfg, spec)
    main = {s: {spec.main_metric: m[spec.main_metric]} for s, m in teacher_eval.items()}
    check_teacher_strength(
        spec, main, majority_baselines(spec, splits), cfg.distill.allow_weak_teacher
    )
    return Checked(spec, n, teacher_eval)


def evaluate_model(model_dir: str | Path, cfg: DistillRunConfig, spec) -> dict:
    out = {}
    for split in spec.eval_splits:
        m = evaluate(str(model_dir), inference_data(cfg.data), split, cfg.train.eval_batch_size)
        out[split] = {k: v for k, v in m.items() if k not in ("task", "split", "source")}
    return out


# ---------------------------------------------------------------------------------------------
# compare


def compare(
    teacher: str,
    output: str,
    base: dict,
    student_layers: list[int],
    methods: list[str],
    seeds: list[int],
    bench_batch_size: int = 32,
    bench_seq_length: int = 128,
    dry_run: bool = False,
    bench_warmup: int = 3,
    bench_iterations: int = 10,
    bench_threads: int | None = None,
    options: dict | None = None,
) -> dict:
    """Train (or reuse) every student, evaluate and benchmark all models, write the tables.

    Args:
        teacher: fine-tuned teacher: a model or run directory, or a Hub name.
        output: directory for runs/ and the results files (must not hold an input).
        base: nested dict with optional "data", "train", "distill" sections shared by all runs.
        student_layers, methods, seeds: the grid; methods from ft, kd, pkd-skip, pkd-last.
        bench_batch_size, bench_seq_length, bench_warmup, bench_iterations, bench_threads:
            the benchmark setting (threads: torch's default when None).
        dry_run: check everything and list the runs; train nothing, write nothing.
        options: data/train/distill values that override a `distill.preset` (the command
            line's options; `base` is below the preset).

    Returns:
        results.json's content plus "markdown" (results.md); with dry_run, the plan.

    Raises:
        PkdError: unknown methods, impossible depths, a teacher or data that does not load,
            a finished run trained with other settings.
    """
    t0 = time.perf_counter()
    teacher = resolve_model(teacher, "teacher")
    runs = plan_runs(teacher, output, base, StudentGrid(student_layers, methods, seeds), options)
    check_not_replaced(Path(output), ("runs",), run_inputs(runs[0].cfg))
    _check_bench(bench_batch_size, bench_seq_length, bench_threads, bench_warmup, bench_iterations)
    checked = validate(runs, teacher, bench_seq_length)
    if dry_run:
        return _describe(runs, teacher, checked)
    with run_lock(output):  # no other run writes there meanwhile
        wall = {"validate": round(time.perf_counter() - t0, 2), **_train_students(runs)}
        t = time.perf_counter()
        evals = {
            run.name: evaluate_model(run.path / "model", run.cfg, checked.spec) for run in runs
        }
        wall["evaluation"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        bench = benchmark(
            [teacher] + [str(run.path) for run in runs],
            [bench_batch_size],
            [bench_seq_length],
            bench_threads,
            "torch",
            str(output),
            bench_warmup,
            bench_iterations,
        )
        wall["benchmark"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        result = _results(runs, teacher, checked, evals, bench, methods)
        wall["report"] = round(time.perf_counter() - t, 2)
        wall["total"] = round(time.perf_counter() - t0, 2)
        result["wall_seconds"] = wall
        result["markdown"] = to_markdown(result)
        _write_results(Path(output), result, checked.spec, student_layers)
        write_cards(runs, result)
        return result


def write_cards(runs: list[Run], result: dict) -> None:
    """Each student's model card again, now with the speed measured here; the best student's
    card says it is the best (`pkd.models.card`)."""
    bench = result["benchmark"]
    setting = (
        f"batch {bench['settings']['batch_sizes'][0]} x {bench['settings']['seq_lengths'][0]} "
        f"tokens on {describe_device(bench['device'])}"
    )
    students = result["rows"][1:]  # in the order of runs
    best = max(range(len(students)), key=lambda i: students[i]["metric"])
    for i, (run, row) in enumerate(zip(runs, students, strict=True)):
        speed = {k: row[k] for k in ("speedup", "throughput", "latency_ms_p50")}
        note = None
        if i == best:
            note = (
                f"The best of the {len(runs)} students of `pkd compare` on {result['task']} "
                f"({result['metric']} {row['metric']:.4f} on {result['split']})."
            )
        write_model_card(
            run.path / "model",
            read_run_config(run.path),
            R.read_metrics(run.path),
            "distill",
            speed={**speed, "setting": setting},
            note=note,
        )


def _check_bench(
    batch_size: int, seq_length: int, threads: int | None, warmup: int, iterations: int
) -> None:
    """compare's --bench-* options: one batch size and one sequence length, both >= 1."""
    for option, value in (("bench-batch-size", batch_size), ("bench-seq-length", seq_length)):
        if value < 1:
            raise PkdError(f"--{option}: must be >= 1, got {value}")
    check_bench_options([batch_size], [seq_length], threads, "torch", warmup, iterations)


def _train_students(runs: list[Run]) -> dict:
    """Train every run not already finished, in order; the wall time of each (teacher cache
    apart) and of the teacher cache builds."""
    wall = {"teacher_cache": 0.0, "students": {}}
    for i, run in enumerate(runs, 1):
        if run.status == "reuse":
            logger.info("[%d/%d] %s: finished, reused", i, len(runs), run.name)
            wall["students"][run.name] = {"reused": True, "seconds": 0.0}
            continue
        logger.info("[%d/%d] %s: %s", i, len(runs), run.name, run.status)
        t = time.perf_counter()
        m = distill(run.cfg)
        took = time.perf_counter() - t
        cache = m["wall_seconds"]["teacher_cache"]
        wall["teacher_cache"] += cache
        wall["students"][run.name] = {
            "reused": False,
            "seconds": round(took - cache, 2),
            "train": m["wall_seconds"]["train"],
            "teacher_cache": cache,
        }
    wall["teacher_cache"] = round(wall["teacher_cache"], 2)
    return wall


def _write_results(out: Path, result: dict, spec, student_layers: list[int]) -> None:
    """results.json, results.md, results.csv and pareto.png in `out`."""
    write_json(out / "results.json", {k: v for k, v in result.items() if k != "markdown"})
    atomic_write(out / "results.md", result["markdown"])
    atomic_write(out / "results.csv", R.to_csv(result["rows"], CSV_COLUMNS))
    setting = result["benchmark"]["settings"]
    R.pareto_plot(
        [
            {"label": r["name"], "group": r["method"], "x": r["throughput"], "y": 100 * r["metric"]}
            for r in result["rows"]
        ],
        out / "pareto.png",
        f"throughput (examples/s, batch {setting['batch_sizes'][0]} x "
        f"{setting['seq_lengths'][0]} tokens, CPU)",
        f"{spec.main_metric} on {spec.eval_splits[0]} (%)",
        f"{spec.name}: teacher vs {'/'.join(map(str, student_layers))}-layer students",
    )


CSV_COLUMNS = [
    "name",
    "role",
    "layers",
    "method",
    "seed",
    "metric",
    "fraction_of_teacher",
    "params_total",
    "params_transformer_layers",
    "size_mb",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput",
    "speedup",
    "share_kd",
    "share_pt",
    "reused",
    "path",
]


def shares(recorded: dict) -> dict:
    """A run's mean gradient shares of the KD and PT terms (None where it has no such term)."""
    got = recorded.get("gradient_shares") or {}
    return {"share_kd": got.get("kd"), "share_pt": got.get("pt")}


def _results(runs, teacher, checked: Checked, evals, bench, methods) -> dict:
    spec = checked.spec
    split, metric = spec.eval_splits[0], spec.main_metric
    # One benchmark setting: results[i] belongs to the i-th model (teacher first).
    timed = bench["results"]
    sizes = bench["models"]

    def speed(i: int) -> dict:
        r, m = timed[i], sizes[i]
        return {
            "params_total": m["parameters"]["total"],
            "params_transformer_layers": m["parameters"]["transformer_layers"],
            "size_mb": m["size_mb"],
            "latency_ms_p50": r["latency_ms_p50"],
            "latency_ms_p95": r["latency_ms_p95"],
            "throughput": r["throughput"],
            "speedup": r["speedup"],
        }

    t_value = checked.teacher_eval[split][metric]
    rows = [
        {
            "name": "teacher",
            "role": "teacher",
            "layers": checked.teacher_layers,
            "method": "teacher",
            "seed": None,
            "metric": t_value,
            "metrics": checked.teacher_eval,
            "fraction_of_teacher": 1.0,
            "reused": None,
            "path": str(teacher),
            **speed(0),
        }
    ]
    for i, run in enumerate(runs, 1):
        value = evals[run.name][split][metric]
        recorded = R.read_metrics(run.path)
        rows.append(
            {
                "name": run.name,
                "role": "student",
                "layers": run.layers,
                "method": run.method,
                "seed": run.seed,
                "metric": value,
                "metrics": evals[run.name],
                "fraction_of_teacher": value / t_value if t_value else None,
                "reused": run.status == "reuse",
                "path": str(run.path),
                "recorded_best": R.best_metric(recorded, split, metric),
                "teacher_cache_path": (recorded.get("teacher_cache") or {}).get("path"),
                **shares(recorded),
                **speed(i),
            }
        )
    return {
        "task": spec.name,
        "split": split,
        "metric": metric,
        "teacher": {
            "path": str(teacher),
            "layers": checked.teacher_layers,
            "metrics": checked.teacher_eval,
        },
        "benchmark": {"device": bench["device"], "settings": bench["settings"]},
        "rows": rows,
        "summary": R.summarize(rows[1:], t_value, methods),
    }


def to_markdown(result: dict) -> str:
    """results.md: the teacher, the students' mean ± std per depth and method, every model,
    and (after a run) the wall time per phase."""
    metric, split = result["metric"], result["split"]
    teacher = result["rows"][0]
    s = result["benchmark"]["settings"]
    lines = [
        f"# pkd compare: {result['task']} ({metric} on {split}, %)",
        "",
        f"Teacher: {teacher['path']} ({teacher['layers']} layers, "
        f"{teacher['params_total'] / 1e6:.2f}M parameters): {metric} {R.pct(teacher['metric'])}.",
        f"Speed: batch {s['batch_sizes'][0]} x {s['seq_lengths'][0]} tokens, median of "
        f"{s['iterations']} runs; {describe_device(result['benchmark']['device'])}.",
        "",
        "## Students, mean ± std over seeds",
        "",
        _students_table(result["summary"], metric),
        "## All models",
        "",
        _models_table(result["rows"], metric),
    ]
    if "wall_seconds" in result:
        lines += [
            "## Wall time (this invocation, seconds)",
            "",
            _wall_table(result["wall_seconds"]),
        ]
    return "\n".join(lines)


def _students_table(summary: list[dict], metric: str) -> str:
    headers = [
        "layers",
        "method",
        "seeds",
        f"{metric} (mean ± std)",
        "% of teacher",
        "examples/s",
        "speed-up",
        "params (M)",
        "KD share %",
        "PT share %",
    ]
    rows = [
        [
            g["layers"],
            g["method"],
            g["n"],
            R.pm(g["mean"], g["std"]),
            R.pct(g["fraction_of_teacher"]),
            f"{g['throughput']:.1f}",
            f"{g['speedup']:.2f}x",
            f"{g['params_total'] / 1e6:.2f}",
            R.pct(g["share_kd"]),
            R.pct(g["share_pt"]),
        ]
        for g in summary
    ]
    return R.markdown_table(headers, rows)


def _models_table(rows: list[dict], metric: str) -> str:
    headers = [
        "model",
        "layers",
        "method",
        "seed",
        metric,
        "% of teacher",
        "params (M)",
        "p50 (ms)",
        "examples/s",
        "speed-up",
        "KD share %",
        "PT share %",
    ]
    cells = [
        [
            r["name"] + (" (reused)" if r["reused"] else ""),
            r["layers"],
            r["method"],
            r["seed"],
            R.pct(r["metric"]),
            R.pct(r["fraction_of_teacher"]),
            f"{r['params_total'] / 1e6:.2f}",
            f"{r['latency_ms_p50']:.2f}",
            f"{r['throughput']:.1f}",
            f"{r['speedup']:.2f}x",
            R.pct(r.get("share_kd")),
            R.pct(r.get("share_pt")),
        ]
        for r in rows
    ]
    return R.markdown_table(headers, cells)


def _wall_table(w: dict) -> str:
    phases = [
        ["checks + teacher evaluation", w["validate"]],
        ["teacher cache", w["teacher_cache"]],
    ]
    for name, st in w["students"].items():
        phases.append([f"student {name}", "reused" if st["reused"] else st["seconds"]])
    phases += [
        ["evaluation", w["evaluation"]],
        ["benchmark", w["benchmark"]],
        ["report", w["report"]],
        ["**total**", f"**{w['total']}**"],
    ]
    return R.markdown_table(["phase", "seconds"], phases)


def _describe(runs: list[Run], teacher: str, checked: Checked, timed: bool = True) -> dict:
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
        plan = dataclasses.replace(plans[run.layers], pairs=pairs)
        groups[key] = describe_distill(run.cfg, plan)
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
