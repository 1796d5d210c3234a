"""Model cards: every saved model/ has a README.md in the Hub's format (`pkd.models.card`), checked
offline with huggingface_hub (metadata, model-index) and by re-running its command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData, metadata_load

import pkd
from pkd.models.results import RunResult

TRAIN = ["--epochs", "1", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, tiny_teacher, sst2_dir, pkd_cli) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    data = ["--task", "sst2", "--data-dir", sst2_dir, *TRAIN]
    pkd_cli.ok(["finetune", "--model", tiny_bert, "--output", root / "teacher", *data])
    pkd_cli.ok(["distill", "--teacher", tiny_teacher, "--output", root / "student", *data,
                "--student-layers", "2", "--allow-weak-teacher"])  # fmt: skip
    return {"teacher": root / "teacher", "student": root / "student"}


def card_of(run: Path) -> tuple[ModelCard, dict]:
    path = run / "model" / "README.md"
    return ModelCard.load(path), json.loads((run / "metrics.json").read_text())


def test_metadata_is_valid_hub_metadata_with_the_dev_metrics_as_model_index(runs):
    for run in runs.values():
        card, metrics = card_of(run)
        meta = metadata_load(run / "model" / "README.md")  # the YAML block the Hub reads
        again = ModelCardData(**meta)  # parses model-index back into eval results
        assert again.model_name == run.name
        (result,) = again.eval_results  # SST-2: accuracy on dev
        dev = metrics["best"]["metrics"]["dev"]["accuracy"]
        assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(dev)
        assert (result.task_type, result.dataset_type) == ("text-classification", "nyu-mll/glue")
        assert (result.dataset_config, result.dataset_split) == ("sst2", "validation")
        index = meta["model-index"][0]["results"][0]
        assert index["metrics"][0] == {"type": "accuracy", "value": round(dev, 6),
                                       "name": "accuracy (dev)"}  # fmt: skip
        assert meta["library_name"] == "transformers"
        assert meta["pipeline_tag"] == "text-classification"
        assert meta["datasets"] == ["nyu-mll/glue"]
        assert "base_model" not in meta  # a local directory is no Hub id
        assert "pkd" in meta["tags"]
        assert card.data.to_dict() == again.to_dict()


def test_distilled_card_names_teacher_method_map_and_weights(runs, tiny_teacher):
    run = runs["student"]
    card, metrics = card_of(run)
    text = card.text
    assert {"pkd", "distill", "knowledge-distillation"} <= set(card.data.tags)
    assert "| method | patient knowledge distillation (PKD-skip) |" in text
    assert f"| teacher | `{tiny_teacher.parent.name}/model` |" in text  # no local path
    assert "| student layers | 2 |" in text
    assert "| layer map (teacher → student) | 2 → 1 |" in text  # 4 -> 2 layers, skip
    assert "| α, β, T | 0.5, 100, 10 |" in text
    params = metrics["parameters"]["student"]["total"]
    assert f"| size | {params:,} parameters ({params / 1e6:.1f}M), " in text
    assert f"(`pkd benchmark --models {tiny_teacher.parent.name}/model student/model`)" in text
    teacher_dev = metrics["teacher_metrics"]["dev"]["accuracy"]
    assert f"| dev | accuracy | {metrics['best']['metrics']['dev']['accuracy']:.4g} |" in text
    assert f"| {teacher_dev:.4g} |" in text
    assert "pkd distill --config student/config.yaml --output student-rerun" in text
    assert f"Written by pkd {pkd.__version__}" in text
    assert 'pipeline("text-classification", model="YOUR_NAME/student")' in text


def test_finetuned_card_names_its_base_model(runs, tiny_bert):
    card, _ = card_of(runs["teacher"])
    assert "| base model | `bert` |" in card.text
    assert "finetune" in card.data.tags and "knowledge-distillation" not in card.data.tags
    assert "pkd finetune --config teacher/config.yaml --output teacher-rerun" in card.text


@pytest.mark.slow
def test_the_cards_command_reruns_the_same_student(runs, pkd_cli, monkeypatch):
    run = runs["student"]
    monkeypatch.chdir(run.parent)  # the card's command names the run relative to its parent
    card, metrics = card_of(run)
    (command,) = [line for line in card.text.splitlines() if line.startswith("pkd distill ")]
    pkd_cli.ok(command.split()[1:] + ["--quiet"])
    rerun = json.loads(Path(f"{run}-rerun/metrics.json").read_text())
    assert rerun["best"]["metrics"] == metrics["best"]["metrics"]


def test_hub_ids_are_metadata_and_local_paths_are_not():
    from pkd.models.card import is_hub_id

    assert is_hub_id("bert-base-uncased") and is_hub_id("google/bert_uncased_L-4_H-256_A-4")
    assert not is_hub_id("/tmp/x") and not is_hub_id("./runs/t") and not is_hub_id("a/b/c")
    assert not is_hub_id(None) and not is_hub_id("<in-memory DatasetDict: train 3 rows>")


def test_finish_run_writes_a_card_for_any_command(tmp_path, tiny_bert):
    """The hook a new command (`pkd pretrain`) uses: finish_run(..., command=NAME)."""
    from pkd.training.rundir import finish_run

    class Main:
        is_main_process = True

    run = tmp_path / "pre"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("teacher: bert-base-uncased\nmeta: {pkd: 9.9}\n")
    finish_run(run, {"best": None, "parameters": {"total": 5_000_000}}, 0.5, Main(), "pretrain")
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.base_model == "bert-base-uncased" and "pretrain" in card.data.tags
    assert card.data.eval_results is None
    assert "`pkd pretrain`" in card.text and "pkd pretrain --config pre/config.yaml" in card.text
    assert "| size | 5,000,000 parameters (5.0M) |" in card.text
    assert (run / "metrics.json").is_file()


def test_cards_read_right_on_the_hub_no_local_path_no_upload_section(runs, tmp_path, caplog):
    import logging

    from pkd.models.card import write_model_card
    from pkd.training.rundir import read_run_config

    for run in runs.values():
        text = (run / "model" / "README.md").read_text()
        assert "/tmp/" not in text and str(run.parent) not in text  # no absolute local path
        assert "## Upload" not in text and "hf upload" not in text
        card, _ = card_of(run)
        assert card.data.language == ["en"]  # a GLUE task
        assert card.data.license is None  # the tiny base model's card declares none
        assert f'model="YOUR_NAME/{run.name}"' in card.text
    # the upload instructions go to the log instead
    run = runs["student"]
    with caplog.at_level(logging.INFO, logger="pkd.models.card"):
        write_model_card(
            run / "model", read_run_config(run), RunResult.load(run), "distill",
        )  # fmt: skip
    assert f"publish with `hf upload YOUR_NAME/student {run / 'model'} .`" in caplog.text


def synthetic_run(data: dict, sources: dict, task: str = "sst2") -> tuple[dict, dict]:
    """A distill run's config and metrics as a card reads them, without training."""
    config = {"teacher": "/local-disk/runs/teacher/model", "data": {"task": task, **data},
              "distill": {"alpha": 0.5, "beta": 100.0, "temperature": 10.0, "strategy": "skip"}}  # fmt: skip
    metrics = {
        "task": task, "method": "pkd", "student_init": "/local-disk/bert", "layer_map": [[2, 1]],
        "best": {"step": 8, "epoch": 1, "metrics": {"dev": {"accuracy": 0.75}}},
        "data": {k: {"source": v, "examples": 16, "sha256": "ab"} for k, v in sources.items()},
    }  # fmt: skip
    return config, metrics


def test_a_partial_run_is_no_model_index_result_on_the_official_split(tmp_path):
    from pkd.models.card import model_card

    (tmp_path / "run" / "model").mkdir(parents=True)
    sources = {"train": "/local-disk/glue/train.tsv", "dev": "/local-disk/glue/dev.tsv"}
    for data, why in (
        ({"max_train_samples": 128}, "trained on the first 128 training examples only"),
        ({"max_eval_samples": 16}, "scored on the first 16 examples of each split only"),
        ({"holdout_fraction": 0.1}, "trained on part of the training set"),
    ):
        config, metrics = synthetic_run(data, sources)
        card = model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill")
        meta = ModelCard(str(card)).data.to_dict()
        assert "model-index" not in meta and card.data.eval_results is None, data
        assert f"Not in this card's metadata (`model-index`): {why}" in card.text
        assert "| dev | accuracy | 0.75 |" in card.text  # still reported, as what it is
    config, metrics = synthetic_run({}, sources)  # the whole data: claimed
    (result,) = model_card(
        tmp_path / "run" / "model", config, RunResult.of(metrics), "distill"
    ).data.eval_results
    assert (result.dataset_type, result.dataset_split) == ("nyu-mll/glue", "validation")


def test_a_datasetdict_run_names_its_real_split_and_no_local_path(tmp_path):
    from pkd.models.card import model_card

    (tmp_path / "run" / "model").mkdir(parents=True)
    sources = {"train": "dataset:/local-disk/data/tweets[train]",
               "dev": "dataset:/local-disk/data/tweets[validation]"}  # fmt: skip
    config, metrics = synthetic_run({}, sources, task="custom")
    card = model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill")
    meta = metadata_load_text(str(card))
    again = ModelCardData(**meta)  # valid Hub metadata, model-index included
    (result,) = again.eval_results
    assert (result.dataset_type, result.dataset_name, result.dataset_split) == (
        "custom",
        "tweets",
        "validation",
    )
    assert card.data.language is None  # custom data: the language is not known
    assert "/local-disk" not in str(card)
    assert "| dev | `dataset:tweets[validation]` | 16 |" in card.text


def metadata_load_text(text: str) -> dict:
    """The YAML block of a card's text as the Hub reads it (`huggingface_hub.metadata_load`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "README.md"
        path.write_text(text)
        return metadata_load(path)


def test_license_comes_from_the_base_models_card_where_known(tmp_path, tiny_bert):
    import shutil

    from pkd.models.card import model_card

    base = tmp_path / "licensed-bert"
    shutil.copytree(tiny_bert, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    (tmp_path / "run" / "model").mkdir(parents=True)
    config, metrics = synthetic_run({}, {"train": "train.tsv"})
    metrics["student_init"] = str(base)
    card = model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill")
    assert metadata_load_text(str(card))["license"] == "apache-2.0"
    metrics["student_init"] = str(tiny_bert)  # no card: no license claimed
    assert "license" not in metadata_load_text(
        str(model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill"))
    )
    for broken in ("---\n- a list, not a mapping\n---\n", "---\nlicense: [\n---\n", b"\xff\xfe"):
        write = (
            (base / "README.md").write_bytes
            if isinstance(broken, bytes)
            else (base / "README.md").write_text
        )
        write(broken)  # a card that cannot be parsed says nothing; the finished run is kept
        metrics["student_init"] = str(base)
        meta = metadata_load_text(
            str(model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill"))
        )
        assert "license" not in meta
    metrics["student_init"] = "not a/valid hub id"  # try_to_load_from_cache would raise
    assert "license" not in metadata_load_text(
        str(model_card(tmp_path / "run" / "model", config, RunResult.of(metrics), "distill"))
    )
