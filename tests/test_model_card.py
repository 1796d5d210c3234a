"""Model cards: every saved model/ has a README.md in the Hub's format (`pkd.card`), checked
offline with huggingface_hub (metadata, model-index) and by re-running its command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData, metadata_load

import pkd

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
    assert f"| teacher | `{tiny_teacher}` |" in text
    assert "| student layers | 2 |" in text
    assert "| layer map (teacher → student) | 2 → 1 |" in text  # 4 -> 2 layers, skip
    assert "| α, β, T | 0.5, 100, 10 |" in text
    params = metrics["parameters"]["student"]["total"]
    assert f"| size | {params:,} parameters ({params / 1e6:.1f}M), " in text
    assert f"not measured here (`pkd benchmark --models {tiny_teacher} {run / 'model'}`)" in text
    teacher_dev = metrics["teacher_metrics"]["dev"]["accuracy"]
    assert f"| dev | accuracy | {metrics['best']['metrics']['dev']['accuracy']:.4g} |" in text
    assert f"| {teacher_dev:.4g} |" in text
    assert f"pkd distill --config {run / 'config.yaml'} --output {run}-rerun" in text
    assert f"Written by pkd {pkd.__version__}" in text
    assert f"hf upload YOUR_NAME/student {run / 'model'} ." in text


def test_finetuned_card_names_its_base_model(runs, tiny_bert):
    card, _ = card_of(runs["teacher"])
    assert f"| base model | `{tiny_bert}` |" in card.text
    assert "finetune" in card.data.tags and "knowledge-distillation" not in card.data.tags
    assert f"pkd finetune --config {runs['teacher'] / 'config.yaml'}" in card.text


@pytest.mark.slow
def test_the_cards_command_reruns_the_same_student(runs, pkd_cli):
    run = runs["student"]
    card, metrics = card_of(run)
    (command,) = [line for line in card.text.splitlines() if line.startswith("pkd distill ")]
    pkd_cli.ok(command.split()[1:] + ["--quiet"])
    rerun = json.loads(Path(f"{run}-rerun/metrics.json").read_text())
    assert rerun["best"]["metrics"] == metrics["best"]["metrics"]


def test_hub_ids_are_metadata_and_local_paths_are_not():
    from pkd.card import is_hub_id

    assert is_hub_id("bert-base-uncased") and is_hub_id("google/bert_uncased_L-4_H-256_A-4")
    assert not is_hub_id("/tmp/x") and not is_hub_id("./runs/t") and not is_hub_id("a/b/c")
    assert not is_hub_id(None) and not is_hub_id("<in-memory DatasetDict: train 3 rows>")


def test_finish_run_writes_a_card_for_any_command(tmp_path, tiny_bert):
    """The hook a new command (`pkd pretrain`) uses: finish_run(..., command=NAME)."""
    from pkd.rundir import finish_run

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
    assert "`pkd pretrain`" in card.text and "pkd pretrain --config" in card.text
    assert "| size | 5,000,000 parameters (5.0M) |" in card.text
    assert (run / "metrics.json").is_file()
