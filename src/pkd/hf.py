"""PKD in a `transformers.Trainer` script: `PatientDistillationTrainer`.

A Trainer whose `compute_loss` is pkd's Eq. (5), (1 - alpha) CE + alpha KD + beta PT, from the
same functions `pkd distill` trains with (`pkd.train.loss_terms`, `pkd.losses.total_loss`),
with pkd's layer maps (`pkd.mapping`) and pooled layer states (`pkd.models.layer_states`,
[CLS] or mean as the models pool). Everything else is the Trainer's: `TrainingArguments`,
DDP, bf16/fp16, `report_to`, `push_to_hub`, callbacks, checkpoints.

    trainer = PatientDistillationTrainer(
        teacher="runs/sst2-teacher", student_layers=3, strategy="skip",
        alpha=0.5, beta=100, temperature=10,
        args=TrainingArguments("runs/sst2-pkd"), train_dataset=add_example_index(train),
        eval_dataset=dev, processing_class=tokenizer,
    )

- The student is built as `pkd distill` builds it (`pkd.models.build_student`: the first M
  layers of the pre-trained checkpoint the teacher records, or `student_init`), or passed as
  `model`.
- Teacher signals come from pkd's teacher cache (built once over the training set, reused
  by any later run with the same teacher and tokens) when the training set carries an
  `example_index` column 0..n-1 (`add_example_index`), from the teacher run on each batch
  otherwise (`teacher_mode="online"` always runs it).
- `example_index` survives the Trainer's `remove_unused_columns` and the collator; the
  model never receives it.
- Evaluation reports the student's task loss (CE, MSE for regression) as `eval_loss`: the
  teacher's signals are cached for the training rows only.
- Each training log (`logging_steps`) also holds the mean unweighted terms `ce`, `kd`, `pt`
  of this process's micro-batches since the last log.
- `num_items_in_batch` is not used: every term is a mean over its batch, as in pkd's loop,
  and the Trainer divides it by the gradient accumulation steps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, set_seed

from pkd import cache as cache_mod
from pkd import mapping
from pkd.config import DistillConfig
from pkd.data import collator
from pkd.distillation import student_pooling
from pkd.errors import PkdError
from pkd.losses import ce_loss, total_loss
from pkd.models import (
    BASE_MODEL_KEY,
    build_student,
    is_multiple_choice,
    load_finetuned,
    model_labels,
    model_pooling,
    num_layers,
)
from pkd.splits import EncodedSplit
from pkd.tasks import CLASSIFICATION, MULTIPLE_CHOICE, REGRESSION, generic_labels
from pkd.train import Objective, cached_teacher, loss_terms, model_inputs, online_teacher

logger = logging.getLogger(__name__)

EXAMPLE_INDEX = "example_index"  # a training row's index into the teacher cache
TEACHER_MODES = ("auto", "cached", "online")  # auto: cached when the rows carry EXAMPLE_INDEX


def add_example_index(dataset):
    """`dataset` (a `datasets.Dataset`) with an `example_index` column 0..n-1: the Trainer
    then reads its rows' teacher signals from pkd's teacher cache instead of running the
    teacher on every batch."""
    return dataset.add_column(EXAMPLE_INDEX, list(range(len(dataset))))


class TokenisedRows(torch.utils.data.Dataset):
    """A tokenised `datasets.Dataset` as pkd's teacher cache reads a training set: the token
    lists of each model input (`features`, which the cache's fingerprint covers), items of
    them for the teacher, and `lengths` (the cache runs longest first)."""

    def __init__(self, dataset, input_names: list[str]):
        self.features = {k: list(dataset[k]) for k in input_names if k in dataset.column_names}
        if "input_ids" not in self.features:
            raise PkdError("train_dataset: no input_ids column; tokenise it first (dataset.map)")

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.features.items()}

    def lengths(self) -> list[int]:
        """Tokens per row; multiple choice: of its longest choice."""
        ids = self.features["input_ids"]
        return [max(map(len, x)) if x and isinstance(x[0], list) else len(x) for x in ids]


def indexed_rows(dataset, tokenizer) -> EncodedSplit | TokenisedRows | None:
    """The training set as the teacher cache reads it, when its rows carry `example_index`
    0..n-1 in order; None when they carry none.

    Raises:
        PkdError: the indices are not 0..n-1 in row order (the cache's rows would not match).
    """
    if isinstance(dataset, EncodedSplit):  # pkd's own tokenised split
        return dataset
    if EXAMPLE_INDEX not in getattr(dataset, "column_names", ()):
        return None
    if list(dataset[EXAMPLE_INDEX]) != list(range(len(dataset))):
        raise PkdError(
            "train_dataset: its example_index column must be 0..n-1 in row order "
            "(add it last, with pkd.hf.add_example_index)"
        )
    return TokenisedRows(dataset, list(tokenizer.model_input_names))


def teacher_problem(teacher) -> str:
    """What the teacher's head predicts: classes, one score, or one of several choices."""
    if is_multiple_choice(teacher.config):
        return MULTIPLE_CHOICE
    return CLASSIFICATION if model_labels(teacher) else REGRESSION


def check_dataset_labels(teacher_labels: tuple[str, ...], dataset, name: str) -> None:
    """A training set's `ClassLabel` names against the teacher's: label id i must be the
    teacher's output i. Accepted: the same names in the same order, or the same number of
    classes where one side names them by id (`0`, `1`, or transformers' LABEL_0..), as a
    TSV-trained teacher does against the Hub's GLUE names (the mapping is logged).

    Raises:
        PkdError: other names, or the same names in another order.
    """
    features = getattr(dataset, "features", None) or {}  # none: a torch dataset, a stream
    column = next((c for c in ("labels", "label") if c in features), None)
    names = getattr(features[column], "names", None) if column else None
    if not names or not teacher_labels or tuple(names) == teacher_labels:
        return
    n = len(names)
    by_id = (generic_labels(n, ""), generic_labels(n))
    if n == len(teacher_labels) and (tuple(names) in by_id or teacher_labels in by_id):
        pairs = ", ".join(
            f"{i}: {a} = {b}" for i, (a, b) in enumerate(zip(names, teacher_labels, strict=True))
        )
        logger.info("train_dataset's labels are %s's by class id (%s)", name, pairs)
        return
    raise PkdError(
        f"train_dataset: its labels {list(names)} (column {column!r}) are not the teacher's "
        f"{list(teacher_labels)} in order; map them with dataset.align_labels_with_mapping"
        "(teacher.config.label2id, ...)"
    )


class PatientDistillationTrainer(Trainer):
    """A `transformers.Trainer` that trains a student with pkd's CE + KD + PT (module
    docstring).

    Args:
        model: the student; default: built from the first `student_layers` layers of
            `student_init` (default: the base model the teacher records), with a new head.
        args: the Trainer's `TrainingArguments`.
        teacher: the fine-tuned teacher: a model, or a model/run directory or Hub name.
        method: ft | kd | pkd (the paper's baselines are modes, as in `pkd distill`).
        student_layers: M, when the student is built here (default 3).
        strategy, layer_map: the PKD layer map: skip | last, or explicit teacher layers.
        alpha, beta, temperature: the weights of Eq. (5) and T (defaults as `pkd distill`).
        kd_loss, pt_loss, pt_normalize, pt_choices, pooling: the loss forms and the student's
            pooling, as `pkd distill`'s options of the same names.
        student_init: the checkpoint the built student starts from.
        teacher_mode: auto (the cache when the training rows carry `example_index`) | cached
            | online.
        cache_dir: the teacher cache root (default: $PKD_CACHE_DIR or ~/.cache/pkd/teacher).
        trust_remote_code: for loading the teacher and the student init.
        **kwargs: the Trainer's own (train_dataset, eval_dataset, processing_class,
            compute_metrics, callbacks, ...).

    Raises:
        PkdError: options `pkd distill` would refuse (an impossible map, a weight the method
            ignores, a student that pools unlike the teacher for PKD), no student init, a
            training set whose class labels are not the teacher's (`check_dataset_labels`),
            or a cache requested without example indices or a tokenizer.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns per-batch means (transformers >= 5)

    def __init__(
        self,
        model=None,
        args=None,
        *,
        teacher,
        method: str = "pkd",
        student_layers: int | None = None,
        strategy: str = "skip",
        layer_map: list[int] | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        temperature: float = 10.0,
        kd_loss: str = "kl",
        pt_loss: str = "mean",
        pt_normalize: bool = True,
        pt_choices: str = "concat",
        pooling: str = "auto",
        student_init: str | None = None,
        teacher_mode: str = "auto",
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        **kwargs,
    ):
        if teacher_mode not in TEACHER_MODES:
            raise PkdError(
                f"teacher_mode: {teacher_mode!r} is not one of {', '.join(TEACHER_MODES)}"
            )
        name = str(teacher) if isinstance(teacher, (str, Path)) else "the teacher"
        if isinstance(teacher, (str, Path)):
            teacher = load_finetuned(str(teacher), "teacher", trust_remote_code)
        layers = num_layers(model.config) if model is not None else student_layers or 3
        d = DistillConfig(
            method=method,
            student_layers=layers,
            strategy=strategy,
            layer_map=layer_map,
            alpha=alpha,
            beta=beta,
            temperature=temperature,
            kd_loss=kd_loss,
            pt_loss=pt_loss,
            pt_normalize=pt_normalize,
            pt_choices=pt_choices,
            pooling=pooling if model is None else model_pooling(model.config),
        )
        pooling = student_pooling(d.pooling, teacher, name, d.method)
        self.problem_type = teacher_problem(teacher)
        check_dataset_labels(model_labels(teacher), kwargs.get("train_dataset"), name)
        if model is None:
            set_seed(args.seed if args is not None else 42)  # the new head, as pkd distill
            init = student_init or getattr(teacher.config, BASE_MODEL_KEY, None)
            if not init:
                raise PkdError(
                    f"student_init: {name} does not record its pre-trained base model; pass "
                    "student_init=NAME_OR_DIR, or the student as model="
                )
            model = build_student(
                init, layers, teacher, self.problem_type, trust_remote_code, pooling
            )
        n = num_layers(teacher.config)
        pairs = mapping.layer_map(d.strategy, n, layers, d.layer_map) if "pt" in d.terms else []
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # it never gets num_items_in_batch (above)
        self.teacher = teacher.to(self.args.device)
        self.objective = Objective.from_config(d, pairs, online_teacher(teacher), pooling)
        self.cached = self.build_cache(teacher_mode, cache_dir) if len(d.terms) > 1 else None
        self.term_sums: dict[str, list[float]] = defaultdict(list)

    def build_cache(self, teacher_mode: str, cache_dir: str | None) -> Objective | None:
        """The objective reading pkd's teacher cache over the training set (built once, by
        the main process first), or None when the teacher runs online."""
        rows = None
        if teacher_mode != "online" and self.train_dataset is not None:
            if self.processing_class is None:
                if teacher_mode == "cached":
                    raise PkdError("teacher_mode: 'cached' needs processing_class (the tokenizer)")
            else:
                rows = indexed_rows(self.train_dataset, self.processing_class)
        if rows is None:
            if teacher_mode == "cached":
                raise PkdError(
                    "teacher_mode: 'cached' needs a train_dataset whose rows carry "
                    "example_index 0..n-1 (pkd.hf.add_example_index)"
                )
            return None
        extra = {"task": "trainer", "labels": list(model_labels(self.teacher)), "source": "pkd.hf"}
        with self.accelerator.main_process_first():
            cache = cache_mod.build_or_load(
                self.teacher,
                rows,
                collator(self.processing_class),
                "trainer",
                extra,
                cache_dir,
                self.args.per_device_eval_batch_size,
                self.args.device,
                not self.args.disable_tqdm,
            )
        self.teacher_cache = cache
        return dataclasses.replace(self.objective, teacher=cached_teacher(cache))

    def _set_signature_columns_if_needed(self) -> None:
        # transformers keeps only the columns the model's forward takes (remove_unused_columns);
        # the teacher cache needs each row's example_index too. compute_loss drops it again.
        super()._set_signature_columns_if_needed()
        if EXAMPLE_INDEX not in self._signature_columns:
            self._signature_columns.append(EXAMPLE_INDEX)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: Eq. (5) over `pkd.train.loss_terms`, weighted by `pkd.losses.total_loss`,
        with teacher signals from the cache when the batch carries `example_index`, else
        online. Evaluation: the student's task loss (CE; MSE for regression)."""
        if not model.training:
            out = model(**model_inputs(inputs))
            loss = ce_loss(out.logits, inputs["labels"], self.problem_type == REGRESSION)
            return (loss, out) if return_outputs else loss
        objective = self.objective
        if self.cached is not None and EXAMPLE_INDEX in inputs:
            objective = self.cached
        terms = loss_terms(model, inputs, objective, self.problem_type == REGRESSION)
        for key, value in terms.items():
            self.term_sums[key].append(float(value.detach()))
        loss = total_loss(terms, objective.alpha, objective.beta)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The Trainer's, on the model's inputs and labels (without `example_index`)."""
        inputs = {k: v for k, v in inputs.items() if k != EXAMPLE_INDEX}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's log; a training record also gets the mean unweighted terms (ce, kd,
        pt) of this process's micro-batches since the last one."""
        if "loss" in logs and self.term_sums:
            logs.update({k: sum(v) / len(v) for k, v in self.term_sums.items()})
            self.term_sums.clear()
        super().log(logs, *args, **kwargs)
