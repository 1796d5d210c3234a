"""pkd: Patient Knowledge Distillation for BERT-family models (Sun et al., EMNLP 2019)."""

import importlib.metadata

__version__ = "0.1.0"
# The oldest transformers pkd is tested with (pyproject.toml declares the same floor): 4.x
# lacks the names pkd imports (`PreTrainedConfig`, ...). Checked first, for a clear error.
MIN_TRANSFORMERS = "5.0.0"


def check_transformers(installed: str) -> None:
    """Raise ImportError, saying what to install, when `installed` (a transformers version)
    is older than MIN_TRANSFORMERS."""
    from packaging.version import Version

    if Version(installed) < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"pkd needs transformers>={MIN_TRANSFORMERS}, but {installed} is installed: "
            f"pip install 'transformers>={MIN_TRANSFORMERS}'"
        )


check_transformers(importlib.metadata.version("transformers"))

# Registers pkd's mean-pooling heads (model_type `pkd_pooled`) with transformers' Auto classes,
# so `AutoModelForSequenceClassification.from_pretrained(run/model)` and `pipeline(...)` load
# a mean-pooled student after `import pkd` (imports torch and transformers).
from pkd.errors import PkdError  # noqa: E402
from pkd.models import pooling  # noqa: E402, F401


def __getattr__(name: str):
    # The API modules load lazily (data, training, Accelerate).
    if name in ("finetune", "distill", "pretrain", "evaluate", "predict"):
        from pkd import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["PkdError", "finetune", "distill", "pretrain", "evaluate", "predict", "__version__"]
