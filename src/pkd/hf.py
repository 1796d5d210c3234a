"""PKD in a `transformers.Trainer` script: `PatientDistillationTrainer`.

A Trainer whose `compute_loss` is pkd's Eq. (5), (1 - alpha) CE + alpha KD + beta PT, from the
same functions `pkd distill` trains with (`pkd.objectives.objective.loss_terms`, `pkd.objectives.losses.total_loss`),
with pkd's layer maps (`pkd.objectives.mapping`) and pooled layer states (`pkd.models.encoders.layer_states`,
[CLS] or mean as the models pool). Everything else is the Trainer's: `TrainingArguments`,
DDP, bf16/fp16, `report_to`, `push_to_hub`, callbacks, checkpoints.

    trainer = PatientDistillationTrainer(
        teacher="runs/sst2-teacher",
        distill=DistillConfig(student_layers=3, strategy="skip", alpha=0.5, beta=100),
        args=TrainingArguments("runs/sst2-pkd"), train_dataset=add_example_index(train),
        eval_dataset=dev, processing_class=tokenizer,
    )

- The distillation settings are `pkd distill`'s: a `pkd.config.sections.DistillConfig`
  (method, student_layers, strategy or layer_map, alpha, beta, temperature, the loss forms,
  pooling, student_init, cache_dir), checked as `pkd distill` checks them.
- The student is built as `pkd distill` builds it (`pkd.models.students.build_student`: the first M
  layers of the pre-trained checkpoint the teacher records, or `student_init`), passed as
  `model`, or made by `model_init` (per `train` and `hyperparameter_search` trial). A student
  of another width than its teacher (a `pkd pretrain` init) compares its states through
  learned projections, as in `pkd distill`: trained in the Trainer's optimizer, saved in its
  checkpoints (for resume), never by `save_model`.
- The distillation settings (teacher, method, alpha, beta, T, layer map) are written into
  the student's config as `pkd_*` keys, which `report_to` trackers log with the run;
  `create_model_card` names them too.
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
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from pkd.config.sections import DistillConfig
from pkd.data.loading import collator
from pkd.data.splits import EncodedSplit
from pkd.errors import PkdError
from pkd.models.card import CARD_FILE, distillation_rows, summary_table
from pkd.models.encoders import (
    load_finetuned,
    model_head,
    model_labels,
    model_pooling,
    num_layers,
)
from pkd.models.students import build_student, patient_projection, student_init, student_pooling
from pkd.objectives import cache as cache_mod
from pkd.objectives import mapping
from pkd.objectives.losses import ce_loss
from pkd.objectives.objective import (
    Objective,
    cached_teacher,
    loss_terms,
    model_inputs,
    online_teacher,
)
from pkd.tasks import CLASSIFICATION, REGRESSION, generic_labels

logger = logging.getLogger(__name__)

EXAMPLE_INDEX = "example_index"  # a training row's index into the teacher cache
PROJECTION_FILE = "pkd_projection.safetensors"  # in each Trainer checkpoint, never in a model
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
    """What the teacher's head predicts: one of several choices, classes, or one score."""
    problem_type = model_head(teacher).problem_type  # multiple choice
    return problem_type or (CLASSIFICATION if model_labels(teacher) else REGRESSION)


def check_dataset_labels(
    teacher_labels: tuple[str, ...], dataset, name: str, option: str = "train_dataset"
) -> None:
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
        logger.info("%s's labels are %s's by class id (%s)", option, name, pairs)
        return
    raise PkdError(
        f"{option}: its labels {list(names)} (column {column!r}) are not the teacher's "
        f"{list(teacher_labels)} in order; map them with dataset.align_labels_with_mapping"
        "(teacher.config.label2id, ...)"
    )


# DistillConfig options the Trainer has no use for: another value than the default is refused.
NOT_FOR_THE_TRAINER = {
    "teacher_mode": "pass the Trainer's own teacher_mode= (auto|cached|online)",
    "transfer_ratio": "the Trainer trains on its train_dataset as it is (no transfer set)",
    "allow_weak_teacher": "the Trainer does not score the teacher",
    "preset": "pass the preset's values themselves (`pkd presets`)",
}


def check_trainer_settings(distill: DistillConfig) -> None:
    """Refuse a `distill` option the Trainer would ignore, naming it."""
    defaults = DistillConfig()
    for name, why in NOT_FOR_THE_TRAINER.items():
        value = getattr(distill, name)
        if value != getattr(defaults, name):
            raise PkdError(f"distill.{name}: {value!r} has no effect in the Trainer; {why}")


class PatientDistillationTrainer(Trainer):
    """A `transformers.Trainer` that trains a student with pkd's CE + KD + PT (module
    docstring).

    Args:
        model: the student; default: built from the first `distill.student_layers` layers of
            `distill.student_init` (default: the base model the teacher records), with a new
            head.
        args: the Trainer's `TrainingArguments`.
        teacher: the fine-tuned teacher: a model, or a model/run directory or Hub name.
        distill: `pkd distill`'s distillation settings (default: its defaults): method (ft |
            kd | pkd), student_layers, strategy or layer_map, alpha, beta, temperature, kd_loss,
            pt_loss, pt_normalize, pt_choices, pooling, student_init and cache_dir (the teacher
            cache root). Its teacher_mode, transfer_ratio, allow_weak_teacher and preset are
            `pkd distill`'s only: another value than the default is refused.
        teacher_mode: auto (the cache when the training rows carry `example_index`) | cached
            | online.
        trust_remote_code: for loading the teacher and the student init.
        model_init: instead of `model`, the Trainer's student factory (0 or 1 argument, the
            trial), called again for each `train` and trial; `hyperparameter_search` without
            one rebuilds pkd's own student per trial.
        **kwargs: the Trainer's own (train_dataset, eval_dataset, processing_class,
            compute_metrics, callbacks, ...).

    Raises:
        PkdError: options `pkd distill` would refuse (an impossible map, a student that pools
            unlike the teacher for PKD) or the Trainer ignores, no student init, a
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
        distill: DistillConfig | None = None,
        teacher_mode: str = "auto",
        trust_remote_code: bool = False,
        model_init=None,
        **kwargs,
    ):
        if teacher_mode not in TEACHER_MODES:
            raise PkdError(
                f"teacher_mode: {teacher_mode!r} is not one of {', '.join(TEACHER_MODES)}"
            )
        distill = distill or DistillConfig()
        check_trainer_settings(distill)
        name = str(teacher) if isinstance(teacher, (str, Path)) else None
        if isinstance(teacher, (str, Path)):
            teacher = load_finetuned(str(teacher), "teacher", trust_remote_code)
        self.teacher = teacher
        self.teacher_name = name or getattr(teacher, "name_or_path", None) or "the teacher"
        self.problem_type = teacher_problem(teacher)
        labels, evals = model_labels(teacher), kwargs.get("eval_dataset")
        check_dataset_labels(labels, kwargs.get("train_dataset"), self.teacher_name)
        for key, data in (evals if isinstance(evals, dict) else {"": evals}).items():
            option = f"eval_dataset[{key!r}]" if key else "eval_dataset"
            check_dataset_labels(labels, data, self.teacher_name, option)
        self.distill = distill
        self.recipe: tuple | None = None  # (init, layers, pooling, trust): pkd builds the student
        self.projection: torch.nn.Module | None = None
        self.resume_from: str | None = None  # the checkpoint train() resumes from
        if model is None and model_init is None:
            d = distill
            pooling = student_pooling(d.pooling, teacher, self.teacher_name, d.method)
            init = student_init(self.teacher_name, teacher.config, d.student_init, "student_init")
            self.recipe = (init, d.student_layers, pooling, trust_remote_code)
            set_seed(args.seed if args is not None else 42)  # the new head, as pkd distill
            model = self.new_student()
        super().__init__(model=model, args=args, model_init=model_init, **kwargs)
        self.model_accepts_loss_kwargs = False  # it never gets num_items_in_batch (above)
        self.teacher.to(self.args.device)
        if self.model_init is None:  # else call_model_init has set the student up
            self.use_student(self.model)
        self.cached_signals = None
        if len(self.settings.terms) > 1:
            self.cached_signals = self.build_cache(teacher_mode, distill.cache_dir)
        self.term_sums: dict[str, list[float]] = defaultdict(list)

    def new_student(self):
        """pkd's student: the first M layers of the init, with a new head for the teacher's
        labels (`pkd.models.students.build_student`); the Trainer seeds before each build."""
        init, layers, pooling, trust = self.recipe
        return build_student(init, layers, self.teacher, self.problem_type, trust, pooling)

    def call_model_init(self, trial=None):
        """The Trainer's `model_init` call (once in `__init__`, again per `train`/trial), then
        the objective for the new student (`use_student`)."""
        model = super().call_model_init(trial)
        self.use_student(model)
        return model

    def use_student(self, model) -> None:
        """Set the objective up for `model`: its layer map and pooling, projections when it
        is narrower or wider than the teacher (trained with it, never in `save_model`), and
        the distillation settings in its config, where `report_to` trackers read them."""
        d = dataclasses.replace(
            self.distill,
            student_layers=num_layers(model.config),
            pooling=model_pooling(model.config),
        )
        pooling = d.pooling
        if self.recipe is None:  # a student from outside: pooled as PKD needs?
            pooling = student_pooling(d.pooling, self.teacher, self.teacher_name, d.method)
        n = num_layers(self.teacher.config)
        pairs = (
            mapping.layer_map(d.strategy, n, d.student_layers, d.layer_map)
            if "pt" in d.terms
            else []
        )
        projection = patient_projection(d, pairs, model.config, self.teacher.config)
        if projection is not None:
            projection.to(self.args.device)
            if self.accelerator.num_processes > 1:  # its gradients all-reduced, as the model's
                projection = self.accelerator.prepare_model(projection)
        self.settings, self.projection = d, projection
        teacher = online_teacher(self.teacher)
        self.distill_objective = Objective.from_config(d, pairs, teacher, pooling, projection)
        model.config.update(self.tracked_settings())

    def tracked_settings(self) -> dict:
        """What the student learns from, as flat `pkd_*` config keys: the Trainer's trackers
        (MLflow, W&B, TensorBoard, ...) log the model's config with the run."""
        d, o = self.settings, self.distill_objective
        return {
            "pkd_teacher": self.teacher_name,
            "pkd_method": d.method,
            "pkd_alpha": d.alpha,
            "pkd_beta": d.beta,
            "pkd_temperature": d.temperature,
            "pkd_layer_map": [list(p) for p in o.pairs],
        }

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer, with the projections' parameters (if any) in it too."""
        optimizer = super().create_optimizer(*args, **kwargs)  # transformers 5.x: (model=None)
        if self.projection is None:
            return optimizer
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [(n, p) for n, p in self.projection.named_parameters() if id(p) not in held]
        decay = set(self.get_decay_parameter_names(self.projection))
        for params, weight_decay in (
            ([p for n, p in named if n in decay], self.args.weight_decay),
            ([p for n, p in named if n not in decay], 0.0),
        ):
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": weight_decay})
        if self.resume_from is not None:  # the student is built, its optimizer state not read
            path = Path(self.resume_from) / PROJECTION_FILE
            if not path.is_file():
                raise PkdError(
                    f"resume_from_checkpoint: {self.resume_from} has no {PROJECTION_FILE} (the "
                    "projections of a student narrower or wider than its teacher)"
                )
            unwrapped = self.accelerator.unwrap_model(self.projection)
            unwrapped.load_state_dict(load_file(path, device=str(self.args.device)))
        return optimizer

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """The Trainer's; resuming also restores the projections (`create_optimizer`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:  # the Trainer's own ValueError, as pkd says it
                raise PkdError(
                    f"resume_from_checkpoint: no checkpoint in {self.args.output_dir} to resume"
                )
        self.resume_from = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        # The Trainer's checkpoint, and the projections beside it (for resume): they are
        # the loss's, not the model's, so save_model never writes them.
        super()._save_checkpoint(model, trial)
        if self.projection is not None and self.args.should_save:
            folder = (
                Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            )
            state = self.accelerator.unwrap_model(self.projection).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, folder / PROJECTION_FILE)

    def create_model_card(self, *args, tags=None, **kwargs) -> None:
        """The Trainer's card (output_dir/README.md), tagged `pkd`, `knowledge-distillation`
        and the method, with a table naming the teacher, method, layer map, alpha, beta and
        T (`pkd.models.card.distillation_rows`, as `pkd distill`'s cards)."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        d, pairs = self.settings, self.distill_objective.pairs
        tags += [t for t in ("pkd", "knowledge-distillation", d.method) if t not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / CARD_FILE
        rows = distillation_rows(
            d.method, d.strategy, self.teacher_name, pairs, d.alpha, d.beta, d.temperature
        )
        rows.append(("student layers", d.student_layers))
        card = ModelCard.load(path)
        section = ["## Distillation (pkd)", "", *summary_table(rows)]
        card.text = card.text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
        card.save(path)

    def hyperparameter_search(self, *args, **kwargs):
        """The Trainer's search; a student pkd builds is built anew for each trial (no
        `model_init` needed)."""
        if self.model_init is None and self.recipe is not None:
            self.model_init = self.new_student
        return super().hyperparameter_search(*args, **kwargs)

    def build_cache(self, teacher_mode: str, cache_dir: str | None):
        """The teacher's signals read from pkd's teacher cache over the training set (built
        once, by the main process first), or None when the teacher runs online."""
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
        return cached_teacher(cache)

    def _set_signature_columns_if_needed(self) -> None:
        # transformers keeps only the columns the model's forward takes (remove_unused_columns);
        # the teacher cache needs each row's example_index too. compute_loss drops it again.
        # A private hook, for want of a public one in transformers 5.24: the columns it keeps
        # are the forward's parameters and `label_names`, and a label name would reach
        # prediction_step and compute_metrics as a label.
        super()._set_signature_columns_if_needed()
        if EXAMPLE_INDEX not in self._signature_columns:
            self._signature_columns.append(EXAMPLE_INDEX)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: Eq. (5) over `pkd.objectives.objective.loss_terms`, weighted by `Objective.total`,
        with teacher signals from the cache when the batch carries `example_index`, else
        online. Evaluation: the student's task loss (CE; MSE for regression)."""
        if not model.training:
            out = model(**model_inputs(inputs))
            loss = ce_loss(out.logits, inputs["labels"], self.problem_type == REGRESSION)
            return (loss, out) if return_outputs else loss
        objective = self.distill_objective
        if self.cached_signals is not None and EXAMPLE_INDEX in inputs:
            objective = dataclasses.replace(objective, teacher=self.cached_signals)
        terms = loss_terms(model, inputs, objective, self.problem_type == REGRESSION)
        for key, value in terms.items():
            self.term_sums[key].append(float(value.detach()))
        loss = objective.total(terms)
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
