"""ONNX export of a fine-tuned classifier (+ dynamic int8), checked against PyTorch.

`export` turns a `pkd finetune` / `pkd distill` output (the run dir or its `model/`) into a
self-contained directory that needs onnxruntime and a tokenizer, not torch:

    OUT/model.onnx        fp32 graph; inputs named as the tokenizer names them
                          (`tokenizer.model_input_names`), int64 (batch, sequence); output
                          `logits` (batch, num_labels). Batch and sequence axes are dynamic.
    OUT/model.int8.onnx   with `quantize="int8"`: onnxruntime's dynamic quantiser, int8 weights
                          (QInt8, per output channel), activations quantised per batch.
    OUT/config.json       the model config (label names in id2label), OUT/tokenizer*
    OUT/parity.json       the parity check below, with versions and settings.
    OUT/README.md         the model's card (`pkd.models.card`) with the ONNX files and the parity check.

Exporter. torch 2.13 offers the TorchScript tracer (`torch.onnx.export(dynamo=False)`) and
the torch.export-based exporter (`dynamo=True`). Both give correct graphs with dynamic axes
for BERT-family classifiers under transformers 5 (max |Δlogit| ~ 1e-8), but the dynamo
exporter needs the `onnxscript` package, which pkd does not depend on, and is slower: 6.8 s
against 1.1 s for the tracer on a 3-layer MiniLM student (9.4 s against 0.3 s on a tiny BERT).
We use the tracer. Its data-dependent branches (the all-ones-mask shortcut in transformers'
mask code) are traced on a padded example batch, so padded and unpadded inputs run the same
masked graph; the parity check verifies this on inputs of other batch sizes and lengths.
The graph is traced from transformers' eager attention (MatMul, Softmax, MatMul per layer)
rather than its default SDPA path: the same logits, and once quantised to int8 it runs 1.4x
faster on 2 CPU cores (3-layer MiniLM student, batch 32 x 128: 108.7 ms against 156.9 ms;
benchmarks/results/onnx_variants.md). Supported opsets: 14 to the tracer's maximum (20 in
torch 2.13), the range the parity tests cover.

Quantisation. onnxruntime's `quantize_dynamic` (QInt8 weights per output channel; MatMul
and the embedding Gathers). Per channel rather than per tensor: the same speed, and on one
SST-2 student it kept 80.62% of 80.73% fp32 where per tensor fell to 79.59%
(benchmarks/results/onnx_variants_6k/onnx_variants.md). onnxruntime's quantiser rather than torch's
because its result is itself an ONNX file that `load_onnx`, `pkd predict`
and `pkd benchmark --backend onnx` run unchanged, and it is 4x smaller than fp32 (17.6 MB vs
69.6 MB for the MiniLM student). torch's `torch.ao.quantization.quantize_dynamic` (Linear
layers only) is about as fast on CPU but gives a torch module that cannot be exported to ONNX
and keeps fp32 embeddings (53 MB); numbers in docs/serving.md.

Parity check, on real inputs: the task's dev split when a task or validation file is given,
otherwise `PARITY_SENTENCES`; the first `parity_samples` texts, batched by 32 with dynamic
padding, so several batch shapes are exercised. Tolerances (`PkdError` beyond them):

    fp32: max |logit_onnx - logit_torch| <= FP32_MAX_ABS_DIFF (1e-3) over all examples and
          classes. Observed: < 3e-6 (float32 kernels differ in summation order only).
    int8: agreement of predicted labels with PyTorch >= INT8_MIN_AGREEMENT (0.95), where a
          near-tie counts as agreeing: int8 picked a label whose PyTorch logit is within
          INT8_TIE_MARGIN (0.25) of PyTorch's top one. int8 logits legitimately move (up to
          ~0.3 on a MiniLM student), so only the decisions are checked, and a decision
          PyTorch itself made by a hair may flip: on the built-in sentences 16 of 256 of a
          SST-2 student's did, all near-ties (benchmarks/results/onnx_variants.md).
          parity.json holds the strict `agreement`, `agreement_beyond_ties` (gated) and
          `near_ties`. Regression models have no labels to agree on; their int8 max |Δ| is
          reported, not gated.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers

from pkd.config.runs import resolve_model
from pkd.config.sections import DataConfig
from pkd.data.loading import load_split, resolve_task
from pkd.deploy.onnx_model import FP32_FILE, INT8_FILE, load_onnx
from pkd.errors import PkdError
from pkd.fsio import staged_dir
from pkd.models import pooling as P
from pkd.models.card import CARD_FILE, export_card
from pkd.models.encoders import load_finetuned, load_tokenizer, model_head, model_labels
from pkd.training.rundir import check_output, run_lock

logger = logging.getLogger(__name__)

FP32_MAX_ABS_DIFF = 1e-3
INT8_MIN_AGREEMENT = 0.95
INT8_TIE_MARGIN = 0.25  # logits: a flip between labels PyTorch scored this close is a near-tie
MIN_OPSET = 14  # the lowest opset the parity tests run
PARITY_FILE = "parity.json"
PARITY_BATCH = 32
QUANTIZE_CHOICES = ("int8",)

# Varied lengths, punctuation, casing, digits, non-ASCII and one text longer than most limits.
PARITY_SENTENCES = [
    "A gripping, beautifully acted film.",
    "Terrible.",
    "I did not expect to enjoy this movie as much as I did, but here we are.",
    "The plot is thin and the dialogue is worse.",
    "ok",
    "An utterly charming story about friendship, loss and second chances.",
    "Two hours of my life I will never get back!!!",
    "The soundtrack is great; the acting, less so.",
    "It's not bad, it's just not good either.",
    "Best film of 2019? Maybe. Best film of the decade? No.",
    "Rated 3/10 by critics, 9/10 by audiences.",
    "The director's cut adds 40 minutes nobody asked for.",
    "Une comédie légère et très réussie.",
    "Café scenes, naïve heroes, and a déjà-vu ending.",
    "WHY WOULD ANYONE MAKE THIS",
    "surprisingly moving",
    "the cast is wonderful and the script is sharp , funny and smart .",
    "a dull , lifeless , and thoroughly forgettable exercise in style over substance .",
    "If you liked the first one, you'll love this one.",
    "Nothing happens for ninety minutes, and then everything happens at once.",
    "A masterpiece.",
    "Not a masterpiece.",
    "The effects look cheap, but the heart is in the right place.",
    "I laughed, I cried, I checked my watch.",
    "Worth watching for the final scene alone.",
    "The kids loved it; the parents fell asleep.",
    "Smart, sad, and funny in equal measure.",
    "Why is everyone in this movie so angry all the time?",
    "It drags.",
    "A bold, strange, and ultimately rewarding experiment.",
    "Skip it.",
    " ".join(
        ["It is long and it rambles and it goes on about many things that do not matter"] * 12
    ),
]


# ---------------------------------------------------------------------------------------------
# Export


def export(
    model: str,
    output: str,
    quantize: str | None = None,
    opset: int = 17,
    task: str | None = None,
    data_dir: str | None = None,
    validation_file: str | None = None,
    text_columns: list[str] | None = None,
    encoding: str = "utf-8",
    parity_samples: int = 256,
    overwrite: bool = False,
) -> dict:
    """Export a fine-tuned classifier to ONNX (+ int8) and check it against PyTorch.

    Args:
        model: a `pkd finetune`/`pkd distill` run directory, or its `model/` directory.
        output: the export directory to create (written whole or not at all).
        quantize: `int8` adds model.int8.onnx (onnxruntime dynamic quantisation).
        opset: ONNX opset, MIN_OPSET .. the exporter's maximum.
        task, data_dir, validation_file, text_columns, encoding: where the parity texts come
            from (the dev split); none given -> PARITY_SENTENCES.
        parity_samples: how many texts the parity check runs.
        overwrite: replace an existing non-empty output directory.

    Returns:
        The parity report (also written to OUT/parity.json), with `output` and `files`.

    Raises:
        PkdError: bad options, not a fine-tuned classifier, an unwritable output, an export
            failure, or a parity check beyond the tolerances in the module docstring.
    """
    t0 = time.perf_counter()
    check_export_options(quantize, opset, parity_samples)
    model_dir = Path(resolve_model(model, "model"))
    inputs = [
        ("--model", str(model_dir)),
        ("--data-dir", data_dir),
        ("--validation-file", validation_file),
    ]
    with run_lock(output):  # no other run writes there meanwhile
        out = check_output(output, overwrite, inputs=inputs)
        net, tokenizer = _load_classifier(model_dir)
        names = list(tokenizer.model_input_names)
        texts, pairs, source = parity_texts(
            task, data_dir, validation_file, text_columns, encoding, parity_samples, net
        )
        with staged_dir(out) as tmp:  # written whole or not at all
            export_seconds = _write_models(net, tokenizer, names, tmp, opset, quantize)
            report = _parity(net, tmp, texts, pairs, quantize == "int8")
            report.update(_settings(net, model_dir, source, opset, names))
            report["seconds"] = {
                "export": round(export_seconds, 2),
                "total": round(time.perf_counter() - t0, 2),
            }
            (tmp / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
            _check_parity(report)
            onnx_files = sorted(f.name for f in tmp.glob("*.onnx"))
            card = export_card(model_dir, out, onnx_files, report)
            (tmp / CARD_FILE).write_text(str(card))
        summary = f"fp32 max |dlogit| {report['fp32']['max_abs_diff']:.2e}"
        if "int8" in report:
            summary += f", int8 agreement {report['int8']['agreement']}"
        logger.info("exported %s -> %s (%s)", model_dir, out, summary)
        files = sorted(f.name for f in out.iterdir())
        return {**report, "output": str(out), "files": files}


def _load_classifier(model_dir: Path):
    """(model, tokenizer) of a fine-tuned sequence classifier; other heads (multiple choice)
    are refused."""
    net = load_finetuned(str(model_dir), "model")
    head = model_head(net)
    if not head.exportable:
        raise PkdError(
            f"--model: {model_dir} is a {head.noun} model; `pkd export` supports "
            "sequence classifiers (one text or a text pair per example)"
        )
    return net, load_tokenizer(str(model_dir), "model")


def _settings(net, model_dir: Path, source: str, opset: int, names: list[str]) -> dict:
    """What parity.json records besides the check itself: model, texts, graph, versions."""
    return {
        "model": str(model_dir),
        "source": source,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False)",
        "input_names": names,
        "output_names": ["logits"],
        "labels": list(model_labels(net)),
        "tolerance": {
            "fp32_max_abs_diff": FP32_MAX_ABS_DIFF,
            "int8_min_agreement": INT8_MIN_AGREEMENT,
            "int8_tie_margin": INT8_TIE_MARGIN,
        },
        "versions": library_versions(),
    }


def _write_models(
    net, tokenizer, names: list[str], directory: Path, opset: int, quantize: str | None
) -> float:
    """model.onnx (+ model.int8.onnx), the tokenizer and config.json in `directory`.

    Returns:
        the seconds the fp32 export took.
    """
    t0 = time.perf_counter()
    # Traced from the eager attention path (same weights, same logits): plain MatMul +
    # Softmax per layer, which int8 quantises and runs faster than the traced SDPA graph.
    net.set_attn_implementation("eager")
    export_graph(net, tokenizer, names, directory / FP32_FILE, opset)
    seconds = time.perf_counter() - t0
    tokenizer.save_pretrained(directory)
    export_config(net.config).save_pretrained(directory)
    if quantize == "int8":
        quantize_int8(directory / FP32_FILE, directory / INT8_FILE)
    return seconds


def export_config(config):
    """The export's config.json, which plain transformers loads without custom code: a
    mean-pooled model's is its encoder's (labels kept, `pkd_pooling` recording the pooling,
    which the graph holds), with no `auto_map`; any other model's is its own."""
    if config.model_type != P.MODEL_TYPE:
        return config
    plain = config.encoder_config()
    plain.update({"pkd_pooling": config.pooling})
    return plain


def check_export_options(quantize: str | None, opset: int, parity_samples: int) -> None:
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise PkdError(f"--quantize: expected one of {list(QUANTIZE_CHOICES)}, got {quantize!r}")
    low, high = supported_opsets()
    if not low <= opset <= high:
        raise PkdError(f"--opset: {opset} is not supported; the exporter supports {low}..{high}")
    if parity_samples < 1:
        raise PkdError(f"--parity-samples: must be at least 1, got {parity_samples}")


def supported_opsets() -> tuple[int, int]:
    """The opsets `export` accepts: MIN_OPSET .. the TorchScript exporter's maximum."""
    try:
        from torch.onnx import _constants

        high = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):  # private module: fall back to torch 2.13's value
        high = 20
    return MIN_OPSET, high


def _logits_module(net, names: list[str]):
    """The model as a function of positional token tensors -> logits (what the tracer sees)."""

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *inputs):
            return self.net(**dict(zip(names, inputs, strict=True))).logits

    # eval() matters twice: the tracer restores the wrapper's mode after exporting, and a fresh
    # Module is in training mode, which would switch dropout on in `net` for the parity check.
    return Logits().eval()


def _example_inputs(tokenizer, names: list[str]):
    """A padded batch of two texts of different lengths: the traced graph keeps the mask."""
    enc = tokenizer(
        ["a short one", "a longer example sentence, so that the first one is padded"],
        padding=True,
        return_tensors="pt",
    )
    return tuple(enc[n] for n in names)


def export_graph(net, tokenizer, names: list[str], path: Path, opset: int) -> None:
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # TracerWarnings (Python bools from shapes) and the exporter's deprecation notice:
            # the parity check, not the warnings, decides whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _logits_module(net, names),
                _example_inputs(tokenizer, names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(f"--opset {opset}: the ONNX exporter failed ({first})") from None


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: weights QInt8 per output channel, activations quantised per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional: pkd[onnx]

    # quantize_dynamic logs a hint to run `quant_pre_process` first. On these graphs its symbolic
    # shape inference fails, and without it the result was the same (identical logits, no
    # faster), so we skip it and silence the hint.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(
            f"--quantize int8: onnxruntime could not quantise {src.name} ({first})"
        ) from None
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Parity


def parity_texts(task, data_dir, validation_file, text_columns, encoding, n, net):
    """(texts, text pairs or None, source) for the parity check."""
    if task is None and data_dir is None and validation_file is None:
        texts = (PARITY_SENTENCES * (n // len(PARITY_SENTENCES) + 1))[:n]
        return texts, None, "pkd.deploy.export.PARITY_SENTENCES"
    if data_dir is not None and task is None:
        raise PkdError("--data-dir: give --task too (the GLUE task whose dev split to read)")
    data = DataConfig(
        task=task or "custom",
        data_dir=data_dir,
        validation_file=validation_file,
        text_columns=text_columns,
        encoding=encoding,
    )
    spec = resolve_task(data, model_labels(net))
    split = spec.eval_splits[0]
    # Labels are not needed; custom files may lack a label column, GLUE dev files have one.
    raw = load_split(
        spec, split, data_dir, validation_file, encoding, labelled=spec.source != "custom"
    ).head(n)
    return raw.text_a, raw.text_b, raw.source


def _parity(net, directory: Path, texts, pairs, int8: bool) -> dict:
    """max |Δlogit| and label agreement of the ONNX graph(s) against PyTorch on `texts`."""
    fp32 = load_onnx(directory)
    batches = [
        fp32.encode(
            texts[i : i + PARITY_BATCH], None if pairs is None else pairs[i : i + PARITY_BATCH]
        )
        for i in range(0, len(texts), PARITY_BATCH)
    ]
    # PyTorch first, then onnxruntime: interleaved, the session's spinning worker threads
    # compete with torch's for the same cores.
    with torch.inference_mode():
        ref = np.concatenate(
            [
                net(**{n: torch.from_numpy(b[n]) for n in fp32.input_names}).logits.float().numpy()
                for b in batches
            ]
        )
    classify = bool(fp32.labels)
    report = {"samples": len(texts), "batch_size": PARITY_BATCH}
    sessions = [("fp32", fp32, FP32_FILE)]
    if int8:
        sessions.append(("int8", load_onnx(directory, int8=True), INT8_FILE))
    for key, session, file in sessions:
        got = []
        for b in batches:
            try:
                got.append(session.run(b))
            except Exception as e:  # e.g. a graph whose shapes were fixed at trace time
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                shape = tuple(b["input_ids"].shape)
                raise PkdError(
                    f"parity check failed: {file} does not run on a batch of shape {shape} ({first})"
                ) from None
        report[key] = _compare(ref, np.concatenate(got), classify, directory / file)
    return report


def _compare(ref: np.ndarray, got: np.ndarray, classify: bool, file: Path) -> dict:
    """Logit differences; for classifiers, label agreement, strict and beyond near-ties.

    A near-tie: the label the graph picked has a PyTorch logit within INT8_TIE_MARGIN of
    PyTorch's top logit, so PyTorch itself barely preferred its own label.
    """
    report = {
        "max_abs_diff": float(np.abs(ref - got).max()),
        "mean_abs_diff": float(np.abs(ref - got).mean()),
        "agreement": None,
        "agreement_beyond_ties": None,
        "near_ties": None,
        "file_bytes": file.stat().st_size,
    }
    if classify:
        picked = got.argmax(-1)
        same = ref.argmax(-1) == picked
        gap = ref.max(-1) - np.take_along_axis(ref, picked[:, None], -1)[:, 0]
        tie = ~same & (gap <= INT8_TIE_MARGIN)
        report.update(
            agreement=float(same.mean()),
            agreement_beyond_ties=float((same | tie).mean()),
            near_ties=int(tie.sum()),
        )
    return report


def _check_parity(report: dict) -> None:
    fp32 = report["fp32"]
    if not fp32["max_abs_diff"] <= FP32_MAX_ABS_DIFF:  # `not <=` also catches NaN
        raise PkdError(
            f"parity check failed: ONNX fp32 max |dlogit| {fp32['max_abs_diff']:.3g} > "
            f"{FP32_MAX_ABS_DIFF:g} on {report['samples']} texts from {report['source']}"
        )
    q = report.get("int8")
    if q and q["agreement"] is not None and not q["agreement_beyond_ties"] >= INT8_MIN_AGREEMENT:
        raise PkdError(
            f"parity check failed: int8 predictions agree with PyTorch on "
            f"{q['agreement_beyond_ties']:.1%} < {INT8_MIN_AGREEMENT:.0%} of "
            f"{report['samples']} texts from {report['source']} (near-ties within "
            f"{INT8_TIE_MARGIN:g} logits count as agreeing); export without --quantize"
        )


def library_versions() -> dict:
    import onnx  # optional dependencies (pkd[onnx]), imported when used
    import onnxruntime

    return {
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
