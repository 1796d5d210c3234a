"""Mean-pooling task heads over any transformers encoder (sentence-transformers checkpoints).

BERT's classifiers read the [CLS] state through the pre-trained pooler (the paper's setting).
Sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained to be read through the
**mean of the token states** (their `1_Pooling/config.json`), and their [CLS] state and pooler
carry little. These classes put a linear head on that mean:

    pooled = sum_t m_t h_t / sum_t m_t        (m: attention mask, h: last layer's token states)
    logits = W dropout(pooled) + b

`PkdPooledConfig` (model_type `pkd_pooled`) is the encoder's own config, flat, plus
`encoder_type` (the encoder's model_type, e.g. `bert`) and `pooling` (`mean`). Weights are
`encoder.*` (the encoder without its pooler) and `classifier.*`.

Loading a saved model: `import pkd` registers these classes with transformers' Auto classes,
so `AutoModelForSequenceClassification.from_pretrained(dir)` and `pipeline(...)` work. Without
pkd, `trust_remote_code=True` loads the copy of this file that `save_pretrained` writes next to
the weights (`pooling.py`, named in config.json's `auto_map`). This module must therefore
import nothing from pkd.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import MultipleChoiceModelOutput, SequenceClassifierOutput

MODEL_TYPE = "pkd_pooled"
POOLINGS = ("mean",)
# Keys of the flat config that describe the wrapper, not the encoder.
OWN_KEYS = ("model_type", "encoder_type", "pooling", "architectures", "auto_map")
# An attention implementation -> the flag of the model classes that have it.
ATTENTION_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention_2": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}


def supported_attention(encoder_config: PreTrainedConfig, requested: str | None) -> str | None:
    """`requested` if the encoder's model class has it, else `eager` (MPNet, DeBERTa-v2 and
    RoFormer have no SDPA); None (transformers' choice) stays None."""
    flag = ATTENTION_FLAGS.get(requested or "")
    if flag is None or type(encoder_config) not in MODEL_MAPPING:
        return requested
    return requested if getattr(MODEL_MAPPING[type(encoder_config)], flag, False) else "eager"


def encoder_alias(encoder_type: str | None, key: str) -> str:
    """The encoder config's own name for a standard one (DistilBERT: hidden_size -> dim,
    num_hidden_layers -> n_layers), else `key`."""
    if encoder_type not in CONFIG_MAPPING:
        return key
    return CONFIG_MAPPING[encoder_type].attribute_map.get(key, key)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: (..., T, H) states, (..., T) mask -> (..., H).

    Padding never counts, so one sequence gives the same vector however it is padded.
    """
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


class PkdPooledConfig(PreTrainedConfig):
    """An encoder's config (flat, as the encoder wrote it) plus how its tokens are pooled."""

    model_type = MODEL_TYPE
    encoder_type: str = "bert"
    pooling: str = "mean"

    def __getattr__(self, key: str):
        """Standard names the encoder spells its own way (`hidden_size` of a DistilBERT)."""
        alias = encoder_alias(self.__dict__.get("encoder_type"), key)
        if alias == key:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return getattr(self, alias)

    def __setattr__(self, key: str, value) -> None:
        super().__setattr__(encoder_alias(self.__dict__.get("encoder_type"), key), value)

    def encoder_config(self) -> PreTrainedConfig:
        """The encoder's own config (`AutoConfig.for_model(encoder_type, ...)`), with the
        attention implementation asked for where the encoder has it, else eager."""
        values = {k: v for k, v in self.to_dict().items() if k not in OWN_KEYS}
        values.pop("transformers_version", None)
        config = AutoConfig.for_model(self.encoder_type, **values)
        config._attn_implementation = supported_attention(
            config, self._attn_implementation_internal
        )
        return config

    @classmethod
    def from_encoder(cls, encoder_config: PreTrainedConfig, pooling: str = "mean", **head):
        """Wrap an encoder config; `head` sets num_labels, id2label, label2id, problem_type."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        values = {k: v for k, v in encoder_config.to_dict().items() if k not in OWN_KEYS}
        for key in ("id2label", "label2id", "num_labels", "problem_type", "transformers_version"):
            values.pop(key, None)
        return cls(encoder_type=encoder_config.model_type, pooling=pooling, **values, **head)


class PkdPooledPreTrainedModel(PreTrainedModel):
    """The encoder (without its pooler) and the pooling; subclasses add the head."""

    config_class = PkdPooledConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: PkdPooledConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config())
        config._attn_implementation = self.encoder.config._attn_implementation  # what runs
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused: it would only hold dead weights (and break DDP)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            module.weight.data.normal_(0.0, getattr(self.config, "initializer_range", 0.02))
            module.bias.data.zero_()

    def encode(self, input_ids, attention_mask, token_type_ids, output_hidden_states, **kwargs):
        """(pooled (N, H), hidden states of every layer or None) for (N, T) inputs."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        return mean_pool(out.last_hidden_state, attention_mask), out.hidden_states


class PkdPooledForSequenceClassification(PkdPooledPreTrainedModel):
    """Linear head on the mean-pooled last layer (classification or regression)."""

    def __init__(self, config: PkdPooledConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        pooled, hidden = self.encode(
            input_ids, attention_mask, token_type_ids, output_hidden_states, **kwargs
        )
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1 or self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


class PkdPooledForMultipleChoice(PkdPooledPreTrainedModel):
    """One score per choice from its mean-pooled last layer: (B, C, T) inputs -> (B, C)."""

    def __init__(self, config: PkdPooledConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> MultipleChoiceModelOutput:
        choices = input_ids.shape[1]

        def flat(x):
            return None if x is None else x.view(-1, x.shape[-1])

        pooled, hidden = self.encode(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), output_hidden_states
        )
        logits = self.classifier(self.dropout(pooled)).view(-1, choices)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels.view(-1))
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=hidden)


def register() -> None:
    """Make the Auto classes (and `pipeline`) load `pkd_pooled` models; save_pretrained then
    writes this file next to the weights for `trust_remote_code=True` users without pkd."""
    AutoConfig.register(MODEL_TYPE, PkdPooledConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        PkdPooledConfig, PkdPooledForSequenceClassification, exist_ok=True
    )
    AutoModelForMultipleChoice.register(PkdPooledConfig, PkdPooledForMultipleChoice, exist_ok=True)
    PkdPooledConfig.register_for_auto_class()
    PkdPooledForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    PkdPooledForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")


register()
