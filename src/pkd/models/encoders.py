"""Load models: configs, tokenizers, fine-tuned teachers, encoders with a new task head; read
their layer states, positions and records. Students are built in `pkd.models.students`.

Pooling (`--pooling auto|cls|mean`): how a model turns its token states into one vector, for
the task head and for the patient loss. `cls` is the paper's setting and BERT's own classes
(the [CLS] state through the pre-trained pooler); `mean` is the masked mean of the token
states, for sentence-transformers checkpoints trained to be read that way, through the heads
of `pkd.models.pooling`. `auto` reads a checkpoint's sentence-transformers pooling config
(`modules.json` -> `1_Pooling/config.json`) and keeps `cls` without one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from pkd.config.runs import MODEL_SOURCES, resolve_model
from pkd.errors import PkdError
from pkd.models import pooling as P
from pkd.tasks import (
    CHOICE_HEAD,
    SEQUENCE_HEAD,
    Head,
    architecture_head,
    head_config,
    problem_head,
)

logger = logging.getLogger(__name__)

# Written into a fine-tuned model's config.json by `pkd finetune` / `pkd distill`.
BASE_MODEL_KEY = "pkd_base_model"  # the pre-trained checkpoint it was fine-tuned from
DEV_METRIC_KEY = "pkd_dev_metric"  # {"name", "value", "baseline"} on the dev split
TASK_KEY = "pkd_task"
# The attention implementation the model trained with (sdpa; eager where the encoder has no
# SDPA, e.g. MPNet and DeBERTa-v2): transformers' choice, or `pkd.models.pooling`'s for mean heads.
ATTENTION_KEY = "pkd_attention"
# Encoders whose position ids start at pad_token_id + 1 (RoBERTa's embeddings).
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl")


def quiet_transformers() -> None:
    """transformers 5 prints a load report per model; keep our own output readable.

    For hosts (the CLI, scripts): it changes transformers' global logging, so the library
    never calls it.
    """
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_load_report():
    """transformers 5 logs a LOAD REPORT table (missing and unexpected keys) with every load;
    for a new head or dropped layers those rows are expected, so loads that make them run at
    error verbosity, the caller's verbosity restored after."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity(max(level, transformers.logging.ERROR))
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists()


# The classes of each head (`pkd.tasks.HEADS`): transformers' Auto class, `pkd.models.pooling`'s.
AUTO_CLASSES = {
    SEQUENCE_HEAD: AutoModelForSequenceClassification,
    CHOICE_HEAD: AutoModelForMultipleChoice,
}
MEAN_POOLED = {
    SEQUENCE_HEAD: P.PkdPooledForSequenceClassification,
    CHOICE_HEAD: P.PkdPooledForMultipleChoice,
}


def auto_class(problem_type: str):
    """The Auto class of a problem type's head (`pkd.tasks.problem_head`)."""
    return AUTO_CLASSES[problem_head(problem_type)]


def load_config(name_or_path: str, option: str, trust_remote_code: bool = False):
    name_or_path = resolve_model(name_or_path, option)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not is_local(name_or_path):
            raise PkdError(
                f"--{option}: {name_or_path} is not a local directory and cannot be loaded from "
                f"the Hub ({first}); pass {MODEL_SOURCES}"
            ) from None
        raise PkdError(
            f"--{option}: cannot load a model config from {name_or_path} ({first})"
        ) from None


def load_tokenizer(name_or_path: str, option: str = "model", trust_remote_code: bool = False):
    """The model's tokenizer.

    Raises:
        PkdError: none loads, or a model directory lacks its tokenizer files (transformers 5
            then builds a tokenizer of the special tokens only, and every word becomes [UNK]).
    """
    name_or_path = resolve_model(name_or_path, option)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(
            f"--{option}: cannot load a tokenizer from {name_or_path} ({first})"
        ) from None
    if is_local(name_or_path):
        _check_tokenizer_size(tok, name_or_path, option, trust_remote_code)
    if not tok.is_fast:
        logger.warning("%s has no fast tokenizer; tokenising will be slow", name_or_path)
    return tok


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model", "tokenizer_config.json")


def _check_tokenizer_size(tok, model_dir: str, option: str, trust_remote_code: bool) -> None:
    """A tokenizer with less than half the model's vocabulary was not saved with the model."""
    vocab_size = getattr(load_config(model_dir, option, trust_remote_code), "vocab_size", None)
    if not vocab_size or len(tok) * 2 >= vocab_size:
        return
    found = sorted({f.name for pattern in TOKENIZER_FILES for f in Path(model_dir).glob(pattern)})
    raise PkdError(
        f"--{option}: {model_dir} has no tokenizer for its {vocab_size}-token vocabulary "
        f"(tokenizer files: {', '.join(found) or 'none'}; it would read {len(tok)} tokens); "
        "save the tokenizer with the model: tokenizer.save_pretrained(DIR)"
    )


def load_for_finetuning(
    name_or_path: str,
    problem_type: str,
    labels: tuple[str, ...],
    trust_remote_code: bool = False,
    option: str = "model",
    pooling: str = "cls",
):
    """A pre-trained encoder with a new task head; label names stored in its config.

    pooling: `cls` (the checkpoint's own head class, reading [CLS] through its pooler) or
    `mean` (a `pkd.models.pooling` head on the masked mean of the token states).
    """
    name_or_path = resolve_model(name_or_path, option)
    config = load_config(name_or_path, option, trust_remote_code)
    kwargs = head_config(problem_type, labels)
    if pooling == "mean":
        model = mean_pooled(
            load_encoder(name_or_path, option, trust_remote_code), problem_type, kwargs
        )
    else:
        check_cls_init(config, name_or_path, option)
        try:
            with quiet_load_report():  # a new head: its keys are missing by design
                model = auto_class(problem_type).from_pretrained(
                    name_or_path,
                    trust_remote_code=trust_remote_code,
                    use_safetensors=safetensors_only(name_or_path),
                    **kwargs,
                )
        except (ValueError, OSError) as e:
            raise PkdError(
                f"--{option}: cannot load {name_or_path} ({str(e).splitlines()[0]})"
            ) from None
    base = str(Path(name_or_path).resolve()) if is_local(name_or_path) else name_or_path
    # Remember where it came from: the student's default init (`--student-init`).
    model.config.update({BASE_MODEL_KEY: getattr(config, BASE_MODEL_KEY, None) or base})
    model.config.update({ATTENTION_KEY: model.config._attn_implementation})
    return model


def load_encoder(name_or_path: str, option: str, trust_remote_code: bool = False, **overrides):
    """The bare encoder of a checkpoint (`AutoModel`), without its pooler; of a `pkd.models.pooling`
    model, its `encoder`. overrides: config values, e.g. num_hidden_layers=M to keep M layers."""
    config = load_config(name_or_path, option, trust_remote_code)
    cls = AutoModel
    if config.model_type == P.MODEL_TYPE:
        cls = AUTO_CLASSES[config_head(config) or SEQUENCE_HEAD]
    with load_errors(option, name_or_path), quiet_load_report():  # heads, layers dropped
        model = cls.from_pretrained(
            name_or_path,
            trust_remote_code=trust_remote_code,
            use_safetensors=safetensors_only(name_or_path),
            **overrides,
        )
    encoder = model.encoder if config.model_type == P.MODEL_TYPE else model
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # a mean-pooled head never reads it
    return encoder


def mean_pooled(encoder, problem_type: str, head: dict):
    """A `pkd.models.pooling` model around a loaded encoder, with a new (seeded) head."""
    config = P.PkdPooledConfig.from_encoder(encoder.config, "mean", **head)
    model = MEAN_POOLED[problem_head(problem_type)](config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


def check_cls_init(config, name_or_path: str, option: str) -> None:
    if config.model_type == P.MODEL_TYPE:
        raise PkdError(
            f"--{option}: {name_or_path} is a mean-pooled model; a [CLS]-pooled model cannot "
            "start from it (pass --pooling mean, or a plain encoder checkpoint)"
        )


def model_pooling(config) -> str:
    """How a loaded model reads its tokens: `mean` for `pkd.models.pooling` heads, else `cls`."""
    return config.pooling if config.model_type == P.MODEL_TYPE else "cls"


def encoder_type(config) -> str:
    """The encoder architecture (`bert`, ...), also of a `pkd.models.pooling` model."""
    return config.encoder_type if config.model_type == P.MODEL_TYPE else config.model_type


def checkpoint_pooling(name_or_path: str) -> tuple[str | None, str]:
    """(the pooling a sentence-transformers checkpoint was trained with or None, why).

    Reads `modules.json` and the config of its Pooling module (`1_Pooling/config.json`):
    `mean` for `pooling_mode_mean_tokens`, `cls` for `pooling_mode_cls_token`, else the mode's
    name (max, weightedmean, lasttoken, ...). Hub names are looked up when the Hub is
    reachable; `why` says what was read, or what was missing or could not be read.
    """
    modules, problem = read_json(name_or_path, "modules.json")
    if not isinstance(modules, list):
        return None, problem or "its modules.json is not a list of modules"
    pool = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pool is None:
        return None, "its modules.json has no Pooling module"
    filename = f"{pool.get('path', '')}/config.json".lstrip("/")
    conf, problem = read_json(name_or_path, filename)
    if not isinstance(conf, dict):
        return None, problem or f"its {filename} is not a JSON object"
    modes = [
        k.removeprefix("pooling_mode_")
        for k, v in conf.items()
        if k.startswith("pooling_mode_") and v
    ]
    found = "mean" if "mean_tokens" in modes else "cls" if "cls_token" in modes else None
    found = found or (modes[0] if modes else None)
    return found, f"its {filename} says {', '.join(modes) or 'no pooling mode'}"


def read_json(name_or_path: str, filename: str) -> tuple[dict | list | None, str | None]:
    """A checkpoint file's JSON (local, or from the Hub), or None and why it was not read."""
    path = Path(name_or_path) / filename
    if not is_local(name_or_path):
        try:
            path = Path(hf_hub_download(name_or_path, filename))
        except EntryNotFoundError as e:  # LocalEntryNotFoundError: offline, not in the cache
            if not isinstance(e, RemoteEntryNotFoundError):
                return None, f"its {filename} could not be read from the Hub (offline?)"
            return None, f"it has no {filename}"
        except Exception as e:  # offline, no such repo, network errors
            return None, f"its {filename} could not be read from the Hub ({type(e).__name__})"
    if not path.is_file():
        return None, f"it has no {filename}"
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as e:
        return None, f"its {filename} cannot be read ({e})"


def resolve_pooling(requested: str, name_or_path: str, config) -> tuple[str, str]:
    """(`cls` or `mean`, why) for `--pooling` (auto: the model's own, else its
    sentence-transformers config's, else `cls`). With auto, the choice and its reason are
    logged: a warning when the checkpoint's config could not be read from the Hub."""
    if requested != "auto":
        return requested, f"--pooling {requested}"
    if config.model_type == P.MODEL_TYPE:
        pooling, why = config.pooling, f"the model's own (its config.json's {P.MODEL_TYPE})"
    else:
        found, why = checkpoint_pooling(name_or_path)
        pooling = "mean" if found not in (None, "cls") else "cls"
        if found not in (None, "cls", "mean"):
            logger.warning(
                "%s was trained with %s pooling, which pkd does not have; using mean pooling "
                "(pass --pooling cls for the [CLS] state)",
                name_or_path,
                found,
            )
    message = f"--pooling auto: {pooling} for {name_or_path} ({why})"
    if "from the Hub" in why:
        logger.warning("%s; pass --pooling mean if it was trained with mean pooling", message)
    else:
        logger.info("%s", message)
    return pooling, why


def safetensors_only(name_or_path: str) -> bool | None:
    """Local dirs: weights only through safetensors (no pickle). Hub names: let HF decide."""
    p = Path(name_or_path)
    if p.is_dir():
        if not any(p.glob("*.safetensors")):
            raise PkdError(
                f"{name_or_path}: no *.safetensors weights (pickled .bin weights are not "
                "loaded; convert them with save_pretrained(safe_serialization=True))"
            )
        return True
    return None


def load_finetuned(name_or_path: str, option: str = "teacher", trust_remote_code: bool = False):
    """A fine-tuned classifier (teacher, or a finished student) in eval mode.

    Raises:
        PkdError: not a model dir, or a bare encoder without a fine-tuned task head.
    """
    name_or_path = resolve_model(name_or_path, option)
    config = load_config(name_or_path, option, trust_remote_code)
    head = config_head(config)
    if head is None:
        archs = getattr(config, "architectures", None) or []
        raise PkdError(
            f"--{option}: {name_or_path} has no fine-tuned task head (architectures: {archs}); "
            "fine-tune it first with `pkd finetune`"
        )
    cls = AUTO_CLASSES[head]
    use_safetensors = safetensors_only(name_or_path)
    with load_errors(option, name_or_path):
        model = cls.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, use_safetensors=use_safetensors
        )
    model.eval()
    return model


@contextlib.contextmanager
def load_errors(option: str, name_or_path: str):
    """Damaged or mismatched weights -> a one-line PkdError naming the option."""
    try:
        yield
    except (ValueError, OSError, RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PkdError(f"--{option}: cannot load the weights of {name_or_path} ({first})") from None


def model_labels(model) -> tuple[str, ...]:
    """Label names in the model's output order (empty for regression and multiple choice,
    whose outputs are the choices of each example)."""
    regression = getattr(model.config, "problem_type", None) == "regression"
    if regression or model.config.num_labels == 1 or model_head(model).per_choice:
        return ()
    id2label = model.config.id2label
    return tuple(id2label[i] for i in range(len(id2label)))


def config_head(config) -> Head | None:
    """The task head (`pkd.tasks.Head`) a model config's architectures name; None without one."""
    return architecture_head(getattr(config, "architectures", None) or [])


def model_head(model) -> Head:
    """The task head of a loaded model: its class's (a model built in this run has no
    architectures yet), else its config's; a sequence classifier by default."""
    return architecture_head([type(model).__name__]) or config_head(model.config) or SEQUENCE_HEAD


def num_layers(config) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        raise PkdError(
            f"architecture {config.model_type!r} has no num_hidden_layers; pkd cannot truncate it "
            "(supported: the encoders of docs/encoders.md: BERT, RoBERTa, ELECTRA, ...)"
        )
    return n


def feed_forward_size(config) -> int:
    """The feed-forward width (`intermediate_size`; DistilBERT's `hidden_dim`)."""
    return getattr(config, "intermediate_size", None) or config.hidden_dim


def position_offset(config) -> int:
    """Positions an encoder's position ids skip: RoBERTa-style embeddings number tokens from
    padding_idx + 1 (pad_token_id + 1; MPNet: 2), so a 514-position RoBERTa takes 512 tokens."""
    kind = encoder_type(config)
    if kind == "mpnet":
        return 2
    if kind in OFFSET_POSITIONS:
        return (getattr(config, "pad_token_id", None) or 0) + 1
    return 0


def token_positions(config) -> int | None:
    """The tokens an encoder's position embeddings take: `max_position_embeddings` less the
    offset of its position ids. config: a model config, or its config.json as a dict."""
    if isinstance(config, dict):
        config = SimpleNamespace(**{"model_type": None, **config})
    positions = getattr(config, "max_position_embeddings", None)
    return positions - position_offset(config) if positions else None


def max_length_limit(config, tokenizer) -> int | None:
    """The longest input a model takes: its position embeddings past their offset (and its
    tokenizer's limit)."""
    limits = [token_positions(config)]
    if tokenizer is not None and tokenizer.model_max_length < 1_000_000:  # else: 'unlimited'
        limits.append(tokenizer.model_max_length)
    return min((n for n in limits if n), default=None)


# What `layer_states` pools per layer, by pooling (the dry run's loss names it).
POOLED_STATES = {"cls": "[CLS]", "mean": "token-mean"}


def layer_states(
    hidden_states: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor,
    logits: torch.Tensor,
    pooling: str = "cls",
) -> torch.Tensor:
    """The pooled state of every layer, index 0 = embeddings: what the patient loss matches.

    `cls`: the [CLS] token's state; `mean`: the masked mean of the token states (padding never
    counts). Classification: L+1 tensors (B, T, H) -> (B, L+1, H). Multiple choice: the
    encoder sees B * C sequences, so (B * C, T, H) -> (B, C, L+1, H), matching logits (B, C).
    """
    if pooling not in POOLED_STATES:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLED_STATES)}")
    if pooling == "mean":
        mask = attention_mask.reshape(-1, attention_mask.shape[-1])
        states = torch.stack([P.mean_pool(h, mask) for h in hidden_states], dim=1)
    else:
        states = torch.stack([h[:, 0] for h in hidden_states], dim=1)
    if states.shape[0] != logits.shape[0]:
        states = states.view(*logits.shape, *states.shape[1:])
    return states


def count_parameters(model) -> dict[str, int]:
    """Total parameters and those in the transformer layers (embeddings and head excluded)."""
    total = sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for n, p in model.named_parameters() if ".layer." in n)
    return {"total": total, "transformer_layers": layers}


# ---------------------------------------------------------------------------------------------
# `pkd pretrain`: a pre-trained teacher (its student: `pkd.models.students`)

PRETRAIN_KEY = "pkd_pretrain"  # in a `pkd pretrain` student's config.json: where it came from


def load_pretrained_teacher(name_or_path: str, mlm: bool = False, trust_remote_code: bool = False):
    """The pre-trained encoder that teaches `pkd pretrain`, frozen, in eval mode: the bare
    encoder, or with `mlm` its `AutoModelForMaskedLM` (encoder and MLM head).

    Raises:
        PkdError: it does not load; with `mlm`, its checkpoint holds no MLM head (a
            sentence-transformers model such as all-MiniLM-L6-v2 has none).
    """
    name_or_path = resolve_model(name_or_path, "teacher")
    if not mlm:
        model = load_encoder(name_or_path, "teacher", trust_remote_code)
    else:
        with load_errors("teacher", name_or_path):
            model, info = AutoModelForMaskedLM.from_pretrained(
                name_or_path,
                trust_remote_code=trust_remote_code,
                use_safetensors=safetensors_only(name_or_path),
                output_loading_info=True,
            )
        prefix = model.base_model_prefix + "."
        head = [k for k in info["missing_keys"] if not k.startswith(prefix)]
        if head:
            raise PkdError(
                f"--mlm-distill-weight/--mlm-weight: the teacher {name_or_path} has no MLM head "
                f"(its checkpoint lacks {head[0]}); drop the MLM options (the hidden-state terms "
                "need none) or pass a teacher with one, e.g. bert-base-uncased"
            )
    model.eval()
    model.requires_grad_(False)
    return model
