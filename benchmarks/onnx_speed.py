"""Deployment speed: PyTorch fp32 teacher vs the student in PyTorch, ONNX fp32 and ONNX int8.

    python benchmarks/onnx_speed.py --teacher RUN/teacher --student RUN/compare/runs/L3-pkd-last-seed1

Exports teacher and student (`pkd.deploy.export.export`, parity-checked, int8 for the student),
scores the int8 and fp32 students on the SST-2 dev set, and times every model at batch 32,
length 128 (and batch 1, length 32) with the same threads. Writes
benchmarks/results/onnx_speed/onnx_speed.json and onnx_speed.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pkd.deploy.bench import cpu_name
from pkd.fsio import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]


def parse_args(
    description: str, output: Path = ROOT / "benchmarks" / "results"
) -> argparse.Namespace:
    """Options shared with onnx_variants.py: a teacher and a student run, SST-2, threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--teacher", required=True, help="teacher run dir (or its model/)")
    ap.add_argument("--student", required=True, help="student run dir (or its model/)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--output", default=str(output))
    return ap.parse_args()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], ROOT / "benchmarks" / "results" / "onnx_speed")

    import torch

    from pkd.api import evaluate
    from pkd.cli import configure_logging
    from pkd.config.sections import DataConfig
    from pkd.data.loading import load_split
    from pkd.data.metrics import compute_metrics
    from pkd.deploy.bench import benchmark
    from pkd.deploy.export import export, load_onnx
    from pkd.tasks import get_task

    configure_logging(quiet=True)  # warnings only, as `pkd evaluate`
    torch.set_num_threads(args.threads)
    data = DataConfig(task="sst2", data_dir=args.data_dir, max_length=128)
    dev = load_split(get_task("sst2"), "dev", data_dir=args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        s_onnx, t_onnx = Path(tmp) / "student", Path(tmp) / "teacher"
        parity = export(
            args.student, str(s_onnx), quantize="int8", task="sst2", data_dir=args.data_dir
        )
        export(args.teacher, str(t_onnx), task="sst2", data_dir=args.data_dir)
        accuracy = {
            "student_torch_fp32": evaluate(_model(args.student), data)["accuracy"],
            "teacher_torch_fp32": evaluate(_model(args.teacher), data)["accuracy"],
        }
        for name, int8 in (("student_onnx_fp32", False), ("student_onnx_int8", True)):
            model = load_onnx(s_onnx, int8=int8, threads=args.threads)
            preds = model.predict(dev.text_a, batch_size=64)
            accuracy[name] = compute_metrics(("accuracy",), preds, dev.labels)["accuracy"]
        shapes = {"batch_sizes": [1, 32], "seq_lengths": [32, 128], "threads": args.threads,
                  "iterations": args.iterations}  # fmt: skip
        torch_rows = benchmark(
            [_model(args.teacher), _model(args.student)], backend="torch", **_kw(shapes)
        )
        onnx_rows = benchmark(
            [str(t_onnx / "model.onnx"), str(s_onnx / "model.onnx"), str(s_onnx / "model.int8.onnx")],
            backend="onnx", **_kw(shapes),
        )  # fmt: skip

    names = {
        ("torch", 0): "teacher torch fp32", ("torch", 1): "student torch fp32",
        ("onnx", 0): "teacher onnx fp32", ("onnx", 1): "student onnx fp32", ("onnx", 2): "student onnx int8",
    }  # fmt: skip
    rows = []
    for backend, result in (("torch", torch_rows), ("onnx", onnx_rows)):
        for r in result["results"]:
            idx = [m["path"] for m in result["models"]].index(r["path"])
            rows.append({"name": names[(backend, idx)], "batch": r["batch_size"], "length": r["seq_length"],
                         "throughput": r["throughput"], "p50_ms": r["latency_ms_p50"]})  # fmt: skip
    ref = {
        (r["batch"], r["length"]): r["throughput"]
        for r in rows
        if r["name"] == "teacher torch fp32"
    }
    for r in rows:
        r["speedup_vs_teacher_torch"] = r["throughput"] / ref[(r["batch"], r["length"])]
    out = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__},
        "teacher": args.teacher, "student": args.student, "accuracy_sst2_dev": accuracy,
        "parity": {k: parity[k] for k in parity if k in ("fp32", "int8")}, "rows": rows,
    }  # fmt: skip
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "onnx_speed.json", out)
    lines = [
        f"# Deployment speed ({out['machine']['cpu']}, {args.threads} threads, torch {torch.__version__})",
        "",
        "SST-2 dev accuracy: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracy.items()),
        "",
        "| model | batch | length | examples/s | p50 ms | × teacher (torch fp32) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['batch']} | {r['length']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['speedup_vs_teacher_torch']:.2f} |"
            for r in rows
        ],  # fmt: skip
    ]
    atomic_write(dest / "onnx_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _model(run: str) -> str:
    p = Path(run)
    return str(p / "model") if (p / "model" / "config.json").is_file() else str(p)


def _kw(shapes: dict) -> dict:
    return {"batch_sizes": shapes["batch_sizes"], "seq_lengths": shapes["seq_lengths"],
            "threads": shapes["threads"], "iterations": shapes["iterations"]}  # fmt: skip


if __name__ == "__main__":
    main()
