"""Training: the one loop, its Accelerator and trackers, evaluation, checkpoints, the run log,
hooks, and a run directory's lifecycle (`rundir`).

Layer 5: imports `pkd.objectives` and everything below it.
"""
