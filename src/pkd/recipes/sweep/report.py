"""What a sweep writes: one row per trial (trials.csv, trials.md), summary.json's content,
best.yaml and best/, holdout.json, the dry run's description and the one line per trial. Reads
the study's trials (their attributes), never Optuna itself."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from pkd.config.files import save
from pkd.config.runs import DistillRunConfig
from pkd.data.loading import HOLDOUT, HOLDOUT_SEED, load_splits
from pkd.deploy import report as R
from pkd.fsio import atomic_write, staged_dir, write_json
from pkd.models.card import write_model_card
from pkd.models.results import RunResult
from pkd.recipes.dryrun import human_bytes, human_seconds
from pkd.recipes.sweep import plots
from pkd.recipes.sweep.plan import SweepPlan
from pkd.recipes.sweep.study import (
    CACHE,
    DUPLICATE_OF,
    EPOCHS,
    ERROR,
    HOST,
    RETRY_OF,
    RUN_DIR,
    SCORES,
    SHARES,
    SURPLUS,
    WALL,
    Progress,
    redact,
    retried,
)
from pkd.training.rundir import read_run_config

logger = logging.getLogger(__name__)


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(t, plan: SweepPlan) -> str:
    """The line printed when a trial ends: state, metric, per-epoch curve, parameters, time."""
    epochs = t.user_attrs.get(EPOCHS) or []
    curve = ", ".join(R.pct(e.get(plan.select)) for e in epochs)
    value = R.pct(t.value) if t.value is not None and t.state.name == "COMPLETE" else "-"
    extra = f" ({t.user_attrs[ERROR]})" if ERROR in t.user_attrs else ""
    return (
        f"trial {t.number:>3} {t.state.name.lower():<8} {plan.metric} on {plan.select} {value}"
        f" [epochs: {curve}] {fmt_params(t.params)} {t.user_attrs.get(WALL, 0):.1f}s{extra}"
    )


def trial_rows(study, plan: SweepPlan) -> list[dict]:
    """One row per trial that ran or runs (surplus trials, never run, are left out)."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    rows = []
    for t in trials:
        if t.user_attrs.get(SURPLUS) or t.state.name == "WAITING":
            continue
        epochs = t.user_attrs.get(EPOCHS) or []
        scores = t.user_attrs.get(SCORES) or {}
        cache = t.user_attrs.get(CACHE) or {}
        shares = t.user_attrs.get(SHARES) or {}
        state = t.state.name.lower()
        if t.state.name == "FAIL" and t.number in again:
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
            "share_kd": shares.get("kd"),
            "share_pt": shares.get("pt"),
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


def summary(
    plan: SweepPlan, rows: list[dict], checked: dict, progress: Progress, complete: bool
) -> dict[str, Any]:
    """summary.json's content, before best/ and the seed runs are added."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    result: dict[str, Any] = {
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
        "pending": progress.pending,
        "teacher": {"path": plan.teacher, "metrics": checked.get("teacher", {}).get("dev")},
        "best": None,
        "seeds": None,
        "wall_seconds": _wall(rows, plan),
    }
    best = best_row(rows)
    if best is not None:
        result["best"] = {
            "trial": best["trial"],
            "params": best["params"],
            plan.select: best["value"],
            plan.eval_split: best["dev"],
            "holdout": best["holdout"],
            "run_dir": best["run_dir"],
        }
    return result


def write_reports(plan: SweepPlan, summary: dict, rows: list[dict], importance: dict) -> None:
    """trials.csv, trials.md (also summary["markdown"]), importance.png and history.png."""
    out = plan.output
    columns = ["trial", "state", *plan.space, "value", "dev", "holdout", "epochs_run",
               f"{plan.eval_split}_by_epoch", "holdout_by_epoch", "share_kd", "share_pt",
               "wall_seconds",
               "teacher_cache", "retry_of", "duplicate_of", "host", "run_dir",
               "error"]  # fmt: skip
    if plan.selection_split != "holdout":
        columns = [c for c in columns if not c.startswith("holdout")]
    atomic_write(out / "trials.csv", R.to_csv(rows, columns))
    summary["markdown"] = to_markdown(summary, rows, plan)
    atomic_write(out / "trials.md", summary["markdown"])
    summary["importance"] = importance
    if rows:
        plots.importance_plot(rows, plan, importance, out / "importance.png")
        plots.history_plot(rows, plan, out / "history.png")


def _wall(rows: list[dict], plan: SweepPlan) -> dict:
    """Time spent, and saved by pruning (estimated from complete trials) and the shared cache."""
    # repeated proposals (wall 0 s) are left out by the wall-time test
    done = [r for r in rows if r["state"] == "complete" and r["wall_seconds"] and r["epochs_run"]]
    per_epoch = sum(r["wall_seconds"] / r["epochs_run"] for r in done) / len(done) if done else None
    planned = {r["trial"]: plan.planned_epochs(r["params"]) for r in rows}
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


def write_best(plan: SweepPlan, best: dict) -> dict:
    """best.yaml (a full DistillRunConfig writing to OUTPUT/best-rerun) and best/ (a copy)."""
    out = plan.output
    cfg = plan.config(best["params"], out / "best-rerun")
    # A re-run of its own: it refuses to overwrite, and shows progress (trials run quietly).
    cfg = dataclasses.replace(
        cfg, overwrite=False, train=dataclasses.replace(cfg.train, quiet=False)
    )
    save(cfg, out / "best.yaml", meta={"sweep_trial": best["trial"], "study": plan.study_name})
    info = {"config": str(out / "best.yaml"), "model": None}
    src = Path(best["run_dir"] or "")
    if (src / "metrics.json").is_file():
        dst = out / "best"
        with staged_dir(dst) as tmp:
            shutil.copytree(src / "model", tmp / "model")
            for name in ("config.yaml", "metrics.json"):
                shutil.copy2(src / name, tmp / name)
            write_json(tmp / "sweep_trial.json", {"trial": best["trial"], "params": best["params"]})
            best_card(plan, best, tmp, dst)
        info["model"] = str(dst / "model")
    else:
        logger.warning(
            "the best trial's run %s is not on this machine (host %s); best/ not written",
            best["run_dir"],
            best["host"],
        )
    return info


def best_card(plan: SweepPlan, best: dict, tmp: Path, dst: Path) -> None:
    """best/model/README.md: the trial's model card, saying it is the study's best and
    re-running through best.yaml (`tmp`: best/ while it is staged, `dst`: its place)."""
    result = RunResult.load(tmp)
    note = (
        f"The best trial ({best['trial']}: {fmt_params(best['params'])}) of the `pkd sweep` "
        f"study {plan.study_name}, selected on {plan.select} {plan.metric}."
    )
    write_model_card(
        tmp / "model",
        read_run_config(tmp),
        result,
        "distill",
        note=note,
        rerun=f"pkd distill --config {plan.output.name}/best.yaml",
        shown=dst / "model",
    )


def write_holdout(plan: SweepPlan, cfg: DistillRunConfig) -> None:
    """holdout.json: the held-out fraction, its seed and the ids of the held-out rows."""
    _, splits = load_splits(cfg.data, ["train"])
    held = splits[HOLDOUT]
    write_json(
        plan.output / "holdout.json",
        {
            "fraction": cfg.data.holdout_fraction,
            "seed": HOLDOUT_SEED,
            "examples": len(held),
            "train_examples": len(splits["train"]),
            "ids": held.ids,
        },
    )


def to_markdown(summary: dict, rows: list[dict], plan: SweepPlan) -> str:
    """trials.md: the study, the best configuration (over seeds), every trial, wall time."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary["counts"].items()))
    lines = [
        f"# pkd sweep: {plan.task}, {summary['method']} -> {summary['student_layers']} layers",
        "",
        f"Study {plan.study_name!r} in {redact(plan.storage)}; sampler {plan.sampler}, pruner "
        f"{plan.pruner}; {plan.metric} in %, selection on **{plan.select}**"
        + (" (a fixed share of train, see holdout.json)" if plan.select == "holdout" else "")
        + ".",
        "",
        f"States: {counts} (budget {plan.trials}"
        + (f", grid of {summary['grid_points']}" if summary["grid_points"] else "")
        + ")"
        + (
            ""
            if summary["complete"]
            else f"; **not complete**, pending trials {summary['pending']}"
        ),
        "",
    ]
    if summary.get("best"):
        lines += _best_lines(summary["best"], plan)
    if summary.get("seeds"):
        lines += _seed_lines(summary["seeds"], plan)
    lines += ["## Trials", "", _trials_table(rows, plan)]
    lines += _wall_lines(summary["wall_seconds"])
    return "\n".join(lines)


def _best_lines(best: dict, plan: SweepPlan) -> list[str]:
    metric, dev = plan.metric, plan.eval_split
    lines = ["## Best configuration", "", f"Trial {best['trial']}: {fmt_params(best['params'])}."]
    if plan.select == "holdout":
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
    return [*lines, ""]


def _seed_lines(seeds: dict, plan: SweepPlan) -> list[str]:
    dev, holdout = plan.eval_split, plan.select == "holdout"
    headers = ["seed", f"{dev} (%)"] + (["holdout (%)"] if holdout else [])
    table = [
        [r["seed"], R.pct(r[dev])] + ([R.pct(r["holdout"])] if holdout else [])
        for r in seeds["runs"]
    ]
    table.append(
        ["mean ± std", R.pm(seeds[f"{dev}_mean"], seeds[f"{dev}_std"])]
        + ([R.pm(seeds["holdout_mean"], seeds["holdout_std"])] if holdout else [])
    )
    return ["## Best configuration over seeds", "", R.markdown_table(headers, table)]


def _trials_table(rows: list[dict], plan: SweepPlan) -> str:
    select, dev, holdout = plan.select, plan.eval_split, plan.select == "holdout"
    headers = ["trial", "state", *plan.space, f"{select} (%)"]
    if holdout:
        headers.append(f"{dev} (%)")
    headers += [f"{dev} per epoch (%)"]
    if holdout:
        headers.append("holdout per epoch (%)")
    headers += ["KD share %", "PT share %", "wall (s)", "cache"]
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
        if holdout:
            row.append(R.pct(r["dev"]) if r["dev"] is not None else "-")
        row.append(", ".join(R.pct(e.get(dev)) for e in r["curve"]))
        if holdout:
            row.append(", ".join(R.pct(e.get("holdout")) for e in r["curve"]))
        row += [R.pct(r["share_kd"]), R.pct(r["share_pt"]), r["wall_seconds"], r["teacher_cache"]]
        table.append(row)
    return R.markdown_table(headers, table)


def _wall_lines(w: dict) -> list[str]:
    return [
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


def describe(plan: SweepPlan, checked: dict) -> dict:
    """`pkd sweep --dry-run`: the study it would run and the plan of its first trial."""
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
    lines += first_trial_lines(checked, plan.trials)  # map, loss, cache, timed estimate
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


def first_trial_lines(checked: dict, trials: int | None) -> list[str]:
    """Markdown lines for `pkd sweep --dry-run` from the plan of its first trial."""
    pairs = " ".join(f"{a}->{b}" for a, b in checked["layer_map"]) or "none (no patient loss)"
    cache = checked["teacher_cache"]
    lines = [
        "",
        f"First trial: teacher->student map {pairs}; loss {checked['loss']['formula']}.",
    ]
    if cache["mode"] == "cached":
        state = "exists, reused" if cache["exists"] else "built once, shared by all trials"
        lines.append(
            f"Teacher cache: {human_bytes(cache['bytes'])} on disk at {cache['path']} ({state})."
        )
    else:
        lines.append(f"Teacher cache: {cache['mode']}.")
    e = checked.get("estimate")
    if e:
        s = e["seconds"]
        per_trial = s["train"] + s["evaluation"]
        total = (trials or 1) * per_trial + s["teacher_cache"] + s["teacher_evaluation"]
        lines.append(
            f"Estimate: about {human_seconds(per_trial)} per trial like the first "
            f"({e['steps']} steps x {e['seconds_per_step']:.3g} s), about {human_seconds(total)} "
            f"for {trials or 1} trials without pruning; from {e['from']}."
        )
    return lines
