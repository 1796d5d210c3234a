"""The Python API: `finetune`, `distill`, `pretrain`, `evaluate`, `predict` (also as
`pkd.finetune`, ...).

Each lives in the module of its concern: `pkd.recipes.finetune`, `pkd.recipes.distill`,
`pkd.recipes.pretrain` (each a recipe of `pkd.recipes.recipe`, with its `plan_*` and `run_*`),
`pkd.recipes.inference`. The three recipes return metrics.json's content (read it typed with
`pkd.models.results.RunResult`), or with `dry_run=True` the plan (a dict; its text is
`.describe()`). Run directories are `pkd.training.rundir`'s, a run's data `pkd.data.loading`'s.
Calling them does not configure logging: the CLI does (`pkd.cli`).
"""

from pkd.recipes.distill import distill
from pkd.recipes.finetune import finetune
from pkd.recipes.inference import evaluate, predict
from pkd.recipes.pretrain import pretrain

__all__ = ["distill", "evaluate", "finetune", "predict", "pretrain"]
