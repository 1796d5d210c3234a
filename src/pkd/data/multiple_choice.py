"""Multiple choice: RACE and the user's own multiple-choice files; what the multiple-choice
kind (`pkd.data.kinds.MultipleChoice`) reads, encodes, pads and scores with.

Readers turn each question into one example of a `pkd.data.splits.Split` whose text_a is the
context (the article), text_b the question, `choices` the options and labels the answer
letters (A, B, ...); RACE also keeps each question's level (middle or high school).

- RACE, the original release: `DIR/{train,dev,test}/{middle,high}/*.txt`, each file one JSON
  object `{"article", "questions", "options", "answers", "id"}` with one list entry per
  question; 4 options each, answers as letters. Example ids are `"{file id}-{question index}"`
  (0-based, as in the error messages). Without a directory, `datasets.load_dataset`.
- Custom CSV/TSV/JSONL: `--context-column` (article), `--question-column` (optional),
  `--choices-column` (a JSON list of strings; any number of choices, the same in every row
  of a file) and `--label-column` (a letter A, B, ... or a 0-based index). Predictions are
  always written as letters.

Encoding: per choice `[CLS] context [SEP] question + " " + option [SEP]`, truncating the
context only (`only_first`), never the question or the option. When question + option alone
do not fit, the context is left out and the question is cut from the left, so the option
stays whole (the option itself is cut only when it alone is longer than --max-length); a
warning counts such choices. Features are per-example lists of per-choice token lists;
`pad_choices` pads a batch to (B, choices, T).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from pkd.data.splits import EncodedSplit, Split, hub_dataset, read_jsonl, read_rows, read_text
from pkd.errors import PkdError
from pkd.progress import progress
from pkd.tasks import MULTIPLE_CHOICE, TaskSpec

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RACE_CHOICES = 4


def choice_letter(index: int) -> str:
    """0 -> 'A', 1 -> 'B', ..."""
    return LETTERS[int(index)]


def num_choices(split: Split) -> int:
    """Choices per example of a multiple-choice split (0 for any other split)."""
    return len(split.choices[0]) if split.choices else 0


# ---------------------------------------------------------------------------------------------
# Tasks


def choice_task(
    context_column: str | None,
    question_column: str | None,
    choices_column: str | None,
    label_column: str,
) -> TaskSpec:
    """A multiple-choice task over the user's CSV/TSV/JSONL files.

    Raises:
        PkdError: --context-column or --choices-column missing.
    """
    if not choices_column:
        raise PkdError("--choices-column: required for multiple-choice files")
    if not context_column:
        raise PkdError("--context-column: required for multiple-choice files (e.g. article)")
    columns = (context_column,) if not question_column else (context_column, question_column)
    return TaskSpec(
        name="custom",
        problem_type=MULTIPLE_CHOICE,
        labels=(),  # the letters of as many choices as the files have
        text_columns=columns,
        label_column=label_column,
        metrics=("accuracy",),
        splits={"train": "", "dev": "", "test": ""},
        id_column="id",
        source="custom",
        choices_column=choices_column,
    )


# ---------------------------------------------------------------------------------------------
# Reading


def load_choice_split(
    spec: TaskSpec,
    split: str,
    data_dir: str | None,
    file: str | None,
    encoding: str,
    labelled: bool,
) -> Split:
    """One split of a multiple-choice task: a file, a RACE-layout directory, or the Hub."""
    if file is not None:
        return read_choice_file(spec, Path(file), split, encoding, labelled)
    if spec.source == "custom":
        raise PkdError(f"--{split.split('_')[0]}-file: no file given for the {split} split")
    if split not in spec.splits:
        raise PkdError(
            f"--split: task {spec.name} has no split {split!r}; it has {list(spec.splits)}"
        )
    if data_dir is None:
        return load_hub_race(spec, split, labelled)
    if not Path(data_dir).is_dir():
        raise PkdError(f"--data-dir: {data_dir} is not a directory")
    return read_race_dir(spec, Path(data_dir) / spec.splits[split], split, encoding, labelled)


def _natural(path: Path):
    """'2.txt' before '10.txt'; other names after the numbered ones, by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def read_race_dir(spec: TaskSpec, root: Path, split: str, encoding: str, labelled: bool) -> Split:
    """Read `root/{middle,high}/*.txt` (the levels of spec) into one Split, level by level."""
    if not root.is_dir():
        raise PkdError(
            f"{root}: no such directory (RACE layout: DIR/{{train,dev,test}}/{{middle,high}}/*.txt)"
        )
    files = {level: sorted((root / level).glob("*.txt"), key=_natural) for level in spec.levels}
    if not any(files.values()):
        wanted = " or ".join(f"{level}/" for level in spec.levels)
        raise PkdError(f"{root}: no RACE files (*.txt under {wanted}) for the {split} split")
    for level, paths in files.items():
        if not paths:
            logger.warning("%s: no %s/*.txt files; reading the other level only", root, level)
    ids, articles, questions, choices, labels, levels = [], [], [], [], [], []
    for level, paths in files.items():
        for path in paths:
            for qid, article, question, options, answer in _race_file(path, encoding, labelled):
                ids.append(qid)
                articles.append(article)
                questions.append(question)
                choices.append(options)
                labels.append(answer)
                levels.append(level)
    if not ids:  # files whose question lists are all empty
        raise PkdError(f"{root}: no questions in its RACE files for the {split} split")
    return Split(
        split,
        str(root),
        ids,
        articles,
        questions,
        labels if labelled else None,
        choices,
        levels,
    )


def _race_file(path: Path, encoding: str, labelled: bool):
    """(id, article, question, options, answer) per question of one RACE file."""
    try:
        obj = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as e:
        raise PkdError(f"{path}:{e.lineno}: not a RACE JSON object ({e.msg})") from None
    if not isinstance(obj, dict):
        raise PkdError(f"{path}: expected one JSON object with article, questions, options")
    article = obj.get("article")
    if not isinstance(article, str) or not article.strip():
        raise PkdError(f"{path}: {'empty' if isinstance(article, str) else 'missing'} 'article'")
    keys = ("questions", "options", "answers") if labelled else ("questions", "options")
    lists = {}
    for key in keys:
        value = obj.get(key)
        if not isinstance(value, list):
            raise PkdError(f"{path}: missing {key!r} (a list, one entry per question)")
        lists[key] = value
    n = len(lists["questions"])
    for key in keys[1:]:
        if len(lists[key]) != n:
            raise PkdError(f"{path}: {n} questions but {len(lists[key])} {key}")
    file_id = str(obj.get("id") or path.name)
    for i in range(n):
        question, options = lists["questions"][i], lists["options"][i]
        where = f"{path}: question {i}"
        if not isinstance(question, str):
            raise PkdError(f"{where}: the question is not a string")
        if not isinstance(options, list) or len(options) != RACE_CHOICES:
            found = len(options) if isinstance(options, list) else type(options).__name__
            raise PkdError(f"{where}: expected {RACE_CHOICES} options, found {found}")
        if not all(isinstance(o, str) for o in options):
            raise PkdError(f"{where}: options must be strings")
        answer = None
        if labelled:
            answer = lists["answers"][i]
            valid = LETTERS[:RACE_CHOICES]
            if not isinstance(answer, str) or answer.strip() not in valid:
                raise PkdError(f"{where}: answer {answer!r} is not one of {', '.join(valid)}")
            answer = answer.strip()
        yield f"{file_id}-{i}", article, question, options, answer


def read_choice_file(
    spec: TaskSpec, path: Path, split: str, encoding: str, labelled: bool
) -> Split:
    """The user's multiple-choice CSV/TSV/JSONL file: one question per row."""
    columns = [*spec.text_columns, spec.choices_column]
    if labelled:
        columns.append(spec.label_column)
    if path.suffix.lower() in (".jsonl", ".json"):
        records = [(line, obj) for line, obj in read_jsonl(path, encoding)]
    else:
        rows = read_rows(path, encoding, quoted=True, header=True)
        if not rows:
            raise PkdError(f"{path}: empty file (no header row)")
        header = [h.strip() for h in rows.pop(0)[1]]
        for c in columns:
            if c not in header:
                raise PkdError(f"{path}:1: no column {c!r} in header {header}")
        records = [(line, dict(zip(header, row, strict=False))) for line, row in rows]
    ids, contexts, questions, choices, labels = [], [], [], [], []
    first = None  # (line, number of choices) of the first row
    for n, (line, obj) in enumerate(records):
        where = f"{path}:{line}"
        missing = [c for c in columns if obj.get(c) is None]
        if missing:
            raise PkdError(f"{where}: missing {', '.join(map(repr, missing))}")
        context = obj[spec.text_columns[0]]
        if not isinstance(context, str) or not context.strip():
            raise PkdError(f"{where}: empty {spec.text_columns[0]!r}")
        options = _choices(obj[spec.choices_column], spec.choices_column, where)
        if first is None:
            first = (line, len(options))
        elif len(options) != first[1]:
            raise PkdError(
                f"{where}: {len(options)} choices, but line {first[0]} has {first[1]}; "
                "every row of a file needs the same number of choices"
            )
        ids.append(str(obj["id"]) if obj.get("id") is not None else str(n))
        contexts.append(context)
        if len(spec.text_columns) > 1:
            questions.append(str(obj[spec.text_columns[1]]))
        choices.append(options)
        if labelled:
            labels.append(_answer(obj[spec.label_column], len(options), where))
    if not ids:
        raise PkdError(f"{path}: no examples in the {split} split")
    return Split(
        split,
        str(path),
        ids,
        contexts,
        questions or None,
        labels if labelled else None,
        choices,
        None,
    )


def _choices(value, column: str, where: str) -> list[str]:
    """A JSON list of strings (JSONL: a list, or a string holding one; CSV: a cell)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PkdError(f'{where}: {column!r} is not a JSON list of strings, e.g. ["yes", "no"]')
    if not 2 <= len(value) <= len(LETTERS):
        raise PkdError(f"{where}: {len(value)} choices; need 2 to {len(LETTERS)}")
    return value


def _answer(value, n: int, where: str) -> str:
    """A label as a letter: 'B', 'b' and 1 all mean the second choice."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text) and not isinstance(value, bool):
        index = int(text)
    elif len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    else:
        index = -1
    if not 0 <= index < n:
        raise PkdError(
            f"{where}: label {value!r} is not one of the {n} choices "
            f"(a letter A-{LETTERS[n - 1]} or an index 0-{n - 1})"
        )
    return LETTERS[index]


def load_hub_race(spec: TaskSpec, split: str, labelled: bool) -> Split:
    """RACE from `datasets.load_dataset` (needs the network); ids as in the release layout."""

    ds = hub_dataset(spec, split, "the RACE release (train/ dev/ test/)")
    where = f"{spec.hf_path}/{spec.hf_name}[{split}]"
    seen: dict[str, int] = {}
    ids, levels, labels = [], [], []
    for file_id in ds["example_id"]:
        seen[file_id] = seen.get(file_id, -1) + 1
        ids.append(f"{file_id}-{seen[file_id]}")
        levels.append("high" if str(file_id).startswith("high") else "middle")
    choices = [list(o) for o in ds["options"]]
    for i, options in enumerate(choices):
        if len(options) != RACE_CHOICES:
            raise PkdError(f"{where}: question {ids[i]}: expected 4 options, found {len(options)}")
    if labelled:
        for i, answer in enumerate(ds["answer"]):
            if answer not in LETTERS[:RACE_CHOICES]:
                raise PkdError(f"{where}: question {ids[i]}: answer {answer!r} is not A-D")
            labels.append(answer)
    return Split(
        split,
        f"hub:{where}",
        ids,
        list(ds["article"]),
        list(ds["question"]),
        labels if labelled else None,
        choices,
        levels,
    )


# ---------------------------------------------------------------------------------------------
# Encoding and batching


def encode_choices(
    split: Split, tokenizer, max_length: int, show_progress: bool = True, chunk: int = 512
) -> EncodedSplit:
    """Tokenise every (context, question + option) pair, truncating the context only.

    Returns:
        an EncodedSplit whose features are, per example, lists of per-choice token lists;
        labels are choice indices (A -> 0).

    Raises:
        PkdError: --max-length too small for the special tokens, or examples with differing
            numbers of choices.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 1:
        raise PkdError(f"--max-length: {max_length} leaves no room for text between special tokens")
    c = num_choices(split)
    if any(len(o) != c for o in split.choices):
        raise PkdError(f"{split.source}: every question needs the same number of choices ({c})")
    keep = ["input_ids", "token_type_ids", "attention_mask"]
    features: dict[str, list] = {k: [] for k in keep}
    over = cut_options = 0
    bar = progress(len(split), f"tokenise {split.name}", "ex", quiet=not show_progress)
    for start in range(0, len(split), chunk):
        stop = min(start + chunk, len(split))
        firsts, seconds, options = _choice_pairs(split, start, stop)
        rows, long, cut = _encode_pairs(tokenizer, firsts, seconds, options, budget, max_length)
        over, cut_options = over + long, cut_options + cut
        keep = [k for k in keep if k in rows[0]]
        for e in range(stop - start):  # rows hold c choices per example, in order
            per_choice = rows[e * c : (e + 1) * c]
            for k in keep:
                features[k].append([r[k] for r in per_choice])
        bar.update(stop - start)
    bar.close()
    features = {k: v for k, v in features.items() if len(v) == len(split)}
    if over:
        _warn_context_dropped(split, over, cut_options, c, max_length, budget)
    return EncodedSplit(split, features, _answer_indices(split, c))


def _choice_pairs(split: Split, start: int, stop: int) -> tuple[list, list, list]:
    """(contexts, question + option texts, options) for every choice of examples start..stop."""
    firsts, seconds, options = [], [], []
    for i in range(start, stop):
        question = split.text_b[i] if split.text_b is not None else ""
        for option in split.choices[i]:
            firsts.append(split.text_a[i])
            seconds.append(f"{question} {option}" if question else option)
            options.append(option)
    return firsts, seconds, options


def _encode_pairs(
    tokenizer, firsts: list, seconds: list, options: list, budget: int, max_length: int
) -> tuple[list[dict], int, int]:
    """One encoding per (context, question + option) pair; the context is truncated, and
    dropped where question + option leave no room for it.

    Returns:
        (rows, pairs without their context, options among them longer than the budget).
    """
    sizes = [len(x) for x in tokenizer(seconds, add_special_tokens=False)["input_ids"]]
    fits = [j for j, n in enumerate(sizes) if n < budget]  # >= 1 context token left
    long = [j for j, n in enumerate(sizes) if n >= budget]
    rows: list[dict | None] = [None] * len(seconds)
    if fits:
        enc = tokenizer(
            [firsts[j] for j in fits],
            [seconds[j] for j in fits],
            truncation="only_first",
            max_length=max_length,
        )
        for n, j in enumerate(fits):
            rows[j] = {k: enc[k][n] for k in enc}
    cut_options = 0
    if long:  # the context does not fit at all: question + option alone, cut from the left
        opt = tokenizer([options[j] for j in long], add_special_tokens=False)["input_ids"]
        cut_options = sum(len(x) > budget for x in opt)
        enc = _encode_cut_left(tokenizer, [seconds[j] for j in long], max_length)
        for n, j in enumerate(long):
            rows[j] = {k: enc[k][n] for k in enc}
    return rows, len(long), cut_options


def _encode_cut_left(tokenizer, seconds: list[str], max_length: int):
    """Encode ("", text) pairs, cutting each text from the left to fit `max_length`."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(
            [""] * len(seconds), seconds, truncation="only_second", max_length=max_length
        )
    finally:
        tokenizer.truncation_side = side


def _warn_context_dropped(
    split: Split, over: int, cut_options: int, c: int, max_length: int, budget: int
) -> None:
    logger.warning(
        "%s: %d of %d choices have a question + option longer than --max-length %d allows "
        "(%d tokens); they were encoded without the article and with the question cut from "
        "the left%s",
        split.source,
        over,
        len(split) * c,
        max_length,
        budget,
        f" (and {cut_options} options cut too)" if cut_options else " (options kept whole)",
    )


def _answer_indices(split: Split, c: int) -> list[int] | None:
    """The answer letters as choice indices (A -> 0); None for an unlabelled split."""
    if split.labels is None:
        return None
    labels = [LETTERS.index(v) for v in split.labels]
    if any(v >= c for v in labels):
        raise PkdError(f"{split.source}: answers beyond the {c} choices")
    return labels


def pad_choices(items: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad a batch of multiple-choice items to (B, choices, T) at its longest choice.

    Keeps `labels` (choice index) and `example_index` as (B,) tensors.
    """
    c = len(items[0]["input_ids"])
    if any(len(it["input_ids"]) != c for it in items):
        raise PkdError("a batch mixes questions with different numbers of choices")
    t = max(len(ids) for it in items for ids in it["input_ids"])
    left = tokenizer.padding_side == "left"
    batch = {}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        if key not in items[0]:
            continue
        fill = tokenizer.pad_token_id if key == "input_ids" else 0
        out = torch.full((len(items), c, t), fill if fill is not None else 0, dtype=torch.long)
        for b, it in enumerate(items):
            for j, ids in enumerate(it[key]):
                if left:
                    out[b, j, t - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                else:
                    out[b, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch[key] = out
    if "labels" in items[0]:
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
    batch["example_index"] = torch.tensor([it["example_index"] for it in items], dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------------------------
# Metrics


def level_metrics(split: Split | None, predictions, labels) -> dict[str, float]:
    """Accuracy per RACE level (`accuracy_middle` = RACE-M, `accuracy_high` = RACE-H).

    Empty unless the split records levels and holds more than one.
    """
    levels = getattr(split, "levels", None)
    if not levels or len(set(levels)) < 2 or len(levels) != len(predictions):
        return {}
    lv = np.asarray(levels)
    p, y = np.asarray(predictions), np.asarray(labels)
    order = [x for x in ("middle", "high") if x in set(levels)]
    order += sorted(set(levels) - set(order))
    return {f"accuracy_{x}": float((p[lv == x] == y[lv == x]).mean()) for x in order}
