"""The Python API: `finetune`, `distill`, `evaluate`, `predict`.

Each function reads as one story (run_glue's `main()`): check everything that can be
checked up front -> load data and models -> write config.yaml -> train -> metrics.json.
Nothing is written before every check has passed, and metrics.json, the mark of a finished
run, is written last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from accelerate.utils import set_seed

from pkd import config as C
from pkd.data import (
    EncodedSplit,
    collator,
    encode,
    file_option,
    infer_labels,
    load_split,
    truncated_fraction,
)
from pkd.errors import PkdError
from pkd.mapping import layer_map
from pkd.metrics import majority_baseline
from pkd.models import (
    BASE_MODEL_KEY,
    TASK_KEY,
    build_student,
    count_parameters,
    is_multiple_choice,
    load_config,
    load_finetuned,
    load_for_finetuning,
    load_tokenizer,
    model_labels,
    model_pooling,
    num_layers,
    quiet_transformers,
    resolve_model,
    resolve_pooling,
)
from pkd.race import choice_letter, num_choices
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
WEAK_TEACHER_MARGIN = 0.02  # a teacher must beat the majority baseline by 2 points


# ---------------------------------------------------------------------------------------------
# Tasks and data


def resolve_task(data: C.DataConfig, labels: tuple[str, ...] = ()) -> TaskSpec:
    if data.task != "custom":
        return get_task(data.task)
    if not (data.train_file or data.validation_file or data.test_file):  # test: `pkd predict`
        raise PkdError("--task: give a GLUE task name, or --train-file/--validation-file")
    if data.choices_column or data.problem_type == "multiple_choice":
        from pkd.race import choice_task

        return choice_task(
            data.context_column, data.question_column, data.choices_column, data.label_column
        )
    if not data.text_columns:
        raise PkdError("--text-columns: required for custom files (e.g. --text-columns text)")
    problem = REGRESSION if data.problem_type == "regression" else CLASSIFICATION
    return custom_task(tuple(data.text_columns), data.label_column, problem, labels)


def _file_for(data: C.DataConfig, split: str) -> str | None:
    if split == "train":
        return data.train_file
    if split.startswith("dev"):
        return data.validation_file
    return data.test_file


def load_splits(data: C.DataConfig, splits: list[str], labels: tuple[str, ...] = ()):
    """The task spec (labels inferred from train for custom tasks) and raw splits."""
    spec = resolve_task(data, labels)
    out = {}
    for split in splits:
        file = _file_for(data, split)
        if spec.source == "custom" and file is None:
            raise PkdError(f"--{file_option(split)}: required")
        raw = load_split(spec, split, data.data_dir, file, data.encoding)
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


def split_holdout(train, fraction: float):
    """(train without the holdout rows, holdout): round(fraction * n) rows, fixed seed."""
    import random

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
    return {
        name: encode(s, tokenizer, max_length, label2id, not quiet) for name, s in splits.items()
    }


def _warn_truncation(train: EncodedSplit, max_length: int) -> float:
    frac = truncated_fraction(train, max_length)
    if frac > TRUNCATION_WARN:
        logger.warning(
            "%.1f%% of training examples reach --max-length %d and are truncated; consider a larger "
            "--max-length",
            100 * frac,
            max_length,
        )
    return frac


# ---------------------------------------------------------------------------------------------
# Run directories

Inputs = Sequence[tuple[str, str | None]]  # (option, path) pairs that a command reads


def check_output(output: str, overwrite: bool, resume: bool = False, inputs: Inputs = ()) -> Path:
    """Refuse to reuse a run directory unless --overwrite (or --resume), and one that is or
    holds an input (`inputs`: (option, path) pairs; see `check_not_input`)."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise PkdError(f"--output: {output} exists and is not a directory")
    check_not_input(path, "--output", inputs)
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        what = "a finished run" if (path / "metrics.json").exists() else "files"
        raise PkdError(f"--output: {output} already holds {what}; pass --overwrite to replace it")
    parent = existing_parent(path, "--output")
    try:  # a real write: os.access says yes to root even on read-only file systems
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".pkd-write-test-"))
    except OSError as e:
        raise PkdError(
            f"--output: cannot create {output}: {parent} is not writable ({e.strerror})"
        ) from None
    return path


def existing_parent(path: Path, option: str) -> Path:
    """The nearest existing directory above `path`; refuses a path under a file."""
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PkdError(f"{option}: cannot create {path}: {parent} is a file, not a directory")
    return parent


def check_not_input(output: Path, option: str, inputs: Inputs) -> None:
    """Refuse an output path that is one of the inputs, or a directory that holds one: an
    --overwrite (or a write) there would destroy what the command reads.

    inputs: (option, path) pairs; None, Hub names and missing paths are skipped.
    """
    out = output.resolve()
    for name, value in inputs:
        if not value or not Path(value).exists():
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


def data_inputs(data: C.DataConfig) -> Inputs:
    """The data paths a command reads, with their options."""
    return [
        ("--data-dir", data.data_dir),
        ("--train-file", data.train_file),
        ("--validation-file", data.validation_file),
        ("--test-file", data.test_file),
    ]


def run_inputs(cfg) -> Inputs:
    """What a finetune/distill run reads: its --output must not be or hold any of it."""
    if isinstance(cfg, C.FinetuneConfig):
        return [("--model", cfg.model), *data_inputs(cfg.data)]
    return [("--teacher", cfg.teacher), ("--student-init", _init_name(cfg)), *data_inputs(cfg.data)]


def resume_point(cfg) -> Path | None:
    """The checkpoint to continue from (--resume: latest in the run dir; --resume-from: given)."""
    from pkd.train import checkpoints

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


def check_resume_config(cfg) -> None:
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
    diffs = C.config_drift(saved if isinstance(saved, dict) else {}, C.to_dict(cfg))
    if diffs:
        option = "--resume-from" if cfg.resume_from else "--resume"
        raise PkdError(
            f"{option}: {cfg.output} was started with other settings ({'; '.join(diffs)}); "
            f"resume with its own (--config {path} {option}) or start a new --output"
        )


def start_run(
    path: Path, cfg, overwrite: bool, resuming: bool = False, resolved: dict | None = None
) -> None:
    """Create the run dir (replacing an old one with --overwrite) and write config.yaml.

    resolved: what options such as `--pooling auto` resolved to, recorded under
    `meta.resolved` (the options keep what was asked, so a re-run resolves them again).
    """
    if resuming and (path / "config.yaml").is_file():  # continuing in place: keep its config
        return
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = provenance()
    if resolved:
        meta["resolved"] = resolved
    C.save(cfg, path / "config.yaml", meta=meta)


def provenance() -> dict:
    import accelerate
    import torch
    import transformers

    import pkd

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
        "pkd": pkd.__version__,
        "git_sha": sha,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, data: dict) -> None:
    C.atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def data_summary(splits: dict, encoded: dict, max_length: int) -> dict:
    return {
        name: {
            "source": s.source,
            "sha256": data_fingerprint(s),
            "examples": len(s),
            "truncated": round(truncated_fraction(encoded[name], max_length), 4),
        }
        for name, s in splits.items()
    }


def data_fingerprint(split) -> str:
    """sha256 of the data file a split was read from (of its examples, for a Hub split)."""
    import hashlib

    h = hashlib.sha256()
    path = Path(split.source)
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    else:
        rows = [split.ids, split.text_a, split.text_b, split.labels]
        if split.choices is not None:  # a RACE directory or the Hub
            rows += [split.choices, split.levels]
        h.update(json.dumps(rows, ensure_ascii=False).encode())
    return h.hexdigest()


def _setup_logging(quiet: bool) -> None:
    quiet_transformers()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


# ---------------------------------------------------------------------------------------------
# finetune


def finetune(cfg: C.FinetuneConfig, dry_run: bool = False) -> dict:
    """Fine-tune a pre-trained encoder on a task (the teacher, or the FT baseline).

    Returns the contents of metrics.json (or, with dry_run, the plan: every check is run
    and a few steps are timed, nothing is written).
    """
    _setup_logging(cfg.train.quiet)
    from pkd.train import Objective, make_accelerator, train

    resume = bool(cfg.resume or cfg.resume_from)
    output = check_output(cfg.output, cfg.overwrite, resume, run_inputs(cfg))
    ckpt = resume_point(cfg)
    if ckpt is not None:
        check_resume_config(cfg)
    spec = resolve_task(cfg.data)
    spec, splits = load_splits(cfg.data, ["train", *spec.eval_splits])
    check_label_sets(spec, splits)
    set_seed(cfg.train.seed)  # before the new head is initialised
    tokenizer = load_tokenizer(cfg.model, "model", cfg.trust_remote_code)
    config = load_config(cfg.model, "model", cfg.trust_remote_code)
    pooling = resolve_pooling(cfg.pooling, cfg.model, config)
    model = load_for_finetuning(
        cfg.model, spec.problem_type, spec.labels, cfg.trust_remote_code, pooling=pooling
    )
    check_max_length(cfg.data.max_length, cfg.model, "model", model.config, tokenizer)
    label2id = model.config.label2id if spec.problem_type == CLASSIFICATION else None
    encoded = encode_all(splits, tokenizer, cfg.data.max_length, label2id, cfg.train.quiet)
    trunc = _warn_truncation(encoded["train"], cfg.data.max_length)
    baseline = _baselines(spec, splits)
    if dry_run:
        from pkd.dryrun import describe_finetune

        return describe_finetune(cfg, spec, model, tokenizer, splits, encoded, baseline, ckpt)
    model.config.update({TASK_KEY: spec.name})
    start_run(output, cfg, cfg.overwrite, resuming=ckpt is not None, resolved={"pooling": pooling})
    accelerator = make_accelerator(cfg.train, output)
    t0 = time.perf_counter()
    result = train(
        model,
        tokenizer,
        encoded["train"],
        {k: v for k, v in encoded.items() if k != "train"},
        spec,
        cfg.train,
        Objective(),
        output,
        accelerator,
        collator(tokenizer),
        resume_from=ckpt,
    )
    metrics = {
        "task": spec.name,
        "model": cfg.model,
        "pooling": pooling,
        "labels": list(spec.labels),
        "best": result["best"],
        "final": result["final"],
        "history": result["history"],
        "majority_baseline": baseline,
        "parameters": count_parameters(model),
        "data": data_summary(splits, encoded, cfg.data.max_length),
        "truncated_train_fraction": trunc,
        "wall_seconds": {
            "train": result["train_seconds"],
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    if accelerator.is_main_process:
        _record_in_model(output / "model", {"baseline": baseline[spec.eval_splits[0]]})
        write_json(output / "metrics.json", metrics)
    return metrics


def _baselines(spec: TaskSpec, splits: dict) -> dict[str, float]:
    out = {}
    for name in spec.eval_splits:
        labels = splits[name].labels
        if spec.problem_type == CLASSIFICATION:
            labels = [spec.labels.index(v) for v in labels]
        out[name] = majority_baseline(
            spec.metrics, labels, spec.problem_type == REGRESSION, spec.positive_index()
        )
    return out


def _record_in_model(model_dir: Path, extra: dict) -> None:
    """Add the majority baseline next to the dev metric in the saved model's config.json."""
    from pkd.models import DEV_METRIC_KEY

    path = model_dir / "config.json"
    conf = json.loads(path.read_text())
    conf[DEV_METRIC_KEY] = {**conf.get(DEV_METRIC_KEY, {}), **extra}
    C.atomic_write(path, json.dumps(conf, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# distill


@dataclass
class DistillPlan:
    """Everything `distill` resolved before training: shown by --dry-run, used by the run."""

    spec: TaskSpec
    teacher: object
    tokenizer: object
    student: object
    student_init: str
    pairs: list[tuple[int, int]]
    splits: dict
    encoded: dict
    teacher_metrics: dict
    baseline: dict
    truncated: float
    pooling: str  # the student's (and the teacher's, for PKD): cls or mean


def plan_distill(
    cfg: C.DistillRunConfig, accelerator=None, teacher_metrics: dict | None = None
) -> DistillPlan:
    """Every up-front check of `pkd distill`, and the loaded teacher, student and data.

    teacher_metrics: the teacher's dev scores when already measured (`compare`), else scored.
    """
    d = cfg.distill
    spec = resolve_task(cfg.data)
    teacher = load_finetuned(cfg.teacher, "teacher", cfg.trust_remote_code)
    teacher_labels = model_labels(teacher)
    n = num_layers(teacher.config)
    pairs = layer_map(d.strategy, n, d.student_layers, d.layer_map)
    spec, splits = load_splits(
        cfg.data, ["train", *spec.eval_splits], teacher_labels if spec.source == "custom" else ()
    )
    check_label_sets(spec, splits)
    if (spec.problem_type == MULTIPLE_CHOICE) != is_multiple_choice(teacher.config):
        kind = "multiple-choice" if is_multiple_choice(teacher.config) else "sequence"
        raise PkdError(
            f"--teacher: {cfg.teacher} is a {kind} classifier but task {spec.name} is "
            f"{spec.problem_type}; fine-tune a teacher for it with `pkd finetune`"
        )
    if spec.problem_type == CLASSIFICATION:
        if set(spec.labels) != set(teacher_labels):
            raise PkdError(
                f"--teacher: its labels {list(teacher_labels)} differ from the data's {list(spec.labels)}"
            )
        if tuple(spec.labels) != teacher_labels:
            logger.info(
                "label order differs between teacher %s and task %s; mapping by name",
                teacher_labels,
                spec.labels,
            )
        spec = dataclasses.replace(spec, labels=teacher_labels)  # by name, in the teacher's order
    elif teacher_labels:
        raise PkdError(
            f"--teacher: a classifier with labels {list(teacher_labels)} cannot teach regression"
        )
    if len(d.terms) > 1 and d.teacher_mode == "cached":
        check_cache_space(
            d.cache_dir,
            spec.name,
            teacher.config,
            len(splits["train"]),
            cfg.data.max_length,
            num_choices(splits["train"]),
        )
    init = _student_init(cfg)
    tokenizer = load_tokenizer(cfg.teacher, "teacher", cfg.trust_remote_code)
    check_max_length(cfg.data.max_length, cfg.teacher, "teacher", teacher.config, tokenizer)
    if init != cfg.teacher:
        check_same_tokenizer(init, tokenizer, cfg.trust_remote_code)
    pooling = student_pooling(d.pooling, teacher, cfg.teacher, d.method)
    set_seed(cfg.train.seed)  # before the student's new head is initialised
    student = build_student(
        init, d.student_layers, teacher, spec.problem_type, cfg.trust_remote_code, pooling
    )
    check_max_length(cfg.data.max_length, init, "student-init", student.config, None)
    label2id = dict(teacher.config.label2id) if spec.problem_type == CLASSIFICATION else None
    encoded = encode_all(splits, tokenizer, cfg.data.max_length, label2id, cfg.train.quiet)
    trunc = _warn_truncation(encoded["train"], cfg.data.max_length)
    baseline = _baselines(spec, splits)
    if teacher_metrics is None:
        teacher_metrics = _teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator)
    _check_teacher_strength(spec, teacher_metrics, baseline, d.allow_weak_teacher)
    return DistillPlan(
        spec,
        teacher,
        tokenizer,
        student,
        init,
        pairs,
        splits,
        encoded,
        teacher_metrics,
        baseline,
        trunc,
        pooling,
    )


def student_pooling(requested: str, teacher, teacher_name: str, method: str) -> str:
    """The student's pooling: `--pooling`, or the teacher's for auto.

    PKD matches each model's pooled layer states, so a student that pools otherwise than its
    teacher is refused there; FT and KD only use logits, so it is allowed with a warning.
    """
    theirs = model_pooling(teacher.config)
    pooling = theirs if requested == "auto" else requested
    if pooling != theirs:
        msg = f"--pooling: the student would pool {pooling} but the teacher {teacher_name} pools {theirs}"
        if method == "pkd":
            raise PkdError(
                f"{msg}; the patient loss compares the states each model reads, so both must "
                "pool alike (drop --pooling, or use --method kd)"
            )
        logger.warning("%s; allowed for --method %s, which learns from logits only", msg, method)
    return pooling


def max_length_limit(config, tokenizer) -> int | None:
    """The longest input a model takes: its position embeddings (and tokenizer's limit)."""
    limits = [getattr(config, "max_position_embeddings", None)]
    if tokenizer is not None and tokenizer.model_max_length < 1_000_000:  # else: 'unlimited'
        limits.append(tokenizer.model_max_length)
    return min((n for n in limits if n), default=None)


def check_max_length(max_length: int, name: str, option: str, config, tokenizer) -> None:
    """--max-length must fit the model's position embeddings (else a crash mid-run)."""
    limit = max_length_limit(config, tokenizer)
    if limit is not None and max_length > limit:
        raise PkdError(
            f"--max-length: {max_length} is more than the {limit} positions of --{option} "
            f"{name}; pass --max-length {limit} or less"
        )


TOKENIZER_PROBE = "The film was GOOD: naïve café, 123 — don't!"  # case, accents, digits


def check_same_tokenizer(init: str, teacher_tokenizer, trust_remote_code: bool = False) -> None:
    """The student reads the teacher's token ids, so its init must tokenise identically."""
    try:
        theirs = load_tokenizer(init, "student-init", trust_remote_code)
    except PkdError:
        logger.warning("--student-init: %s has no loadable tokenizer; not compared", init)
        return
    ours, other = teacher_tokenizer.get_vocab(), theirs.get_vocab()
    if ours != other:
        differ = sorted({t for t in ours.keys() | other.keys() if ours.get(t) != other.get(t)})
        raise PkdError(
            f"--student-init: the tokenizer of {init} differs from the teacher's ({len(differ)} "
            f"vocabulary entries differ, e.g. {differ[0]!r}: {other.get(differ[0])} vs "
            f"{ours.get(differ[0])}); student and teacher must share one tokenizer"
        )
    a, b = teacher_tokenizer(TOKENIZER_PROBE)["input_ids"], theirs(TOKENIZER_PROBE)["input_ids"]
    if a != b:
        words = [theirs.convert_ids_to_tokens(b), teacher_tokenizer.convert_ids_to_tokens(a)]
        raise PkdError(
            f"--student-init: the tokenizer of {init} has the teacher's vocabulary but splits "
            f"text differently (lower-casing or accents? {TOKENIZER_PROBE!r} gives "
            f"{' '.join(words[0][1:5])} ... vs {' '.join(words[1][1:5])} ...); "
            "student and teacher must share one tokenizer"
        )


def check_cache_space(
    cache_dir: str | None,
    task: str,
    teacher_config,
    examples: int,
    max_length: int,
    choices: int = 0,
) -> int:
    """Estimate the teacher cache, log it, and refuse to start when the disk cannot hold it.

    Returns the estimate in bytes. A cache that may already exist for these inputs (same task,
    examples, max length and teacher shape) skips the space check: it would be reused.
    choices: multiple choice: choices per example (logits (n, C), states (n, C, N+1, H)).
    """
    from pkd.cache import default_root, estimate_bytes, teacher_shapes

    t = teacher_config
    size = estimate_bytes(examples, *teacher_shapes(t, choices))
    root = Path(cache_dir) if cache_dir else default_root()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == root else f"cannot be created: {existing} is a file"
        raise PkdError(f"--cache-dir: {root} {where}, not a directory; pass a directory")
    free = shutil.disk_usage(existing).free
    logger.info(
        "teacher cache: about %s for %d examples under %s (%s free)",
        _human(size),
        examples,
        root,
        _human(free),
    )
    if free >= size * 1.1:
        return size
    for manifest in root.glob(f"{task}-*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
            if (m["examples"], m["max_length"], m["teacher_layers"], m["hidden_size"]) == (
                examples,
                max_length,
                t.num_hidden_layers,
                t.hidden_size,
            ):
                return size  # probably reusable; the build re-checks space if it is not
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise PkdError(
        f"--cache-dir: the teacher cache needs about {_human(size)} but {existing} has "
        f"{_human(free)} free; free some space or pass --cache-dir on a larger disk"
    )


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _init_name(cfg: C.DistillRunConfig) -> str | None:
    """--student-init as given, else the base model the teacher records (None: it records none)."""
    init = cfg.distill.student_init
    if init in (None, ""):
        teacher_config = load_config(cfg.teacher, "teacher", cfg.trust_remote_code)
        return getattr(teacher_config, BASE_MODEL_KEY, None)
    return cfg.teacher if init == "teacher" else init


def _student_init(cfg: C.DistillRunConfig) -> str:
    init = _init_name(cfg)
    if not init:
        raise PkdError(
            f"--student-init: {cfg.teacher} does not record its pre-trained base model; "
            "pass --student-init NAME_OR_DIR (or 'teacher')"
        )
    if init == cfg.teacher or (
        Path(init).exists() and Path(init).resolve() == Path(cfg.teacher).resolve()
    ):
        teacher_config = load_config(cfg.teacher, "teacher", cfg.trust_remote_code)
        base = getattr(teacher_config, BASE_MODEL_KEY, None)
        logger.warning(
            "--student-init: the student is initialised from the fine-tuned teacher %s, not from "
            "the pre-trained %s; the paper initialises from the pre-trained model",
            cfg.teacher,
            base or "checkpoint it was fine-tuned from",
        )
        init = cfg.teacher
    return init


def _teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator) -> dict:
    from accelerate import Accelerator

    from pkd.train import score

    acc = accelerator or Accelerator(cpu=True)
    teacher.to(acc.device)
    out = {}
    for name in spec.eval_splits:
        loader = __import__("torch").utils.data.DataLoader(
            encoded[name], batch_size=cfg.train.eval_batch_size, collate_fn=collator(tokenizer)
        )
        out[name] = score(teacher, acc.prepare(loader), spec, acc)
    return out


def _check_teacher_strength(spec, teacher_metrics, baseline, allow: bool) -> None:
    split = spec.eval_splits[0]
    value, base = teacher_metrics[split][spec.main_metric], baseline[split]
    if value < base + WEAK_TEACHER_MARGIN:
        msg = (
            f"--teacher: it scores {spec.main_metric}={value:.4f} on {split}, not 2 points above the "
            f"majority baseline {base:.4f}; fine-tune it better or pass --allow-weak-teacher"
        )
        if not allow:
            raise PkdError(msg)
        logger.warning(
            msg.replace("; fine-tune it better or pass --allow-weak-teacher", " (allowed)")
        )


def distill(cfg: C.DistillRunConfig, dry_run: bool = False, on_evaluate=None) -> dict:
    """Distill a fine-tuned teacher into an M-layer student (FT, KD, PKD-Skip/Last).

    `on_evaluate(step, epoch, metrics)` is called after each epoch's evaluation (see
    `pkd.train.train`); if it raises, the run stops and metrics.json is not written.
    Returns the contents of metrics.json (or the plan, with dry_run).
    """
    _setup_logging(cfg.train.quiet)
    from pkd import cache as cache_mod
    from pkd.train import Objective, cached_teacher, make_accelerator, online_teacher, train

    d = cfg.distill
    resume = bool(cfg.resume or cfg.resume_from)
    output = check_output(cfg.output, cfg.overwrite, resume, run_inputs(cfg))
    ckpt = resume_point(cfg)
    if ckpt is not None:
        check_resume_config(cfg)
    accelerator = make_accelerator(cfg.train, output) if not dry_run else None
    plan = plan_distill(cfg, accelerator)
    if dry_run:
        return describe_plan(cfg, plan)
    start_run(
        output, cfg, cfg.overwrite, resuming=ckpt is not None, resolved={"pooling": plan.pooling}
    )
    t0 = time.perf_counter()
    spec = plan.spec
    cache_info = None
    needs_teacher = len(d.terms) > 1
    if needs_teacher and d.teacher_mode == "cached":
        extra = cache_extra(spec, cfg)
        with accelerator.main_process_first():  # built once, by the main process
            cache = cache_mod.build_or_load(
                plan.teacher,
                plan.encoded["train"],
                collator(plan.tokenizer),
                spec.name,
                extra,
                d.cache_dir,
                cfg.train.eval_batch_size,
                accelerator.device,
                not cfg.train.quiet,
            )
        teacher_signal = cached_teacher(cache)
        cache_info = {
            "path": str(cache.path),
            "reused": cache.manifest.get("reused"),
            "build_seconds": cache.manifest.get("build_seconds"),
        }
    elif needs_teacher:
        plan.teacher.to(accelerator.device)
        teacher_signal = online_teacher(plan.teacher)
    else:
        teacher_signal = None
    t_cache = time.perf_counter() - t0
    objective = Objective.from_config(d, plan.pairs, teacher_signal, plan.pooling)
    plan.student.config.update({TASK_KEY: spec.name})
    result = train(
        plan.student,
        plan.tokenizer,
        plan.encoded["train"],
        {k: v for k, v in plan.encoded.items() if k != "train"},
        spec,
        cfg.train,
        objective,
        output,
        accelerator,
        collator(plan.tokenizer),
        resume_from=ckpt,
        on_evaluate=on_evaluate,
    )
    split = spec.eval_splits[0]
    best = result["best"]["metrics"][split][spec.main_metric]
    teacher_main = plan.teacher_metrics[split][spec.main_metric]
    metrics = {
        "task": spec.name,
        "teacher": cfg.teacher,
        "student_init": plan.student_init,
        "method": d.method,
        "student_layers": d.student_layers,
        "pooling": plan.pooling,
        "layer_map": [list(p) for p in plan.pairs] if "pt" in d.terms else [],
        "labels": list(spec.labels),
        "best": result["best"],
        "final": result["final"],
        "history": result["history"],
        "teacher_metrics": plan.teacher_metrics,
        "fraction_of_teacher": best / teacher_main if teacher_main else None,
        "majority_baseline": plan.baseline,
        "parameters": {
            "student": count_parameters(plan.student),
            "teacher": count_parameters(plan.teacher),
        },
        "data": data_summary(plan.splits, plan.encoded, cfg.data.max_length),
        "teacher_cache": cache_info,
        "wall_seconds": {
            "teacher_cache": round(t_cache, 2),
            "train": result["train_seconds"],
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    _warn_collapse(result, spec, plan.baseline, d)
    if accelerator.is_main_process:
        _record_in_model(output / "model", {"baseline": plan.baseline[split]})
        write_json(output / "metrics.json", metrics)
    return metrics


def _warn_collapse(result, spec, baseline, d) -> None:
    """A student stuck at the majority baseline after epoch 1 (e.g. too strong a patient loss)."""
    if not result["history"] or d.method == "ft" or spec.problem_type != CLASSIFICATION:
        return
    split = spec.eval_splits[0]
    first = result["history"][0]["metrics"][split][spec.main_metric]
    if abs(first - baseline[split]) < 1e-9:
        cause = (
            f"beta={d.beta} with the {d.pt_loss!r} patient-loss form may be too strong"
            if d.method == "pkd"
            else f"alpha={d.alpha} at T={d.temperature} with the {d.kd_loss!r} KD form may not suit it"
        )
        logger.warning(
            "the student scores the majority baseline (%.4f) after the first epoch: it may have "
            "collapsed; %s",
            first,
            cause,
        )


def describe_plan(cfg: C.DistillRunConfig, plan: DistillPlan, timed: bool = True) -> dict:
    """The resolved plan of a distill run (what --dry-run prints), with a timed estimate."""
    from pkd.dryrun import describe_distill

    return describe_distill(cfg, plan, timed)


def cache_extra(spec: TaskSpec, cfg: C.DistillRunConfig) -> dict:
    """What besides teacher weights and token ids decides the teacher cache's content."""
    return {
        "task": spec.name,
        "labels": list(spec.labels),
        "max_length": cfg.data.max_length,
        "truncation": True,
    }


# ---------------------------------------------------------------------------------------------
# evaluate / predict


def _load_for_inference(model: str, data: C.DataConfig, split: str, labelled: bool):
    _setup_logging(True)
    net = load_finetuned(model, "model")
    tokenizer = load_tokenizer(model, "model")
    # the default --max-length may exceed a small model's positions: cut there, do not crash
    max_length = min(data.max_length, max_length_limit(net.config, tokenizer) or data.max_length)
    spec, raw = _inference_split(data, split, model_labels(net), labelled)
    label2id = dict(net.config.label2id) if spec.problem_type == CLASSIFICATION else None
    enc = encode(raw, tokenizer, max_length, label2id if labelled else None, show_progress=False)
    return net, tokenizer, spec, raw, enc


def _loads_unlabelled(spec: TaskSpec, split: str, data: C.DataConfig, file: str | None) -> bool:
    """Whether a split that failed to load with labels is unlabelled (test) data: it has no
    label column (key) at all, and reads fine without one."""
    from pkd.data import read_jsonl, read_rows

    if not isinstance(spec.label_column, str):
        return False  # header-less GLUE files: columns by position
    try:
        raw = load_split(spec, split, data.data_dir, file, data.encoding, labelled=False)
        path = Path(raw.source)
        if path.suffix.lower() in (".jsonl", ".json"):
            return not any(spec.label_column in obj for _, obj in read_jsonl(path, data.encoding))
        header = read_rows(path, data.encoding, quoted=spec.source == "custom")[0][1]
    except (PkdError, IndexError):
        return False
    return spec.label_column not in [h.strip() for h in header]


def _inference_split(data: C.DataConfig, split: str, labels: tuple[str, ...], labelled: bool):
    """The task (labels: the model's, by name) and the raw split to run a model on."""
    spec = resolve_task(data, labels)
    if spec.problem_type == CLASSIFICATION and labels:  # the model's order: ids mean its labels
        spec = dataclasses.replace(spec, labels=labels)
    spec = with_positive_label(spec, data.positive_label)
    if split not in spec.splits and spec.source != "custom":
        raise PkdError(
            f"--split: task {spec.name} has no split {split!r}; it has {list(spec.splits)}"
        )
    file = _file_for(data, split)
    if spec.source == "custom" and file is None:
        raise PkdError(f"--{file_option(split)}: required for split {split!r}")
    try:
        raw = load_split(spec, split, data.data_dir, file, data.encoding, labelled=labelled)
    except PkdError:
        if labelled and _loads_unlabelled(spec, split, data, file):
            where = file or str(Path(data.data_dir or ".") / spec.splits.get(split, split))
            raise PkdError(
                f"{where}: has no {spec.label_column!r} labels to evaluate against; "
                "use `pkd predict` for unlabelled data"
            ) from None
        raise
    raw = raw.head(data.max_eval_samples)
    if spec.problem_type == CLASSIFICATION and labelled:
        check_label_sets(dataclasses.replace(spec, labels=labels), {split: raw})
    return spec, raw


PKD_OUTPUTS = ("eval_*.json", "predictions_*.tsv")  # what evaluate/predict write by a model


def _model_files(model: str) -> list[Path]:
    """The files a model is loaded from (a model or export directory, or one .onnx file)."""
    p = Path(model)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []  # a Hub name
    return [f for f in p.iterdir() if f.is_file() and not any(f.match(g) for g in PKD_OUTPUTS)]


def check_output_file(path: Path, model: str, data: C.DataConfig, source: str) -> Path:
    """Refuse an --output-file that is a directory, lies under a file, or would replace an
    input: one of the model's files or the data read (`source`, the split's file)."""
    if path.is_dir():
        raise PkdError(f"--output-file: {path} is a directory; pass a file name")
    existing_parent(path, "--output-file")
    inputs = [("--model", str(f)) for f in _model_files(model)]
    check_not_input(path, "--output-file", [*inputs, *data_inputs(data), ("data file", source)])
    return path


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise PkdError(f"--batch-size: must be >= 1, got {batch_size}")


def evaluate(
    model: str,
    data: C.DataConfig,
    split: str = "dev",
    batch_size: int = 128,
    write: bool = False,
    output_file: str | None = None,
) -> dict:
    """Task metrics of a fine-tuned model on a labelled split.

    write: also write them as JSON to output_file (default: RUN/eval_TASK_SPLIT.json beside
    the model directory), checked before the model runs.
    """
    import torch
    from accelerate import Accelerator

    from pkd.train import score

    check_batch_size(batch_size)
    model = resolve_model(model, "model")
    spec = resolve_task(data) if data.task != "custom" else None
    if split.startswith("test") and not (spec is not None and spec.test_labelled):
        raise PkdError(
            f"--split: {split} has no labels in GLUE; use `pkd predict` for test predictions"
        )
    if spec is not None and split == "dev" and "dev" not in spec.splits:
        split = spec.eval_splits[0]
    net, tokenizer, spec, raw, enc = _load_for_inference(model, data, split, labelled=True)
    if write:
        default = Path(model).resolve().parent / f"eval_{spec.name}_{split}.json"
        out = check_output_file(Path(output_file or default), model, data, raw.source)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    net.to(acc.device)
    loader = acc.prepare(
        torch.utils.data.DataLoader(enc, batch_size=batch_size, collate_fn=collator(tokenizer))
    )
    metrics = {
        "task": spec.name,
        "split": split,
        "examples": len(raw),
        "source": raw.source,
        **score(net, loader, spec, acc),
    }
    if write:
        write_json(out, metrics)
    return metrics


def predict(
    model: str,
    data: C.DataConfig,
    split: str = "test",
    output: str | None = None,
    batch_size: int = 128,
) -> Path:
    """Predictions in GLUE submission format: `index<TAB>prediction` (label names).

    output: the TSV to write (default: predictions_TASK_SPLIT.tsv in the model directory).
    """
    import torch
    from accelerate import Accelerator

    from pkd.train import predict_logits, predictions

    check_batch_size(batch_size)
    onnx = Path(model).suffix == ".onnx" or (Path(model) / "model.onnx").is_file()
    model = model if onnx else resolve_model(model, "model")
    model_dir = Path(model) if Path(model).is_dir() else Path(model).parent

    def checked_output(spec: TaskSpec, raw) -> Path:
        default = model_dir / f"predictions_{spec.name}_{split}.tsv"
        return check_output_file(Path(output or default), model, data, raw.source)

    if onnx:
        # An `pkd export` directory: onnxruntime only, no PyTorch model code.
        from pkd.export import load_onnx

        onnx_model = load_onnx(model)
        spec, raw = _inference_split(data, split, onnx_model.labels, labelled=False)
        out = checked_output(spec, raw)
        names = onnx_model.predict(raw.text_a, raw.text_b, batch_size)
    else:
        net, tokenizer, spec, raw, enc = _load_for_inference(model, data, split, labelled=False)
        out = checked_output(spec, raw)
        acc = Accelerator(cpu=not torch.cuda.is_available())
        net.to(acc.device)
        loader = acc.prepare(
            torch.utils.data.DataLoader(enc, batch_size=batch_size, collate_fn=collator(tokenizer))
        )
        logits, _ = predict_logits(net, loader, acc)
        preds = predictions(logits, spec.problem_type)
        labels = model_labels(net)
        regression = spec.problem_type == REGRESSION
        if spec.problem_type == MULTIPLE_CHOICE:  # the chosen option as a letter
            names = [choice_letter(p) for p in preds]
        else:
            names = [f"{p:.3f}" if regression else labels[int(p)] for p in preds]
    lines = ["index\tprediction"] + [f"{i}\t{n}" for i, n in zip(raw.ids, names, strict=True)]
    C.atomic_write(out, "\n".join(lines) + "\n")
    return out
