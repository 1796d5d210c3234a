"""Examples in memory, and the files they are read from.

`Split` holds a split's raw texts and label names, `EncodedSplit` its token ids; the
readers turn CSV/TSV (GLUE's unquoted files and the user's quoted ones) and JSONL into rows,
naming file:line on bad input, `hub_dataset` loads a split from the Hub and `open_dataset`
the user's `datasets` dataset (--dataset); both leave `datasets`' progress bars as the host
set them (`pkd.cli.configure_logging` turns them off where stderr is not a terminal).
`pkd.data.readers` (single texts and pairs) and `pkd.data.multiple_choice` (multiple
choice) build on these.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pkd.errors import PkdError
from pkd.tasks import TaskSpec


@dataclass
class Split:
    """Raw examples of one split.

    `labels` holds label names (classification) or floats (regression), None when the
    split is unlabelled (GLUE test files). Multiple choice (`pkd.data.multiple_choice`): text_a is the
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


def input_file(option: str, name: str | Path, listed: list | None = None) -> Path:
    """The file an option names, refused when it is a directory or missing. `listed`: all
    the names of an option that takes several (A,B), to say that commas separate them.
    """
    path = Path(name)
    if path.is_dir():
        raise PkdError(f"{option}: {name} is a directory, not a file")
    if not path.is_file():
        names = [str(n) for n in listed or [] if isinstance(n, (str, Path))]
        if len(names) > 1 and Path(",".join(names)).is_file():
            raise PkdError(
                f"{option}: {','.join(names)} was read as {len(names)} files ({', '.join(names)}): "
                "commas separate files; rename the file without commas"
            )
        if len(names) > 1:
            raise PkdError(f"{option}: {name} not found (commas separate the files of {option})")
        raise PkdError(f"{option}: {name} not found")
    return path


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


def file_columns(path: Path, encoding: str) -> list[str]:
    """The column names of a CSV/TSV file's header row or a JSONL file's first object,
    without reading the rest; [] when it does not read (its reader names the problem)."""
    try:
        with open(path, encoding=encoding, newline="") as f:
            if path.suffix.lower() in (".jsonl", ".json"):
                first = next((line for line in f if line.strip()), "{}")
                obj = json.loads(first)
                return list(obj) if isinstance(obj, dict) else []
            delimiter = "," if path.suffix.lower() == ".csv" else "\t"
            header = next(csv.reader(f, delimiter=delimiter), [])
    except (OSError, ValueError, LookupError, csv.Error):  # UnicodeDecodeError is a ValueError
        return []
    return [h.strip().removeprefix("\ufeff") for h in header]


def hub_dataset(spec: TaskSpec, split: str, what: str):
    """`datasets.load_dataset` for a task's split, or a PkdError saying to pass --data-dir."""
    import datasets  # only for splits from the Hub (files need none of it)

    hub_split = spec.hf_splits.get(split)
    if hub_split is None:
        raise PkdError(f"--split: task {spec.name} has no split {split!r}")
    try:
        return datasets.load_dataset(spec.hf_path, spec.hf_name, split=hub_split)
    except Exception as e:  # offline, or the Hub refused: say what to do instead
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(
            f"--data-dir not given and {spec.hf_path}/{spec.hf_name} could not be loaded from "
            f"the Hub ({first}); pass --data-dir with {what}"
        ) from None


def open_dataset(name: str, config: str | None = None):
    """--dataset NAME_OR_PATH [--dataset-config C]: a save_to_disk directory through
    `datasets.load_from_disk`, anything else (a Hub name, a local data directory or script)
    through `datasets.load_dataset`; a `DatasetDict` of its splits.

    Raises:
        PkdError: it does not load, or it is a single split.
    """
    import datasets  # only for data from `datasets` (files need none of it)

    path = Path(name)
    if path.is_file():
        raise PkdError(
            f"--dataset: {name} is a file, not a dataset; pass files as --train-file and "
            "--validation-file (--dataset takes a Hub name or a dataset directory)"
        )
    saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))
    if saved and config is not None:
        raise PkdError(
            f"--dataset-config: {name} is a save_to_disk directory, which has no configurations"
        )
    try:
        ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(name, config)
    except Exception as e:  # offline, no such dataset, a damaged directory
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PkdError(f"--dataset: cannot load {name} ({first})") from None
    if not isinstance(ds, dict):
        raise PkdError(
            f"--dataset: {name} is a single split (a Dataset); save a DatasetDict with train "
            "and validation splits"
        )
    return ds


# ---------------------------------------------------------------------------------------------
# Tokenised


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
