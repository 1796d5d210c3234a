"""`pkd finetune`: fine-tune a pre-trained encoder on a task (the teacher, or the FT baseline).

One story, as run_glue's `main()`: check everything that can be checked up front -> load
data and model -> write config.yaml -> train -> metrics.json. Nothing is written before
every check has passed, and metrics.json, the mark of a finished run, is written last.
"""

from __future__ import annotations

import time

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
from pkd.models.encoders import (
    TASK_KEY,
    count_parameters,
    load_config,
    load_for_finetuning,
    load_tokenizer,
    resolve_pooling,
)
from pkd.models.students import check_max_length
from pkd.objectives.objective import Objective
from pkd.recipes.dryrun import describe_finetune
from pkd.tasks import CLASSIFICATION
from pkd.training.accelerator import make_accelerator
from pkd.training.loop import train
from pkd.training.rundir import data_summary, finish_run, locks_output, open_run, start_run


@locks_output
def finetune(cfg: FinetuneRunConfig, dry_run: bool = False) -> dict:
    """Fine-tune a pre-trained encoder on a task (the teacher, or the FT baseline).

    Returns the contents of metrics.json (or, with dry_run, the plan: every check is run
    and a few steps are timed, nothing is written).
    """
    output, ckpt = open_run(cfg)
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
    if dry_run:
        return describe_finetune(cfg, spec, model, tokenizer, splits, encoded, baseline, ckpt)
    model.config.update({TASK_KEY: spec.name})
    accelerator = make_accelerator(cfg.train, output)
    resolved = {"pooling": pooling, "pooling_reason": pooling_reason}
    start_run(output, cfg, accelerator, ckpt is not None, resolved=resolved, data=splits)
    t0 = time.perf_counter()
    result = train(
        model,
        tokenizer,
        encoded["train"],
        {k: v for k, v in encoded.items() if k != "train"},
        spec,
        cfg.train,
        Objective(),
        output,
        accelerator,
        collator(tokenizer),
        resume_from=ckpt,
    )
    metrics = {
        "task": spec.name,
        "model": cfg.model,
        "pooling": pooling,
        "labels": list(spec.labels),
        "best": result["best"],
        "final": result["final"],
        "history": result["history"],
        "majority_baseline": baseline,
        "parameters": count_parameters(model),
        "data": data_summary(splits, encoded, cfg.data.max_length),
        "truncated_train_fraction": trunc,
        "wall_seconds": {
            "train": result["train_seconds"],
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    finish_run(output, metrics, baseline[spec.eval_splits[0]], accelerator, command="finetune")
    return metrics
