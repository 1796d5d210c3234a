"""`pkd distill`: distill a fine-tuned teacher into an M-layer student (FT, KD, PKD-Skip/Last).

`plan_distill` runs every up-front check and loads teacher, student and data into a
`DistillPlan` (what `--dry-run` describes, and what `compare` reuses per student depth);
`distill` then writes the run directory, builds or reuses the teacher cache, trains, and
writes metrics.json last.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from pkd.config.runs import DistillRunConfig
from pkd.config.sections import DistillConfig
from pkd.data.loading import (
    TRANSFER,
    check_label_sets,
    collator,
    encode,
    encode_all,
    load_splits,
    majority_baselines,
    resolve_task,
    warn_truncation,
)
from pkd.data.multiple_choice import num_choices
from pkd.data.splits import EncodedSplit
from pkd.data.transfer import TransferMix, check_transfer, load_transfer, with_transfer
from pkd.errors import PkdError
from pkd.models.encoders import (
    TASK_KEY,
    count_parameters,
    is_multiple_choice,
    load_finetuned,
    load_tokenizer,
    model_labels,
    num_layers,
)
from pkd.models.projection import Projection
from pkd.models.students import (
    build_student,
    check_max_length,
    check_same_tokenizer,
    patient_projection,
    student_init,
    student_pooling,
)
from pkd.objectives import cache as cache_mod
from pkd.objectives.mapping import layer_map
from pkd.objectives.objective import Objective, cached_teacher, online_teacher
from pkd.recipes.dryrun import describe_distill, human_bytes
from pkd.tasks import CLASSIFICATION, MULTIPLE_CHOICE, TaskSpec, align_labels, readable_labels
from pkd.training.accelerator import make_accelerator
from pkd.training.evaluation import score
from pkd.training.loop import train
from pkd.training.rundir import data_summary, finish_run, locks_output, open_run, start_run

logger = logging.getLogger(__name__)

WEAK_TEACHER_MARGIN = 0.02  # a teacher must beat the majority baseline by 2 points


# ---------------------------------------------------------------------------------------------
# Plan: every check, and the loaded teacher, student and data


@dataclass
class DistillPlan:
    """Everything `distill` resolved before training: shown by --dry-run, used by the run."""

    spec: TaskSpec
    teacher: object
    tokenizer: object
    student: object
    student_init: str
    pairs: list[tuple[int, int]]
    splits: dict
    encoded: dict
    teacher_metrics: dict
    baseline: dict
    truncated: float
    pooling: str  # the student's (and the teacher's, for PKD): cls or mean
    transfer: EncodedSplit | None = None  # --transfer-file, tokenised (`pkd.data.transfer`)
    # PKD into a student of another width: its states reach the teacher's through these
    projection: Projection | None = None

    def training_set(self, cfg: DistillRunConfig):
        """The labelled training set; with a transfer set, each labelled example together
        with its --transfer-ratio transfer partners (`pkd.data.transfer.TransferMix`)."""
        labelled = self.encoded["train"]
        if self.transfer is None:
            return labelled
        combined = with_transfer(labelled, self.transfer, self.spec.problem_type)
        return TransferMix(combined, len(labelled), cfg.distill.transfer_ratio, cfg.train.seed)

    def data(self) -> tuple[dict, dict]:
        """The raw and tokenised splits the run reads, its transfer set included."""
        if self.transfer is None:
            return self.splits, self.encoded
        return (
            {**self.splits, TRANSFER: self.transfer.split},
            {**self.encoded, TRANSFER: self.transfer},
        )


def plan_distill(
    cfg: DistillRunConfig, accelerator=None, teacher_metrics: dict | None = None
) -> DistillPlan:
    """Every up-front check of `pkd distill`, and the loaded teacher, student and data.

    teacher_metrics: the teacher's dev scores when already measured (`compare`), else scored.
    """
    d = cfg.distill
    spec = resolve_task(cfg.data)
    teacher = load_finetuned(cfg.teacher, "teacher", cfg.trust_remote_code)
    teacher_labels = model_labels(teacher)
    n = num_layers(teacher.config)
    pairs = layer_map(d.strategy, n, d.student_layers, d.layer_map)
    spec, splits = load_splits(
        cfg.data,
        ["train", *spec.eval_splits],
        readable_labels(teacher_labels) if spec.source == "custom" else (),
    )
    check_label_sets(spec, splits)
    spec = teacher_task(spec, teacher, cfg.teacher)
    transfer = load_transfer(spec, cfg.data)
    if transfer is not None:
        check_transfer(transfer, splits, d.transfer_ratio)
    if len(d.terms) > 1 and d.teacher_mode == "cached":
        check_cache_space(
            d.cache_dir,
            spec.name,
            teacher.config,
            len(splits["train"]) + (len(transfer) if transfer else 0),
            cfg.data.max_length,
            num_choices(splits["train"]),
        )
    init = student_init(cfg.teacher, teacher.config, d.student_init)
    tokenizer = load_tokenizer(cfg.teacher, "teacher", cfg.trust_remote_code)
    check_max_length(cfg.data.max_length, cfg.teacher, "teacher", teacher.config, tokenizer)
    if init != cfg.teacher:
        check_same_tokenizer(init, tokenizer, cfg.trust_remote_code)
    pooling = student_pooling(d.pooling, teacher, cfg.teacher, d.method)
    set_seed(cfg.train.seed)  # before the student's new head is initialised
    student = build_student(
        init, d.student_layers, teacher, spec.problem_type, cfg.trust_remote_code, pooling
    )
    check_max_length(cfg.data.max_length, init, "student-init", student.config, None)
    projection = patient_projection(d, pairs, student.config, teacher.config)
    encoded = encode_all(splits, tokenizer, cfg.data.max_length, spec.label2id(), cfg.train.quiet)
    if transfer is not None:
        transfer = encode(transfer, tokenizer, cfg.data.max_length, None, not cfg.train.quiet)
    trunc = warn_truncation(encoded["train"], cfg.data.max_length)
    baseline = majority_baselines(spec, splits)
    if teacher_metrics is None:
        teacher_metrics = teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator)
    check_teacher_strength(spec, teacher_metrics, baseline, d.allow_weak_teacher)
    return DistillPlan(
        spec,
        teacher,
        tokenizer,
        student,
        init,
        pairs,
        splits,
        encoded,
        teacher_metrics,
        baseline,
        trunc,
        pooling,
        transfer,
        projection,
    )


def teacher_task(spec: TaskSpec, teacher, teacher_name: str) -> TaskSpec:
    """The task with the teacher's label order, after checking that the teacher fits it: the
    same kind of head, and the data's label names (by name, or by class id for the Hub's
    GLUE names and LABEL_0.., `pkd.tasks.align_labels`)."""
    teacher_labels = model_labels(teacher)
    if (spec.problem_type == MULTIPLE_CHOICE) != is_multiple_choice(teacher.config):
        kind = "multiple-choice" if is_multiple_choice(teacher.config) else "sequence"
        raise PkdError(
            f"--teacher: {teacher_name} is a {kind} classifier but task {spec.name} is "
            f"{spec.problem_type}; fine-tune a teacher for it with `pkd finetune`"
        )
    if spec.problem_type == CLASSIFICATION:
        return align_labels(spec, teacher_labels, "--teacher")  # in the teacher's order
    if teacher_labels:
        raise PkdError(
            f"--teacher: a classifier with labels {list(teacher_labels)} cannot teach regression"
        )
    return spec


def check_cache_space(
    cache_dir: str | None,
    task: str,
    teacher_config,
    examples: int,
    max_length: int,
    choices: int = 0,
) -> int:
    """Estimate the teacher cache, log it, and refuse to start when the disk cannot hold it.

    Returns the estimate in bytes. A cache that may already exist for these inputs (same task,
    examples, max length and teacher shape) skips the space check: it would be reused.
    choices: multiple choice: choices per example (logits (n, C), states (n, C, N+1, H)).
    """
    t = teacher_config
    size = cache_mod.estimate_bytes(examples, *cache_mod.teacher_shapes(t, choices))
    root, existing = cache_mod.check_cache_dir(cache_dir)
    free = shutil.disk_usage(existing).free
    logger.info(
        "teacher cache: about %s for %d examples under %s (%s free)",
        human_bytes(size),
        examples,
        root,
        human_bytes(free),
    )
    if free >= size * 1.1:
        return size
    for manifest in root.glob(f"{task}-*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
            if (m["examples"], m["max_length"], m["teacher_layers"], m["hidden_size"]) == (
                examples,
                max_length,
                t.num_hidden_layers,
                t.hidden_size,
            ):
                return size  # probably reusable; the build re-checks space if it is not
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise PkdError(
        f"--cache-dir: the teacher cache needs about {human_bytes(size)} but {existing} has "
        f"{human_bytes(free)} free; free some space or pass --cache-dir on a larger disk"
    )


def teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator=None) -> dict:
    """The teacher's metrics on each eval split (on the CPU when no accelerator is given)."""
    acc = accelerator or Accelerator(cpu=True)
    teacher.to(acc.device)
    out = {}
    for name in spec.eval_splits:
        loader = torch.utils.data.DataLoader(
            encoded[name], batch_size=cfg.train.eval_batch_size, collate_fn=collator(tokenizer)
        )
        out[name] = score(teacher, acc.prepare(loader), spec, acc)
    return out


class WeakTeacher(PkdError):
    """A teacher that does not beat the majority baseline by WEAK_TEACHER_MARGIN; `score`
    says by how much (a command with other options words its own hint)."""

    def __init__(self, score: str, hint: str) -> None:
        super().__init__(f"--teacher: it {score}; {hint}")
        self.score = score


def check_teacher_strength(spec, teacher_metrics, baseline, allow: bool) -> None:
    """A teacher must beat the majority baseline by WEAK_TEACHER_MARGIN on the first eval
    split; else a WeakTeacher error, or a warning with --allow-weak-teacher."""
    split = spec.eval_splits[0]
    value, base = teacher_metrics[split][spec.main_metric], baseline[split]
    if value < base + WEAK_TEACHER_MARGIN:
        score = (
            f"scores {spec.main_metric}={value:.4f} on {split}, not 2 points above the "
            f"majority baseline {base:.4f}"
        )
        if not allow:
            raise WeakTeacher(score, "fine-tune it better or pass --allow-weak-teacher")
        logger.warning("--teacher: it %s (allowed)", score)


# ---------------------------------------------------------------------------------------------
# The run


@locks_output
def distill(cfg: DistillRunConfig, dry_run: bool = False, on_evaluate=None) -> dict:
    """Distill a fine-tuned teacher into an M-layer student (FT, KD, PKD-Skip/Last).

    `on_evaluate(step, epoch, metrics)` is called after each epoch's evaluation (see
    `pkd.training.loop.train`); if it raises, the run stops and metrics.json is not written.
    Returns the contents of metrics.json (or the plan, with dry_run).
    """
    d = cfg.distill
    output, ckpt = open_run(cfg)
    accelerator = make_accelerator(cfg.train, output) if not dry_run else None
    plan = plan_distill(cfg, accelerator)
    if dry_run:
        return describe_distill(cfg, plan)
    resolved = {"pooling": plan.pooling}
    start_run(output, cfg, accelerator, ckpt is not None, resolved, data=plan.data()[0])
    t0 = time.perf_counter()
    spec = plan.spec
    train_set = plan.training_set(cfg)
    signal, cache_info = teacher_signal(cfg, plan, accelerator, train_set)
    t_cache = time.perf_counter() - t0
    objective = Objective.from_config(d, plan.pairs, signal, plan.pooling, plan.projection)
    plan.student.config.update({TASK_KEY: spec.name})
    result = train(
        plan.student,
        plan.tokenizer,
        train_set,
        {k: v for k, v in plan.encoded.items() if k != "train"},
        spec,
        cfg.train,
        objective,
        output,
        accelerator,
        collator(plan.tokenizer),
        resume_from=ckpt,
        on_evaluate=on_evaluate,
        run_params={
            "method": d.method,
            "teacher": cfg.teacher,
            "task": spec.name,
            "student_layers": d.student_layers,
            "student_init": plan.student_init,
        },
    )
    split = spec.eval_splits[0]
    best = result["best"]["metrics"][split][spec.main_metric]
    teacher_main = plan.teacher_metrics[split][spec.main_metric]
    metrics = {
        "task": spec.name,
        "teacher": cfg.teacher,
        "student_init": plan.student_init,
        "method": d.method,
        "student_layers": d.student_layers,
        "student_hidden_size": plan.student.config.hidden_size,
        "projection": plan.projection is not None,
        "pooling": plan.pooling,
        "layer_map": [list(p) for p in plan.pairs] if "pt" in d.terms else [],
        "labels": list(spec.labels),
        "best": result["best"],
        "final": result["final"],
        "history": result["history"],
        "teacher_metrics": plan.teacher_metrics,
        "fraction_of_teacher": best / teacher_main if teacher_main else None,
        "majority_baseline": plan.baseline,
        "parameters": {
            "student": count_parameters(plan.student),
            "teacher": count_parameters(plan.teacher),
        },
        "data": data_summary(*plan.data(), cfg.data.max_length),
        "transfer_ratio": d.transfer_ratio if plan.transfer is not None else None,
        "examples_seen": result["examples_seen"],
        "gradient_shares": result["gradient_shares"],
        "teacher_cache": cache_info,
        "wall_seconds": {
            "teacher_cache": round(t_cache, 2),
            "train": result["train_seconds"],
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    warn_collapse(result, spec, plan.splits[split], d)
    finish_run(output, metrics, plan.baseline[split], accelerator, command="distill")
    return metrics


def teacher_signal(
    cfg: DistillRunConfig, plan: DistillPlan, accelerator, train_set
) -> tuple[Callable | None, dict | None]:
    """What the student learns from besides labels: the teacher cache (built once, by the
    main process, or reused) over the training set (and its transfer set) or the teacher run
    online; None for FT. Also the cache's record for metrics.json (path, reused, build
    seconds), None without a cache."""
    d = cfg.distill
    if len(d.terms) == 1:  # FT: labels only
        return None, None
    if d.teacher_mode == "online":
        plan.teacher.to(accelerator.device)
        return online_teacher(plan.teacher), None
    with accelerator.main_process_first():
        cache = cache_mod.build_or_load(
            plan.teacher,
            getattr(train_set, "combined", train_set),  # a TransferMix: all its examples
            collator(plan.tokenizer),
            plan.spec.name,
            cache_mod.cache_extra(plan.spec, cfg),
            d.cache_dir,
            cfg.train.eval_batch_size,
            accelerator.device,
            not cfg.train.quiet,
        )
    return cached_teacher(cache), cache.record()


def warn_collapse(result: dict, spec: TaskSpec, dev, d: DistillConfig) -> None:
    """A student that predicts one class for all of dev after epoch 1 (its accuracy is one
    class's share): say why, from what the first epoch logged. Blame beta only when the
    patient term's gradient share says so; a cross-entropy still at log(C), a uniform guess,
    is a plateau (too few steps, lr, warm-up), not the loss weights."""
    if not result["history"] or spec.problem_type != CLASSIFICATION or not dev.labels:
        return
    split = spec.eval_splits[0]
    first = result["history"][0]["metrics"][split].get("accuracy")
    shares_of_classes = {dev.labels.count(c) / len(dev.labels) for c in set(dev.labels)}
    if first is None or not any(abs(first - s) < 1e-9 for s in shares_of_classes):
        return
    epoch = result.get("first_epoch") or {}
    ce, shares = epoch.get("ce"), epoch.get("gradient_shares", {})
    uniform = math.log(len(spec.labels))
    if d.method == "pkd" and shares.get("pt", 0.0) >= DOMINANT_SHARE:
        cause = (
            f"the patient loss dominates the gradient ({shares['pt']:.0%} of it at "
            f"beta={d.beta:g}): lower --beta"
        )
    elif ce is not None and abs(ce - uniform) <= PLATEAU_TOLERANCE * uniform:
        cause = (
            f"its cross-entropy is still {ce:.3f}, about log({len(spec.labels)}) = {uniform:.3f}, "
            "a uniform guess: it has not started to learn yet (a plateau, not the loss weights); "
            "train longer (--epochs), raise --lr or shorten --warmup-ratio"
        )
    else:
        got = ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) or "not logged"
        cause = f"gradient shares in epoch 1: {got}; it may need more steps or another --lr"
    logger.warning(
        "the student predicts a single class on %s after the first epoch (%s %.4f); %s",
        split,
        spec.main_metric,
        first,
        cause,
    )


DOMINANT_SHARE = 0.5  # a term with this share of the gradient or more drives the student
PLATEAU_TOLERANCE = 0.05  # CE within 5% of log(C) after an epoch: it has not moved
