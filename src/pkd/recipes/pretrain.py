"""`pkd pretrain`: task-agnostic patient distillation on unlabelled text.

The paper's future work (Sun et al. 2019, Sec. 5): a student made of a pre-trained model's
first M layers has an initialisation mismatch (its layer j was trained to feed layer j+1 of
the full model); distil the student on unlabelled text first, with the patient loss acting
during this general stage. `plan_pretrain` runs every up-front check and loads teacher,
student and text into a `PretrainPlan` (what `--dry-run` describes); `pretrain` writes the
run directory and trains through the one training loop (`pkd.training.loop.train`), with the
objective of `pkd.objectives.pretraining`, selecting epochs by the distillation loss on held-out text.

The run's `model/` is the student encoder alone (`AutoModel.from_pretrained` loads it, with
the teacher's tokenizer beside it): a `--student-init` for `pkd distill`, `compare` and
`sweep`. Projections and the MLM head stay in `checkpoints/` (for `--resume`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from pkd.config.runs import PretrainRunConfig
from pkd.data.loading import collator, encode, warn_truncation
from pkd.data.text import HELD_OUT, MaskedText, hold_out, load_texts, mlm_collator
from pkd.models.encoders import (
    PRETRAIN_KEY,
    count_parameters,
    feed_forward_size,
    load_pretrained_teacher,
    load_tokenizer,
    num_layers,
)
from pkd.models.students import build_general_student, check_max_length, check_same_tokenizer
from pkd.objectives import cache as cache_mod
from pkd.objectives.mapping import layer_map
from pkd.objectives.pretraining import (
    CACHE_NAME,
    CacheableTeacher,
    GeneralObjective,
    build_heads,
    cache_extra,
    cached_signals,
    freeze_pooler,
    heldout_score,
    online_signals,
)
from pkd.recipes.dryrun import describe_pretrain
from pkd.training.accelerator import make_accelerator
from pkd.training.evaluation import Evaluation
from pkd.training.loop import train
from pkd.training.rundir import data_summary, finish_run, locks_output, open_run, start_run

logger = logging.getLogger(__name__)


@dataclass
class PretrainPlan:
    """Everything `pretrain` resolved before training: shown by --dry-run, used by the run."""

    teacher: object  # the encoder, or its AutoModelForMaskedLM with MLM terms
    tokenizer: object
    student: object  # AutoModel
    student_init: str  # how it starts, in words, or the checkpoint
    pairs: list[tuple[int, int]]
    top: tuple[int, int]
    heads: object  # `pkd.objectives.pretraining.GeneralHeads` or None
    splits: dict  # train, heldout: raw passages
    encoded: dict  # train, heldout: tokenised
    truncated: float

    def datasets(self, cfg: PretrainRunConfig) -> tuple[object, object, object]:
        """(training set, held-out set, collate): masked for MLM when asked for."""
        train_set, held = self.encoded["train"], self.encoded[HELD_OUT]
        o = cfg.pretrain
        if not o.uses_mlm:
            return train_set, held, collator(self.tokenizer)
        seed = cfg.train.seed
        return (
            MaskedText(train_set, self.tokenizer, o.mask_probability, seed),
            MaskedText(held, self.tokenizer, o.mask_probability, seed, fixed=True),
            mlm_collator(self.tokenizer),
        )

    def objective(self, cfg: PretrainRunConfig, teacher=None) -> GeneralObjective:
        o = cfg.pretrain
        return GeneralObjective(
            o.weights,
            self.pairs,
            self.top,
            o.pt_tokens,
            o.pt_normalize,
            o.temperature,
            teacher,
            self.heads,
        )


def plan_pretrain(cfg: PretrainRunConfig) -> PretrainPlan:
    """Every up-front check of `pkd pretrain`, and the loaded teacher, student and text."""
    o, quiet = cfg.pretrain, cfg.train.quiet
    texts = load_texts(cfg.text)  # bad text fails first, before any model loads
    if o.teacher_mode == "cached":
        cache_mod.check_cache_dir(o.cache_dir)
    teacher = load_pretrained_teacher(cfg.teacher, o.uses_mlm, cfg.trust_remote_code)
    t_config = teacher.config
    n = num_layers(t_config)
    pairs = layer_map(o.strategy, n, o.student_layers, o.layer_map)
    tokenizer = load_tokenizer(cfg.teacher, "teacher", cfg.trust_remote_code)
    check_max_length(cfg.text.max_length, cfg.teacher, "teacher", t_config, tokenizer)
    if o.student_init:
        check_same_tokenizer(o.student_init, tokenizer, cfg.trust_remote_code)
    set_seed(cfg.train.seed)  # before any fresh weights: student, projections, MLM head
    shape = {
        "hidden_size": o.student_hidden_size,
        "num_attention_heads": o.student_heads,
        "intermediate_size": o.student_intermediate_size,
    }
    student, init = build_general_student(
        cfg.teacher, t_config, o.student_layers, shape, o.student_init, cfg.trust_remote_code
    )
    check_max_length(cfg.text.max_length, init, "student-init", student.config, None)
    warn_wider_student(student.config.hidden_size, t_config.hidden_size)
    freeze_pooler(student)
    heads = build_heads(o, pairs, student.config, t_config, teacher if o.uses_mlm else None)
    train_texts, held = hold_out(texts, cfg.text.eval_texts)
    encoded = {
        "train": encode(train_texts, tokenizer, cfg.text.max_length, None, not quiet),
        HELD_OUT: encode(held, tokenizer, cfg.text.max_length, None, False),
    }
    trunc = warn_truncation(encoded["train"], cfg.text.max_length)
    return PretrainPlan(
        teacher,
        tokenizer,
        student,
        init,
        pairs,
        (n, o.student_layers),
        heads,
        {"train": train_texts, HELD_OUT: held},
        encoded,
        trunc,
    )


def warn_wider_student(student_width: int, teacher_width: int) -> None:
    """A student wider than its teacher is allowed (a width study) but never by accident."""
    if student_width > teacher_width:
        logger.warning(
            "--student-hidden-size: the student's hidden size %d is larger than its teacher's "
            "%d: the student will be wider than the model it distils",
            student_width,
            teacher_width,
        )


@locks_output
def pretrain(cfg: PretrainRunConfig, dry_run: bool = False) -> dict:
    """Distil a pre-trained encoder into an M-layer student of any width on unlabelled text.

    Returns the contents of metrics.json (or, with dry_run, the plan: every check is run
    and a few steps are timed, nothing is written).
    """
    output, ckpt = open_run(cfg)
    plan = plan_pretrain(cfg)
    if dry_run:
        return describe_pretrain(cfg, plan)
    accelerator = make_accelerator(cfg.train, output)
    resolved = {"student": plan.student_init}
    start_run(output, cfg, accelerator, ckpt is not None, resolved, data=plan.splits)
    t0 = time.perf_counter()
    plan.teacher.to(accelerator.device)
    signal, cache_info = teacher_signal(cfg, plan, accelerator)
    online = online_signals(plan.teacher, cfg.pretrain.pt_tokens, cfg.pretrain.uses_mlm)
    train_set, held, collate = plan.datasets(cfg)
    plan.student.config.update({PRETRAIN_KEY: provenance(cfg, plan)})
    result = train(
        plan.student,
        plan.tokenizer,
        train_set,
        {HELD_OUT: held},
        None,
        cfg.train,
        plan.objective(cfg, signal),
        output,
        accelerator,
        collate,
        resume_from=ckpt,
        evaluation=Evaluation(heldout_score(plan.objective(cfg, online)), "loss", False),
    )
    metrics = {
        "teacher": cfg.teacher,
        "student": {
            **provenance(cfg, plan),
            "parameters": count_parameters(plan.student),
            "teacher_parameters": count_parameters(plan.teacher.base_model),
        },
        "layer_map": [list(p) for p in plan.pairs],
        "top": list(plan.top),
        "loss_weights": cfg.pretrain.weights,
        "best": result["best"],
        "final": result["final"],
        "history": result["history"],
        "steps": result["steps"],
        "data": data_summary(plan.splits, plan.encoded, cfg.text.max_length),
        "gradient_shares": result["gradient_shares"],
        "teacher_cache": cache_info,
        "wall_seconds": {
            "train": result["train_seconds"],
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    finish_run(output, metrics, None, accelerator, command="pretrain")
    return metrics


def provenance(cfg: PretrainRunConfig, plan: PretrainPlan) -> dict:
    """What the student is and where it came from (its config.json's `pkd_pretrain`)."""
    c = plan.student.config
    return {
        "teacher": cfg.teacher,
        "init": plan.student_init,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "intermediate_size": feed_forward_size(c),
        "pt_tokens": cfg.pretrain.pt_tokens,
    }


def teacher_signal(cfg: PretrainRunConfig, plan: PretrainPlan, accelerator):
    """The teacher's signals for training: online (its forward on each batch), or with
    --teacher-mode cached its [CLS] states read from a teacher cache built once by the main
    process (`pkd.objectives.cache`). Also the cache's record for metrics.json (None when online)."""
    o = cfg.pretrain
    if o.teacher_mode == "online":
        return online_signals(plan.teacher, o.pt_tokens, o.uses_mlm), None
    with accelerator.main_process_first():
        cache = cache_mod.build_or_load(
            CacheableTeacher(plan.teacher),
            plan.encoded["train"],
            collator(plan.tokenizer),
            CACHE_NAME,
            cache_extra(cfg.text.max_length),
            Path(o.cache_dir) if o.cache_dir else None,
            cfg.train.eval_batch_size,
            accelerator.device,
            not cfg.train.quiet,
        )
    return cached_signals(cache), cache.record()
