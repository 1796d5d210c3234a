"""`--dry-run` plans and the guard-rails against silent failures.

Each guard-rail is tested both ways: it fires when its condition holds and stays quiet (or
lets the run through) when it does not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, make_tiny_teacher, write_sst2

from pkd import api
from pkd.config.files import build
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
from pkd.config.sections import DataConfig, DistillConfig, TrainConfig
from pkd.data import loading as D
from pkd.data.loading import encode
from pkd.data.splits import Split
from pkd.errors import PkdError
from pkd.recipes import distill as distillation
from pkd.tasks import CLASSIFICATION, TaskSpec

# ---------------------------------------------------------------------------------------------
# Fixtures: a trained teacher (clearly above chance), its label-reversed twin, and a teacher
# trained 0 steps (zeroed head: constant predictions, the constant-prediction baseline).


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    bert = make_tiny_bert(root / "bert")
    data = write_sst2(root / "SST-2")
    cfg = FinetuneRunConfig(
        model=str(bert),
        output=str(root / "ft"),
        data=DataConfig(task="sst2", data_dir=str(data), max_length=16),
        train=TrainConfig(epochs=8, lr=3e-3, batch_size=8, quiet=True),
    )
    metrics = api.finetune(cfg)
    assert metrics["best"]["metrics"]["dev"]["accuracy"] >= 0.8  # a strong teacher
    teacher = root / "ft" / "model"
    return {
        "root": root,
        "bert": bert,
        "data": data,
        "teacher": teacher,
        "reversed": _reversed_copy(teacher, root / "reversed"),
        "untrained": _zero_head(make_tiny_teacher(root / "untrained", bert)),
    }


def _reversed_copy(teacher: Path, out: Path) -> Path:
    """The same classifier with its outputs in the opposite order (id2label "1", "0")."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))
    names = [model.config.id2label[i] for i in range(2)][::-1]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
    return out


def _zero_head(path: Path) -> Path:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    model.save_pretrained(path, safe_serialization=True)
    return path


def distill_argv(world, teacher, output, *extra):
    argv = ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", world["data"]]
    argv += ["--output", output, "--max-length", "16", "--batch-size", "8", "--quiet"]
    return [*argv, *extra]


# ---------------------------------------------------------------------------------------------
# --dry-run


def test_distill_dry_run_prints_the_plan_and_writes_nothing(world, tmp_path, pkd_cli):
    out = tmp_path / "run"
    stdout = pkd_cli.ok(distill_argv(world, world["teacher"], out, "--dry-run")).out
    # 4-layer teacher -> 3-layer PKD-Skip student: student layers 1, 2 learn from teacher 1, 2
    assert "layer map:  teacher->student 1->1, 2->2" in stdout
    assert f"student:    3 layers from {world['bert']}" in stdout
    assert "teacher:    " in stdout and "(4 layers, hidden 32" in stdout
    assert "labels 0, 1" in stdout
    assert (
        "loss:       0.5*CE + 0.5*KD(kl, x T^2, T=10) + 100*PT(mean, L2-normalised [CLS])" in stdout
    )
    # 64 examples x (2 logits x 4 B + 5 layers x 32 x 2 B) = 20,992 B
    assert "cache:      21.0 kB on disk at " in stdout and "(to build)" in stdout
    assert "train: 64 examples, 0.0% truncated" in stdout
    assert "estimate:   about " in stdout and "32 steps x " in stdout  # 4 epochs x 8 batches
    assert "from 3 timed steps of 8 examples" in stdout
    assert not out.exists()
    assert not (tmp_path / "teacher-cache").exists()  # no cache built either

    # The Python API returns the same plan as data.
    cfg = DistillRunConfig(
        teacher=str(world["teacher"]),
        output=str(out),
        data=DataConfig(task="sst2", data_dir=str(world["data"]), max_length=16),
        train=TrainConfig(batch_size=8, epochs=2, quiet=True),
        distill=DistillConfig(method="pkd", strategy="last", student_layers=2),
    )
    plan = api.distill(cfg, dry_run=True)
    assert plan["layer_map"] == [[3, 1]]
    assert plan["cache_bytes"] == plan["teacher_cache"]["bytes"] == 64 * (2 * 4 + 5 * 32 * 2)
    assert plan["estimate"]["steps"] == 16 and plan["estimate"]["total_seconds"] > 0
    text = plan.describe()  # what --dry-run prints, from the same plan
    assert text.startswith("pkd distill (dry run): nothing trained, nothing written\n")
    assert "layer map:  teacher->student 3->1 (+ logits of the last layer)" in text
    assert "32 steps x " not in text and "16 steps x " in text
    assert not out.exists()


def _stsb(d: Path, n: int) -> Path:
    """An STS-B directory of n train and n dev pairs with scores 0..5."""
    d.mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [
        f"{i}\tmain\tf\t2012\t{i}\tn\tn\tgood film {i}\ta good film\t{i % 6}.0" for i in range(n)
    ]
    for name in ("train.tsv", "dev.tsv"):
        (d / name).write_text("\n".join([head, *rows]) + "\n")
    return d


def test_regression_dry_run_shows_the_mse_kd_it_trains(world, tmp_path, pkd_cli):
    """STS-B's KD is an MSE on the teacher's predictions, without T (`kd_loss`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = tmp_path / "stsb-teacher"
    model = AutoModelForSequenceClassification.from_pretrained(
        world["bert"], num_labels=1, problem_type="regression"
    )
    model.config.update({"pkd_base_model": str(world["bert"])})
    model.save_pretrained(teacher)
    AutoTokenizer.from_pretrained(world["bert"]).save_pretrained(teacher)
    argv = ["distill", "--teacher", teacher, "--task", "stsb", "--data-dir",
            _stsb(tmp_path / "STS-B", 16), "--output", tmp_path / "run", "--max-length", "16",
            "--student-layers", "2", "--allow-weak-teacher", "--quiet", "--dry-run"]  # fmt: skip
    stdout = pkd_cli.ok(argv).out
    assert (
        "loss:       0.5*MSE(gold) + 0.5*KD(MSE on the teacher's predictions, no T) "
        "+ 100*PT(mean, L2-normalised [CLS])"
    ) in stdout.splitlines()
    assert not (tmp_path / "run").exists()


def test_finetune_dry_run_is_a_real_plan(world, tmp_path, pkd_cli):
    out = tmp_path / "ft"
    argv = ["finetune", "--model", world["bert"], "--task", "sst2", "--data-dir", world["data"]]
    argv += ["--output", out, "--max-length", "16", "--batch-size", "16", "--epochs", "2"]
    stdout = pkd_cli.ok([*argv, "--dry-run", "--quiet"]).out
    assert "model:      " in stdout and "(bert, 4 layers, hidden 32" in stdout
    assert "task:       sst2, labels 0, 1" in stdout
    assert "train: 64 examples, 0.0% truncated" in stdout
    assert "dev: 32 examples" in stdout
    assert "baseline:   majority class dev 0.5625" in stdout  # 18 of 32 dev rows are one class
    assert "8 steps x " in stdout  # 2 epochs x 4 batches of 16
    assert not out.exists()


def test_compare_dry_run_prints_maps_cache_and_estimate(world, tmp_path, pkd_cli):
    out = tmp_path / "cmp"
    argv = ["compare", "--teacher", world["teacher"], "--output", out, "--task", "sst2"]
    argv += ["--data-dir", world["data"], "--max-length", "16", "--bench-seq-length", "16"]
    argv += ["--methods", "kd,pkd-last", "--student-layers", "3", "--seeds", "1,2", "--dry-run"]
    stdout = pkd_cli.ok([*argv, "--quiet", "--batch-size", "8"]).out
    assert "| 3 | pkd-last | 2->1 3->2 |" in stdout
    assert "| 3 | kd | - |" in stdout
    assert "Teacher cache: 21.0 kB on disk at " in stdout
    assert "Estimate: about " in stdout and "for 4 runs" in stdout
    assert not out.exists()


def test_sweep_dry_run_prints_map_cache_and_estimate(world, tmp_path, pkd_cli):
    out = tmp_path / "sweep"
    argv = ["sweep", "--teacher", world["teacher"], "--output", out, "--task", "sst2"]
    argv += ["--data-dir", world["data"], "--max-length", "16", "--grid", "paper"]
    argv += ["--student-layers", "2", "--batch-size", "8", "--dry-run", "--quiet"]
    stdout = pkd_cli.ok(argv).out
    assert "First trial: teacher->student map 2->1; loss " in stdout
    assert "Teacher cache: 21.0 kB on disk at " in stdout
    assert "Estimate: about " in stdout and "for 108 trials without pruning" in stdout
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alpha", "2"], "--alpha: must be in [0, 1], got 2.0"),
        (["--student-layers", "9"], "--student-layers: "),
        (["--preset", "book"], "--preset: 'book' is not one of paper"),
        pytest.param(  # timed with the run's own accelerator: before, a plan was printed
            ["--mixed-precision", "fp16"],
            "--mixed-precision: fp16 needs a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU"),
        ),
    ],
)
def test_dry_run_with_a_bad_option_exits_2_before_any_plan(
    world, tmp_path, extra, message, pkd_cli
):
    err = pkd_cli.error(
        distill_argv(world, world["teacher"], tmp_path / "run", "--dry-run", *extra)
    )
    assert err.startswith(message), err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Weak teacher


def test_near_chance_teacher_is_refused_unless_allowed(world, tmp_path, caplog, pkd_cli):
    argv = distill_argv(world, world["untrained"], tmp_path / "run", "--dry-run")
    # zero head: every prediction is "0", the majority class (18 of 32 dev rows): the
    # constant-prediction baseline itself
    assert pkd_cli.error(argv) == (
        "--teacher: it scores accuracy=0.5625 on dev, not 2 points above the majority "
        "baseline 0.5625; fine-tune it better or pass --allow-weak-teacher"
    )
    with caplog.at_level(logging.WARNING, logger="pkd.recipes.distill"):
        stdout = pkd_cli.ok([*argv, "--allow-weak-teacher"]).out
    assert "layer map:" in stdout
    assert "baseline 0.5625 (allowed)" in caplog.text
    # The trained teacher passes without the flag (the check is not always on).
    pkd_cli.ok(distill_argv(world, world["teacher"], tmp_path / "run", "--dry-run"))


def test_teacher_dev_scores_come_from_its_own_run_when_the_dev_data_match(
    world, tmp_path, monkeypatch
):
    """A teacher fine-tuned by pkd on the same dev data is not scored again: its run's
    recorded best scores are used. Other dev data (length, size), or weights newer than the
    run's metrics.json, and it is scored."""
    import os
    import shutil

    run = tmp_path / "ft"
    shutil.copytree(world["root"] / "ft", run)  # copy2: the files keep their times
    recorded = json.loads((run / "metrics.json").read_text())["best"]["metrics"]
    calls = []
    real = distillation.teacher_scores

    def scored(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(distillation, "teacher_scores", scored)

    def plan(**data):
        cfg = DistillRunConfig(
            teacher=str(run / "model"),
            output=str(tmp_path / "out"),
            data=DataConfig(task="sst2", data_dir=str(world["data"]), **data),
            train=TrainConfig(quiet=True),
            distill=DistillConfig(student_layers=2),
        )
        return distillation.plan_distill(cfg).teacher_metrics

    assert plan(max_length=16) == {"dev": recorded["dev"]} and calls == []
    assert plan(max_length=12)["dev"]["accuracy"] >= 0.5 and len(calls) == 1
    plan(max_length=16, max_eval_samples=16)
    assert len(calls) == 2
    weights = next(run.joinpath("model").glob("*.safetensors"))
    later = (run / "metrics.json").stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))  # replaced after the run finished
    assert plan(max_length=16)["dev"]["accuracy"] == pytest.approx(recorded["dev"]["accuracy"])
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------
# Unlabelled splits


def test_evaluate_refuses_unlabelled_splits(world, tmp_path, pkd_cli):
    base = ["evaluate", "--model", world["teacher"], "--task", "sst2", "--max-length", "16"]
    assert pkd_cli.error([*base, "--data-dir", world["data"], "--split", "test"]) == (
        "--split: test has no labels in GLUE; use `pkd predict` for test predictions"
    )
    # GLUE's test.tsv given as the dev file: no label column -> the same pointer, naming it.
    test_tsv = world["data"] / "test.tsv"
    assert pkd_cli.error([*base, "--validation-file", test_tsv]) == (
        f"{test_tsv}: has no 'label' labels to evaluate against; "
        "use `pkd predict` for unlabelled data"
    )
    # A custom CSV without its label column.
    csv = tmp_path / "unlabelled.csv"
    csv.write_text("text\ngood great movie\nawful bad plot\n")
    custom = ["evaluate", "--model", world["teacher"], "--text-columns", "text"]
    err = pkd_cli.error([*custom, "--validation-file", csv])
    assert err.startswith(f"{csv}: has no 'label' labels to evaluate against; use `pkd predict`")
    # ... which `pkd predict` reads fine; with labels, evaluate works.
    pkd_cli.ok(["predict", "--model", world["teacher"], "--text-columns", "text",
                "--test-file", csv, "--output-file", tmp_path / "p.tsv"])  # fmt: skip
    assert (tmp_path / "p.tsv").read_text().splitlines()[1:] == ["0\t1", "1\t0"]
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\ngood great movie,1\nawful bad plot,0\n")
    stdout = pkd_cli.ok([*custom, "--validation-file", labelled]).out
    assert json.loads(stdout)["accuracy"] == 1.0
    # A bad label value is still reported as such, not as "unlabelled".
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood great movie,maybe\n")
    err = pkd_cli.error([*custom, "--validation-file", bad])
    assert "maybe" in err and "pkd predict" not in err


# ---------------------------------------------------------------------------------------------
# Label names, not positions


def test_reversed_label_order_gives_the_same_named_predictions(world, tmp_path, caplog):
    data = DataConfig(task="sst2", data_dir=str(world["data"]), max_length=16)
    files = [
        api.predict(str(world[m]), data, "test", str(tmp_path / f"{m}.tsv"))
        for m in ("teacher", "reversed")
    ]
    original, flipped = (f.read_text() for f in files)
    assert original == flipped
    assert {line.split("\t")[1] for line in original.splitlines()[1:]} == {"0", "1"}
    scores = [api.evaluate(str(world[m]), data, "dev")["accuracy"] for m in ("teacher", "reversed")]
    assert scores[0] == scores[1] >= 0.8

    # Distilling from the reversed teacher: labels follow the teacher's order, by name, and
    # its dev score is the original's.
    cfg = DistillRunConfig(
        teacher=str(world["reversed"]),
        output=str(tmp_path / "run"),
        data=data,
        train=TrainConfig(batch_size=8, quiet=True),
        distill=DistillConfig(student_init=str(world["bert"])),
    )
    with caplog.at_level(logging.INFO, logger="pkd"):
        plan = distillation.plan_distill(cfg)
    assert plan.spec.labels == ("1", "0")
    assert plan.teacher_metrics["dev"]["accuracy"] == scores[0]
    assert plan.encoded["dev"].labels[:4] == [1 - int(v) for v in plan.splits["dev"].labels[:4]]
    assert "label order differs between teacher ('1', '0') and task ('0', '1')" in caplog.text


def test_teacher_with_other_label_names_is_refused(world, tmp_path, pkd_cli):
    other = make_tiny_teacher(tmp_path / "other", world["bert"], labels=("neg", "pos"))
    assert pkd_cli.error(distill_argv(world, other, tmp_path / "run", "--dry-run")) == (
        "--teacher: its labels ['neg', 'pos'] differ from the data's ['0', '1']"
    )


# ---------------------------------------------------------------------------------------------
# Student initialised from the fine-tuned teacher


def test_student_from_the_teacher_warns_naming_both(world, tmp_path, caplog, pkd_cli):
    argv = distill_argv(world, world["teacher"], tmp_path / "run", "--dry-run")
    with caplog.at_level(logging.WARNING, logger="pkd.models.students"):
        stdout = pkd_cli.ok([*argv, "--student-init", "teacher"]).out
    assert (
        f"--student-init: the student is initialised from the fine-tuned teacher "
        f"{world['teacher']}, not from the pre-trained {world['bert']}"
    ) in caplog.text
    assert f"student:    3 layers from {world['teacher']}" in stdout
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pkd.models.students"):
        pkd_cli.ok(argv)  # default: the teacher's pre-trained base
    assert "initialised from the fine-tuned teacher" not in caplog.text


# ---------------------------------------------------------------------------------------------
# Truncation


def _spec() -> TaskSpec:
    return TaskSpec(
        name="custom",
        problem_type=CLASSIFICATION,
        labels=("0", "1"),
        text_columns=("text",),
        label_column="label",
        metrics=("accuracy",),
        splits={"train": ""},
        source="custom",
    )


@pytest.mark.parametrize("long_rows, warns", [(5, False), (6, True)])
def test_truncation_warning_above_5_percent_only(world, caplog, long_rows, warns):
    """100 examples, 5 (5.0%: quiet) or 6 (6.0%: warning) longer than --max-length 8."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["bert"])
    texts = ["good movie"] * (100 - long_rows) + [
        "good great fine nice movie film plot"
    ] * long_rows
    split = Split("train", "mem", [str(i) for i in range(100)], texts, None, ["1"] * 100)
    enc = encode(split, tok, 8, {"0": 0, "1": 1}, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="pkd.data.loading"):
        frac = D.warn_truncation(enc, 8)
    assert frac == pytest.approx(long_rows / 100)
    expected = f"{long_rows}.0% of training examples reach --max-length 8 and are truncated"
    assert (expected in caplog.text) is warns


def test_truncation_warning_through_the_cli(world, tmp_path, caplog, pkd_cli):
    argv = ["finetune", "--model", world["bert"], "--task", "sst2", "--data-dir", world["data"]]
    argv += ["--output", tmp_path / "ft", "--dry-run", "--quiet"]
    with caplog.at_level(logging.WARNING, logger="pkd.data.loading"):
        stdout = pkd_cli.ok([*argv, "--max-length", "6"]).out
    assert "100.0% of training examples reach --max-length 6" in caplog.text
    assert "train: 64 examples, 100.0% truncated" in stdout
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pkd.data.loading"):
        pkd_cli.ok([*argv, "--max-length", "16"])  # sentences are 7 tokens
    assert "truncated" not in caplog.text


# ---------------------------------------------------------------------------------------------
# Collapse


def _history(first: float, later: float = 0.9) -> dict:
    epochs = [{"metrics": {"dev": {"accuracy": v}}} for v in (first, later)]
    return {"history": epochs}


def _dev(ones: int = 18, zeros: int = 14):
    from pkd.data.splits import Split

    labels = ["1"] * ones + ["0"] * zeros
    return Split(
        "dev", "dev.tsv", [str(i) for i in range(len(labels))], ["x"] * len(labels), None, labels
    )


@pytest.mark.parametrize(
    "method, first, epoch1, cause",
    [
        # one class everywhere (18/32 or 14/32 of dev) and a CE still at log(2): a plateau
        ("pkd", 0.5625, {"ce": 0.69, "gradient_shares": {"ce": 0.5, "kd": 0.49, "pt": 0.01}},
         "its cross-entropy is still 0.690, about log(2) = 0.693, a uniform guess"),
        ("ft", 0.4375, {"ce": 0.70, "gradient_shares": {}}, "a plateau, not the loss weights"),
        # the patient term drives the gradient: beta is to blame
        ("pkd", 0.5625, {"ce": 0.69, "gradient_shares": {"ce": 0.1, "kd": 0.1, "pt": 0.8}},
         "the patient loss dominates the gradient (80% of it at beta=500): lower --beta"),
        # CE moved, shares balanced: neither
        ("kd", 0.5625, {"ce": 0.40, "gradient_shares": {"ce": 0.6, "kd": 0.4}},
         "gradient shares in epoch 1: ce 60%, kd 40%"),
        ("pkd", 0.75, {"ce": 0.69, "gradient_shares": {"pt": 0.9}}, None),  # learning
    ],
)  # fmt: skip
def test_collapse_warning(method, first, epoch1, cause, caplog):
    from pkd.tasks import get_task

    beta = {"beta": 500.0} if method == "pkd" else {}  # the others have no patient loss
    d = DistillConfig(method=method, **beta)
    result = {**_history(first), "first_epoch": epoch1}
    with caplog.at_level(logging.WARNING, logger="pkd.recipes.distill"):
        distillation.warn_collapse(result, get_task("sst2"), _dev(), d)
    text = caplog.text
    assert ("predicts a single class on dev after the first epoch" in text) is (cause is not None)
    if cause:
        assert cause in text, text
        assert ("beta" in text) is ("dominates" in cause)  # beta is blamed only when it drives


def test_config_options_exist():
    """The guard-rail switches are real options of the command."""
    cfg = build(DistillRunConfig, {"teacher": "t", "output": "o"})
    assert cfg.distill.allow_weak_teacher is False
    with pytest.raises(PkdError, match="--preset"):
        DistillConfig(preset="book")
