"""Recipes: `finetune`, `distill`, `pretrain`, `evaluate`/`predict`, each with its dry run
(`dryrun`); the paper's table (`compare`) and the Optuna search (`sweep`).

Layer 7: imports `pkd.deploy`, `pkd.training` and everything below them.
"""
