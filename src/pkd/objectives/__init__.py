"""Objectives: what a student learns from. The loss terms of Eq. (1)-(5), layer maps, the task
objective with its teacher signals (cached or online), the teacher cache, and the general
(pretraining) distillation objective of `pkd pretrain`.

Layer 4: imports `pkd.models`, `pkd.config`, `pkd.data` and the leaves.
"""
