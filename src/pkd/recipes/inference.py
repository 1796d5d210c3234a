"""`pkd evaluate` and `pkd predict`: run a fine-tuned model (or an ONNX export) on a split.

The split is read with the model's label names and order (ids mean its labels); `evaluate`
scores a labelled split, `predict` writes GLUE submission files. An embedding model (a
sentence-transformers directory: modules.json with a Pooling module, no task head) is scored
on sentence pairs with a score instead: the Spearman and Pearson correlations of its
embeddings' cosine similarities with the gold scores (`evaluate_embedding`). Outputs are checked before
the model runs: they may not replace one of the model's files or the data read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator

from pkd.config.runs import check_inference_data, resolve_model
from pkd.config.sections import DataConfig
from pkd.data.kinds import task_kind
from pkd.data.loading import (
    check_label_sets,
    collator,
    encode,
    file_for,
    load_data_split,
    load_split,
    resolve_task,
)
from pkd.data.readers import file_option
from pkd.data.splits import read_jsonl, read_rows
from pkd.data.text import pair_texts
from pkd.deploy.onnx_model import load_onnx
from pkd.errors import PkdError
from pkd.fsio import atomic_write, write_json
from pkd.models.encoders import (
    load_encoder,
    load_finetuned,
    load_tokenizer,
    max_length_limit,
    model_labels,
)
from pkd.models.sentence_transformers import SentenceHead, embedding_model_head, load_dense
from pkd.objectives.embedding import embed_model, pair_scores
from pkd.tasks import (
    CLASSIFICATION,
    REGRESSION,
    SCORE_TYPES,
    TaskSpec,
    align_labels,
    readable_labels,
    with_positive_label,
)
from pkd.training.evaluation import predict_logits, score
from pkd.training.rundir import check_not_input, check_writable, data_inputs

logger = logging.getLogger(__name__)

PKD_OUTPUTS = ("eval_*.json", "predictions_*.tsv")  # what evaluate/predict write by a model


def load_for_inference(model: str, data: DataConfig, split: str, labelled: bool):
    """The model, its tokenizer, the task, and the raw and encoded split to run it on."""
    net = load_finetuned(model, "model")
    tokenizer = load_tokenizer(model, "model")
    # the default --max-length may exceed a small model's positions: cut there, do not crash
    max_length = min(data.max_length, max_length_limit(net.config, tokenizer) or data.max_length)
    spec, raw = inference_split(data, split, model_labels(net), labelled)
    label2id = spec.label2id() if labelled else None
    enc = encode(raw, tokenizer, max_length, label2id, show_progress=False)
    return net, tokenizer, spec, raw, enc


def loads_unlabelled(spec: TaskSpec, split: str, data: DataConfig, file: str | None) -> bool:
    """Whether a split that failed to load with labels is unlabelled (test) data: it has no
    label column (key) at all, and reads fine without one."""
    if not isinstance(spec.label_column, str):
        return False  # header-less GLUE files: columns by position
    try:
        raw = load_split(spec, split, data.data_dir, file, data.encoding, labelled=False)
        path = Path(raw.source)
        if path.suffix.lower() in (".jsonl", ".json"):
            return not any(spec.label_column in obj for _, obj in read_jsonl(path, data.encoding))
        header = read_rows(path, data.encoding, quoted=spec.source == "custom")[0][1]
    except (PkdError, IndexError):
        return False
    return spec.label_column not in [h.strip() for h in header]


def inference_split(data: DataConfig, split: str, labels: tuple[str, ...], labelled: bool):
    """The task (labels: the data's names in the model's order, `pkd.tasks.align_labels`)
    and the raw split to run a model on."""
    spec = resolve_task(data, readable_labels(labels))
    if spec.problem_type == CLASSIFICATION and labels:  # the model's order: ids mean its labels
        spec = align_labels(spec, labels, "--model")
    spec = with_positive_label(spec, data.positive_label)
    if split not in spec.splits and spec.source != "custom":
        raise PkdError(
            f"--split: task {spec.name} has no split {split!r}; it has {list(spec.splits)}"
        )
    file = file_for(data, split)
    if spec.source == "custom" and file is None and data.dataset is None:
        raise PkdError(f"--{file_option(split)}: required for split {split!r} (or --dataset)")
    try:
        raw = load_data_split(data, spec, split, labelled=labelled)
    except PkdError:
        on_disk = isinstance(file, str) or (file is None and data.dataset is None)
        if labelled and on_disk and loads_unlabelled(spec, split, data, file):
            where = file or str(Path(data.data_dir or ".") / spec.splits.get(split, split))
            raise PkdError(
                f"{where}: has no {spec.label_column!r} labels to evaluate against; "
                "use `pkd predict` for unlabelled data"
            ) from None
        raise
    raw = raw.head(data.max_eval_samples)
    if spec.problem_type == CLASSIFICATION and labelled:
        check_label_sets(spec, {split: raw})
    return spec, raw


def model_files(model: str) -> list[Path]:
    """The files a model is loaded from (a model or export directory, or one .onnx file)."""
    p = Path(model)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []  # a Hub name
    return [f for f in p.iterdir() if f.is_file() and not any(f.match(g) for g in PKD_OUTPUTS)]


def check_output_file(path: Path, model: str, data: DataConfig, source: str) -> Path:
    """Refuse an --output-file that is a directory, lies under a file, cannot be written (a
    read-only model directory, for the default), or would replace an input: one of the
    model's files or the data read (`source`, the split's file)."""
    if path.is_dir():
        raise PkdError(f"--output-file: {path} is a directory; pass a file name")
    check_writable(path, "--output-file")
    inputs = [("--model", str(f)) for f in model_files(model)]
    check_not_input(path, "--output-file", [*inputs, *data_inputs(data), ("data file", source)])
    return path


def check_batch_size(batch_size: int) -> None:
    """--batch-size of evaluate/predict."""
    if batch_size < 1:
        raise PkdError(f"--batch-size: must be >= 1, got {batch_size}")


def evaluate(
    model: str,
    data: DataConfig,
    split: str = "dev",
    batch_size: int = 128,
    write: bool = False,
    output_file: str | None = None,
) -> dict:
    """Task metrics of a fine-tuned model on a labelled split.

    write: also write them as JSON to output_file (default: RUN/eval_TASK_SPLIT.json beside
    the model directory), checked before the model runs.
    """
    check_batch_size(batch_size)
    check_inference_data(data)
    model = resolve_model(model, "model")
    spec = resolve_task(data) if data.task != "custom" else None
    if split.startswith("test") and not (spec is not None and spec.test_labelled):
        raise PkdError(
            f"--split: {split} has no labels in GLUE; use `pkd predict` for test predictions"
        )
    if spec is not None and split == "dev" and "dev" not in spec.splits:
        split = spec.eval_splits[0]
    head = embedding_model_head(model)
    if head is not None:
        return evaluate_embedding(model, head, data, split, batch_size, write, output_file)
    net, tokenizer, spec, raw, enc = load_for_inference(model, data, split, labelled=True)
    name = f"eval_{spec.name}_{split}.json"
    out = eval_output(model, data, name, output_file, raw.source) if write else None
    acc = Accelerator(cpu=not torch.cuda.is_available())
    net.to(acc.device)
    loader = acc.prepare(
        torch.utils.data.DataLoader(enc, batch_size=batch_size, collate_fn=collator(tokenizer))
    )
    metrics = {
        "task": spec.name,
        "split": split,
        "examples": len(raw),
        "source": raw.source,
        **score(net, loader, spec, acc),
    }
    return written(out, metrics)


def written(out: Path | None, metrics: dict) -> dict:
    """The metrics, written to `out` (when not None) as JSON."""
    if out is not None:
        try:
            write_json(out, metrics)
        except OSError as e:  # checked above; a disk that filled since: keep the metrics
            raise PkdError(
                f"--output-file: cannot write {out} ({e.strerror}); the metrics: "
                f"{json.dumps(metrics)}"
            ) from None
    return metrics


def evaluate_embedding(
    model: str,
    head: SentenceHead,
    data: DataConfig,
    split: str,
    batch_size: int,
    write: bool,
    output_file: str | None,
) -> dict:
    """An embedding model's Spearman and Pearson (of its cosine similarities) on a split of
    scored pairs: STS-B (`--task stsb`) or the user's files with two text columns and a
    score column (`--text-columns a,b --label-column score`). No head, no training."""
    if data.task == "custom":
        data = dataclasses.replace(data, problem_type=REGRESSION)
    spec = resolve_task(data)
    if spec.problem_type not in SCORE_TYPES:
        raise PkdError(
            f"--task: {spec.name} is not scored pairs; an embedding model ({model}) is "
            "evaluated on sentence pairs with a score (--task stsb, or files with "
            "--text-columns a,b --label-column score)"
        )
    raw = load_data_split(data, spec, split, labelled=True).head(data.max_eval_samples)
    texts = pair_texts(raw)
    name = f"eval_{spec.name}_{split}.json"
    out = eval_output(model, data, name, output_file, raw.source) if write else None
    tokenizer = load_tokenizer(model, "model")
    encoder = load_encoder(model, "model")
    limit = max_length_limit(encoder.config, tokenizer) or head.max_seq_length
    enc = encode(texts, tokenizer, min(data.max_length, head.max_seq_length, limit), None, False)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    dense = load_dense(model)
    encoder.to(acc.device)
    dense = dense.to(acc.device) if dense is not None else None
    loader = acc.prepare(
        torch.utils.data.DataLoader(enc, batch_size=batch_size, collate_fn=collator(tokenizer))
    )
    embeddings = embed_model(encoder, loader, acc, head, dense)
    metrics = {"task": spec.name, "split": split, "examples": len(raw), "source": raw.source}
    metrics.update({"embedding": True, **pair_scores(embeddings, raw.labels)})
    return written(out, metrics)


def eval_output(
    model: str, data: DataConfig, name: str, output_file: str | None, source: str
) -> Path | None:
    """Where `evaluate` writes its metrics: --output-file (checked: a bad one is refused before
    the model runs), else `name` beside the model directory (in its run directory); None,
    with a warning, when that default cannot be written (a read-only model directory): the
    metrics are still returned and printed."""
    if output_file:
        return check_output_file(Path(output_file), model, data, source)
    try:
        return check_output_file(Path(model).resolve().parent / name, model, data, source)
    except PkdError as e:
        logger.warning("%s; the metrics are printed only (pass --output-file to keep them)", e)
        return None


def predict(
    model: str,
    data: DataConfig,
    split: str = "test",
    output: str | None = None,
    batch_size: int = 128,
) -> Path:
    """Predictions in GLUE submission format: `index<TAB>prediction` (label names).

    output: the TSV to write (default: predictions_TASK_SPLIT.tsv in the model directory).
    """
    check_batch_size(batch_size)
    check_inference_data(data)
    onnx = Path(model).suffix == ".onnx" or (Path(model) / "model.onnx").is_file()
    model = model if onnx else resolve_model(model, "model")
    model_dir = Path(model) if Path(model).is_dir() else Path(model).parent

    def checked_output(spec: TaskSpec, raw) -> Path:
        default = model_dir / f"predictions_{spec.name}_{split}.tsv"
        return check_output_file(Path(output or default), model, data, raw.source)

    if onnx:
        # An `pkd export` directory: onnxruntime only, no PyTorch model code.
        onnx_model = load_onnx(model)
        spec, raw = inference_split(data, split, onnx_model.labels, labelled=False)
        out = checked_output(spec, raw)
        names = onnx_model.predict(raw.text_a, raw.text_b, batch_size)
        if onnx_model.labels:  # the data's names, as for a PyTorch model
            names = [spec.labels[onnx_model.labels.index(n)] for n in names]
    else:
        net, tokenizer, spec, raw, enc = load_for_inference(model, data, split, labelled=False)
        out = checked_output(spec, raw)
        acc = Accelerator(cpu=not torch.cuda.is_available())
        net.to(acc.device)
        loader = acc.prepare(
            torch.utils.data.DataLoader(enc, batch_size=batch_size, collate_fn=collator(tokenizer))
        )
        logits, _ = predict_logits(net, loader, acc)
        kind = task_kind(spec)  # label names (GLUE: the submission's ids), scores or letters
        names = kind.prediction_names(kind.predictions(logits), spec.labels)
    lines = ["index\tprediction"] + [f"{i}\t{n}" for i, n in zip(raw.ids, names, strict=True)]
    try:
        atomic_write(out, "\n".join(lines) + "\n")
    except OSError as e:  # checked before the model ran; a disk that filled since
        raise PkdError(f"--output-file: cannot write {out} ({e.strerror})") from None
    return out
