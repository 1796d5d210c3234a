"""Places where a caller can watch or stop a run (`LoopHooks`, installed with `use_hooks` or
by a recipe), and the hooks the recipes install: what a run's task knows that the loop does
not (`LabelCounts`, `PatientShareCheck`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pkd.training.checkpoints import (
    LoopState,
)

logger = logging.getLogger(__name__)


class LoopHooks:
    """Places where a caller can watch or stop a run; each does nothing here.

    Subclass and override what you need, then install instances with `use_hooks`: they reach
    every run inside the block, also those of a command (`pkd.cli.main`, a sweep's trials).
    A recipe gives its own to its run (`pkd.training.loop.Run.hooks`). Hooks run on every
    process; an exception from one stops the run like one from the loop.
    """

    def on_loss(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Each micro-batch's unweighted loss terms for optimizer step `step` (1-based, as in
        log.jsonl), before they are checked; may replace them (a test's NaN)."""

    def on_batch(self, state: LoopState, batch: dict) -> None:
        """After each micro-batch's step, with the batch it trained on."""

    def on_epoch_end(self, state: LoopState) -> None:
        """After each pass over the training set (or the last steps of --max-steps), before
        its evaluation."""

    def on_evaluate(self, state: LoopState, metrics: dict[str, dict[str, float]]) -> None:
        """After each epoch's evaluation and keeping the best model, before its checkpoint."""

    def on_checkpoint(self, state: LoopState, path: Path) -> None:
        """After the checkpoint of `state` is complete at `path`."""


_INSTALLED: list[LoopHooks] = []


@contextmanager
def use_hooks(*hooks: LoopHooks) -> Iterator[None]:
    """Every `train()` in this process also runs `hooks` inside this block."""
    _INSTALLED.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _INSTALLED.remove(h)


def installed() -> list[LoopHooks]:
    """The hooks of the `use_hooks` blocks around this call, outermost first."""
    return list(_INSTALLED)


class LabelCounts(LoopHooks):
    """Counts the examples trained on with and without a gold label (a transfer set's) into
    the run's stats (metrics.json's `examples_seen`). `labelled(labels)`: how many of a
    batch's labels are gold (`pkd.data.transfer.labelled_count`); `processes`: the run's."""

    def __init__(self, labelled: Callable[[torch.Tensor], int], processes: int):
        self.labelled, self.processes = labelled, processes

    def on_batch(self, state: LoopState, batch: dict) -> None:
        if "labels" in batch:
            labels = batch["labels"]
            state.stats.add_batch(self.labelled(labels), len(labels), self.processes)


PT_SHARE_FLOOR = 0.01  # a patient term under this share of the gradient all epoch 1: warned


class PatientShareCheck(LoopHooks):
    """Warns once, after the first epoch, when the patient term's gradient share stayed under
    1% all epoch: at this `beta` it barely moves the student (PKD, `pkd pretrain`)."""

    def __init__(self, beta: float):
        self.beta = beta

    def on_epoch_end(self, state: LoopState) -> None:
        stats = state.stats
        pt = stats.first_shares.get("pt")
        if state.epoch != 1 or stats.warned or not pt or max(pt) >= PT_SHARE_FLOOR:
            return
        stats.warned = True
        logger.warning(
            "the patient loss's share of the gradient stayed under %.0f%% through the first "
            "epoch (at most %.2f%% at beta=%g): it barely moves the student; try a larger "
            "--beta (e.g. %g) and watch share_pt in log.jsonl",
            100 * PT_SHARE_FLOOR,
            100 * max(pt),
            self.beta,
            self.beta * 10,
        )
