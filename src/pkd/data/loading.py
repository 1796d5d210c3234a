"""Read task splits, tokenise them once, and batch them with dynamic padding.

Flow: `load_data_split` (GLUE TSV dir, the user's CSV/TSV/JSONL, the Hub, or a `datasets`
dataset: --dataset or, from Python, a Dataset where a file goes) -> `Split` of raw
texts and label names -> `encode` (fast tokenizer, batched, truncation at max_length) ->
`EncodedSplit`, whose items carry `example_index` so the teacher cache can be joined to
shuffled batches -> `collator` pads each batch to its longest sequence. Multiple choice
(RACE and the user's choice files) is read, encoded and padded by `pkd.data.multiple_choice`.

A run's data (`DataConfig`): `resolve_task` and `load_splits` (labels inferred for custom
tasks, the optional holdout split), `check_label_sets`, `encode_all`, `majority_baselines`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from pkd.config.choices import is_datasets_object
from pkd.config.sections import DataConfig
from pkd.data.metrics import majority_baseline
from pkd.data.multiple_choice import choice_task, encode_choices, load_choice_split, pad_choices
from pkd.data.splits import (
    EncodedSplit,
    Split,
    file_columns,
    hub_dataset,
    open_dataset,
    read_jsonl,
    read_rows,
)
from pkd.errors import PkdError
from pkd.progress import progress
from pkd.tasks import (
    CLASSIFICATION,
    MULTIPLE_CHOICE,
    REGRESSION,
    TaskSpec,
    custom_task,
    get_task,
    with_positive_label,
)

logger = logging.getLogger(__name__)

TRUNCATION_WARN = 0.05  # warn when more than 5% of training examples hit --max-length


# ---------------------------------------------------------------------------------------------
# Reading files


def _column_index(path: Path, header: list[str], column: str | int) -> int:
    if isinstance(column, int):
        return column
    names = [h.strip() for h in header]
    if column not in names:
        raise PkdError(f"{path}:1: no column {column!r} in header {names}")
    return names.index(column)


def _parse_label(spec: TaskSpec, value, where: str):
    """A label as the model sees it: a name from spec.labels, or a float for regression."""
    if spec.problem_type == REGRESSION:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise PkdError(f"{where}: score {value!r} is not a number") from None
        if not math.isfinite(score):  # float() accepts 'nan' and 'inf'; MSE would turn NaN
            raise PkdError(f"{where}: score {value!r} is not a finite number")
        if spec.score_range and not spec.score_range[0] <= score <= spec.score_range[1]:
            low, high = spec.score_range
            raise PkdError(
                f"{where}: score {value!r} is outside {spec.name}'s range {low:g} to {high:g}"
            )
        return score
    label = str(value).strip()
    if not label:  # else an empty cell becomes a class of its own
        raise PkdError(f"{where}: empty label (column {spec.label_column!r})")
    if spec.labels and label not in spec.labels:
        raise PkdError(f"{where}: label {label!r} is not one of {list(spec.labels)}")
    return label


TRANSFER = "transfer"  # the split name of unlabelled text for distillation (`pkd.data.transfer`)


def read_table_split(
    spec: TaskSpec, path: Path, split: str, encoding: str, labelled: bool, header: bool
) -> Split:
    """Read a GLUE-layout TSV or the user's CSV/TSV/JSONL into a Split."""
    columns = spec.text_columns
    if not labelled and spec.test_text_columns:
        columns = spec.test_text_columns
    width = ""  # header files: how many columns the header has, for short rows' errors
    if path.suffix.lower() in (".jsonl", ".json"):
        records = read_jsonl(path, encoding)
        rows = [
            (line, [obj.get(c) for c in (*columns, spec.label_column)]) for line, obj in records
        ]
        for line, row in rows:
            missing = [
                c for c, v in zip((*columns, spec.label_column), row, strict=False) if v is None
            ]
            if missing and (labelled or missing != [spec.label_column]):
                raise PkdError(f"{path}:{line}: missing key(s) {missing}")
        text_idx, label_idx, id_idx = list(range(len(columns))), len(columns), None
    else:
        rows = read_rows(path, encoding, quoted=spec.source == "custom", header=header)
        if header:
            if not rows:
                raise PkdError(f"{path}: empty file (no header row)")
            head = rows.pop(0)[1]
            width = f" (the header has {len(head)})"
            text_idx = [_column_index(path, head, c) for c in columns]
            label_idx = _column_index(path, head, spec.label_column) if labelled else None
            id_idx = None
            names = [h.strip() for h in head]
            # test files name their rows; a transfer file (`pkd.data.transfer`) may be any table
            if spec.id_column is not None and not labelled:
                if split != TRANSFER or spec.id_column in names:
                    id_idx = _column_index(path, head, spec.id_column)
        else:
            text_idx, label_idx, id_idx = list(columns), spec.label_column, None
    needed = max([*text_idx, *(i for i in (label_idx, id_idx) if i is not None)]) + 1
    ids, text_a, text_b, labels = [], [], [], []
    for n, (line, row) in enumerate(rows):
        if len(row) < needed:
            raise PkdError(
                f"{path}:{line}: expected at least {needed} columns, found {len(row)}{width}"
            )
        text_a.append(str(row[text_idx[0]]))
        if len(text_idx) > 1:
            text_b.append(str(row[text_idx[1]]))
        if labelled:
            labels.append(_parse_label(spec, row[label_idx], f"{path}:{line}"))
        ids.append(str(row[id_idx]) if id_idx is not None else str(n))
    if not ids:
        raise PkdError(f"{path}: no examples in the {split} split")
    return Split(split, str(path), ids, text_a, text_b or None, labels if labelled else None)


def load_hub_split(spec: TaskSpec, split: str, labelled: bool = True) -> Split:
    """The same split from `datasets.load_dataset` (needs the network)."""
    ds = hub_dataset(spec, split, "the GLUE files")
    labelled = labelled and all(v is not None and v != -1 for v in ds["label"])  # test: -1
    source = f"hub:{spec.hf_path}/{spec.hf_name}[{spec.hf_splits[split]}]"
    return read_dataset(spec, ds, split, source, labelled)


def read_dataset(spec: TaskSpec, ds, split: str, source: str, labelled: bool) -> Split:
    """A split from a `datasets.Dataset`: the Hub's GLUE, or the user's (--dataset, or a
    Dataset given for a file). GLUE tasks read the Hub's columns (`spec.hf_text_fields`,
    `label`), custom ones the column options. Class labels (`ClassLabel`) are read by name
    when their names are the task's (MNLI's Hub order differs) or the task has none yet
    (custom data), else by value ("0", "1"). `source` names the split (`dataset:NAME[train]`)
    in the Split and in errors.

    Raises:
        PkdError: a missing column, a missing label, a label that is not the task's,
            multiple-choice data, or no rows; naming `source` (and the row).
    """
    if spec.problem_type == MULTIPLE_CHOICE:
        raise PkdError(
            f"{source}: multiple-choice data is read from files or the RACE release, not from "
            "a `datasets` dataset"
        )
    glue = spec.source == "glue"
    columns = list(spec.hf_text_fields if glue else spec.text_columns)
    label = "label" if glue else spec.label_column
    missing = [c for c in (*columns, *([label] if labelled else [])) if c not in ds.column_names]
    if missing:
        fix = f"task {spec.name} reads the Hub's columns" if glue else "see --text-columns"
        raise PkdError(
            f"{source}: no column(s) {missing} in the {split} split (it has {ds.column_names}; "
            f"{fix}{'' if glue else ' and --label-column'})"
        )
    if len(ds) == 0:
        raise PkdError(f"{source}: no examples in the {split} split")
    labels = None
    if labelled:
        names = getattr(ds.features.get(label), "names", None)
        by_name = spec.problem_type == CLASSIFICATION and names
        by_name = by_name and (set(names) <= set(spec.labels) or not spec.labels)
        labels = []
        for row, value in enumerate(ds[label]):
            where = f"{source} row {row}"
            if value is None or (by_name and value == -1):
                raise PkdError(f"{where}: no label in column {label!r}")
            labels.append(_parse_label(spec, names[value] if by_name else value, where))
    ids = [str(i) for i in (ds["idx"] if "idx" in ds.column_names else range(len(ds)))]
    text_b = [str(t) for t in ds[columns[1]]] if len(columns) > 1 else None
    return Split(split, source, ids, [str(t) for t in ds[columns[0]]], text_b, labels)


def file_option(split: str) -> str:
    """The option that names a split's file: train-file, validation-file or test-file."""
    if split.startswith("dev"):
        return "validation-file"
    return "test-file" if split.startswith("test") else f"{split}-file"


def load_split(
    spec: TaskSpec,
    split: str,
    data_dir: str | None = None,
    file: str | None = None,
    encoding: str = "utf-8",
    labelled: bool | None = None,
) -> Split:
    """Load one split from a file, a GLUE task directory, or the Hub.

    Args:
        spec: the task.
        split: `train`, `dev`, `dev_matched`, `test`, ...
        data_dir: GLUE task directory (files named as in spec.splits).
        file: an explicit file (custom tasks, or to override the directory's file); from
            the Python API also a `datasets.Dataset`.
        encoding: text encoding of the file.
        labelled: whether the split has gold labels; default: every split but `test*`
            (RACE's test split too).
    """
    if labelled is None:
        labelled = spec.test_labelled or not split.startswith("test")
    if is_datasets_object(file):  # the Python API: a Dataset where a file goes
        return read_dataset(spec, file, split, f"{type(file).__name__}[{split}]", labelled)
    if file is not None and Path(file).is_dir():
        raise PkdError(f"--{file_option(split)}: {file} is a directory, not a file")
    if spec.problem_type == MULTIPLE_CHOICE:  # RACE layout, the Hub, or the user's files
        return load_choice_split(spec, split, data_dir, file, encoding, labelled)
    if file is not None:
        path = Path(file)
    elif data_dir is not None:
        if split not in spec.splits:
            raise PkdError(
                f"--split: task {spec.name} has no split {split!r}; it has {list(spec.splits)}"
            )
        if not Path(data_dir).is_dir():
            raise PkdError(f"--data-dir: {data_dir} is not a directory")
        path = Path(data_dir) / spec.splits[split]
    elif spec.source == "glue":
        return load_hub_split(spec, split, labelled)
    else:
        raise PkdError(f"--{file_option(split)}: no file given for the {split} split")
    header = spec.header or not labelled  # GLUE test files have a header, CoLA's too
    return read_table_split(spec, path, split, encoding, labelled, header)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def infer_labels(train: Split) -> tuple[str, ...]:
    """Label names of a custom classification task: sorted, numerically when all are ints."""
    names = set(train.labels or [])
    if names and all(_is_int(n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


# ---------------------------------------------------------------------------------------------
# Tokenising and batching


def encode(
    split: Split,
    tokenizer,
    max_length: int,
    label2id: dict[str, int] | None,
    show_progress: bool = True,
    chunk: int = 4096,
) -> EncodedSplit:
    """Tokenise a split once (fast tokenizer, batched), truncating to max_length.

    Labels are mapped by name through label2id (never by position); regression keeps floats.
    Multiple-choice splits are encoded per choice by `pkd.data.multiple_choice.encode_choices`.
    """
    if split.choices is not None:
        return encode_choices(split, tokenizer, max_length, show_progress)
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
    labels = None
    if split.labels is not None:
        if label2id is None:  # regression
            labels = [float(v) for v in split.labels]
        else:
            unknown = sorted({v for v in split.labels if v not in label2id})
            if unknown:
                raise PkdError(
                    f"{split.source}: labels {unknown} are not among the model's labels "
                    f"{list(label2id)}"
                )
            labels = [label2id[v] for v in split.labels]
    return EncodedSplit(split, features, labels)


def truncated_fraction(encoded: EncodedSplit, max_length: int) -> float:
    """Share of examples that reached max_length (and so were, or may have been, cut)."""
    lengths = encoded.lengths()
    return sum(n >= max_length for n in lengths) / max(1, len(lengths))


def collator(tokenizer):
    """Pads each batch to its longest sequence (dynamic padding); multiple choice to
    (B, choices, T) with `pkd.data.multiple_choice.pad_choices`. An item may be a list of examples (a labelled
    example with its transfer partners, `pkd.data.transfer.TransferMix`): they join the batch."""
    flat = DataCollatorWithPadding(tokenizer, padding="longest")

    def collate(items: list) -> dict:
        if items and isinstance(items[0], list):
            items = [example for group in items for example in group]
        if items and items[0]["input_ids"] and isinstance(items[0]["input_ids"][0], list):
            return pad_choices(items, tokenizer)
        return flat(items)

    return collate


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffled indices in which neighbours have similar lengths (`--group-by-length`).

    Each epoch: a random permutation, cut into mega-batches of 50 batches, each sorted by
    length (longest first), so consecutive batches need little padding while batches still
    come from all over the data. The order depends only on (seed, epoch), never on how many
    epochs ran before: a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega: int = 50):
        self.lengths, self.group, self.seed, self.epoch = lengths, batch_size * mega, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's loader every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        for start in range(0, len(order), self.group):
            chunk = order[start : start + self.group]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])


# ---------------------------------------------------------------------------------------------
# A run's data


def resolve_task(data: DataConfig, labels: tuple[str, ...] = ()) -> TaskSpec:
    """The task a DataConfig names: a GLUE task, or a custom one from its column options."""
    if data.task != "custom":
        return get_task(data.task)
    sources = (data.train_file, data.validation_file, data.test_file, data.dataset)
    if all(f in (None, "") for f in sources):  # a test file alone: `pkd predict`
        raise PkdError(
            "--task: give a GLUE task name, or --train-file/--validation-file, or --dataset"
        )
    if data.choices_column or data.problem_type == "multiple_choice":
        return choice_task(
            data.context_column, data.question_column, data.choices_column, data.label_column
        )
    columns = data.text_columns or (["text"] if "text" in source_columns(data) else None)
    if not columns:
        raise PkdError("--text-columns: required for custom files (e.g. --text-columns text)")
    problem = REGRESSION if data.problem_type == "regression" else CLASSIFICATION
    return custom_task(tuple(columns), data.label_column, problem, labels)


def source_columns(data: DataConfig) -> list[str]:
    """The columns of a custom task's data, from its first file (header row, first JSON
    object; [] when it does not read) or Dataset, else --dataset's train (or first) split.

    Raises:
        PkdError: --dataset does not load.
    """
    file = next((f for f in (data.train_file, data.validation_file, data.test_file) if f), None)
    if is_datasets_object(file):
        return list(file.column_names)
    if file is not None:
        return file_columns(Path(file), data.encoding)
    ds = data.dataset
    if isinstance(ds, str):
        ds = open_dataset(ds, data.dataset_config)  # one that does not load: its error first
    return list(ds.get("train", next(iter(ds.values()))).column_names) if ds else []


def file_for(data: DataConfig, split: str) -> str | None:
    """The file a DataConfig gives for a split (--train/--validation/--test-file), if any."""
    if split == "train":
        return data.train_file
    if split.startswith("dev"):
        return data.validation_file
    return data.test_file


DEV_SPLITS = ("validation", "dev", "valid")  # a --dataset's split for dev (custom tasks)


def dataset_split(spec: TaskSpec, ds, split: str, name: str, validation: str | None = None):
    """The split of a `DatasetDict` that holds `split`: for dev, `validation`
    (--validation-split) when given; else the Hub's names for GLUE tasks (`spec.hf_splits`:
    dev -> validation, ...); for custom ones train, test, and for dev the first of
    DEV_SPLITS. Returns (its name, the Dataset)."""
    if validation is not None and len(spec.eval_splits) > 1:
        raise PkdError(
            f"--validation-split: task {spec.name} has {len(spec.eval_splits)} dev splits "
            f"({', '.join(spec.eval_splits)}); it reads them by the Hub's names"
        )
    if validation is not None and split.startswith("dev"):
        if validation not in ds:
            raise PkdError(
                f"--validation-split: {name} has no split {validation!r} (it has {', '.join(ds)})"
            )
        return validation, ds[validation]
    if spec.source == "glue":
        wanted = (spec.hf_splits.get(split, split),)
    else:
        wanted = DEV_SPLITS if split.startswith("dev") else (split,)
    for candidate in wanted:
        if candidate in ds:
            return candidate, ds[candidate]
    fix = "; choose one with --validation-split" if split.startswith("dev") else ""
    raise PkdError(
        f"--dataset: {name} has no {'/'.join(wanted)} split for {split} (it has "
        f"{', '.join(ds)}){fix}"
    )


def load_data_split(
    data: DataConfig, spec: TaskSpec, split: str, labelled: bool | None = None
) -> Split:
    """One split where a DataConfig says: the split's own file (or Dataset), else --dataset
    (a name or path, or a DatasetDict), else the task directory or the Hub (`load_split`)."""
    file = file_for(data, split)
    if file is None and data.dataset is not None:
        if labelled is None:
            labelled = spec.test_labelled or not split.startswith("test")
        ds, name = data.dataset, "DatasetDict"
        if isinstance(ds, str):
            ds, name = open_dataset(ds, data.dataset_config), ds
        hub_name, part = dataset_split(spec, ds, split, name, data.validation_split)
        return read_dataset(spec, part, split, f"dataset:{name}[{hub_name}]", labelled)
    if spec.source == "custom" and file is None:
        raise PkdError(f"--{file_option(split)}: required (or --dataset)")
    return load_split(spec, split, data.data_dir, file, data.encoding, labelled)


def load_splits(data: DataConfig, splits: list[str], labels: tuple[str, ...] = ()):
    """The task spec (labels inferred from train for custom tasks) and raw splits."""
    spec = resolve_task(data, labels)
    out = {}
    for split in splits:
        raw = load_data_split(data, spec, split)
        if split == "train" and spec.problem_type == CLASSIFICATION and not spec.labels:
            spec = dataclasses.replace(spec, labels=infer_labels(raw))  # custom: from train
        n = data.max_train_samples if split == "train" else data.max_eval_samples
        out[split] = raw.head(n)
    spec = with_positive_label(spec, data.positive_label)  # the labels are known by now
    if data.holdout_fraction and "train" in out:
        # Right after train, so the training loop selects its best epoch on it (its first
        # eval set); dev is still scored every epoch but no longer chooses anything.
        train, held = split_holdout(out["train"], data.holdout_fraction)
        if len(held) < MIN_HOLDOUT:
            logger.warning(
                "--holdout-fraction %g holds out %d training example(s): too few to select "
                "epochs on; use a larger fraction or more data (at least %d examples)",
                data.holdout_fraction,
                len(held),
                MIN_HOLDOUT,
            )
        out = {"train": train, HOLDOUT: held, **{k: v for k, v in out.items() if k != "train"}}
    return spec, out


HOLDOUT = "holdout"
HOLDOUT_SEED = 0  # fixed: the same training rows and fraction always hold out the same rows
MIN_HOLDOUT = 10  # fewer held-out examples than this: a warning


def split_holdout(train: Split, fraction: float) -> tuple[Split, Split]:
    """(train without the holdout rows, holdout): round(fraction * n) rows, fixed seed."""
    n = len(train)
    if n < 2:
        raise PkdError(f"--holdout-fraction: {n} training example(s) cannot be split")
    k = min(n - 1, max(1, round(fraction * n)))
    held = set(random.Random(HOLDOUT_SEED).sample(range(n), k))

    def rows(values, in_holdout: bool):
        if values is None:
            return None
        return [v for i, v in enumerate(values) if (i in held) == in_holdout]

    def part(name: str, in_holdout: bool):
        return dataclasses.replace(
            train,
            name=name,
            ids=rows(train.ids, in_holdout),
            text_a=rows(train.text_a, in_holdout),
            text_b=rows(train.text_b, in_holdout),
            labels=rows(train.labels, in_holdout),
            choices=rows(train.choices, in_holdout),
            levels=rows(train.levels, in_holdout),
        )

    return part(train.name, False), part(HOLDOUT, True)


def check_label_sets(spec: TaskSpec, splits: dict) -> None:
    """Every label in every split must be one of the task's labels (by name)."""
    if spec.problem_type != CLASSIFICATION:
        return
    for split in splits.values():
        if split.labels is None:
            continue
        unknown = sorted(set(split.labels) - set(spec.labels))
        if unknown:
            raise PkdError(
                f"{split.source}: labels {unknown} do not occur in training labels {list(spec.labels)}"
            )


def encode_all(
    splits: dict, tokenizer, max_length: int, label2id, quiet: bool
) -> dict[str, EncodedSplit]:
    """`encode` every split (progress bars unless quiet)."""
    return {
        name: encode(s, tokenizer, max_length, label2id, not quiet) for name, s in splits.items()
    }


def warn_truncation(train: EncodedSplit, max_length: int) -> float:
    """The share of training examples cut at max_length; a warning above TRUNCATION_WARN."""
    frac = truncated_fraction(train, max_length)
    if frac > TRUNCATION_WARN:
        logger.warning(
            "%.1f%% of training examples reach --max-length %d and are truncated; consider a larger "
            "--max-length",
            100 * frac,
            max_length,
        )
    return frac


def majority_baselines(spec: TaskSpec, splits: dict) -> dict[str, float]:
    """The main metric of always predicting the majority label, per eval split."""
    out = {}
    for name in spec.eval_splits:
        labels = splits[name].labels
        if spec.problem_type == CLASSIFICATION:
            labels = [spec.labels.index(v) for v in labels]
        out[name] = majority_baseline(
            spec.metrics, labels, spec.problem_type == REGRESSION, spec.positive_index()
        )
    return out
