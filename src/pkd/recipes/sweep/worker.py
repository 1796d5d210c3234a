"""One worker: runs trials (each an ordinary `pkd.recipes.distill.distill` run) until the budget
is used or the grid is done, then finishes: the reports and, when the study is complete, best/
and the seed re-runs. Several workers (processes, machines) may share one study."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import torch

from pkd.deploy import report as R
from pkd.errors import PkdError
from pkd.models.results import RunResult
from pkd.progress import progress as progress_bar
from pkd.recipes.distill import distill
from pkd.recipes.sweep import report
from pkd.recipes.sweep.plan import SweepPlan
from pkd.recipes.sweep.study import (
    BEAT,
    CACHE,
    DUPLICATE_OF,
    EPOCHS,
    ERROR,
    HOST,
    PID,
    POINT,
    RETRY_OF,
    RUN_DIR,
    SCORES,
    SHARES,
    SURPLUS,
    WALL,
    budget_used,
    exclusive,
    importances,
    mark,
    progress,
    recover_stale,
    require_optuna,
)

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0


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


@contextlib.contextmanager
def quiet_logs():
    """One line per trial from the sweep instead of Optuna's and the training loop's logs."""
    optuna = require_optuna()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # The run API's warnings (a weak teacher, a collapsed student, truncation) were shown by
    # the up-front check, or show in the trial's line (its per-epoch metric): not repeated.
    loud = {"pkd.training.loop": logging.WARNING, "pkd.objectives.cache": logging.WARNING}
    loud |= {name: logging.ERROR for name in ("pkd.data.loading", "pkd.recipes.distill")}
    levels = {name: logging.getLogger(name).level for name in loud}
    for name, level in loud.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------------------------------------
# One trial


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


def make_objective(plan: SweepPlan, study) -> Callable:
    """Optuna's objective: claim a queued point (or a TPE proposal within the budget), reuse a
    complete twin's result, or train the trial."""

    def objective(trial) -> float:
        trials = study.get_trials(deepcopy=False)
        used = budget_used(trials, before=trial.number)
        fresh = POINT not in trial.user_attrs and RETRY_OF not in trial.user_attrs
        if (plan.points is not None and fresh) or (fresh and used >= plan.trials):
            trial.set_user_attr(SURPLUS, True)
            raise _Surplus(f"trial {trial.number}: nothing left to run")
        params = {name: p.suggest(trial) for name, p in plan.space.items()}
        same = _finished_twin([t for t in trials if t.number < trial.number], params)
        if same is not None:
            return _reuse(trial, same)
        return _train(trial, study, plan, params)

    return objective


def _pruning_hook(trial, plan: SweepPlan, params: dict, epochs: list[dict]) -> Callable:
    """distill's on_evaluate: record the epoch's metrics and let the pruner stop the trial
    (never after its last epoch: it is trained already)."""
    optuna = require_optuna()
    last_epoch = plan.planned_epochs(params)

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

    return on_evaluate


def _train(trial, study, plan: SweepPlan, params: dict) -> float:
    """Run the trial in OUTPUT/trials/trial-N; a pruned or failed run dir says so."""
    optuna = require_optuna()
    run_dir = plan.output / "trials" / f"trial-{trial.number}"
    for key, value in (
        (HOST, socket.gethostname()),
        (PID, os.getpid()),
        (BEAT, time.time()),
        (RUN_DIR, str(run_dir.resolve())),
    ):
        trial.set_user_attr(key, value)
    cfg = plan.config(params, run_dir)
    epochs: list[dict] = []
    t0 = time.perf_counter()
    try:
        with _Heartbeat(trial):
            result = RunResult.of(
                distill(cfg, on_evaluate=_pruning_hook(trial, plan, params, epochs))
            )
    except optuna.TrialPruned:
        trial.set_user_attr(WALL, round(time.perf_counter() - t0, 2))
        mark(run_dir, "pruned.json", {"trial": trial.number, "params": params, "epochs": epochs})
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
            mark(run_dir, "failed.json", {"trial": trial.number, "error": message})
        raise
    return _record_result(trial, plan, result, time.perf_counter() - t0)


def _record_result(trial, plan: SweepPlan, result: RunResult, seconds: float) -> float:
    """Store a finished trial's scores, wall time and teacher cache; returns its value."""
    best = result.best
    trial.set_user_attr(SCORES, {split: m[plan.metric] for split, m in best.metrics.items()})
    trial.set_user_attr(WALL, round(seconds, 2))
    trial.set_user_attr(SHARES, result.gradient_shares)
    cache = result.teacher_cache
    if cache:
        trial.set_user_attr(
            CACHE,
            {
                "reused": cache.get("reused"),
                "build_seconds": cache.get("build_seconds"),
                "path": cache.get("path"),
            },
        )
    return best.score(plan.select, plan.metric)


# ---------------------------------------------------------------------------------------------
# The worker loop


def work(study, plan: SweepPlan, quiet: bool) -> int:
    """Run trials until the budget is used (or the grid is done); returns how many ran here."""
    optuna = require_optuna()
    objective = make_objective(plan, study)
    catch = (Exception,)  # a failed trial is recorded (state FAIL, pkd_error) and the sweep goes on
    bar = progress_bar(plan.trials, "sweep", "trial", quiet)
    ran = errors = 0
    while True:
        recover_stale(study, plan.stale_after, plan.points)
        state = progress(study)
        bar.n = min(state.finished, plan.trials)
        bar.refresh()
        if state.exhausted(plan):
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
            bar.write(report.trial_line(t, plan), file=sys.stderr)
        if t.state.name == "FAIL":
            errors += 1
            ok = any(
                x.state.name in ("COMPLETE", "PRUNED") for x in study.get_trials(deepcopy=False)
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
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Finishing


def finish(study, plan: SweepPlan, checked: dict, quiet: bool = False) -> dict:
    """Write the reports; when the study is complete, best.yaml, best/ and the seed re-runs
    (by the one worker that takes the lock)."""
    state = progress(study)
    complete = not state.running and state.exhausted(plan)
    rows = report.trial_rows(study, plan)
    best = report.best_row(rows)
    summary = report.summary(plan, rows, checked, state, complete)
    if complete and best is not None:
        with exclusive(plan.output / ".finish.lock") as mine:
            if mine:
                summary["best"].update(report.write_best(plan, best))
                if plan.seeds:
                    summary["seeds"] = run_seeds(plan, best, quiet)
            else:
                logger.warning("another process is writing best/ and the seed runs; skipped here")
    report.write_reports(plan, summary, rows, importances(study, plan.space))
    if not complete and not quiet:
        print(
            f"sweep: {len(state.running)} trial(s) still running elsewhere, "
            f"{len(state.waiting)} waiting; run `pkd sweep` again (same options) for the final "
            "report",
            file=sys.stderr,
        )
    return summary


def run_seeds(plan: SweepPlan, best: dict, quiet: bool) -> dict:
    """The best config re-run once per seed (finished runs are reused)."""
    runs = []
    for seed in plan.seeds:
        path = plan.output / "seeds" / f"trial-{best['trial']}-seed{seed}"
        if not RunResult.exists(path):
            if not quiet:
                print(f"seed {seed}: re-running trial {best['trial']}'s config", file=sys.stderr)
            distill(plan.config(best["params"], path, seed=seed))
        saved = RunResult.load(path).best
        runs.append(
            {
                "seed": seed,
                plan.eval_split: saved.score(plan.eval_split, plan.metric),
                "holdout": saved.metrics.get("holdout", {}).get(plan.metric),
                "path": str(path),
            }
        )
    out = {"runs": runs}
    for key in (plan.eval_split, "holdout"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[f"{key}_mean"], out[f"{key}_std"] = R.mean_std(values)
    return out
