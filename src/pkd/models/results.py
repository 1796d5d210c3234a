"""A run's results, typed: metrics.json as its readers see it (`RunResult`).

`pkd finetune`, `pkd distill` and `pkd pretrain` each write one metrics.json, last (the mark of
a finished run); model cards, reports, `pkd compare` and `pkd sweep` read it through
`RunResult.load(run_dir)`. The file keeps its JSON as each command writes it (`record`); the
properties are the facts its readers use, with None (or empty) where a command does not
record one (a general student has no task, a teacher no method).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from pkd.errors import PkdError
from pkd.fsio import write_json

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run (its best, its final, or an epoch of its history)."""

    step: int | None
    epoch: float | None
    metrics: dict[str, dict[str, float]]  # split -> metric -> value

    @classmethod
    def of(cls, record: dict | None) -> Evaluation | None:
        if not record:
            return None
        return cls(record.get("step"), record.get("epoch"), record.get("metrics") or {})

    def score(self, split: str, metric: str) -> float:
        return self.metrics[split][metric]


@dataclass(frozen=True)
class RunResult:
    """A finished run's metrics.json: `record` as written, and the facts its readers use
    (None or empty where the command does not record them)."""

    record: dict = field(repr=False)
    best: Evaluation | None = None  # the evaluation of the saved model
    history: list[Evaluation] = field(default_factory=list)
    data: dict[str, dict] = field(default_factory=dict)  # split -> source, sha256, examples
    wall_seconds: dict[str, float] = field(default_factory=dict)
    gradient_shares: dict[str, float] = field(default_factory=dict)  # mean share per loss term
    teacher_cache: dict = field(default_factory=dict)  # path, reused, build seconds
    # task runs (finetune, distill)
    task: str | None = None
    pooling: str | None = None
    majority_baseline: dict[str, float] = field(default_factory=dict)
    # distilled runs (distill; pretrain records its student's shape and provenance)
    method: str | None = None
    student_init: str | None = None
    student_layers: int | None = None
    layer_map: list[list[int]] = field(default_factory=list)  # teacher -> student pairs
    teacher_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    student: dict = field(default_factory=dict)

    @classmethod
    def of(cls, record: dict) -> RunResult:
        """The typed view of metrics.json's content."""
        given = {f.name: record[f.name] for f in fields(cls)[1:] if record.get(f.name) is not None}
        given["best"] = Evaluation.of(record.get("best"))
        given["history"] = [Evaluation.of(e) for e in given.get("history", [])]
        if not isinstance(given.get("student", {}), dict):
            del given["student"]
        return cls(record, **given)

    @classmethod
    def load(cls, run_dir: Path) -> RunResult:
        path = Path(run_dir) / METRICS_FILE
        try:
            return cls.of(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise PkdError(f"{path}: cannot read metrics ({e})") from None

    @staticmethod
    def exists(run_dir: Path) -> bool:
        """Whether `run_dir` holds a finished run."""
        return (Path(run_dir) / METRICS_FILE).is_file()

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / METRICS_FILE, self.record)

    def best_score(self, split: str, metric: str) -> float:
        """The selection metric of the best epoch (the saved model) on `split`."""
        return self.best.score(split, metric)

    @property
    def parameters(self) -> int | None:
        """The trained model's parameter count (the student's, for a distilled run)."""
        params = self.record.get("parameters") or {}
        return (params.get("student") or params).get("total")
