"""The one training loop: fine-tuning and every distillation mode (FT, KD, PKD).

Fine-tuning is distillation with only the CE term. `train` reads top-down like nanoGPT's
train.py: one `Run` bundle in -> `prepare` (loaders, optimizer, schedule, accelerate:
`pkd.training.accelerator`) -> resume the `LoopState` -> for each micro-batch
`training_step` (loss terms -> check -> backward -> clip -> step), a `Meter` for the log
records, a checkpoint every --save-steps -> each epoch `end_of_epoch` (evaluate, keep the
best model, hooks, checkpoint). Devices, DDP and mixed precision are accelerate's; the loop
never touches them directly. What a task knows beyond its loss (transfer counts, the patient
term's share) comes in as `LoopHooks` its recipe installs; callers watch or stop a run
through them too (tests inject faults through them).
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

from pkd.config.sections import TrainConfig
from pkd.errors import PkdError
from pkd.models.encoders import DEV_METRIC_KEY
from pkd.objectives.objective import batch_examples, gradient_shares
from pkd.progress import progress
from pkd.tasks import REGRESSION, TaskSpec
from pkd.training.accelerator import Prepared, prepare, start_trackers
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
    `shares` (`measures_shares`, in a run with several terms), each term's `gradient_shares` too.
    `objective`: an `Objective`, or any object with its `loss_terms`, `weights`, `total` and
    `heads` (`pkd.objectives.pretraining.GeneralObjective`).

    Returns:
        This process's loss terms and total (and shares) as floats, and the step's lr.
    """
    accelerator, model, optimizer = p.accelerator, p.model, p.optimizer
    with accelerator.accumulate(model):
        terms = objective.loss_terms(model, batch, regression)
        for h in hooks:
            h.on_loss(step, terms)
        loss = objective.total(terms)
        values = checked_terms(accelerator, terms, loss, step, output)
        if shares and len(terms) > 1:
            values.update(gradient_shares(model, terms, objective))
        accelerator.backward(loss)
        if accelerator.sync_gradients and p.cfg.max_grad_norm > 0:
            params = [*model.parameters(), *(p.heads.parameters() if p.heads is not None else ())]
            accelerator.clip_grad_norm_(params, p.cfg.max_grad_norm)
        lr = p.scheduler.get_last_lr()[0]  # the lr this step uses, logged with it
        optimizer.step()
        # once per real update, the same on every process (not after an fp16 overflow)
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
            p.scheduler.step()
        optimizer.zero_grad()
    return values, lr


def measures_shares(step: int, logging_steps: int, total_steps: int) -> bool:
    """Whether logged step `step` measures the gradient shares (one extra backward per term):
    on logged steps 1, 2, 4, 8, ... (counted in --logging-steps), dense early, where a
    plateau or a dominant term shows and the first-epoch warnings read them, rare later; and
    on the last step. Every logged step cost a short run about 5% of its time."""
    n, rest = divmod(step, logging_steps)
    return step == total_steps or (rest == 0 and n & (n - 1) == 0)


@dataclass
class Run:
    """Everything one run of `train` needs.

    `spec`: the task (None for `pkd pretrain`, which has no labels). `objective`: an
    `Objective`, or any object with its `loss_terms`, `weights`, `total` and `heads`
    (`pkd.objectives.pretraining.GeneralObjective`). `evaluation`: how epochs are scored
    (default: the task's metrics). `on_evaluate(step, epoch, metrics)` runs after each
    evaluation on every process, after the hooks'; an exception from it (a sweep's
    `optuna.TrialPruned`) stops the run. `run_params`: what trackers log as parameters
    besides the settings (`start_trackers`). `hooks`: the recipe's (`pkd.training.hooks`),
    run before those of `use_hooks` blocks.
    """

    model: torch.nn.Module
    tokenizer: object
    train_set: torch.utils.data.Dataset
    eval_sets: dict[str, torch.utils.data.Dataset]
    spec: TaskSpec | None
    cfg: TrainConfig
    objective: object
    output: Path
    accelerator: object
    collate: Callable
    resume_from: Path | None = None
    on_evaluate: Callable[[int, int, dict], None] | None = None
    evaluation: Evaluation | None = None
    run_params: dict | None = None
    hooks: Sequence[LoopHooks] = ()


def train(run: Run) -> dict:
    """Train `run.model` on `run.train_set`, evaluate on `run.eval_sets` each epoch, keep the
    best.

    Writes into `run.output`: model/ (best, save_pretrained), log.jsonl, tensorboard/,
    checkpoints/step-N/. Returns the best and final metrics, history and timings.
    """
    cfg, accelerator, output, objective = run.cfg, run.accelerator, run.output, run.objective
    set_seed(cfg.seed)
    evaluation = run.evaluation or Evaluation.of_task(run.spec)
    p = prepare(
        accelerator, run.model, run.train_set, run.eval_sets, cfg, run.collate, objective.heads
    )
    if objective.heads is not None:  # the prepared one (DDP-wrapped under several processes)
        objective = dataclasses.replace(objective, heads=p.heads)
    start_trackers(accelerator, output, cfg, objective, run.run_params)
    state = resume(accelerator, run.resume_from) if run.resume_from is not None else LoopState()
    hooks = [*run.hooks, *installed()]  # the recipe's, then those of use_hooks blocks
    log, meter = RunLog(output, accelerator), Meter()
    regression = run.spec is not None and run.spec.problem_type == REGRESSION
    log_plan(p, len(run.train_set))
    quiet = cfg.quiet or not accelerator.is_local_main_process
    bar = progress(p.total_steps, "train", "step", quiet=quiet, initial=state.step)
    t_start = time.perf_counter()
    p.model.train()
    try:
        while state.step < p.total_steps:
            for batch in epoch_batches(p, state):
                step = state.step + 1
                logged = step % cfg.logging_steps == 0 or step == p.total_steps
                shares = logged and measures_shares(step, cfg.logging_steps, p.total_steps)
                values, lr = training_step(
                    p, batch, objective, regression, step, output, hooks, shares=shares
                )
                state.batches_in_epoch += 1
                meter.add(values, batch_examples(batch) * accelerator.num_processes)
                for h in hooks:
                    h.on_batch(state, batch)
                if not accelerator.sync_gradients:
                    continue  # more micro-batches to accumulate before this step's update
                state.step += 1
                bar.update(1)
                if logged:
                    record = log.write_step(meter, state.stats, state, lr, len(p.train_loader))
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
            for h in hooks:
                h.on_epoch_end(state)
            end_of_epoch(p, run, state, evaluation, log, hooks)
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
        **state.stats.summary(),
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
    run: Run,
    state: LoopState,
    evaluation: Evaluation,
    log: RunLog,
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
            save_model(unwrapped, run.tokenizer, run.output / "model")
    accelerator.wait_for_everyone()
    for h in hooks:
        h.on_evaluate(state, metrics)
    if run.on_evaluate is not None:
        run.on_evaluate(state.step, state.epoch, metrics)
    save_checkpoint(accelerator, run.output, state, p.cfg.save_total_limit, hooks)
