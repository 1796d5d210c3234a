"""Paper presets: the authors' best configuration per task, method and student depth.

`presets.csv` (package data) holds one row per task x method x student depth, read from the
authors' released result summaries (intersun/PKD-for-BERT-Model-Compression @9e9e860,
`result/glue/result_summary/{ft,kd,pkd}_{3,6}layer[_last]_mean.csv`; the file is named in
each row's `source`). Each summary keeps, per task, the run whose dev accuracy averaged over
its repeats was best; the run name encodes the setting:

    kd.cls.False_MNLI_nlayer.3_lr.5e-05_T.5.0_alpha.0.7_beta.1000.0_bs.32
    ^ PKD, patient loss not L2-normalised (`--normalize_patience False`)

so `lr`, `temperature`, `alpha`, `beta`, `batch_size` and `pt_normalize` are the authors'
values. `epochs` (4) is not in the run names: it is the paper's and their scripts' setting
(`--num_train_epochs 4`); `best_epoch_mean` is the file's `epoch` column (the mean epoch
at which the repeats peaked), `dev_mean` its `acc` column.

Method names: `ft`, `kd`, `pkd-skip` (pkd_6layer_mean.csv; the separate _last file makes the
map distinguishable), `pkd-last`, and `pkd` for the 3-layer students, whose summary does not
say which map was used. `mnli-mm` rows are the authors' selection on the mismatched dev set,
listed for reference; `--task mnli` uses the `mnli` (matched) row.

Precedence when a preset is used: dataclass defaults < --config YAML < preset < options
given on the command line. Where the authors released no row (CoLA or STS-B for PKD, custom
data, ...), a warning says so and the documented defaults stay: never a silent guess.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pkd.config.choices import PRESETS
from pkd.config.files import merge
from pkd.config.runs import DistillRunConfig
from pkd.config.sections import DistillConfig
from pkd.errors import PkdError
from pkd.tasks import get_task

logger = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("presets.csv")
# The loss forms of the authors' code (SPEC §1): KLDivLoss(mean) x T^2 and F.mse_loss.
AUTHORS_FORMS = {"kd_loss": "kl", "pt_loss": "mean"}
# Their optimizer: BertAdam's warmup_linear (10% warm-up, then linear decay to 0).
AUTHORS_SCHEDULE = {"warmup_ratio": 0.1, "lr_schedule": "linear"}
# Which preset values each method uses (the others do not exist for it).
FIELDS = {
    "ft": ("lr", "epochs", "batch_size"),
    "kd": ("lr", "epochs", "batch_size", "temperature", "alpha"),
    "pkd": ("lr", "epochs", "batch_size", "temperature", "alpha", "beta", "pt_normalize"),
}
SECTION = {
    "lr": "train",
    "epochs": "train",
    "batch_size": "train",
    "temperature": "distill",
    "alpha": "distill",
    "beta": "distill",
    "pt_normalize": "distill",
}


@dataclass(frozen=True)
class Preset:
    """One row of presets.csv."""

    task: str
    method: str  # ft | kd | pkd | pkd-skip | pkd-last
    student_layers: int
    lr: float
    temperature: float
    alpha: float
    beta: float
    pt_normalize: bool | None  # None: no patient loss in this method
    epochs: int
    batch_size: int
    dev_mean: float
    best_epoch_mean: float
    run: str
    source: str

    def values(self, method: str) -> dict:
        """The nested config values this preset sets for a `DistillConfig.method`."""
        out: dict = {"train": dict(AUTHORS_SCHEDULE), "distill": {}}
        for name in FIELDS[method]:
            value = getattr(self, name)
            if value is not None:
                out[SECTION[name]][name] = value
        if method != "ft":
            out["distill"]["kd_loss"] = AUTHORS_FORMS["kd_loss"]
        if method == "pkd":
            out["distill"]["pt_loss"] = AUTHORS_FORMS["pt_loss"]
        return out

    def describe(self) -> str:
        return f"{self.source.rsplit('/', 1)[-1]} run {self.run}"


@lru_cache(maxsize=1)
def table() -> tuple[Preset, ...]:
    """All rows of presets.csv, in file order."""
    rows = []
    with open(TABLE, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(
                Preset(
                    task=r["task"],
                    method=r["method"],
                    student_layers=int(r["student_layers"]),
                    lr=float(r["lr"]),
                    temperature=float(r["temperature"]),
                    alpha=float(r["alpha"]),
                    beta=float(r["beta"]),
                    pt_normalize={"true": True, "false": False, "": None}[r["pt_normalize"]],
                    epochs=int(r["epochs"]),
                    batch_size=int(r["batch_size"]),
                    dev_mean=float(r["dev_mean"]),
                    best_epoch_mean=float(r["best_epoch_mean"]),
                    run=r["run"],
                    source=r["source"],
                )
            )
    return tuple(rows)


def method_name(method: str, strategy: str = "skip") -> str:
    """`DistillConfig` (method, strategy) -> the table's method name (`pkd-skip`, ...)."""
    return f"pkd-{strategy}" if method == "pkd" else method


def _task_name(task: str) -> str | None:
    if not task or task == "custom":
        return None
    return get_task(task).name  # `SST-2` -> `sst2`; an unknown name is a PkdError


def find(task: str, method: str, strategy: str, layers: int) -> tuple[Preset | None, str]:
    """The authors' row for a run, and a note on how it was chosen (or why there is none).

    A PKD run matches the row of its map (`pkd-skip`/`pkd-last`); the 3-layer rows say only
    `pkd`, and serve both maps, with a note.
    """
    name = _task_name(task)
    wanted = method_name(method, strategy)
    if name is None:
        return None, f"task {task!r} is not a GLUE task the authors ran"
    rows = [p for p in table() if p.task == name and p.student_layers == layers]
    for p in rows:
        if p.method == wanted:
            return p, ""
    if method == "pkd":
        for p in rows:
            if p.method == "pkd":
                return p, (
                    f"the authors' {layers}-layer PKD result does not say which layer map it "
                    f"used; its setting serves {wanted}"
                )
    if not any(p.task == name for p in table()):
        return None, f"the authors released no results for {name}"
    have = sorted({f"{p.method}/{p.student_layers}" for p in table() if p.task == name})
    return None, (
        f"the authors released no {wanted} result for {name} with a {layers}-layer student "
        f"(they have {', '.join(have)})"
    )


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _defaults() -> dict:
    """Documented defaults of the preset fields, as `pkd distill` uses them."""
    train = dataclasses.asdict(DistillRunConfig.__dataclass_fields__["train"].default_factory())
    distill = dataclasses.asdict(DistillConfig())
    return {"train": train, "distill": distill}


def apply(values: dict, options: dict | None = None, warned: set | None = None) -> dict:
    """Merge a run's nested config values with the preset it names (`distill.preset`).

    Args:
        values: the lower layer (a `--config` YAML, or the values built in Python).
        options: the upper layer (options given on the command line): they override the preset.
        warned: messages already shown (e.g. one per method across `compare`'s seeds).

    Returns:
        `values < preset < options`, with `distill.preset_source` naming the authors' file and
        run (or saying there was none). Without a preset, `values < options`.

    Raises:
        PkdError: an unknown preset name or task.
    """
    options = options or {}
    merged = merge(values, options)
    distill = dict(merged.get("distill") or {})
    name = distill.get("preset")
    if not name:
        distill.pop("preset_source", None)
        return {**merged, "distill": distill} if "distill" in merged else merged
    if name not in PRESETS:
        raise PkdError(f"--preset: {name!r} is not one of {', '.join(PRESETS)}")
    defaults = _defaults()
    method = distill.get("method", defaults["distill"]["method"])
    strategy = distill.get("strategy", defaults["distill"]["strategy"])
    layers = int(distill.get("student_layers", defaults["distill"]["student_layers"]))
    task = (merged.get("data") or {}).get("task", "custom")
    row, note = find(task, method, strategy, layers)
    warned = set() if warned is None else warned
    if row is None:
        effective = merge(defaults, merged)
        kept = ", ".join(
            f"{k}={_fmt(effective[SECTION[k]][k])}" for k in FIELDS.get(method, FIELDS["pkd"])
        )
        message = (
            f"--preset {name}: {note}; using the documented defaults and your options ({kept})"
        )
        if message not in warned:
            warned.add(message)
            logger.warning(message)
        preset_values: dict = {}
        source = f"none: {note}"
    else:
        preset_values = row.values(method)
        source = row.source
        message = (
            f"--preset {name}: {method_name(method, strategy)}, {layers}-layer student on "
            f"{row.task} from {row.describe()}" + (f" ({note})" if note else "")
        )
        if message not in warned:
            warned.add(message)
            logger.info(message)
    out = merge(merge(values, preset_values), options)
    out["distill"] = {**(out.get("distill") or {}), "preset_source": source}
    return out


def format_table(rows: tuple[Preset, ...] | None = None) -> str:
    """The presets as a Markdown table (what `pkd presets` prints)."""
    rows = table() if rows is None else rows
    tasks = list(dict.fromkeys(p.task for p in table()))
    methods = ("ft", "kd", "pkd", "pkd-skip", "pkd-last")
    rows = sorted(
        rows, key=lambda p: (tasks.index(p.task), p.student_layers, methods.index(p.method))
    )
    head = ["task", "method", "layers", "lr", "T", "alpha", "beta", "PT norm", "epochs", "batch"]
    head += ["dev mean", "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in rows:
        cells = [
            p.task,
            p.method,
            p.student_layers,
            f"{p.lr:g}",
            f"{p.temperature:g}" if p.method != "ft" else "-",
            f"{p.alpha:g}",
            f"{p.beta:g}",
            "-" if p.pt_normalize is None else str(p.pt_normalize).lower(),
            p.epochs,
            p.batch_size,
            f"{100 * p.dev_mean:.1f}",
            p.source.rsplit("/", 1)[-1],
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    notes = (
        "Values from the authors' released dev-set summaries "
        "(intersun/PKD-for-BERT-Model-Compression @9e9e860, result/glue/result_summary/); "
        "dev mean: their `acc` column, averaged over repeats. epochs 4 is their scripts' "
        "setting (not in the run names). `pkd` rows (3 layers) do not say skip or last. "
        "Use with `pkd distill --preset paper` or `pkd compare --preset paper`; "
        "options given on the command line override a preset."
    )
    return "\n".join(lines) + "\n\n" + notes
