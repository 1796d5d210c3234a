"""General (task-agnostic) distillation: the objective `pkd pretrain` trains with.

On unlabelled text there are no labels and no logits, so the student learns from the
teacher's states and, where the teacher has one, its MLM head:

    L = beta * PT + top_weight * TOP + mlm_distill_weight * MLM_KD + mlm_weight * MLM

- PT: the patient loss over the mapped layers (`pkd.objectives.mapping`: student layer j <-> teacher
  layer I(j), j = 1..M-1), on [CLS], on every token, or on each layer's token mean
  (`--pt-tokens cls|all|mean`): per token the squared
  distance between the L2-normalised states, a masked mean over tokens (padding never
  counts), averaged over layers (`pkd.objectives.losses.token_state_loss`);
- TOP: the same distance between the top layers (student M <-> teacher N);
- MLM_KD: soft-label MLM distillation at temperature T on the masked tokens (DistilBERT);
- MLM: the hard MLM loss on the masked tokens.

A student of another width compares through a learned projection per matched layer
(`pkd.models.projection.Projection`, student H -> teacher H). The projections and the student's MLM
head are the objective's `heads` modules: trained with the student and kept in checkpoints,
never in its `model/`. `GeneralObjective` has the interface `pkd.training.loop.training_step` calls
(`loss_terms`, `weights`, `total`, `heads`), so pretraining runs through the one training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from transformers.activations import ACT2FN

from pkd.errors import PkdError
from pkd.models.pooling import mean_pool
from pkd.models.projection import Projection
from pkd.objectives.losses import mlm_distill_loss, mlm_loss, token_state_loss, total_loss
from pkd.objectives.objective import batch_examples, model_inputs, teacher_signals
from pkd.tasks import IGNORE_LABEL

CLS_TOKENS = 1  # --pt-tokens cls: only the first token's state is compared
CACHE_NAME = "pretrain"  # the teacher cache's directory prefix (`pkd.objectives.cache`)
EMBEDDING_TERMS = (
    "emb",
    "cos",
    "sim",
)  # terms on the sentence embedding (`pkd.objectives.embedding`)


@dataclass
class GeneralObjective:
    """The loss terms of `pkd pretrain`, their weights, and the teacher's signals.

    `teacher(batch, layers)` returns a dict: `states` (B, len(layers), T, H_t) of the teacher
    layers asked for (T = 1 for [CLS]), and with MLM terms `mlm_logits` (n, V) at the
    batch's n masked tokens. `pairs` map teacher to student layers (the patient term); `top`
    is (N, M). `heads`: the run's `GeneralHeads` (projection, MLM head), or None.
    """

    weights_by_term: dict[str, float]
    pairs: list[tuple[int, int]]
    top: tuple[int, int]
    tokens: str = "all"
    normalize: bool = True
    temperature: float = 2.0
    teacher: Callable | None = None
    heads: nn.Module | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(self.weights_by_term)

    @property
    def beta(self) -> float:
        """The patient term's weight (named in `pkd.training.hooks.PatientShareCheck`'s warning)."""
        return self.weights_by_term.get("pt", 0.0)

    @property
    def uses_mlm(self) -> bool:
        return "mlm_kd" in self.weights_by_term or "mlm" in self.weights_by_term

    def weights(self) -> dict[str, float]:
        return dict(self.weights_by_term)

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the terms (`total_loss`)."""
        return total_loss(terms, self.weights_by_term)

    def teacher_layers(self) -> list[int]:
        return [t for t, _ in self.pairs] + [self.top[0]]

    def loss_terms(self, model, batch: dict, regression: bool = False) -> dict[str, torch.Tensor]:
        """Each weighted term for one batch, unweighted (`regression`: unused)."""
        out = model(**model_inputs(batch), output_hidden_states=True)
        signals = self.teacher(batch, self.teacher_layers())
        student = [j for _, j in self.pairs] + [self.top[1]]
        states = torch.stack([out.hidden_states[j] for j in student], dim=1)  # (B, L, T, H_s)
        states, mask = compared_tokens(states, batch["attention_mask"], self.tokens)
        pooled = self.sentence_states(out, batch)  # (B, H_s), or None: no embedding terms
        logits = None
        if self.heads is not None:  # one call per step: under DDP its forward syncs gradients
            last = embeddings = None
            if self.uses_mlm:
                last = out.hidden_states[-1][batch["mlm_labels"] != IGNORE_LABEL]
                embeddings = getattr(model, "module", model).get_input_embeddings().weight
            # (B, L, T, H_t), (n, V), (B, H_t)
            states, logits, pooled = self.heads(states, last, embeddings, pooled)
        target = signals["states"].to(states.device)
        terms = self.embedding_terms(pooled, signals)
        if "pt" in self.weights_by_term:
            terms["pt"] = token_state_loss(states[:, :-1], target[:, :-1], mask, self.normalize)
        if "top" in self.weights_by_term:
            terms["top"] = token_state_loss(states[:, -1:], target[:, -1:], mask, self.normalize)
        if self.uses_mlm:
            terms.update(self.mlm_terms(logits, batch, signals))
        return terms

    def sentence_states(self, out, batch: dict) -> torch.Tensor | None:
        """The student's pooled sentence states, for embedding terms (`EmbeddingObjective`)."""
        return None

    def embedding_terms(self, pooled, signals: dict) -> dict[str, torch.Tensor]:
        """The terms on the sentence embedding (`EmbeddingObjective`); none here."""
        return {}

    def mlm_terms(self, logits: torch.Tensor, batch: dict, signals: dict) -> dict:
        """The MLM terms from the student's (n, V) logits at the batch's n masked tokens."""
        terms = {}
        if "mlm_kd" in self.weights_by_term:
            teacher_logits = signals["mlm_logits"].to(logits.device)
            terms["mlm_kd"] = mlm_distill_loss(logits, teacher_logits, self.temperature)
        if "mlm" in self.weights_by_term:
            labels = batch["mlm_labels"]
            terms["mlm"] = mlm_loss(logits, labels[labels != IGNORE_LABEL])
        return terms


def compared_tokens(states: torch.Tensor, mask: torch.Tensor, tokens: str):
    """The (B, L, T, H) states and (B, T) mask as `--pt-tokens` compares them: every token
    (`all`), the first one (`cls`), or each layer's masked token mean as one token (`mean`)."""
    if tokens == "cls":
        return states[:, :, :CLS_TOKENS], mask[:, :CLS_TOKENS]
    if tokens == "mean":
        return mean_pool(states, mask[:, None])[:, :, None], mask.new_ones(len(mask), 1)
    return states, mask


class GeneralHeads(nn.Module):
    """The objective's trained modules: `projection` (student H -> teacher H for each matched
    layer and the top one, another width), `mlm_head` (MLM terms) and `dense` (the sentence
    embedding's student H -> teacher H, `pkd.objectives.embedding`); any may be None.
    One forward per step, so that under DDP their gradients are synchronised."""

    def __init__(
        self,
        projection: Projection | None,
        mlm_head: MlmHead | None,
        dense: nn.Linear | None = None,
    ):
        super().__init__()
        self.projection, self.mlm_head = projection, mlm_head
        if dense is not None:  # registered only when there is one: the checkpoints' keys
            self.dense = dense

    def forward(self, states, masked_last=None, embeddings=None, pooled=None):
        """(B, L, T, H_s) states -> (B, L, T, H_t) (as they are without a projection), the
        (n, V) MLM logits of the n masked tokens' last states (None without a head), and
        the (B, H_s) pooled sentence states through `dense` (as they are without one)."""
        if self.projection is not None:
            states = self.projection(states, dim=1)
        logits = None
        if self.mlm_head is not None and masked_last is not None:
            logits = self.mlm_head(masked_last, embeddings)
        if pooled is not None and hasattr(self, "dense"):
            pooled = self.dense(pooled)
        return states, logits, pooled


def build_heads(
    options, pairs: list, student_config, teacher_config, teacher_mlm=None, weights=None
):
    """`GeneralHeads` for a run (seed first), or None when no module is needed: a
    projection when the widths differ and a term compares states (none with MLM terms
    alone: DDP refuses a trained module no loss reads); an MLM head with MLM terms, at the
    student's width, a copy of `teacher_mlm`'s where the widths are equal; a dense layer
    when the widths differ and a term compares sentence embeddings. `weights`: the
    objective's (default: `options.weights`, the general objective's)."""
    weights = options.weights if weights is None else weights
    hs, ht = student_config.hidden_size, teacher_config.hidden_size
    states = "pt" in weights or "top" in weights  # a term compares states
    projection = Projection(len(pairs) + 1, hs, ht) if hs != ht and states else None
    sentence = any(k in weights for k in EMBEDDING_TERMS)
    dense = nn.Linear(hs, ht) if hs != ht and sentence else None
    head = None
    if options.uses_mlm:
        c = student_config
        head = MlmHead(hs, c.vocab_size, c.hidden_act, c.layer_norm_eps)
        if teacher_mlm is not None and hs == ht:
            head.copy_from(teacher_mlm)
    if projection is None and head is None and dense is None:
        return None
    return GeneralHeads(projection, head, dense)


class MlmHead(nn.Module):
    """The student's MLM head, BERT's shape: dense -> activation -> LayerNorm -> logits over
    the vocabulary through the student's own word embeddings (tied) plus a bias."""

    def __init__(self, hidden: int, vocab: int, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[act] if isinstance(act, str) else act
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # named as BERT's: no weight decay
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, states: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, H) states and (V, H) word embeddings -> (n, V) logits."""
        h = self.LayerNorm(self.act(self.dense(states)))
        return nn.functional.linear(h, embeddings, self.bias)

    @torch.no_grad()
    def copy_from(self, teacher_mlm) -> None:
        """Start from the teacher's MLM head (a student of its width): its transform (the
        first H x H dense layer and LayerNorm of the head) and its output bias.

        Raises:
            PkdError: the head is not of BERT's shape.
        """
        head = mlm_head_module(teacher_mlm)
        dense = [
            m
            for m in head.modules()
            if isinstance(m, nn.Linear) and m.weight.shape[0] == m.weight.shape[1]
        ]
        norm = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
        out = teacher_mlm.get_output_embeddings()
        if not dense or not norm or getattr(out, "bias", None) is None:
            raise PkdError(
                f"--mlm-distill-weight: the teacher's MLM head ({type(head).__name__}) is not "
                "BERT's dense/LayerNorm/decoder shape; pkd cannot start the student's from it"
            )
        self.dense.load_state_dict(dense[0].state_dict())
        self.LayerNorm.load_state_dict(norm[0].state_dict())
        self.bias.copy_(out.bias)


def mlm_head_module(teacher_mlm) -> nn.Module:
    """The MLM head of an `AutoModelForMaskedLM`: its one child besides the encoder."""
    heads = [m for n, m in teacher_mlm.named_children() if n != teacher_mlm.base_model_prefix]
    if len(heads) != 1:
        raise PkdError(
            f"--mlm-distill-weight: cannot find the MLM head of {type(teacher_mlm).__name__}"
        )
    return heads[0]


def freeze_pooler(student) -> None:
    """Freeze the student's pooler, if it has one: no pretraining loss reads it, and DDP
    stops at the second step on a trained parameter that gets no gradient. It stays in the
    model (model/ loads as before; a `pkd distill` classifier reads [CLS] through it) with
    the weights it started with, as a single process, where it got no gradient, left it."""
    pooler = getattr(student, "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)


def online_signals(teacher, tokens: str, mlm: bool, sentence: Callable | None = None) -> Callable:
    """Teacher signals from a forward pass per batch. `teacher`: the encoder, or with `mlm`
    an `AutoModelForMaskedLM` whose head gives the masked tokens' logits. `sentence`: the
    teacher's sentence embedding of its last states and mask (`embedding`, (B, H)), if any."""
    encoder = teacher.base_model if mlm else teacher
    head = mlm_head_module(teacher) if mlm else None

    @torch.no_grad()
    def signals(batch: dict, layers: list[int]) -> dict:
        out, states = teacher_signals(encoder, batch, layers, pooling=None)  # (B, L, T, H)
        result = {"states": compared_tokens(states, batch["attention_mask"], tokens)[0]}
        if head is not None:
            masked = batch["mlm_labels"] != IGNORE_LABEL
            result["mlm_logits"] = head(out.hidden_states[-1][masked]).float()
        if sentence is not None:
            last = out.hidden_states[-1].float()
            result["embedding"] = sentence(last, batch["attention_mask"])
        return result

    return signals


def cached_signals(cache) -> Callable:
    """The teacher's pooled states (and sentence embeddings, `CacheableTeacher`'s logits) read
    from a `pkd.objectives.cache.TeacherCache` by example index."""

    def signals(batch: dict, layers: list[int]) -> dict:
        logits, states = cache.targets(batch["example_index"], layers)  # (B, E), (B, L, H)
        return {"states": states[:, :, None, :], "embedding": logits}

    return signals


class CacheableTeacher(nn.Module):
    """A bare encoder as `pkd.objectives.cache` runs teachers: outputs with `logits` and
    `hidden_states`; the cache keeps the first token of every layer's states.

    `tokens` `cls`: the states as they are ([CLS] gets cached); `mean`: each layer's masked
    token mean as its only token. `sentence`: the logits are the teacher's sentence
    embedding (B, H), else one zero per example (there are none)."""

    def __init__(self, encoder, tokens: str = "cls", sentence: Callable | None = None):
        super().__init__()
        self.encoder, self.tokens, self.sentence = encoder, tokens, sentence
        self.config = encoder.config

    @property
    def base_model(self):
        return self.encoder

    def forward(self, **inputs):
        out = self.encoder(**inputs)
        hidden, mask = out.hidden_states, inputs["attention_mask"]
        if self.sentence is not None:
            logits = self.sentence(hidden[-1].float(), mask)
        else:
            logits = hidden[0].new_zeros(len(inputs["input_ids"]), 1)
        if self.tokens == "mean":
            hidden = tuple(mean_pool(h, mask)[:, None] for h in hidden)
        return SimpleNamespace(logits=logits, hidden_states=hidden)


def heldout_score(objective: GeneralObjective) -> Callable:
    """`pkd.training.evaluation.Evaluation.score` for pretraining: the objective's weighted loss and each
    term on a held-out loader (mean per example over all processes), in eval mode."""

    @torch.no_grad()
    def score(model, loader, accelerator) -> dict[str, float]:
        model.eval()
        names = list(objective.weights_by_term)
        sums = torch.zeros(len(names) + 2, device=accelerator.device)
        for batch in loader:
            terms = objective.loss_terms(model, batch)
            n = batch_examples(batch)
            total = objective.total(terms)
            values = torch.stack([total, *(terms[k] for k in names)]).float() * n
            sums += torch.cat([values, values.new_tensor([n])])
        model.train()
        sums = accelerator.reduce(sums, "sum").cpu()
        count = max(float(sums[-1]), 1.0)
        return {k: float(v) / count for k, v in zip(["loss", *names], sums[:-1], strict=True)}

    return score
