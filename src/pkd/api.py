"""The Python API: `finetune`, `distill`, `pretrain`, `evaluate`, `predict` (also as
`pkd.finetune`, ...).

Each lives in the module of its concern: `pkd.finetuning`, `pkd.distillation` (with
`plan_distill`), `pkd.pretraining` (with `plan_pretrain`), `pkd.inference`; run directories
are `pkd.rundir`'s, a run's data `pkd.data`'s. Calling them does not configure logging: the CLI does (`pkd.cli`).
"""

from pkd.distillation import distill
from pkd.finetuning import finetune
from pkd.inference import evaluate, predict
from pkd.pretraining import pretrain

__all__ = ["distill", "evaluate", "finetune", "predict", "pretrain"]
