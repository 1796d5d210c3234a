"""`--dry-run`: the resolved plan of a run, and its wall time estimated from timed steps.

A dry run has already passed every up-front check of the real command (it runs the same
planning code); this module only describes what was resolved and times a few training
steps on copies of real batches. It writes nothing: no run directory, no teacher cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from pkd.data.loading import collator, truncated_fraction
from pkd.data.multiple_choice import num_choices
from pkd.data.transfer import with_transfer
from pkd.models.encoders import (
    DEV_METRIC_KEY,
    count_parameters,
    encoder_type,
    feed_forward_size,
    model_pooling,
    num_layers,
)
from pkd.objectives import cache as cache_mod
from pkd.objectives.objective import Objective, model_inputs, online_teacher
from pkd.objectives.pretraining import CACHE_NAME, CacheableTeacher, online_signals
from pkd.tasks import CLASSIFICATION, REGRESSION
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
    p = prepare(accelerator, model, train_set, {}, train_cfg, collate, objective.aux)
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
# Plans


def _data(splits: dict, encoded: dict, max_length: int) -> dict:
    return {
        name: {
            "source": s.source,
            "examples": len(s),
            "truncated": round(truncated_fraction(encoded[name], max_length), 4),
        }
        for name, s in splits.items()
    }


def _eval_examples(encoded: dict) -> int:
    return sum(len(v) for k, v in encoded.items() if k != "train")


def describe_finetune(cfg, spec, model, tokenizer, splits, encoded, baseline, resume_from) -> dict:
    """The plan of `pkd finetune` (what --dry-run prints)."""
    c = model.config
    timing = time_steps(
        model, encoded["train"], collator(tokenizer), cfg.train, Objective(), spec.problem_type
    )
    return {
        "command": "finetune",
        "output": str(cfg.output),
        "resume_from": str(resume_from) if resume_from else None,
        "model": {
            "path": cfg.model,
            "type": encoder_type(c),
            "layers": num_layers(c),
            "hidden_size": c.hidden_size,
            "parameters": count_parameters(model)["total"],
            "pooling": model_pooling(c),
        },
        "task": spec.name,
        "problem_type": spec.problem_type,
        "labels": list(spec.labels) if spec.problem_type == CLASSIFICATION else [],
        "metric": f"{spec.main_metric} on {spec.eval_splits[0]}",
        "majority_baseline": baseline,
        "data": _data(splits, encoded, cfg.data.max_length),
        "max_length": cfg.data.max_length,
        "train": _train_summary(cfg.train),
        "estimate": estimate(timing, cfg.train, len(encoded["train"]), _eval_examples(encoded)),
    }


def _train_summary(t) -> dict:
    return {
        "epochs": t.epochs,
        "max_steps": t.max_steps,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "seed": t.seed,
    }


def teacher_cache(cfg, plan) -> dict:
    """Where the teacher cache of this run lives, its size, and whether it already exists."""
    d = cfg.distill
    if len(d.terms) == 1:
        return {"mode": "not needed (FT uses labels only)", "bytes": 0, "exists": None}
    t = plan.teacher.config
    dataset = plan.encoded["train"]  # with a transfer set: the teacher labels it too
    if plan.transfer is not None:
        dataset = with_transfer(dataset, plan.transfer, plan.spec.problem_type)
    n = len(dataset)
    choices = num_choices(plan.splits["train"])  # multiple choice: (n, C) and (n, C, N+1, H)
    size = cache_mod.estimate_bytes(n, *cache_mod.teacher_shapes(t, choices))
    if d.teacher_mode == "online":
        return {
            "mode": "online (no cache; the teacher runs every step)",
            "bytes": 0,
            "exists": None,
        }
    root = Path(d.cache_dir) if d.cache_dir else cache_mod.default_root()
    fp = cache_mod.fingerprint(
        plan.teacher,
        dataset.features,
        cache_mod.cache_extra(plan.spec.name, cfg.data.max_length, plan.spec.labels),
    )
    return cached_plan(n, size, root / f"{plan.spec.name}-{fp[:16]}")  # build_or_load's layout


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


def describe_distill(cfg, plan, timed: bool = True) -> dict:
    """The plan of `pkd distill` (what --dry-run prints)."""
    d = cfg.distill
    t = plan.teacher.config
    cache = teacher_cache(cfg, plan)
    pt = "pt" in d.terms
    objective = Objective.from_config(d, plan.pairs, pooling=plan.pooling, aux=plan.projection)
    out = {
        "command": "distill",
        "output": str(cfg.output),
        "preset": {"name": d.preset, "source": d.preset_source} if d.preset else None,
        "teacher": {
            "path": str(cfg.teacher),
            "layers": num_layers(t),
            "hidden_size": t.hidden_size,
            "parameters": count_parameters(plan.teacher)["total"],
            "pooling": model_pooling(t),
            "labels": list(plan.spec.labels),
            "recorded_dev": getattr(t, DEV_METRIC_KEY, None),
            "dev": plan.teacher_metrics,
            "majority_baseline": plan.baseline,
        },
        "student": {
            "layers": d.student_layers,
            "hidden_size": plan.student.config.hidden_size,
            "init": str(plan.student_init),
            "parameters": count_parameters(plan.student)["total"],
            "pooling": plan.pooling,
            "projection": plan.projection is not None,
        },
        "method": d.method + (f"-{d.strategy}" if pt and not d.layer_map else ""),
        "layer_map": [[a, b] for a, b in plan.pairs] if pt else [],
        "layer_map_text": [f"teacher {a} -> student {b}" for a, b in plan.pairs] if pt else [],
        "loss": {
            "formula": objective.describe(plan.spec.problem_type == REGRESSION),
            "alpha": d.alpha,
            "beta": d.beta,
            "temperature": d.temperature,
            "kd_form": d.kd_loss,
            "pt_form": d.pt_loss,
            "pt_normalize": d.pt_normalize,
            "pt_choices": d.pt_choices,
        },
        "data": _data(*plan.data(), cfg.data.max_length),
        "transfer_ratio": d.transfer_ratio if plan.transfer is not None else None,
        "max_length": cfg.data.max_length,
        "train": _train_summary(cfg.train),
        "teacher_cache": cache,
        "cache_bytes": cache["bytes"],
    }
    if timed:
        needs_teacher = len(d.terms) > 1
        timing = time_steps(
            plan.student,
            plan.training_set(cfg),  # with its transfer partners: the batches the run sees
            collator(plan.tokenizer),
            cfg.train,
            objective,
            plan.spec.problem_type,
            teacher=plan.teacher,  # also scored before training: always timed
        )
        n_train = len(plan.encoded["train"])
        builds = needs_teacher and d.teacher_mode == "cached" and not cache["exists"]
        out["estimate"] = estimate(
            timing,
            cfg.train,
            n_train,
            _eval_examples(plan.encoded),
            teacher_cache_examples=cache.get("examples", n_train) if builds else 0,
            online_teacher=needs_teacher and d.teacher_mode == "online",
            teacher_eval_examples=_eval_examples(plan.encoded),
        )
    return out


def pretrain_formula(o) -> str:
    """`pkd pretrain`'s loss with this run's weights, e.g. `1*PT(all tokens) + 1*TOP(...)`."""
    tokens = "every token" if o.pt_tokens == "all" else "[CLS]"
    shown = {
        "pt": f"PT(mapped layers, {tokens})",
        "top": f"TOP(top layers, {tokens})",
        "mlm_kd": f"MLM-KD(T={o.temperature:g})",
        "mlm": "MLM(masked tokens)",
    }
    return " + ".join(f"{w:g}*{shown[k]}" for k, w in o.weights.items())


def pretrain_cache(cfg, plan) -> dict:
    """Where `pkd pretrain`'s teacher cache ([CLS] states of every teacher layer) would
    live, its size, and whether it exists; the teacher runs online otherwise."""
    o = cfg.pretrain
    if o.teacher_mode == "online":
        return {"mode": "online (no cache; the teacher runs every step)", "bytes": 0}
    t, n = plan.teacher.config, len(plan.encoded["train"])
    size = cache_mod.estimate_bytes(n, (1,), (t.num_hidden_layers + 1, t.hidden_size))
    root = Path(o.cache_dir) if o.cache_dir else cache_mod.default_root()
    extra = cache_mod.cache_extra(CACHE_NAME, cfg.text.max_length)
    fp = cache_mod.fingerprint(
        CacheableTeacher(plan.teacher), plan.encoded["train"].features, extra
    )
    return cached_plan(n, size, root / f"{CACHE_NAME}-{fp[:16]}")


def describe_pretrain(cfg, plan, timed: bool = True) -> dict:
    """The plan of `pkd pretrain` (what --dry-run prints): teacher, student, map, loss, text,
    the cache asked for, and the run's steps and time from timed steps (the teacher online)."""
    o, t, s = cfg.pretrain, plan.teacher.config, plan.student.config
    heads = plan.heads
    cache = pretrain_cache(cfg, plan)
    out = {
        "command": "pretrain",
        "output": str(cfg.output),
        "teacher": {
            "path": str(cfg.teacher),
            "layers": num_layers(t),
            "hidden_size": t.hidden_size,
            "parameters": count_parameters(plan.teacher.base_model)["total"],
            "mlm_head": o.uses_mlm,
        },
        "student": {
            "layers": s.num_hidden_layers,
            "hidden_size": s.hidden_size,
            "heads": s.num_attention_heads,
            "intermediate_size": feed_forward_size(s),
            "init": plan.student_init,
            "parameters": count_parameters(plan.student)["total"],
            "projection": heads is not None and heads.projection is not None,
        },
        "layer_map": [[a, b] for a, b in plan.pairs],
        "top": list(plan.top),
        "loss": {"formula": pretrain_formula(o), "weights": o.weights, "normalize": o.pt_normalize},
        "data": _data(plan.splits, plan.encoded, cfg.text.max_length),
        "max_length": cfg.text.max_length,
        "train": _train_summary(cfg.train),
        "teacher_cache": cache,
        "cache_bytes": cache["bytes"],
    }
    if timed:
        plan.teacher.to("cuda" if torch.cuda.is_available() else "cpu")  # the accelerator's
        objective = plan.objective(cfg, online_signals(plan.teacher, o.pt_tokens, o.uses_mlm))
        train_set, held, collate = plan.datasets(cfg)
        timing = time_steps(plan.student, train_set, collate, cfg.train, objective, "pretrain")
        out["estimate"] = estimate(timing, cfg.train, len(train_set), len(held))
    return out


def sweep_lines(checked: dict, trials: int | None) -> list[str]:
    """Markdown lines for `pkd sweep --dry-run` from the plan of its first trial."""
    pairs = " ".join(f"{a}->{b}" for a, b in checked["layer_map"]) or "none (no patient loss)"
    cache = checked["teacher_cache"]
    lines = [
        "",
        f"First trial: teacher->student map {pairs}; loss {checked['loss']['formula']}.",
    ]
    if cache["mode"] == "cached":
        state = "exists, reused" if cache["exists"] else "built once, shared by all trials"
        lines.append(
            f"Teacher cache: {human_bytes(cache['bytes'])} on disk at {cache['path']} ({state})."
        )
    else:
        lines.append(f"Teacher cache: {cache['mode']}.")
    e = checked.get("estimate")
    if e:
        s = e["seconds"]
        per_trial = s["train"] + s["evaluation"]
        total = (trials or 1) * per_trial + s["teacher_cache"] + s["teacher_evaluation"]
        lines.append(
            f"Estimate: about {human_seconds(per_trial)} per trial like the first "
            f"({e['steps']} steps x {e['seconds_per_step']:.3g} s), about {human_seconds(total)} "
            f"for {trials or 1} trials without pruning; from {e['from']}."
        )
    return lines


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


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _scores(metrics: dict) -> str:
    return "; ".join(
        ", ".join(f"{k} {_num(v)}" for k, v in m.items() if k != "examples") + f" on {split}"
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


def _pretrain_lines(plan: dict) -> list[str]:
    t, s, c = plan["teacher"], plan["student"], plan["teacher_cache"]
    pairs = ", ".join(f"{a}->{b}" for a, b in plan["layer_map"]) or "none"
    width = f"hidden {s['hidden_size']}, {s['heads']} heads, feed-forward {s['intermediate_size']}"
    lines = [
        f"teacher:    {t['path']} ({t['layers']} layers, hidden {t['hidden_size']}, "
        f"{t['parameters'] / 1e6:.2f}M parameters{', MLM head' if t['mlm_head'] else ''})",
        f"student:    {s['layers']} layers, {width}, {s['parameters'] / 1e6:.2f}M parameters; "
        f"from {s['init']}",
        f"layer map:  teacher->student {pairs}; top {plan['top'][0]}->{plan['top'][1]}"
        + ("; through learned projections (not saved in model/)" if s["projection"] else ""),
        f"loss:       {plan['loss']['formula']}",
    ]
    if c["mode"] == "cached":
        state = "exists, reused" if c["exists"] else "to build"
        lines.append(f"cache:      {human_bytes(c['bytes'])} on disk at {c['path']} ({state})")
    else:
        lines.append(f"cache:      {c['mode']}")
    return lines


def format_plan(plan: dict) -> str:
    """A dry-run plan (from describe_finetune/describe_distill) as readable text."""
    lines = [f"pkd {plan['command']} (dry run): nothing trained, nothing written", ""]
    if plan["command"] == "finetune":
        m = plan["model"]
        lines.append(
            f"model:      {m['path']} ({m['type']}, {m['layers']} layers, hidden {m['hidden_size']}, "
            f"{m['parameters'] / 1e6:.2f}M parameters)"
        )
        lines.append(f"pooling:    {POOLING_TEXT[m['pooling']]}")
        labels = ", ".join(plan["labels"]) or "(regression)"
        lines.append(f"task:       {plan['task']}, labels {labels}; selects on {plan['metric']}")
        lines.append(
            "baseline:   majority class "
            + ", ".join(f"{k} {v:.4f}" for k, v in plan["majority_baseline"].items())
        )
    elif plan["command"] == "pretrain":
        lines += _pretrain_lines(plan)
    else:
        t, s = plan["teacher"], plan["student"]
        if plan.get("preset"):
            lines.append(f"preset:     {plan['preset']['name']} ({plan['preset']['source']})")
        lines.append(
            f"teacher:    {t['path']} ({t['layers']} layers, hidden {t['hidden_size']}, "
            f"{t['parameters'] / 1e6:.2f}M parameters, {t['pooling']} pooling)"
        )
        lines.append(f"            labels {', '.join(t['labels']) or '(regression)'}")
        lines.append(f"            scores {_scores(t['dev'])}")
        rec = t.get("recorded_dev")
        if rec:
            lines.append(
                f"            recorded at fine-tuning: {rec.get('name')} {_num(rec.get('value'))} "
                f"on {rec.get('split')}"
            )
        lines.append(
            "            majority baseline "
            + ", ".join(f"{k} {v:.4f}" for k, v in t["majority_baseline"].items())
        )
        lines.append(
            f"student:    {s['layers']} layers from {s['init']} ({s['parameters'] / 1e6:.2f}M parameters)"
        )
        lines.append(f"pooling:    {POOLING_TEXT[s['pooling']]}, head and patient loss")
        lines.append(f"method:     {plan['method']}")
        if plan["layer_map"]:
            pairs = ", ".join(f"{a}->{b}" for a, b in plan["layer_map"])
            lines.append(f"layer map:  teacher->student {pairs} (+ logits of the last layer)")
            if s.get("projection"):
                lines.append(
                    f"            student width {s['hidden_size']} -> teacher {t['hidden_size']} "
                    "through a learned projection per layer (not saved in model/)"
                )
        else:
            lines.append("layer map:  none (no patient loss)")
        lines.append(f"loss:       {plan['loss']['formula']}")
        c = plan["teacher_cache"]
        if c["mode"] == "cached":
            state = "exists, reused" if c["exists"] else "to build"
            lines.append(f"cache:      {human_bytes(c['bytes'])} on disk at {c['path']} ({state})")
        else:
            lines.append(f"cache:      {c['mode']}")
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
