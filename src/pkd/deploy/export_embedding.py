"""`pkd export` of an embedding model (a sentence-transformers directory, `pkd pretrain`'s
embedding students): ONNX (+ int8) whose output is the sentence embedding, with a parity check.

The graph holds the whole embedding: encoder, pooling, the dense layer of a narrower student,
normalisation, so onnxruntime needs no custom code: inputs `input_ids`, `attention_mask` (and
`token_type_ids`), output `logits`: the sentence embeddings (B, H), named as a classifier's
output so that `pkd.deploy.onnx_model` and `pkd benchmark --backend onnx` run it as they are. `parity.json` records the fp32 graph's
max |difference| to PyTorch's embeddings (held to `pkd.deploy.export.FP32_MAX_ABS_DIFF`) and,
with `--quantize int8`, the int8 graph's cosine similarity to them (mean and minimum over the
texts: reported, not held to a bound; published MiniLM int8 exports fall to about 0.96).
A classifier is exported by `pkd.deploy.export.export`; `export_model` picks one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from pkd.config.runs import resolve_model
from pkd.deploy import export as X
from pkd.deploy.onnx_model import FP32_FILE, INT8_FILE
from pkd.errors import PkdError
from pkd.fsio import staged_dir
from pkd.models.encoders import load_encoder, load_tokenizer, max_length_limit
from pkd.models.sentence_transformers import SentenceHead, embedding_model_head, load_dense
from pkd.training.rundir import check_output, run_lock

logger = logging.getLogger(__name__)

OUTPUT = "logits"  # the graph's output: the sentence embeddings (B, H)
NOT_COPIED = ("model.safetensors", "modules.json", "sentence_bert_config.json")
NOT_COPIED += ("config_sentence_transformers.json",)  # an export is not a sentence-transformers dir


def export_model(model: str, output: str, **options) -> dict:
    """`pkd export`: an embedding model (`export_embedding`) or a classifier
    (`pkd.deploy.export.export`), with the same options."""
    model_dir = Path(resolve_model(model, "model"))
    head = embedding_model_head(str(model_dir))
    if head is None:
        return X.export(model, output, **options)
    return export_embedding(model_dir, head, output, **options)


class Embedder(torch.nn.Module):
    """Token tensors -> the model's sentence embeddings (as `logits`, so that the graph is
    traced and named as a classifier's: `pkd.deploy.export.export_graph`)."""

    def __init__(self, encoder, head: SentenceHead, dense, names: list[str]):
        super().__init__()
        self.encoder, self.dense, self.head, self.names = encoder, dense, head, names

    def forward(self, **feeds) -> SimpleNamespace:
        """`logits`: the embeddings (the output a `pkd export` graph has)."""
        pooled = self.head(self.encoder(**feeds).last_hidden_state, feeds["attention_mask"])
        return SimpleNamespace(
            logits=self.head.finish(self.dense(pooled) if self.dense is not None else pooled)
        )


def export_embedding(
    model_dir: Path,
    head: SentenceHead,
    output: str,
    quantize: str | None = None,
    opset: int = 17,
    parity_samples: int = 256,
    overwrite: bool = False,
    **data,
) -> dict:
    """Export an embedding model to ONNX (+ int8) and check it against PyTorch; `data`: the
    parity texts' options of `pkd.deploy.export.export` (task, data_dir, validation_file,
    text_columns, encoding). Returns the parity report with `output` and `files`."""
    t0 = time.perf_counter()
    X.check_export_options(quantize, opset, parity_samples)
    with run_lock(output):
        out = check_output(output, overwrite, inputs=[("--model", str(model_dir))])
        tokenizer = load_tokenizer(str(model_dir), "model")
        encoder = load_encoder(str(model_dir), "model").eval()
        encoder.set_attn_implementation("eager")  # as classifiers: MatMul + Softmax, int8-able
        names = list(tokenizer.model_input_names)
        net = Embedder(encoder, head, load_dense(str(model_dir)), names).eval()
        texts, pairs, source = X.parity_texts(
            data.get("task"),
            data.get("data_dir"),
            data.get("validation_file"),
            data.get("text_columns"),
            data.get("encoding", "utf-8"),
            parity_samples,
            encoder,
        )
        texts = texts + (pairs or [])  # an embedding model embeds each text on its own
        with staged_dir(out) as tmp:
            X.export_graph(net, tokenizer, names, tmp / FP32_FILE, opset)
            for f in model_dir.iterdir():  # tokenizer and config.json (the graph holds the rest)
                if f.is_file() and f.name not in NOT_COPIED and f.suffix not in (".bin", ".md"):
                    shutil.copy2(f, tmp / f.name)
            if quantize == "int8":
                X.quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE)
            report = parity(net, tokenizer, tmp, texts, quantize == "int8")
            report.update({"model": str(model_dir), "source": source, "opset": opset})
            report.update({"output_names": [OUTPUT], "embedding": True})
            report.update(
                {"versions": X.library_versions(), "seconds": round(time.perf_counter() - t0, 2)}
            )
            (tmp / X.PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
            if not report["fp32"]["max_abs_diff"] <= X.FP32_MAX_ABS_DIFF:
                raise PkdError(
                    f"parity check failed: ONNX fp32 max |dembedding| "
                    f"{report['fp32']['max_abs_diff']:.3g} > {X.FP32_MAX_ABS_DIFF:g}"
                )
        return {**report, "output": str(out), "files": sorted(f.name for f in out.iterdir())}


def parity(net: Embedder, tokenizer, directory: Path, texts: list[str], int8: bool) -> dict:
    """The fp32 graph's max |difference| to PyTorch's embeddings, and each graph's cosine
    similarity to them (mean, min)."""
    import onnxruntime as ort  # optional: pkd[onnx]

    limit = max_length_limit(net.encoder.config, tokenizer) or net.head.max_seq_length
    length = min(limit, net.head.max_seq_length)
    batches = [
        tokenizer(texts[i : i + X.PARITY_BATCH], padding=True, truncation=True, max_length=length)
        for i in range(0, len(texts), X.PARITY_BATCH)
    ]
    feeds = [{n: np.asarray(b[n], dtype=np.int64) for n in net.names} for b in batches]
    with torch.inference_mode():
        ref = torch.cat(
            [net(**{n: torch.from_numpy(f[n]) for n in net.names}).logits for f in feeds]
        )
    report = {"samples": len(texts), "batch_size": X.PARITY_BATCH}
    for key, file in [("fp32", FP32_FILE), *([("int8", INT8_FILE)] if int8 else [])]:
        session = ort.InferenceSession(str(directory / file), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(np.concatenate([session.run([OUTPUT], f)[0] for f in feeds]))
        cosine = F.cosine_similarity(got.float(), ref.float(), dim=-1)
        report[key] = {
            "max_abs_diff": float((got - ref).abs().max()),
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "file_bytes": (directory / file).stat().st_size,
        }
    return report
