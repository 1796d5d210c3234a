"""PKD-Skip on SST-2 with TextBrewer's GeneralDistiller: the other side of textbrewer_race.py.

    /work/tbvenv/bin/python benchmarks/textbrewer_sst2.py --teacher RUN/model \
        --student-init MINILM_DIR --data-dir SST-2 --output result.json

Runs in TextBrewer's own venv (textbrewer 0.2.1, torch, transformers; no pkd): the fine-tuned
teacher runs online each step, the student is the first `--student-layers` layers of the
pre-trained encoder with a new head ([CLS] through the pooler), 1 epoch at a constant lr
(TextBrewer's default: no scheduler; `--schedule linear` gives `pkd --lr-schedule linear`),
then accuracy on the dev set.

The loss is pkd's at the same alpha, T and beta, written in TextBrewer's terms:
  - CE: the student's own loss on the labels, `hard_label_weight` = 1 - alpha;
  - KD: TextBrewer's `ce` at temperature T (its gradient is KL's), `kd_loss_weight` =
    alpha * T^2 / C: pkd's `kl` form averages over B * C entries and multiplies by T^2;
  - PT: TextBrewer's `pkd` match (L2-normalised [CLS], squared distance summed over the H
    units, mean over the batch) per mapped layer, weight beta / (L * H): pkd's `mean` form
    averages over B * L * H entries. Layers: PKD-Skip, teacher 2, 4 -> student 1, 2 for a
    6-layer teacher and a 3-layer student (hidden_states[i] is layer i's output).
AdamW with weight decay 0.01 off biases and LayerNorm, gradients clipped at 1.0, as pkd.
Writes `--output` (JSON): dev accuracy, steps, seconds per phase.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

T0 = time.perf_counter()

import torch  # noqa: E402
from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="fine-tuned teacher model directory")
    p.add_argument("--student-init", required=True, help="pre-trained encoder directory")
    p.add_argument("--data-dir", required=True, help="GLUE SST-2 directory")
    p.add_argument("--output", required=True, help="result JSON")
    p.add_argument(
        "--work-dir", default=None, help="TextBrewer's checkpoints (default: beside --output)"
    )
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--schedule", choices=["constant", "linear"], default="constant")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="with --schedule linear")
    p.add_argument("--temperature", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def read_sst2(path: Path, limit: int | None) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
    ]


def adaptor(batch: dict, outputs) -> dict:
    """TextBrewer's view of a model's outputs: logits, hidden states, the label loss."""
    return {"logits": outputs.logits, "hidden": outputs.hidden_states, "losses": [outputs.loss]}


def skip_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """PKD-Skip: student layer j (1..M-1) learns from teacher layer j * N / M."""
    step = teacher_layers // student_layers
    return [(j * step, j) for j in range(1, student_layers)]


def accuracy(model, examples: list[dict], collate, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size])
            labels = batch.pop("labels")
            logits = model(**batch).logits
            correct += int((logits.argmax(-1) == labels).sum())
    model.train()
    return correct / len(examples)


def optimizer_for(model, lr: float) -> torch.optim.Optimizer:
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_import = time.perf_counter() - T0
    torch.manual_seed(args.seed)
    out = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out.with_suffix("")
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    pad = DataCollatorWithPadding(tokenizer)

    def collate(rows: list[dict]) -> dict:
        return dict(pad(rows))  # a plain dict: TextBrewer calls model(**batch) only for those

    data = Path(args.data_dir)
    train = encode(tokenizer, *read_sst2(data / "train.tsv", args.train_samples), args.max_length)
    dev = encode(tokenizer, *read_sst2(data / "dev.tsv", args.eval_samples), args.max_length)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    student = AutoModelForSequenceClassification.from_pretrained(
        args.student_init, num_hidden_layers=args.student_layers, num_labels=2
    )
    for model in (teacher, student):
        model.config.output_hidden_states = True
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    pairs = skip_map(teacher.config.num_hidden_layers, args.student_layers)
    hidden = teacher.config.hidden_size
    num_labels = teacher.config.num_labels
    matches = [
        {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "pkd",
         "weight": args.beta / (len(pairs) * hidden)}
        for t, s in pairs
    ]  # fmt: skip
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="ce",
        kd_loss_weight=args.alpha * args.temperature**2 / num_labels,
        hard_label_weight=1 - args.alpha,
        intermediate_matches=matches,
    )
    train_config = TrainingConfig(device="cpu", output_dir=str(work), log_dir=None)
    distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
    optimizer = optimizer_for(student, args.lr)
    steps = len(loader) * args.epochs
    schedule = {}
    if args.schedule == "linear":
        schedule = {
            "scheduler_class": get_linear_schedule_with_warmup,
            "scheduler_args": {
                "num_warmup_steps": int(args.warmup_ratio * steps),
                "num_training_steps": steps,
            },
        }
    scores: list[dict] = []

    def evaluate(model, step: int) -> None:
        scores.append({"step": step, "accuracy": accuracy(model, dev, collate)})

    t_setup = time.perf_counter() - T0
    with distiller:
        distiller.train(
            optimizer,
            loader,
            num_epochs=args.epochs,
            max_grad_norm=1.0,
            callback=evaluate,
            **schedule,
        )
    result = {
        "dev_accuracy": scores[-1]["accuracy"],
        "history": scores,
        "steps": steps,
        "train_examples": len(train),
        "pt_pairs": pairs,
        "schedule": args.schedule,
        "seconds": {
            "imports": round(t_import, 2),
            "setup": round(t_setup - t_import, 2),
            "train_and_eval": round(time.perf_counter() - T0 - t_setup, 2),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
