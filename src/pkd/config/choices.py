"""The values each option takes, and the checks on one option's value.

The tuples here are the choices (`--method ft|kd|pkd`, ...); the checks raise a PkdError that
names the option. Used by the sections (`pkd.config.sections`) and the run configs.
"""

from __future__ import annotations

from typing import Any

from pkd.errors import PkdError

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
# --lr-schedule after the --warmup-ratio warm-up: transformers' get_scheduler names
# ("constant" is its constant_with_warmup); pkd.training.accelerator.optimizer_and_schedule
LR_SCHEDULES = ("constant", "linear", "cosine")
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
PT_TOKENS = ("cls", "all", "mean")


def check_choice(option: str, value, valid) -> None:
    if value not in valid:
        raise PkdError(f"--{option}: {value!r} is not one of {', '.join(map(str, valid))}")


def check_seed(option: str, seed: int) -> None:
    """A seed that `accelerate.utils.set_seed` takes (numpy's range), or a PkdError."""
    if not 0 <= seed < SEED_RANGE:
        raise PkdError(f"--{option}: must be in 0..{SEED_RANGE - 1}, got {seed}")


def check_positive(option: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PkdError(f"--{option}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


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


def is_datasets_object(value) -> bool:
    """Whether `value` is a `datasets.Dataset` or `DatasetDict` (without importing datasets)."""
    return type(value).__module__.split(".")[0] == "datasets"
