"""GLUE metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from pkd.metrics import compute_metrics, majority_baseline

# Six binary examples:      i:  0  1  2  3  4  5
PRED = [1, 0, 1, 1, 0, 1]
GOLD = [1, 0, 0, 1, 1, 1]
# Confusion (positive class 1): TP = {0,3,5} = 3, TN = {1} = 1, FP = {2} = 1, FN = {4} = 1.


def test_accuracy():
    # correct at i = 0, 1, 3, 5 -> 4 / 6
    assert compute_metrics(("accuracy",), PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}


def test_f1_is_binary_f1_of_label_1():
    # P = 3/(3+1) = 0.75, R = 3/(3+1) = 0.75 -> F1 = 2PR/(P+R) = 0.75
    assert compute_metrics(("f1",), PRED, GOLD)["f1"] == pytest.approx(0.75)
    # Swapping the roles of the classes changes it: class 0 has TP=1, FP=1, FN=1 -> F1 = 0.5.
    flip = [1 - v for v in PRED], [1 - v for v in GOLD]
    assert compute_metrics(("f1",), *flip)["f1"] == pytest.approx(0.5)


def test_macro_f1():
    # class 1: F1 = 0.75 (above); class 0: TP=1 (i=1), FP=1 (i=4), FN=1 (i=2)
    # -> F1_0 = 2*1/(2*1+1+1) = 0.5; macro = (0.75 + 0.5)/2 = 0.625
    assert compute_metrics(("macro_f1",), PRED, GOLD)["macro_f1"] == pytest.approx(0.625)


def test_macro_f1_three_classes():
    # gold 0 0 1 1 2 2, pred 0 1 1 1 2 0
    # class 0: TP=1, FP=1 (i=5), FN=1 (i=1) -> 2/(2+2) = 0.5
    # class 1: TP=2, FP=1 (i=1), FN=0      -> 4/(4+1) = 0.8
    # class 2: TP=1, FP=0,       FN=1 (i=5) -> 2/(2+1) = 2/3
    # macro = (0.5 + 0.8 + 2/3)/3 = 0.65556; accuracy = 4/6
    m = compute_metrics(("macro_f1", "accuracy"), [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_matthews_correlation():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1)/sqrt(4*4*2*2) = 2/8
    m = compute_metrics(("matthews_correlation",), PRED, GOLD)
    assert m["matthews_correlation"] == pytest.approx(0.25)
    # perfectly wrong -> -1
    inverse = compute_metrics(("matthews_correlation",), [1 - v for v in GOLD], GOLD)
    assert inverse["matthews_correlation"] == pytest.approx(-1.0)


X = [1.0, 2.0, 3.0, 4.0, 5.0]
Y = [2.0, 4.0, 5.0, 4.0, 5.0]


def test_pearson():
    # x - 3 = (-2,-1,0,1,2), y - 4 = (-2,0,1,0,1)
    # cov sum = 4+0+0+0+2 = 6; Σ(x-x̄)² = 10; Σ(y-ȳ)² = 4+0+1+0+1 = 6
    # r = 6/sqrt(60) = 0.7745967
    assert compute_metrics(("pearson",), X, Y)["pearson"] == pytest.approx(6 / math.sqrt(60))
    assert compute_metrics(("pearson",), X, Y)["pearson"] == pytest.approx(0.7745967, abs=1e-7)


def test_spearman_with_ties():
    # ranks of x: 1..5; ranks of y (ties averaged): 2->1, 4->2.5, 5->4.5 => (1,2.5,4.5,2.5,4.5)
    # centred: (-2,-1,0,1,2) and (-2,-0.5,1.5,-0.5,1.5)
    # cov sum = 4+0.5+0-0.5+3 = 7; Σ = 10 and 4+0.25+2.25+0.25+2.25 = 9 -> rho = 7/sqrt(90)
    rho = compute_metrics(("spearman",), X, Y)["spearman"]
    assert rho == pytest.approx(7 / math.sqrt(90))
    assert rho == pytest.approx(0.7378648, abs=1e-7)


def test_metrics_come_back_in_the_order_asked_as_floats():
    m = compute_metrics(("pearson", "spearman"), X, Y)
    assert list(m) == ["pearson", "spearman"]
    assert all(type(v) is float for v in m.values())


def test_constant_predictions_give_zero_correlation_not_nan():
    m = compute_metrics(("pearson", "spearman"), [3.0] * 5, Y)
    assert m == {"pearson": 0.0, "spearman": 0.0}
    m = compute_metrics(("pearson", "spearman"), X, [1.0] * 5)  # constant gold labels too
    assert m == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics(("matthews_correlation",), [1] * 6, GOLD) == {
        "matthews_correlation": 0.0
    }


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(("accuracy",), [0, 1, 1], [0, 1])
    with pytest.raises(ValueError):
        compute_metrics(("accuracy",), [], [])


def test_majority_baseline():
    # most frequent label 0 (3 of 4) -> accuracy 0.75
    assert majority_baseline(("accuracy",), [0, 0, 1, 0]) == pytest.approx(0.75)
    # the first name is the main metric: F1 of class 1 when always predicting 0 -> 0.0
    assert majority_baseline(("f1", "accuracy"), [0, 0, 1, 0]) == 0.0
    # always 1 on (1,1,0): P = 2/3, R = 1 -> F1 = 2*(2/3)/(2/3+1) = 0.8
    assert majority_baseline(("f1",), [1, 1, 0]) == pytest.approx(0.8)
    # MCC of a constant prediction is 0
    assert majority_baseline(("matthews_correlation",), [1, 1, 0, 1]) == 0.0
    # three classes: 2 is the most frequent (3 of 6)
    assert majority_baseline(("accuracy",), [2, 0, 2, 1, 2, 0]) == pytest.approx(0.5)
    # regression: predicting the mean is constant -> correlation 0
    assert majority_baseline(("pearson", "spearman"), [0.0, 1.5, 4.0], regression=True) == 0.0
