"""Students: what a student starts from, how it is built, how it pools and how its states
reach the teacher's; for `pkd distill` (`pkd.recipes.distill`), the Trainer (`pkd.hf`) and
`pkd pretrain` (a student of any shape).

The student (Sun et al. 2019, Sec. 4.1) has the teacher's architecture with M < N layers and
is initialised from the *pre-trained* model the teacher was fine-tuned from, embeddings and
layers 1..M, with a new classification head. `transformers` does the truncation: loading a
checkpoint with `num_hidden_layers=M` keeps `encoder.layer.0..M-1` and drops the rest.

Layer 3 (models): imports config, data, tasks and the leaves.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoModel

from pkd.config.runs import resolve_model
from pkd.config.sections import DistillConfig
from pkd.errors import PkdError
from pkd.models import pooling as P
from pkd.models.encoders import (
    ATTENTION_KEY,
    BASE_MODEL_KEY,
    auto_class,
    check_cls_init,
    encoder_type,
    feed_forward_size,
    load_config,
    load_encoder,
    load_errors,
    load_tokenizer,
    max_length_limit,
    mean_pooled,
    model_labels,
    model_pooling,
    num_layers,
    quiet_load_report,
    safetensors_only,
)
from pkd.models.projection import Projection
from pkd.tasks import head_config

logger = logging.getLogger(__name__)

TOKENIZER_PROBE = "The film was GOOD: naïve café, 123 — don't!"  # case, accents, digits
# How to name the init when the teacher records no base model: pkd distill's option, the
# Trainer's argument (`pkd.hf.PatientDistillationTrainer`).
PASS_INIT = {
    "--student-init": "pass --student-init NAME_OR_DIR (or 'teacher')",
    "student_init": (
        "pass distill=DistillConfig(student_init=NAME_OR_DIR), or the student as model="
    ),
}


# ---------------------------------------------------------------------------------------------
# Where a student starts


def student_init_name(
    teacher: str, student_init: str | None, trust_remote_code: bool = False, teacher_config=None
) -> str | None:
    """--student-init as given ('teacher': the teacher), else the base model the teacher
    records (None: it records none). teacher_config: the teacher's, when loaded already."""
    if student_init in (None, ""):
        teacher_config = teacher_config or load_config(teacher, "teacher", trust_remote_code)
        return getattr(teacher_config, BASE_MODEL_KEY, None)
    return teacher if student_init == "teacher" else student_init


def student_init(
    teacher: str, teacher_config, requested: str | None, option: str = "--student-init"
) -> str:
    """The checkpoint the student starts from (`student_init_name`); a warning when it is the
    fine-tuned teacher. option: how the caller names it (`PASS_INIT`).

    Raises:
        PkdError: nothing requested and the teacher records no base model.
    """
    init = student_init_name(teacher, requested, teacher_config=teacher_config)
    if not init:
        raise PkdError(
            f"{option}: {teacher} does not record its pre-trained base model; {PASS_INIT[option]}"
        )
    if init == teacher or (Path(init).exists() and Path(init).resolve() == Path(teacher).resolve()):
        base = getattr(teacher_config, BASE_MODEL_KEY, None)
        logger.warning(
            "--student-init: the student is initialised from the fine-tuned teacher %s, not from "
            "the pre-trained %s; the paper initialises from the pre-trained model",
            teacher,
            base or "checkpoint it was fine-tuned from",
        )
        init = teacher
    return init


def check_same_architecture(config, teacher_config, init: str) -> None:
    """A student (init `config`) must have its teacher's architecture and vocabulary; its
    width and depth may differ."""
    t = teacher_config
    for what, a, b in (
        ("model_type", encoder_type(config), encoder_type(t)),
        ("vocab_size", getattr(config, "vocab_size", None), getattr(t, "vocab_size", None)),
    ):
        if a != b:
            raise PkdError(
                f"--student-init: {init} has {what}={a} but the teacher has {what}={b}; "
                "student and teacher must share architecture and vocabulary"
            )


def check_encoder(name: str, trust_remote_code: bool) -> None:
    """A teacher must be an encoder (BERT-like: pre-trained as a masked language model), not a
    decoder (GPT-2) or an encoder-decoder (T5), whose states pkd cannot distil.

    Raises:
        PkdError: in one line, naming its architecture.
    """
    config = load_config(name, "teacher", trust_remote_code)
    if config.model_type == P.MODEL_TYPE:
        return
    encoder = type(config) in MODEL_FOR_MASKED_LM_MAPPING or trust_remote_code
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        encoder = False
    if not encoder:
        raise PkdError(
            f"--teacher: {name} is a {config.model_type} model, not an encoder; pkd distils "
            "encoders (BERT-like models pre-trained with masked language modelling, e.g. "
            "bert-base-uncased or a sentence-transformers model)"
        )


def check_same_tokenizer(init: str, teacher_tokenizer, trust_remote_code: bool = False) -> None:
    """The student reads the teacher's token ids, so its init must tokenise identically."""
    try:
        theirs = load_tokenizer(init, "student-init", trust_remote_code)
    except PkdError:
        logger.warning("--student-init: %s has no loadable tokenizer; not compared", init)
        return
    ours, other = teacher_tokenizer.get_vocab(), theirs.get_vocab()
    if ours != other:
        differ = sorted({t for t in ours.keys() | other.keys() if ours.get(t) != other.get(t)})
        raise PkdError(
            f"--student-init: the tokenizer of {init} differs from the teacher's ({len(differ)} "
            f"vocabulary entries differ, e.g. {differ[0]!r}: {other.get(differ[0])} vs "
            f"{ours.get(differ[0])}); student and teacher must share one tokenizer"
        )
    a, b = teacher_tokenizer(TOKENIZER_PROBE)["input_ids"], theirs(TOKENIZER_PROBE)["input_ids"]
    if a != b:
        words = [theirs.convert_ids_to_tokens(b), teacher_tokenizer.convert_ids_to_tokens(a)]
        raise PkdError(
            f"--student-init: the tokenizer of {init} has the teacher's vocabulary but splits "
            f"text differently (lower-casing or accents? {TOKENIZER_PROBE!r} gives "
            f"{' '.join(words[0][1:5])} ... vs {' '.join(words[1][1:5])} ...); "
            "student and teacher must share one tokenizer"
        )


def student_pooling(requested: str, teacher, teacher_name: str, method: str) -> str:
    """The student's pooling: `--pooling`, or the teacher's for auto.

    PKD matches each model's pooled layer states, so a student that pools otherwise than its
    teacher is refused there; FT and KD only use logits, so it is allowed with a warning.
    """
    theirs = model_pooling(teacher.config)
    pooling = theirs if requested == "auto" else requested
    if pooling != theirs:
        msg = f"--pooling: the student would pool {pooling} but the teacher {teacher_name} pools {theirs}"
        if method == "pkd":
            raise PkdError(
                f"{msg}; the patient loss compares the states each model reads, so both must "
                "pool alike (drop --pooling, or use --method kd)"
            )
        logger.warning("%s; allowed for --method %s, which learns from logits only", msg, method)
    return pooling


def check_max_length(max_length: int, name: str, option: str, config, tokenizer) -> None:
    """--max-length must fit the model's position embeddings (else a crash mid-run)."""
    limit = max_length_limit(config, tokenizer)
    if limit is not None and max_length > limit:
        raise PkdError(
            f"--max-length: {max_length} is more than the {limit} positions of --{option} "
            f"{name}; pass --max-length {limit} or less"
        )


# ---------------------------------------------------------------------------------------------
# The task-stage student (`pkd distill`, the Trainer)


def depth_overrides(config, layers: int, option: str) -> dict:
    """Config values that keep an encoder's first `layers` layers: `num_hidden_layers` and
    the per-layer settings cut with it (ModernBERT's `layer_types`, global or local attention).

    ALBERT's layers are one shared layer run `num_hidden_layers` times: a student of M layers
    runs that same layer M times (the teacher's parameters, M/N of its compute).

    Raises:
        PkdError: an ALBERT of several layer groups, whose first M layers are not a model.
    """
    overrides = {"num_hidden_layers": layers}
    groups = getattr(config, "num_hidden_groups", 1)
    if groups != 1 and layers != num_layers(config):
        raise PkdError(
            f"--{option}: ALBERT with num_hidden_groups={groups} cannot keep its first {layers} "
            "layers (its groups are spread over all layers); pkd cuts ALBERTs of one shared "
            "layer group"
        )
    if encoder_type(config) == "albert" and groups == 1:
        logger.info(
            "ALBERT: the %d-layer student runs the teacher's one shared layer %d times",
            layers,
            layers,
        )
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)):
        overrides["layer_types"] = list(types[:layers])
    return overrides


def build_student(
    init: str,
    student_layers: int,
    teacher,
    problem_type: str,
    trust_remote_code: bool = False,
    pooling: str = "cls",
):
    """An M-layer student initialised from the first M layers (and embeddings) of `init`,
    with a new head that pools as `pooling` says (`cls` or `mean`). `init` may be of another
    hidden size than the teacher (a `pkd pretrain` student): the patient loss then goes
    through learned projections (`pkd.models.projection`).

    Raises:
        PkdError: init and teacher cannot match (architecture, vocabulary), or init has fewer
            than M layers.
    """
    init = resolve_model(init, "student-init")
    config = load_config(init, "student-init", trust_remote_code)
    t = teacher.config
    init_layers = num_layers(config)
    check_same_architecture(config, t, init)
    if not 1 <= student_layers <= init_layers:
        raise PkdError(
            f"--student-layers: {student_layers} is impossible for the {init_layers} layers of "
            f"{init} (need 1 <= M <= {init_layers})"
        )
    kwargs = head_config(problem_type, model_labels(teacher))
    depth = depth_overrides(config, student_layers, "student-layers")
    if pooling == "mean":
        encoder = load_encoder(init, "student-init", trust_remote_code, **depth)
        model = mean_pooled(encoder, problem_type, kwargs)
    else:
        check_cls_init(config, init, "student-init")
        with load_errors("student-init", init), quiet_load_report():  # new head, M layers
            model = auto_class(problem_type).from_pretrained(
                init,
                **depth,
                trust_remote_code=trust_remote_code,
                use_safetensors=safetensors_only(init),
                **kwargs,
            )
    model.config.update({BASE_MODEL_KEY: getattr(t, BASE_MODEL_KEY, None) or init})
    model.config.update({ATTENTION_KEY: model.config._attn_implementation})
    return model


def patient_projection(d: DistillConfig, pairs, student_config, teacher_config):
    """PKD into a student of another width (a `pkd pretrain` student as --student-init):
    a learned projection per mapped layer, student H -> teacher H, trained with the student
    and never saved in its model/ (seeded: build it right after the student). None when
    the widths agree or the method has no patient loss."""
    hs, ht = student_config.hidden_size, teacher_config.hidden_size
    if "pt" not in d.terms or hs == ht:
        return None
    logger.info("student width %d, teacher %d: the patient loss goes through projections", hs, ht)
    return Projection(len(pairs), hs, ht)


# ---------------------------------------------------------------------------------------------
# `pkd pretrain`: a student of any shape


def general_student_config(teacher_config, layers: int, hidden, heads, intermediate):
    """The config of a fresh student of another shape, derived from the teacher's: the same
    architecture, vocabulary and positions; by default the teacher's head size and its ratio
    of feed-forward to hidden size.

    Raises:
        PkdError: a width its heads do not divide.
    """
    t = teacher_config
    hidden = hidden or t.hidden_size
    if heads is None:
        head_size = t.hidden_size // t.num_attention_heads
        if hidden % head_size:
            raise PkdError(
                f"--student-heads: the teacher's head size {head_size} does not divide "
                f"--student-hidden-size {hidden}; give --student-heads"
            )
        heads = hidden // head_size
    if hidden % heads:
        raise PkdError(f"--student-heads: {heads} heads do not divide the width {hidden}")
    config = copy.deepcopy(t)
    for key, value in depth_overrides(t, layers, "student-layers").items():
        setattr(config, key, value)
    config.hidden_size = hidden
    config.num_attention_heads = heads
    feed_forward = "intermediate_size" if hasattr(t, "intermediate_size") else "hidden_dim"
    setattr(
        config,
        feed_forward,
        intermediate or round(feed_forward_size(t) * hidden / t.hidden_size),
    )
    config.architectures = None
    return without_pkd_records(config)


def without_pkd_records(config):
    """`config` without what pkd recorded in it (`pkd_task`, `pkd_dev_metric`, ...): a new
    student's records are its own."""
    for key in [k for k in config.to_dict() if k.startswith("pkd_")]:
        delattr(config, key)
    return config


def build_general_student(
    teacher_name: str,
    teacher_config,
    layers: int,
    shape: dict[str, int | None],
    init: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[object, str]:
    """`pkd pretrain`'s student encoder (`AutoModel`, with its pooler) and how it starts:
    `init`'s first M layers; else at the teacher's shape its first M layers (as `pkd
    distill`); else a fresh model of that shape (seeded by the caller).

    Args:
        teacher_config: the teacher encoder's config.
        shape: hidden_size, num_attention_heads, intermediate_size (None: the teacher's or,
            for a fresh student, derived by `general_student_config`).

    Raises:
        PkdError: an init of another architecture or vocabulary, with fewer than M layers, or
            whose shape differs from the one asked for.
    """
    if init is not None:
        config = load_config(init, "student-init", trust_remote_code)
        check_same_architecture(config, teacher_config, init)
        for key, value in shape.items():
            if value is not None and value != getattr(config, key):
                option = {"num_attention_heads": "heads"}.get(key, key).replace("_", "-")
                raise PkdError(
                    f"--student-{option}: {value} differs from the {getattr(config, key)} of "
                    f"--student-init {init}, which fixes the student's shape; drop one of them"
                )
        if layers > num_layers(config):
            raise PkdError(
                f"--student-layers: {layers} > the {num_layers(config)} layers of {init}"
            )
        encoder = _pretrained_encoder(init, "student-init", trust_remote_code, layers)
        without_pkd_records(encoder.config)
        return encoder, init
    t = teacher_config
    if all(v is None or v == getattr(t, k) for k, v in shape.items()):
        encoder = _pretrained_encoder(teacher_name, "teacher", trust_remote_code, layers)
        without_pkd_records(encoder.config)
        return encoder, f"the teacher's first {layers} layers"
    config = general_student_config(
        t,
        layers,
        shape["hidden_size"],
        shape["num_attention_heads"],
        shape["intermediate_size"],
    )
    return AutoModel.from_config(config), "fresh (random) weights"


def _pretrained_encoder(name_or_path: str, option: str, trust_remote_code: bool, layers: int):
    """The first `layers` layers (and embeddings, and pooler) of a checkpoint as `AutoModel`."""
    config = load_config(name_or_path, option, trust_remote_code)
    depth = depth_overrides(config, layers, "student-layers")
    if config.model_type == P.MODEL_TYPE:  # a mean-pooled pkd model: its encoder
        return load_encoder(name_or_path, option, trust_remote_code, **depth)
    with load_errors(option, name_or_path), quiet_load_report():  # layers beyond `layers`
        return AutoModel.from_pretrained(
            name_or_path,
            **depth,
            trust_remote_code=trust_remote_code,
            use_safetensors=safetensors_only(name_or_path),
        )
