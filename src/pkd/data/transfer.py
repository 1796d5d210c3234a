"""Transfer sets: unlabelled text the teacher labels, drawn into distillation batches.

Unlabelled text is distillation's own advantage: the teacher's soft labels and layer states
teach on it, while fine-tuning (FT) cannot use it. TinyBERT's task-stage data augmentation
rests on this. `pkd distill --transfer-file FILE` reads texts in the task's text columns
(a GLUE test file works as it is: `glue/RTE/test.tsv`), and:

- the teacher runs once over labelled + transfer examples into one cache (the fingerprint
  covers both, so a changed transfer file builds a new cache);
- an epoch is still one pass over the labelled set; each labelled example i brings
  `--transfer-ratio` r transfer partners, so a batch of b labelled examples holds about r * b
  transfer examples. Partners come from a permutation of the transfer set drawn per epoch
  from (seed, epoch), so batches depend only on (seed, epoch), as the labelled order does,
  and a resumed run draws the same ones; a set cycled through several times per epoch
  never gives one labelled example the same partner twice (`spread`);
- transfer examples carry the label IGNORE_LABEL (regression: NaN): CE skips them, KD and PT
  use every example (`pkd.objectives.losses.ce_loss`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from pkd.config.choices import is_datasets_object
from pkd.config.sections import DataConfig
from pkd.data.kinds import task_kind
from pkd.data.readers import TRANSFER, read_dataset, read_table_split
from pkd.data.splits import EncodedSplit, Split, input_file
from pkd.errors import PkdError
from pkd.tasks import IGNORE_LABEL, TaskSpec

logger = logging.getLogger(__name__)


def load_transfer(spec: TaskSpec, data: DataConfig) -> Split | None:
    """The transfer file(s) as one unlabelled Split (first --max-transfer-samples rows), or
    None without --transfer-file.

    Raises:
        PkdError: a file that does not read (file and line), or a multiple-choice task.
    """
    if not data.transfer_file:
        return None
    if not task_kind(spec).plain_text:
        raise PkdError("--transfer-file: not supported for multiple-choice tasks")
    parts = []
    for name in data.transfer_file:
        if is_datasets_object(name):  # the Python API: a Dataset where a file goes
            parts.append(read_dataset(spec, name, TRANSFER, f"Dataset[{TRANSFER}]", labelled=False))
            continue
        path = input_file("--transfer-file", name, data.transfer_file)
        parts.append(read_table_split(spec, path, TRANSFER, data.encoding, False, header=True))
    pairs = all(p.text_b is not None for p in parts)
    split = Split(
        TRANSFER,
        ",".join(p.source for p in parts),
        [f"{Path(p.source).name}:{i}" for p in parts for i in p.ids],
        [t for p in parts for t in p.text_a],
        [t for p in parts for t in p.text_b] if pairs else None,
        None,
    )
    return split.head(data.max_transfer_samples)


OVERLAP_REFUSED = 0.5  # this share of a dev split's inputs in the transfer set: an error


def check_transfer(transfer: Split, splits: dict[str, Split], ratio: float) -> None:
    """Refuse a transfer set that holds the dev inputs (half of a dev split's inputs or more:
    the dev file given as --transfer-file), warn about a smaller overlap, and refuse a
    --transfer-ratio that draws no transfer example in an epoch.

    Raises:
        PkdError: naming the files and the count.
    """
    inputs = set(zip(transfer.text_a, transfer.text_b or [None] * len(transfer), strict=True))
    for name, split in splits.items():
        if not name.startswith("dev"):
            continue
        pairs = zip(split.text_a, split.text_b or [None] * len(split), strict=True)
        shared = sum(pair in inputs for pair in pairs)
        what = f"{shared} of the {len(split)} inputs of {split.source} ({name}"
        if shared >= OVERLAP_REFUSED * len(split):
            raise PkdError(
                f"--transfer-file: {transfer.source} holds {what}, on which the student is "
                "selected and scored); pass other unlabelled text"
            )
        if shared:
            logger.warning(
                "--transfer-file: %s holds %s): the student is distilled on them and scored on "
                "them",
                transfer.source,
                what,
            )
    labelled = len(splits["train"])
    if math.floor(labelled * ratio) == 0:
        raise PkdError(
            f"--transfer-ratio: {ratio:g} x {labelled} labelled examples draws no transfer "
            f"example per epoch; use at least {math.ceil(1000 / labelled) / 1000:g}"
        )


def with_transfer(labelled: EncodedSplit, transfer: EncodedSplit, problem_type: str):
    """One EncodedSplit of the labelled examples (0..n-1) then the transfer ones (n..), whose
    labels are IGNORE_LABEL (NaN for regression): what the teacher cache is built over."""
    ignore = task_kind(problem_type).no_label
    features = {k: labelled.features[k] + transfer.features[k] for k in labelled.features}
    a, t = labelled.split, transfer.split
    pairs = a.text_b is not None and t.text_b is not None
    split = Split(
        f"{a.name}+{TRANSFER}",
        f"{a.source}+{t.source}",
        a.ids + t.ids,
        a.text_a + t.text_a,
        a.text_b + t.text_b if pairs else None,
        None,
    )
    return EncodedSplit(split, features, list(labelled.labels) + [ignore] * len(transfer))


class TransferMix(torch.utils.data.Dataset):
    """The labelled examples, each with its transfer partners for the current epoch.

    Item i is a list: the labelled example i, then its partners (example indices n + j into
    `combined`, see `with_transfer`); `pkd.data.loading.collator` flattens a batch of such lists.
    Partners are matched by length: the k-th shortest labelled example gets the k-th shortest
    of the epoch's drawn transfer examples, so a batch (with --group-by-length above all)
    pads little more than its labelled examples need.
    """

    def __init__(self, combined: EncodedSplit, labelled: int, ratio: float, seed: int):
        self.combined, self.labelled, self.ratio, self.seed = combined, labelled, ratio, seed
        self.transfer = len(combined) - labelled
        self.length = combined.lengths()  # tokens per example, read once
        by_length = sorted(range(labelled), key=lambda i: self.length[i])
        self.rank = [0] * labelled  # labelled example -> its place in length order
        for place, i in enumerate(by_length):
            self.rank[i] = place
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's partners (the training loop calls this every epoch).

        A transfer set smaller than ratio x labelled is drawn in several rounds (one
        permutation each), so each transfer example has up to `rounds` copies; sorted by
        length, the copies would sit side by side and one labelled example would get the
        same partner several times. `spread` reorders them so that no group of partners
        repeats one, moving each copy only a few places in length order."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 1)
        need = math.ceil(self.labelled * self.ratio)
        rounds = math.ceil(need / self.transfer)  # a small transfer set is cycled through
        order = [torch.randperm(self.transfer, generator=g) for _ in range(rounds)]
        drawn = torch.cat(order)[:need].tolist()
        first = {}  # row -> its first place in the draw: ties in length keep the draw's order
        for place, j in enumerate(drawn):
            first.setdefault(j, place)
        copies = sorted(drawn, key=lambda j: (self.length[self.labelled + j], first[j]))
        if rounds > 1:
            width = rounds * math.ceil(self.ratio)
            copies = spread(copies, rounds, width, int(torch.randint(width, (1,), generator=g)))
        self.order = copies

    def partners(self, i: int) -> list[int]:
        """Transfer example indices (into `combined`) that go with labelled example i."""
        k = self.rank[i]
        lo, hi = math.floor(k * self.ratio), math.floor((k + 1) * self.ratio)
        return [self.labelled + j for j in self.order[lo:hi]]

    def __len__(self) -> int:
        return self.labelled

    def __getitem__(self, i: int) -> list[dict]:
        return [self.combined[i]] + [self.combined[j] for j in self.partners(i)]

    def lengths(self) -> list[int]:
        """Tokens of each labelled example (what --group-by-length sorts by)."""
        return self.length[: self.labelled]


def spread(copies: list[int], rounds: int, width: int, offset: int) -> list[int]:
    """`copies` (each value's copies side by side, at most `rounds` of them) reordered so that
    any width / rounds consecutive values differ, each staying in its block (< 3 x width).

    Cut into blocks of at least `width` (a multiple of `rounds`; the first `offset` longer,
    which moves the cuts each epoch; the last one takes the rest), each block is read column
    by column, last column first, as a table of `rounds` columns: neighbours within a column
    are `rounds` apart in the input, and so never copies of one value. Under 2 x width
    copies are one block; under `width`, too few to keep apart, they may repeat.
    """
    n = len(copies)
    offset = offset % (n - 2 * width + 1) if n >= 2 * width else 0  # leave room for 2 blocks
    starts = [0, *range(width + offset, n - width + 1, width)]
    out = []
    for start, end in zip(starts, [*starts[1:], n], strict=True):
        block = copies[start:end]
        for column in reversed(range(rounds)):
            out += block[column::rounds]
    return out


def labelled_count(labels: torch.Tensor) -> int:
    """How many examples of a batch have a gold label (not IGNORE_LABEL / NaN)."""
    if labels.is_floating_point():
        return int((~torch.isnan(labels)).sum())
    return int((labels != IGNORE_LABEL).sum())
