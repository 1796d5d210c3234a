"""Learned projections from a student's width to its teacher's (TinyBERT's W_h).

A student of another hidden size cannot be compared with its teacher state by state: each
matched layer gets its own linear map, student H_s -> teacher H_t, trained with the student.
The maps belong to the loss, not to the student: they are saved in checkpoints (for resume)
and never in the student's `model/`. `pkd pretrain` and `pkd distill` share this class.
"""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """One `nn.Linear(student_hidden, teacher_hidden)` per matched layer."""

    def __init__(self, layers: int, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(layers))

    def forward(self, states: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """States with the matched layers along `dim` and H_s last -> the same with H_t.

        Args:
            states: e.g. (B, L, H_s) pooled states, (B, C, L, H_s) multiple choice, or
                (B, L, T, H_s) token states with dim=1; L must equal the number of maps.
        """
        layers = states.unbind(dim)
        if len(layers) != len(self.maps):
            raise ValueError(f"{len(layers)} layers for {len(self.maps)} projections")
        return torch.stack([m(x) for m, x in zip(self.maps, layers, strict=True)], dim)
