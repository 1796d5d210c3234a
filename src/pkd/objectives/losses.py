"""The loss terms of Eq. (1)-(4): L = (1 - alpha) * L_CE + alpha * L_DS + beta * L_PT.

Each term is a small pure function; `pkd.config.choices` names the variants a config may
choose (`KD_FORMS`, `PT_FORMS`, `PT_CHOICES`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pkd.config.choices import KD_FORMS, PT_CHOICES, PT_FORMS
from pkd.tasks import IGNORE_LABEL


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """L_CE: cross-entropy against gold labels; MSE for regression. Examples whose label is
    IGNORE_LABEL (NaN for regression) have none and are left out of the mean; a batch without
    any gold label gives 0.

    Args:
        logits: (B, C) (any leading shape flattened to rows), or (B, 1) for regression.
        labels: (B,) class ids, or (B,) floats for regression.
    """
    if regression:
        pred, gold = logits.view(-1).float(), labels.view(-1).float()
        keep = ~torch.isnan(gold)
        return F.mse_loss(pred[keep], gold[keep]) if keep.any() else pred.sum() * 0.0
    if not (labels != IGNORE_LABEL).any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)


def ce_text(regression: bool) -> str:
    """L_CE as `ce_loss` computes it, for a plan: `CE`, or `MSE(gold)` for regression."""
    return "MSE(gold)" if regression else "CE"


def kd_variant(form: str, regression: bool) -> str:
    """Which L_DS `kd_loss` computes: "mse" for regression (no T), else the KD form."""
    return "mse" if regression else form


def kd_text(temperature: float, form: str, regression: bool) -> str:
    """L_DS as `kd_loss` computes it (`kd_variant`), for a plan, e.g. `KD(kl, x T^2, T=10)`."""
    return {
        "mse": "KD(MSE on the teacher's predictions, no T)",
        "kl": f"KD(kl, x T^2, T={temperature:g})",
        "ce": f"KD(ce, T={temperature:g})",
    }[kd_variant(form, regression)]


def pt_text(form: str, normalize: bool, states: str) -> str:
    """L_PT as `patient_loss` computes it, for a plan; `states`: what the pooling matches
    (`pkd.models.encoders.POOLED_STATES`), e.g. `PT(mean, L2-normalised [CLS])`."""
    return f"PT({form}, {'L2-normalised' if normalize else 'raw'} {states})"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    form: str = "kl",
    regression: bool = False,
) -> torch.Tensor:
    """L_DS: distillation from the teacher's soft labels at temperature T.

    Forms, for (B, C) logits, p_t = softmax(z_t / T), log q_s = log_softmax(z_s / T):
      - "kl" (default, the authors' code): KL(p_t || q_s), averaged over B * C entries
        (`KLDivLoss(reduction="mean")`), times T^2 to keep the gradient scale of CE.
      - "ce" (the paper's Eq. 2): -sum_c p_t,c log q_s,c, averaged over the batch, no T^2.
    Regression: MSE between student and teacher predictions (T unused).
    """
    variant = kd_variant(form, regression)
    if variant == "mse":
        return F.mse_loss(student_logits.view(-1).float(), teacher_logits.view(-1).float())
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.softmax(teacher_logits.float() / t, dim=-1)
    if variant == "kl":
        # sum / numel == KLDivLoss(reduction="mean"), without its deprecation warning
        return F.kl_div(log_q, p, reduction="sum") / log_q.numel() * t * t
    if variant == "ce":
        return -(p * log_q).sum(-1).mean()
    raise ValueError(f"unknown KD form {form!r}; valid: {KD_FORMS}")


def patient_loss(
    student_cls: torch.Tensor,
    teacher_cls: torch.Tensor,
    normalize: bool = True,
    form: str = "mean",
    choices: str = "concat",
) -> torch.Tensor:
    """L_PT (Eq. 4): squared distance between [CLS] states of mapped layers.

    Args:
        student_cls: (B, L, H) [CLS] states at student layers 1..M-1, or (B, C, L, H) for
            multiple choice (one [CLS] per choice).
        teacher_cls: same shape, at the mapped teacher layers I(j).
        normalize: divide each state by its L2 norm first (the paper's default).
        form: "mean" (default, the authors' `F.mse_loss`: mean over all entries, the scale
            the paper's beta grid 10..1000 was tuned for) or "sum" (the paper's Eq. 4: sum
            over layers and hidden units, mean over the compared vectors per layer: B, or
            B*C with `choices="each"`; exactly L*H times the "mean" form, L*C*H for "concat").
        choices: multiple choice only. "concat" (default, the authors' RACE code: per example
            and layer, the C choices' states joined into one C*H vector, normalised as a
            whole) or "each" (each choice's state normalised on its own). Normalised, "each"
            is exactly C times "concat" when all choices' states have equal norms, and about
            C times in general (4x for RACE): with it the paper's beta acts about C times
            stronger than it was tuned for. Without normalisation the "mean" forms are equal.
    """
    if choices not in PT_CHOICES:
        raise ValueError(f"unknown patient-loss choices form {choices!r}; valid: {PT_CHOICES}")
    if student_cls.numel() == 0:  # a 1-layer student has no intermediate layer to match
        return student_cls.new_zeros(())
    s, t = student_cls.float(), teacher_cls.float()
    if s.dim() == 4 and choices == "concat":
        # (B, C, L, H) -> (B, L, C*H): the authors' `view(bs, -1)` of each layer's states
        s, t = s.transpose(1, 2).flatten(2), t.transpose(1, 2).flatten(2)
    if normalize:
        s, t = F.normalize(s, p=2, dim=-1), F.normalize(t, p=2, dim=-1)
    if form == "mean":
        return F.mse_loss(s, t)
    if form == "sum":
        # one vector per sequence and layer: (B, [C,] L, H) has B (* C) of them per layer
        return (s - t).pow(2).sum() / (s.numel() // (s.shape[-2] * s.shape[-1]))
    raise ValueError(f"unknown patient-loss form {form!r}; valid: {PT_FORMS}")


def term_weights(alpha: float, beta: float) -> dict[str, float]:
    """The weight of each term in Eq. (5)."""
    return {"ce": 1.0 - alpha, "kd": alpha, "pt": beta}


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The loss a run trains on: each term times its weight, summed over the terms present.
    With `term_weights(alpha, beta)`, Eq. (5): (1 - alpha) * CE + alpha * KD + beta * PT."""
    return sum(weights[name] * value for name, value in terms.items())


def token_state_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """`pkd pretrain`'s hidden-state loss: per-token squared distance between (L2-normalised)
    states, a masked mean over tokens, averaged over layers. Padding never counts.

    Args:
        student: (B, L, T, H) states of L student layers (T = 1 for [CLS] only).
        teacher: the same shape, at the matched teacher layers (projected to H first when
            the widths differ).
        mask: (B, T), 1 for the tokens that count (the attention mask; all ones for [CLS]).
        normalize: divide each token's state by its L2 norm first; the distance is then
            2 - 2 cos, in [0, 4].
    """
    if student.numel() == 0:  # no layer to match (a 1-layer student's patient term)
        return student.new_zeros(())
    s, t = student.float(), teacher.float()
    if normalize:
        s, t = F.normalize(s, p=2, dim=-1), F.normalize(t, p=2, dim=-1)
    distance = (s - t).pow(2).sum(-1)  # (B, L, T)
    keep = mask.to(distance.dtype)[:, None, :]
    return (distance * keep).sum() / (keep.sum() * distance.shape[1]).clamp(min=1)


def mlm_distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft-label MLM distillation (DistilBERT's L_ce): KL(p_t || q_s) at temperature T,
    summed over the vocabulary, averaged over the masked tokens, times T^2.

    Args:
        student_logits, teacher_logits: (n, V) at the n masked tokens; n = 0 gives 0.
    """
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * t * t


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The hard MLM loss: cross-entropy against the original tokens at the n masked
    positions, (n, V) and (n,); n = 0 gives 0."""
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels)
