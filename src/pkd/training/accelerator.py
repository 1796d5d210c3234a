"""The run's Accelerator, what it prepares for a run (`prepare`: loaders, AdamW and its
schedule), and its trackers (--report-to: TensorBoard by default, MLflow's store in the run
directory)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import TensorBoardTracker, get_available_trackers
from accelerate.utils import DataLoaderConfiguration
from transformers import get_scheduler

from pkd.config.choices import TRACKERS
from pkd.config.sections import TrainConfig
from pkd.data.loading import LengthGroupedSampler, eval_loader
from pkd.errors import PkdError
from pkd.objectives.objective import (
    Objective,
)

logger = logging.getLogger(__name__)


TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: TensorBoard's event files


PROJECT = "pkd"  # the project (MLflow experiment, W&B project) of trackers that have one


PIP_NAMES = {"comet_ml": "comet-ml"}  # --report-to name -> its package, where they differ


def trackers(names: list[str]) -> list[str]:
    """The trackers `--report-to` names (`pkd.config.choices.check_trackers`), `all` resolved to
    those installed; none for `none`.

    Raises:
        PkdError: a named tracker whose package is not installed.
    """
    available = [str(t) for t in get_available_trackers()]
    if names == ["all"]:
        return [t for t in TRACKERS if t in available]
    chosen = [n for n in names if n != "none"]
    for name in chosen:
        if name not in available:
            raise PkdError(
                f"--report-to: {name} is not installed (pip install {PIP_NAMES.get(name, name)}); "
                f"installed: {', '.join(t for t in TRACKERS if t in available) or 'none'}"
            )
    return chosen


def make_accelerator(cfg: TrainConfig, output: Path | None = None):
    """The run's Accelerator; with `output`, logging to the trackers of `--report-to`
    (TensorBoard's files under output/tensorboard)."""

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise PkdError("--mixed-precision: fp16 needs a GPU; use bf16 (or no) on the CPU")
    names = trackers(cfg.report_to)
    log_with = None
    if output is not None and names:
        log_with = [
            TensorBoardTracker(TENSORBOARD_DIR, str(output)) if n == "tensorboard" else n
            for n in names
        ]
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
        log_with=log_with,
        project_dir=str(output) if output is not None else None,
        # on a GPU, batches from pinned memory (`prepare`) are copied without blocking
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, non_blocking=torch.cuda.is_available()
        ),
    )


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
    heads: torch.nn.Module | None = None  # the objective's own trained modules, prepared too


def optimizer_and_schedule(
    model, cfg: TrainConfig, total_steps: int, heads=None, fused: bool = True
):
    """AdamW (no weight decay on biases and LayerNorm weights) over the student's parameters
    and those of `heads` (projections), and its schedule: a linear warm-up over
    `cfg.warmup_ratio` of the steps, then `cfg.lr_schedule` (transformers' schedulers).

    `pkd distill`'s default is constant after the warm-up: the paper's recipe (BERT's linear
    decay to 0, the default of `finetune` and `pretrain`) gives a short run half the summed lr
    of a constant one, and a [CLS]-pooled student initialised from a sentence-transformers
    checkpoint (whose [CLS] state is the same for every sentence) needs about 6e-3 of it to
    leave the majority-class plateau (benchmarks/results/textbrewer_race/README.md).

    `fused`: torch's fused kernel, one pass over each parameter instead of about ten (on a GPU,
    a few launches instead of several per tensor group). On the CPU torch's default is the
    per-tensor loop, and a student's step updates every row of its word embeddings (two thirds
    of a 3-layer BERT's parameters) whatever the batch's length: fused, the update of a
    17M-parameter student costs a quarter of the time (the same sums, to float rounding).
    Else torch's default."""

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = [*model.named_parameters(), *(heads.named_parameters() if heads is not None else ())]
    groups = [
        {
            "params": [p for n, p in named if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True if fused else None)
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    warmup = int(cfg.warmup_ratio * total_steps)
    return optimizer, get_scheduler(name, optimizer, warmup, total_steps)


def on_gpu(accelerator) -> bool:
    """Whether the run's tensors live on a CUDA device."""
    return accelerator.device.type == "cuda"


def prepare(
    accelerator,
    model,
    train_set,
    eval_sets: dict,
    cfg: TrainConfig,
    collate,
    heads=None,
    fused: bool | None = None,
) -> Prepared:
    """Loaders, optimizer and schedule for `cfg`, passed through `accelerator.prepare`; `heads`
    (an objective's projections) is prepared beside the model and trained with it. On a GPU
    the loaders pin their batches (copied without blocking, `make_accelerator`). AdamW is
    fused (CPU and GPU), except under fp16: the fused step runs even on a gradient overflow (skipping the
    update inside the kernel), so accelerate could not tell the loop to hold the schedule.
    `fused` overrides that choice (a benchmark's comparison).

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
    gpu = on_gpu(accelerator)
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
        pin_memory=gpu,
    )
    eval_loaders = {
        name: eval_loader(ds, cfg.eval_batch_size, collate, pin_memory=gpu)
        for name, ds in eval_sets.items()
    }
    steps_per_epoch = math.ceil(len(train_loader) / (world * cfg.gradient_accumulation_steps))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    fused = cfg.mixed_precision != "fp16" if fused is None else fused
    optimizer, scheduler = optimizer_and_schedule(model, cfg, total_steps, heads, fused)
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    if heads is not None:  # its own model_1 in checkpoints, after the student's model
        heads = accelerator.prepare(heads)
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
        heads,
    )


_MLFLOW_URI: list[str] = []  # the tracking URI pkd last set (a later run replaces it)


def mlflow_into_run(output: Path) -> None:
    """MLflow's store in the run (RUN/mlflow.db) rather than MLflow 3's default, mlflow.db
    in the current directory; a tracking URI the user set (MLFLOW_TRACKING_URI or
    `mlflow.set_tracking_uri`) is kept."""
    import mlflow

    ours = mlflow.is_tracking_uri_set() and mlflow.get_tracking_uri() in _MLFLOW_URI
    if mlflow.is_tracking_uri_set() and not ours:
        return
    # the environment's, once set, wins over the one pkd set for an earlier run
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    _MLFLOW_URI[:] = [uri]


def start_trackers(
    accelerator, output: Path, cfg: TrainConfig, objective: Objective, run_params: dict | None
) -> None:
    """Start the run's trackers on the main process: the project `pkd`, the run named after
    its directory; trackers other than TensorBoard also get the settings as parameters, with
    the command's own `run_params` (e.g. distill's method, teacher, task, student layers)."""
    if not accelerator.is_main_process or not accelerator.log_with:
        return
    run = {"run_name": output.name}
    if any(str(getattr(t, "value", t)) == "mlflow" for t in accelerator.log_with):
        mlflow_into_run(output)
    accelerator.init_trackers(PROJECT, init_kwargs={"mlflow": run, "wandb": {"name": output.name}})
    params = {f"train.{f.name}": getattr(cfg, f.name) for f in fields(cfg)}
    params.update({f"weight.{term}": w for term, w in objective.weights().items()})
    params.update(
        terms=",".join(objective.terms),
        temperature=objective.temperature,
        layer_map=",".join(str(t) for t, _ in objective.pairs),
        pooling=getattr(objective, "pooling", None),  # pkd pretrain's objective has tokens
    )
    params.update(run_params or {})
    plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    for tracker in accelerator.trackers:
        if tracker.name != "tensorboard":  # its hparams would add a second event directory
            tracker.store_init_configuration(plain)
