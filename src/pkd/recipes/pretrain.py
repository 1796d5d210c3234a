"""`pkd pretrain`: task-agnostic patient distillation on unlabelled text.

The paper's future work (Sun et al. 2019, Sec. 5): a student made of a pre-trained model's
first M layers has an initialisation mismatch (its layer j was trained to feed layer j+1 of
the full model); distil the student on unlabelled text first, with the patient loss acting
during this general stage. `plan_pretrain` runs every up-front check and loads teacher,
student and text into a `PretrainPlan` (what `--dry-run` describes); `run_pretrain` trains
it through the one training loop (`pkd.training.loop.train`), with the objective of
`pkd.objectives.pretraining`, selecting epochs by the distillation loss on held-out text (a
recipe: `pkd.recipes.recipe`).

The run's `model/` is the student encoder alone (`AutoModel.from_pretrained` loads it, with
the teacher's tokenizer beside it): a `--student-init` for `pkd distill`, `compare` and
`sweep`. Projections and the MLM head stay in `checkpoints/` (for `--resume`).

The objective (`--objective auto`) is the embedding one (`pkd.objectives.embedding`) for a
sentence-transformers teacher (modules.json with a Pooling module), else the general one. An
embedding student's `model/` is also a sentence-transformers directory
(`pkd.models.sentence_transformers`); with `--eval-pairs` the epoch is chosen by the Spearman
correlation of its cosine similarities on those scored pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from pkd.config.runs import PretrainRunConfig
from pkd.config.sections import PretrainConfig
from pkd.data.loading import collator, encode, warn_truncation
from pkd.data.text import (
    HELD_OUT,
    PAIRS,
    MaskedText,
    hold_out,
    load_texts,
    mlm_collator,
    pair_texts,
    read_pairs,
)
from pkd.errors import PkdError
from pkd.models.encoders import (
    PRETRAIN_KEY,
    count_parameters,
    feed_forward_size,
    load_pretrained_teacher,
    load_tokenizer,
    num_layers,
)
from pkd.models.results import RunResult
from pkd.models.sentence_transformers import SentenceHead, sentence_head, write_sentence_transformer
from pkd.models.students import (
    build_general_student,
    check_encoder,
    check_max_length,
    check_same_tokenizer,
)
from pkd.objectives import cache as cache_mod
from pkd.objectives.embedding import (
    EMBEDDING_OBJECTIVE,
    GENERAL_OBJECTIVE,
    EmbeddingObjective,
    embedding_weights,
    pairs_score,
)
from pkd.objectives.mapping import layer_map
from pkd.objectives.pretraining import (
    CACHE_NAME,
    CacheableTeacher,
    GeneralObjective,
    build_heads,
    cached_signals,
    freeze_pooler,
    heldout_score,
    online_signals,
)
from pkd.recipes.dryrun import (
    cache_line,
    cached_plan,
    estimate,
    plan_text,
    split_summary,
    time_steps,
    train_summary,
)
from pkd.recipes.recipe import Recipe, RunContext, evaluations, run_recipe
from pkd.training.evaluation import Evaluation
from pkd.training.hooks import LoopHooks, PatientShareCheck
from pkd.training.loop import Run, train
from pkd.training.rundir import data_summary, locks_output

logger = logging.getLogger(__name__)


@dataclass
class PretrainPlan:
    """Everything `pretrain` resolved before training: shown by --dry-run, used by the run."""

    cfg: PretrainRunConfig
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
    weights: dict = field(default_factory=dict)  # the objective's, by term
    head: SentenceHead | None = None  # the embedding objective's sentence embedding
    eval_pairs: object = None  # --eval-pairs, tokenised (`pkd.data.text.pair_texts`)

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
        """The run's objective: the embedding one with a sentence head, else the general one."""
        o = cfg.pretrain
        args = (self.weights, self.pairs, self.top, o.pt_tokens, o.pt_normalize, o.temperature)
        if self.head is not None:
            return EmbeddingObjective(*args, teacher, self.heads, self.head)
        return GeneralObjective(*args, teacher, self.heads)

    def online(self, cfg: PretrainRunConfig):
        """The teacher's signals from its forward on each batch."""
        o, head = cfg.pretrain, self.head
        return online_signals(self.teacher, o.pt_tokens, o.uses_mlm, head and head.embed)

    def cacheable(self, cfg: PretrainRunConfig) -> tuple[CacheableTeacher, str, dict]:
        """The teacher as the cache runs it, the cache's name and the fingerprint's extra."""
        o, head = cfg.pretrain, self.head
        name = CACHE_NAME if o.pt_tokens == "cls" else f"{CACHE_NAME}-{o.pt_tokens}"
        extra = cache_mod.cache_extra(name, cfg.text.max_length)
        if head is not None:
            name = f"{EMBEDDING_OBJECTIVE}-{o.pt_tokens}"
            extra = {**cache_mod.cache_extra(name, cfg.text.max_length), "sentence": repr(head)}
        return CacheableTeacher(self.teacher, o.pt_tokens, head and head.embed), name, extra

    def eval_sets(self, held) -> dict:
        """The splits each epoch is scored on: --eval-pairs first (it selects), held-out text."""
        pairs = {} if self.eval_pairs is None else {PAIRS: self.eval_pairs}
        return {**pairs, HELD_OUT: held}

    def evaluation(self, cfg: PretrainRunConfig) -> Evaluation:
        """Held-out pairs' Spearman (--eval-pairs) or the held-out distillation loss."""
        loss = heldout_score(self.objective(cfg, self.online(cfg)))
        if self.eval_pairs is None:
            return Evaluation(loss, "loss", False)
        dense = getattr(self.heads, "dense", None)
        pairs = pairs_score(self.head or SentenceHead(), dense)

        def score(model, loader, accelerator) -> dict[str, float]:
            split = getattr(loader.dataset, "split", None)
            on_pairs = split is not None and split.name == PAIRS
            return (pairs if on_pairs else loss)(model, loader, accelerator)

        return Evaluation(score, "spearman", True)

    def resolved(self) -> dict:
        return {"student": self.student_init}

    def run_data(self) -> dict:
        return self.splits

    def recorded_baseline(self) -> None:
        return None  # no task

    def summary(self) -> dict:
        """The plan of `pkd pretrain` (what --dry-run returns): teacher, student, map, loss,
        text, the cache asked for, and the run's steps and time from timed steps (the
        teacher online)."""
        cfg = self.cfg
        o, t, s = cfg.pretrain, self.teacher.config, self.student.config
        heads = self.heads
        cache = self.teacher_cache()
        out = {
            "command": "pretrain",
            "output": str(cfg.output),
            "teacher": {
                "path": str(cfg.teacher),
                "layers": num_layers(t),
                "hidden_size": t.hidden_size,
                "parameters": count_parameters(self.teacher.base_model)["total"],
                "mlm_head": o.uses_mlm,
            },
            "student": {
                "layers": s.num_hidden_layers,
                "hidden_size": s.hidden_size,
                "heads": s.num_attention_heads,
                "intermediate_size": feed_forward_size(s),
                "init": self.student_init,
                "parameters": count_parameters(self.student)["total"],
                "projection": heads is not None and heads.projection is not None,
            },
            "layer_map": [[a, b] for a, b in self.pairs],
            "top": list(self.top),
            "loss": {
                "formula": formula(o, self.weights),
                "weights": self.weights,
                "normalize": o.pt_normalize,
            },
            "data": split_summary(self.splits, self.encoded, cfg.text.max_length),
            "max_length": cfg.text.max_length,
            "train": train_summary(cfg.train),
            "teacher_cache": cache,
            "cache_bytes": cache["bytes"],
        }
        self.teacher.to("cuda" if torch.cuda.is_available() else "cpu")  # the accelerator's
        objective = self.objective(cfg, self.online(cfg))
        train_set, held, collate = self.datasets(cfg)
        timing = time_steps(self.student, train_set, collate, cfg.train, objective, "pretrain")
        out["estimate"] = estimate(timing, cfg.train, len(train_set), len(held))
        return out

    def teacher_cache(self) -> dict:
        """Where the teacher cache ([CLS] states of every teacher layer) would live, its
        size, and whether it exists; the teacher runs online otherwise."""
        o = self.cfg.pretrain
        if o.teacher_mode == "online":
            return {"mode": "online (no cache; the teacher runs every step)", "bytes": 0}
        t, n = self.teacher.config, len(self.encoded["train"])
        logits = (t.hidden_size if self.head else 1,)  # the sentence embedding, or a zero
        size = cache_mod.estimate_bytes(n, logits, (t.num_hidden_layers + 1, t.hidden_size))
        root = Path(o.cache_dir) if o.cache_dir else cache_mod.default_root()
        teacher, name, extra = self.cacheable(self.cfg)
        fp = cache_mod.fingerprint(teacher, self.encoded["train"].features, extra)
        return cached_plan(n, size, root / f"{name}-{fp[:16]}")

    def describe(self, summary: dict | None = None) -> str:
        """The dry run's text: teacher, student, layer map, loss, cache, data, estimate."""
        plan = summary or self.summary()
        t, s = plan["teacher"], plan["student"]
        pairs = ", ".join(f"{a}->{b}" for a, b in plan["layer_map"]) or "none"
        width = (
            f"hidden {s['hidden_size']}, {s['heads']} heads, feed-forward {s['intermediate_size']}"
        )
        lines = [
            f"teacher:    {t['path']} ({t['layers']} layers, hidden {t['hidden_size']}, "
            f"{t['parameters'] / 1e6:.2f}M parameters{', MLM head' if t['mlm_head'] else ''})",
            f"student:    {s['layers']} layers, {width}, {s['parameters'] / 1e6:.2f}M parameters; "
            f"from {s['init']}",
            f"layer map:  teacher->student {pairs}; top {plan['top'][0]}->{plan['top'][1]}"
            + ("; through learned projections (not saved in model/)" if s["projection"] else ""),
            f"loss:       {plan['loss']['formula']}",
            cache_line(plan["teacher_cache"]),
        ]
        return plan_text(plan, lines)


def formula(o: PretrainConfig, weights: dict | None = None) -> str:
    """`pkd pretrain`'s loss with this run's weights, e.g. `1*PT(all tokens) + 1*TOP(...)`."""
    tokens = {"all": "every token", "cls": "[CLS]", "mean": "token mean"}[o.pt_tokens]
    shown = {
        "pt": f"PT(mapped layers, {tokens})",
        "top": f"TOP(top layers, {tokens})",
        "emb": "EMB(sentence embedding, squared distance)",
        "cos": "COS(sentence embedding, 1 - cosine)",
        "sim": "SIM(in-batch cosine matrix, MSE)",
        "mlm_kd": f"MLM-KD(T={o.temperature:g})",
        "mlm": "MLM(masked tokens)",
    }
    weights = o.weights if weights is None else weights
    return " + ".join(f"{w:g}*{shown[k]}" for k, w in weights.items())


def plan_pretrain(cfg: PretrainRunConfig) -> PretrainPlan:
    """Every up-front check of `pkd pretrain`, and the loaded teacher, student and text."""
    o, quiet = cfg.pretrain, cfg.train.quiet
    texts = load_texts(cfg.text)  # bad text fails first, before any model loads
    pairs_raw = read_pairs(o.eval_pairs, cfg.text.encoding) if o.eval_pairs else None
    if o.teacher_mode == "cached":
        cache_mod.check_cache_dir(o.cache_dir)
    check_encoder(cfg.teacher, cfg.trust_remote_code)
    head, weights = resolve_objective(o, cfg.teacher)
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
    mlm_teacher = teacher if o.uses_mlm else None
    heads = build_heads(o, pairs, student.config, t_config, mlm_teacher, weights)
    train_texts, held = hold_out(texts, cfg.text.eval_texts)
    encoded = {
        "train": encode(train_texts, tokenizer, cfg.text.max_length, None, not quiet),
        HELD_OUT: encode(held, tokenizer, cfg.text.max_length, None, False),
    }
    if pairs_raw is not None:
        pairs_raw = encode(pair_texts(pairs_raw), tokenizer, cfg.text.max_length, None, False)
    trunc = warn_truncation(encoded["train"], cfg.text.max_length)
    return PretrainPlan(
        cfg,
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
        weights,
        head,
        pairs_raw,
    )


def resolve_objective(o: PretrainConfig, teacher: str) -> tuple[SentenceHead | None, dict]:
    """(the sentence head, the weights) of the objective `--objective` resolves to: the
    embedding one (`auto`: for a sentence-transformers teacher) or the general one (no head).

    Raises:
        PkdError: every weight of the resolved objective is 0.
    """
    head = sentence_head(teacher) if o.objective != GENERAL_OBJECTIVE else None
    if o.objective == EMBEDDING_OBJECTIVE and head is None:
        head = SentenceHead()  # not a sentence-transformers model: mean, normalised
    weights = embedding_weights(o) if head is not None else o.weights
    if not weights:
        raise PkdError("--beta: every loss weight is 0; the student would learn nothing")
    if head is not None:
        logger.info("--objective %s: the embedding objective (%s)", o.objective, head)
    return head, weights


def warn_wider_student(student_width: int, teacher_width: int) -> None:
    """A student wider than its teacher is allowed (a width study) but never by accident."""
    if student_width > teacher_width:
        logger.warning(
            "--student-hidden-size: the student's hidden size %d is larger than its teacher's "
            "%d: the student will be wider than the model it distils",
            student_width,
            teacher_width,
        )


def run_pretrain(plan: PretrainPlan, run: RunContext) -> RunResult:
    """Train the planned student on the planned text; metrics.json's content."""
    cfg, accelerator = plan.cfg, run.accelerator
    plan.teacher.to(accelerator.device)
    signal, cache_info = teacher_signal(cfg, plan, accelerator)
    train_set, held, collate = plan.datasets(cfg)
    plan.student.config.update({PRETRAIN_KEY: provenance(cfg, plan)})
    objective = plan.objective(cfg, signal)
    result = train(
        Run(
            plan.student,
            plan.tokenizer,
            train_set,
            plan.eval_sets(held),
            None,
            cfg.train,
            objective,
            run.output,
            accelerator,
            collate,
            resume_from=run.resume_from,
            evaluation=plan.evaluation(cfg),
            hooks=[PatientShareCheck(objective.beta), *sentence_writer(plan, run)],
        )
    )
    return RunResult.of(
        {
            "teacher": cfg.teacher,
            "student": {
                **provenance(cfg, plan),
                "parameters": count_parameters(plan.student),
                "teacher_parameters": count_parameters(plan.teacher.base_model),
            },
            "layer_map": [list(p) for p in plan.pairs],
            "top": list(plan.top),
            "loss_weights": plan.weights,
            **evaluations(result),
            "steps": result["steps"],
            "data": data_summary(plan.splits, plan.encoded, cfg.text.max_length),
            "gradient_shares": result["gradient_shares"],
            "teacher_cache": cache_info,
            "wall_seconds": run.wall_seconds(result["train_seconds"]),
        }
    )


PRETRAIN = Recipe("pretrain", plan_pretrain, run_pretrain)


@locks_output
def pretrain(cfg: PretrainRunConfig, dry_run: bool = False) -> dict:
    """Distil a pre-trained encoder into an M-layer student of any width on unlabelled text:
    metrics.json's content, or with dry_run the plan (as `finetune`'s)."""
    return run_recipe(PRETRAIN, cfg, dry_run)


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
        **({"objective": EMBEDDING_OBJECTIVE} if plan.head is not None else {}),
    }


class SentenceWriter(LoopHooks):
    """Writes the sentence-transformers modules into model/ each time the loop saves a new
    best model there (`pkd.models.sentence_transformers`), with the dense layer as trained."""

    def __init__(self, plan: PretrainPlan, model_dir: Path, main: bool = True):
        self.plan, self.model_dir, self.main = plan, model_dir, main

    def on_evaluate(self, state, metrics) -> None:
        if self.main and state.best is state.history[-1] and self.model_dir.is_dir():
            plan = self.plan
            dense = getattr(plan.heads, "dense", None)
            width = plan.student.config.hidden_size
            write_sentence_transformer(self.model_dir, plan.head, width, dense)


def sentence_writer(plan: PretrainPlan, run: RunContext) -> list[LoopHooks]:
    """The hook that makes an embedding student's model/ a sentence-transformers directory
    (the main process writes it, as it saves the model)."""
    if plan.head is None:
        return []
    return [SentenceWriter(plan, Path(run.output) / "model", run.accelerator.is_main_process)]


def teacher_signal(cfg: PretrainRunConfig, plan: PretrainPlan, accelerator):
    """The teacher's signals for training: online (its forward on each batch), or with
    --teacher-mode cached its [CLS] states read from a teacher cache built once by the main
    process (`pkd.objectives.cache`). Also the cache's record for metrics.json (None when online)."""
    o = cfg.pretrain
    if o.teacher_mode == "online":
        return plan.online(cfg), None
    teacher, name, extra = plan.cacheable(cfg)
    with accelerator.main_process_first():
        cache = cache_mod.build_or_load(
            teacher,
            plan.encoded["train"],
            collator(plan.tokenizer),
            name,
            extra,
            Path(o.cache_dir) if o.cache_dir else None,
            cfg.train.eval_batch_size,
            accelerator.device,
            not cfg.train.quiet,
        )
    return cached_signals(cache), cache.record()
