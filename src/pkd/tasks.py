"""Task registry: where each GLUE and RACE task keeps its texts and labels, and how it is
scored; the problem types and the model head each one fine-tunes (`HEADS`).

Tasks are data (like `task_to_keys` in transformers' run_glue.py). A column is a header name
for files with a header row, or a 0-based position for CoLA, which has none. Multiple choice
is here where every room sees it (its head, the RACE registry, the checks of its options, which
`pkd.config` runs); its data is `pkd.data.multiple_choice`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from pkd.errors import PkdError

IGNORE_LABEL = -100  # an example without a gold label (a transfer set's); NaN for regression

logger = logging.getLogger(__name__)

CLASSIFICATION = "single_label_classification"
REGRESSION = "regression"
MULTIPLE_CHOICE = "multiple_choice"
PAIR_SCORES = "pair_scores"  # sentence pairs with a float score (STS-B-like), for embeddings
PROBLEM_TYPES = (CLASSIFICATION, REGRESSION, MULTIPLE_CHOICE, PAIR_SCORES)
SCORE_TYPES = (REGRESSION, PAIR_SCORES)  # a float score per example, one output


@dataclass(frozen=True)
class Head:
    """The kind of model a problem type fine-tunes, for the rooms that build, describe,
    benchmark and export models (what differs in the data: `pkd.data.kinds`). Classification,
    regression and pair scores share the sequence classifier; multiple choice has its own.

    Attributes:
        suffix: the end of its transformers class name (`BertForMultipleChoice`), which also
            names its Auto class (`AutoModelForMultipleChoice`).
        noun: how messages name it ("a multiple-choice classifier").
        per_choice: its inputs are (B, choices, T) and it scores each choice: no label names.
        exportable: `pkd export` writes it (the ONNX graph takes one text or a pair).
        card_task: the model card's model-index task type.
        pipeline_tag: the Hub's pipeline tag; None where no pipeline reads the model.
        problem_type: the problem type a model with this head solves; None where its outputs
            tell (label names: classification, one output: regression).
    """

    suffix: str
    noun: str
    per_choice: bool
    exportable: bool
    card_task: str
    pipeline_tag: str | None
    problem_type: str | None = None


SEQUENCE_HEAD = Head(
    suffix="ForSequenceClassification",
    noun="sequence",
    per_choice=False,
    exportable=True,
    card_task="text-classification",
    pipeline_tag="text-classification",
)
CHOICE_HEAD = Head(
    suffix="ForMultipleChoice",
    noun="multiple-choice",
    per_choice=True,
    exportable=False,
    card_task="multiple-choice",
    pipeline_tag=None,
    problem_type=MULTIPLE_CHOICE,
)
HEADS = {
    CLASSIFICATION: SEQUENCE_HEAD,
    REGRESSION: SEQUENCE_HEAD,
    PAIR_SCORES: SEQUENCE_HEAD,
    MULTIPLE_CHOICE: CHOICE_HEAD,
}


def architecture_head(architectures: list[str] | tuple[str, ...]) -> Head | None:
    """The head of a model whose config lists these architectures (class names); None for
    a model without a task head (a bare or pre-trained encoder)."""
    for head in (CHOICE_HEAD, SEQUENCE_HEAD):
        if any(a.endswith(head.suffix) for a in architectures):
            return head
    return None


def problem_head(problem_type: str | None) -> Head:
    """The head a problem type fine-tunes (`HEADS`); a sequence classifier for any other
    name (transformers' `classification`, none)."""
    return HEADS.get(problem_type, SEQUENCE_HEAD)


def head_config(problem_type: str | None, labels: tuple[str, ...]) -> dict:
    """The config values of a new task head: none (multiple choice: one score per choice),
    one output (regression, pair scores), else the label names (classification)."""
    if problem_head(problem_type).per_choice:
        return {}
    if problem_type in SCORE_TYPES:
        return {"num_labels": 1, "problem_type": REGRESSION}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": CLASSIFICATION,
    }


@dataclass(frozen=True)
class TaskSpec:
    """How to read, label and score one task.

    Attributes:
        name: registry name (`sst2`, `mnli`, ...).
        problem_type: one of PROBLEM_TYPES.
        labels: label names in model order; empty for regression, and for custom tasks until
            they are inferred from the training file.
        text_columns: one or two text columns (single sentence or sentence pair).
        label_column: column of the gold label.
        metrics: metric names, see `pkd.data.metrics`; the first is the main one.
        splits: split name -> file name inside the task's data directory.
        header: whether the files start with a header row (GLUE test files always do).
        test_text_columns / id_column: columns in the unlabelled test file.
        hf_path / hf_name: `datasets.load_dataset` arguments when reading from the Hub.
        hf_splits: our split name -> the Hub's split name.
        hf_text_fields: the Hub's feature names for the texts.
        source: where the files come from: glue, race (`DIR/{split}/{middle,high}/*.txt`)
            or custom (the user's CSV/TSV/JSONL).
        choices_column: multiple choice: the column holding each row's list of choices.
        levels: RACE: the difficulty levels (sub-directories) the task reads.
        default_max_length: --max-length when the user gives none (512 for RACE).
        test_labelled: whether the test split has gold labels (RACE's does, GLUE's not).
        positive_label: the class whose F1 is the `f1` metric, by name (MRPC/QQP: "1"), so
            a model whose label order differs is still scored on the right class.
        score_range: regression: the (low, high) range a gold score must lie in (STS-B 0-5).
        hub_labels: GLUE: the Hub's `ClassLabel` names in id order, which models trained on
            `datasets`' GLUE (transformers' run_glue.py) carry: id i is `labels[i]` where the
            files' labels are ids (`0`, `1`), else the label of the same name (MNLI, RTE).
    """

    name: str
    problem_type: str
    labels: tuple[str, ...]
    text_columns: tuple[str | int, ...]
    label_column: str | int
    metrics: tuple[str, ...]
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    )
    header: bool = True
    test_text_columns: tuple[str | int, ...] | None = None
    id_column: str | int | None = "index"
    hf_path: str | None = None
    hf_name: str | None = None
    hf_splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    hf_text_fields: tuple[str, ...] = ()
    source: str = "glue"
    choices_column: str | None = None
    levels: tuple[str, ...] = ()
    default_max_length: int = 128
    test_labelled: bool = False
    positive_label: str | None = None
    score_range: tuple[float, float] | None = None
    hub_labels: tuple[str, ...] = ()

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def eval_splits(self) -> list[str]:
        """Labelled evaluation splits (`dev`, or MNLI's `dev_matched` and `dev_mismatched`)."""
        return [s for s in self.splits if s.startswith("dev")]

    @property
    def num_labels(self) -> int:
        """Outputs per example: 1 (a score), classes, or choices (multiple choice)."""
        return 1 if self.problem_type in SCORE_TYPES else len(self.labels)

    def positive_index(self) -> int | None:
        """The label id of `positive_label` in `labels` (the model's order); None without one.

        Raises:
            PkdError: the positive class is not one of the labels.
        """
        if self.positive_label is None:
            return None
        if self.positive_label not in self.labels:
            raise PkdError(
                f"--positive-label: {self.positive_label!r} is not one of the labels "
                f"{list(self.labels)} of task {self.name}"
            )
        return self.labels.index(self.positive_label)

    def label2id(self) -> dict[str, int] | None:
        """Classification: label name -> the model's output id (`labels` is in model order);
        None otherwise (regression scores, multiple-choice answers)."""
        if self.problem_type != CLASSIFICATION:
            return None
        return {name: i for i, name in enumerate(self.labels)}

    def labels_by_id(self) -> tuple[str, ...] | None:
        """The task's label names by class id, as `datasets` numbers them: the Hub's order for
        GLUE tasks, 0..k-1 for custom labels that are those integers; None when the labels
        have no ids (custom names)."""
        if self.hub_labels and set(self.hub_labels) == set(self.labels):
            return self.hub_labels  # the files name the classes as the Hub does
        if self.hub_labels or self.labels == generic_labels(len(self.labels), ""):
            return self.labels  # ids "0", "1", ... in order
        return None


def generic_labels(n: int, prefix: str = "LABEL_") -> tuple[str, ...]:
    """transformers' default label names (`LABEL_0`, ...), or with prefix "" the ids."""
    return tuple(f"{prefix}{i}" for i in range(n))


def readable_labels(names: tuple[str, ...]) -> tuple[str, ...]:
    """The label names custom data is read with for a model with these names: its own, or
    the ids "0".."k-1" for transformers' default names LABEL_0.. (class i is id i)."""
    return generic_labels(len(names), "") if names == generic_labels(len(names)) else names


def model_label_order(spec: TaskSpec, names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The task's label names in a model's output order (output i predicts result[i]), from
    the model's label names (`id2label`): matched by name when they are the task's; else by
    class id when they are the Hub's names (GLUE) or transformers' LABEL_0.. defaults. None
    when they do not correspond."""
    if set(names) == set(spec.labels):
        return tuple(names)
    by_id = spec.labels_by_id()
    if by_id is None or len(names) != len(by_id):
        return None
    if spec.hub_labels and set(names) == set(spec.hub_labels):
        return tuple(by_id[spec.hub_labels.index(n)] for n in names)
    if tuple(names) == generic_labels(len(names)):
        return by_id
    return None


def align_labels(spec: TaskSpec, names: tuple[str, ...], option: str) -> TaskSpec:
    """The task with its labels in a model's output order (`model_label_order`), logging the
    mapping when the model names them otherwise (the data keeps its own names, so the
    positive class of F1 is unchanged).

    Raises:
        PkdError: the model's labels are not the task's, naming `option`.
    """
    order = model_label_order(spec, names)
    if order is None:
        raise PkdError(
            f"{option}: its labels {list(names)} differ from the data's {list(spec.labels)}"
        )
    if tuple(names) != order:
        pairs = ", ".join(f"{data} -> {model}" for data, model in zip(order, names, strict=True))
        logger.info("%s: the data's labels are the model's by class id: %s", option, pairs)
    elif tuple(spec.labels) != order:
        logger.info(
            "label order differs between %s %s and task %s; mapping by name",
            option.lstrip("-"),
            order,
            spec.labels,
        )
    return dataclasses.replace(spec, labels=order)


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")


def _glue(name: str, hf_fields: tuple[str, ...], **kw) -> TaskSpec:
    """A GLUE task on the Hub's `nyu-mll/glue`; by default a binary classification scored by
    accuracy, whose TSV files name their text and label columns as the Hub does."""
    kw.setdefault("problem_type", CLASSIFICATION)
    kw.setdefault("labels", BINARY)
    kw.setdefault("text_columns", hf_fields)
    kw.setdefault("label_column", "label")
    kw.setdefault("metrics", ("accuracy",))
    return TaskSpec(name=name, hf_path="nyu-mll/glue", hf_name=name, hf_text_fields=hf_fields, **kw)


GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola",
        ("sentence",),
        text_columns=(3,),
        label_column=1,
        header=False,
        test_text_columns=("sentence",),
        metrics=("matthews_correlation", "accuracy"),
        hub_labels=("unacceptable", "acceptable"),
    ),
    "sst2": _glue(
        "sst2",
        ("sentence",),
        hub_labels=("negative", "positive"),
    ),
    "mrpc": _glue(
        "mrpc",
        ("sentence1", "sentence2"),
        text_columns=("#1 String", "#2 String"),
        label_column="Quality",
        metrics=("f1", "accuracy"),
        hub_labels=("not_equivalent", "equivalent"),
        positive_label="1",  # paraphrase
    ),
    "qqp": _glue(
        "qqp",
        ("question1", "question2"),
        label_column="is_duplicate",
        id_column="id",
        metrics=("f1", "accuracy"),
        hub_labels=("not_duplicate", "duplicate"),
        positive_label="1",  # duplicate
    ),
    "stsb": _glue(
        "stsb",
        ("sentence1", "sentence2"),
        problem_type=REGRESSION,
        labels=(),
        label_column="score",
        metrics=("pearson", "spearman"),
        score_range=(0.0, 5.0),
    ),
    "mnli": _glue(
        "mnli",
        ("premise", "hypothesis"),
        labels=("contradiction", "entailment", "neutral"),
        text_columns=("sentence1", "sentence2"),
        label_column="gold_label",
        hub_labels=("entailment", "neutral", "contradiction"),
        splits={
            "train": "train.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        hf_splits={
            "train": "train",
            "dev_matched": "validation_matched",
            "dev_mismatched": "validation_mismatched",
            "test_matched": "test_matched",
            "test_mismatched": "test_mismatched",
        },
    ),
    "qnli": _glue(
        "qnli",
        ("question", "sentence"),
        labels=NLI2,
        hub_labels=("entailment", "not_entailment"),
    ),
    "rte": _glue(
        "rte",
        ("sentence1", "sentence2"),
        labels=NLI2,
        hub_labels=("entailment", "not_entailment"),
    ),
    "wnli": _glue(
        "wnli",
        ("sentence1", "sentence2"),
        hub_labels=("not_entailment", "entailment"),
    ),
}


def _race(name: str, levels: tuple[str, ...], hub_name: str) -> TaskSpec:
    """RACE (Lai et al. 2017): 4-way multiple choice over an article, read from the original
    release's `DIR/{train,dev,test}/{middle,high}/*.txt` (see `pkd.data.multiple_choice`)."""
    return TaskSpec(
        name=name,
        problem_type=MULTIPLE_CHOICE,
        labels=("A", "B", "C", "D"),
        text_columns=("article", "question"),
        label_column="answers",
        metrics=("accuracy",),
        splits={"train": "train", "dev": "dev", "test": "test"},  # directories
        id_column="id",
        hf_path="ehovy/race",
        hf_name=hub_name,
        source="race",
        choices_column="options",
        levels=levels,
        default_max_length=512,
        test_labelled=True,
    )


RACE_TASKS: dict[str, TaskSpec] = {
    "race": _race("race", ("middle", "high"), "all"),
    "race-middle": _race("race-middle", ("middle",), "middle"),
    "race-high": _race("race-high", ("high",), "high"),
}

TASKS: dict[str, TaskSpec] = {**GLUE_TASKS, **RACE_TASKS}

# Names people use for the same tasks (GLUE directory names, Hub names).
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}
ALIASES.update({"race-m": "race-middle", "race-h": "race-high", "race-all": "race"})


def get_task(name: str) -> TaskSpec:
    """Look a GLUE or RACE task up by name (case-insensitive; `SST-2` and `sst2` both work).

    Raises:
        PkdError: unknown name, with the valid names.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        valid = ", ".join(sorted(TASKS))
        raise PkdError(f"--task: unknown task {name!r}; valid tasks: {valid}, or 'custom'")
    return TASKS[key]


def default_max_length(name: str | None) -> int:
    """--max-length when none is given: the task's default (512 for RACE), else 128."""
    key = ALIASES.get((name or "").lower(), (name or "").lower())
    return TASKS[key].default_max_length if key in TASKS else 128


def custom_task(
    text_columns: tuple[str, ...],
    label_column: str,
    problem_type: str = CLASSIFICATION,
    labels: tuple[str, ...] = (),
) -> TaskSpec:
    """A task over the user's own CSV/TSV/JSONL files (labels inferred from train later)."""
    if not text_columns or len(text_columns) > 2:
        raise PkdError("--text-columns: give one or two column names, e.g. 'text' or 'q1,q2'")
    if problem_type not in (CLASSIFICATION, REGRESSION):
        raise PkdError(
            f"--problem-type: expected classification or regression, got {problem_type!r}"
        )
    metrics = ("pearson", "spearman") if problem_type == REGRESSION else ("accuracy", "macro_f1")
    return TaskSpec(
        name="custom",
        problem_type=problem_type,
        labels=labels,
        text_columns=text_columns,
        label_column=label_column,
        metrics=metrics,
        splits={"train": "", "dev": "", "test": ""},
        id_column=None,
        source="custom",
    )


def custom_problem(problem_type: str, choices_column: str | None) -> str:
    """The problem type of custom data from --problem-type (classification, regression or
    multiple_choice) and --choices-column (a column of choices: multiple choice)."""
    if choices_column or problem_type == MULTIPLE_CHOICE:
        return MULTIPLE_CHOICE
    return REGRESSION if problem_type == REGRESSION else CLASSIFICATION


def check_choice_options(problem_type: str, choices_column: str | None) -> None:
    """Custom data: --problem-type against --choices-column (multiple choice needs the
    column; regression cannot have one).

    Raises:
        PkdError: they do not fit.
    """
    if problem_type == MULTIPLE_CHOICE and not choices_column:
        raise PkdError("--choices-column: required for multiple-choice files")
    if choices_column and problem_type == REGRESSION:
        raise PkdError("--problem-type: regression cannot have --choices-column")


def with_positive_label(spec: TaskSpec, positive_label: str | None) -> TaskSpec:
    """The task scored on `positive_label` (`--positive-label`): its F1 is the `f1` metric,
    added after the task's own metrics when they have none (custom data). Call it once the
    labels are known (for custom tasks: inferred from train, or the model's).

    Raises:
        PkdError: not a classification task, or not one of its labels.
    """
    if positive_label is None:
        return spec
    if spec.problem_type != CLASSIFICATION:
        raise PkdError(
            f"--positive-label: task {spec.name} is {spec.problem_type}; only classification "
            "has a positive class"
        )
    metrics = spec.metrics if "f1" in spec.metrics else (*spec.metrics, "f1")
    spec = dataclasses.replace(spec, positive_label=positive_label, metrics=metrics)
    spec.positive_index()  # one of its labels, or a PkdError naming them
    return spec
