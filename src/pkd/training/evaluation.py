"""Evaluation: a model's logits over a loader, predictions, the task's metrics, and
how each epoch picks the best model (`Evaluation`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pkd.data.metrics import compute_metrics
from pkd.objectives.objective import (
    model_inputs,
)
from pkd.tasks import REGRESSION, TaskSpec

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and gold labels, if any) for a prepared loader, gathered over processes."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits = model(**model_inputs(batch)).logits
        if "labels" in batch:
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_labels.append(labels.float().cpu().numpy())
        else:
            logits = accelerator.gather_for_metrics(logits)
        all_logits.append(logits.float().cpu().numpy())
    model.train()
    labels = np.concatenate(all_labels) if all_labels else None
    return np.concatenate(all_logits), labels


def predictions(logits: np.ndarray, problem_type: str) -> np.ndarray:
    return logits.reshape(-1) if problem_type == REGRESSION else logits.argmax(-1)


# More metrics of a split, from (the loader's `split` or None, predictions, gold labels):
# RACE's accuracy per level (`pkd.data.multiple_choice.level_metrics`), given by the recipes.
SplitMetrics = Callable[[object, np.ndarray, np.ndarray], dict[str, float]]


def score(
    model, loader, spec: TaskSpec, accelerator, more: SplitMetrics | None = None
) -> dict[str, float]:
    """The task's metrics of a model on a prepared, labelled loader, and `more`'s.

    spec.labels must be in the model's output order: F1 scores `spec.positive_label` by name.
    """
    logits, labels = predict_logits(model, loader, accelerator)
    preds = predictions(logits, spec.problem_type)
    if spec.problem_type != REGRESSION:
        labels = labels.astype(np.int64)
    metrics = compute_metrics(spec.metrics, preds, labels, spec.positive_index())
    if more is not None:  # eval loaders keep the dataset's order: predictions line up with it
        metrics.update(more(getattr(loader.dataset, "split", None), preds, labels))
    return metrics


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
    def of_task(cls, spec: TaskSpec, more: SplitMetrics | None = None) -> Evaluation:
        """The task's metrics (and `more`'s), its main metric selecting the best model."""
        return cls(
            lambda model, loader, acc: score(model, loader, spec, acc, more), spec.main_metric
        )

    def better(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best
