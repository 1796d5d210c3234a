"""Task kinds: what differs between classification, regression, sentence pairs with a
score and multiple choice, behind one interface.

`task_kind(spec)` (or a problem type) gives the kind's `TaskKind`, which reads a split
(`read`, `read_dataset`), encodes it (`encode`), pads its batches (`collator`), turns logits
into predictions (`predictions`, `prediction_names`) and scores them (`metrics`,
`majority_baseline`). Callers use these and never branch on the problem type:

- classification: one text or a pair, a class name per example, mapped to ids by name;
- regression: one text or a pair, a float score; pair scores (STS-B-like sentence pairs
  with a float score, for embedding work) share its code;
- multiple choice: `pkd.data.multiple_choice` (RACE and the user's choice files).

`pkd.data.loading.encode` and `pkd.data.loading.collator` choose the kind from the data
itself, for callers that hold only a split or a tokenizer.
"""

from __future__ import annotations

import math

import numpy as np
from transformers import DataCollatorWithPadding

from pkd.config.sections import DataConfig
from pkd.data import multiple_choice as mc
from pkd.data.metrics import compute_metrics, majority_baseline
from pkd.data.readers import read_dataset, read_text_split, source_columns
from pkd.data.splits import EncodedSplit, Split
from pkd.errors import PkdError
from pkd.progress import progress
from pkd.tasks import (
    CLASSIFICATION,
    IGNORE_LABEL,
    MULTIPLE_CHOICE,
    PAIR_SCORES,
    REGRESSION,
    TaskSpec,
    custom_task,
)


def encode_texts(
    split: Split, tokenizer, max_length: int, show_progress: bool = True, chunk: int = 4096
) -> dict[str, list]:
    """Token features of a split's texts (or pairs): fast tokenizer, batched, truncated."""
    features: dict[str, list] = {}
    bar = progress(len(split), f"tokenise {split.name}", "ex", quiet=not show_progress)
    for start in range(0, len(split), chunk):
        a = split.text_a[start : start + chunk]
        b = None if split.text_b is None else split.text_b[start : start + chunk]
        enc = tokenizer(a, b, truncation=True, max_length=max_length)
        for k, v in enc.items():
            features.setdefault(k, []).extend(v)
        bar.update(len(a))
    bar.close()
    return features


class TaskKind:
    """A kind of task; as given here, what single texts and text pairs share."""

    name = ""
    plain_text = True  # examples are texts on their own (transfer sets, pretraining text)
    no_label = IGNORE_LABEL  # the label of an example without one (a transfer example's)

    # One split: (spec, split, data_dir, file, encoding, labelled) -> Split, from a file, the
    # task's directory, or the Hub.
    read = staticmethod(read_text_split)

    def read_dataset(self, spec: TaskSpec, ds, split: str, source: str, labelled: bool) -> Split:
        """One split from a `datasets.Dataset` (`pkd.data.readers.read_dataset`)."""
        return read_dataset(spec, ds, split, source, labelled)

    def encode(
        self, split: Split, tokenizer, max_length: int, label2id, show_progress: bool = True
    ) -> EncodedSplit:
        """Tokenise a split once, truncating to max_length; labels as `label_ids` gives them."""
        features = encode_texts(split, tokenizer, max_length, show_progress)
        return EncodedSplit(split, features, self.label_ids(split, label2id))

    def label_ids(self, split: Split, label2id: dict[str, int] | None) -> list | None:
        """The split's labels as the model's targets."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """Pads a batch of encoded examples to its longest sequence (dynamic padding)."""
        return DataCollatorWithPadding(tokenizer, padding="longest")

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Predictions from a model's logits: label ids."""
        return logits.argmax(-1)

    def gold(self, labels: np.ndarray) -> np.ndarray:
        """Gold labels as gathered (floats) in the predictions' type."""
        return labels.astype(np.int64)

    def metrics(
        self, spec: TaskSpec, predictions, labels: np.ndarray, split: Split | None = None
    ) -> dict[str, float]:
        """The task's metrics of predictions against gathered gold labels."""
        return compute_metrics(spec.metrics, predictions, self.gold(labels), spec.positive_index())

    def prediction_names(self, predictions, labels: tuple[str, ...]) -> list[str]:
        """Predictions as a prediction file writes them."""
        raise NotImplementedError

    def check_labels(self, spec: TaskSpec, split: Split) -> None:
        """Refuse a split whose labels are not the task's; scores and answer letters were
        checked by their readers."""
        return None

    def majority_baseline(self, spec: TaskSpec, labels: list) -> float:
        """The main metric of always predicting the most frequent label."""
        return majority_baseline(spec.metrics, labels, False, spec.positive_index())

    def custom_task(self, data: DataConfig, labels: tuple[str, ...]) -> TaskSpec:
        """The task over the user's files or dataset: --text-columns (else a `text` column)
        and --label-column; labels given, or inferred from train later."""
        columns = data.text_columns or (["text"] if "text" in source_columns(data) else None)
        if not columns:
            raise PkdError("--text-columns: required for custom files (e.g. --text-columns text)")
        return custom_task(tuple(columns), data.label_column, self.name, labels)

    def choices_per_example(self, split: Split) -> int:
        """The choices of each example (multiple choice); 0 where an example is its texts."""
        return 0


class Classification(TaskKind):
    """One text or a pair per example, a class name as its label."""

    name = CLASSIFICATION

    def label_ids(self, split: Split, label2id: dict[str, int] | None) -> list | None:
        """The split's labels as the model's ids, by name (never by position)."""
        if split.labels is None:
            return None
        unknown = sorted({v for v in split.labels if v not in label2id})
        if unknown:
            raise PkdError(
                f"{split.source}: labels {unknown} are not among the model's labels "
                f"{list(label2id)}"
            )
        return [label2id[v] for v in split.labels]

    def prediction_names(self, predictions, labels: tuple[str, ...]) -> list[str]:
        """The data's label names."""
        return [labels[int(p)] for p in predictions]

    def check_labels(self, spec: TaskSpec, split: Split) -> None:
        """Every label of a split must be one of the task's labels (by name)."""
        if split.labels is None:
            return
        unknown = sorted(set(split.labels) - set(spec.labels))
        if unknown:
            raise PkdError(
                f"{split.source}: labels {unknown} do not occur in training labels {list(spec.labels)}"
            )

    def majority_baseline(self, spec: TaskSpec, labels: list) -> float:
        ids = [spec.labels.index(v) for v in labels]
        return super().majority_baseline(spec, ids)


class Regression(TaskKind):
    """One text or a pair per example, a float score as its label."""

    name = REGRESSION
    no_label = math.nan

    def label_ids(self, split: Split, label2id: dict[str, int] | None) -> list | None:
        return None if split.labels is None else [float(v) for v in split.labels]

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return logits.reshape(-1)

    def gold(self, labels: np.ndarray) -> np.ndarray:
        return labels

    def prediction_names(self, predictions, labels: tuple[str, ...]) -> list[str]:
        """The scores, to 3 decimals."""
        return [f"{p:.3f}" for p in predictions]

    def majority_baseline(self, spec: TaskSpec, labels: list) -> float:
        """The main metric of always predicting the mean score."""
        return majority_baseline(spec.metrics, labels, True, spec.positive_index())


class PairScores(Regression):
    """Sentence pairs with a float score (STS-B-like), as regression reads and scores them."""

    name = PAIR_SCORES


class MultipleChoice(TaskKind):
    """A context, a question and its choices per example; the answer letter as its label
    (`pkd.data.multiple_choice`)."""

    name = MULTIPLE_CHOICE
    plain_text = False

    read = staticmethod(mc.load_choice_split)  # a file, a RACE-layout directory, or the Hub

    def read_dataset(self, spec: TaskSpec, ds, split: str, source: str, labelled: bool) -> Split:
        raise PkdError(
            f"{source}: multiple-choice data is read from files or the RACE release, not from "
            "a `datasets` dataset"
        )

    def encode(
        self, split: Split, tokenizer, max_length: int, label2id, show_progress: bool = True
    ) -> EncodedSplit:
        """Per choice, truncating the context only (`pkd.data.multiple_choice.encode_choices`);
        the answers are letters, label2id is not used."""
        return mc.encode_choices(split, tokenizer, max_length, show_progress)

    def collator(self, tokenizer):
        """Pads a batch to (B, choices, T) (`pkd.data.multiple_choice.pad_choices`)."""
        return lambda items: mc.pad_choices(items, tokenizer)

    def metrics(
        self, spec: TaskSpec, predictions, labels: np.ndarray, split: Split | None = None
    ) -> dict[str, float]:
        """Accuracy, and on RACE per level (RACE-M, RACE-H) when the split holds both."""
        metrics = super().metrics(spec, predictions, labels, split)
        metrics.update(mc.level_metrics(split, predictions, self.gold(labels)))
        return metrics

    def prediction_names(self, predictions, labels: tuple[str, ...]) -> list[str]:
        """The chosen option as a letter."""
        return [mc.choice_letter(p) for p in predictions]

    def custom_task(self, data: DataConfig, labels: tuple[str, ...]) -> TaskSpec:
        """The task over the user's choice files: --context-column, --question-column,
        --choices-column and --label-column (the answers)."""
        return mc.choice_task(
            data.context_column, data.question_column, data.choices_column, data.label_column
        )

    def choices_per_example(self, split: Split) -> int:
        return mc.num_choices(split)


KINDS: dict[str, TaskKind] = {
    kind.name: kind for kind in (Classification(), Regression(), PairScores(), MultipleChoice())
}


def task_kind(task: TaskSpec | str) -> TaskKind:
    """The kind of a task (or of a problem type)."""
    return KINDS[task if isinstance(task, str) else task.problem_type]


def split_kind(split: Split, label2id: dict[str, int] | None) -> TaskKind:
    """The kind of a split, from its data: multiple choice where it holds choices; else
    classification with label ids, regression without."""
    if split.choices is not None:
        return KINDS[MULTIPLE_CHOICE]
    return KINDS[REGRESSION if label2id is None else CLASSIFICATION]


def batch_kind(items: list[dict]) -> TaskKind:
    """The kind of a batch of encoded examples: multiple choice where an example's input_ids
    are one list per choice."""
    if items and items[0]["input_ids"] and isinstance(items[0]["input_ids"][0], list):
        return KINDS[MULTIPLE_CHOICE]
    return KINDS[CLASSIFICATION]
