"""Recipes: `finetune`, `distill` (its checks in `distill_checks`), `pretrain`, each in the one
shape of `recipe` (plan -> dry run or train -> metrics.json) with a Plan that describes its dry
run (the shared parts in `dryrun`); `evaluate`/`predict`; the paper's table (`compare`, with
`compare_plan` and `compare_report`) and the Optuna search (`sweep`).

Layer 7: imports `pkd.deploy`, `pkd.training` and everything below them.
"""
