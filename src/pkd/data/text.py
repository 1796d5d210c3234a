"""Unlabelled text for `pkd pretrain`: read, held out, tokenised, masked for MLM.

Sources (`pkd.config.sections.TextConfig`), read in this order and joined into one `Split`:

- `--text-file`: plain-text files, one passage a line (blank lines skipped), or JSONL,
  CSV and TSV files whose `--text-column` holds the passage; several files or a glob;
- `--task` with `--data-dir`: every sentence of a GLUE task's `--glue-splits` (both
  sentences of a pair task, each on its own), read by `pkd.data.readers`; labels are ignored;
- `--dataset`: a `save_to_disk` directory (memory-mapped) or a `datasets` Hub name (streamed,
  so `--max-texts` rows are all that is read), its `--text-column` (default `text`).

Passages are truncated to `--max-length` tokens, one passage a sequence: packing several
into one sequence would put text the task stage never sees (several sentences behind one
[CLS]) into every batch. Bad input names the file and line (`pkd.data.splits.read_text`: bytes
that are not the `--encoding`; an empty file; a JSONL line without the column).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
from pathlib import Path

import torch

from pkd.config.sections import TextConfig
from pkd.data.kinds import task_kind
from pkd.data.loading import collator, load_split, split_holdout
from pkd.data.readers import read_table_split
from pkd.data.splits import EncodedSplit, Split, input_file, read_jsonl, read_text
from pkd.errors import PkdError
from pkd.tasks import IGNORE_LABEL, REGRESSION, custom_task, get_task

logger = logging.getLogger(__name__)

TEXT = "text"  # the split name of the corpus
HELD_OUT = "heldout"  # the split the distillation loss is evaluated on each epoch
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
PAIRS = (
    "pairs"  # the split name of scored pairs (`--eval-pairs`, `pkd evaluate` of an embedding model)
)
PAIR_COLUMNS = ("sentence1", "sentence2", "score")  # --eval-pairs' columns (STS-B's names)


# ---------------------------------------------------------------------------------------------
# Reading


def text_files(patterns: list[str]) -> list[Path]:
    """The files `--text-file` names: paths, or globs expanded in sorted order."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            found = [p for p in found if p.is_file()]
            if not found:
                raise PkdError(f"--text-file: no file matches {pattern!r}")
            files += found
            continue
        files.append(input_file("--text-file", pattern, patterns))
    return files


def read_passages(path: Path, column: str | None, encoding: str) -> list[str]:
    """The passages of one file: its lines, or the `column` of a JSONL/CSV/TSV file.

    Raises:
        PkdError: naming the file and line: not the encoding, an empty file, a row without
            the column (or a table file without --text-column).
    """
    text = read_text(path, encoding)
    if not text.strip():
        raise PkdError(f"{path}:1: empty file, no text to distil on")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        return [line.strip() for line in text.split("\n") if line.strip()]
    if not column:
        raise PkdError(f"--text-column: required to read {path} (which column holds the text?)")
    if path.suffix.lower() in (".jsonl", ".json"):
        values = []
        for line, obj in read_jsonl(path, encoding):
            if column not in obj:
                raise PkdError(f"{path}:{line}: no key {column!r} (keys: {', '.join(obj)})")
            if not isinstance(obj[column], str):
                raise PkdError(f"{path}:{line}: {column!r} is {obj[column]!r}, not text")
            values.append(obj[column])
    else:  # a header row names the column, as in a custom task's unlabelled file
        spec = custom_task((column,), column)
        values = read_table_split(spec, path, TEXT, encoding, False, header=True).text_a
    return [t.strip() for t in values if t.strip()]


def task_sentences(cfg: TextConfig) -> list[str]:
    """Every sentence of a GLUE task's `--glue-splits` (labels ignored; pairs: both)."""
    spec = get_task(cfg.task)
    if not task_kind(spec).plain_text:
        raise PkdError(f"--task: {cfg.task} is multiple choice; pass its texts as --text-file")
    unknown = [name for name in cfg.glue_splits if name not in spec.splits]
    if unknown:
        raise PkdError(
            f"--glue-splits: task {spec.name} has no split {unknown[0]!r}; it has "
            f"{', '.join(spec.splits)}"
        )
    out = []
    for name in cfg.glue_splits:
        split = load_split(spec, name, cfg.data_dir, None, cfg.encoding)
        for pair in zip(split.text_a, split.text_b or [None] * len(split), strict=True):
            out += [t.strip() for t in pair if t and t.strip()]
    return out


def dataset_passages(cfg: TextConfig, limit: int | None) -> list[str]:
    """The `--text-column` of a `save_to_disk` directory or a streamed Hub dataset (at most
    `limit` rows read).

    Raises:
        PkdError: it does not load, lacks the split or column, or a row is not text.
    """
    import datasets  # only for --dataset (files need none of it)

    column, name = cfg.text_column or "text", cfg.dataset
    if Path(name).is_file():
        raise PkdError(
            f"--dataset: {name} is a file, not a dataset; pass text files as --text-file"
        )
    try:
        if Path(name).exists():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(
                name, cfg.dataset_config, split=cfg.dataset_split, streaming=True
            )
    except Exception as e:  # offline, not a dataset, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(f"--dataset: cannot load {name} ({first})") from None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.dataset_split not in ds:
            raise PkdError(
                f"--dataset-split: {name} has no split {cfg.dataset_split!r} ({', '.join(ds)})"
            )
        ds = ds[cfg.dataset_split]
    columns = ds.column_names
    if columns is not None and column not in columns:
        raise PkdError(
            f"--text-column: {name} has no column {column!r} (columns: {', '.join(columns)})"
        )
    out = []
    for row, example in enumerate(ds):
        if limit is not None and len(out) >= limit:
            break
        value = example.get(column)
        if not isinstance(value, str):
            raise PkdError(f"--dataset: {name}[{row}]: {column!r} is {value!r}, not text")
        if value.strip():
            out.append(value.strip())
    return out


def load_texts(cfg: TextConfig) -> Split:
    """Every passage of every source, in the order read, cut at `--max-texts`.

    Raises:
        PkdError: a bad source (see the readers), or fewer than 2 passages in all.
    """
    passages, sources = [], []
    for path in text_files(cfg.text_file or []):
        passages += read_passages(path, cfg.text_column, cfg.encoding)
        sources.append(str(path))
    if cfg.task:
        passages += task_sentences(cfg)
        sources.append(f"{cfg.task}:{cfg.data_dir or 'hub'}")
    if cfg.dataset:
        left = None if cfg.max_texts is None else max(0, cfg.max_texts - len(passages))
        passages += dataset_passages(cfg, left)
        sources.append(cfg.dataset)
    passages = passages[: cfg.max_texts]
    if len(passages) < 2:
        raise PkdError(
            f"--text-file: {len(passages)} passage(s) in {', '.join(sources)}; need 2 or more"
        )
    ids = [str(i) for i in range(len(passages))]
    return Split(TEXT, ",".join(sources), ids, passages, None, None)


def hold_out(texts: Split, eval_texts: int) -> tuple[Split, Split]:
    """(training passages, held-out passages): a fixed sample of `eval_texts`, at most a
    tenth of the corpus (at least one passage), as `pkd.data.loading.split_holdout` draws it."""
    k = max(1, min(eval_texts, len(texts) // 10))
    train, held = split_holdout(texts, k / len(texts))
    return train, Split(HELD_OUT, held.source, held.ids, held.text_a, None, None)


# ---------------------------------------------------------------------------------------------
# MLM masking


class MaskedText(torch.utils.data.Dataset):
    """Tokenised passages with BERT's MLM masking: each non-special token is chosen with
    `probability`; a chosen one becomes [MASK] (80%), a random token (10%) or stays (10%),
    and its `mlm_labels` entry keeps the original id (IGNORE_LABEL elsewhere).

    The masks depend only on (seed, epoch, example): a resumed run masks as an uninterrupted
    one. `fixed` (the held-out set): masked as in epoch 0 at every evaluation, whatever epoch
    accelerate's loader sets (it counts the passes of this process, which a resume restarts).
    The training loop sets the training set's epoch itself (`pkd.training.loop.epoch_batches`).
    """

    def __init__(
        self, encoded: EncodedSplit, tokenizer, probability: float, seed: int, fixed: bool = False
    ):
        self.encoded, self.probability, self.seed, self.epoch = encoded, probability, seed, 0
        self.fixed = fixed
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.mask_id, self.vocab = tokenizer.mask_token_id, len(tokenizer)
        if self.mask_id is None:
            raise PkdError("--mlm-weight: the teacher's tokenizer has no [MASK] token")

    def set_epoch(self, epoch: int) -> None:  # the training loop's, each epoch (`epoch_batches`)
        if not self.fixed:
            self.epoch = epoch

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.encoded[i])
        ids = torch.tensor(item["input_ids"])
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + i)
        chosen = (torch.rand(len(ids), generator=g) < self.probability) & ~torch.isin(
            ids, self.special
        )
        action = torch.rand(len(ids), generator=g)
        random_ids = torch.randint(self.vocab, (len(ids),), generator=g)
        masked = torch.where(chosen & (action < 0.8), self.mask_id, ids)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
        item["input_ids"] = masked.tolist()
        item["mlm_labels"] = torch.where(chosen, ids, IGNORE_LABEL).tolist()
        return item

    def lengths(self) -> list[int]:
        return self.encoded.lengths()


def mlm_collator(tokenizer):
    """`pkd.data.loading.collator`, with each item's `mlm_labels` padded by IGNORE_LABEL
    (items without them, as they are)."""
    pad = collator(tokenizer)
    left = tokenizer.padding_side == "left"

    def collate(items: list[dict]) -> dict:
        if "mlm_labels" not in items[0]:  # scored pairs (--eval-pairs): never masked
            return pad(items)
        labels = [item["mlm_labels"] for item in items]
        batch = pad([{k: v for k, v in item.items() if k != "mlm_labels"} for item in items])
        width = batch["input_ids"].shape[1]
        fill = [[IGNORE_LABEL] * (width - len(row)) for row in labels]
        rows = [f + r if left else r + f for r, f in zip(labels, fill, strict=True)]
        batch["mlm_labels"] = torch.tensor(rows)
        return batch

    return collate


# ---------------------------------------------------------------------------------------------
# Scored pairs (embedding models)


def read_pairs(name: str, encoding: str = "utf-8") -> Split:
    """`--eval-pairs`: sentence pairs with a score, in a file with a header (TSV as GLUE's
    STS-B files, unquoted; CSV; or JSONL) whose columns are `PAIR_COLUMNS`.

    Raises:
        PkdError: a missing file or column, or a score that is not a number (file:line).
    """
    path = input_file("--eval-pairs", name)
    spec = custom_task(PAIR_COLUMNS[:2], PAIR_COLUMNS[2], REGRESSION)
    if path.suffix.lower() == ".tsv":
        spec = dataclasses.replace(spec, source="glue")  # GLUE's TSV: a quote is text
    return read_table_split(spec, path, PAIRS, encoding, True, header=True)


def pair_texts(pairs: Split) -> Split:
    """The sentences of scored pairs interleaved (a_0, b_0, a_1, b_1, ...), each labelled with
    its pair's score: one text per example, as an embedding model encodes them.

    Raises:
        PkdError: the split has one text column, not two.
    """
    if pairs.text_b is None:
        raise PkdError(
            f"{pairs.source}: scored pairs need two text columns (e.g. --text-columns "
            "sentence1,sentence2), found one"
        )
    texts = [t for pair in zip(pairs.text_a, pairs.text_b, strict=True) for t in pair]
    labels = [y for y in pairs.labels for _ in range(2)]
    ids = [f"{i}{side}" for i in pairs.ids for side in "ab"]
    return Split(pairs.name, pairs.source, ids, texts, None, labels)
