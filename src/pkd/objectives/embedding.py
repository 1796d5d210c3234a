"""The embedding objective: patient distillation of a sentence-embedding model (`pkd pretrain`
of a sentence-transformers teacher, or `--objective embedding`).

A sentence-transformers model turns its last layer's token states h_t into one vector: its
Pooling module (the masked token mean, or [CLS]), then, when it has one, a Normalize module:

    e = normalize(pool(h))        (`pkd.models.sentence_transformers.SentenceHead`; a narrower student: e = normalize(W pool(h) + b))

The student learns the teacher's embedding e_T with its own e_S, on top of the general
objective's patient terms (`pkd.objectives.pretraining`):

    L = beta * PT + top_weight * TOP + embedding_weight * EMB + cosine_weight * COS
        + similarity_weight * SIM

- EMB = mean_b |e_S,b - e_T,b|^2: the squared distance between the sentence embeddings (the
  batch mean). sentence-transformers' `MSELoss` is EMB / H (nn.MSELoss averages over the H
  dimensions too): the same term, H times the gradient.
- COS = mean_b (1 - cos(e_S,b, e_T,b)).
- SIM = mean_{a,b} (cos(e_S,a, e_S,b) - cos(e_T,a, e_T,b))^2: the in-batch similarity
  matrices, B x B, the teacher's similarity structure within the batch.
- PT, TOP: the patient terms (`--pt-tokens cls|all|mean`; `mean` compares each layer's token
  mean, the states an embedding model pools), through learned projections for another width.

A student of another width maps its pooled states to the teacher's width through a learned
dense layer W, b (`GeneralHeads.dense`); it is part of the embedding model and written as its
`2_Dense` module (`pkd.models.sentence_transformers`). With the teacher cache, the cache keeps
e_T per sentence (its `logits.npy`, (n, H)) and each layer's pooled state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pkd.data.metrics import compute_metrics
from pkd.models.sentence_transformers import SentenceHead
from pkd.objectives.objective import model_inputs
from pkd.objectives.pretraining import EMBEDDING_TERMS, GeneralObjective

EMBEDDING_OBJECTIVE, GENERAL_OBJECTIVE = "embedding", "general"  # --objective values
PAIR_METRICS = ("spearman", "pearson")  # of the cosine similarity against the gold scores


def embedding_weights(o) -> dict[str, float]:
    """The embedding objective's weights (terms above 0) from `pkd.config.sections.PretrainConfig`:
    the general objective's and the embedding terms'."""
    sentence = {"emb": o.embedding_weight, "cos": o.cosine_weight, "sim": o.similarity_weight}
    return {**o.weights, **{k: v for k, v in sentence.items() if v > 0}}


def similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, H) -> (B, B) cosine similarities."""
    unit = F.normalize(embeddings, dim=-1)
    return unit @ unit.T


def embedding_losses(student: torch.Tensor, teacher: torch.Tensor, names) -> dict:
    """EMB, COS and SIM (those in `names`) of (B, H) student and teacher embeddings."""
    terms = {}
    if "emb" in names:
        terms["emb"] = (student - teacher).pow(2).sum(-1).mean()
    if "cos" in names:
        terms["cos"] = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if "sim" in names:
        diff = similarity_matrix(student) - similarity_matrix(teacher)
        terms["sim"] = diff.pow(2).mean()
    return terms


@dataclass
class EmbeddingObjective(GeneralObjective):
    """`GeneralObjective` plus the terms on the sentence embedding (`head`: the teacher's
    pooling and normalisation, which the student shares). The teacher's signals carry its
    `embedding` (B, H_t)."""

    head: SentenceHead = SentenceHead()

    def sentence_states(self, out, batch: dict) -> torch.Tensor | None:
        if not any(k in self.weights_by_term for k in EMBEDDING_TERMS):
            return None
        return self.head(out.hidden_states[-1].float(), batch["attention_mask"])  # as the teacher's

    def embedding_terms(self, pooled, signals: dict) -> dict[str, torch.Tensor]:
        if pooled is None:
            return {}
        student = self.head.finish(pooled)
        teacher = signals["embedding"].to(student.device)
        return embedding_losses(student, teacher, self.weights_by_term)


def embed_model(encoder, loader, accelerator, head: SentenceHead, dense=None) -> np.ndarray:
    """Every example's embedding (in the loader's order, gathered over processes), in eval
    mode: the model's sentence embedding as sentence-transformers computes it."""
    encoder.eval()
    rows = []
    with torch.no_grad():
        for batch in loader:
            out = encoder(**model_inputs(batch))
            pooled = head(out.last_hidden_state.float(), batch["attention_mask"])
            if dense is not None:
                pooled = dense(pooled)
            rows.append(accelerator.gather_for_metrics(head.finish(pooled)).cpu().numpy())
    encoder.train()
    return np.concatenate(rows)


def pair_scores(embeddings: np.ndarray, gold) -> dict[str, float]:
    """Spearman and Pearson of the pairs' cosine similarities against their gold scores.
    `embeddings`: the pairs' sentences interleaved (a_0, b_0, a_1, b_1, ...)."""
    a, b = torch.from_numpy(embeddings[0::2]), torch.from_numpy(embeddings[1::2])
    cosine = F.cosine_similarity(a.float(), b.float(), dim=-1).numpy()
    return compute_metrics(PAIR_METRICS, cosine, np.asarray(gold, dtype=np.float64))


def pairs_score(head: SentenceHead, dense=None) -> Callable:
    """`pkd.training.evaluation.Evaluation.score` on scored pairs (`pkd.data.text.pair_texts`):
    Spearman and Pearson of the student's cosine similarities."""

    def score(model, loader, accelerator) -> dict[str, float]:
        embeddings = embed_model(model, loader, accelerator, head, dense)
        gold = loader.dataset.labels[0::2]
        return pair_scores(embeddings, gold)

    return score
