"""Places where a caller can watch or stop a run (`LoopHooks`, installed with `use_hooks`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
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
    Hooks run on every process; an exception from one stops the run like one from the loop.
    """

    def on_loss(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Each micro-batch's unweighted loss terms for optimizer step `step` (1-based, as in
        log.jsonl), before they are checked; may replace them (a test's NaN)."""

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
