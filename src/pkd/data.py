"""Read task splits, tokenise them once, and batch them with dynamic padding.

Flow: `load_split` (GLUE TSV dir, the user's CSV/TSV/JSONL, or the Hub) -> `Split` of raw
texts and label names -> `encode` (fast tokenizer, batched, truncation at max_length) ->
`EncodedSplit`, whose items carry `example_index` so the teacher cache can be joined to
shuffled batches -> `collator` pads each batch to its longest sequence.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pkd.errors import PkdError
from pkd.progress import progress
from pkd.tasks import CLASSIFICATION, MULTIPLE_CHOICE, REGRESSION, TaskSpec

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Raw examples of one split.

    `labels` holds label names (classification) or floats (regression), None when the
    split is unlabelled (GLUE test files). Multiple choice (`pkd.race`): text_a is the
    context (article), text_b the question (or None), `choices` each example's options and
    labels the answer letters; `levels` RACE's middle/high per example (else None).
    """

    name: str
    source: str
    ids: list[str]
    text_a: list[str]
    text_b: list[str] | None
    labels: list | None
    choices: list[list[str]] | None = None
    levels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int | None) -> Split:
        """The first n examples (all when n is None), as run_glue's --max_*_samples."""
        if n is None or n >= len(self):
            return self
        return Split(
            self.name,
            self.source,
            self.ids[:n],
            self.text_a[:n],
            None if self.text_b is None else self.text_b[:n],
            None if self.labels is None else self.labels[:n],
            None if self.choices is None else self.choices[:n],
            None if self.levels is None else self.levels[:n],
        )


# ---------------------------------------------------------------------------------------------
# Reading files


def read_text(path: Path, encoding: str) -> str:
    """Read a whole file, naming the line of the first byte that does not decode."""
    if path.is_dir():
        raise PkdError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise PkdError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PkdError(
            f"{path}:{line}: not valid {encoding} (byte 0x{raw[e.start]:02x}); "
            f"pass --encoding (e.g. latin-1) to read it"
        ) from None
    except LookupError:
        raise PkdError(f"--encoding: unknown encoding {encoding!r}") from None
    return text.removeprefix("\ufeff")  # MRPC's header starts with a byte-order mark


def read_rows(
    path: Path, encoding: str, quoted: bool, header: bool = False
) -> list[tuple[int, list[str]]]:
    """Rows of a CSV/TSV file as (line number where the row starts, fields).

    GLUE TSV files are not quoted (a `"` is part of the text), so they are read with
    QUOTE_NONE; the user's CSV/TSV files use standard CSV quoting, where a quoted field may
    span lines. With header, a row with more fields than the header row is an error (a
    delimiter inside a field would shift the columns after it).
    """
    text = read_text(path, encoding)
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, start = [], 1
    try:
        for row in reader:
            if row:  # blank lines (a trailing newline, CRLF leftovers) carry no example
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise PkdError(f"{path}:{start}: malformed row ({e})") from None
    if quoted and rows:
        _check_last_quote(path, text, rows[-1], delimiter)
    if header and rows:
        width = len(rows[0][1])
        for line, row in rows:
            if len(row) > width:
                inside = (
                    "a tab inside a field" if delimiter == "\t" else "a comma in an unquoted field"
                )
                raise PkdError(
                    f"{path}:{line}: {len(row)} columns, the header has {width} ({inside}?)"
                )
    return rows


def _check_last_quote(path: Path, text: str, last: tuple[int, list[str]], delimiter: str):
    """A quote that is never closed makes the csv module read the rest of the file into one
    field, without an error: name the line where that field opens."""

    def lines(s: str) -> list[str]:  # as csv counts them: \n, \r\n or \r ends a line
        return io.StringIO(s, newline="").readlines()

    line, row = last
    tail = "".join(lines(text)[line - 1 :])  # the last row, to the end of the file
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        if "end of data" not in str(e):  # other strict-only complaints are read leniently
            return
        # The open field is the row's last one and runs to the end: count lines back from there.
        opens = len(lines(text)) - max(1, len(lines(row[-1]))) + 1
        raise PkdError(f"{path}:{opens}: a quoted field opens here and is never closed") from None


def read_jsonl(path: Path, encoding: str) -> list[tuple[int, dict]]:
    text = read_text(path, encoding)
    rows = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 (latin-1's 0x85) and
    # other characters that JSON strings may hold unescaped.
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PkdError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PkdError(f"{path}:{i}: expected a JSON object per line")
        rows.append((i, obj))
    return rows


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
            if spec.id_column is not None and not labelled:
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


def hub_dataset(spec: TaskSpec, split: str, what: str):
    """`datasets.load_dataset` for a task's split, or a PkdError saying to pass --data-dir."""
    import datasets

    hub_split = spec.hf_splits.get(split)
    if hub_split is None:
        raise PkdError(f"--split: task {spec.name} has no split {split!r}")
    if not sys.stderr.isatty():  # as pkd's own bars: none in log files
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(spec.hf_path, spec.hf_name, split=hub_split)
    except Exception as e:  # offline, or the Hub refused: say what to do instead
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(
            f"--data-dir not given and {spec.hf_path}/{spec.hf_name} could not be loaded from "
            f"the Hub ({first}); pass --data-dir with {what}"
        ) from None


def load_hub_split(spec: TaskSpec, split: str) -> Split:
    """The same split from `datasets.load_dataset` (needs the network)."""

    ds = hub_dataset(spec, split, "the GLUE files")
    fields = spec.hf_text_fields
    names = getattr(ds.features.get("label"), "names", None)
    raw_labels = ds["label"]
    labelled = all(v is not None and v != -1 for v in raw_labels)
    labels = None
    if labelled:
        if spec.problem_type == CLASSIFICATION and names and set(names) <= set(spec.labels):
            raw_labels = [names[v] for v in raw_labels]  # by name: MNLI's Hub order differs
        labels = [
            _parse_label(spec, v, f"{spec.hf_path}/{spec.hf_name}[{split}]") for v in raw_labels
        ]
    ids = (
        [str(i) for i in ds["idx"]]
        if "idx" in ds.column_names
        else [str(i) for i in range(len(ds))]
    )
    text_b = list(ds[fields[1]]) if len(fields) > 1 else None
    return Split(
        split, f"hub:{spec.hf_path}/{spec.hf_name}", ids, list(ds[fields[0]]), text_b, labels
    )


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
        file: an explicit file (custom tasks, or to override the directory's file).
        encoding: text encoding of the file.
        labelled: whether the split has gold labels; default: every split but `test*`
            (RACE's test split too).
    """
    if labelled is None:
        labelled = spec.test_labelled or not split.startswith("test")
    if file is not None and Path(file).is_dir():
        raise PkdError(f"--{file_option(split)}: {file} is a directory, not a file")
    if spec.problem_type == MULTIPLE_CHOICE:  # RACE layout, the Hub, or the user's files
        from pkd.race import load_choice_split

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
        return load_hub_split(spec, split)
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


class EncodedSplit(torch.utils.data.Dataset):
    """A tokenised split. Item i is a dict of token lists plus `labels` and `example_index`."""

    def __init__(self, split: Split, features: dict[str, list], labels: list | None):
        self.split = split
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        item["example_index"] = i
        return item

    def lengths(self) -> list[int]:
        """Tokens per example; multiple choice: of its longest choice."""
        ids = self.features["input_ids"]
        if self.split.choices is not None:
            return [max(map(len, choices)) for choices in ids]
        return [len(x) for x in ids]


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
    Multiple-choice splits are encoded per choice by `pkd.race.encode_choices`.
    """
    if split.choices is not None:
        from pkd.race import encode_choices

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
    (B, choices, T) with `pkd.race.pad_choices`."""
    from transformers import DataCollatorWithPadding

    from pkd.race import pad_choices

    flat = DataCollatorWithPadding(tokenizer, padding="longest")

    def collate(items: list[dict]) -> dict:
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
