"""pkd: Patient Knowledge Distillation for BERT-family models (Sun et al., EMNLP 2019)."""

__version__ = "0.1.0"

# Registers pkd's mean-pooling heads (model_type `pkd_pooled`) with transformers' Auto classes,
# so `AutoModelForSequenceClassification.from_pretrained(run/model)` and `pipeline(...)` load
# a mean-pooled student after `import pkd` (imports torch and transformers).
from pkd import pooling  # noqa: E402, F401
from pkd.errors import PkdError  # noqa: E402


def __getattr__(name: str):
    # The API modules load lazily (data, training, Accelerate).
    if name in ("finetune", "distill", "pretrain", "evaluate", "predict"):
        from pkd import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["PkdError", "finetune", "distill", "pretrain", "evaluate", "predict", "__version__"]
