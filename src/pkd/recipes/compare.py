"""`pkd compare`: the paper's comparison in one command.

Teacher vs FT / KD / PKD-Skip / PKD-Last students at one or more depths and seeds:

1. check everything up front (methods, depths against the teacher, the student init, the
   data, finished runs' settings; the runs are planned in `compare_plan`) and score the
   teacher on the dev split(s);
2. run each student with `pkd.recipes.distill.distill` into `OUTPUT/runs/L{layers}-{method}-seed{seed}`;
   all runs share one teacher cache (same teacher, data and max length -> same fingerprint),
   built by the first run that needs it. A run dir with metrics.json is finished and reused;
   an unfinished one is replaced;
3. evaluate every saved model on the dev split(s) and benchmark it against the teacher on
   identical inputs (`pkd.deploy.bench`);
4. write results.json, results.md, results.csv and pareto.png (`compare_report`, with the
   tables of `pkd.deploy.report`), each student's results read as a `RunResult`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pkd.config.runs import DistillRunConfig, inference_data, resolve_model
from pkd.data.loading import check_label_sets, load_splits, majority_baselines, resolve_task
from pkd.deploy import report as R
from pkd.deploy.bench import benchmark, check_bench_options
from pkd.errors import PkdError
from pkd.models.encoders import (
    load_config,
    load_finetuned,
    model_labels,
    num_layers,
    token_positions,
)
from pkd.models.results import RunResult
from pkd.models.students import student_init
from pkd.objectives.mapping import layer_map
from pkd.recipes.compare_plan import Checked, Run, StudentGrid, config_drift, describe, plan_runs
from pkd.recipes.compare_report import to_markdown, write_cards, write_results
from pkd.recipes.distill import distill
from pkd.recipes.distill_checks import check_teacher_strength, teacher_task
from pkd.recipes.inference import evaluate
from pkd.tasks import readable_labels
from pkd.training.rundir import check_not_replaced, run_inputs, run_lock

logger = logging.getLogger(__name__)


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
        return describe(runs, teacher, checked)
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
        write_results(Path(output), result, checked.spec, student_layers)
        write_cards(runs, result)
        return result


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
        seconds = RunResult.of(distill(run.cfg)).wall_seconds
        took = time.perf_counter() - t
        cache = seconds["teacher_cache"]
        wall["teacher_cache"] += cache
        wall["students"][run.name] = {
            "reused": False,
            "seconds": round(took - cache, 2),
            "train": seconds["train"],
            "teacher_cache": cache,
        }
    wall["teacher_cache"] = round(wall["teacher_cache"], 2)
    return wall


def shares(recorded: RunResult) -> dict:
    """A run's mean gradient shares of the KD and PT terms (None where it has no such term)."""
    got = recorded.gradient_shares
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
        recorded = RunResult.load(run.path)
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
                "recorded_best": recorded.best_score(split, metric),
                "teacher_cache_path": recorded.teacher_cache.get("path"),
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
