"""`pkd distill`: distill a fine-tuned teacher into an M-layer student (FT, KD, PKD-Skip/Last).

`plan_distill` runs every up-front check (`pkd.recipes.distill_checks`) and loads teacher,
student and data into a `DistillPlan` (what `--dry-run` describes, and what `compare` reuses
per student depth); `run_distill` builds or reuses the teacher cache, trains, and returns
metrics.json's content (a recipe: `pkd.recipes.recipe`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from pkd.config.runs import DistillRunConfig
from pkd.data.kinds import task_kind
from pkd.data.loading import (
    check_label_sets,
    collator,
    encode,
    encode_all,
    load_splits,
    majority_baselines,
    resolve_task,
    warn_truncation,
)
from pkd.data.readers import TRANSFER
from pkd.data.splits import EncodedSplit
from pkd.data.transfer import (
    TransferMix,
    check_transfer,
    labelled_count,
    load_transfer,
    with_transfer,
)
from pkd.models.encoders import (
    DEV_METRIC_KEY,
    TASK_KEY,
    count_parameters,
    load_finetuned,
    load_tokenizer,
    model_labels,
    model_pooling,
    num_layers,
)
from pkd.models.projection import Projection
from pkd.models.results import RunResult
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
from pkd.recipes.distill_checks import (
    check_cache_space,
    check_teacher_strength,
    recorded_teacher_scores,
    teacher_scores,
    teacher_task,
    warn_collapse,
)
from pkd.recipes.dryrun import (
    POOLING_TEXT,
    cache_line,
    cached_plan,
    estimate,
    eval_examples,
    num,
    plan_text,
    scores_text,
    split_summary,
    time_steps,
    train_summary,
)
from pkd.recipes.recipe import Recipe, RunContext, evaluations, run_recipe
from pkd.tasks import (
    REGRESSION,
    TaskSpec,
    readable_labels,
)
from pkd.training.evaluation import Evaluation
from pkd.training.hooks import LabelCounts, PatientShareCheck
from pkd.training.loop import Run, train
from pkd.training.rundir import data_summary, locks_output

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Plan: every check, and the loaded teacher, student and data


@dataclass
class DistillPlan:
    """Everything `distill` resolved before training: shown by --dry-run, used by the run."""

    cfg: DistillRunConfig
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

    def resolved(self) -> dict:
        return {"pooling": self.pooling}

    def run_data(self) -> dict:
        return self.data()[0]

    def recorded_baseline(self) -> float:
        return self.baseline[self.spec.eval_splits[0]]

    def summary(self) -> dict:
        """The plan of `pkd distill` (what --dry-run returns)."""
        cfg, d, t = self.cfg, self.cfg.distill, self.teacher.config
        cache = self.teacher_cache()
        pt = "pt" in d.terms
        objective = Objective.from_config(
            d, self.pairs, pooling=self.pooling, heads=self.projection
        )
        out = {
            "command": "distill",
            "output": str(cfg.output),
            "preset": {"name": d.preset, "source": d.preset_source} if d.preset else None,
            "teacher": {
                "path": str(cfg.teacher),
                "layers": num_layers(t),
                "hidden_size": t.hidden_size,
                "parameters": count_parameters(self.teacher)["total"],
                "pooling": model_pooling(t),
                "labels": list(self.spec.labels),
                "recorded_dev": getattr(t, DEV_METRIC_KEY, None),
                "dev": self.teacher_metrics,
                "majority_baseline": self.baseline,
            },
            "student": {
                "layers": d.student_layers,
                "hidden_size": self.student.config.hidden_size,
                "init": str(self.student_init),
                "parameters": count_parameters(self.student)["total"],
                "pooling": self.pooling,
                "projection": self.projection is not None,
            },
            "method": d.method + (f"-{d.strategy}" if pt and not d.layer_map else ""),
            "layer_map": [[a, b] for a, b in self.pairs] if pt else [],
            "layer_map_text": [f"teacher {a} -> student {b}" for a, b in self.pairs] if pt else [],
            "loss": {
                "formula": objective.describe(self.spec.problem_type == REGRESSION),
                "alpha": d.alpha,
                "beta": d.beta,
                "temperature": d.temperature,
                "kd_form": d.kd_loss,
                "pt_form": d.pt_loss,
                "pt_normalize": d.pt_normalize,
                "pt_choices": d.pt_choices,
            },
            "data": split_summary(*self.data(), cfg.data.max_length),
            "transfer_ratio": d.transfer_ratio if self.transfer is not None else None,
            "max_length": cfg.data.max_length,
            "train": train_summary(cfg.train),
            "teacher_cache": cache,
            "cache_bytes": cache["bytes"],
        }
        needs_teacher = len(d.terms) > 1
        timing = time_steps(
            self.student,
            self.training_set(cfg),  # with its transfer partners: the batches the run sees
            collator(self.tokenizer),
            cfg.train,
            objective,
            self.spec.problem_type,
            teacher=self.teacher,  # also scored before training: always timed
        )
        n_train = len(self.encoded["train"])
        builds = needs_teacher and d.teacher_mode == "cached" and not cache["exists"]
        out["estimate"] = estimate(
            timing,
            cfg.train,
            n_train,
            eval_examples(self.encoded),
            teacher_cache_examples=cache.get("examples", n_train) if builds else 0,
            online_teacher=needs_teacher and d.teacher_mode == "online",
            teacher_eval_examples=eval_examples(self.encoded),
        )
        return out

    def teacher_cache(self) -> dict:
        """Where the teacher cache of this run lives, its size, and whether it already exists."""
        d = self.cfg.distill
        if len(d.terms) == 1:
            return {"mode": "not needed (FT uses labels only)", "bytes": 0, "exists": None}
        t = self.teacher.config
        dataset = self.encoded["train"]  # with a transfer set: the teacher labels it too
        if self.transfer is not None:
            dataset = with_transfer(dataset, self.transfer, self.spec.problem_type)
        n = len(dataset)
        # multiple choice: (n, C) and (n, C, N+1, H)
        choices = task_kind(self.spec).choices_per_example(self.splits["train"])
        size = cache_mod.estimate_bytes(n, *cache_mod.teacher_shapes(t, choices))
        if d.teacher_mode == "online":
            return {
                "mode": "online (no cache; the teacher runs every step)",
                "bytes": 0,
                "exists": None,
            }
        root = Path(d.cache_dir) if d.cache_dir else cache_mod.default_root()
        fp = cache_mod.fingerprint(
            self.teacher,
            dataset.features,
            cache_mod.cache_extra(self.spec.name, self.cfg.data.max_length, self.spec.labels),
        )
        return cached_plan(n, size, root / f"{self.spec.name}-{fp[:16]}")  # build_or_load's

    def describe(self, summary: dict | None = None) -> str:
        """The dry run's text: teacher, student, method, layer map, loss, cache, data, estimate."""
        plan = summary or self.summary()
        t, s = plan["teacher"], plan["student"]
        lines = []
        if plan.get("preset"):
            lines.append(f"preset:     {plan['preset']['name']} ({plan['preset']['source']})")
        lines += [
            f"teacher:    {t['path']} ({t['layers']} layers, hidden {t['hidden_size']}, "
            f"{t['parameters'] / 1e6:.2f}M parameters, {t['pooling']} pooling)",
            f"            labels {', '.join(t['labels']) or '(regression)'}",
            f"            scores {scores_text(t['dev'])}",
        ]
        rec = t.get("recorded_dev")
        if rec:
            lines.append(
                f"            recorded at fine-tuning: {rec.get('name')} {num(rec.get('value'))} "
                f"on {rec.get('split')}"
            )
        lines += [
            "            majority baseline "
            + ", ".join(f"{k} {v:.4f}" for k, v in t["majority_baseline"].items()),
            f"student:    {s['layers']} layers from {s['init']} ({s['parameters'] / 1e6:.2f}M "
            "parameters)",
            f"pooling:    {POOLING_TEXT[s['pooling']]}, head and patient loss",
            f"method:     {plan['method']}",
        ]
        if plan["layer_map"]:
            pairs = ", ".join(f"{a}->{b}" for a, b in plan["layer_map"])
            lines.append(f"layer map:  teacher->student {pairs} (+ logits of the last layer)")
            if s.get("projection"):
                lines.append(
                    f"            student width {s['hidden_size']} -> teacher {t['hidden_size']} "
                    "through a learned projection per layer (not saved in model/)"
                )
        else:
            lines.append("layer map:  none (no patient loss)")
        lines += [f"loss:       {plan['loss']['formula']}", cache_line(plan["teacher_cache"])]
        return plan_text(plan, lines)


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
            task_kind(spec).choices_per_example(splits["train"]),
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
        teacher_metrics = recorded_teacher_scores(cfg.teacher, spec, splits, cfg.data)
    if teacher_metrics is None:
        teacher_metrics = teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator)
    check_teacher_strength(spec, teacher_metrics, baseline, d.allow_weak_teacher)
    return DistillPlan(
        cfg,
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


# ---------------------------------------------------------------------------------------------
# The run


def run_distill(plan: DistillPlan, run: RunContext, on_evaluate=None) -> RunResult:
    """Build or reuse the teacher cache and train the planned student; metrics.json's content.

    `on_evaluate(step, epoch, metrics)` is called after each epoch's evaluation (see
    `pkd.training.loop.train`); if it raises, the run stops and metrics.json is not written.
    """
    cfg, d, spec, accelerator = plan.cfg, plan.cfg.distill, plan.spec, run.accelerator
    train_set = plan.training_set(cfg)
    signal, cache_info = teacher_signal(cfg, plan, accelerator, train_set)
    t_cache = time.perf_counter() - run.started
    objective = Objective.from_config(d, plan.pairs, signal, plan.pooling, plan.projection)
    plan.student.config.update({TASK_KEY: spec.name})
    loop = Run(
        plan.student,
        plan.tokenizer,
        train_set,
        {k: v for k, v in plan.encoded.items() if k != "train"},
        spec,
        cfg.train,
        objective,
        run.output,
        accelerator,
        collator(plan.tokenizer),
        resume_from=run.resume_from,
        on_evaluate=on_evaluate,
        evaluation=Evaluation.of_task(spec),
        run_params={
            "method": d.method,
            "teacher": cfg.teacher,
            "task": spec.name,
            "student_layers": d.student_layers,
            "student_init": plan.student_init,
        },
        hooks=[LabelCounts(labelled_count, accelerator.num_processes), PatientShareCheck(d.beta)],
    )
    result = train(loop)
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
        **evaluations(result),
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
        "wall_seconds": run.wall_seconds(result["train_seconds"], teacher_cache=round(t_cache, 2)),
    }
    warn_collapse(result, spec, plan.splits[split], d)
    return RunResult.of(metrics)


DISTILL = Recipe("distill", plan_distill, run_distill, plan_on_device=True)


@locks_output
def distill(cfg: DistillRunConfig, dry_run: bool = False, on_evaluate=None) -> dict:
    """Distill a fine-tuned teacher into an M-layer student (FT, KD, PKD-Skip/Last).

    `on_evaluate`: see `run_distill`. Returns the contents of metrics.json (or the plan, with
    dry_run: every check is run and a few steps are timed, nothing is written; its text is
    `.describe()`).
    """
    return run_recipe(DISTILL, cfg, dry_run, on_evaluate=on_evaluate)


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
            cache_mod.cache_extra(plan.spec.name, cfg.data.max_length, plan.spec.labels),
            d.cache_dir,
            cfg.train.eval_batch_size,
            accelerator.device,
            not cfg.train.quiet,
        )
    return cached_teacher(cache), cache.record()
