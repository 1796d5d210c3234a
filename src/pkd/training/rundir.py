"""A run directory's lifecycle: check, start, resume, finish.

`pkd finetune` and `pkd distill` write one directory per run (README "Commands"). Before
anything is loaded, `open_run` refuses an --output that holds another run (unless
--overwrite or --resume), is or holds an input, or cannot be written, and finds the
checkpoint to resume from; `start_run` creates it with config.yaml (resolved options and
`provenance`); `finish_run` writes the model card (`pkd.models.card`) and metrics.json last, the
mark of a finished run. `run_lock` keeps a second process out of a directory that a run is
writing (its lock file, `.pkd.lock`, names the run that holds it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import accelerate
import torch
import transformers
import yaml

from pkd import __version__
from pkd.config.files import config_drift, save, to_dict
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig, PretrainRunConfig
from pkd.config.sections import DataConfig
from pkd.data.loading import truncated_fraction
from pkd.errors import PkdError
from pkd.fsio import (
    atomic_write,
    file_sha256,
    lock_record,
    nearest_existing,
    try_lock,
    write_error,
)
from pkd.models.card import write_model_card
from pkd.models.encoders import DEV_METRIC_KEY
from pkd.models.results import RunResult
from pkd.models.students import student_init_name
from pkd.training.checkpoints import checkpoints

Inputs = Sequence[tuple[str, str | None]]  # (option, path) pairs that a command reads
LOCK_FILE = ".pkd.lock"  # in a directory a run is writing (`run_lock`)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checks


def check_output(output: str, overwrite: bool, resume: bool = False, inputs: Inputs = ()) -> Path:
    """Refuse to reuse a run directory unless --overwrite (or --resume), and one that is or
    holds an input (`inputs`: (option, path) pairs; see `check_not_input`)."""
    path = Path(output)
    check_creatable(path, "--output")
    check_not_input(path, "--output", inputs)
    if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()):
        if not (overwrite or resume):
            what = "a finished run" if (path / "metrics.json").exists() else "files"
            raise PkdError(
                f"--output: {output} already holds {what}; pass --overwrite to replace it"
            )
    return path


def check_creatable(path: Path, option: str) -> None:
    """Refuse a directory path that is a file or whose nearest existing parent cannot be
    written."""
    if path.exists() and not path.is_dir():
        raise PkdError(f"{option}: {path} exists and is not a directory")
    check_writable(path, option)


def check_writable(path: Path, option: str) -> None:
    """Refuse a path (file or directory) that cannot be created: its nearest existing parent
    is a file or cannot be written."""
    parent = existing_parent(path, option)
    problem = write_error(parent)
    if problem:
        raise PkdError(f"{option}: cannot create {path}: {parent} is not writable ({problem})")


def existing_parent(path: Path, option: str) -> Path:
    """The nearest existing directory above `path`; refuses a path under a file."""
    parent = nearest_existing(path.resolve().parent)
    if not parent.is_dir():
        raise PkdError(f"{option}: cannot create {path}: {parent} is a file, not a directory")
    return parent


def check_not_input(output: Path, option: str, inputs: Inputs) -> None:
    """Refuse an output path that is one of the inputs, or a directory that holds one: an
    --overwrite (or a write) there would destroy what the command reads.

    inputs: (option, path) pairs; None, Hub names, missing paths and in-memory `datasets`
    objects are skipped.
    """
    out = output.resolve()
    for name, value in inputs:
        if not isinstance(value, (str, Path)) or not value or not Path(value).exists():
            continue
        src = Path(value).resolve()
        if out == src or out in src.parents:
            raise PkdError(
                f"{option}: {output} {'is' if out == src else 'holds'} the {name} {value}; "
                f"writing there would destroy it; choose another {option}"
            )


def check_not_replaced(output: Path, replaced: tuple[str, ...], inputs: Inputs) -> None:
    """`compare` and `sweep` write inside --output but replace only these sub-directories
    (unfinished runs, trials): an input may live in --output (a teacher trained beside its
    students), never in one of them."""
    for sub in replaced:
        check_not_input(output / sub, "--output", inputs)


def data_inputs(data: DataConfig) -> Inputs:
    """The data paths a command reads, with their options."""
    return [
        ("--data-dir", data.data_dir),
        ("--dataset", data.dataset),
        ("--train-file", data.train_file),
        ("--validation-file", data.validation_file),
        ("--test-file", data.test_file),
    ]


def run_inputs(cfg: FinetuneRunConfig | DistillRunConfig | PretrainRunConfig) -> Inputs:
    """What a finetune/distill/pretrain run reads: its --output must not be or hold any of it."""
    if isinstance(cfg, FinetuneRunConfig):
        return [("--model", cfg.model), *data_inputs(cfg.data)]
    if isinstance(cfg, PretrainRunConfig):
        t = cfg.text
        files = [("--text-file", f) for f in t.text_file or []]
        sources = [("--data-dir", t.data_dir), ("--dataset", t.dataset), *files]
        return [("--teacher", cfg.teacher), ("--student-init", cfg.pretrain.student_init), *sources]
    init = student_init_name(cfg.teacher, cfg.distill.student_init, cfg.trust_remote_code)
    return [("--teacher", cfg.teacher), ("--student-init", init), *data_inputs(cfg.data)]


# ---------------------------------------------------------------------------------------------
# Locking

_HELD: set[Path] = set()  # the run directories this process holds (a nested run_lock passes)


@contextlib.contextmanager
def run_lock(output: str | Path, option: str = "--output") -> Iterator[Path]:
    """Hold the directory `output` for one run: create it and its lock file `.pkd.lock`
    (pid, host, command, start time) before anything is written, remove both when the block
    ends (the directory only if this run created it and left it empty).

    A directory another live run holds is refused, naming that run; a lock left by a
    process of this host that no longer runs is taken over with a warning. Under torchrun
    the main process (RANK 0) holds the lock for all; the others pass through.
    """
    path = Path(output)
    key = path.resolve()
    if os.environ.get("RANK", "0") != "0" or key in _HELD:
        yield path
        return
    check_creatable(path, option)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        mine, record = try_lock(path / LOCK_FILE)
    except OSError as e:  # e.g. an existing directory that is itself read-only
        raise PkdError(f"{option}: cannot write in {path} ({e.strerror})") from None
    if not mine:
        hint = f"wait for it to end or choose another {option}; if no run is writing there, delete {path / LOCK_FILE}"
        if not record or record.get("host") != socket.gethostname():
            hint = f"if no run is writing there, delete {path / LOCK_FILE}"
        raise PkdError(f"{option}: {path} is in use by another run ({holder(record)}); {hint}")
    if record:
        logger.warning("%s: took over the lock of a run that is gone (%s)", path, holder(record))
    _HELD.add(key)
    try:
        yield path
    finally:
        _HELD.discard(key)
        if lock_record(path / LOCK_FILE).get("pid") in (os.getpid(), None):
            (path / LOCK_FILE).unlink(missing_ok=True)  # ours (never another run's)
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: a run that wrote nothing leaves nothing


def holder(record: dict) -> str:
    """A lock file's record as a user reads it."""
    if not record:
        return "its lock file cannot be read"
    return (
        f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: "
        f"{record.get('command')}"
    )


def locks_output(run):
    """Decorate a run function `run(cfg, dry_run=False, **kw)` so that it runs holding
    cfg.output (`run_lock`); a dry run writes nothing and takes no lock."""

    @functools.wraps(run)
    def locked(cfg, dry_run: bool = False, **kwargs):
        if dry_run:
            return run(cfg, dry_run, **kwargs)
        with run_lock(cfg.output):
            return run(cfg, dry_run, **kwargs)

    return locked


# ---------------------------------------------------------------------------------------------
# Resuming


def resume_point(cfg: FinetuneRunConfig | DistillRunConfig | PretrainRunConfig) -> Path | None:
    """The checkpoint to continue from (--resume: latest in the run dir; --resume-from: given)."""
    if cfg.resume_from:
        ckpt = Path(cfg.resume_from)
        if not (ckpt / "trainer_state.json").is_file():
            raise PkdError(
                f"--resume-from: {ckpt} is not a complete checkpoint (no trainer_state.json)"
            )
        return ckpt
    if not cfg.resume:
        return None
    if (Path(cfg.output) / "metrics.json").is_file():
        raise PkdError(f"--resume: {cfg.output} holds a finished run; nothing to resume")
    found = checkpoints(Path(cfg.output))
    if not found:
        raise PkdError(f"--resume: no complete checkpoint in {cfg.output}/checkpoints")
    return found[-1]


def check_resume_config(cfg: FinetuneRunConfig | DistillRunConfig | PretrainRunConfig) -> None:
    """A resumed run must continue with the settings it started with (its config.yaml).

    Only settings that cannot change the result (`config.NO_EFFECT`: --logging-steps,
    --quiet, --save-steps, ...) may differ; anything else would train a mixture.
    """
    path = Path(cfg.output) / "config.yaml"
    if not path.is_file():  # --resume-from into a new run directory
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PkdError(f"{path}: cannot read the run's config ({e})") from None
    diffs = config_drift(saved if isinstance(saved, dict) else {}, to_dict(cfg))
    if diffs:
        option = "--resume-from" if cfg.resume_from else "--resume"
        raise PkdError(
            f"{option}: {cfg.output} was started with other settings ({'; '.join(diffs)}); "
            f"resume with its own (--config {path} {option}) or start a new --output"
        )


def open_run(
    cfg: FinetuneRunConfig | DistillRunConfig | PretrainRunConfig,
) -> tuple[Path, Path | None]:
    """Every check of a run's --output and resume options: (run dir, checkpoint or None).

    Nothing is written; `start_run` creates the directory once all other checks passed.
    """
    resume = bool(cfg.resume or cfg.resume_from)
    output = check_output(cfg.output, cfg.overwrite, resume, run_inputs(cfg))
    ckpt = resume_point(cfg)
    if ckpt is not None:
        check_resume_config(cfg)
    return output, ckpt


# ---------------------------------------------------------------------------------------------
# Writing


def start_run(
    path: Path,
    cfg,
    accelerator,
    resuming: bool,
    resolved: dict | None = None,
    data: dict | None = None,
) -> None:
    """Create the run dir (replacing an old one with cfg.overwrite) and write config.yaml, on
    the main process, once every process has checked --output (`open_run`): under torchrun a
    process that checks after the main one created the directory would refuse it.

    resolved: what options such as `--pooling auto` resolved to, recorded under
    `meta.resolved` (the options keep what was asked, so a re-run resolves them again).
    data: the splits the run trains and evaluates on (`pkd.data.splits.Split`), whose
    `data_hashes` go under `meta.data`; resuming, they must match those the checkpoint's run
    recorded (in place, or the run a `--resume-from` checkpoint comes from).

    Raises:
        PkdError: resuming after the data changed (`check_resume_data`), on every process.
    """
    keep = resuming and (path / "config.yaml").is_file()  # continuing in place: keep its config
    hashes = data_hashes(data or {})
    started = path if keep else None  # the run the checkpoint comes from: RUN/checkpoints/step-N
    if resuming and not keep and cfg.resume_from:
        started = Path(cfg.resume_from).parent.parent
    if started is not None and (started / "config.yaml").is_file():
        check_resume_data(started, hashes, "--resume-from" if cfg.resume_from else "--resume")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not keep:
        if cfg.overwrite and path.exists():
            clear_dir(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = provenance()
        if resolved:
            meta["resolved"] = resolved
        if hashes:
            meta["data"] = hashes
        save(cfg, path / "config.yaml", meta=meta)
    accelerator.wait_for_everyone()


def clear_dir(path: Path) -> None:
    """Remove everything in `path` but its lock file (--overwrite: the run holds it)."""
    for p in path.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def data_hashes(splits: dict) -> dict[str, dict[str, str]]:
    """Each split's source and sha256 (`data_fingerprint`): config.yaml's `meta.data`."""
    return {
        name: {"source": str(split.source), "sha256": data_fingerprint(split)}
        for name, split in splits.items()
    }


def check_resume_data(path: Path, hashes: dict, option: str) -> None:
    """Refuse to resume a run whose data changed since it started (its config.yaml's
    `meta.data`; a run from before pkd recorded them is not checked): the run would train
    on a mixture of both, and record only the new data.

    Raises:
        PkdError: naming each split that changed, its source and sha256, old -> new.
    """
    saved = read_run_config(path).get("meta", {}).get("data")
    if not isinstance(saved, dict):
        return
    changed: dict[str, list[str]] = {}  # "old -> new" -> the splits (pretrain's share a file)
    for name in [*saved, *(n for n in hashes if n not in saved)]:
        old, new = saved.get(name) or {}, hashes.get(name) or {}
        if old.get("sha256") != new.get("sha256"):
            before = f"{old.get('source', 'none')} sha256 {old.get('sha256', '-')[:12]}"
            after = f"{new.get('source', 'none')} sha256 {new.get('sha256', '-')[:12]}"
            changed.setdefault(f"{before} -> {after}", []).append(name)
    if changed:
        what = "; ".join(f"{', '.join(names)}: {change}" for change, names in changed.items())
        raise PkdError(
            f"{option}: the data of {path} changed since it started ({what}); "
            "resuming would train on a mixture: restore the data or start a new --output"
        )


def provenance() -> dict:
    """Versions, git SHA and time, recorded in config.yaml under `meta`."""
    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {
        "pkd": __version__,
        "git_sha": sha,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def data_summary(splits: dict, encoded: dict, max_length: int) -> dict:
    """Per split: where it came from, its sha256, size and truncated share (metrics.json)."""
    return {
        name: {
            "source": s.source,
            "sha256": data_fingerprint(s),
            "examples": len(s),
            "truncated": round(truncated_fraction(encoded[name], max_length), 4),
        }
        for name, s in splits.items()
    }


_FILE_HASHES: dict[
    tuple, str
] = {}  # (path, size, mtime): a run hashes a file once, not at start and end


def data_fingerprint(split) -> str:
    """sha256 of the data file a split was read from (of its examples, for a Hub split)."""
    path = Path(split.source)
    if path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = file_sha256(path)
        return _FILE_HASHES[key]
    rows = [split.ids, split.text_a, split.text_b, split.labels]
    if split.choices is not None:  # a RACE directory or the Hub
        rows += [split.choices, split.levels]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def record_in_model(model_dir: Path, extra: dict) -> None:
    """Add `extra` (the majority baseline) next to the dev metric in the model's config.json."""
    path = model_dir / "config.json"
    conf = json.loads(path.read_text())
    conf[DEV_METRIC_KEY] = {**conf.get(DEV_METRIC_KEY, {}), **extra}
    atomic_write(path, json.dumps(conf, indent=2, sort_keys=True) + "\n")


def finish_run(
    output: Path, metrics: dict, baseline: float | None, accelerator, command: str | None = None
) -> None:
    """The end of a run, on the main process: the baseline into model/config.json (none for
    `pkd pretrain`, which has no task), the model card (model/README.md, `pkd.models.card`), then
    metrics.json, written last (the mark of a finished run).

    command: the pkd command that trained the run, for its card (default: distill for a run
    with a teacher, else finetune).
    """
    if accelerator.is_main_process:
        if baseline is not None:
            record_in_model(output / "model", {"baseline": baseline})
        config = read_run_config(output)
        command = command or ("distill" if "teacher" in config else "finetune")
        result = RunResult.of(metrics)
        write_model_card(output / "model", config, result, command)
        result.write(output)


def read_run_config(output: Path) -> dict:
    """A run's config.yaml as a dict (empty when it has none)."""
    path = output / "config.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    return saved if isinstance(saved, dict) else {}
