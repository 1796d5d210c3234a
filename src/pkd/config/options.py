"""Run configuration: one dataclass per concern, YAML in and out, CLI overrides on top.

Precedence: dataclass defaults < `--config FILE.yaml` < command-line options. Validation
happens in `__post_init__`, so a config that exists is a valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pkd.errors import PkdError
from pkd.fsio import atomic_write
from pkd.tasks import default_max_length

METHODS = ("ft", "kd", "pkd")
KD_FORMS = ("kl", "ce")  # default "kl": the authors' code (T^2-scaled); "ce": the paper's Eq. (2)
PT_FORMS = ("mean", "sum")  # default "mean": the authors' F.mse_loss; "sum": the paper's Eq. (4)
# Multiple choice: default "concat", the authors' RACE code (one vector of all choices per layer);
# "each": every choice's [CLS] state on its own, about C times stronger when normalised.
PT_CHOICES = ("concat", "each")
STRATEGIES = ("skip", "last")  # PKD-Skip, PKD-Last (pkd.objectives.mapping)
PRESETS = ("paper",)  # --preset names; their values: pkd.config.presets
TEACHER_MODES = ("cached", "online")
MIXED_PRECISION = ("no", "fp16", "bf16")
# auto: the checkpoint's own (its sentence-transformers pooling config; a pkd model's config)
POOLINGS = ("auto", "cls", "mean")
PROBLEM_TYPES = ("classification", "regression", "multiple_choice")
# --report-to: Accelerate's experiment trackers (accelerate.tracking), plus `all` and `none`
TRACKERS = (
    "tensorboard",
    "mlflow",
    "wandb",
    "trackio",
    "comet_ml",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
)
SEED_RANGE = 2**32  # seeds numpy, random and torch all accept: 0 <= seed < 2**32
# What a method fixes (the paper's baselines: FT has no teacher terms, KD no patient loss):
# giving one of these options another value is an error, never a silent drop.
FIXED_BY_METHOD: dict[str, dict[str, Any]] = {
    "ft": {"alpha": 0.0, "beta": 0.0, "layer_map": None},
    "kd": {"beta": 0.0, "layer_map": None},
    "pkd": {},
}
DEFAULT_WEIGHTS = {"alpha": 0.5, "beta": 100.0}  # where the method has the term
TRANSFER_RATIO = 1.0  # --transfer-ratio's default; another value needs --transfer-file
# Settings that cannot change what a run learns: a resumed or reused run may differ in these.
NO_EFFECT = ("quiet", "logging_steps", "keep_checkpoints", "save_steps", "save_total_limit")
NO_EFFECT += ("eval_batch_size", "cache_dir", "allow_weak_teacher")
NO_EFFECT += ("preset", "preset_source")  # the values a preset sets are compared themselves
NO_EFFECT += ("report_to",)  # where the scalars go, not what is learnt
NOT_SETTINGS = ("output", "overwrite", "resume", "resume_from", "trust_remote_code", "meta")


def _choice(option: str, value, valid) -> None:
    if value not in valid:
        raise PkdError(f"--{option}: {value!r} is not one of {', '.join(map(str, valid))}")


def check_seed(option: str, seed: int) -> None:
    """A seed that `accelerate.utils.set_seed` takes (numpy's range), or a PkdError."""
    if not 0 <= seed < SEED_RANGE:
        raise PkdError(f"--{option}: must be in 0..{SEED_RANGE - 1}, got {seed}")


def _positive(option: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PkdError(f"--{option}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class DataConfig:
    task: str = field(
        default="custom", metadata={"help": "GLUE task, race|race-middle|race-high, or 'custom'"}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "GLUE task dir (TSV files), or the RACE release dir"}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "a `datasets` dataset instead of files: a Hub name or a local path "
            "(load_dataset), or a save_to_disk directory (load_from_disk); its train, "
            "validation (or dev) and test splits, read with the column options"
        },
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "--dataset's configuration (load_dataset's name), e.g. sst2"},
    )
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": "--dataset's split to validate and evaluate on (default: validation, dev or "
            "valid; GLUE: the Hub's), e.g. test for a dataset with train and test only"
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "CSV/TSV/JSONL training file"})
    validation_file: str | None = field(default=None, metadata={"help": "dev file"})
    test_file: str | None = field(default=None, metadata={"help": "unlabelled test file"})
    text_columns: list[str] | None = field(
        default=None,
        metadata={"help": "1 or 2 text columns (default: text, when the data has that column)"},
    )
    label_column: str = field(default="label", metadata={"help": "label column (custom files)"})
    problem_type: str = field(
        default="classification",
        metadata={"help": "classification|regression|multiple_choice (custom files)"},
    )
    context_column: str | None = field(
        default=None, metadata={"help": "multiple choice: the context (article) column"}
    )
    question_column: str | None = field(
        default=None, metadata={"help": "multiple choice: the question column (optional)"}
    )
    choices_column: str | None = field(
        default=None,
        metadata={"help": "multiple choice: column with a JSON list of choices (custom files)"},
    )
    positive_label: str | None = field(
        default=None,
        metadata={
            "help": "classification: the positive class, by name; metric 'f1' is its F1 "
            "(added after accuracy and macro_f1 for custom data; MRPC/QQP: '1')"
        },
    )
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the data files"})
    max_length: int | None = field(
        default=None,
        metadata={"help": "tokens per example (truncation); default 128, 512 for RACE"},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "first N train rows"})
    transfer_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "distill only: unlabelled texts in the task's text columns (CSV/TSV/JSONL; a "
            "GLUE test file works as it is; several: A,B); the teacher labels them for KD/PKD"
        },
    )
    max_transfer_samples: int | None = field(
        default=None, metadata={"help": "first N rows of the transfer file(s)"}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "first N eval rows"})
    holdout_fraction: float | None = field(
        default=None,
        metadata={"help": "hold out this share of train (fixed rows) to select epochs on"},
    )

    def __post_init__(self):
        _choice("problem-type", self.problem_type, PROBLEM_TYPES)
        if self.max_length is None:  # the task's default, recorded as such in config.yaml
            self.max_length = default_max_length(self.task)
        _positive("max-length", self.max_length)
        if self.task == "custom" and self.problem_type == "multiple_choice":
            if not self.choices_column:
                raise PkdError("--choices-column: required for multiple-choice files")
        if self.task == "custom" and self.choices_column and self.problem_type == "regression":
            raise PkdError("--problem-type: regression cannot have --choices-column")
        _positive("max-train-samples", self.max_train_samples)
        _positive("max-eval-samples", self.max_eval_samples)
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 1:
            raise PkdError(f"--holdout-fraction: must be in (0, 1), got {self.holdout_fraction}")
        _positive("max-transfer-samples", self.max_transfer_samples)
        if is_datasets_object(self.transfer_file):  # the API: one Dataset for a list of files
            self.transfer_file = [self.transfer_file]
        if self.transfer_file is not None and not self.transfer_file:
            self.transfer_file = None  # an empty list from a config file: no transfer set
        if self.max_transfer_samples is not None and not self.transfer_file:
            raise PkdError("--max-transfer-samples: needs --transfer-file (the rows it keeps)")
        self._check_data_sources()

    def _check_data_sources(self) -> None:
        """Files are paths; the Python API may pass `datasets` objects instead: a
        `DatasetDict` for --dataset, a `Dataset` for a split's file or a transfer file."""
        singles = [
            ("train-file", self.train_file),
            ("validation-file", self.validation_file),
            ("test-file", self.test_file),
            *(("transfer-file", f) for f in self.transfer_file or []),
        ]
        for option, value in [("dataset", self.dataset), *singles]:
            if value is None or isinstance(value, str) or is_datasets_object(value):
                continue
            raise PkdError(
                f"--{option}: expected a path or a `datasets` object, got {type(value).__name__}"
            )
        if is_datasets_object(self.dataset) and not isinstance(self.dataset, dict):
            raise PkdError(
                "--dataset: a single Dataset is one split; pass a DatasetDict (train, validation, "
                "...) or the Dataset as train_file=/validation_file="
            )
        for option, value in singles:
            if is_datasets_object(value) and isinstance(value, dict):
                raise PkdError(f"--{option}: a DatasetDict holds several splits; pass one Dataset")
        if self.dataset is not None and self.data_dir is not None:
            raise PkdError("--dataset: give --dataset or --data-dir, not both")
        if self.dataset_config is not None and self.dataset is None:
            raise PkdError("--dataset-config: needs --dataset (the dataset it configures)")
        if self.validation_split is not None and self.dataset is None:
            raise PkdError(
                "--validation-split: needs --dataset (files: pass the split as --validation-file)"
            )
        if self.validation_split == "train":
            raise PkdError("--validation-split: 'train' is the training split; name another")


@dataclass
class TrainConfig:
    epochs: float = field(default=4, metadata={"help": "training epochs"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate (AdamW)"})
    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step"})
    eval_batch_size: int = field(default=128, metadata={"help": "examples per eval batch"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "linear warm-up share of steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches/step"})
    group_by_length: bool = field(
        default=False,
        metadata={"help": "batch examples of similar length together (less padding, memory)"},
    )
    max_steps: int = field(default=-1, metadata={"help": "stop after N steps (-1: epochs)"})
    mixed_precision: str = field(default="no", metadata={"help": "no|fp16|bf16"})
    seed: int = field(default=42, metadata={"help": "seed for everything seedable"})
    logging_steps: int = field(default=20, metadata={"help": "log every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: epochs)"})
    save_total_limit: int = field(default=1, metadata={"help": "checkpoints kept"})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep checkpoints/ after a finished run"}
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={
            "help": "experiment trackers for the loss terms, lr, gradient shares and dev "
            "metrics: tensorboard (in the run dir), mlflow, wandb, ... (Accelerate's), several "
            "as A,B; all (every one installed) or none"
        },
    )

    def __post_init__(self):
        _positive("epochs", self.epochs)
        _positive("lr", self.lr)
        _positive("batch-size", self.batch_size)
        _positive("eval-batch-size", self.eval_batch_size)
        _positive("gradient-accumulation-steps", self.gradient_accumulation_steps)
        _positive("max-grad-norm", self.max_grad_norm, allow_zero=True)
        _positive("weight-decay", self.weight_decay, allow_zero=True)
        _positive("logging-steps", self.logging_steps)
        _positive("save-steps", self.save_steps, allow_zero=True)
        _positive("save-total-limit", self.save_total_limit)
        check_seed("seed", self.seed)
        if self.max_steps == 0 or self.max_steps < -1:
            raise PkdError(f"--max-steps: must be -1 (train --epochs) or > 0, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise PkdError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise PkdError(
                f"--batch-size: {self.batch_size} is not divisible by "
                f"--gradient-accumulation-steps {self.gradient_accumulation_steps}"
            )
        _choice("mixed-precision", self.mixed_precision, MIXED_PRECISION)
        self.report_to = check_trackers(self.report_to)


def check_trackers(names: list[str]) -> list[str]:
    """--report-to as given, lower-cased and without repeats; `all` and `none` stand alone.

    Whether each tracker's package is installed is checked when the run starts
    (`pkd.training.accelerator.make_accelerator`), with Accelerate.
    """
    names = list(dict.fromkeys(n.strip().lower() for n in names if n.strip())) or ["none"]
    for name in names:
        if name not in (*TRACKERS, "all", "none"):
            raise PkdError(
                f"--report-to: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}, all, none"
            )
    if len(names) > 1 and {"all", "none"} & set(names):
        raise PkdError(f"--report-to: 'all' and 'none' stand alone, got {','.join(names)}")
    return names


@dataclass
class DistillConfig:
    method: str = field(default="pkd", metadata={"help": "ft|kd|pkd"})
    student_layers: int = field(default=3, metadata={"help": "student depth M"})
    strategy: str = field(default="skip", metadata={"help": "PKD layer map: skip|last"})
    layer_map: list[int] | None = field(default=None, metadata={"help": "explicit map, e.g. 2,4"})
    student_init: str | None = field(
        default=None,
        metadata={"help": "checkpoint for the first M layers (default: teacher's base)"},
    )
    alpha: float | None = field(
        default=None, metadata={"help": "weight of KD vs CE (Eq. 5); default 0.5 (kd, pkd)"}
    )
    beta: float | None = field(
        default=None, metadata={"help": "weight of the patient loss; default 100 (pkd only)"}
    )
    temperature: float = field(default=10.0, metadata={"help": "KD temperature T"})
    kd_loss: str = field(default="kl", metadata={"help": "kl (authors', T^2-scaled)|ce (Eq. 2)"})
    pt_loss: str = field(default="mean", metadata={"help": "mean (authors')|sum (Eq. 4)"})
    pt_normalize: bool = field(default=True, metadata={"help": "L2-normalise [CLS] states"})
    pt_choices: str = field(
        default="concat",
        metadata={
            "help": "multiple choice: concat (authors': all choices' [CLS] states of a layer "
            "normalised as one vector)|each (each choice alone: about C times stronger)"
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": "how the student pools tokens for its head and the patient loss: auto (the "
            "teacher's)|cls ([CLS] through the pooler, the paper's)|mean (masked token mean)"
        },
    )
    transfer_ratio: float = field(
        default=TRANSFER_RATIO,
        metadata={
            "help": "with --transfer-file: unlabelled examples drawn per labelled example into "
            "each batch (they carry KD and PT only; CE stays on the labelled ones)"
        },
    )
    teacher_mode: str = field(default="cached", metadata={"help": "cached|online"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "teacher cache root (default: $PKD_CACHE_DIR or ~/.cache/pkd/teacher)"},
    )
    allow_weak_teacher: bool = field(
        default=False, metadata={"help": "distill a near-chance teacher"}
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "'paper': the authors' best lr, T, alpha, beta, ... (`pkd presets`)"},
    )
    preset_source: str | None = field(
        default=None, metadata={"help": "set by --preset: the authors' file the values came from"}
    )

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("kd-loss", self.kd_loss, KD_FORMS)
        _choice("pt-loss", self.pt_loss, PT_FORMS)
        _choice("pt-choices", self.pt_choices, PT_CHOICES)
        _choice("teacher-mode", self.teacher_mode, TEACHER_MODES)
        _choice("pooling", self.pooling, POOLINGS)
        if self.preset is not None:
            _choice("preset", self.preset, PRESETS)
        _positive("student-layers", self.student_layers)
        _positive("temperature", self.temperature)
        _positive("transfer-ratio", self.transfer_ratio)
        check_method_options(self.method, dataclasses.asdict(self))
        # Resolved per method and recorded, so the saved config says what was trained.
        fixed = FIXED_BY_METHOD[self.method]
        if self.alpha is None:
            self.alpha = fixed.get("alpha", DEFAULT_WEIGHTS["alpha"])
        if self.beta is None:
            self.beta = fixed.get("beta", DEFAULT_WEIGHTS["beta"])
        _positive("beta", self.beta, allow_zero=True)
        if not 0 <= self.alpha <= 1:
            raise PkdError(f"--alpha: must be in [0, 1], got {self.alpha}")

    @property
    def terms(self) -> tuple[str, ...]:
        return {"ft": ("ce",), "kd": ("ce", "kd"), "pkd": ("ce", "kd", "pt")}[self.method]


def check_method_options(method: str, values: dict) -> None:
    """Refuse an option that `method` ignores (`--method kd --beta 500`), naming it.

    The value the method fixes is accepted (beta 0 for KD: what a saved config.yaml records).
    """
    why = {"ft": "no teacher terms", "kd": "no patient loss"}
    for name, fixed in FIXED_BY_METHOD.get(method, {}).items():
        value = values.get(name)
        if value is None or value == fixed:
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        raise PkdError(
            f"--{name.replace('_', '-')}: {shown} has no effect with --method {method} "
            f"({why[method]}); drop it, or use --method {'kd or pkd' if name == 'alpha' else 'pkd'}"
        )


TRANSFER_OPTIONS = ("transfer_file", "max_transfer_samples")  # data options FT cannot use
# data options only training reads: not options of evaluate/predict (`check_inference_data`)
TRAINING_DATA_OPTIONS = ("max_train_samples", *TRANSFER_OPTIONS, "holdout_fraction")


def inference_data(data: DataConfig) -> DataConfig:
    """A run's data options as evaluate/predict take them (training-only ones dropped)."""
    return dataclasses.replace(data, **dict.fromkeys(TRAINING_DATA_OPTIONS))


def check_inference_data(data: DataConfig) -> None:
    """evaluate/predict read one split: refuse a training-only data option they would ignore."""
    for name in TRAINING_DATA_OPTIONS:
        if getattr(data, name) is not None:
            raise PkdError(
                f"--{name.replace('_', '-')}: a training option; evaluate and predict do not "
                "read it"
            )


def for_method(sections: dict, method: str) -> dict:
    """Sections (data, train, distill) shared by several methods (`compare`), without what
    `method` fixes (alpha, beta, layer map) or cannot use (FT: a transfer set)."""
    out = dict(sections)
    distill = out.get("distill") or {}
    unused = (*FIXED_BY_METHOD[method], *(("transfer_ratio",) if method == "ft" else ()))
    out["distill"] = {k: v for k, v in distill.items() if k not in unused}
    if method == "ft" and out.get("data"):
        out["data"] = {k: v for k, v in out["data"].items() if k not in TRANSFER_OPTIONS}
    return out


@dataclass
class FinetuneConfig:
    """`pkd finetune`: train a teacher (or any classifier) on labels."""

    model: str = ""
    output: str = ""
    overwrite: bool = False
    resume: bool = False
    resume_from: str | None = None
    trust_remote_code: bool = False
    # auto: mean for a sentence-transformers checkpoint trained with mean pooling, else cls
    pooling: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _choice("pooling", self.pooling, POOLINGS)
        if not self.model:
            raise PkdError("--model: required (a checkpoint name or directory)")
        if not self.output:
            raise PkdError("--output: required (the run directory)")
        if self.data.transfer_file:
            raise PkdError(
                "--transfer-file: finetune learns from labels only; pass unlabelled text to "
                "`pkd distill`, whose teacher labels it"
            )
        self.model = resolve_model(self.model, "model")


@dataclass
class DistillRunConfig:
    """`pkd distill`: train an M-layer student from a fine-tuned teacher."""

    teacher: str = ""
    output: str = ""
    overwrite: bool = False
    resume: bool = False
    resume_from: str | None = None
    trust_remote_code: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5))
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if not self.teacher:
            raise PkdError("--teacher: required (a fine-tuned model directory)")
        if not self.output:
            raise PkdError("--output: required (the run directory)")
        if self.data.transfer_file and self.distill.method == "ft":
            raise PkdError(
                "--transfer-file: has no effect with --method ft (no teacher terms: unlabelled "
                "text only teaches through KD/PT); drop it, or use --method kd or pkd"
            )
        if not self.data.transfer_file and self.distill.transfer_ratio != TRANSFER_RATIO:
            raise PkdError(
                f"--transfer-ratio: {self.distill.transfer_ratio:g} needs --transfer-file (the "
                "unlabelled text it draws from)"
            )
        self.teacher = resolve_model(self.teacher, "teacher")
        if self.distill.student_init not in (None, "", "teacher"):
            self.distill.student_init = resolve_model(self.distill.student_init, "student-init")


PT_TOKENS = ("cls", "all")


@dataclass
class TextConfig:
    """`pkd pretrain`'s unlabelled text: files, a GLUE task's sentences, a `datasets` corpus."""

    text_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "plain-text files, one passage a line, or JSONL/CSV/TSV with --text-column; "
            "several (A,B) or a glob ('corpus/*.txt')"
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "the text column of JSONL/CSV/TSV files and --dataset"}
    )
    task: str | None = field(
        default=None,
        metadata={"help": "a GLUE task whose sentences (labels ignored) are read from --data-dir"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "the GLUE task's directory"})
    glue_splits: list[str] = field(
        default_factory=lambda: ["train"], metadata={"help": "the GLUE task's splits to read"}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "a `datasets` Hub name (streamed) or a save_to_disk directory; its "
            "--text-column (default 'text')"
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's config"})
    dataset_split: str = field(default="train", metadata={"help": "the dataset's split"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the files"})
    max_length: int = field(default=128, metadata={"help": "tokens per passage (truncation)"})
    max_texts: int | None = field(
        default=None,
        metadata={"help": "the first N passages, in the order read (files, task, dataset)"},
    )
    eval_texts: int = field(
        default=1000,
        metadata={
            "help": "passages held out (a fixed sample, at most a tenth of them) to evaluate the "
            "distillation loss on each epoch"
        },
    )

    def __post_init__(self):
        _positive("max-length", self.max_length)
        _positive("max-texts", self.max_texts)
        if self.max_texts is not None and self.max_texts < 2:
            raise PkdError(
                f"--max-texts: {self.max_texts} passage(s); pretraining needs 2 or more (some "
                "are held out to evaluate on)"
            )
        _positive("eval-texts", self.eval_texts)
        if self.text_file is not None and not self.text_file:
            self.text_file = None  # an empty list from a config file: no files
        if self.data_dir and not self.task:
            raise PkdError("--data-dir: give --task too (the GLUE task whose sentences it holds)")

    def check_source(self) -> None:
        """Some text must be given (checked by the run config: a default section has none)."""
        if not (self.text_file or self.task or self.dataset):
            raise PkdError(
                "--text-file: give unlabelled text: --text-file FILE, --task TASK --data-dir DIR "
                "(its sentences), or --dataset NAME_OR_DIR"
            )


@dataclass
class PretrainOptions:
    """`pkd pretrain`'s student and loss: task-agnostic patient distillation."""

    student_layers: int = field(default=3, metadata={"help": "student depth M"})
    student_hidden_size: int | None = field(
        default=None, metadata={"help": "student width (default: the teacher's)"}
    )
    student_heads: int | None = field(
        default=None,
        metadata={"help": "attention heads (default: the teacher's head size kept)"},
    )
    student_intermediate_size: int | None = field(
        default=None,
        metadata={"help": "feed-forward size (default: the teacher's ratio to the width)"},
    )
    student_init: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint the student starts from (default: the teacher's first M layers "
            "at its width, a fresh init at another)"
        },
    )
    strategy: str = field(default="skip", metadata={"help": "PKD layer map: skip|last"})
    layer_map: list[int] | None = field(default=None, metadata={"help": "explicit map, e.g. 2,4"})
    pt_tokens: str = field(
        default="all",
        metadata={"help": "states matched: all (every token, padding excluded)|cls ([CLS] only)"},
    )
    pt_normalize: bool = field(default=True, metadata={"help": "L2-normalise each state"})
    beta: float = field(default=1.0, metadata={"help": "weight of the patient loss"})
    top_weight: float = field(default=1.0, metadata={"help": "weight of the top layer's states"})
    mlm_distill_weight: float = field(
        default=0.0,
        metadata={"help": "weight of soft-label MLM distillation (needs an MLM-head teacher)"},
    )
    mlm_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the hard MLM loss on masked tokens (needs one too)"},
    )
    temperature: float = field(default=2.0, metadata={"help": "MLM distillation temperature"})
    mask_probability: float = field(default=0.15, metadata={"help": "MLM: share of tokens masked"})
    teacher_mode: str = field(
        default="online",
        metadata={"help": "online|cached (cached: --pt-tokens cls without MLM terms only)"},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "teacher cache root (default: $PKD_CACHE_DIR or ~/.cache/pkd/teacher)"},
    )

    def __post_init__(self):
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("pt-tokens", self.pt_tokens, PT_TOKENS)
        _choice("teacher-mode", self.teacher_mode, TEACHER_MODES)
        _positive("student-layers", self.student_layers)
        _positive("student-hidden-size", self.student_hidden_size)
        _positive("student-heads", self.student_heads)
        _positive("student-intermediate-size", self.student_intermediate_size)
        _positive("temperature", self.temperature)
        for name in ("beta", "top_weight", "mlm_distill_weight", "mlm_weight"):
            _positive(name.replace("_", "-"), getattr(self, name), allow_zero=True)
        if not self.weights:
            raise PkdError("--beta: every loss weight is 0; the student would learn nothing")
        if not 0 < self.mask_probability < 1:
            raise PkdError(f"--mask-probability: must be in (0, 1), got {self.mask_probability}")
        if self.teacher_mode == "cached" and (self.pt_tokens == "all" or self.uses_mlm):
            why = "every token's states" if self.pt_tokens == "all" else "MLM soft labels"
            raise PkdError(
                f"--teacher-mode: cached keeps [CLS] states only; {why} depend on each batch "
                "(padding, masking) and are far too large to keep: use online"
            )

    @property
    def weights(self) -> dict[str, float]:
        """Each loss term's weight, for the terms weighted above 0."""
        every = {
            "pt": self.beta,
            "top": self.top_weight,
            "mlm_kd": self.mlm_distill_weight,
            "mlm": self.mlm_weight,
        }
        return {k: v for k, v in every.items() if v > 0}

    @property
    def uses_mlm(self) -> bool:
        return self.mlm_distill_weight > 0 or self.mlm_weight > 0


@dataclass
class PretrainConfig:
    """`pkd pretrain`: distil a pre-trained encoder into a smaller one on unlabelled text."""

    teacher: str = ""
    output: str = ""
    overwrite: bool = False
    resume: bool = False
    resume_from: str | None = None
    trust_remote_code: bool = False
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=1))
    pretrain: PretrainOptions = field(default_factory=PretrainOptions)

    def __post_init__(self):
        if not self.teacher:
            raise PkdError("--teacher: required (a pre-trained encoder: a name or directory)")
        if not self.output:
            raise PkdError("--output: required (the run directory)")
        self.text.check_source()
        self.teacher = resolve_model(self.teacher, "teacher")
        if self.pretrain.student_init:
            self.pretrain.student_init = resolve_model(self.pretrain.student_init, "student-init")


MODEL_SOURCES = "a Hub model name, a model directory (config.json) or a pkd run directory (model/)"


def resolve_model(name_or_path: str, option: str) -> str:
    """The model an option names: a Hub name as given, a model directory, or a run dir's model/.

    `pkd finetune --output RUN` saves its model in RUN/model, so RUN names that model anywhere a
    model is expected. Idempotent: a resolved name resolves to itself.

    Raises:
        PkdError: a local path that does not exist, is a file, or holds no model; the message
            says what was found and what to pass.
    """
    p = Path(name_or_path).expanduser()
    looks_local = p.is_absolute() or name_or_path.startswith((".", "~")) or p.exists()
    if not looks_local:
        return name_or_path  # a Hub name; transformers reports an unknown one
    if (p / "config.json").is_file():
        return str(p)
    if (p / "model" / "config.json").is_file():
        return str(p / "model")
    if not p.exists():
        raise PkdError(f"--{option}: {name_or_path} does not exist; pass {MODEL_SOURCES}")
    if not p.is_dir():
        raise PkdError(f"--{option}: {name_or_path} is a file, not a model; pass {MODEL_SOURCES}")
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in p.iterdir())
    found = f"it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}"
    raise PkdError(
        f"--{option}: {name_or_path} is neither a model directory (no config.json) nor a run "
        f"directory (no model/config.json); {found if entries else 'it is empty'}; "
        f"pass {MODEL_SOURCES}"
    )


SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
    "text": TextConfig,
    "pretrain": PretrainOptions,
}


def _coerce(name: str, type_name: str, value, source: str):
    """A YAML value as its field's type, or a PkdError naming the option.

    YAML 1.1 reads `lr: 1e-5` as the string '1e-5' (no dot), so numbers given as text are
    parsed here; anything else of the wrong type (`epochs: four`) is an error, not a crash.
    """
    flag = "--" + name.rsplit(".", 1)[-1].replace("_", "-")
    kind = type_name.split("|")[0].strip()

    def bad(expected: str) -> PkdError:
        return PkdError(f"{source}: {name} ({flag}) expects {expected}, got {value!r}")

    if value is None:
        if "None" in type_name:
            return None
        raise bad("a value")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("a number")
        try:
            number = float(value)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("text")
        return str(value)
    if kind.startswith("list["):
        item = kind[5:-1]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            items = [items]
        items = [x.strip() if isinstance(x, str) else x for x in items]
        return [_coerce(name, item, x, source) for x in items if x != ""]
    return value


def build(cls, values: dict[str, Any], source: str = "config"):
    """Build a run config from a nested dict, rejecting unknown keys by name."""
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key == "meta":  # provenance written by save(); not an option
            continue
        if key not in names:
            raise PkdError(f"{source}: unknown option {key!r}; valid: {', '.join(names)}")
        if key in SECTIONS:
            value = {} if value is None else value  # an empty `train:` section in YAML
            if not isinstance(value, dict):
                raise PkdError(f"{source}: section {key!r} must be a mapping of options")
            sub = SECTIONS[key]
            subfields = {f.name: f for f in dataclasses.fields(sub)}
            unknown = set(value) - set(subfields)
            if unknown:
                raise PkdError(f"{source}: unknown option(s) {sorted(unknown)} in section {key!r}")
            value = {
                k: _coerce(f"{key}.{k}", str(subfields[k].type), v, source)
                for k, v in value.items()
            }
            # Only what the section's factory sets differently from the dataclass (distill's
            # lr 5e-5): defaults resolved from other options (data.max_length from the task)
            # must resolve again here, not be copied from a default instance.
            plain = dataclasses.asdict(sub())
            base = {
                k: v
                for k, v in dataclasses.asdict(names[key].default_factory()).items()
                if v != plain[k]
            }
            kwargs[key] = sub(**{**base, **value})
        else:
            kwargs[key] = _coerce(key, str(names[key].type), value, source)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise PkdError(f"{source}: {e}") from None


def load_yaml(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        raise PkdError(f"--config: {path} is a directory, not a YAML file")
    if not p.is_file():
        raise PkdError(f"--config: {path} not found")
    try:
        data = yaml.safe_load(p.read_bytes()) or {}  # bytes: bad encodings are YAMLErrors
    except yaml.YAMLError as e:
        raise PkdError(f"--config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PkdError(f"--config: {path} must hold a mapping of options")
    for key in SECTIONS:  # checked here: merge() would let command-line options hide it
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise PkdError(f"{path}: section {key!r} must be a mapping of options")
    return data


def merge(base: dict, override: dict) -> dict:
    """Nested dict merge: values in override win."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def is_datasets_object(value) -> bool:
    """Whether `value` is a `datasets.Dataset` or `DatasetDict` (without importing datasets)."""
    return type(value).__module__.split(".")[0] == "datasets"


def describe_data(value):
    """A value of a config as YAML can hold it: an in-memory `datasets` object as a
    description of its rows (config.yaml records what was read; it cannot re-read it)."""
    if isinstance(value, list):
        return [describe_data(v) for v in value]
    if not is_datasets_object(value):
        return copy.deepcopy(value)
    if isinstance(value, dict):
        rows = ", ".join(f"{name} {len(split)}" for name, split in value.items())
        return f"<in-memory DatasetDict: {rows} rows>"
    return f"<in-memory {type(value).__name__}: {len(value)} rows>"


def to_dict(cfg) -> dict:
    """A config as nested dicts of plain values (`describe_data`), as config.yaml holds it."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else describe_data(value)
    return out


def config_drift(saved: dict, new: dict) -> list[str]:
    """`section.option: old -> new` for each setting that differs between two run configs.

    Both are nested dicts as `to_dict` makes them (`saved`: a run's config.yaml). Settings
    that cannot change what a run learns (NO_EFFECT) and paths of the run itself
    (NOT_SETTINGS) are left out; existing paths are compared resolved.
    """

    def norm(value):
        if isinstance(value, str) and value and Path(value).exists():
            return str(Path(value).resolve())
        return value

    diffs = []
    for key, value in new.items():
        if key in NOT_SETTINGS:
            continue
        if not isinstance(value, dict):
            if norm(saved.get(key)) != norm(value):
                diffs.append(f"{key}: {saved.get(key)!r} -> {value!r}")
            continue
        old_section = saved.get(key) or {}
        for name, v in value.items():
            old = old_section.get(name)
            if name not in NO_EFFECT and norm(old) != norm(v):
                diffs.append(f"{key}.{name}: {old!r} -> {v!r}")
    return diffs


def save(cfg, path: Path, meta: dict | None = None) -> None:
    """Write the resolved config (plus provenance under `meta`) as YAML."""
    data = to_dict(cfg)
    if meta:
        data["meta"] = meta
    atomic_write(path, yaml.safe_dump(data, sort_keys=False))
