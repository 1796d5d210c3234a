"""Evaluation: a model's logits over a loader, predictions, the task's metrics, and
how each epoch picks the best model (`Evaluation`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pkd.data.kinds import task_kind
from pkd.objectives.objective import (
    model_inputs,
)
from pkd.tasks import TaskSpec

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and gold labels, if any) for a prepared loader, gathered over processes, in
    the dataset's order: batches that carry `example_index` (a length-sorted
    `pkd.data.loading.eval_loader`) are put back in it."""
    model.eval()
    all_logits, all_labels, all_index = [], [], []
    for batch in loader:
        logits = model(**model_inputs(batch)).logits
        extra = [batch[k] for k in ("labels", "example_index") if k in batch]
        logits, *extra = accelerator.gather_for_metrics((logits, *extra))
        if "labels" in batch:
            all_labels.append(extra.pop(0).float().cpu().numpy())
        if "example_index" in batch:
            all_index.append(extra.pop(0).cpu().numpy())
        all_logits.append(logits.float().cpu().numpy())
    model.train()
    logits = np.concatenate(all_logits)
    labels = np.concatenate(all_labels) if all_labels else None
    if all_index:
        order = np.argsort(np.concatenate(all_index), kind="stable")
        logits, labels = logits[order], labels[order] if labels is not None else None
    return logits, labels


def score(model, loader, spec: TaskSpec, accelerator) -> dict[str, float]:
    """The task's metrics of a model on a prepared, labelled loader (RACE: also accuracy per
    level; `predict_logits` returns the dataset's order, so predictions line up with its
    examples).

    spec.labels must be in the model's output order: F1 scores `spec.positive_label` by name.
    """
    logits, labels = predict_logits(model, loader, accelerator)
    kind = task_kind(spec)
    split = getattr(loader.dataset, "split", None)
    return kind.metrics(spec, kind.predictions(logits), labels, split)


@dataclass
class Evaluation:
    """How each epoch scores the student and which model it keeps: `score(model, loader,
    accelerator)` gives a split's metrics, `metric` (of the first eval split) selects the
    best model. A task's metrics (`of_task`), or `pkd pretrain`'s held-out distillation loss
    (lower is better)."""

    score: Callable[..., dict[str, float]]
    metric: str
    higher_is_better: bool = True

    @classmethod
    def of_task(cls, spec: TaskSpec) -> Evaluation:
        return cls(lambda model, loader, acc: score(model, loader, spec, acc), spec.main_metric)

    def better(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best
