"""The one shape of a training recipe (`finetune`, `distill`, `pretrain`), as run_glue's
`main()`: check the run directory -> plan (every up-front check, everything loaded) -> the dry
run's plan, or: accelerator -> config.yaml -> train -> metrics.json, written last.

A recipe gives its `plan(cfg)`, whose `Plan` describes itself (`summary`, `describe`: what
`--dry-run` shows) and says what its run directory records, and its `run(plan, run)`, which
trains and returns the `RunResult` (metrics.json). Nothing is written before every check has
passed, and a dry run writes nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pkd.models.results import RunResult
from pkd.training.accelerator import make_accelerator
from pkd.training.rundir import finish_run, open_run, start_run


class Plan(Protocol):
    """Everything a recipe resolved before training: what --dry-run shows, what the run uses."""

    def summary(self) -> dict:
        """The plan as data, with its time estimated from timed steps (what a dry run returns)."""

    def describe(self, summary: dict | None = None) -> str:
        """The dry run's text of `summary` (default: this plan's)."""

    def resolved(self) -> dict:
        """What options resolved to (config.yaml's `meta.resolved`)."""

    def run_data(self) -> dict:
        """The splits the run reads (their hashes go into config.yaml)."""

    def recorded_baseline(self) -> float | None:
        """The majority baseline recorded beside the model's dev metric (None: no task)."""


class DryRun(dict):
    """A dry run's plan as data (`Plan.summary`), with its text (`describe`)."""

    def __init__(self, summary: dict, text: str) -> None:
        super().__init__(summary)
        self.text = text

    def describe(self) -> str:
        return self.text


@dataclass
class RunContext:
    """A started run, as a recipe's `run` gets it."""

    output: Path
    resume_from: Path | None
    accelerator: object
    started: float  # time.perf_counter() when config.yaml was written

    def wall_seconds(self, train_seconds: float, **before: float) -> dict:
        """metrics.json's wall_seconds: `before` (e.g. the teacher cache), the training loop,
        and the total since config.yaml was written."""
        total = round(time.perf_counter() - self.started, 2)
        return {**before, "train": train_seconds, "total": total}


def evaluations(trained: dict) -> dict:
    """The training loop's best, final and per-epoch evaluations, as metrics.json has them."""
    return {k: trained[k] for k in ("best", "final", "history")}


@dataclass(frozen=True)
class Recipe:
    """A command's parts: its name, its plan and its run.

    plan_on_device: the plan takes the run's accelerator (distill scores its teacher on the
    run's device); else the accelerator is made after planning.
    """

    command: str
    plan: Callable[..., Plan]
    run: Callable[..., RunResult]
    plan_on_device: bool = False


def run_recipe(recipe: Recipe, cfg, dry_run: bool = False, **run_kw) -> dict:
    """Check, plan, and describe (dry run) or train a recipe's run.

    Returns metrics.json's content, or with dry_run the plan (a `DryRun`).
    """
    output, ckpt = open_run(cfg)
    accelerator = None
    if recipe.plan_on_device:
        accelerator = make_accelerator(cfg.train, output) if not dry_run else None
        plan = recipe.plan(cfg, accelerator)
    else:
        plan = recipe.plan(cfg)
    if dry_run:
        summary = plan.summary()
        return DryRun(summary, plan.describe(summary))
    accelerator = accelerator or make_accelerator(cfg.train, output)
    start_run(output, cfg, accelerator, ckpt is not None, plan.resolved(), data=plan.run_data())
    run = RunContext(output, ckpt, accelerator, time.perf_counter())
    result = recipe.run(plan, run, **run_kw)
    finish_run(output, result.record, plan.recorded_baseline(), accelerator, recipe.command)
    return result.record
