"""`pkd.hf.PatientDistillationTrainer`: pkd's loss inside a `transformers.Trainer`, on tiny
models, and the example script that uses it."""

from __future__ import annotations

import dataclasses
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import sentiment_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainer_glue.py"


def sst2_dataset():
    """GLUE SST-2's layout on the Hub (sentence, label 0/1 named negative/positive)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
    )

    def part(n, seed):
        rows = sentiment_rows(n, seed)
        return Dataset.from_dict(
            {"sentence": [s for s, _ in rows], "label": [int(y) for _, y in rows]},
            features=features,
        )

    return DatasetDict(train=part(64, 0), validation=part(32, 1))


def tokenised(tokenizer):
    return sst2_dataset().map(
        lambda b: tokenizer(b["sentence"], truncation=True, max_length=16), batched=True
    )


def accuracy(p) -> dict:
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def make_trainer(teacher, tmp_path, train, **kw):
    from transformers import AutoTokenizer, TrainingArguments

    from pkd.config.sections import DistillConfig
    from pkd.hf import PatientDistillationTrainer

    args = TrainingArguments(str(tmp_path / "hf"), **{
        "per_device_train_batch_size": 8, "learning_rate": 3e-3, "report_to": "none",
        "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, **kw.pop("args", {}),
    })  # fmt: skip
    fields = {f.name for f in dataclasses.fields(DistillConfig)} - {"teacher_mode"}  # the Trainer's
    settings = {k: kw.pop(k) for k in list(kw) if k in fields}
    distill = DistillConfig(
        **{"student_layers": 2, "alpha": 0.5, "beta": 100.0, "temperature": 10.0, **settings}
    )
    return PatientDistillationTrainer(
        teacher=str(teacher), args=args, train_dataset=train, distill=distill,
        processing_class=AutoTokenizer.from_pretrained(teacher), **kw,
    )  # fmt: skip


def first_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def reference_loss(trainer, batch, teacher) -> tuple[torch.Tensor, dict]:
    """pkd.objectives.objective.loss_terms with pkd's map, weighted by Objective.total, teacher online."""
    from pkd.models.encoders import load_finetuned
    from pkd.objectives.mapping import layer_map
    from pkd.objectives.objective import Objective, loss_terms, online_teacher

    objective = Objective(
        terms=("ce", "kd", "pt"), alpha=0.5, beta=100.0, temperature=10.0,
        pairs=layer_map("skip", 4, 2), teacher=online_teacher(load_finetuned(str(teacher))),
    )  # fmt: skip
    terms = loss_terms(trainer.model, batch, objective, regression=False)
    return objective.total(terms), terms


@pytest.mark.parametrize("cached", [False, True])
def test_trainer_loss_is_pkds_loss_terms_with_the_same_weights(cached, tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from pkd.hf import add_example_index

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    train = add_example_index(data) if cached else data
    trainer = make_trainer(tiny_teacher, tmp_path, train)
    batch = first_batch(trainer)
    assert ("example_index" in batch) is cached  # it survives remove_unused_columns
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    assert trainer.distill_objective.pairs == [(2, 1)]  # PKD-Skip, 4 -> 2 layers
    trainer.model.train()
    torch.manual_seed(0)  # the same dropout masks in both forward passes
    got = trainer.compute_loss(trainer.model, batch)
    torch.manual_seed(0)
    want, terms = reference_loss(trainer, batch, tiny_teacher)
    # the cache keeps the teacher's states in fp16: equal to its precision, exact online
    tol = 1e-3 if cached else 1e-6
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=tol, abs=tol)
    assert float(terms["pt"]) > 0 and float(terms["kd"]) > 0
    assert (getattr(trainer, "teacher_cache", None) is not None) is cached
    if cached:
        assert trainer.teacher_cache.manifest["examples"] == 64


@pytest.mark.slow
def test_short_run_lowers_the_loss_and_the_student_loads_in_pkd(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    from transformers import AutoTokenizer

    from pkd.hf import add_example_index
    from pkd.models.encoders import load_finetuned

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))
    trainer = make_trainer(
        tiny_teacher, tmp_path, add_example_index(data["train"]), eval_dataset=data["validation"],
        compute_metrics=accuracy, args={"max_steps": 40, "logging_steps": 4, "seed": 1},
    )  # fmt: skip
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r and "eval_loss" not in r]
    assert {"ce", "kd", "pt"} <= set(logs[0])  # each term, logged with the Trainer's loss
    first, last = logs[0]["loss"], logs[-1]["loss"]
    assert last < 0.8 * first, [r["loss"] for r in logs]

    out = tmp_path / "student"
    trainer.save_model(str(out))
    student = load_finetuned(str(out), "model")  # a pkd student: labels, head, 2 layers
    assert student.config.num_hidden_layers == 2 and student.config.id2label == {0: "0", 1: "1"}
    scored = trainer.evaluate()
    result = json.loads(pkd_cli.ok(["evaluate", "--model", out, "--task", "sst2", "--data-dir",
                                    sst2_dir, "--max-length", "16"]).out)  # fmt: skip
    assert result["examples"] == 32  # the same 32 rows as the Trainer's validation split
    assert result["accuracy"] == pytest.approx(scored["eval_accuracy"])


@pytest.mark.slow
def test_the_example_script_runs_offline_on_a_tiny_model(tiny_teacher, tmp_path, monkeypatch):
    data = tmp_path / "sst2"
    sst2_dataset().save_to_disk(data)
    out = tmp_path / "run"
    argv = ["--teacher", tiny_teacher, "--dataset", data, "--output", out, "--student-layers",
            "2", "--max-steps", "8", "--batch-size", "8", "--max-length", "16", "--lr", "3e-3"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *map(str, argv)])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "model" / "config.json").read_text())["num_hidden_layers"] == 2


def test_teacher_without_a_base_model_needs_student_init(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pkd.errors import PkdError

    bare = tmp_path / "teacher"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model.save_pretrained(bare)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(bare)
    with pytest.raises(PkdError, match=r"^student_init: .* does not record its pre-trained base"):
        make_trainer(bare, tmp_path, None)


def test_example_index_must_be_the_row_order(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from pkd.errors import PkdError

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    shuffled = data.add_column("example_index", list(range(len(data)))[::-1])
    with pytest.raises(PkdError, match=r"^train_dataset: its example_index column must be 0..n-1"):
        make_trainer(tiny_teacher, tmp_path, shuffled)
    with pytest.raises(PkdError, match=r"^teacher_mode: 'cached' needs a train_dataset whose"):
        make_trainer(tiny_teacher, tmp_path, data, teacher_mode="cached")


def test_options_pkd_distill_refuses_are_refused(tiny_teacher, tmp_path):
    from pkd.errors import PkdError

    with pytest.raises(PkdError, match=r"^--beta: 100.0 has no effect with --method kd"):
        make_trainer(tiny_teacher, tmp_path, None, method="kd")
    with pytest.raises(PkdError, match=r"^--layer-map: 2-layer student needs 1 teacher layers"):
        make_trainer(tiny_teacher, tmp_path, None, layer_map=[1, 2])
    # pkd distill's own options: the Trainer would ignore them
    with pytest.raises(PkdError, match=r"^distill.transfer_ratio: 2.0 has no effect in the Trai"):
        make_trainer(tiny_teacher, tmp_path, None, transfer_ratio=2.0)


def test_the_training_sets_class_labels_must_be_the_teachers(tiny_teacher, tmp_path):
    """Ids 0/1 (the GLUE files' teacher) meet the Hub's ClassLabel names by class id; the
    same names in another order, or other names, are refused."""
    from datasets import ClassLabel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pkd.errors import PkdError

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    make_trainer(tiny_teacher, tmp_path, data)  # 0/1 against negative/positive: by id
    hub = tmp_path / "hub"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(hub)
    AutoTokenizer.from_pretrained(tiny_teacher).save_pretrained(hub)
    make_trainer(hub, tmp_path, data)  # the same names in the same order
    for names in (["positive", "negative"], ["neg", "pos"]):
        other = data.cast_column("label", ClassLabel(names=names))
        with pytest.raises(PkdError, match=r"^train_dataset: its labels \[.*\] \(column 'label'\) are not the teacher's \['negative', 'positive'\] in order"):  # fmt: skip
            make_trainer(hub, tmp_path, other)
    # the evaluation sets too (scored through compute_metrics with the teacher's label ids)
    reversed_ = data.cast_column("label", ClassLabel(names=["positive", "negative"]))
    with pytest.raises(PkdError, match=r"^eval_dataset: its labels \['positive', 'negative'\]"):
        make_trainer(hub, tmp_path, data, eval_dataset=reversed_)
    with pytest.raises(PkdError, match=r"^eval_dataset\['mm'\]: its labels"):
        make_trainer(hub, tmp_path, data, eval_dataset={"m": data, "mm": reversed_})


def test_resume_without_a_checkpoint_is_one_line(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from pkd.errors import PkdError

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    trainer = make_trainer(tiny_teacher, tmp_path, data, args={"max_steps": 1})
    with pytest.raises(
        PkdError, match=r"^resume_from_checkpoint: no checkpoint in .*hf to resume$"
    ):
        trainer.train(resume_from_checkpoint=True)  # was: a fresh start, without a word


def test_a_narrower_student_trains_through_projections_kept_out_of_save_model(
    tiny_teacher, tmp_path
):
    from conftest import make_tiny_bert
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from pkd.models.encoders import load_finetuned

    narrow = make_tiny_bert(tmp_path / "narrow", layers=2, hidden=16)  # as `pkd pretrain` makes
    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    trainer = make_trainer(
        tiny_teacher, tmp_path, data, student_init=str(narrow), args={"max_steps": 3}
    )
    assert trainer.model.config.hidden_size == 16 and trainer.projection is not None
    before = [p.detach().clone() for p in trainer.projection.parameters()]
    trainer.train()  # was: RuntimeError: The size of tensor a (16) must match ... (32)
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in trainer.projection.parameters())  # trained with it
    after = list(trainer.projection.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    out = tmp_path / "student"
    trainer.save_model(str(out))
    with safe_open(out / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "maps" in k or "projection" in k]
    student = load_finetuned(str(out), "model")
    assert (student.config.hidden_size, student.config.num_hidden_layers) == (16, 2)


@pytest.mark.slow
def test_trainer_checkpoints_keep_the_projections_and_resume_restores_them(tiny_teacher, tmp_path):
    from conftest import make_tiny_bert
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from pkd.errors import PkdError

    narrow = make_tiny_bert(tmp_path / "narrow", layers=2, hidden=16)
    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    args = {"max_steps": 2, "save_strategy": "steps", "save_steps": 2}
    first = make_trainer(tiny_teacher, tmp_path, data, student_init=str(narrow), args=args)
    first.train()
    checkpoint = tmp_path / "hf" / "checkpoint-2"
    saved = load_file(checkpoint / "pkd_projection.safetensors")
    assert saved.keys() == first.projection.state_dict().keys()
    assert not [f for f in checkpoint.glob("model*.safetensors") if "maps" in str(load_file(f))]
    again = make_trainer(tiny_teacher, tmp_path, data, student_init=str(narrow), args=args)
    assert not torch.equal(again.projection.maps[0].weight, saved["maps.0.weight"])  # fresh
    again.train(resume_from_checkpoint=True)
    assert torch.equal(again.projection.maps[0].weight, saved["maps.0.weight"])  # restored
    (checkpoint / "pkd_projection.safetensors").unlink()
    with pytest.raises(PkdError, match=r"^resume_from_checkpoint: .* has no pkd_projection"):
        again.train(resume_from_checkpoint=str(checkpoint))


def tiny_student(teacher):
    """A 2-layer student as pkd builds it, for model_init."""
    from pkd.models.encoders import load_finetuned
    from pkd.models.students import build_student

    t = load_finetuned(str(teacher))
    return build_student(str(teacher), 2, t, "classification")


@pytest.mark.slow
def test_model_init_builds_the_student_per_trial_and_hyperparameter_search_runs(
    tiny_teacher, tmp_path
):
    from transformers import AutoTokenizer

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))
    train, dev = data["train"], data["validation"]
    built = []

    def model_init():
        built.append(tiny_student(tiny_teacher))
        return built[-1]

    trainer = make_trainer(tiny_teacher, tmp_path, train, model_init=model_init,
                           eval_dataset=dev, args={"max_steps": 2})  # fmt: skip
    assert trainer.distill_objective.pairs == [(2, 1)] and len(built) == 1
    trainer.train()
    assert len(built) == 2 and trainer.model is built[-1]  # a fresh student per train()

    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    search = {"direction": "minimize", "backend": "optuna", "hp_space": space}
    best = trainer.hyperparameter_search(n_trials=2, **search)  # was refused: model_init
    assert len(built) == 4 and "learning_rate" in best.hyperparameters
    assert best.objective == pytest.approx(best.objective) and best.objective > 0  # eval_loss
    # without model_init: pkd's own student is rebuilt for each trial
    own = make_trainer(tiny_teacher, tmp_path, train, eval_dataset=dev, args={"max_steps": 1})
    assert own.hyperparameter_search(n_trials=1, **search).objective > 0
    assert own.model_init == own.new_student


def test_distillation_settings_reach_the_trainers_trackers(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer
    from transformers.integrations import TensorBoardCallback

    data = tokenised(AutoTokenizer.from_pretrained(tiny_teacher))["train"]
    trainer = make_trainer(tiny_teacher, tmp_path, data, args={"max_steps": 1})
    trainer.add_callback(TensorBoardCallback)  # report_to reads the model's config, as this
    config = trainer.model.config.to_dict()  # the dict MLflow/W&B/TensorBoard callbacks log
    assert {k: config[k] for k in config if k.startswith("pkd_") and k != "pkd_base_model"} == {
        "pkd_teacher": str(tiny_teacher), "pkd_method": "pkd", "pkd_alpha": 0.5,
        "pkd_beta": 100.0, "pkd_temperature": 10.0, "pkd_layer_map": [[2, 1]],
        "pkd_attention": "sdpa",
    }  # fmt: skip
    trainer.train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {f.parent for f in (tmp_path / "hf").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("model_config/text_summary")
    logged = text.tensor_proto.string_val[0].decode()
    assert '"pkd_beta": 100.0' in logged and '"pkd_layer_map": [' in logged


def test_building_the_student_prints_no_load_report(tiny_teacher, sst2_dir, tmp_path):
    import logging

    import transformers

    from pkd.api import distill
    from pkd.config.runs import DistillRunConfig
    from pkd.config.sections import DataConfig, DistillConfig, TrainConfig

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    before = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # a user's default (the CLI quiets it)
    logging.getLogger("transformers").addHandler(keep)
    try:
        make_trainer(tiny_teacher, tmp_path, None)  # the Trainer path
        cfg = DistillRunConfig(  # the API path
            teacher=str(tiny_teacher), output=str(tmp_path / "run"),
            data=DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
            train=TrainConfig(batch_size=8, quiet=True),
            distill=DistillConfig(student_layers=2, allow_weak_teacher=True),
        )  # fmt: skip
        distill(cfg, dry_run=True)
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING  # restored
    finally:
        logging.getLogger("transformers").removeHandler(keep)
        transformers.logging.set_verbosity(before)
    assert not [r for r in records if "LOAD REPORT" in r], records


@pytest.mark.slow
def test_trainer_model_card_names_teacher_method_weights_and_map(tiny_teacher, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData, metadata_load

    trainer = make_trainer(tiny_teacher, tmp_path, None)
    trainer.create_model_card(language="en", tags="sst2")
    path = tmp_path / "hf" / "README.md"
    meta = metadata_load(path)
    ModelCardData(**meta)  # valid Hub metadata
    assert {"pkd", "knowledge-distillation", "sst2"} <= set(meta["tags"])
    assert meta["language"] == ["en"]
    text = ModelCard.load(path).text
    assert "| method | patient knowledge distillation (PKD-skip) |" in text
    assert f"| teacher | `{tiny_teacher.parent.name}/model` |" in text
    assert "| layer map (teacher → student) | 2 → 1 |" in text
    assert "| α, β, T | 0.5, 100, 10 |" in text and "| student layers | 2 |" in text
