"""Readers of single texts and text pairs: examples in, as a `pkd.data.splits.Split`.

A GLUE-layout TSV directory or the user's CSV/TSV/JSONL files (`read_table_split`), the
Hub's GLUE (`load_hub_split`) and a `datasets` dataset (`read_dataset`); `read_text_split`
picks one for a split; `source_columns` lists the columns of the user's data. Bad input names
the file and line (or the dataset and row).
Multiple-choice data has its own readers in `pkd.data.multiple_choice`; `pkd.data.kinds`
chooses between them by the task's kind.
"""

from __future__ import annotations

import math
from pathlib import Path

from pkd.config.choices import is_datasets_object
from pkd.config.sections import DataConfig
from pkd.data.splits import Split, file_columns, hub_dataset, open_dataset, read_jsonl, read_rows
from pkd.errors import PkdError
from pkd.tasks import CLASSIFICATION, SCORE_TYPES, TaskSpec


def _column_index(path: Path, header: list[str], column: str | int) -> int:
    if isinstance(column, int):
        return column
    names = [h.strip() for h in header]
    if column not in names:
        raise PkdError(f"{path}:1: no column {column!r} in header {names}")
    return names.index(column)


def _parse_label(spec: TaskSpec, value, where: str):
    """A label as the model sees it: a name from spec.labels, or a float (regression, pair scores)."""
    if spec.problem_type in SCORE_TYPES:
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
        PkdError: a missing column, a missing label, a label that is not the task's, or no
            rows; naming `source` (and the row).
    """
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


def file_option(split: str) -> str:
    """The option that names a split's file: train-file, validation-file or test-file."""
    if split.startswith("dev"):
        return "validation-file"
    return "test-file" if split.startswith("test") else f"{split}-file"


def read_text_split(
    spec: TaskSpec,
    split: str,
    data_dir: str | None = None,
    file: str | None = None,
    encoding: str = "utf-8",
    labelled: bool = True,
) -> Split:
    """One split of a single-text or text-pair task: a file, a GLUE task directory, or the Hub."""
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
