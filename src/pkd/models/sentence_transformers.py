"""Sentence-transformers models: how one embeds a sentence (read from its directory), and
pkd's embedding students written as sentence-transformers directories.

A sentence-transformers directory is a plain transformers encoder at its root (config.json,
weights, tokenizer: `AutoModel.from_pretrained` loads it) plus its modules, run in order:

    modules.json                     [Transformer (path ""), Pooling, (Dense), (Normalize)]
    sentence_bert_config.json        {"max_seq_length", "do_lower_case"} of the Transformer
    1_Pooling/config.json            {"word_embedding_dimension", "pooling_mode_mean_tokens", ...}
    2_Dense/config.json, model.safetensors   a student narrower than its teacher: H_s -> H_t
    2_Normalize/ (3_ after a Dense)  L2 normalisation, when the teacher normalises

`SentenceTransformer(dir)` then computes e = normalize(dense(pool(h))), the embedding pkd
trained the student on (`pkd.objectives.embedding`). sentence-transformers itself is not needed
to write or read these files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pkd.errors import PkdError
from pkd.models.encoders import (
    checkpoint_pooling,
    load_config,
    load_encoder,
    load_tokenizer,
    read_json,
)
from pkd.models.pooling import MODEL_TYPE, mean_pool

logger = logging.getLogger(__name__)

MODULES = "sentence_transformers.models."  # the module types modules.json names (all versions)
IDENTITY = "torch.nn.modules.linear.Identity"  # a Dense module without an activation
DEFAULT_MAX_SEQ_LENGTH = 256
HEADS = ("ForSequenceClassification", "ForMultipleChoice")  # a task model's architectures


@dataclass(frozen=True)
class SentenceHead:
    """How a sentence-embedding model turns its last token states into one vector: `pooling`
    (`mean` or `cls`), then L2 normalisation when `normalize` (a Normalize module)."""

    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    do_lower_case: bool = False

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) states and (B, T) mask -> (B, H) pooled states (not normalised)."""
        return mean_pool(states, mask) if self.pooling == "mean" else states[:, 0]

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """The pooled states (through the dense layer, if any) as the model outputs them."""
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A model's embedding of its last states: pool and finish."""
        return self.finish(self(states, mask))


def sentence_head(name_or_path: str) -> SentenceHead | None:
    """How a sentence-transformers checkpoint embeds a sentence (its modules.json, Pooling
    config and sentence_bert_config.json), or None when it is not one (no Pooling module).
    A pooling mode pkd does not have (max, weightedmean, ...) is read as mean, with a warning."""
    found, _ = checkpoint_pooling(name_or_path)
    if found is None:
        return None
    if found not in ("mean", "cls"):
        logger.warning("%s pools by %s, which pkd does not have; using mean", name_or_path, found)
    modules, _ = read_json(name_or_path, "modules.json")
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    config, _ = read_json(name_or_path, "sentence_bert_config.json")
    config = config if isinstance(config, dict) else {}
    return SentenceHead(
        "cls" if found == "cls" else "mean",
        normalize,
        int(config.get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH),
        bool(config.get("do_lower_case", False)),
    )


def write_sentence_transformer(
    model_dir: Path, head: SentenceHead, hidden: int, dense: torch.nn.Linear | None = None
) -> list[str]:
    """Write the sentence-transformers modules beside the encoder in `model_dir` (its
    config.json, weights and tokenizer are already there); `hidden`: the encoder's width.
    Returns the files written, relative to `model_dir`."""
    model_dir = Path(model_dir)
    modules = [("", "Transformer")]
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": head.pooling == "cls",
        "pooling_mode_mean_tokens": head.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    files = {"1_Pooling/config.json": pooling}
    modules.append(("1_Pooling", "Pooling"))
    if dense is not None:
        files["2_Dense/config.json"] = {
            "in_features": dense.in_features,
            "out_features": dense.out_features,
            "bias": True,
            "activation_function": IDENTITY,
        }
        weights = {
            f"linear.{k}": v.detach().cpu().contiguous() for k, v in dense.state_dict().items()
        }
        (model_dir / "2_Dense").mkdir(exist_ok=True)
        save_file(weights, model_dir / "2_Dense" / "model.safetensors")
        modules.append(("2_Dense", "Dense"))
    if head.normalize:
        path = f"{len(modules)}_Normalize"
        (model_dir / path).mkdir(exist_ok=True)
        modules.append((path, "Normalize"))
    files["modules.json"] = [
        {"idx": i, "name": str(i), "path": path, "type": MODULES + kind}
        for i, (path, kind) in enumerate(modules)
    ]
    files["sentence_bert_config.json"] = {
        "max_seq_length": head.max_seq_length,
        "do_lower_case": head.do_lower_case,
    }
    files["config_sentence_transformers.json"] = {"similarity_fn_name": "cosine"}
    for name, content in files.items():
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    return sorted([*files, *(["2_Dense/model.safetensors"] if dense is not None else [])])


def load_dense(model_dir: str) -> torch.nn.Linear | None:
    """A sentence-transformers directory's Dense module (as `write_sentence_transformer`
    writes it: no activation), or None when it has none."""
    modules, _ = read_json(model_dir, "modules.json")
    dense = next((m for m in modules or [] if str(m.get("type", "")).endswith("Dense")), None)
    if dense is None:
        return None
    path = Path(model_dir) / dense["path"]
    config = json.loads((path / "config.json").read_text())
    if config.get("activation_function", IDENTITY) != IDENTITY:
        raise PkdError(
            f"{path}: a Dense module with activation {config['activation_function']}; pkd "
            "reads those without one (its own students')"
        )
    layer = torch.nn.Linear(config["in_features"], config["out_features"], config.get("bias", True))
    weights = load_file(path / "model.safetensors")
    layer.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
    return layer.eval()


def embedding_model_head(model: str) -> SentenceHead | None:
    """How `model` embeds a sentence when it is an embedding model: a local
    sentence-transformers directory (modules.json with a Pooling module) without a task
    head (`pkd evaluate` and `pkd export` treat it as one); else None."""
    if not Path(model).is_dir():
        return None
    head = sentence_head(model)
    if head is None:
        return None
    config = load_config(model, "model")
    task = config.model_type == MODEL_TYPE or any(
        a.endswith(HEADS) for a in getattr(config, "architectures", None) or []
    )
    return None if task else head


def write_encoder(model_dir: str, output: str) -> Path:
    """The encoder of a mean-pooled classifier (`pkd distill`/`finetune --pooling mean`) as a
    sentence-transformers directory at `output`: the plain encoder (`AutoModel`), its
    tokenizer, mean pooling, no normalisation (the vector its head reads). Returns `output`."""
    out = Path(output)
    encoder = load_encoder(model_dir, "model")
    encoder.save_pretrained(out)
    load_tokenizer(model_dir, "model").save_pretrained(out)
    write_sentence_transformer(out, SentenceHead("mean", False), encoder.config.hidden_size)
    return out
