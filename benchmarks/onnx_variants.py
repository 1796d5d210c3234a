"""Why `pkd export` traces eager attention, quantises per channel, and benchmarks without spinning.

    python benchmarks/onnx_variants.py --teacher RUN/teacher --student RUN/runs/L3-pkd-last-seed3

1. `pkd.deploy.export.export` of the student with the built-in parity sentences (its int8 parity
   report: strict agreement, agreement beyond near-ties, near-ties).
2. int8 variants of the same student: graph traced from SDPA or eager attention x weights
   quantised per tensor or per output channel; SST-2 dev accuracy of each and its latency at
   batch 32 x 128 tokens (`pkd.deploy.bench.benchmark`, onnx backend).
3. Round-robin timing of teacher fp32, student fp32 and student int8 ONNX sessions in one
   process with onnxruntime's thread spinning on and off.
Writes benchmarks/results/onnx_variants.json and onnx_variants.md.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from onnx_speed import _model, parse_args  # benchmarks/ is on sys.path when run as a script

from pkd.deploy.bench import cpu_name
from pkd.fsio import atomic_write, write_json


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pkd.cli import configure_logging
    from pkd.data.loading import load_split
    from pkd.data.metrics import compute_metrics
    from pkd.deploy.bench import benchmark, time_forwards
    from pkd.deploy.export import export, export_graph, load_onnx
    from pkd.models.encoders import load_finetuned, load_tokenizer
    from pkd.tasks import get_task

    configure_logging(quiet=True)  # warnings only, as `pkd export`
    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing hint
    dev = load_split(get_task("sst2"), "dev", data_dir=args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        s_dir, t_dir = Path(tmp) / "student", Path(tmp) / "teacher"
        parity = export(args.student, str(s_dir), quantize="int8")  # built-in sentences
        export(args.teacher, str(t_dir))

        net = load_finetuned(_model(args.student), "model")
        tokenizer = load_tokenizer(_model(args.student), "model")
        names = list(tokenizer.model_input_names)
        files = {}
        for attention in ("sdpa", "eager"):
            net.set_attn_implementation(attention)
            fp32 = s_dir / f"{attention}.onnx"
            export_graph(net, tokenizer, names, fp32, 17)
            for per_channel in (False, True):
                name = f"{attention}, per {'channel' if per_channel else 'tensor'}"
                files[name] = s_dir / f"{attention}.{'channel' if per_channel else 'tensor'}.onnx"
                quantize_dynamic(
                    fp32, files[name], weight_type=QuantType.QInt8, per_channel=per_channel
                )
        accuracy = {}
        for name, file in {"fp32": s_dir / "model.onnx", **files}.items():
            preds = load_onnx(file, threads=args.threads).predict(dev.text_a, batch_size=64)
            accuracy[name] = compute_metrics(("accuracy",), preds, dev.labels)["accuracy"]
        bench = benchmark(
            [str(f) for f in files.values()], batch_sizes=[32], seq_lengths=[128],
            threads=args.threads, iterations=args.iterations, backend="onnx",
        )  # fmt: skip
        latency = {
            name: next(r["latency_ms_p50"] for r in bench["results"] if r["path"] == m["path"])
            for name, m in zip(files, bench["models"], strict=True)
        }

        rng = np.random.default_rng(0)
        feeds = {
            "input_ids": rng.integers(1000, 5000, size=(32, 128), dtype=np.int64),
            "attention_mask": np.ones((32, 128), dtype=np.int64),
            "token_type_ids": np.zeros((32, 128), dtype=np.int64),
        }
        sessions = {"teacher fp32": (t_dir, False), "student fp32": (s_dir, False),
                    "student int8": (s_dir, True)}  # fmt: skip
        spinning = {}
        for spin in (True, False):
            models = [
                load_onnx(d, int8=q, threads=args.threads, spinning=spin)
                for d, q in sessions.values()
            ]
            forwards = [lambda f, m=m: m.session.run(None, f) for m in models]
            times = time_forwards(forwards, feeds, 2, args.iterations)
            spinning["on" if spin else "off"] = {
                n: float(np.median(t)) * 1000 for n, t in zip(sessions, times, strict=True)
            }

    out = {
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__},
        "student": args.student, "teacher": args.teacher,
        "parity_builtin_sentences": parity["int8"], "accuracy_sst2_dev": accuracy,
        "int8_latency_ms_b32_l128": latency, "round_robin_ms_b32_l128": spinning,
    }  # fmt: skip
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "onnx_variants.json", out)
    p = parity["int8"]
    lines = [
        f"# ONNX export variants ({out['machine']['cpu']}, {args.threads} threads)",
        "",
        f"Student {args.student}. Batch 32 x 128 tokens, median of {args.iterations} runs.",
        "",
        "| int8 variant | SST-2 dev accuracy (%) | latency (ms) |",
        "|---|---|---|",
        f"| fp32 (reference) | {100 * accuracy['fp32']:.2f} | - |",
        *[f"| {n} | {100 * accuracy[n]:.2f} | {latency[n]:.1f} |" for n in files],
        "",
        "Round robin of three sessions in one process (ms):",
        "",
        "| session | spinning on | spinning off |",
        "|---|---|---|",
        *[f"| {n} | {spinning['on'][n]:.1f} | {spinning['off'][n]:.1f} |" for n in sessions],
        "",
        f"int8 parity on the built-in sentences: strict agreement {p['agreement']:.4f}, "
        f"beyond near-ties {p['agreement_beyond_ties']:.4f}, near-ties {p['near_ties']} "
        f"of {parity['samples']}.",
    ]
    atomic_write(dest / "onnx_variants.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
