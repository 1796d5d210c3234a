"""Run directories -> tables and plots. Read-only: nothing here trains or evaluates.

A comparison names its runs `L{layers}-{method}-seed{seed}` (see `run_name`); a finished run
is a directory holding metrics.json, which `pkd distill` writes last (read as a
`pkd.models.results.RunResult`). Metrics in tables are
shown in percent (x100), as GLUE reports them.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path

from pkd.fsio import atomic_file
from pkd.models.results import RunResult

RUN_NAME = re.compile(r"^L(?P<layers>\d+)-(?P<method>[a-z][a-z0-9-]*)-seed(?P<seed>-?\d+)$")


def run_name(layers: int, method: str, seed: int) -> str:
    return f"L{layers}-{method}-seed{seed}"


def parse_run_name(name: str) -> dict | None:
    m = RUN_NAME.match(name)
    if not m:
        return None
    return {"layers": int(m["layers"]), "method": m["method"], "seed": int(m["seed"])}


def collect_runs(runs_dir: Path) -> list[dict]:
    """Finished runs under `runs_dir` named L{layers}-{method}-seed{seed}, sorted by name parts."""
    out = []
    for d in sorted(Path(runs_dir).iterdir()) if Path(runs_dir).is_dir() else []:
        parsed = parse_run_name(d.name)
        if parsed and RunResult.exists(d):
            out.append({"name": d.name, "path": str(d), **parsed, "result": RunResult.load(d)})
    return sorted(out, key=lambda r: (r["layers"], r["method"], r["seed"]))


# ---------------------------------------------------------------------------------------------
# Aggregation


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def mean_present(rows: list[dict], key: str) -> float | None:
    """The mean of `key` over the rows that have it, None when none has."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarize(rows: list[dict], teacher_metric: float | None, methods: list[str]) -> list[dict]:
    """Per (depth, method): mean ± std over seeds of `metric`, % of teacher, mean speed.

    Args:
        rows: student rows with keys layers, method, seed, metric and optionally throughput,
            speedup, params_total, share_kd, share_pt (gradient shares).
        teacher_metric: the teacher's value of the same metric.
        methods: method order for the table.
    """
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layers"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(methods)}
    out = []
    for (layers, method), rs in sorted(
        groups.items(), key=lambda kv: (-kv[0][0], order.get(kv[0][1], 99))
    ):
        mean, std = mean_std([r["metric"] for r in rs])
        speed = [r["throughput"] for r in rs if r.get("throughput") is not None]
        ups = [r["speedup"] for r in rs if r.get("speedup") is not None]
        out.append(
            {
                "layers": layers,
                "method": method,
                "seeds": sorted(r["seed"] for r in rs),
                "n": len(rs),
                "mean": mean,
                "std": std,
                "min": min(r["metric"] for r in rs),
                "max": max(r["metric"] for r in rs),
                "fraction_of_teacher": mean / teacher_metric if teacher_metric else None,
                "throughput": statistics.fmean(speed) if speed else None,
                "speedup": statistics.fmean(ups) if ups else None,
                "params_total": rs[0].get("params_total"),
                "share_kd": mean_present(rs, "share_kd"),
                "share_pt": mean_present(rs, "share_pt"),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Tables as text


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in columns})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Accuracy-vs-speed plot


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both x and y (higher is better), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(points: list[dict], path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Write a PNG: one marker per point ({label, group, x, y}), the Pareto front as a line.

    Uses matplotlib's Agg canvas directly (no pyplot), so it never touches the user's
    interactive backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # ~0.5 s: only when plotting
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(p["group"] for p in points))
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    for g in groups:
        ps = [p for p in points if p["group"] == g]
        ax.scatter(
            [p["x"] for p in ps],
            [p["y"] for p in ps],
            label=g,
            color=colors[g],
            marker="*" if g == "teacher" else "o",
            s=140 if g == "teacher" else 40,
            zorder=3,
        )
    front = pareto_front([(p["x"], p["y"]) for p in points])
    ax.plot(
        [points[i]["x"] for i in front],
        [points[i]["y"] for i in front],
        color="grey",
        linestyle="--",
        linewidth=1,
        drawstyle="steps-pre",  # the best metric reachable at each throughput
        label="Pareto front",
        zorder=2,
    )
    for p in points:
        if p["group"] == "teacher":
            ax.annotate("teacher", (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
