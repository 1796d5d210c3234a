"""Parameters, size on disk, latency and throughput of several models on the same inputs.

Every model sees the same tensors: token ids drawn once, with a fixed seed, for each
(batch size, sequence length) setting, and an all-ones attention mask. Each setting runs
`warmup` untimed forward passes per model, then `iterations` timed rounds in which the
models take turns (so load from other processes hits them alike); latency is reported as the
median (p50) and 95th percentile per batch, throughput as examples per second at the median
latency, and speed-up as the first model's median latency over this model's (so the
reference model is 1.0 by construction).

Runs on the CPU with a fixed thread count (`torch.set_num_threads`; the previous count is
restored afterwards); the device line records the CPU model, cores, threads and versions.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModel

from pkd.config.runs import resolve_model
from pkd.deploy.onnx_model import load_onnx
from pkd.deploy.report import markdown_table
from pkd.errors import PkdError
from pkd.fsio import atomic_write, write_json
from pkd.models.encoders import (
    config_head,
    count_parameters,
    load_finetuned,
    token_positions,
)
from pkd.training.rundir import check_creatable

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
SEED = 1234  # the inputs are part of the benchmark: fixed, identical for every model
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data")


@dataclass
class Loaded:
    """A model ready to time: `forward(feeds)` runs one batch of numpy int64 inputs."""

    name: str
    path: Path
    forward: object
    parameters: dict
    size_bytes: int
    vocab_size: int | None
    max_positions: int | None
    layers: int | None


# ---------------------------------------------------------------------------------------------
# Device description


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(backend: str, threads: int) -> dict:
    info = {
        "device": "cpu",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "backend": backend,
    }
    if backend == "onnx":
        import onnxruntime  # optional (pkd[onnx]); _load_onnx has checked it is installed

        info["onnxruntime"] = onnxruntime.__version__
    return info


def describe_device(info: dict) -> str:
    extra = f", onnxruntime {info['onnxruntime']}" if "onnxruntime" in info else ""
    return (
        f"{info['cpu']} ({info['cores']} cores), {info['threads']} threads, "
        f"torch {info['torch']}{extra}, backend {info['backend']}"
    )


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_model_dir(path: str) -> Path:
    """An ONNX export dir or file, else what `pkd.config.runs.resolve_model` accepts: a run dir
    (its `model/`), a model directory, or a Hub name (its local snapshot).

    Raises:
        PkdError: the path holds none of them, or the Hub model cannot be fetched.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":  # one file of an export dir (e.g. model.int8.onnx)
        return p
    if p.is_dir() and any(p.glob("*.onnx")):
        return p
    name = resolve_model(path, "models")
    if Path(name).is_dir():
        return Path(name)
    try:
        return Path(snapshot_download(name))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PkdError(
            f"--models: {name} is not a local directory and cannot be fetched from the Hub "
            f"({first})"
        ) from None


def display_names(dirs: list[Path]) -> list[str]:
    """Short unique names: a run's model/ is named after the run."""
    names = []
    for d in dirs:
        r = d.resolve()
        if r.is_file():
            name = f"{r.parent.name}/{r.name}"
        else:
            name = r.parent.name if r.name == "model" else r.name
        names.append(name)
    out = []
    for i, n in enumerate(names):
        out.append(n if names.count(n) == 1 else f"{n}#{names[: i + 1].count(n)}")
    return out


def _weights_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def _load_torch(name: str, d: Path) -> Loaded:
    try:
        config = AutoConfig.from_pretrained(d)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PkdError(f"--models: cannot load a model config from {d} ({first})") from None
    head = config_head(config)
    if head is not None:
        model = load_finetuned(str(d), "models")
    else:  # a bare pre-trained encoder: time the encoder itself
        if not any(d.glob("*.safetensors")):
            raise PkdError(f"--models: {d} has no *.safetensors weights")
        model = AutoModel.from_pretrained(d, use_safetensors=True).eval()
    accepts = set(inspect.signature(model.forward).parameters)

    @torch.inference_mode()
    def forward(feeds: dict[str, np.ndarray]):
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items() if k in accepts}
        if head is not None and head.per_choice:  # (B, T) -> (B, 1, T): one choice per example
            inputs = {k: v.unsqueeze(1) for k, v in inputs.items()}
        return model(**inputs)

    return Loaded(
        name,
        d,
        forward,
        count_parameters(model),
        _weights_bytes(d),
        getattr(config, "vocab_size", None),
        token_positions(config),
        getattr(config, "num_hidden_layers", None),
    )


def _load_onnx(name: str, d: Path, threads: int) -> Loaded:
    try:
        import onnxruntime  # noqa: F401  (optional: pkd[onnx])
    except ImportError:
        raise PkdError(
            "--backend onnx: onnxruntime is not installed; pip install 'pkd[onnx]'"
        ) from None
    # Round-robin timing runs several sessions in one process: with spinning on, the idle
    # worker threads of the session that just ran compete with the next one for the cores.
    session = load_onnx(str(d), threads=threads, spinning=False)
    names = list(session.input_names)
    unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise PkdError(f"--models: {d} expects inputs {sorted(unknown)} that pkd cannot make")
    n = session.num_parameters
    parameters = dict(n) if isinstance(n, dict) else {"total": int(n), "transformer_layers": None}
    onnx_path = getattr(session, "path", None)
    if onnx_path:
        p = Path(onnx_path)
        size = sum(f.stat().st_size for f in p.parent.glob(p.name + "*") if f.is_file())
    else:
        size = d.stat().st_size if d.is_file() else _weights_bytes(d)
    config = getattr(session, "config", None) or {}
    folder = d.parent if d.is_file() else d
    if not config and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())

    def forward(feeds: dict[str, np.ndarray]):
        return session.run({k: feeds[k] for k in names})

    return Loaded(
        name,
        d,
        forward,
        parameters,
        size,
        config.get("vocab_size"),
        token_positions(config),
        config.get("num_hidden_layers"),
    )


# ---------------------------------------------------------------------------------------------
# Timing


def make_inputs(vocab_size: int, batch_size: int, seq_length: int) -> dict[str, np.ndarray]:
    """Random token ids (fixed seed per setting), all-ones mask, zero segment ids: (B, T) int64."""
    rng = np.random.default_rng([SEED, batch_size, seq_length])
    shape = (batch_size, seq_length)
    return {
        "input_ids": rng.integers(0, vocab_size, size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": np.zeros(shape, dtype=np.int64),
    }


def time_forwards(forwards: list, feeds: dict, warmup: int, iterations: int) -> np.ndarray:
    """Seconds per call, (models, iterations), after `warmup` untimed calls of each model.

    The models take turns within each iteration (round robin), so a burst of load from
    other processes slows all of them alike instead of whichever model ran at the time.
    """
    for forward in forwards:
        for _ in range(warmup):
            forward(feeds)
    times = np.empty((len(forwards), iterations))
    for i in range(iterations):
        for j, forward in enumerate(forwards):
            t0 = time.perf_counter()
            forward(feeds)
            times[j, i] = time.perf_counter() - t0
    return times


def check_bench_options(batch_sizes, seq_lengths, threads, backend, warmup, iterations) -> None:
    """Raises PkdError naming the option that is out of range."""
    if backend not in BACKENDS:
        raise PkdError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    for option, values in (("batch-sizes", batch_sizes), ("seq-lengths", seq_lengths)):
        if not values or any(v < 1 for v in values):
            raise PkdError(f"--{option}: need positive integers, got {values}")
    if threads is not None and threads < 1:
        raise PkdError(f"--threads: must be >= 1, got {threads}")
    if warmup < 0:
        raise PkdError(f"--warmup: must be >= 0, got {warmup}")
    if iterations < 1:
        raise PkdError(f"--iterations: must be >= 1, got {iterations}")


# ---------------------------------------------------------------------------------------------
# benchmark


def benchmark(
    models: list[str],
    batch_sizes: list[int],
    seq_lengths: list[int],
    threads: int | None,
    backend: str = "torch",
    output: str | None = None,
    warmup: int = 3,
    iterations: int = 10,
) -> dict:
    """Time every model on every (batch size, sequence length); the first is the reference.

    Args:
        models: run directories (their `model/` is used) or model directories; ONNX export
            directories with `backend="onnx"`.
        batch_sizes, seq_lengths: the settings, all combinations.
        threads: CPU threads for torch (default: torch's current count).
        backend: `torch` or `onnx`.
        output: directory for benchmark.json and benchmark.md (written atomically).
        warmup, iterations: untimed and timed forward passes per setting.

    Returns:
        {"device", "settings", "models", "results" (one row per model and setting),
        "markdown"}.

    Raises:
        PkdError: a path that is not a model, an unknown backend, bad options, a sequence
            longer than a model's position embeddings, or onnxruntime missing.
    """
    check_bench_options(batch_sizes, seq_lengths, threads, backend, warmup, iterations)
    if not models:
        raise PkdError("--models: give at least one model directory")
    if output:  # before the timing, not after it
        check_creatable(Path(output), "--output")
    dirs = [resolve_model_dir(m) for m in models]
    names = display_names(dirs)
    previous = torch.get_num_threads()
    n_threads = threads or previous
    torch.set_num_threads(n_threads)
    try:
        if backend == "onnx":
            loaded = [_load_onnx(n, d, n_threads) for n, d in zip(names, dirs, strict=True)]
        else:
            loaded = [_load_torch(n, d) for n, d in zip(names, dirs, strict=True)]
        _check_lengths(loaded, seq_lengths)
        vocab = _shared_vocab(loaded)
        rows = []
        for b in batch_sizes:
            for t in seq_lengths:
                rows += _time_setting(loaded, b, t, vocab, warmup, iterations)
        info = device_info(backend, n_threads)
    finally:
        torch.set_num_threads(previous)
    result = {
        "device": info,
        "settings": {
            "batch_sizes": list(batch_sizes),
            "seq_lengths": list(seq_lengths),
            "warmup": warmup,
            "iterations": iterations,
            "seed": SEED,
            "vocab_range": vocab,
            "reference": loaded[0].name,
        },
        "models": [_model_row(m) for m in loaded],
        "results": rows,
    }
    result["markdown"] = to_markdown(result)
    if output:
        out = Path(output)
        write_json(out / "benchmark.json", result)
        atomic_write(out / "benchmark.md", result["markdown"])
    return result


def _time_setting(
    loaded: list[Loaded], b: int, t: int, vocab: int, warmup: int, iterations: int
) -> list[dict]:
    """One result row per model for batch size `b` and sequence length `t`."""
    feeds = make_inputs(vocab, b, t)
    times = time_forwards([m.forward for m in loaded], feeds, warmup, iterations)
    p50s = np.percentile(times, 50, axis=1)
    rows = []
    for m, ts, p50 in zip(loaded, times, p50s, strict=True):
        rows.append(
            {
                "model": m.name,
                "path": str(m.path),
                "batch_size": b,
                "seq_length": t,
                "latency_ms_p50": round(1000 * p50, 4),
                "latency_ms_p95": round(1000 * np.percentile(ts, 95), 4),
                "latency_ms_mean": round(1000 * ts.mean(), 4),
                "throughput": round(b / p50, 2),  # examples/s at median latency
                "speedup": round(p50s[0] / p50, 4),  # against the first model
            }
        )
        logger.info("%s b=%d t=%d: p50 %.2f ms, %.1f ex/s", m.name, b, t, 1000 * p50, b / p50)
    return rows


def _model_row(m: Loaded) -> dict:
    return {
        "model": m.name,
        "path": str(m.path),
        "layers": m.layers,
        "parameters": m.parameters,
        "size_bytes": m.size_bytes,
        "size_mb": round(m.size_bytes / 2**20, 3),
    }


def _check_lengths(loaded: list[Loaded], seq_lengths: list[int]) -> None:
    for m in loaded:
        if m.max_positions is not None and max(seq_lengths) > m.max_positions:
            raise PkdError(
                f"--seq-lengths: {max(seq_lengths)} exceeds the {m.max_positions} positions of "
                f"{m.path}"
            )


def _shared_vocab(loaded: list[Loaded]) -> int:
    """Ids are drawn below every model's vocabulary size so all models take the same tensors."""
    sizes = [m.vocab_size for m in loaded if m.vocab_size]
    if not sizes:
        logger.warning("no vocab_size in the model configs; drawing token ids below 100")
        return 100
    return min(sizes)


def _millions(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def to_markdown(result: dict) -> str:
    by_name = {m["model"]: m for m in result["models"]}
    rows = []
    for r in result["results"]:
        m = by_name[r["model"]]
        rows.append(
            [
                r["model"],
                _millions(m["parameters"]["total"]),
                _millions(m["parameters"].get("transformer_layers")),
                f"{m['size_mb']:.1f}",
                r["batch_size"],
                r["seq_length"],
                f"{r['latency_ms_p50']:.2f}",
                f"{r['latency_ms_p95']:.2f}",
                f"{r['throughput']:.1f}",
                f"{r['speedup']:.2f}x",
            ]
        )
    headers = [
        "model",
        "params (M)",
        "layer params (M)",
        "size (MB)",
        "batch",
        "seq",
        "p50 (ms)",
        "p95 (ms)",
        "examples/s",
        "speed-up",
    ]
    s = result["settings"]
    return (
        f"Device: {describe_device(result['device'])}\n"
        f"Warm-up {s['warmup']}, {s['iterations']} timed runs per setting; speed-up against "
        f"{s['reference']} (median latency).\n\n" + markdown_table(headers, rows)
    )
