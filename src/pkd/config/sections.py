"""The sections of a run config: one dataclass per concern, an option per field.

`data`, `train` and `distill` (finetune, distill); `text` and `pretrain` (pretrain). Each
field's `help` is its command-line help; validation happens in `__post_init__`, so a section
that exists is a valid one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pkd.config.choices import (
    DEFAULT_WEIGHTS,
    FIXED_BY_METHOD,
    KD_FORMS,
    LR_SCHEDULES,
    METHODS,
    MIXED_PRECISION,
    POOLINGS,
    PRESETS,
    PROBLEM_TYPES,
    PT_CHOICES,
    PT_FORMS,
    PT_TOKENS,
    STRATEGIES,
    TEACHER_MODES,
    TRANSFER_RATIO,
    check_choice,
    check_method_options,
    check_positive,
    check_seed,
    check_trackers,
    is_datasets_object,
)
from pkd.errors import PkdError
from pkd.tasks import check_choice_options, default_max_length


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
        check_choice("problem-type", self.problem_type, PROBLEM_TYPES)
        if self.max_length is None:  # the task's default, recorded as such in config.yaml
            self.max_length = default_max_length(self.task)
        check_positive("max-length", self.max_length)
        if self.task == "custom":
            check_choice_options(self.problem_type, self.choices_column)
        check_positive("max-train-samples", self.max_train_samples)
        check_positive("max-eval-samples", self.max_eval_samples)
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 1:
            raise PkdError(f"--holdout-fraction: must be in (0, 1), got {self.holdout_fraction}")
        check_positive("max-transfer-samples", self.max_transfer_samples)
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
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "after the warm-up: linear (decay to 0), constant or cosine"},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches/step"})
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "batch examples of similar length together: less padding (2x faster on "
            "SST-2) but 0.8-4.1 points lower there (docs/results.md)"
        },
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
        check_positive("epochs", self.epochs)
        check_positive("lr", self.lr)
        check_positive("batch-size", self.batch_size)
        check_positive("eval-batch-size", self.eval_batch_size)
        check_positive("gradient-accumulation-steps", self.gradient_accumulation_steps)
        check_positive("max-grad-norm", self.max_grad_norm, allow_zero=True)
        check_positive("weight-decay", self.weight_decay, allow_zero=True)
        check_positive("logging-steps", self.logging_steps)
        check_positive("save-steps", self.save_steps, allow_zero=True)
        check_positive("save-total-limit", self.save_total_limit)
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
        check_choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("mixed-precision", self.mixed_precision, MIXED_PRECISION)
        self.report_to = check_trackers(self.report_to)


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
        check_choice("method", self.method, METHODS)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("kd-loss", self.kd_loss, KD_FORMS)
        check_choice("pt-loss", self.pt_loss, PT_FORMS)
        check_choice("pt-choices", self.pt_choices, PT_CHOICES)
        check_choice("teacher-mode", self.teacher_mode, TEACHER_MODES)
        check_choice("pooling", self.pooling, POOLINGS)
        if self.preset is not None:
            check_choice("preset", self.preset, PRESETS)
        check_positive("student-layers", self.student_layers)
        check_positive("temperature", self.temperature)
        check_positive("transfer-ratio", self.transfer_ratio)
        check_method_options(self.method, dataclasses.asdict(self))
        # Resolved per method and recorded, so the saved config says what was trained.
        fixed = FIXED_BY_METHOD[self.method]
        if self.alpha is None:
            self.alpha = fixed.get("alpha", DEFAULT_WEIGHTS["alpha"])
        if self.beta is None:
            self.beta = fixed.get("beta", DEFAULT_WEIGHTS["beta"])
        check_positive("beta", self.beta, allow_zero=True)
        if not 0 <= self.alpha <= 1:
            raise PkdError(f"--alpha: must be in [0, 1], got {self.alpha}")

    @property
    def terms(self) -> tuple[str, ...]:
        return {"ft": ("ce",), "kd": ("ce", "kd"), "pkd": ("ce", "kd", "pt")}[self.method]


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
        check_positive("max-length", self.max_length)
        check_positive("max-texts", self.max_texts)
        if self.max_texts is not None and self.max_texts < 2:
            raise PkdError(
                f"--max-texts: {self.max_texts} passage(s); pretraining needs 2 or more (some "
                "are held out to evaluate on)"
            )
        check_positive("eval-texts", self.eval_texts)
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


EMBEDDING_WEIGHTS = ("embedding_weight", "cosine_weight", "similarity_weight")


@dataclass
class PretrainConfig:
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
        metadata={
            "help": "states matched: all (every token, padding excluded)|cls ([CLS] only)|mean "
            "(each layer's token mean)"
        },
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
    objective: str = field(
        default="auto",
        metadata={"help": "auto (embedding for a sentence-transformers teacher)|embedding|general"},
    )
    embedding_weight: float = field(default=1.0, metadata={"help": "embedding: weight of EMB"})
    cosine_weight: float = field(default=0.0, metadata={"help": "embedding: weight of COS"})
    similarity_weight: float = field(default=0.0, metadata={"help": "embedding: weight of SIM"})
    eval_pairs: str | None = field(
        default=None,
        metadata={"help": "scored pairs (sentence1, sentence2, score) selecting by Spearman"},
    )
    teacher_mode: str = field(
        default="online",
        metadata={"help": "online|cached (cached: --pt-tokens cls or mean, no MLM terms)"},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "teacher cache root (default: $PKD_CACHE_DIR or ~/.cache/pkd/teacher)"},
    )

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("pt-tokens", self.pt_tokens, PT_TOKENS)
        check_choice("teacher-mode", self.teacher_mode, TEACHER_MODES)
        check_choice("objective", self.objective, ("auto", "embedding", "general"))
        check_positive("student-layers", self.student_layers)
        check_positive("student-hidden-size", self.student_hidden_size)
        check_positive("student-heads", self.student_heads)
        check_positive("student-intermediate-size", self.student_intermediate_size)
        check_positive("temperature", self.temperature)
        for name in ("beta", "top_weight", "mlm_distill_weight", "mlm_weight", *EMBEDDING_WEIGHTS):
            check_positive(name.replace("_", "-"), getattr(self, name), allow_zero=True)
        embedding = self.objective != "general" and any(getattr(self, n) for n in EMBEDDING_WEIGHTS)
        if not self.weights and not embedding:  # an auto objective that is general: the recipe's
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
