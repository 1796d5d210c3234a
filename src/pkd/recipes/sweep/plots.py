"""importance.png and history.png, from the rows of trials.csv (matplotlib's Agg canvas,
never pyplot, so nothing depends on a display or global state)."""

from __future__ import annotations

import math
from pathlib import Path

from pkd.fsio import atomic_file
from pkd.recipes.sweep.plan import SweepPlan
from pkd.recipes.sweep.space import CATEGORICAL_ONLY, Param


def _figure(n_panels: int, width: float = 4.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # ~0.5 s: only when plotting
    from matplotlib.figure import Figure

    cols = min(3, max(1, n_panels))
    rows = math.ceil(max(1, n_panels) / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(1, n_panels))]
    return fig, axes


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


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
        elif p.log or name in ("lr", "beta") and _wide(p):
            ax.set_xscale("log")
        title = name + (f" (importance {importance[name]:.2f})" if name in importance else "")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(name)
        ax.set_ylabel(f"{plan.metric} on {plan.select} (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(fig, path)


def _wide(p: Param) -> bool:
    """Positive values spanning 50x or more: a log axis reads better."""
    values = [float(v) for v in p.values]
    return min(values) > 0 and max(values) / min(values) >= 50


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
