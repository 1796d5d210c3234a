"""The task objective: Eq. (5)'s loss terms for one batch, their weights, the
teacher's signals (cached or online), and each term's gradient share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pkd.models.encoders import POOLED_STATES, layer_states, model_pooling
from pkd.objectives.losses import (
    ce_loss,
    ce_text,
    kd_loss,
    kd_text,
    patient_loss,
    pt_text,
    term_weights,
    total_loss,
)

logger = logging.getLogger(__name__)


NON_INPUTS = ("labels", "example_index", "mlm_labels")  # batch keys the model does not take


@dataclass
class Objective:
    """What the student learns from: loss terms, their weights, and the teacher's signals.

    `teacher(batch, layers)` returns teacher logits and pooled states ([CLS], or the token
    mean for a mean-pooled teacher) at the given teacher layers, from the cache or from a live
    teacher. `pooling` is how the student's states are pooled for the patient loss: the same
    as the teacher's (distill refuses a mismatch).
    """

    terms: tuple[str, ...] = ("ce",)
    alpha: float = 0.0
    beta: float = 0.0
    temperature: float = 1.0
    kd_form: str = "kl"
    pt_form: str = "mean"
    pt_normalize: bool = True
    pt_choices: str = "concat"
    pooling: str = "cls"
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (teacher layer, student layer)
    teacher: Callable | None = None
    # Trained with the student, saved in checkpoints, never in model/: a student of another
    # width maps its states to the teacher's through these (`pkd.models.projection.Projection`).
    heads: torch.nn.Module | None = None

    @classmethod
    def from_config(
        cls,
        d,
        pairs: list[tuple[int, int]],
        teacher: Callable | None = None,
        pooling: str = "cls",
        heads: torch.nn.Module | None = None,
    ):
        """The objective a `DistillConfig` asks for (terms and weights from its method);
        pooling: the student's, resolved (`pkd.models.encoders.resolve_pooling`); heads: the patient
        loss's projections for a student of another width."""
        return cls(
            terms=d.terms,
            alpha=d.alpha,
            beta=d.beta,
            temperature=d.temperature,
            kd_form=d.kd_loss,
            pt_form=d.pt_loss,
            pt_normalize=d.pt_normalize,
            pt_choices=d.pt_choices,
            pooling=pooling,
            pairs=pairs,
            teacher=teacher,
            heads=heads,
        )

    def weights(self) -> dict[str, float]:
        """Each term's weight in the total (Eq. 5)."""
        return term_weights(self.alpha, self.beta)

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. (5): the terms weighted by `weights` and summed (`total_loss`)."""
        return total_loss(terms, self.weights())

    def describe(self, regression: bool) -> str:
        """Eq. (5) as `loss_terms` computes it for this objective (the dry run's plan), e.g.
        `0.5*CE + 0.5*KD(kl, x T^2, T=10) + 100*PT(mean, L2-normalised [CLS])`."""
        text = {
            "ce": ce_text(regression),
            "kd": kd_text(self.temperature, self.kd_form, regression),
            "pt": pt_text(self.pt_form, self.pt_normalize, POOLED_STATES[self.pooling]),
        }
        w = self.weights()
        terms = [t for t in text if t == "ce" or t in self.terms]
        return " + ".join(f"{w[t]:g}*{text[t]}" for t in terms)

    def loss_terms(self, model, batch: dict, regression: bool) -> dict[str, torch.Tensor]:
        """This objective's unweighted terms for one batch (`loss_terms`)."""
        return loss_terms(model, batch, self, regression)


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in NON_INPUTS}


def loss_terms(
    model, batch: dict, objective: Objective, regression: bool
) -> dict[str, torch.Tensor]:
    """Each loss term of Eq. (5) for one batch, unweighted."""
    out = model(**model_inputs(batch), output_hidden_states="pt" in objective.terms)
    terms = {"ce": ce_loss(out.logits, batch["labels"], regression)}
    if "kd" in objective.terms:
        t_layers = [t for t, _ in objective.pairs] if "pt" in objective.terms else []
        t_logits, t_states = objective.teacher(batch, t_layers)
        terms["kd"] = kd_loss(
            out.logits,
            t_logits.to(out.logits.device),
            objective.temperature,
            objective.kd_form,
            regression,
        )
        if "pt" in objective.terms:
            s_layers = [s for _, s in objective.pairs]
            s_states = layer_states(
                out.hidden_states, batch["attention_mask"], out.logits, objective.pooling
            )[..., s_layers, :]
            if objective.heads is not None:  # another width: student H -> teacher H per layer
                s_states = objective.heads(s_states)
            terms["pt"] = patient_loss(
                s_states,
                t_states.to(s_states.device),
                objective.pt_normalize,
                objective.pt_form,
                objective.pt_choices,
            )
    return terms


def gradient_shares(model, terms: dict[str, torch.Tensor], objective) -> dict:
    """Each weighted term's share of the gradient norm on the student's parameters:
    share_k = |grad(w_k L_k)| / sum_j |grad(w_j L_j)| (the shares sum to 1), with the
    objective's weights (Eq. 5 for distillation). It tells whether a term (beta's patient
    loss) moves the student at all. Costs one extra backward per term, on the micro-batches
    of the steps `pkd.training.loop.measures_shares` picks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weights = objective.weights()
    norms = {}
    for name, value in terms.items():
        if weights[name] == 0 or not value.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(
            weights[name] * value, params, retain_graph=True, allow_unused=True
        )
        per_tensor = [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
        norms[name] = torch.linalg.vector_norm(torch.stack(per_tensor)) if per_tensor else 0.0
    norms = {k: float(v) for k, v in norms.items()}  # one host sync per term, not per tensor
    total = sum(norms.values())
    return {f"share_{k}": (v / total if total > 0 else 0.0) for k, v in norms.items()}


def cached_teacher(cache) -> Callable:
    """Teacher signals read from a `pkd.objectives.cache.TeacherCache` by example index."""
    return lambda batch, layers: cache.targets(batch["example_index"], layers)


@torch.no_grad()
def teacher_signals(
    teacher, batch: dict, layers: list[int] | None = None, pooling: str | None = "cls"
):
    """One forward pass of a frozen teacher on a batch: its output and its states at `layers`.

    Args:
        layers: teacher layers (0 = embeddings); all of them when None.
        pooling: `cls` or `mean` gives each layer's pooled state (`layer_states`), (B, [C,]
            L, H); None gives every token's state, (B, L, T, H) (`pkd pretrain`).

    Returns:
        The teacher's output (`logits`, `hidden_states`) and the states as float32.
    """
    out = teacher(**model_inputs(batch), output_hidden_states=True)
    if pooling is None:
        hidden = out.hidden_states if layers is None else [out.hidden_states[i] for i in layers]
        return out, torch.stack(list(hidden), dim=1).float()
    states = layer_states(out.hidden_states, batch["attention_mask"], out.logits, pooling)
    return out, (states if layers is None else states[..., layers, :]).float()


def online_teacher(teacher) -> Callable:
    """Teacher signals from a forward pass of the (frozen) teacher on each batch: its logits
    and pooled states at the given layers (all when None), float32 (`teacher_signals`)."""
    teacher.eval()
    teacher.requires_grad_(False)
    pooling = model_pooling(teacher.config)

    def signals(batch, layers):
        out, states = teacher_signals(teacher, batch, layers, pooling)
        return out.logits.float(), states

    return signals


def batch_examples(batch: dict) -> int:
    """Examples in a batch (multiple choice: questions, not choices)."""
    return len(batch["input_ids"])
