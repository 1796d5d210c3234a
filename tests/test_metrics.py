"""GLUE metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from pkd.data.metrics import compute_metrics, majority_baseline

# Six binary examples:      i:  0  1  2  3  4  5
PRED = [1, 0, 1, 1, 0, 1]
GOLD = [1, 0, 0, 1, 1, 1]
# Confusion (positive class 1): TP = {0,3,5} = 3, TN = {1} = 1, FP = {2} = 1, FN = {4} = 1.


def test_accuracy():
    # correct at i = 0, 1, 3, 5 -> 4 / 6
    assert compute_metrics(("accuracy",), PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}


def test_f1_is_f1_of_the_positive_class():
    # positive = 1: P = 3/(3+1) = 0.75, R = 3/(3+1) = 0.75 -> F1 = 2PR/(P+R) = 0.75
    assert compute_metrics(("f1",), PRED, GOLD, positive=1)["f1"] == pytest.approx(0.75)
    # positive = 0: class 0 has TP=1 (i=1), FP=1 (i=4), FN=1 (i=2) -> F1 = 2/(2+1+1) = 0.5
    assert compute_metrics(("f1",), PRED, GOLD, positive=0)["f1"] == pytest.approx(0.5)


def test_f1_of_one_class_among_three():
    # gold 0 0 1 1 2 2, pred 0 1 1 1 2 0; class 2 against the rest: TP=1 (i=4), FP=0, FN=1
    # (i=5) -> F1 = 2/(2+0+1) = 2/3
    m = compute_metrics(("f1",), [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2], positive=2)
    assert m["f1"] == pytest.approx(2 / 3)


def test_f1_without_a_positive_class_is_refused():
    with pytest.raises(ValueError, match="positive class"):
        compute_metrics(("accuracy", "f1"), PRED, GOLD)


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
    assert majority_baseline(("f1", "accuracy"), [0, 0, 1, 0], positive=1) == 0.0
    # always 1 on (1,1,0): P = 2/3, R = 1 -> F1 = 2*(2/3)/(2/3+1) = 0.8
    assert majority_baseline(("f1",), [1, 1, 0], positive=1) == pytest.approx(0.8)
    # the same labels with the positive class at id 0: always 1 never finds it -> 0.0
    assert majority_baseline(("f1",), [1, 1, 0], positive=0) == 0.0
    # MCC of a constant prediction is 0
    assert majority_baseline(("matthews_correlation",), [1, 1, 0, 1]) == 0.0
    # three classes: 2 is the most frequent (3 of 6)
    assert majority_baseline(("accuracy",), [2, 0, 2, 1, 2, 0]) == pytest.approx(0.5)
    # regression: predicting the mean is constant -> correlation 0
    assert majority_baseline(("pearson", "spearman"), [0.0, 1.5, 4.0], regression=True) == 0.0


# ---------------------------------------------------------------------------------------------
# F1 scores the positive class by name, whatever the model's label order


MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"


def _write_mrpc(d, n: int = 24):
    """An MRPC-layout directory; dev has 14 paraphrases ('1') and 10 non-paraphrases ('0')."""
    from conftest import sentiment_rows

    d.mkdir(parents=True, exist_ok=True)
    rows = sentiment_rows(n, seed=3)
    for name in ("train", "dev"):
        lines = [MRPC_HEADER] + [
            f"{'1' if i < 14 else '0'}\t{i}\t{i + 100}\t{text}\t{rows[-1 - i][0]}"
            for i, (text, _) in enumerate(rows)
        ]
        (d / f"{name}.tsv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return d


def _predicted_names(model_dir, text_a, text_b=None) -> list[str]:
    """A model's predictions by its own forward pass, as names through its id2label."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ids = net(**tok(text_a, text_b, padding=True, return_tensors="pt")).logits.argmax(-1)
    return [net.config.id2label[i] for i in ids.tolist()]


def test_f1_of_a_model_with_reversed_labels_scores_class_1(tiny_bert, tmp_path):
    from conftest import make_tiny_teacher
    from sklearn.metrics import f1_score

    from pkd.api import evaluate
    from pkd.config.runs import DistillRunConfig
    from pkd.config.sections import DataConfig, DistillConfig
    from pkd.recipes.distill import plan_distill

    data = _write_mrpc(tmp_path / "MRPC")
    teacher = make_tiny_teacher(tmp_path / "teacher", tiny_bert, labels=("1", "0"))
    lines = (data / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    gold = [r[0] for r in rows]
    pred = _predicted_names(teacher, [r[3] for r in rows], [r[4] for r in rows])
    expected = f1_score(gold, pred, pos_label="1")
    assert expected != pytest.approx(f1_score(gold, pred, pos_label="0"))  # the test can fail

    result = evaluate(str(teacher), DataConfig(task="mrpc", data_dir=str(data)))
    assert result["f1"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(
        sum(g == p for g, p in zip(gold, pred, strict=True)) / 24
    )

    cfg = DistillRunConfig(
        teacher=str(teacher),
        output=str(tmp_path / "run"),
        data=DataConfig(task="mrpc", data_dir=str(data), max_length=32),
        distill=DistillConfig(student_layers=2, allow_weak_teacher=True),
    )
    plan = plan_distill(cfg)
    assert plan.spec.labels == ("1", "0")  # the teacher's order
    assert plan.teacher_metrics["dev"]["f1"] == pytest.approx(expected)
    # always '1' (14 of 24): P = 14/24, R = 1 -> F1 = 2 * 14/24 / (14/24 + 1) = 28/38
    assert plan.baseline["dev"] == pytest.approx(28 / 38)


def test_positive_label_for_custom_data(tiny_bert, tmp_path):
    from conftest import make_tiny_teacher, sentiment_rows
    from sklearn.metrics import f1_score

    from pkd.api import evaluate
    from pkd.config.sections import DataConfig
    from pkd.errors import PkdError

    rows = [(t, "pos" if y == "1" else "neg") for t, y in sentiment_rows(20, seed=4)]
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    model = make_tiny_teacher(tmp_path / "model", tiny_bert, labels=("pos", "neg"))
    data = {"validation_file": str(dev), "text_columns": ["text"]}

    plain = evaluate(str(model), DataConfig(**data))
    assert "f1" not in plain  # custom data: accuracy and macro F1 only

    gold, pred = [y for _, y in rows], _predicted_names(model, [t for t, _ in rows])
    for positive in ("pos", "neg"):
        m = evaluate(str(model), DataConfig(**data, positive_label=positive))
        assert m["f1"] == pytest.approx(f1_score(gold, pred, pos_label=positive))
        assert (m["accuracy"], m["macro_f1"]) == (plain["accuracy"], plain["macro_f1"])

    with pytest.raises(PkdError) as e:
        evaluate(str(model), DataConfig(**data, positive_label="1"))
    assert (
        str(e.value)
        == "--positive-label: '1' is not one of the labels ['pos', 'neg'] of task custom"
    )


def test_accuracy_is_sklearns_on_many_labels():
    """numpy's accuracy (no scikit-learn import) agrees with scikit-learn's."""
    import numpy as np
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(0)
    for n, classes in ((1, 2), (7, 3), (1000, 4)):
        p, y = rng.integers(0, classes, n), rng.integers(0, classes, n)
        assert compute_metrics(("accuracy",), p, y)["accuracy"] == accuracy_score(y, p)


def test_a_distill_run_from_files_imports_no_sklearn():
    """Start-up: scikit-learn (and pandas with it) loads only when a task's metric needs it,
    not with the commands (about a second of every run on 2 cores)."""
    import subprocess
    import sys

    code = (
        "import sys, pkd.cli, pkd.recipes.distill, pkd.recipes.finetune\n"
        "from pkd.data.metrics import compute_metrics\n"
        "compute_metrics(('accuracy',), [1, 0], [1, 1])\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
        "compute_metrics(('matthews_correlation',), [1, 0], [1, 1])\n"
        "assert 'sklearn' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
