"""The one training loop: fine-tuning and every distillation mode (FT, KD, PKD).

Fine-tuning is distillation with only the CE term. `train` reads top-down like nanoGPT's
train.py: `prepare` (loaders, optimizer, schedule, accelerate) -> resume the `LoopState` ->
for each micro-batch `training_step` (loss terms -> check -> backward -> clip -> step), a
`Meter` for the log records, a checkpoint every --save-steps -> each epoch `end_of_epoch`
(evaluate, keep the best model, hooks, checkpoint). Devices, DDP and mixed precision are
accelerate's; the loop never touches them directly. `LoopHooks` let a caller watch or stop
a run (tests inject faults through them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_linear_schedule_with_warmup

from pkd.config.sections import TrainConfig
from pkd.data.loading import LengthGroupedSampler
from pkd.errors import PkdError
from pkd.models.encoders import DEV_METRIC_KEY
from pkd.objectives.objective import (
    Objective,
    batch_examples,
    gradient_shares,
)
from pkd.progress import progress
from pkd.tasks import REGRESSION, TaskSpec
from pkd.training.accelerator import (
    start_trackers,
)
from pkd.training.checkpoints import (
    LoopState,
    checkpoints,
    resume,
    save_checkpoint,
    save_model,
)
from pkd.training.evaluation import Evaluation
from pkd.training.hooks import LoopHooks, installed
from pkd.training.runlog import Meter, RunLog

logger = logging.getLogger(__name__)


def checked_terms(
    accelerator,
    terms: dict[str, torch.Tensor],
    loss: torch.Tensor,
    step: int,
    output: Path | None = None,
) -> dict[str, float]:
    """This process's loss terms and total as floats, after checking every process's.

    One small all-gather per micro-batch lets every process see a non-finite loss on any of
    them at the same step, so all stop with the same error; a process stopping alone would
    leave the others waiting in the next collective (the gradient all-reduce) forever.

    Raises:
        PkdError: naming the step, the first failing process, its terms and the last checkpoint.
    """
    names = [*terms, "loss"]
    local = torch.stack([v.detach().float() for v in (*terms.values(), loss)])
    every = accelerator.gather(local).view(accelerator.num_processes, len(names)).cpu()
    finite = torch.isfinite(every).all(dim=1)
    if not finite.all():
        rank = int((~finite).nonzero()[0])
        row = dict(zip(names, every[rank].tolist(), strict=True))
        if not all(math.isfinite(v) for v in list(row.values())[:-1]):
            del row["loss"]  # a term says why; the total only when its weighting overflowed
        values = ", ".join(f"{k}={v:.4g}" for k, v in row.items())
        where = f" on process {rank} of {len(every)}" if len(every) > 1 else ""
        last = checkpoints(output) if output is not None else []
        raise PkdError(
            f"non-finite loss at step {step}{where} ({values}); "
            f"last checkpoint: {last[-1] if last else 'none'}"
        )
    return dict(zip(names, every[accelerator.process_index].tolist(), strict=True))


@dataclass
class Prepared:
    """A run's accelerator, what it prepared, and the settings the step reads (`prepare`)."""

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: torch.utils.data.DataLoader
    eval_loaders: dict[str, torch.utils.data.DataLoader]
    micro_batch: int  # examples per process per micro-batch
    total_steps: int  # optimizer steps of the whole run
    cfg: TrainConfig
    aux: torch.nn.Module | None = None  # the objective's own trained modules, prepared too


def optimizer_and_schedule(model, cfg: TrainConfig, total_steps: int, aux=None):
    """AdamW (no weight decay on biases and LayerNorm weights) and its linear warm-up/decay,
    over the student's parameters and those of `aux` (projections)."""

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = [*model.named_parameters(), *(aux.named_parameters() if aux is not None else ())]
    groups = [
        {
            "params": [p for n, p in named if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    warmup = int(cfg.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def prepare(
    accelerator, model, train_set, eval_sets: dict, cfg: TrainConfig, collate, aux=None
) -> Prepared:
    """Loaders, optimizer and schedule for `cfg`, passed through `accelerator.prepare`; `aux`
    (an objective's projections) is prepared beside the model and trained with it.

    Raises:
        PkdError: --batch-size does not split into micro-batches over accumulation x processes.
    """
    world = accelerator.num_processes
    micro = cfg.batch_size // (cfg.gradient_accumulation_steps * world)
    if micro < 1 or micro * cfg.gradient_accumulation_steps * world != cfg.batch_size:
        raise PkdError(
            f"--batch-size: {cfg.batch_size} is not divisible by gradient accumulation "
            f"({cfg.gradient_accumulation_steps}) x processes ({world})"
        )
    # Its own generator: creating a loader iterator (e.g. on resume) must not draw from the
    # global RNG, or dropout masks after a resume would differ from an uninterrupted run.
    # --group-by-length: similar lengths per batch, in an order fixed by (seed, epoch).
    sampler = None
    if cfg.group_by_length:
        sampler = LengthGroupedSampler(train_set.lengths(), micro, cfg.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=micro,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    eval_loaders = {
        name: torch.utils.data.DataLoader(ds, batch_size=cfg.eval_batch_size, collate_fn=collate)
        for name, ds in eval_sets.items()
    }
    steps_per_epoch = math.ceil(len(train_loader) / (world * cfg.gradient_accumulation_steps))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    optimizer, scheduler = optimizer_and_schedule(model, cfg, total_steps, aux)
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    if aux is not None:  # its own model_1 in checkpoints, after the student's model
        aux = accelerator.prepare(aux)
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    return Prepared(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        eval_loaders,
        micro,
        total_steps,
        cfg,
        aux,
    )


def epoch_batches(p: Prepared, state: LoopState):
    """This epoch's micro-batches in their (seed, epoch) order, less those done before a resume.

    The epoch reaches pkd's own datasets (`pkd.data.transfer.TransferMix`' partners,
    `pkd.data.text.MaskedText`'s masks) here, not through the loader: under several processes
    accelerate's `set_epoch` tells the sampler only."""
    p.train_loader.set_epoch(state.epoch)
    if hasattr(p.train_loader.dataset, "set_epoch"):
        p.train_loader.dataset.set_epoch(state.epoch)
    if state.batches_in_epoch:
        return p.accelerator.skip_first_batches(p.train_loader, state.batches_in_epoch)
    return p.train_loader


def training_step(
    p: Prepared,
    batch: dict,
    objective,
    regression: bool,
    step: int,
    output: Path | None = None,
    hooks: Sequence[LoopHooks] = (),
    shares: bool = False,
) -> tuple[dict[str, float], float]:
    """One micro-batch: loss terms -> check -> backward -> clip -> optimizer and schedule step.

    The optimizer and the schedule advance only on the micro-batch that completes a step of
    gradient accumulation. `step` is the optimizer step the batch belongs to, as numbered in
    log.jsonl; `output` is the run dir whose last checkpoint a non-finite loss names. With
    `shares` (logged steps of a run with several terms), each term's `gradient_shares` too.
    `objective`: an `Objective`, or any object with its `loss_terms`, `weights` and `aux`
    (`pkd.objectives.pretraining.GeneralObjective`).

    Returns:
        This process's loss terms and total (and shares) as floats, and the step's lr.
    """
    accelerator, model, optimizer = p.accelerator, p.model, p.optimizer
    with accelerator.accumulate(model):
        terms = objective.loss_terms(model, batch, regression)
        for h in hooks:
            h.on_loss(step, terms)
        weights = objective.weights()
        loss = sum(weights[name] * value for name, value in terms.items())
        values = checked_terms(accelerator, terms, loss, step, output)
        if shares and len(terms) > 1:
            values.update(gradient_shares(model, terms, objective))
        accelerator.backward(loss)
        if accelerator.sync_gradients and p.cfg.max_grad_norm > 0:
            params = [*model.parameters(), *(p.aux.parameters() if p.aux is not None else ())]
            accelerator.clip_grad_norm_(params, p.cfg.max_grad_norm)
        lr = p.scheduler.get_last_lr()[0]  # the lr this step uses, logged with it
        optimizer.step()
        # once per real update, the same on every process (not after an fp16 overflow)
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
            p.scheduler.step()
        optimizer.zero_grad()
    return values, lr


def train(
    model,
    tokenizer,
    train_set,
    eval_sets: dict,
    spec: TaskSpec | None,
    cfg: TrainConfig,
    objective: Objective,
    output: Path,
    accelerator,
    collate,
    resume_from: Path | None = None,
    on_evaluate: Callable[[int, int, dict], None] | None = None,
    evaluation: Evaluation | None = None,
    run_params: dict | None = None,
) -> dict:
    """Train `model` on `train_set`, evaluate on `eval_sets` each epoch, keep the best.

    Writes into `output`: model/ (best, save_pretrained), log.jsonl, tensorboard/,
    checkpoints/step-N/. Returns the best and final metrics, history and timings.
    `on_evaluate(step, epoch, metrics)`, if given, runs after each evaluation on every
    process, after that of the hooks installed by `use_hooks`; an exception from it (e.g. a
    sweep's `optuna.TrialPruned`) stops the run. `evaluation`: how epochs are scored (default:
    the task's metrics; `pkd pretrain`, which has no task (spec None), passes its own).
    `run_params`: what trackers log as parameters besides the settings (`start_trackers`).
    """

    set_seed(cfg.seed)
    evaluation = evaluation or Evaluation.of_task(spec)
    p = prepare(accelerator, model, train_set, eval_sets, cfg, collate, objective.aux)
    if objective.aux is not None:  # the prepared one (DDP-wrapped under several processes)
        objective = dataclasses.replace(objective, aux=p.aux)
    start_trackers(accelerator, output, cfg, objective, run_params)
    state = resume(accelerator, resume_from) if resume_from is not None else LoopState()
    hooks = installed()  # those of use_hooks blocks around this run
    log, meter, stats = RunLog(output, accelerator), Meter(), state.stats
    regression = spec is not None and spec.problem_type == REGRESSION
    log_plan(p, len(train_set))
    quiet = cfg.quiet or not accelerator.is_local_main_process
    bar = progress(p.total_steps, "train", "step", quiet=quiet, initial=state.step)
    t_start = time.perf_counter()
    p.model.train()
    try:
        while state.step < p.total_steps:
            for batch in epoch_batches(p, state):
                step = state.step + 1
                logged = step % cfg.logging_steps == 0 or step == p.total_steps
                values, lr = training_step(
                    p, batch, objective, regression, step, output, hooks, shares=logged
                )
                state.batches_in_epoch += 1
                meter.add(values, batch_examples(batch) * accelerator.num_processes)
                if "labels" in batch:
                    stats.add_batch(batch["labels"], accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue  # more micro-batches to accumulate before this step's update
                state.step += 1
                bar.update(1)
                if logged:
                    record = log.write_step(meter, stats, state, lr, len(p.train_loader))
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.0f}"
                    )
                if cfg.save_steps and state.step % cfg.save_steps == 0:
                    save_checkpoint(accelerator, output, state, cfg.save_total_limit, hooks)
                if state.step >= p.total_steps:
                    break
            # a whole pass is an epoch; --max-steps may stop mid-pass
            if state.step < p.total_steps or state.batches_in_epoch >= len(p.train_loader):
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if state.epoch == 1:
                stats.check_patient_share(objective)
            end_of_epoch(p, state, evaluation, tokenizer, output, log, on_evaluate, hooks)
    finally:  # also when a step, a hook or on_evaluate raises: close the trackers, the bar
        bar.close()
        # not accelerator.end_training(): it also ends the process group, which the next run
        # in this process (compare, sweep, the API) needs under torchrun
        for tracker in accelerator.trackers:
            tracker.finish()
    if not cfg.keep_checkpoints and accelerator.is_main_process:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # the best model is in model/
    return {
        "best": state.best,
        "final": state.history[-1] if state.history else None,
        "history": state.history,
        "steps": state.step,
        "train_seconds": round(time.perf_counter() - t_start, 2),
        **stats.summary(),
    }


def log_plan(p: Prepared, examples: int) -> None:
    logger.info(
        "training: %d examples, %d steps, effective batch %d (%d x %d accumulation x %d processes)",
        examples,
        p.total_steps,
        p.cfg.batch_size,
        p.micro_batch,
        p.cfg.gradient_accumulation_steps,
        p.accelerator.num_processes,
    )


def end_of_epoch(
    p: Prepared,
    state: LoopState,
    evaluation: Evaluation,
    tokenizer,
    output: Path,
    log: RunLog,
    on_evaluate: Callable[[int, int, dict], None] | None,
    hooks: Sequence[LoopHooks],
) -> None:
    """Evaluate on every eval split, keep the best model (by the first split's main metric)
    in output/model, run the hooks and `on_evaluate`, and checkpoint."""
    accelerator = p.accelerator
    metrics = {
        name: evaluation.score(p.model, loader, accelerator)
        for name, loader in p.eval_loaders.items()
    }
    select, name = next(iter(metrics)), evaluation.metric
    main = metrics[select][name]
    record = {"step": state.step, "epoch": state.epoch, "metrics": metrics}
    state.history.append(record)
    flat = {f"{split}/{k}": v for split, m in metrics.items() for k, v in m.items()}
    log.write({"step": state.step, "epoch": state.epoch, **flat}, state.step)
    logger.info("step %d: %s", state.step, json.dumps(metrics))
    if state.best is None or evaluation.better(main, state.best["metrics"][select][name]):
        state.best = record
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(p.model)
            unwrapped.config.update(
                {DEV_METRIC_KEY: {"split": select, "name": name, "value": main}}
            )
            save_model(unwrapped, tokenizer, output / "model")
    accelerator.wait_for_everyone()
    for h in hooks:
        h.on_evaluate(state, metrics)
    if on_evaluate is not None:
        on_evaluate(state.step, state.epoch, metrics)
    save_checkpoint(accelerator, output, state, p.cfg.save_total_limit, hooks)
