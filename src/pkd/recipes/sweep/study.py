"""The Optuna study: storage, sampler and pruner, the study's identity, the enqueued grid, stale
trials (a process that died) and the trial budget; plus the lock file that lets one worker
write best/. Optuna is imported when a function needs it, so `import pkd.recipes.sweep` works without
it and a sweep says how to install it."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pkd.errors import PkdError
from pkd.fsio import process_alive, try_lock, write_json
from pkd.recipes.sweep.plan import SweepPlan
from pkd.recipes.sweep.space import Param

logger = logging.getLogger(__name__)

# Trial user attributes (the study is the record; run dirs may be on other machines).
POINT, RETRY_OF, SURPLUS = "pkd_point", "pkd_retry_of", "pkd_surplus"
HOST, PID, BEAT = "pkd_host", "pkd_pid", "pkd_heartbeat"
RUN_DIR, EPOCHS, ERROR = "pkd_run_dir", "pkd_epochs", "pkd_error"
WALL, SCORES, CACHE = "pkd_wall_seconds", "pkd_scores", "pkd_teacher_cache"
DUPLICATE_OF, SHARES = "pkd_duplicate_of", "pkd_gradient_shares"
# Study user attributes.
IDENTITY, ENQUEUED = "pkd_sweep", "pkd_enqueued"


def require_optuna():
    """The optuna module, or a PkdError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise PkdError(
            "pkd sweep needs Optuna: pip install optuna (or pip install 'pkd[sweep]')"
        ) from None
    return optuna


def redact(url: str) -> str:
    """A storage URL without its password, for reports and messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url: str):
    """An RDB URL (sqlite:///x.db, postgresql://...) or a journal file path."""
    optuna = require_optuna()
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # bad URL, missing driver, unreachable server
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PkdError(f"--storage: cannot open {redact(url)} ({first})") from None
    from optuna.storages.journal import JournalFileBackend

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(url)))


def _sampler(plan: SweepPlan, n_existing: int):
    optuna = require_optuna()
    if plan.sampler == "grid":

        class QueuedGridSampler(optuna.samplers.GridSampler):
            """GridSampler over the plan's grid; points come from the enqueued trials, and the
            sweep (not the sampler) decides when the grid is done: GridSampler.after_trial
            expects its own grid ids, which enqueued trials do not carry."""

            def after_trial(self, study, trial, state, values) -> None:
                return None

        return QueuedGridSampler({n: p.choices for n, p in plan.space.items()}, seed=0)
    # Differs per process and per invocation: workers sharing a study (and a resumed sweep)
    # must not replay the same random start-up points.
    seed = int(plan.base["train"].get("seed", 42)) * 1_000_003 + n_existing * 7919 + os.getpid()
    return optuna.samplers.TPESampler(
        seed=seed % 2**32, n_startup_trials=max(2, min(10, plan.trials // 4))
    )


def _pruner(plan: SweepPlan):
    optuna = require_optuna()
    if plan.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=plan.pruner_startup_trials)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(plan.max_epochs, 1), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def open_study(plan: SweepPlan, wait_seconds: float = 120.0):
    """Create or load the study; the creator records its identity and enqueues the grid."""
    optuna = require_optuna()
    storage = open_storage(plan.storage)
    pruner = _pruner(plan)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=plan.study_name,
            direction="maximize",
            sampler=_sampler(plan, 0),
            pruner=pruner,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        n = len(optuna.load_study(study_name=plan.study_name, storage=storage).trials)
        study = optuna.load_study(
            study_name=plan.study_name, storage=storage, sampler=_sampler(plan, n), pruner=pruner
        )
        created = False
    identity = plan.identity()
    if created:
        study.set_user_attr(IDENTITY, identity)
        if plan.points is not None:
            _enqueue_points(study, plan.points, range(len(plan.points)))
            study.set_user_attr(ENQUEUED, len(plan.points))
        return study
    _join(study, plan, identity, wait_seconds)
    return study


def _join(study, plan: SweepPlan, identity: dict, wait_seconds: float) -> None:
    """Check that an existing study was made with these settings; finish its grid's enqueueing
    if its creator died meanwhile."""
    deadline = time.monotonic() + wait_seconds
    while True:  # the creator may still be enqueueing the grid
        attrs = study.user_attrs
        ready = IDENTITY in attrs and (plan.points is None or ENQUEUED in attrs)
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if IDENTITY not in attrs:
        study.set_user_attr(IDENTITY, identity)
    elif attrs[IDENTITY] != identity:
        diffs = _diff(attrs[IDENTITY], identity)
        raise PkdError(
            f"--output: the study {plan.study_name!r} in {redact(plan.storage)} was made with other "
            f"settings ({'; '.join(diffs[:3])}); use another --output or --study-name"
        )
    if plan.points is not None and ENQUEUED not in attrs:
        # Its creator died while enqueueing: add the points it did not get to.
        have = {t.user_attrs.get(POINT) for t in study.get_trials(deepcopy=False)}
        _enqueue_points(study, plan.points, [i for i in range(len(plan.points)) if i not in have])
        study.set_user_attr(ENQUEUED, len(plan.points))


def _enqueue_points(study, points: list[dict], indices) -> None:
    for i in indices:
        study.enqueue_trial(points[i], user_attrs={POINT: i})


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old and prefix == "fixed.":  # a setting newer than the study's pkd
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def is_stale(trial, stale_after: float, now: float | None = None) -> bool:
    """A RUNNING trial whose process is gone: dead pid on this host, or no heartbeat lately."""
    attrs = trial.user_attrs
    if attrs.get(HOST) == socket.gethostname() and attrs.get(PID):
        if attrs[PID] == os.getpid():
            return False
        if not process_alive(int(attrs[PID])):
            return True
    last = attrs.get(BEAT) or (trial.datetime_start.timestamp() if trial.datetime_start else None)
    return last is not None and (now or time.time()) - last > stale_after


def recover_stale(
    study, stale_after: float, points: list[dict] | None = None
) -> list[tuple[int, int]]:
    """Fail stale RUNNING trials and enqueue their parameters again: [(failed, retry)].

    Several workers may find the same stale trial; `Study.tell` and the storage let exactly
    one of them move it from RUNNING to FAIL (the others get a ValueError, or the storage's
    UpdateFinishedTrialError), and only that one enqueues the retry, so the point is run
    again exactly once.
    """
    optuna = require_optuna()
    from optuna.trial import TrialState

    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after):
            continue
        try:  # ValueError: another worker failed it first (tell checks the state)
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue
        user = {RETRY_OF: t.number}
        params = dict(t.params)  # may be incomplete if it died at once
        if POINT in t.user_attrs:
            user[POINT] = t.user_attrs[POINT]
            if points is not None:
                params = points[t.user_attrs[POINT]]
        study.enqueue_trial(params, user_attrs=user)
        retry = next(
            x.number
            for x in reversed(study.get_trials(deepcopy=False))
            if x.user_attrs.get(RETRY_OF) == t.number
        )
        run_dir = t.user_attrs.get(RUN_DIR)
        if run_dir and Path(run_dir).is_dir():
            mark(
                Path(run_dir),
                "failed.json",
                {"trial": t.number, "error": "process died", "retry": retry},
            )
        logger.warning(
            "trial %d: its process died; failed it, retrying as trial %d", t.number, retry
        )
        done.append((t.number, retry))
    return done


def mark(run_dir: Path, name: str, data: dict) -> None:
    """pruned.json / failed.json: the run dir says how it ended (metrics.json: finished)."""
    write_json(run_dir / name, data)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def retried(trials) -> set[int]:
    """The numbers of the trials that were queued again (their retry runs their point)."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


def budget_used(trials, before: int | None = None) -> int:
    """How many trials (of those numbered below `before`) count toward --trials: not surplus,
    not waiting, not failed-and-retried (the retry counts instead)."""
    from optuna.trial import TrialState

    again = retried(trials)
    used = 0
    for t in trials:
        if (before is not None and t.number >= before) or t.user_attrs.get(SURPLUS):
            continue
        if t.state == TrialState.FAIL:
            used += t.number not in again
        else:
            used += t.state != TrialState.WAITING
    return used


@dataclass
class Progress:
    """Where a study stands, from this worker's look at it."""

    used: int  # trials that count toward the budget
    finished: int  # complete, pruned, or failed with an error (not retried)
    running: list[int]
    waiting: list[int]

    @property
    def pending(self) -> list[int]:
        """Running or waiting trials, by number."""
        return sorted(self.running + self.waiting)

    def exhausted(self, plan: SweepPlan) -> bool:
        """No trial left to start: the budget is used, or a grid has no point queued."""
        return self.used >= plan.trials or (plan.points is not None and not self.waiting)


def progress(study) -> Progress:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    return Progress(
        used=budget_used(trials),
        finished=sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (
                t.state == TrialState.FAIL
                and t.number not in again
                and not t.user_attrs.get(SURPLUS)
            )
            for t in trials
        ),
        running=[t.number for t in trials if t.state == TrialState.RUNNING],
        waiting=[t.number for t in trials if t.state == TrialState.WAITING],
    )


def importances(study, space: dict[str, Param]) -> dict[str, float]:
    """Optuna's importance of each varied parameter (its default evaluator; empty with fewer
    than 3 complete trials)."""
    optuna = require_optuna()
    varied = [n for n, p in space.items() if p.is_range or len(p.choices) > 1]
    try:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 3 or not varied:
            return {}
        with warnings.catch_warnings():  # e.g. "importances will be equal" on tiny studies
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, params=varied))
    except Exception as e:  # e.g. a parameter that never varied among complete trials
        logger.info("parameter importance not computed: %s", e)
        return {}


@contextlib.contextmanager
def exclusive(path: Path):
    """A lock file (`pkd.fsio.try_lock`); one left by a dead process on this host is taken
    over. Yields whether this process holds it."""
    mine, _ = try_lock(path)
    try:
        yield mine
    finally:
        if mine:
            path.unlink(missing_ok=True)
