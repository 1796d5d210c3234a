"""`pkd sweep`: the paper's hyper-parameter search (or your own search space) on Optuna.

The authors chose every reported number as the best of a grid (SPEC §1: T in {5,10,20},
alpha in {0.2,0.5,0.7}, beta in {10,100,500,1000}, lr in {1e-5,2e-5,5e-5}), run with shell
scripts. Here the grid (or a YAML search space) is an Optuna study:

1. check everything before any trial (`plan`): the options (`SweepOptions`), the search space
   (`space`, file:line errors), the teacher's depth against every layer map, one
   DistillRunConfig per grid point, and the teacher and data (`pkd.recipes.distill.distill(dry_run=True)`);
2. open the study in `--storage` (`study`; default: a journal file inside --output, so running
   `pkd sweep` again continues it). A grid study holds every grid point as an enqueued
   trial, put there once by the process that created the study; workers pop them with
   Optuna's atomic WAITING -> RUNNING step, so several processes or machines on one storage
   never run a point twice. TPE asks Optuna for new points until `--trials` are used;
3. each trial (`worker`) is an ordinary `pkd.recipes.distill.distill` run in OUTPUT/trials/trial-{number};
   all share one teacher cache (same teacher, training rows and max length -> same
   fingerprint). After each epoch the selection metric is reported to the pruner, which
   may stop the trial (its run dir gets pruned.json and no metrics.json); a trial's last
   epoch is never pruned (it is trained already). A TPE proposal that repeats the
   parameters of a complete trial reuses that trial's result (0 s; it counts toward
   `--trials`): TPE over the paper's discrete grid proposes repeats;
4. a trial whose process died (SIGKILL, a lost machine) stays RUNNING in the study. On start
   a worker fails it (only one worker can: the RUNNING -> FAIL step is atomic) and that
   worker enqueues its parameters again, so the point is re-run exactly once;
5. when the study is complete (`report`, `plots`): trials.csv, trials.md, summary.json,
   importance.png, history.png, best.yaml (re-runs with `pkd distill --config best.yaml`),
   best/ (the best student's run: model/, config.yaml, metrics.json) and, with --seeds, the
   best config re-run per seed (mean ± std).

Honest selection: with `--selection-split holdout` a fixed share of train is held out
(`DataConfig.holdout_fraction`); it picks both the epoch and the config, and dev is reported
for the chosen config without having chosen anything.

Only `study` and `worker` import Optuna, and only when called.
"""

from __future__ import annotations

import time
from typing import Any

from pkd.fsio import write_json
from pkd.recipes.distill import distill
from pkd.recipes.sweep import report, worker
from pkd.recipes.sweep.plan import JOURNAL, STUDY_NAME, SweepOptions, SweepPlan, plan_sweep
from pkd.recipes.sweep.space import Param, range_probes
from pkd.recipes.sweep.study import (
    BEAT,
    DUPLICATE_OF,
    HOST,
    PID,
    RETRY_OF,
    SURPLUS,
    open_storage,
    open_study,
    recover_stale,
    require_optuna,
)

__all__ = [
    "BEAT",
    "DUPLICATE_OF",
    "HOST",
    "JOURNAL",
    "PID",
    "RETRY_OF",
    "STUDY_NAME",
    "SURPLUS",
    "Param",
    "SweepOptions",
    "SweepPlan",
    "open_storage",
    "plan_sweep",
    "recover_stale",
    "run_sweep",
    "sweep",
]


def run_sweep(options: SweepOptions, *, dry_run: bool = False, quiet: bool = False) -> dict:
    """Run (or continue, or join) a hyper-parameter sweep of `pkd distill` on Optuna.

    Args:
        options: the sweep, checked (see SweepOptions).
        dry_run: check everything and describe the study; train nothing.
        quiet: no progress bar or per-trial lines.

    Returns:
        summary.json's content plus "markdown" (trials.md); with dry_run, the description.

    Raises:
        PkdError: no Optuna, a bad search space, a teacher or data that does not load, a
            study in the storage made with other settings.
    """
    require_optuna()
    plan = plan_sweep(options)
    first = plan.config(
        plan.points[0] if plan.points else range_probes(plan.space)[0],
        plan.output / "trials" / "check",
    )
    checked = distill(first, dry_run=True)  # teacher, data, labels, teacher strength
    if dry_run:
        return report.describe(plan, checked)

    with worker.quiet_logs():
        plan.output.mkdir(parents=True, exist_ok=True)
        if plan.selection_split == "holdout":
            report.write_holdout(plan, first)
        study = open_study(plan)
        t0 = time.perf_counter()
        ran = worker.work(study, plan, quiet)
        result = worker.finish(study, plan, checked, quiet)
    result["wall_seconds"]["this_invocation"] = round(time.perf_counter() - t0, 2)
    result["trials_run_here"] = ran
    write_json(plan.output / "summary.json", {k: v for k, v in result.items() if k != "markdown"})
    return result


def sweep(
    teacher: str,
    output: str,
    base: dict | None = None,
    *,
    dry_run: bool = False,
    quiet: bool = False,
    **options: Any,
) -> dict:
    """`run_sweep(SweepOptions(teacher, output, base, **options), dry_run=, quiet=)`: the
    Python API, e.g. `sweep(teacher, output, base, method="kd", grid="paper")`.

    Raises:
        PkdError: a bad option (see SweepOptions) or as run_sweep.
        TypeError: an option SweepOptions does not have.
    """
    return run_sweep(SweepOptions(teacher, output, base, **options), dry_run=dry_run, quiet=quiet)
