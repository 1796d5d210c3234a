"""Read task splits, tokenise them once, and batch them with dynamic padding: the
kind-agnostic entry points, and a run's data.

Flow: `load_data_split` (GLUE TSV dir, the user's CSV/TSV/JSONL, the Hub, or a `datasets`
dataset: --dataset or, from Python, a Dataset where a file goes) -> `Split` of raw
texts and label names -> `encode` (fast tokenizer, batched, truncation at max_length) ->
`EncodedSplit`, whose items carry `example_index` so the teacher cache can be joined to
shuffled batches -> `collator` pads each batch to its longest sequence. The task's kind
(`pkd.data.kinds`) reads, encodes and pads: `pkd.data.readers` for single texts and pairs,
`pkd.data.multiple_choice` for multiple choice (RACE and the user's choice files).

A run's data (`DataConfig`): `resolve_task` and `load_splits` (labels inferred for custom
tasks, the optional holdout split), `check_label_sets`, `encode_all`, `majority_baselines`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch

from pkd.config.choices import is_datasets_object
from pkd.config.sections import DataConfig
from pkd.data.kinds import batch_kind, split_kind, task_kind
from pkd.data.readers import file_option
from pkd.data.splits import EncodedSplit, Split, open_dataset
from pkd.errors import PkdError
from pkd.tasks import CLASSIFICATION, TaskSpec, custom_problem, get_task, with_positive_label

logger = logging.getLogger(__name__)

TRUNCATION_WARN = 0.05  # warn when more than 5% of training examples hit --max-length


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
    kind = task_kind(spec)
    if is_datasets_object(file):  # the Python API: a Dataset where a file goes
        return kind.read_dataset(spec, file, split, f"{type(file).__name__}[{split}]", labelled)
    if file is not None and Path(file).is_dir():
        raise PkdError(f"--{file_option(split)}: {file} is a directory, not a file")
    return kind.read(spec, split, data_dir, file, encoding, labelled)


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
) -> EncodedSplit:
    """Tokenise a split once (fast tokenizer, batched), truncating to max_length.

    Labels are mapped by name through label2id (never by position); regression keeps floats.
    Multiple-choice splits (those with choices) are encoded per choice
    (`pkd.data.multiple_choice.encode_choices`).
    """
    kind = split_kind(split, label2id)
    return kind.encode(split, tokenizer, max_length, label2id, show_progress)


def truncated_fraction(encoded: EncodedSplit, max_length: int) -> float:
    """Share of examples that reached max_length (and so were, or may have been, cut)."""
    lengths = encoded.lengths()
    return sum(n >= max_length for n in lengths) / max(1, len(lengths))


def collator(tokenizer):
    """Pads each batch to its longest sequence (dynamic padding); multiple choice to
    (B, choices, T) with `pkd.data.multiple_choice.pad_choices`. An item may be a list of
    examples (a labelled example with its transfer partners, `pkd.data.transfer.TransferMix`):
    they join the batch."""
    pads = {}  # kind name -> its collator

    def collate(items: list) -> dict:
        if items and isinstance(items[0], list):
            items = [example for group in items for example in group]
        kind = batch_kind(items)
        if kind.name not in pads:
            pads[kind.name] = kind.collator(tokenizer)
        return pads[kind.name](items)

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


def eval_loader(
    dataset, batch_size: int, collate, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A loader for scoring a tokenised split (`EncodedSplit`): its examples longest first, so
    each batch pads to about its own length (SST-2's dev set: half the padded tokens of the
    file's order). Predictions come back in the split's order: `predict_logits` puts them
    there by `example_index`. Other datasets keep their order."""
    order = None
    if isinstance(dataset, EncodedSplit):
        lengths = dataset.lengths()
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=order, collate_fn=collate, pin_memory=pin_memory
    )


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
    kind = task_kind(custom_problem(data.problem_type, data.choices_column))
    return kind.custom_task(data, labels)


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
        source = f"dataset:{name}[{hub_name}]"
        return task_kind(spec).read_dataset(spec, part, split, source, labelled)
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
    for split in splits.values():
        task_kind(spec).check_labels(spec, split)


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
    kind = task_kind(spec)
    return {name: kind.majority_baseline(spec, splits[name].labels) for name in spec.eval_splits}
