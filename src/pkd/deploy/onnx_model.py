"""Run a `pkd export` directory with onnxruntime: `load_onnx` -> `OnnxModel`.

An export holds model.onnx (and model.int8.onnx), the tokenizer and config.json (label names);
`pkd.deploy.export` writes and checks it, `pkd predict` and `pkd benchmark --backend onnx` run it.
onnx and onnxruntime are optional dependencies (`pip install "pkd[onnx]"`), imported by
`load_onnx` when it is called.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pkd.errors import PkdError
from pkd.models.encoders import load_tokenizer, token_positions

FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"


@dataclass
class OnnxModel:
    """An exported classifier: an onnxruntime session, its tokenizer and label names.

    Attributes:
        path: the .onnx file.
        session: the onnxruntime InferenceSession (CPU).
        tokenizer: the tokenizer saved beside the model.
        labels: label names in logit order (empty for regression).
        input_names: the graph's inputs (a subset of the tokenizer's outputs).
        num_parameters: element count of all initializers (shared ones counted once; int8
            graphs add their scales and zero points).
        max_length: tokens per text (the tokenizer's limit, capped by position embeddings).
        config: the model's config.json.
    """

    path: Path
    session: object
    tokenizer: object
    labels: tuple[str, ...]
    input_names: list[str]
    num_parameters: int
    max_length: int
    config: dict = field(default_factory=dict)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (B, C) for token arrays (B, T); extra keys in `feeds` are ignored."""
        inputs = {n: np.asarray(feeds[n], dtype=np.int64) for n in self.input_names}
        return self.session.run(["logits"], inputs)[0]

    def encode(self, texts: list[str], text_pairs: list[str] | None = None) -> dict:
        return self.tokenizer(
            list(texts),
            None if text_pairs is None else list(text_pairs),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )

    def logits(
        self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Logits (N, C) of N texts (or text pairs), padded per batch."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise PkdError(f"text_pairs: {len(text_pairs)} pairs for {len(texts)} texts")
        out = []
        for i in range(0, len(texts), batch_size):
            pairs = None if text_pairs is None else text_pairs[i : i + batch_size]
            out.append(self.run(self.encode(texts[i : i + batch_size], pairs)))
        return np.concatenate(out) if out else np.zeros((0, max(1, len(self.labels))), "float32")

    def predict(
        self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32
    ) -> list[str]:
        """Label names (regression: the score formatted as `%.3f`, as in GLUE submissions)."""
        logits = self.logits(texts, text_pairs, batch_size)
        if not self.labels:
            return [f"{v:.3f}" for v in logits[:, 0]]
        return [self.labels[i] for i in logits.argmax(-1)]


def load_onnx(
    path: str | os.PathLike, int8: bool = False, threads: int | None = None, spinning: bool = True
) -> OnnxModel:
    """Load a `pkd export` directory (or one of its .onnx files) for inference on CPU.

    Args:
        path: the export directory, or `DIR/model.onnx` / `DIR/model.int8.onnx`.
        int8: with a directory, load model.int8.onnx instead of model.onnx.
        threads: intra-op threads of the session (default: torch's thread count, so that
            both backends are compared on the same cores); inter-op is sequential.
        spinning: let idle worker threads spin-wait for work (onnxruntime's default: lower
            latency for one session on its own cores); off when sessions share the cores.

    Raises:
        PkdError: missing files, or not an export directory.
    """
    import onnx  # optional dependencies (pip install "pkd[onnx]"): imported when used
    import onnxruntime as ort

    p = Path(path)
    if p.is_dir():
        file = p / (INT8_FILE if int8 else FP32_FILE)
        directory = p
    else:
        file, directory = p, p.parent
    if not file.is_file():
        hint = "export with --quantize int8" if int8 else "not a `pkd export` directory"
        raise PkdError(f"{path}: no {file.name} ({hint})")
    if not (directory / "config.json").is_file():
        raise PkdError(f"{directory}: no config.json beside {file.name}; re-run `pkd export`")
    config = json.loads((directory / "config.json").read_text())
    tokenizer = load_tokenizer(str(directory), "model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or _torch_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: unused-initializer notes are not for users
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(f"{file}: onnxruntime cannot load it ({first})") from None
    graph = onnx.load(str(file), load_external_data=False).graph
    n_params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    return OnnxModel(
        path=file,
        session=session,
        tokenizer=tokenizer,
        labels=_labels(config),
        input_names=[i.name for i in session.get_inputs()],
        num_parameters=n_params,
        max_length=_max_length(tokenizer, token_positions(config)),
        config=config,
    )


def _labels(config: dict) -> tuple[str, ...]:
    if config.get("problem_type") == "regression" or config.get("num_labels", 2) == 1:
        return ()
    id2label = config.get("id2label") or {}
    if len(id2label) == 1:
        return ()
    return tuple(id2label[str(i)] for i in range(len(id2label)))


def _max_length(tokenizer, max_positions: int | None) -> int:
    limit = tokenizer.model_max_length
    if not isinstance(limit, int) or limit > 100_000:  # "no limit" sentinel (1e30)
        limit = 512
    return min(limit, max_positions or limit)


def _torch_threads() -> int:
    return torch.get_num_threads()
