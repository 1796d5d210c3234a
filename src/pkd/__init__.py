"""pkd: Patient Knowledge Distillation for BERT-family models (Sun et al., EMNLP 2019)."""

__version__ = "0.1.0"

from pkd.errors import PkdError  # noqa: E402


def __getattr__(name: str):
    # Lazy so that `import pkd` (and `pkd --help`) does not import torch.
    if name in ("finetune", "distill", "evaluate", "predict"):
        from pkd import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["PkdError", "finetune", "distill", "evaluate", "predict", "__version__"]
