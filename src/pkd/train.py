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
import os
import pickle
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import TensorBoardTracker, get_available_trackers
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import get_linear_schedule_with_warmup

from pkd.config import TRACKERS, TrainConfig
from pkd.data import LengthGroupedSampler
from pkd.errors import PkdError
from pkd.fsio import replace_dir, staged_dir
from pkd.losses import ce_loss, ce_text, kd_loss, kd_text, patient_loss, pt_text, term_weights
from pkd.metrics import compute_metrics
from pkd.models import DEV_METRIC_KEY, POOLED_STATES, layer_states, model_pooling
from pkd.progress import progress
from pkd.race import level_metrics
from pkd.tasks import REGRESSION, TaskSpec
from pkd.transfer import labelled_count

logger = logging.getLogger(__name__)

NON_INPUTS = ("labels", "example_index", "mlm_labels")  # batch keys the model does not take


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
    # Trained with the student, saved in checkpoints, never in model/: a student of another
    # width maps its states to the teacher's through these (`pkd.projection.Projection`).
    aux: torch.nn.Module | None = None

    @classmethod
    def from_config(
        cls,
        d,
        pairs: list[tuple[int, int]],
        teacher: Callable | None = None,
        pooling: str = "cls",
        aux: torch.nn.Module | None = None,
    ):
        """The objective a `DistillConfig` asks for (terms and weights from its method);
        pooling: the student's, resolved (`pkd.models.resolve_pooling`); aux: the patient
        loss's projections for a student of another width."""
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
            aux=aux,
        )

    def weights(self) -> dict[str, float]:
        """Each term's weight in the total (Eq. 5)."""
        return term_weights(self.alpha, self.beta)

    def describe(self, regression: bool) -> str:
        """Eq. (5) as `loss_terms` computes it for this objective (the dry run's plan), e.g.
        `0.5*CE + 0.5*KD(kl, x T^2, T=10) + 100*PT(mean, L2-normalised [CLS])`."""
        text = {
            "ce": ce_text(regression),
            "kd": kd_text(self.temperature, self.kd_form, regression),
            "pt": pt_text(self.pt_form, self.pt_normalize, POOLED_STATES[self.pooling]),
        }
        w = self.weights()
        terms = [t for t in text if t == "ce" or t in self.terms]
        return " + ".join(f"{w[t]:g}*{text[t]}" for t in terms)

    def loss_terms(self, model, batch: dict, regression: bool) -> dict[str, torch.Tensor]:
        """This objective's unweighted terms for one batch (`loss_terms`)."""
        return loss_terms(model, batch, self, regression)


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
            if objective.aux is not None:  # another width: student H -> teacher H per layer
                s_states = objective.aux(s_states)
            terms["pt"] = patient_loss(
                s_states,
                t_states.to(s_states.device),
                objective.pt_normalize,
                objective.pt_form,
                objective.pt_choices,
            )
    return terms


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


def gradient_shares(model, terms: dict[str, torch.Tensor], objective) -> dict:
    """Each weighted term's share of the gradient norm on the student's parameters:
    share_k = |grad(w_k L_k)| / sum_j |grad(w_j L_j)| (the shares sum to 1), with the
    objective's weights (Eq. 5 for distillation). It tells whether a term (beta's patient
    loss) moves the student at all. Costs one extra backward per term, on the micro-batches
    of logged steps only.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weights = objective.weights()
    norms = {}
    for name, value in terms.items():
        if weights[name] == 0 or not value.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(
            weights[name] * value, params, retain_graph=True, allow_unused=True
        )
        norms[name] = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
    total = sum(norms.values())
    return {f"share_{k}": (v / total if total > 0 else 0.0) for k, v in norms.items()}


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


@dataclass
class Evaluation:
    """How each epoch scores the student and which model it keeps: `score(model, loader,
    accelerator)` gives a split's metrics, `metric` (of the first eval split) selects the
    best model. A task's metrics (`of_task`), or `pkd pretrain`'s held-out distillation loss
    (lower is better)."""

    score: Callable[..., dict[str, float]]
    metric: str
    higher_is_better: bool = True

    @classmethod
    def of_task(cls, spec: TaskSpec) -> Evaluation:
        return cls(lambda model, loader, acc: score(model, loader, spec, acc), spec.main_metric)

    def better(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best


def batch_examples(batch: dict) -> int:
    """Examples in a batch (multiple choice: questions, not choices)."""
    return len(batch["input_ids"])


# ---------------------------------------------------------------------------------------------
# Run directory: log, best model, checkpoints


class RunLog:
    """log.jsonl (every record) + the scalars to every tracker of --report-to (TensorBoard
    by default), from the main process only."""

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

    def write_step(self, meter, stats, state, lr: float, batches_per_epoch: int) -> dict:
        """Write the record of optimizer step `state.step` (the meter's means since the last
        one, the lr it used) and return it; `stats` keeps its shares and CE."""
        epoch = state.epoch + state.batches_in_epoch / batches_per_epoch
        record = meter.record(step=state.step, epoch=epoch, lr=lr)
        self.write(record, state.step)
        stats.add_record(record, state.epoch)
        return record


class Meter:
    """Running means of the loss terms since the last log record, and examples/s over them."""

    def __init__(self) -> None:
        self.restart(time.perf_counter())

    def restart(self, now: float) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.examples, self.since = 0, now

    def add(self, values: dict[str, float], examples: int) -> None:
        """One micro-batch's loss terms and total (and gradient shares, on logged steps), and
        the examples it held (all processes)."""
        for k, v in values.items():
            self.sums[k] += v
            self.counts[k] += 1
        self.examples += examples

    def record(self, **extra) -> dict:
        """The means so far, then `extra`, then examples_per_s; starts a new span."""
        now = time.perf_counter()
        record = {k: v / self.counts[k] for k, v in self.sums.items()}
        record.update(extra, examples_per_s=self.examples / max(now - self.since, 1e-9))
        self.restart(now)
        return record


@dataclass
class RunStats:
    """What a run saw beyond its loss curve: examples with and without a gold label (a
    transfer set's), each term's gradient share (over logged steps, and over the first
    epoch), and the last logged CE of the first epoch (`distillation.warn_collapse`). Part of
    the `LoopState`, so a resumed run reports what the whole run saw."""

    seen: dict[str, int] = field(default_factory=lambda: {"labelled": 0, "transfer": 0})
    shares: dict[str, list[float]] = field(default_factory=dict)
    first_shares: dict[str, list[float]] = field(default_factory=dict)
    first_ce: float | None = None
    warned: bool = False

    def add_batch(self, labels: torch.Tensor, processes: int) -> None:
        labelled = labelled_count(labels)
        self.seen["labelled"] += labelled * processes
        self.seen["transfer"] += (len(labels) - labelled) * processes

    def add_record(self, record: dict, epoch: int) -> None:
        """A log.jsonl record of `epoch` (0-based: the one in progress)."""
        for key, value in record.items():
            if key.startswith("share_"):
                self.shares.setdefault(key[6:], []).append(value)
                if epoch == 0:
                    self.first_shares.setdefault(key[6:], []).append(value)
        if epoch == 0 and "ce" in record:
            self.first_ce = record["ce"]

    def check_patient_share(self, objective: Objective) -> None:
        """Warn once when the patient term's gradient share stayed under 1% all first epoch."""
        pt = self.first_shares.get("pt")
        if self.warned or not pt or max(pt) >= PT_SHARE_FLOOR:
            return
        self.warned = True
        logger.warning(
            "the patient loss's share of the gradient stayed under %.0f%% through the first "
            "epoch (at most %.2f%% at beta=%g): it barely moves the student; try a larger "
            "--beta (e.g. %g) and watch share_pt in log.jsonl",
            100 * PT_SHARE_FLOOR,
            100 * max(pt),
            objective.beta,
            objective.beta * 10,
        )

    def summary(self) -> dict:
        def mean(d: dict[str, list[float]]) -> dict[str, float]:
            return {k: round(sum(v) / len(v), 6) for k, v in d.items() if v}

        first = {"ce": self.first_ce, "gradient_shares": mean(self.first_shares)}
        return {
            "examples_seen": self.seen,
            "gradient_shares": mean(self.shares),
            "first_epoch": first if self.first_ce is not None else None,
        }


PT_SHARE_FLOOR = 0.01  # a patient term under this share of the gradient all epoch 1: warned


def save_model(model, tokenizer, path: Path) -> None:
    """save_pretrained into a temporary dir, then swap it in (readers never see half a model;
    safetensors' 0600 files get the umask's modes on the way, see `pkd.fsio`)."""
    with staged_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


STATE_FILE = "trainer_state.json"  # the loop's part of a checkpoint


@dataclass
class LoopState:
    """Where the loop is: saved in each checkpoint (trainer_state.json), restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # whole passes over the training set done
    batches_in_epoch: int = 0  # micro-batches of the current pass done (skipped on resume)
    best: dict | None = None  # the history record with the best main metric
    history: list[dict] = field(default_factory=list)  # {step, epoch, metrics} per evaluation
    stats: RunStats = field(default_factory=RunStats)  # metrics.json's counts and shares

    @classmethod
    def load(cls, checkpoint: Path) -> LoopState:
        """Read a checkpoint's trainer_state.json (one without `stats`, from before pkd kept
        them, restarts the counts).

        Raises:
            ValueError: it is not JSON or lacks a field.
        """
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        missing = [
            f.name
            for f in fields(cls)
            if f.name != "stats" and (not isinstance(saved, dict) or f.name not in saved)
        ]
        if missing:
            raise ValueError(f"{STATE_FILE} lacks {', '.join(missing)}")
        stats = saved.get("stats", {})
        if not isinstance(stats, dict) or set(stats) - {f.name for f in fields(RunStats)}:
            raise ValueError(f"{STATE_FILE}: its stats are not pkd's RunStats")
        loop = {f.name: saved[f.name] for f in fields(cls) if f.name != "stats"}
        return cls(**loop, stats=RunStats(**stats))

    def save(self, checkpoint: Path) -> None:
        (checkpoint / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Half-written ones are hidden `.tmp` dirs."""
    root = output / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    accelerator, output: Path, state: LoopState, limit: int, hooks: Sequence[LoopHooks] = ()
) -> Path:
    """accelerate's save_state (weights, optimizer, scheduler, RNG) + the loop state, atomically;
    keeps the newest `limit` checkpoints, then runs the hooks' `on_checkpoint`."""
    root = output / "checkpoints"
    final = root / f"step-{state.step}"
    tmp = root / f".step-{state.step}.tmp"  # one name every process writes its part into
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(tmp)
        replace_dir(tmp, final)
        for old in checkpoints(output)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    for h in hooks:
        h.on_checkpoint(state, final)
    return final


def resume(accelerator, checkpoint: Path) -> LoopState:
    """Restore weights, optimizer, schedule and RNG (accelerate), and the loop state.

    Raises:
        PkdError: the checkpoint cannot be read; optimizer/RNG pickles go through
            torch.load(weights_only=True), so no code in them runs.
    """
    try:
        accelerator.load_state(str(checkpoint))
        state = LoopState.load(checkpoint)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PkdError(f"{checkpoint}: cannot load the checkpoint ({first})") from None
    logger.info("resumed from %s at step %d", checkpoint, state.step)
    return state


# ---------------------------------------------------------------------------------------------
# Hooks


class LoopHooks:
    """Places where a caller can watch or stop a run; each does nothing here.

    Subclass and override what you need, then install instances with `use_hooks`: they reach
    every run inside the block, also those of a command (`pkd.cli.main`, a sweep's trials).
    Hooks run on every process; an exception from one stops the run like one from the loop.
    """

    def on_loss(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Each micro-batch's unweighted loss terms for optimizer step `step` (1-based, as in
        log.jsonl), before they are checked; may replace them (a test's NaN)."""

    def on_evaluate(self, state: LoopState, metrics: dict[str, dict[str, float]]) -> None:
        """After each epoch's evaluation and keeping the best model, before its checkpoint."""

    def on_checkpoint(self, state: LoopState, path: Path) -> None:
        """After the checkpoint of `state` is complete at `path`."""


_INSTALLED: list[LoopHooks] = []


@contextmanager
def use_hooks(*hooks: LoopHooks) -> Iterator[None]:
    """Every `train()` in this process also runs `hooks` inside this block."""
    _INSTALLED.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _INSTALLED.remove(h)


# ---------------------------------------------------------------------------------------------
# The loop


TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: TensorBoard's event files
PROJECT = "pkd"  # the project (MLflow experiment, W&B project) of trackers that have one
PIP_NAMES = {"comet_ml": "comet-ml"}  # --report-to name -> its package, where they differ


def trackers(names: list[str]) -> list[str]:
    """The trackers `--report-to` names (`pkd.config.check_trackers`), `all` resolved to
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
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
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

    The epoch reaches pkd's own datasets (`pkd.transfer.TransferMix`' partners,
    `pkd.text.MaskedText`'s masks) here, not through the loader: under several processes
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
    (`pkd.general.GeneralObjective`).

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
    hooks = list(_INSTALLED)  # those of use_hooks blocks around this run
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
