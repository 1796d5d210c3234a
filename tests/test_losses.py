"""Loss terms of Eq. (5) against values worked out by hand on tiny tensors."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from pkd.config.choices import KD_FORMS, PT_FORMS
from pkd.objectives.losses import ce_loss, kd_loss, patient_loss, term_weights, total_loss

LN2, LN3 = math.log(2), math.log(3)


def close(x: torch.Tensor, value: float, tol: float = 1e-6) -> bool:
    return x.dim() == 0 and abs(x.item() - value) < tol


# ---------------------------------------------------------------------------------------------
# L_CE


def test_ce_loss_by_hand():
    # row 0: logits (0, 0)   -> softmax (1/2, 1/2), gold 0: -log(1/2) = ln 2
    # row 1: logits (0, ln3) -> softmax (1/4, 3/4), gold 1: -log(3/4) = ln(4/3)
    # mean over the batch: (ln 2 + ln 4/3) / 2 = ln(8/3) / 2 = 0.490415
    logits = torch.tensor([[0.0, 0.0], [0.0, LN3]])
    labels = torch.tensor([0, 1])
    assert close(ce_loss(logits, labels), math.log(8 / 3) / 2)
    # wrong gold on row 1: -log(1/4) = ln 4 -> (ln 2 + ln 4) / 2 = 1.5 ln 2
    assert close(ce_loss(logits, torch.tensor([0, 0])), 1.5 * LN2)


def test_ce_loss_regression_is_mse():
    # predictions (1, 3), gold (0, 1): ((1-0)^2 + (3-1)^2) / 2 = (1 + 4) / 2 = 2.5
    logits = torch.tensor([[1.0], [3.0]])
    assert close(ce_loss(logits, torch.tensor([0.0, 1.0]), regression=True), 2.5)


def test_ce_loss_half_precision_logits_give_float32():
    logits = torch.tensor([[0.0, 0.0], [0.0, LN3]], dtype=torch.float16)
    out = ce_loss(logits, torch.tensor([0, 1]))
    assert out.dtype == torch.float32
    assert close(out, math.log(8 / 3) / 2, 1e-3)


# ---------------------------------------------------------------------------------------------
# L_DS

# T = 2. Teacher logits (2 ln3, 0) and (0, 0); student (0, 0) and (0, 2 ln3).
# Divided by T: teacher (ln3, 0) -> p0 = (3/4, 1/4); (0, 0) -> p1 = (1/2, 1/2)
#               student (0, 0) -> q0 = (1/2, 1/2); (0, ln3) -> q1 = (1/4, 3/4)
T = 2.0
TEACHER = torch.tensor([[2 * LN3, 0.0], [0.0, 0.0]])
STUDENT = torch.tensor([[0.0, 0.0], [0.0, 2 * LN3]])
# KL(p0||q0) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
# KL(p1||q1) = 1/2 ln 2    + 1/2 ln(2/3) = 0.143841
KL0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
KL1 = 0.5 * LN2 + 0.5 * math.log(2 / 3)
# cross-entropies -sum_c p_c log q_c:
# row 0: -(3/4 + 1/4) log(1/2)          = ln 2
# row 1: -(1/2 log(1/4) + 1/2 log(3/4)) = 1/2 ln(16/3)
CE0, CE1 = LN2, 0.5 * math.log(16 / 3)


def test_kd_kl_form_by_hand():
    # KLDivLoss(reduction="mean") averages over B * C = 4 entries, then times T^2 = 4:
    # (KL0 + KL1) / 4 * 4 = KL0 + KL1 = 0.274653
    out = kd_loss(STUDENT, TEACHER, T, form="kl")
    assert close(out, (KL0 + KL1) / 4 * T**2)
    assert close(out, 0.274653, 1e-6)


def test_kd_kl_form_is_authors_kldivloss_times_t2():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    for temp in (1.0, 5.0, 10.0, 20.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that "mean" is not "batchmean"
            ref = torch.nn.KLDivLoss(reduction="mean")(
                F.log_softmax(s / temp, -1), F.softmax(t / temp, -1)
            )
        assert torch.allclose(kd_loss(s, t, temp, "kl"), ref * temp**2, atol=1e-6)


def test_kd_ce_form_by_hand():
    # soft-target cross-entropy averaged over the batch, no T^2: (ln 2 + 1/2 ln 16/3) / 2
    # = (0.693147 + 0.836988) / 2 = 0.765068
    out = kd_loss(STUDENT, TEACHER, T, form="ce")
    assert close(out, (CE0 + CE1) / 2)
    assert close(out, 0.765068, 1e-6)


def test_kd_forms_differ_by_teacher_entropy_and_scale():
    # CE(p, q) = H(p) + KL(p||q), per row; "kl" = mean_rows(KL) * T^2 / C
    torch.manual_seed(1)
    s, t, temp = torch.randn(6, 4), torch.randn(6, 4), 5.0
    p = F.softmax(t / temp, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    kl = kd_loss(s, t, temp, "kl")
    ce = kd_loss(s, t, temp, "ce")
    assert torch.allclose(kl, (ce - entropy) * temp**2 / 4, atol=1e-6)


def test_kd_is_zero_when_student_matches_teacher():
    t = torch.tensor([[1.0, -2.0, 0.5]])
    assert close(kd_loss(t.clone(), t, 10.0, "kl"), 0.0)


def test_kd_kl_gradient_keeps_ce_scale():
    # d/dz_s of KL(p||q) at temperature T is (q - p) / T per row; T^2 cancels the 1/T shrink
    # up to the mean over B*C: grad = (q - p) * T / (B * C)
    s = STUDENT.clone().requires_grad_(True)
    kd_loss(s, TEACHER, T, "kl").backward()
    p = F.softmax(TEACHER / T, -1)
    q = F.softmax(STUDENT / T, -1)
    assert torch.allclose(s.grad, (q - p) * T / 4, atol=1e-6)


def test_kd_regression_is_mse_to_teacher():
    # (1.5 - 1)^2 + (0 - 2)^2 = 0.25 + 4 -> / 2 = 2.125; the temperature is unused
    s, t = torch.tensor([[1.5], [0.0]]), torch.tensor([[1.0], [2.0]])
    for temp in (1.0, 10.0):
        assert close(kd_loss(s, t, temp, regression=True), 2.125)


def test_kd_unknown_form():
    with pytest.raises(ValueError, match="unknown KD form 'js'"):
        kd_loss(STUDENT, TEACHER, T, form="js")
    assert KD_FORMS[0] == "kl"  # the T^2-scaled form is the default


# ---------------------------------------------------------------------------------------------
# L_PT

# B = 2, L = 1, H = 2.
# example 0: s = (3, 4) -> (0.6, 0.8); t = (4, 3) -> (0.8, 0.6); diff (-0.2, 0.2): 0.08
# example 1: s = (1, 0) -> (1, 0);     t = (0, 2) -> (0, 1);     diff (1, -1):     2
# normalised: sum of squares 2.08; "mean" / (B*L*H = 4) = 0.52; "sum" / B = 1.04
# raw:        diffs (-1, 1) -> 2 and (1, -2) -> 5: 7; "mean" 7/4 = 1.75; "sum" 7/2 = 3.5
S_CLS = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
T_CLS = torch.tensor([[[4.0, 3.0]], [[0.0, 2.0]]])


def test_patient_loss_by_hand():
    assert close(patient_loss(S_CLS, T_CLS), 0.52)
    assert close(patient_loss(S_CLS, T_CLS, normalize=True, form="sum"), 1.04)
    assert close(patient_loss(S_CLS, T_CLS, normalize=False, form="mean"), 1.75)
    assert close(patient_loss(S_CLS, T_CLS, normalize=False, form="sum"), 3.5)
    assert PT_FORMS[0] == "mean"  # the scale the paper's beta grid was tuned for


def test_patient_loss_normalised_ignores_scale():
    torch.manual_seed(2)
    s, t = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    assert torch.allclose(patient_loss(s * 7.0, t * 0.1), patient_loss(s, t), atol=1e-6)
    assert not torch.allclose(
        patient_loss(s * 7.0, t, normalize=False), patient_loss(s, t, normalize=False)
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_patient_loss_sum_is_mean_times_layers_times_hidden(normalize):
    torch.manual_seed(3)
    b, layers, h = 4, 3, 16
    s, t = torch.randn(b, layers, h), torch.randn(b, layers, h)
    mean = patient_loss(s, t, normalize, "mean")
    total = patient_loss(s, t, normalize, "sum")
    assert torch.allclose(total, mean * layers * h, rtol=1e-5)


def test_patient_loss_multiple_choice_each():
    # (B, C, L, H) = (2, 4, 3, 8), choices="each": each choice is its own sequence with its
    # own [CLS], normalised on its own
    torch.manual_seed(4)
    b, c, layers, h = 2, 4, 3, 8
    s, t = torch.randn(b, c, layers, h), torch.randn(b, c, layers, h)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    sq = (sn - tn).pow(2)
    mean = patient_loss(s, t, choices="each")
    assert close(mean, sq.mean().item(), 1e-6)
    # same as treating the B*C sequences as a classification batch
    flat = patient_loss(s.view(b * c, layers, h), t.view(b * c, layers, h))
    assert torch.allclose(mean, flat)
    total = patient_loss(s, t, form="sum", choices="each")
    assert close(total, sq.sum().item() / (b * c), 1e-5)
    assert torch.allclose(total, mean * layers * h, rtol=1e-5)


def concat_by_hand(s: torch.Tensor, t: torch.Tensor, normalize: bool = True) -> tuple[float, float]:
    """The authors' RACE patient loss with plain loops: per example and layer, the choices'
    [CLS] states joined into one vector (their `view(bs, -1)`), divided by its L2 norm;
    returns (mean over all entries, sum / examples)."""
    b, c, layers, h = s.shape
    total = 0.0
    for i in range(b):
        for j in range(layers):
            u = [s[i, k, j, d].item() for k in range(c) for d in range(h)]
            v = [t[i, k, j, d].item() for k in range(c) for d in range(h)]
            if normalize:
                nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
                u, v = [x / nu for x in u], [x / nv for x in v]
            total += sum((x - y) ** 2 for x, y in zip(u, v, strict=True))
    return total / (b * layers * c * h), total / b


def test_patient_loss_multiple_choice_concat_is_the_authors_scale():
    """Multiple choice defaults to the authors' RACE form: one C*H vector per example and
    layer. Normalised per choice instead, the loss is about C = 4 times larger."""
    torch.manual_seed(6)
    b, c, layers, h = 3, 4, 2, 8
    s, t = torch.randn(b, c, layers, h), torch.randn(b, c, layers, h)
    mean, total = concat_by_hand(s, t)
    assert close(patient_loss(s, t), mean, 1e-6)  # the default
    assert close(patient_loss(s, t, choices="concat"), mean, 1e-6)
    assert close(patient_loss(s, t, form="sum"), total, 1e-5)
    raw_mean, raw_total = concat_by_hand(s, t, normalize=False)
    assert close(patient_loss(s, t, normalize=False), raw_mean, 1e-5)
    assert close(patient_loss(s, t, normalize=False, form="sum"), raw_total, 1e-4)

    each = patient_loss(s, t, choices="each").item()
    assert 3.0 < each / mean < 5.0  # about C: random states have unequal norms per choice
    # choices' states with equal norms: each choice is 1/sqrt(C) of the joined unit vector,
    # so the per-choice form is exactly C times the authors'
    s1, t1 = F.normalize(s, dim=-1) * 3.0, F.normalize(t, dim=-1) * 0.5
    ratio = patient_loss(s1, t1, choices="each") / patient_loss(s1, t1)
    assert close(ratio, c, 1e-5)
    # unnormalised, both read the same entries: the same mean
    assert close(patient_loss(s, t, normalize=False, choices="each"), raw_mean, 1e-5)
    # a classification batch (B, L, H) has no choices: both settings agree
    x, y = s[:, 0], t[:, 0]
    assert torch.equal(patient_loss(x, y, choices="each"), patient_loss(x, y))


def test_patient_loss_unknown_choices_form():
    with pytest.raises(ValueError, match="unknown patient-loss choices form 'avg'"):
        patient_loss(S_CLS, T_CLS, choices="avg")


def test_patient_loss_zero_layers_is_zero():
    # a 1-layer student has no intermediate layer: (B, 0, H)
    for form in PT_FORMS:
        out = patient_loss(torch.zeros(4, 0, 32), torch.zeros(4, 0, 32), form=form)
        assert out.shape == () and out.item() == 0.0


def test_patient_loss_unknown_form():
    with pytest.raises(ValueError, match="unknown patient-loss form 'max'"):
        patient_loss(S_CLS, T_CLS, form="max")


def test_patient_loss_gradient_is_the_analytic_one():
    """d/ds of mean((s/|s| - t/|t|)^2) over n entries: with u = s/|s| and g = 2 (u - t^) / n,
    the gradient is (g - (g . u) u) / |s| (the part of g across u, over the norm): it reaches
    the student, and a small step against it lowers the loss."""
    s = S_CLS.clone().requires_grad_(True)
    loss = patient_loss(s, T_CLS)
    loss.backward()
    norm = S_CLS.norm(dim=-1, keepdim=True)
    u, t = S_CLS / norm, T_CLS / T_CLS.norm(dim=-1, keepdim=True)
    g = 2 * (u - t) / S_CLS.numel()
    expected = (g - (g * u).sum(-1, keepdim=True) * u) / norm
    assert torch.allclose(s.grad, expected, rtol=1e-4, atol=1e-9)
    step = 1e-2 / s.grad.norm()
    lower = patient_loss(S_CLS - step * s.grad, T_CLS)
    assert lower < loss
    # to first order the drop is the step's length times |grad|
    drop = 1e-2 * float(s.grad.norm())
    assert close(loss.detach() - lower, drop, 0.01 * drop)


def test_paper_beta_grid_keeps_pt_comparable_to_ce():
    """With the "mean" form, beta in {10, 100, 500, 1000} stays on the scale of CE.

    For unit vectors u, v: ||u - v||^2 = 2 - 2 u.v is in [0, 4], so the "mean" form (over
    B*L*H entries) is at most 4 / H and, for independent random directions in H = 384
    dimensions (u.v ~ 0 +- 1/sqrt(H)), about 2 / H. beta * pt <= 4 * beta / H = 10.4 at
    beta = 1000 whatever the states, and about 2 * 1000 / 384 = 5.2 for unrelated ones:
    the order of a 2-class CE at initialisation (ln 2 = 0.69) to a 10-class one (2.3).
    Real [CLS] states of related models are far closer than random ones, so smaller still.
    The "sum" form (Eq. 4 read literally) is H = 384 times larger per layer: at beta = 100
    it is about 100 * 2 * L = 400 for L = 2, which swamps CE.
    """
    torch.manual_seed(5)
    b, layers, h = 32, 2, 384  # a 3-layer MiniLM student: layers 1, 2 matched
    s, t = torch.randn(b, layers, h), torch.randn(b, layers, h)
    pt = patient_loss(s, t)
    assert abs(pt.item() - 2 / h) < 0.1 * 2 / h  # ~2/H for unrelated directions
    for beta in (10, 100, 500, 1000):
        assert beta * pt.item() <= 4 * beta / h + 1e-6  # the hard bound
    assert 1000 * pt.item() < 10
    assert 10 * pt.item() < 0.1
    # antipodal states: the worst case the mean form can reach
    worst = patient_loss(s, -s)
    assert close(worst, 4 / h, 1e-6)
    assert 1000 * worst.item() < 10.5
    # the sum form at beta = 100 is L*H (here H per layer) times the mean form
    pt_sum = patient_loss(s, t, form="sum")
    assert torch.allclose(pt_sum, pt * layers * h, rtol=1e-5)
    assert 100 * pt_sum.item() > 350  # ~400: hundreds of times a CE of ~0.7


# ---------------------------------------------------------------------------------------------
# L_PKD


def test_total_loss_weighting():
    terms = {"ce": torch.tensor(1.0), "kd": torch.tensor(2.0), "pt": torch.tensor(3.0)}
    # (1 - 0.3) * 1 + 0.3 * 2 + 10 * 3 = 0.7 + 0.6 + 30 = 31.3
    assert close(total_loss(terms, term_weights(0.3, 10.0)), 31.3, 1e-5)
    # KD only: (1 - 0.5) * 1 + 0.5 * 2 = 1.5 (beta unused without a PT term)
    kd_terms = {"ce": terms["ce"], "kd": terms["kd"]}
    assert close(total_loss(kd_terms, term_weights(0.5, 100.0)), 1.5)
    # FT: alpha = beta = 0 -> CE
    assert close(total_loss({"ce": terms["ce"]}, term_weights(0.0, 0.0)), 1.0)
    # alpha = 1: no CE at all
    assert close(total_loss(terms, term_weights(1.0, 0.0)), 2.0)


def test_total_loss_backpropagates_each_term():
    w = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    terms = {"ce": w[0] * 2, "kd": w[1] * 3, "pt": w[2] * 5}
    total_loss(terms, term_weights(0.2, 100.0)).backward()
    # d/dw = ((1 - 0.2) * 2, 0.2 * 3, 100 * 5)
    assert torch.allclose(w.grad, torch.tensor([1.6, 0.6, 500.0]))
