"""`pkd compare`'s results as files: results.json, results.md (the tables), results.csv,
pareto.png, and each student's model card with the speed measured."""

from __future__ import annotations

from pathlib import Path

from pkd.deploy import report as R
from pkd.deploy.bench import describe_device
from pkd.fsio import atomic_write, write_json
from pkd.models.card import write_model_card
from pkd.models.results import RunResult
from pkd.recipes.compare_plan import Run
from pkd.training.rundir import read_run_config


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
            RunResult.load(run.path),
            "distill",
            speed={**speed, "setting": setting},
            note=note,
        )


def write_results(out: Path, result: dict, spec, student_layers: list[int]) -> None:
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
