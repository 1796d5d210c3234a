"""Options: one dataclass per concern (data, train, distill, pretrain) and one per run, YAML in
and out, the choices each option takes, and the authors' presets.

Layer 1: imports the leaves only (`pkd.tasks` for task names and their defaults).
"""
