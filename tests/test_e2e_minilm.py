"""End to end through the CLI on the real pretrained MiniLM-L6 and real SST-2 sentences.

One teacher is fine-tuned for the module (a few hundred examples), then each distillation
method runs on it. Uses ../shared/data/glue/SST-2 (beside the repository, as in CI).
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_SST2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_SST2.is_dir(), reason="needs ../shared/data/glue/SST-2"),
    pytest.mark.usefixtures("all_cores"),
]

COMMON = ["--task", "sst2", "--data-dir", str(SHARED_SST2), "--max-length", "48", "--quiet"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, minilm, pkd_cli) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "teacher"
    pkd_cli.ok([
        "finetune", "--model", minilm, "--output", out, *COMMON,
        "--max-train-samples", "400", "--max-eval-samples", "200",
        "--epochs", "3", "--lr", "5e-5", "--batch-size", "16",
    ])  # fmt: skip
    return out


def test_finetune_writes_a_reloadable_run(teacher_run, pkd_cli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    for name in (
        "config.yaml",
        "metrics.json",
        "log.jsonl",
        "model/model.safetensors",
        "model/config.json",
    ):
        assert (teacher_run / name).is_file(), name
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    acc = metrics["best"]["metrics"]["dev"]["accuracy"]
    assert acc > metrics["majority_baseline"]["dev"] + 0.05  # a real teacher, not chance

    # `pkd evaluate` agrees with the metric recorded for the best checkpoint.
    argv = ["evaluate", "--model", teacher_run / "model", *COMMON, "--max-eval-samples", "200"]
    evaluated = json.loads(pkd_cli.ok(argv).out)
    assert evaluated["accuracy"] == pytest.approx(acc)
    assert (teacher_run / "eval_sst2_dev.json").is_file()

    # The saved model reloads with plain transformers and predicts the same labels.
    model = AutoModelForSequenceClassification.from_pretrained(teacher_run / "model").eval()
    tok = AutoTokenizer.from_pretrained(teacher_run / "model")
    sentences = [
        "a gorgeous , witty , seductive movie .",
        "the plot is nothing but boilerplate clichés .",
    ]
    with torch.no_grad():
        ids = model(**tok(sentences, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    clf = pipeline(
        "text-classification",
        model=str(teacher_run / "model"),
        tokenizer=str(teacher_run / "model"),
    )
    labels = [r["label"] for r in clf(sentences)]
    assert labels == [model.config.id2label[i] for i in ids]
    assert set(labels) <= {"0", "1"}


@pytest.mark.parametrize(
    "method,extra,terms",
    [
        ("ft", [], {"ce"}),
        ("kd", [], {"ce", "kd"}),
        ("pkd", ["--strategy", "skip"], {"ce", "kd", "pt"}),
        ("pkd", ["--strategy", "last"], {"ce", "kd", "pt"}),
    ],
)
def test_distill_each_method(teacher_run, tmp_path, method, extra, terms, pkd_cli):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / f"{method}{''.join(extra)}"
    pkd_cli.ok([
        "distill", "--teacher", teacher_run / "model", "--output", out, *COMMON,
        "--max-train-samples", "128", "--max-eval-samples", "100", "--epochs", "1",
        "--batch-size", "16", "--student-layers", "3", "--method", method, *extra,
    ])  # fmt: skip
    student = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert student.config.num_hidden_layers == 3
    assert student.config.id2label == {0: "0", 1: "1"}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {k for r in rows for k in r if k in ("ce", "kd", "pt")} == terms
    metrics = json.loads((out / "metrics.json").read_text())
    expected_map = {"skip": [[2, 1], [4, 2]], "last": [[4, 1], [5, 2]]}
    assert metrics["layer_map"] == (expected_map[extra[1]] if method == "pkd" else [])
    assert metrics["parameters"]["student"]["total"] < metrics["parameters"]["teacher"]["total"]
    config = (out / "config.yaml").read_text()
    assert f"method: {method}" in config
