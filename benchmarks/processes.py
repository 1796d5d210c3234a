"""Training throughput of `pkd distill` (cached teacher) with 1 vs 2 CPU processes.

    python benchmarks/processes.py --teacher RUN/teacher [--examples 2000]

The same PKD-Skip run (3-layer student, SST-2 slice, 1 epoch) under
`torchrun --nproc_per_node 1` with 2 threads and `--nproc_per_node 2` with 1 thread each, so
both use the machine's 2 cores. The teacher cache is built beforehand, so only training is
timed. Writes benchmarks/results/processes/processes.json and processes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pkd.fsio import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, threads: int, common: list[str], out: Path, port: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), "-m", "pkd.cli", *common, "--output", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    n = m["data"]["train"]["examples"]
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "train_seconds": m["wall_seconds"]["train"],
        "examples_per_s": n / m["wall_seconds"]["train"],
        "dev_accuracy": m["best"]["metrics"]["dev"]["accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="fine-tuned teacher run dir (or model/)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "processes"))
    args = ap.parse_args()
    teacher = Path(args.teacher)
    teacher = teacher / "model" if (teacher / "model").is_dir() else teacher
    common = ["distill", "--teacher", str(teacher), "--task", "sst2", "--data-dir", args.data_dir,
              "--max-train-samples", str(args.examples), "--max-eval-samples", "200",
              "--max-length", "64", "--epochs", "1", "--batch-size", "32", "--student-layers", "3",
              "--method", "pkd", "--strategy", "skip", "--quiet"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PKD_CACHE_DIR", str(Path(tmp) / "cache"))
        run(1, 2, common + ["--epochs", "0.05"], Path(tmp) / "warm", 29611)  # builds the cache
        rows = [
            run(1, 2, common, Path(tmp) / "one", 29612),
            run(2, 1, common, Path(tmp) / "two", 29613),
        ]
    result = {"setup": {"examples": args.examples, "batch_size": 32, "max_length": 64,
                        "student_layers": 3, "method": "pkd-skip", "cores": os.cpu_count()},
              "rows": rows, "ratio_2_vs_1": rows[1]["examples_per_s"] / rows[0]["examples_per_s"]}  # fmt: skip
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "processes.json", result)
    lines = [
        f"# pkd distill throughput, 1 vs 2 CPU processes ({os.cpu_count()} cores)",
        "",
        "| processes | threads each | train s | examples/s | dev acc |",
        "|---|---|---|---|---|",
        *[
            f"| {r['processes']} | {r['threads_per_process']} | {r['train_seconds']:.1f} | "
            f"{r['examples_per_s']:.1f} | {100 * r['dev_accuracy']:.1f} |"
            for r in rows
        ],  # fmt: skip
        "",
        f"2 processes / 1 process: {result['ratio_2_vs_1']:.2f}x",
    ]
    atomic_write(dest / "processes.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
