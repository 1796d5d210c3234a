"""Options: the choices each option takes (choices), one dataclass per concern (sections:
data, train, distill, text, pretrain) and one per run (runs), YAML in and out (files), and
the authors' presets.

Layer 1: imports the leaves only (`pkd.tasks` for task names and their defaults).
"""

from pkd.config.runs import DistillRunConfig, FinetuneRunConfig, PretrainRunConfig
from pkd.config.sections import DataConfig, DistillConfig, PretrainConfig, TextConfig, TrainConfig

__all__ = [
    "DataConfig",
    "TrainConfig",
    "DistillConfig",
    "TextConfig",
    "PretrainConfig",
    "FinetuneRunConfig",
    "DistillRunConfig",
    "PretrainRunConfig",
]
