"""What a run records as it trains: log.jsonl and trackers (`RunLog`), running means
(`Meter`), and what the run saw beyond its loss curve (`RunStats`)."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


class RunLog:
    """log.jsonl (every record) + the scalars to every tracker of --report-to (TensorBoard
    by default), from the main process only."""

    def __init__(self, output: Path, accelerator):
        self.path = output / "log.jsonl"
        self.accelerator = accelerator

    def write(self, record: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(scalars, step=step)

    def write_step(self, meter, stats, state, lr: float, batches_per_epoch: int) -> dict:
        """Write the record of optimizer step `state.step` (the meter's means since the last
        one, the lr it used) and return it; `stats` keeps its shares and CE."""
        epoch = state.epoch + state.batches_in_epoch / batches_per_epoch
        record = meter.record(step=state.step, epoch=epoch, lr=lr)
        self.write(record, state.step)
        stats.add_record(record, state.epoch)
        return record


class Meter:
    """Running means of the loss terms since the last log record, and examples/s over them."""

    def __init__(self) -> None:
        self.restart(time.perf_counter())

    def restart(self, now: float) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.examples, self.since = 0, now

    def add(self, values: dict[str, float], examples: int) -> None:
        """One micro-batch's loss terms and total (and gradient shares, on logged steps), and
        the examples it held (all processes)."""
        for k, v in values.items():
            self.sums[k] += v
            self.counts[k] += 1
        self.examples += examples

    def record(self, **extra) -> dict:
        """The means so far, then `extra`, then examples_per_s; starts a new span."""
        now = time.perf_counter()
        record = {k: v / self.counts[k] for k, v in self.sums.items()}
        record.update(extra, examples_per_s=self.examples / max(now - self.since, 1e-9))
        self.restart(now)
        return record


@dataclass
class RunStats:
    """What a run saw beyond its loss curve: examples with and without a gold label (a
    transfer set's), each term's gradient share (over logged steps, and over the first
    epoch), the last logged CE of the first epoch (`distillation.warn_collapse`), and whether
    `pkd.training.hooks.PatientShareCheck` has warned. Part of the `LoopState`, so a resumed
    run reports what the whole run saw."""

    seen: dict[str, int] = field(default_factory=lambda: {"labelled": 0, "transfer": 0})
    shares: dict[str, list[float]] = field(default_factory=dict)
    first_shares: dict[str, list[float]] = field(default_factory=dict)
    first_ce: float | None = None
    warned: bool = False

    def add_batch(self, labelled: int, examples: int, processes: int) -> None:
        """A micro-batch of `examples` per process, `labelled` of them with a gold label."""
        self.seen["labelled"] += labelled * processes
        self.seen["transfer"] += (examples - labelled) * processes

    def add_record(self, record: dict, epoch: int) -> None:
        """A log.jsonl record of `epoch` (0-based: the one in progress)."""
        for key, value in record.items():
            if key.startswith("share_"):
                self.shares.setdefault(key[6:], []).append(value)
                if epoch == 0:
                    self.first_shares.setdefault(key[6:], []).append(value)
        if epoch == 0 and "ce" in record:
            self.first_ce = record["ce"]

    def summary(self) -> dict:
        def mean(d: dict[str, list[float]]) -> dict[str, float]:
            return {k: round(sum(v) / len(v), 6) for k, v in d.items() if v}

        first = {"ce": self.first_ce, "gradient_shares": mean(self.first_shares)}
        return {
            "examples_seen": self.seen,
            "gradient_shares": mean(self.shares),
            "first_epoch": first if self.first_ce is not None else None,
        }
