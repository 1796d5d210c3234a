"""The one training loop: fine-tuning and every distillation mode (FT, KD, PKD).

Fine-tuning is distillation with only the CE term. The loop reads top-down like nanoGPT's:
prepare (accelerate) -> resume -> for each step: loss terms -> backward -> clip -> step ->
log -> checkpoint; each epoch: evaluate -> keep the best model. Devices, DDP and mixed
precision are accelerate's; the loop never touches them directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pkd.config import TrainConfig
from pkd.data import LengthGroupedSampler
from pkd.errors import PkdError
from pkd.fsio import publish_modes
from pkd.losses import ce_loss, kd_loss, patient_loss, total_loss
from pkd.metrics import compute_metrics
from pkd.models import DEV_METRIC_KEY, layer_states, model_pooling
from pkd.progress import progress
from pkd.race import level_metrics
from pkd.tasks import REGRESSION, TaskSpec

logger = logging.getLogger(__name__)

NON_INPUTS = ("labels", "example_index")


@dataclass
class Objective:
    """What the student learns from: loss terms, their weights, and the teacher's signals.

    `teacher(batch, layers)` returns teacher logits and pooled states ([CLS], or the token
    mean for a mean-pooled teacher) at the given teacher layers, from the cache or from a live
    teacher. `pooling` is how the student's states are pooled for the patient loss: the same
    as the teacher's (distill refuses a mismatch).
    """

    terms: tuple[str, ...] = ("ce",)
    alpha: float = 0.0
    beta: float = 0.0
    temperature: float = 1.0
    kd_form: str = "kl"
    pt_form: str = "mean"
    pt_normalize: bool = True
    pt_choices: str = "concat"
    pooling: str = "cls"
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (teacher layer, student layer)
    teacher: Callable | None = None

    @classmethod
    def from_config(
        cls,
        d,
        pairs: list[tuple[int, int]],
        teacher: Callable | None = None,
        pooling: str = "cls",
    ):
        """The objective a `DistillConfig` asks for (terms and weights from its method);
        pooling: the student's, resolved (`pkd.models.resolve_pooling`)."""
        return cls(
            terms=d.terms,
            alpha=d.alpha,
            beta=d.beta,
            temperature=d.temperature,
            kd_form=d.kd_loss,
            pt_form=d.pt_loss,
            pt_normalize=d.pt_normalize,
            pt_choices=d.pt_choices,
            pooling=pooling,
            pairs=pairs,
            teacher=teacher,
        )


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in NON_INPUTS}


def loss_terms(
    model, batch: dict, objective: Objective, regression: bool
) -> dict[str, torch.Tensor]:
    """Each loss term of Eq. (5) for one batch, unweighted."""
    out = model(**model_inputs(batch), output_hidden_states="pt" in objective.terms)
    terms = {"ce": ce_loss(out.logits, batch["labels"], regression)}
    if "kd" in objective.terms:
        t_layers = [t for t, _ in objective.pairs] if "pt" in objective.terms else []
        t_logits, t_states = objective.teacher(batch, t_layers)
        terms["kd"] = kd_loss(
            out.logits,
            t_logits.to(out.logits.device),
            objective.temperature,
            objective.kd_form,
            regression,
        )
        if "pt" in objective.terms:
            s_layers = [s for _, s in objective.pairs]
            s_states = layer_states(
                out.hidden_states, batch["attention_mask"], out.logits, objective.pooling
            )[..., s_layers, :]
            terms["pt"] = patient_loss(
                s_states,
                t_states.to(s_states.device),
                objective.pt_normalize,
                objective.pt_form,
                objective.pt_choices,
            )
    return terms


def checked_terms(
    accelerator, terms: dict[str, torch.Tensor], loss: torch.Tensor, step: int, output: Path
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
        last = checkpoints(output)
        raise PkdError(
            f"non-finite loss at step {step}{where} ({values}); "
            f"last checkpoint: {last[-1] if last else 'none'}"
        )
    return dict(zip(names, every[accelerator.process_index].tolist(), strict=True))


def cached_teacher(cache) -> Callable:
    """Teacher signals read from a `pkd.cache.TeacherCache` by example index."""
    return lambda batch, layers: cache.targets(batch["example_index"], layers)


def online_teacher(teacher) -> Callable:
    """Teacher signals from a forward pass of the (frozen) teacher on each batch."""
    teacher.eval()
    teacher.requires_grad_(False)
    pooling = model_pooling(teacher.config)

    @torch.no_grad()
    def signals(batch, layers):
        out = teacher(**model_inputs(batch), output_hidden_states=True)
        states = layer_states(out.hidden_states, batch["attention_mask"], out.logits, pooling)
        return out.logits.float(), states[..., layers, :].float()

    return signals


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict_logits(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and gold labels, if any) for a prepared loader, gathered over processes."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits = model(**model_inputs(batch)).logits
        if "labels" in batch:
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_labels.append(labels.float().cpu().numpy())
        else:
            logits = accelerator.gather_for_metrics(logits)
        all_logits.append(logits.float().cpu().numpy())
    model.train()
    labels = np.concatenate(all_labels) if all_labels else None
    return np.concatenate(all_logits), labels


def predictions(logits: np.ndarray, problem_type: str) -> np.ndarray:
    return logits.reshape(-1) if problem_type == REGRESSION else logits.argmax(-1)


def score(model, loader, spec: TaskSpec, accelerator) -> dict[str, float]:
    """The task's metrics of a model on a prepared, labelled loader.

    spec.labels must be in the model's output order: F1 scores `spec.positive_label` by name.
    """
    logits, labels = predict_logits(model, loader, accelerator)
    preds = predictions(logits, spec.problem_type)
    if spec.problem_type != REGRESSION:
        labels = labels.astype(np.int64)
    metrics = compute_metrics(spec.metrics, preds, labels, spec.positive_index())
    # RACE: accuracy per level (RACE-M, RACE-H) when the split holds both; eval loaders
    # keep the dataset's order, so predictions line up with its examples.
    metrics.update(level_metrics(getattr(loader.dataset, "split", None), preds, labels))
    return metrics


# ---------------------------------------------------------------------------------------------
# Run directory helpers


class RunLog:
    """log.jsonl (every record) + TensorBoard scalars, from the main process only."""

    def __init__(self, output: Path, accelerator):
        self.path = output / "log.jsonl"
        self.accelerator = accelerator

    def write(self, record: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(scalars, step=step)


def save_model(model, tokenizer, path: Path) -> None:
    """save_pretrained into a temporary dir, then swap it in (readers never see half a model)."""
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_modes(tmp)  # safetensors writes 0600: a serving account could not read it
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Half-written ones are hidden `.tmp` dirs."""
    root = output / "checkpoints"
    done = (
        [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
        if root.is_dir()
        else []
    )
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, output: Path, state: dict, limit: int) -> Path | None:
    """accelerate's save_state (weights, optimizer, scheduler, RNG) + our loop state, atomically."""
    root = output / "checkpoints"
    final = root / f"step-{state['step']}"
    tmp = root / f".step-{state['step']}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        publish_modes(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# The loop


def make_accelerator(cfg: TrainConfig, output: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise PkdError("--mixed-precision: fp16 needs a GPU; use bf16 (or no) on the CPU")
    # AcceleratorState is a process-wide singleton that refuses a second mixed-precision
    # setting; each run in one Python process (compare, sweep, API calls) brings its own.
    # The process group (PartialState) is kept, so this is safe under torchrun too.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        # Without a GPU, say so: accelerate only sets up multi-process CPU (gloo) training
        # under torchrun/accelerate launch when cpu=True.
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # The loop steps the scheduler once per optimizer step itself: accelerate's wrapper
        # would step it once per process (N times per step under N processes).
        step_scheduler_with_optimizer=False,
        log_with="tensorboard",
        project_dir=str(output),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def train(
    model,
    tokenizer,
    train_set,
    eval_sets: dict,
    spec: TaskSpec,
    cfg: TrainConfig,
    objective: Objective,
    output: Path,
    accelerator,
    collate,
    resume_from: Path | None = None,
    on_evaluate: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train `model` on `train_set`, evaluate on `eval_sets` each epoch, keep the best.

    Writes into `output`: model/ (best, save_pretrained), log.jsonl, tensorboard/,
    checkpoints/step-N/. Returns the best and final metrics, history and timings.
    `on_evaluate(step, epoch, metrics)`, if given, runs after each evaluation on every
    process; an exception from it (e.g. a sweep's `optuna.TrialPruned`) stops the run.
    """
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    set_seed(cfg.seed)
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
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_loader) / (world * cfg.gradient_accumulation_steps))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    if accelerator.is_main_process:
        accelerator.init_trackers("tensorboard")
    log = RunLog(output, accelerator)
    regression = spec.problem_type == REGRESSION
    select_split = next(iter(eval_sets))

    # Loop state; restored from a checkpoint on resume.
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best": None, "history": []}
    if resume_from is not None:
        try:  # optimizer/RNG pickles go through torch.load(weights_only=True): no code runs
            accelerator.load_state(str(resume_from))
            state = json.loads((resume_from / "trainer_state.json").read_text())
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PkdError(f"{resume_from}: cannot load the checkpoint ({first})") from None
        logger.info("resumed from %s at step %d", resume_from, state["step"])
    logger.info(
        "training: %d examples, %d steps, effective batch %d (%d x %d accumulation x %d processes)",
        len(train_set),
        total_steps,
        cfg.batch_size,
        micro,
        cfg.gradient_accumulation_steps,
        world,
    )
    bar = progress(
        total_steps,
        "train",
        "step",
        quiet=cfg.quiet or not accelerator.is_local_main_process,
        initial=state["step"],
    )
    sums, count, t_log = defaultdict(float), 0, time.perf_counter()
    t_start, examples_seen = time.perf_counter(), 0
    model.train()
    try:
        while state["step"] < total_steps:
            train_loader.set_epoch(state["epoch"])
            loader = train_loader
            if state["batches_in_epoch"]:
                loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
            for batch in loader:
                with accelerator.accumulate(model):
                    terms = loss_terms(model, batch, objective, regression)
                    loss = total_loss(terms, objective.alpha, objective.beta)
                    # step numbering as in log.jsonl: the update this batch belongs to
                    values = checked_terms(accelerator, terms, loss, state["step"] + 1, output)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]  # the lr this step uses, logged with it
                    optimizer.step()
                    # once per real update, the same on every process (not after an fp16 overflow)
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad()
                state["batches_in_epoch"] += 1
                examples_seen += len(batch["labels"]) * world
                for k, v in values.items():
                    sums[k] += v
                count += 1
                if not accelerator.sync_gradients:
                    continue
                state["step"] += 1
                bar.update(1)
                if state["step"] % cfg.logging_steps == 0 or state["step"] == total_steps:
                    now = time.perf_counter()
                    record = {k: v / count for k, v in sums.items()}
                    record.update(
                        step=state["step"],
                        epoch=state["epoch"] + state["batches_in_epoch"] / len(train_loader),
                        lr=lr,
                        examples_per_s=examples_seen / max(now - t_log, 1e-9),
                    )
                    log.write(record, state["step"])
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.0f}"
                    )
                    sums, count, t_log, examples_seen = defaultdict(float), 0, now, 0
                if cfg.save_steps and state["step"] % cfg.save_steps == 0:
                    save_checkpoint(accelerator, output, state, cfg.save_total_limit)
                if state["step"] >= total_steps:
                    break
            epoch_done = state["step"] < total_steps or state["batches_in_epoch"] >= len(
                train_loader
            )
            if epoch_done:
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
            _evaluate_and_keep_best(
                model, tokenizer, eval_loaders, spec, accelerator, output, state, select_split, log
            )
            if on_evaluate is not None:
                on_evaluate(state["step"], state["epoch"], state["history"][-1]["metrics"])
            save_checkpoint(accelerator, output, state, cfg.save_total_limit)
    finally:  # also when a step or on_evaluate raises: close TensorBoard writers, the bar
        bar.close()
        accelerator.end_training()
    if not cfg.keep_checkpoints and accelerator.is_main_process:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # the best model is in model/
    train_seconds = time.perf_counter() - t_start
    return {
        "best": state["best"],
        "final": state["history"][-1] if state["history"] else None,
        "history": state["history"],
        "steps": state["step"],
        "train_seconds": round(train_seconds, 2),
    }


def _evaluate_and_keep_best(
    model, tokenizer, eval_loaders, spec, accelerator, output, state, select_split, log
):
    metrics = {
        name: score(model, loader, spec, accelerator) for name, loader in eval_loaders.items()
    }
    main = metrics[select_split][spec.main_metric]
    record = {"step": state["step"], "epoch": state["epoch"], "metrics": metrics}
    state["history"].append(record)
    flat = {f"{split}/{k}": v for split, m in metrics.items() for k, v in m.items()}
    log.write({"step": state["step"], "epoch": state["epoch"], **flat}, state["step"])
    logger.info("step %d: %s", state["step"], json.dumps(metrics))
    if state["best"] is None or main > state["best"]["metrics"][select_split][spec.main_metric]:
        state["best"] = record
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.config.update(
                {DEV_METRIC_KEY: {"split": select_split, "name": spec.main_metric, "value": main}}
            )
            save_model(unwrapped, tokenizer, output / "model")
    accelerator.wait_for_everyone()
