"""The Python API: `finetune`, `distill`, `pretrain`, `evaluate`, `predict` (also as
`pkd.finetune`, ...).

Each lives in the module of its concern: `pkd.recipes.finetune`, `pkd.recipes.distill` (with
`plan_distill`), `pkd.recipes.pretrain` (with `plan_pretrain`), `pkd.recipes.inference`; run directories
are `pkd.training.rundir`'s, a run's data `pkd.data.loading`'s. Calling them does not configure logging: the CLI does (`pkd.cli`).
"""

from pkd.recipes.distill import distill
from pkd.recipes.finetune import finetune
from pkd.recipes.inference import evaluate, predict
from pkd.recipes.pretrain import pretrain

__all__ = ["distill", "evaluate", "finetune", "predict", "pretrain"]
