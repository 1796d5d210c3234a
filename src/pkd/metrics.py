"""GLUE metrics from predictions and gold labels, computed with scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),  # binary F1 of the positive class (label id 1), as GLUE
    "macro_f1": lambda p, y: f1_score(y, p, average="macro"),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearman": lambda p, y: spearmanr(p, y)[0],
}


def compute_metrics(names: tuple[str, ...], predictions, labels) -> dict[str, float]:
    """Score predictions (label ids, or floats for regression) against gold labels.

    Returns a dict metric name -> value in [0, 1] (correlations in [-1, 1]); a constant
    prediction gives a correlation of 0.0 rather than NaN.
    """
    p, y = np.asarray(predictions), np.asarray(labels)
    if len(p) != len(y) or len(p) == 0:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    out = {}
    for name in names:
        if name in ("pearson", "spearman") and (np.ptp(p) == 0 or np.ptp(y) == 0):
            out[name] = 0.0
            continue
        out[name] = float(METRICS[name](p, y))
    return out


def majority_baseline(names: tuple[str, ...], labels, regression: bool = False) -> float:
    """The main metric of always predicting the most frequent label (mean for regression)."""
    y = np.asarray(labels)
    if regression:
        return compute_metrics(names[:1], np.full(len(y), y.mean()), y)[names[0]]
    values, counts = np.unique(y, return_counts=True)
    return compute_metrics(names[:1], np.full(len(y), values[counts.argmax()]), y)[names[0]]
