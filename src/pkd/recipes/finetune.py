"""`pkd finetune`: fine-tune a pre-trained encoder on a task (the teacher, or the FT baseline).

A recipe (`pkd.recipes.recipe`): `plan_finetune` checks everything that can be checked up
front and loads data and model into a `FinetunePlan` (what `--dry-run` describes);
`run_finetune` trains it and returns metrics.json's content (`RunResult`).
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerate.utils import set_seed

from pkd.config.runs import FinetuneRunConfig
from pkd.data.loading import (
    check_label_sets,
    collator,
    encode_all,
    load_splits,
    majority_baselines,
    resolve_task,
    warn_truncation,
)
from pkd.data.transfer import labelled_count
from pkd.models.encoders import (
    TASK_KEY,
    count_parameters,
    encoder_type,
    load_config,
    load_for_finetuning,
    load_tokenizer,
    model_pooling,
    num_layers,
    resolve_pooling,
)
from pkd.models.results import RunResult
from pkd.models.students import check_max_length
from pkd.objectives.objective import Objective
from pkd.recipes.dryrun import (
    POOLING_TEXT,
    estimate,
    eval_examples,
    plan_text,
    split_summary,
    time_steps,
    train_summary,
)
from pkd.recipes.recipe import Recipe, RunContext, evaluations, run_recipe
from pkd.tasks import CLASSIFICATION, TaskSpec
from pkd.training.evaluation import Evaluation
from pkd.training.hooks import LabelCounts
from pkd.training.loop import Run, train
from pkd.training.rundir import (
    data_summary,
    locks_output,
    resume_point,
)


@dataclass
class FinetunePlan:
    """Everything `finetune` resolved before training: shown by --dry-run, used by the run."""

    cfg: FinetuneRunConfig
    spec: TaskSpec
    model: object
    tokenizer: object
    pooling: str
    pooling_reason: str
    splits: dict
    encoded: dict
    truncated: float
    baseline: dict  # split -> majority-class score

    def resolved(self) -> dict:
        return {"pooling": self.pooling, "pooling_reason": self.pooling_reason}

    def run_data(self) -> dict:
        return self.splits

    def recorded_baseline(self) -> float:
        return self.baseline[self.spec.eval_splits[0]]

    def summary(self) -> dict:
        """The plan of `pkd finetune` (what --dry-run returns)."""
        cfg, spec, c = self.cfg, self.spec, self.model.config
        encoded = self.encoded
        resume_from = resume_point(cfg)
        timing = time_steps(
            self.model,
            encoded["train"],
            collator(self.tokenizer),
            cfg.train,
            Objective(),
            spec.problem_type,
        )
        return {
            "command": "finetune",
            "output": str(cfg.output),
            "resume_from": str(resume_from) if resume_from else None,
            "model": {
                "path": cfg.model,
                "type": encoder_type(c),
                "layers": num_layers(c),
                "hidden_size": c.hidden_size,
                "parameters": count_parameters(self.model)["total"],
                "pooling": model_pooling(c),
            },
            "task": spec.name,
            "problem_type": spec.problem_type,
            "labels": list(spec.labels) if spec.problem_type == CLASSIFICATION else [],
            "metric": f"{spec.main_metric} on {spec.eval_splits[0]}",
            "majority_baseline": self.baseline,
            "data": split_summary(self.splits, encoded, cfg.data.max_length),
            "max_length": cfg.data.max_length,
            "train": train_summary(cfg.train),
            "estimate": estimate(timing, cfg.train, len(encoded["train"]), eval_examples(encoded)),
        }

    def describe(self, summary: dict | None = None) -> str:
        """The dry run's text: model, pooling, task, baseline, data, training, estimate."""
        plan = summary or self.summary()
        m = plan["model"]
        labels = ", ".join(plan["labels"]) or "(regression)"
        lines = [
            f"model:      {m['path']} ({m['type']}, {m['layers']} layers, hidden {m['hidden_size']}, "
            f"{m['parameters'] / 1e6:.2f}M parameters)",
            f"pooling:    {POOLING_TEXT[m['pooling']]}",
            f"task:       {plan['task']}, labels {labels}; selects on {plan['metric']}",
            "baseline:   majority class "
            + ", ".join(f"{k} {v:.4f}" for k, v in plan["majority_baseline"].items()),
        ]
        return plan_text(plan, lines)


def plan_finetune(cfg: FinetuneRunConfig) -> FinetunePlan:
    """Every up-front check of `pkd finetune`, and the loaded data and model."""
    spec = resolve_task(cfg.data)
    spec, splits = load_splits(cfg.data, ["train", *spec.eval_splits])
    check_label_sets(spec, splits)
    set_seed(cfg.train.seed)  # before the new head is initialised
    tokenizer = load_tokenizer(cfg.model, "model", cfg.trust_remote_code)
    config = load_config(cfg.model, "model", cfg.trust_remote_code)
    pooling, pooling_reason = resolve_pooling(cfg.pooling, cfg.model, config)
    model = load_for_finetuning(
        cfg.model, spec.problem_type, spec.labels, cfg.trust_remote_code, pooling=pooling
    )
    check_max_length(cfg.data.max_length, cfg.model, "model", model.config, tokenizer)
    label2id = model.config.label2id if spec.problem_type == CLASSIFICATION else None
    encoded = encode_all(splits, tokenizer, cfg.data.max_length, label2id, cfg.train.quiet)
    trunc = warn_truncation(encoded["train"], cfg.data.max_length)
    baseline = majority_baselines(spec, splits)
    return FinetunePlan(
        cfg, spec, model, tokenizer, pooling, pooling_reason, splits, encoded, trunc, baseline
    )


def run_finetune(plan: FinetunePlan, run: RunContext) -> RunResult:
    """Train the planned model; metrics.json's content."""
    cfg, spec, model, tokenizer = plan.cfg, plan.spec, plan.model, plan.tokenizer
    encoded = plan.encoded
    model.config.update({TASK_KEY: spec.name})
    result = train(
        Run(
            model,
            tokenizer,
            encoded["train"],
            {k: v for k, v in encoded.items() if k != "train"},
            spec,
            cfg.train,
            Objective(),
            run.output,
            run.accelerator,
            collator(tokenizer),
            resume_from=run.resume_from,
            evaluation=Evaluation.of_task(spec),
            hooks=[LabelCounts(labelled_count, run.accelerator.num_processes)],
        )
    )
    metrics = {
        "task": spec.name,
        "model": cfg.model,
        "pooling": plan.pooling,
        "labels": list(spec.labels),
        **evaluations(result),
        "majority_baseline": plan.baseline,
        "parameters": count_parameters(model),
        "data": data_summary(plan.splits, encoded, cfg.data.max_length),
        "truncated_train_fraction": plan.truncated,
        "wall_seconds": run.wall_seconds(result["train_seconds"]),
    }
    return RunResult.of(metrics)


FINETUNE = Recipe("finetune", plan_finetune, run_finetune)


@locks_output
def finetune(cfg: FinetuneRunConfig, dry_run: bool = False) -> dict:
    """Fine-tune a pre-trained encoder on a task (the teacher, or the FT baseline).

    Returns the contents of metrics.json (or, with dry_run, the plan: every check is run
    and a few steps are timed, nothing is written; its text is `.describe()`).
    """
    return run_recipe(FINETUNE, cfg, dry_run)
