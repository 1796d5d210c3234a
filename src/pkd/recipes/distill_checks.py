"""The checks of `pkd distill` (also `compare`'s, `sweep`'s and `pretrain`'s): a teacher that
fits the task and beats its majority baseline, a student init that shares its tokenizer,
pooling, room for the teacher cache; and after the first epoch, the collapse guard-rail.

They log as `pkd distill` (its logger), so that a sweep quiets them with it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import yaml
from accelerate import Accelerator

from pkd.config.sections import DistillConfig
from pkd.data.loading import collator, eval_loader
from pkd.errors import PkdError
from pkd.models.encoders import model_head, model_labels
from pkd.objectives import cache as cache_mod
from pkd.recipes.dryrun import human_bytes
from pkd.tasks import CLASSIFICATION, TaskSpec, align_labels, problem_head
from pkd.training.evaluation import score
from pkd.training.rundir import data_fingerprint

logger = logging.getLogger("pkd.recipes.distill")

WEAK_TEACHER_MARGIN = 0.02  # a teacher must beat the majority baseline by 2 points


def teacher_task(spec: TaskSpec, teacher, teacher_name: str) -> TaskSpec:
    """The task with the teacher's label order, after checking that the teacher fits it: the
    same kind of head, and the data's label names (by name, or by class id for the Hub's
    GLUE names and LABEL_0.., `pkd.tasks.align_labels`)."""
    teacher_labels = model_labels(teacher)
    head = model_head(teacher)
    if head != problem_head(spec.problem_type):
        raise PkdError(
            f"--teacher: {teacher_name} is a {head.noun} classifier but task {spec.name} is "
            f"{spec.problem_type}; fine-tune a teacher for it with `pkd finetune`"
        )
    if spec.problem_type == CLASSIFICATION:
        return align_labels(spec, teacher_labels, "--teacher")  # in the teacher's order
    if teacher_labels:
        raise PkdError(
            f"--teacher: a classifier with labels {list(teacher_labels)} cannot teach regression"
        )
    return spec


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
    t = teacher_config
    size = cache_mod.estimate_bytes(examples, *cache_mod.teacher_shapes(t, choices))
    root, existing = cache_mod.check_cache_dir(cache_dir)
    free = shutil.disk_usage(existing).free
    logger.info(
        "teacher cache: about %s for %d examples under %s (%s free)",
        human_bytes(size),
        examples,
        root,
        human_bytes(free),
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
        f"--cache-dir: the teacher cache needs about {human_bytes(size)} but {existing} has "
        f"{human_bytes(free)} free; free some space or pass --cache-dir on a larger disk"
    )


def teacher_scores(teacher, tokenizer, encoded, spec, cfg, accelerator=None) -> dict:
    """The teacher's metrics on each eval split (on the CPU when no accelerator is given)."""
    acc = accelerator or Accelerator(cpu=True)
    teacher.to(acc.device)
    out = {}
    for name in spec.eval_splits:
        loader = eval_loader(encoded[name], cfg.train.eval_batch_size, collator(tokenizer))
        out[name] = score(teacher, acc.prepare(loader), spec, acc)
    return out


# The data options that decide what an eval split holds, beside its file's sha256 and size.
EVAL_DATA_FIELDS = (
    "task", "text_columns", "label_column", "problem_type", "context_column",
    "question_column", "choices_column", "positive_label", "encoding", "max_length",
    "max_eval_samples", "holdout_fraction",
)  # fmt: skip


def recorded_teacher_scores(teacher: str, spec, splits: dict, data) -> dict | None:
    """The teacher's eval scores as its own `pkd finetune` run recorded them, when they were
    measured on what this run scores; else None (score it: `teacher_scores`).

    They count when `teacher` is a finished run's `model/` whose files are older than its
    metrics.json (not replaced since), on the same task, data options (`EVAL_DATA_FIELDS`,
    no dev held out of the training file) and eval splits (each file's sha256 and size). A
    distillation after `pkd finetune` on the same data then skips one pass of the teacher over
    the dev set (4.3 s of a 75 s SST-2 run; minutes for MNLI's on a CPU)."""
    model = Path(teacher)
    run = model.parent
    metrics_file = run / "metrics.json"
    if model.name != "model" or not metrics_file.is_file() or data.holdout_fraction is not None:
        return None
    try:
        recorded = json.loads(metrics_file.read_text(encoding="utf-8"))
        options = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]
        best = recorded["best"]["metrics"]
        newest = max(f.stat().st_mtime_ns for f in model.iterdir())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    if newest > metrics_file.stat().st_mtime_ns or recorded.get("task") != spec.name:
        return None
    if any(options.get(f) != getattr(data, f) for f in EVAL_DATA_FIELDS):
        return None
    for name in spec.eval_splits:
        seen = recorded.get("data", {}).get(name, {})
        if seen.get("sha256") != data_fingerprint(splits[name]):
            return None
        if seen.get("examples") != len(splits[name]) or spec.main_metric not in best.get(name, {}):
            return None
    logger.info("teacher: its dev scores as recorded by its run %s (the same dev data)", run)
    return {name: best[name] for name in spec.eval_splits}


class WeakTeacher(PkdError):
    """A teacher that does not beat the majority baseline by WEAK_TEACHER_MARGIN; `score`
    says by how much (a command with other options words its own hint)."""

    def __init__(self, score: str, hint: str) -> None:
        super().__init__(f"--teacher: it {score}; {hint}")
        self.score = score


def check_teacher_strength(spec, teacher_metrics, baseline, allow: bool) -> None:
    """A teacher must beat the majority baseline by WEAK_TEACHER_MARGIN on the first eval
    split; else a WeakTeacher error, or a warning with --allow-weak-teacher."""
    split = spec.eval_splits[0]
    value, base = teacher_metrics[split][spec.main_metric], baseline[split]
    if value < base + WEAK_TEACHER_MARGIN:
        score = (
            f"scores {spec.main_metric}={value:.4f} on {split}, not 2 points above the "
            f"majority baseline {base:.4f}"
        )
        if not allow:
            raise WeakTeacher(score, "fine-tune it better or pass --allow-weak-teacher")
        logger.warning("--teacher: it %s (allowed)", score)


def warn_collapse(result: dict, spec: TaskSpec, dev, d: DistillConfig) -> None:
    """A student that predicts one class for all of dev after epoch 1 (its accuracy is one
    class's share): say why, from what the first epoch logged. Blame beta only when the
    patient term's gradient share says so; a cross-entropy still at log(C), a uniform guess,
    is a plateau (too few steps, lr, warm-up), not the loss weights."""
    if not result["history"] or spec.problem_type != CLASSIFICATION or not dev.labels:
        return
    split = spec.eval_splits[0]
    first = result["history"][0]["metrics"][split].get("accuracy")
    shares_of_classes = {dev.labels.count(c) / len(dev.labels) for c in set(dev.labels)}
    if first is None or not any(abs(first - s) < 1e-9 for s in shares_of_classes):
        return
    epoch = result.get("first_epoch") or {}
    ce, shares = epoch.get("ce"), epoch.get("gradient_shares", {})
    uniform = math.log(len(spec.labels))
    if d.method == "pkd" and shares.get("pt", 0.0) >= DOMINANT_SHARE:
        cause = (
            f"the patient loss dominates the gradient ({shares['pt']:.0%} of it at "
            f"beta={d.beta:g}): lower --beta"
        )
    elif ce is not None and abs(ce - uniform) <= PLATEAU_TOLERANCE * uniform:
        cause = (
            f"its cross-entropy is still {ce:.3f}, about log({len(spec.labels)}) = {uniform:.3f}, "
            "a uniform guess: it has not started to learn yet (a plateau, not the loss weights); "
            "train longer (--epochs), raise --lr, shorten --warmup-ratio or keep the lr up "
            "(--lr-schedule constant)"
        )
    else:
        got = ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) or "not logged"
        cause = f"gradient shares in epoch 1: {got}; it may need more steps or another --lr"
    logger.warning(
        "the student predicts a single class on %s after the first epoch (%s %.4f); %s",
        split,
        spec.main_metric,
        first,
        cause,
    )


DOMINANT_SHARE = 0.5  # a term with this share of the gradient or more drives the student
PLATEAU_TOLERANCE = 0.05  # CE within 5% of log(C) after an epoch: it has not moved
