"""PKD in a Hugging Face Trainer script: distill a GLUE teacher into an M-layer student.

    pkd finetune --model bert-base-uncased --task sst2 --output runs/sst2-teacher
    python examples/trainer_glue.py --teacher runs/sst2-teacher --task sst2 --output runs/sst2-hf
    pkd evaluate --model runs/sst2-hf/model --task sst2

Offline, pass --dataset DIR: a `save_to_disk` copy of the task (train and validation splits).
"""

import argparse
import json
from pathlib import Path

from datasets import load_dataset, load_from_disk
from transformers import AutoConfig, AutoTokenizer, TrainingArguments

from pkd.config.runs import resolve_model
from pkd.config.sections import DistillConfig
from pkd.hf import PatientDistillationTrainer, add_example_index
from pkd.tasks import get_task


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="a pkd finetune run, or a model directory")
    p.add_argument("--task", default="sst2", help="GLUE task")
    p.add_argument("--dataset", default="nyu-mll/glue", help="Hub name, or a save_to_disk dir")
    p.add_argument("--output", required=True)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--report-to", default="none", help="tensorboard, mlflow, wandb, ... or all")
    a = p.parse_args(argv)

    task, teacher = get_task(a.task), resolve_model(a.teacher, "teacher")
    local = Path(a.dataset).is_dir()
    data = load_from_disk(a.dataset) if local else load_dataset(a.dataset, a.task)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    fields = task.hf_text_fields
    data = data.map(
        lambda b: tokenizer(*(b[f] for f in fields), truncation=True, max_length=a.max_length),
        batched=True,
    )
    names = data["train"].features["label"].names
    label2id = AutoConfig.from_pretrained(teacher).label2id
    if set(names) <= set(label2id):  # labels by name: MNLI's Hub order differs from pkd's
        by_name = {i: label2id[n] for i, n in enumerate(names)} | {-1: -1}  # -1: test, unlabelled
        data = data.map(lambda b: {"label": [by_name[i] for i in b["label"]]}, batched=True)

    args = TrainingArguments(
        a.output, num_train_epochs=a.epochs, max_steps=a.max_steps, learning_rate=a.lr,
        per_device_train_batch_size=a.batch_size, eval_strategy="epoch", save_strategy="no",
        logging_steps=10, report_to=a.report_to,
    )  # fmt: skip
    trainer = PatientDistillationTrainer(
        teacher=teacher,  # pkd distill's defaults: alpha 0.5, beta 100, T 10
        distill=DistillConfig(student_layers=a.student_layers, strategy="skip"),
        args=args, train_dataset=add_example_index(data["train"]),  # the teacher cache's rows
        eval_dataset=data[task.hf_splits[task.eval_splits[0]]], processing_class=tokenizer,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(f"{a.output}/model")  # a pkd student: pkd evaluate/export/benchmark
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
