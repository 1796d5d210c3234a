"""`datasets` in: `--dataset NAME_OR_PATH [--dataset-config C]` on the command line, and
`datasets.Dataset`/`DatasetDict` objects wherever the Python API takes files."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from conftest import sentiment_rows

TRAIN = ["--epochs", "2", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--quiet"]


def sst2_like(n_train=64, n_dev=32, n_test=8):
    """GLUE SST-2 as the Hub has it: sentence, label (ClassLabel negative/positive), idx."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {
            "sentence": Value("string"),
            "label": ClassLabel(names=["negative", "positive"]),
            "idx": Value("int32"),
        }
    )

    def part(n, seed, labelled=True):
        rows = sentiment_rows(n, seed)
        return Dataset.from_dict(
            {
                "sentence": [s for s, _ in rows],
                "label": [int(y) if labelled else -1 for _, y in rows],
                "idx": list(range(n)),
            },
            features=features,
        )

    return DatasetDict(
        train=part(n_train, 0), validation=part(n_dev, 1), test=part(n_test, 2, labelled=False)
    )


def tweets_like():
    """The user's own data: text, sentiment as names, a dev split called `dev`."""
    from datasets import Dataset, DatasetDict

    def part(n, seed):
        rows = sentiment_rows(n, seed)
        names = {"0": "neg", "1": "pos"}
        return Dataset.from_dict(
            {"text": [s for s, _ in rows], "sentiment": [names[y] for _, y in rows]}
        )

    return DatasetDict(train=part(64, 0), dev=part(32, 1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("datasets")
    sst2_like().save_to_disk(root / "sst2")
    tweets_like().save_to_disk(root / "tweets")
    sst2_like()["train"].save_to_disk(root / "one-split")
    DatasetDict(train=sst2_like()["train"]).save_to_disk(root / "no-dev")
    tweets = tweets_like()
    DatasetDict(train=tweets["train"], test=tweets["dev"]).save_to_disk(root / "train-test")
    (root / "train.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    return root


def test_glue_task_from_a_saved_dataset_matches_the_same_rows_from_files(
    tiny_bert, sst2_dir, saved, tmp_path, pkd_cli
):
    """The conftest SST-2 files and the saved dataset hold the same rows: the same run."""
    base = ["finetune", "--model", tiny_bert, "--task", "sst2", *TRAIN]
    from_files, from_dataset = tmp_path / "files", tmp_path / "dataset"
    pkd_cli.ok([*base, "--data-dir", sst2_dir, "--output", from_files])
    pkd_cli.ok([*base, "--dataset", saved / "sst2", "--output", from_dataset])
    a = json.loads((from_files / "metrics.json").read_text())
    b = json.loads((from_dataset / "metrics.json").read_text())
    assert a["best"] == b["best"]
    assert b["data"]["train"]["source"] == f"dataset:{saved / 'sst2'}[train]"
    assert b["data"]["dev"]["source"] == f"dataset:{saved / 'sst2'}[validation]"
    assert b["data"]["train"]["examples"] == 64
    saved_cfg = yaml.safe_load((from_dataset / "config.yaml").read_text())
    assert saved_cfg["data"]["dataset"] == str(saved / "sst2")


def test_custom_columns_evaluate_and_predict_from_a_saved_dataset(
    tiny_bert, saved, tmp_path, pkd_cli
):
    data = [
        "--task",
        "custom",
        "--dataset",
        saved / "tweets",
        "--text-columns",
        "text",
        "--label-column",
        "sentiment",
    ]
    out = tmp_path / "run"
    pkd_cli.ok(["finetune", "--model", tiny_bert, *data, *TRAIN, "--output", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["neg", "pos"]  # inferred from train, by name
    assert metrics["data"]["dev"]["source"] == f"dataset:{saved / 'tweets'}[dev]"
    result = json.loads(pkd_cli.ok(["evaluate", "--model", out, *data]).out)
    assert result["examples"] == 32 and 0 <= result["accuracy"] <= 1
    assert result["accuracy"] == metrics["best"]["metrics"]["dev"]["accuracy"]


@pytest.mark.slow
def test_validation_split_and_the_text_column_by_default(tiny_bert, saved, tmp_path, pkd_cli):
    """A dataset with train and test only validates on --validation-split test; a `text`
    column is the text without --text-columns, in a dataset and in a file."""
    data = ["--task", "custom", "--dataset", saved / "train-test", "--label-column", "sentiment"]
    out = tmp_path / "run"
    err = pkd_cli.error(["finetune", "--model", tiny_bert, *data, *TRAIN, "--output", out])
    assert err == (
        f"--dataset: {saved / 'train-test'} has no validation/dev/valid split for dev (it has "
        "train, test); choose one with --validation-split"
    )
    data += ["--validation-split", "test"]
    pkd_cli.ok(["finetune", "--model", tiny_bert, *data, *TRAIN, "--output", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["dev"]["source"] == f"dataset:{saved / 'train-test'}[test]"
    result = json.loads(pkd_cli.ok(["evaluate", "--model", out, *data]).out)
    assert result["source"] == f"dataset:{saved / 'train-test'}[test]"
    assert result["accuracy"] == metrics["best"]["metrics"]["dev"]["accuracy"]
    dev = tmp_path / "dev.csv"
    rows = tweets_like()["dev"]
    dev.write_text("sentiment,text\n" + "".join(f"{y},{t}\n" for t, y in zip(rows["text"], rows["sentiment"], strict=True)))  # fmt: skip
    files = ["--task", "custom", "--validation-file", dev, "--label-column", "sentiment"]
    from_file = json.loads(pkd_cli.ok(["evaluate", "--model", out, *files]).out)
    assert from_file["accuracy"] == result["accuracy"] and from_file["examples"] == 32


def test_predict_reads_the_test_split_of_a_saved_glue_dataset(
    tiny_teacher, saved, tmp_path, pkd_cli
):
    out = tmp_path / "pred.tsv"
    pkd_cli.ok(
        [
            "predict",
            "--model",
            tiny_teacher,
            "--task",
            "sst2",
            "--dataset",
            saved / "sst2",
            "--output-file",
            out,
        ]
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 9
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


def test_python_api_takes_datasetdict_and_dataset_objects(tiny_bert, tmp_path):
    import pkd
    from pkd.config.runs import FinetuneRunConfig
    from pkd.config.sections import DataConfig, TrainConfig

    tweets = tweets_like()
    data = DataConfig(
        task="custom",
        dataset=tweets,
        text_columns=["text"],
        label_column="sentiment",
        max_length=16,
    )
    train = TrainConfig(epochs=2, lr=3e-3, batch_size=8, quiet=True, report_to=["none"])
    out = tmp_path / "run"
    metrics = pkd.finetune(
        FinetuneRunConfig(model=str(tiny_bert), output=str(out), data=data, train=train)
    )
    assert metrics["data"]["train"]["source"] == "dataset:DatasetDict[train]"
    recorded = yaml.safe_load((out / "config.yaml").read_text())["data"]["dataset"]
    assert recorded == "<in-memory DatasetDict: train 64, dev 32 rows>"
    # one Dataset where a file goes
    dev = DataConfig(
        task="custom",
        validation_file=tweets["dev"],
        text_columns=["text"],
        label_column="sentiment",
    )
    scored = pkd.evaluate(str(out), dev)
    assert scored["source"] == "Dataset[dev]" and scored["examples"] == 32
    assert scored["accuracy"] == metrics["best"]["metrics"]["dev"]["accuracy"]


def test_distill_from_a_dataset_builds_and_reuses_one_teacher_cache(
    tiny_teacher, saved, tmp_path, pkd_cli
):
    args = [
        "distill",
        "--teacher",
        tiny_teacher,
        "--task",
        "sst2",
        "--dataset",
        saved / "sst2",
        "--student-layers",
        "2",
        "--allow-weak-teacher",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--quiet",
    ]
    pkd_cli.ok([*args, "--output", tmp_path / "a"])
    pkd_cli.ok([*args, "--output", tmp_path / "b"])
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["teacher_cache"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["teacher_cache"]
    assert (a["reused"], b["reused"], a["path"]) == (False, True, b["path"])


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            [
                "--task",
                "custom",
                "--dataset",
                "{tweets}",
                "--text-columns",
                "txt",
                "--label-column",
                "sentiment",
            ],
            "dataset:{tweets}[train]: no column(s) ['txt'] in the train split (it has ['text', "
            "'sentiment']; see --text-columns and --label-column)",
        ),
        (
            ["--task", "custom", "--dataset", "{tweets}", "--text-columns", "text"],
            "dataset:{tweets}[train]: no column(s) ['label'] in the train split",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/no-dev"],
            "--dataset: {root}/no-dev has no validation split for dev (it has train)",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/missing"],
            "--dataset: cannot load {root}/missing (",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/one-split"],
            "--dataset: {root}/one-split is a single split (a Dataset)",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/sst2", "--dataset-config", "sst2"],
            "--dataset-config: {root}/sst2 is a save_to_disk directory",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/sst2", "--data-dir", "{root}"],
            "--dataset: give --dataset or --data-dir, not both",
        ),
        (["--task", "sst2", "--dataset-config", "sst2"], "--dataset-config: needs --dataset"),
        (
            ["--task", "custom", "--dataset", "{root}/train.csv", "--text-columns", "text"],
            "--dataset: {root}/train.csv is a file, not a dataset; pass files as --train-file "
            "and --validation-file (--dataset takes a Hub name or a dataset directory)",
        ),
        (
            ["--task", "sst2", "--validation-split", "test"],
            "--validation-split: needs --dataset (files: pass the split as --validation-file)",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/sst2", "--validation-split", "valid"],
            "--validation-split: {root}/sst2 has no split 'valid' (it has train, validation, test)",
        ),
        (
            ["--task", "sst2", "--dataset", "{root}/sst2", "--validation-split", "train"],
            "--validation-split: 'train' is the training split; name another",
        ),
        (
            ["--task", "mnli", "--dataset", "{root}/sst2", "--validation-split", "test"],
            "--validation-split: task mnli has 2 dev splits (dev_matched, dev_mismatched); it "
            "reads them by the Hub's names",
        ),
    ],
)
def test_dataset_errors_are_one_line_and_name_the_option(
    extra, expected, tiny_bert, saved, tmp_path, pkd_cli
):
    def fill(text: str) -> str:
        return text.format(root=saved, tweets=saved / "tweets")

    out = tmp_path / "run"
    err = pkd_cli.error(["finetune", "--model", tiny_bert, "--output", out, *map(fill, extra)])
    assert err.startswith(fill(expected)), err
    assert not out.exists()


def test_config_refuses_other_objects_and_a_datasetdict_for_one_split():
    from pkd.config.sections import DataConfig
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match=r"^--train-file: expected a path or a `datasets` object"):
        DataConfig(task="custom", train_file=[("text", "label")])
    with pytest.raises(PkdError, match=r"^--validation-file: a DatasetDict holds several"):
        DataConfig(task="custom", validation_file=tweets_like())
    with pytest.raises(PkdError, match=r"^--dataset: a single Dataset is one split"):
        DataConfig(task="custom", dataset=tweets_like()["train"])


def test_file_errors_keep_their_file_and_line(tiny_bert, tmp_path, pkd_cli):
    bad = tmp_path / "train.csv"
    bad.write_text("text,label\ngood movie,1\nbad movie\n")
    err = pkd_cli.error(
        [
            "finetune",
            "--model",
            tiny_bert,
            "--output",
            tmp_path / "run",
            "--task",
            "custom",
            "--train-file",
            bad,
            "--validation-file",
            bad,
            "--text-columns",
            "text",
        ]
    )
    assert err.startswith(f"{bad}:3: expected at least 2 columns, found 1"), err


def test_a_bad_label_names_the_split_and_row(tiny_bert, tmp_path):
    from datasets import Dataset

    import pkd
    from pkd.config.runs import FinetuneRunConfig
    from pkd.config.sections import DataConfig
    from pkd.errors import PkdError

    rows = Dataset.from_dict({"sentence": ["good film", "bad film", "a film"], "label": [1, 0, 5]})
    data = DataConfig(task="sst2", train_file=rows, validation_file=rows)
    cfg = FinetuneRunConfig(model=str(tiny_bert), output=str(tmp_path / "run"), data=data)
    with pytest.raises(
        PkdError, match=r"^Dataset\[train\] row 2: label '5' is not one of \['0', '1'\]"
    ):
        pkd.finetune(cfg)
    assert not (tmp_path / "run").exists()


def relabel(model, out, labels, swap=False):
    """A copy of `model` whose outputs are named `labels` (swap: its two classes' head rows
    swapped too, so output 0 is the old output 1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(model)
    if swap:
        for p in (net.classifier.weight, net.classifier.bias):
            p.data = p.data.flip(0)
    net.config.id2label = dict(enumerate(labels))
    net.config.label2id = {n: i for i, n in enumerate(labels)}
    net.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


@pytest.mark.slow
def test_a_teacher_with_the_hubs_label_names_distills_and_evaluates(
    tiny_teacher, sst2_dir, saved, tmp_path, pkd_cli, caplog
):
    """A run_glue.py teacher (SST-2's negative/positive, in either order) scores as the same
    weights named 0/1 on the GLUE files and on the Hub's ClassLabel data, and distills."""
    hub = relabel(tiny_teacher, tmp_path / "hub", ["negative", "positive"])
    flipped = relabel(tiny_teacher, tmp_path / "flipped", ["positive", "negative"], swap=True)
    generic = relabel(tiny_teacher, tmp_path / "generic", ["LABEL_0", "LABEL_1"])
    scores = set()
    for model in (tiny_teacher, hub, flipped, generic):
        for data in (["--data-dir", sst2_dir], ["--dataset", saved / "sst2"]):
            out = pkd_cli.ok(["evaluate", "--model", model, "--task", "sst2", *data]).out
            scores.add(json.loads(out)["accuracy"])
    assert len(scores) == 1
    written = []  # predictions in the data's names (the GLUE submission's ids)
    for model in (tiny_teacher, hub, flipped):
        out = tmp_path / f"{model.name}.tsv"
        pkd_cli.ok(["predict", "--model", model, "--task", "sst2", "--data-dir", sst2_dir,
                    "--output-file", out])  # fmt: skip
        written.append(out.read_text())
    assert written[0] == written[1] == written[2]
    run = tmp_path / "run"
    argv = ["distill", "--teacher", hub, "--task", "sst2", "--student-layers", "2",
            "--allow-weak-teacher", "--max-steps", "2", "--batch-size", "8", "--max-length",
            "16", "--output", run]  # fmt: skip
    caplog.set_level(logging.INFO, logger="pkd.tasks")
    pkd_cli.ok([*argv, "--dataset", saved / "sst2"])
    mapping = (
        "--teacher: the data's labels are the model's by class id: 0 -> negative, 1 -> positive"
    )
    assert mapping in caplog.messages
    student = json.loads((run / "model" / "config.json").read_text())["id2label"]
    assert student == {"0": "negative", "1": "positive"}
    pkd_cli.ok(["evaluate", "--model", run, "--task", "sst2", "--data-dir", sst2_dir])
    other = relabel(tiny_teacher, tmp_path / "other", ["neg", "pos"])
    for data in (["--data-dir", sst2_dir], ["--dataset", saved / "sst2"]):
        err = pkd_cli.error(["evaluate", "--model", other, "--task", "sst2", *data])
        assert err == "--model: its labels ['neg', 'pos'] differ from the data's ['0', '1']"
