"""The run configs: `pkd finetune`, `pkd distill` and `pkd pretrain`, each a few paths and
flags plus its sections (`pkd.config.sections`); and the model an option names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pkd.config.choices import FIXED_BY_METHOD, POOLINGS, TRANSFER_RATIO, check_choice
from pkd.config.sections import (
    DataConfig,
    DistillConfig,
    PretrainConfig,
    TextConfig,
    TrainConfig,
)
from pkd.errors import PkdError

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


def require(option: str, value: str, what: str) -> None:
    """Refuse an empty required option (--model, --teacher, --output), saying what it takes."""
    if not value:
        raise PkdError(f"--{option}: required ({what})")


RUN_DIR = "the run directory"


@dataclass
class FinetuneRunConfig:
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
        check_choice("pooling", self.pooling, POOLINGS)
        require("model", self.model, "a checkpoint name or directory")
        require("output", self.output, RUN_DIR)
        if self.data.transfer_file:
            raise PkdError(
                "--transfer-file: finetune learns from labels only; pass unlabelled text to "
                "`pkd distill`, whose teacher labels it"
            )
        self.model = resolve_model(self.model, "model")


@dataclass
class TeacherRunConfig:
    """What the runs of a teacher share (`pkd distill`, `pkd pretrain`): the teacher, the run
    directory and its flags (the first keys of their config.yaml, in this order)."""

    teacher: str = ""
    output: str = ""
    overwrite: bool = False
    resume: bool = False
    resume_from: str | None = None
    trust_remote_code: bool = False

    def check_required(self, teacher: str) -> None:
        """--teacher (`teacher` says what it takes) and --output are required."""
        require("teacher", self.teacher, teacher)
        require("output", self.output, RUN_DIR)


@dataclass
class DistillRunConfig(TeacherRunConfig):
    """`pkd distill`: train an M-layer student from a fine-tuned teacher."""

    data: DataConfig = field(default_factory=DataConfig)
    # a constant lr from the first step (TextBrewer's default): a short distillation keeps the
    # summed lr that takes a [CLS]-pooled student off its plateau
    # (pkd.training.accelerator.optimizer_and_schedule)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=5e-5, warmup_ratio=0.0, lr_schedule="constant")
    )
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        self.check_required("a fine-tuned model directory")
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


@dataclass
class PretrainRunConfig(TeacherRunConfig):
    """`pkd pretrain`: distil a pre-trained encoder into a smaller one on unlabelled text."""

    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=1))
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self):
        self.check_required("a pre-trained encoder: a name or directory")
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
