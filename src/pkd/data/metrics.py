"""GLUE metrics from predictions and gold labels: accuracy with numpy, the others with
scikit-learn and scipy, imported when a task asks for them (scikit-learn pulls in pandas: about
a second of every run's start-up, for a metric most tasks do not use)."""

from __future__ import annotations

import numpy as np


def accuracy(p, y, pos) -> float:
    return float(np.mean(np.asarray(p) == np.asarray(y)))


def f1(p, y, pos) -> float:
    """F1 of the positive class (GLUE: MRPC's paraphrase, QQP's duplicate), one class against
    the rest; `pos` is its label id in the model's order (`TaskSpec.positive_index`)."""
    from sklearn.metrics import f1_score

    return f1_score(y, p, labels=[pos], average="macro")


def macro_f1(p, y, pos) -> float:
    from sklearn.metrics import f1_score

    return f1_score(y, p, average="macro")


def matthews_correlation(p, y, pos) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(y, p)


def pearson(p, y, pos) -> float:
    from scipy.stats import pearsonr

    return pearsonr(p, y)[0]


def spearman(p, y, pos) -> float:
    from scipy.stats import spearmanr

    return spearmanr(p, y)[0]


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(
    names: tuple[str, ...], predictions, labels, positive: int | None = None
) -> dict[str, float]:
    """Score predictions (label ids, or floats for regression) against gold labels.

    Args:
        names: metric names (keys of METRICS).
        predictions / labels: label ids, or floats for regression.
        positive: the label id of the positive class; required by `f1`.

    Returns a dict metric name -> value in [0, 1] (correlations in [-1, 1]); a constant
    prediction gives a correlation of 0.0 rather than NaN.
    """
    p, y = np.asarray(predictions), np.asarray(labels)
    if len(p) != len(y) or len(p) == 0:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    if "f1" in names and positive is None:
        raise ValueError("f1 needs the label id of the positive class")
    out = {}
    for name in names:
        if name in ("pearson", "spearman") and (np.ptp(p) == 0 or np.ptp(y) == 0):
            out[name] = 0.0
            continue
        out[name] = float(METRICS[name](p, y, positive))
    return out


def majority_baseline(
    names: tuple[str, ...], labels, regression: bool = False, positive: int | None = None
) -> float:
    """The main metric of always predicting the most frequent label (mean for regression)."""
    y = np.asarray(labels)
    if regression:
        return compute_metrics(names[:1], np.full(len(y), y.mean()), y)[names[0]]
    values, counts = np.unique(y, return_counts=True)
    guess = np.full(len(y), values[counts.argmax()])
    return compute_metrics(names[:1], guess, y, positive)[names[0]]
