"""`--dry-run`: a run's wall time estimated from timed steps, and what every plan shows.

A dry run has already passed every up-front check of the real command (it runs the same
planning code); each recipe's `Plan` describes what it resolved (`summary`, `describe`),
with the parts here: the timed training steps on copies of real batches (`time_steps`,
`estimate`), the data and training summaries, and the text every plan shares (`plan_text`).
It writes nothing: no run directory, no teacher cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from pkd.data.loading import truncated_fraction
from pkd.objectives.objective import model_inputs, online_teacher
from pkd.tasks import REGRESSION
from pkd.training.accelerator import make_accelerator, prepare
from pkd.training.loop import training_step

TIMED_STEPS = 3  # optimizer steps timed after one untimed warm-up step


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _batches(dataset, collate, size: int, count: int, seed: int) -> list[dict]:
    """`count` batches of `size` examples drawn as the training loader would (shuffled)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for k in range(count):
        idx = [order[(k * size + j) % len(order)] for j in range(size)]
        out.append(collate([dataset[i] for i in idx]))
    return out


def time_steps(
    model,
    train_set,
    collate,
    train_cfg,
    objective,
    problem_type: str,
    teacher=None,
    steps: int = TIMED_STEPS,
) -> dict:
    """Seconds per optimizer step, per evaluated example and per teacher example.

    Runs `steps` + 1 micro-batches of the training loop's own step (`pkd.training.loop.training_step`:
    loss terms, check, backward, clipping, AdamW and schedule, under the run's accelerate
    settings) on batches of the training set; the first is a warm-up and is not counted. For
    KD/PKD the teacher's outputs for those batches are computed first (and timed: the cost of
    building the cache, or of an online teacher per step). The model's weights change; a
    dry run discards it.
    """

    accelerator = make_accelerator(train_cfg)
    p = prepare(accelerator, model, train_set, {}, train_cfg, collate, objective.heads)
    device = p.accelerator.device
    batches = [
        {k: v.to(device) for k, v in b.items()}
        for b in _batches(train_set, collate, p.micro_batch, steps + 1, train_cfg.seed)
    ]
    counted = p.micro_batch * steps
    teacher_out, teacher_s = [], 0.0
    if teacher is not None:
        signals = online_teacher(teacher.to(device))
        for i, batch in enumerate(batches):
            _sync(device)
            t0 = time.perf_counter()
            teacher_out.append(signals(batch, None))  # logits, every layer's pooled states
            _sync(device)
            if i:
                teacher_s += time.perf_counter() - t0
    p.model.train()
    regression = problem_type == REGRESSION
    step_s = 0.0
    for i, batch in enumerate(batches):
        obj = objective
        if teacher_out:
            logits, cls = teacher_out[i]
            obj = replace(
                objective, teacher=lambda b, layers, lg=logits, c=cls: (lg, c[..., layers, :])
            )
        _sync(device)
        t0 = time.perf_counter()
        training_step(p, batch, obj, regression, step=i + 1)
        _sync(device)
        if i:
            step_s += time.perf_counter() - t0
    p.model.eval()
    forward_s = 0.0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            _sync(device)
            t0 = time.perf_counter()
            p.model(**model_inputs(batch))
            _sync(device)
            if i:
                forward_s += time.perf_counter() - t0
    return {
        "device": device.type,
        "timed_steps": steps,
        "micro_batch": p.micro_batch,
        # micro-batches of an accumulated step: the optimizer runs on one of them
        "step_seconds": step_s / steps * train_cfg.gradient_accumulation_steps,
        "eval_seconds_per_example": forward_s / counted,
        "teacher_seconds_per_example": teacher_s / counted if teacher is not None else 0.0,
    }


def estimate(
    timing: dict,
    train_cfg,
    n_train: int,
    n_eval: int,
    teacher_cache_examples: int = 0,
    online_teacher: bool = False,
    teacher_eval_examples: int = 0,
) -> dict:
    """Wall time of a run from `time_steps`: train steps, per-epoch evaluation, teacher work.

    Args:
        teacher_cache_examples: examples the teacher cache must be built for (0: none or reused).
        online_teacher: the teacher runs on every training step.
        teacher_eval_examples: examples the teacher is scored on before training.
    """
    steps_per_epoch = math.ceil(n_train / train_cfg.batch_size)
    total_steps = (
        train_cfg.max_steps
        if train_cfg.max_steps > 0
        else math.ceil(train_cfg.epochs * steps_per_epoch)
    )
    evaluations = math.ceil(total_steps / steps_per_epoch)
    step = timing["step_seconds"]
    if online_teacher:
        step += timing["teacher_seconds_per_example"] * train_cfg.batch_size
    parts = {
        "train": total_steps * step,
        "evaluation": evaluations * n_eval * timing["eval_seconds_per_example"],
        "teacher_cache": teacher_cache_examples * timing["teacher_seconds_per_example"],
        "teacher_evaluation": teacher_eval_examples * timing["teacher_seconds_per_example"],
    }
    return {
        "total_seconds": round(sum(parts.values()), 1),
        "seconds": {k: round(v, 2) for k, v in parts.items()},
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "evaluations": evaluations,
        "seconds_per_step": round(step, 4),
        "from": f"{timing['timed_steps']} timed steps of {timing['micro_batch']} examples on "
        f"{timing['device']} ({_threads()})",
    }


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------
# Plans: the parts every recipe's plan shows


def split_summary(splits: dict, encoded: dict, max_length: int) -> dict:
    """Per split: where it comes from, its examples and truncated share."""
    return {
        name: {
            "source": s.source,
            "examples": len(s),
            "truncated": round(truncated_fraction(encoded[name], max_length), 4),
        }
        for name, s in splits.items()
    }


def eval_examples(encoded: dict) -> int:
    return sum(len(v) for k, v in encoded.items() if k != "train")


def train_summary(t) -> dict:
    return {
        "epochs": t.epochs,
        "max_steps": t.max_steps,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "seed": t.seed,
    }


def cached_plan(examples: int, size: int, path: Path) -> dict:
    """A teacher cache in a plan: its examples, bytes, path and whether it exists."""
    exists = (path / "manifest.json").is_file()
    return {
        "mode": "cached",
        "examples": examples,
        "bytes": size,
        "path": str(path),
        "exists": exists,
    }


# ---------------------------------------------------------------------------------------------
# Text


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _pct(v) -> str:
    return f"{100 * v:.1f}%"


def num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def scores_text(metrics: dict) -> str:
    """Per split, each metric's value: `accuracy 0.8125, ... on dev`."""
    return "; ".join(
        ", ".join(f"{k} {num(v)}" for k, v in m.items() if k != "examples") + f" on {split}"
        for split, m in metrics.items()
    )


def _estimate_lines(e: dict) -> list[str]:
    s = e["seconds"]
    parts = [
        f"train {human_seconds(s['train'])} ({e['steps']} steps x {e['seconds_per_step']:.3g} s)"
    ]
    parts.append(f"evaluation {human_seconds(s['evaluation'])} ({e['evaluations']} passes)")
    if s.get("teacher_cache"):
        parts.append(f"teacher cache {human_seconds(s['teacher_cache'])}")
    if s.get("teacher_evaluation"):
        parts.append(f"teacher scoring {human_seconds(s['teacher_evaluation'])}")
    return [
        f"estimate:   about {human_seconds(e['total_seconds'])}: " + ", ".join(parts),
        f"            from {e['from']}",
    ]


def _data_lines(plan: dict) -> list[str]:
    lines = [f"data:       max length {plan['max_length']}"]
    for name, v in plan["data"].items():
        lines.append(
            f"            {name}: {v['examples']} examples, {_pct(v['truncated'])} truncated "
            f"({v['source']})"
        )
    return lines


POOLING_TEXT = {"cls": "cls ([CLS] state through the pooler)", "mean": "mean (masked token mean)"}


def cache_line(c: dict) -> str:
    """The teacher cache of a plan, as its `cache:` line."""
    if c["mode"] == "cached":
        state = "exists, reused" if c["exists"] else "to build"
        return f"cache:      {human_bytes(c['bytes'])} on disk at {c['path']} ({state})"
    return f"cache:      {c['mode']}"


def plan_text(plan: dict, lines: list[str]) -> str:
    """A dry-run plan as readable text: its command's own `lines` (model, teacher, student,
    loss, cache) between the title and what every plan shows (data, training, output,
    estimate)."""
    lines = [f"pkd {plan['command']} (dry run): nothing trained, nothing written", "", *lines]
    lines += _data_lines(plan)
    if plan.get("transfer_ratio"):
        lines.append(
            f"            {plan['transfer_ratio']:g} transfer example(s) per labelled one in each "
            "batch, teacher-labelled: KD and PT only"
        )
    tr = plan["train"]
    span = f"{tr['max_steps']} steps" if tr["max_steps"] > 0 else f"{tr['epochs']:g} epochs"
    lines.append(
        f"training:   {span}, lr {tr['lr']:g}, batch {tr['batch_size']} "
        f"(accumulation {tr['gradient_accumulation_steps']}), seed {tr['seed']}"
    )
    lines.append(f"output:     {plan['output']} (not created)")
    if "estimate" in plan:
        lines += _estimate_lines(plan["estimate"])
    return "\n".join(lines)
