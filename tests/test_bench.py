"""`pkd benchmark` on tiny random BERTs: sizes, latencies, speed-ups, errors, ONNX plumbing."""

import json
import shutil
import statistics
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert, make_tiny_teacher

from pkd.deploy.bench import benchmark, make_inputs
from pkd.errors import PkdError


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return make_tiny_teacher(root / "t2", make_tiny_bert(root / "b2", layers=2))


def _expected_params(path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for n, p in model.named_parameters() if ".layer." in n)
    return total, layers


def test_benchmark_cli_two_models(tiny_teacher, two_layer, tmp_path, pkd_cli):
    run = tmp_path / "run"  # a run directory: its model/ is benchmarked
    shutil.copytree(tiny_teacher, run / "model")
    (run / "metrics.json").write_text("{}")
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", str(tiny_teacher), str(two_layer), str(run)]
    argv += ["--batch-sizes", "1,2", "--seq-lengths", "8,16", "--threads", "1"]
    argv += ["--warmup", "2", "--iterations", "15", "--output", str(out)]
    code, stdout, err = pkd_cli(argv)
    assert code == 0, err
    data = json.loads((out / "benchmark.json").read_text())
    assert (out / "benchmark.md").read_text() == data["markdown"]
    assert data["markdown"].strip() in stdout

    ref = tiny_teacher.parent.name  # a dir named model/ is named after its parent (the run)
    assert [m["model"] for m in data["models"]] == [ref, "t2", "run"]
    for m, path in zip(data["models"], (tiny_teacher, two_layer, run / "model"), strict=True):
        total, layers = _expected_params(path)
        assert m["parameters"] == {"total": total, "transformer_layers": layers}
        assert m["size_bytes"] == (path / "model.safetensors").stat().st_size
    assert data["models"][0]["layers"] == 4 and data["models"][1]["layers"] == 2
    assert data["models"][1]["parameters"]["total"] < data["models"][0]["parameters"]["total"]

    rows = data["results"]
    assert len(rows) == 3 * 2 * 2
    assert {(r["batch_size"], r["seq_length"]) for r in rows} == {(1, 8), (1, 16), (2, 8), (2, 16)}
    for r in rows:
        assert r["latency_ms_p50"] > 0
        assert r["latency_ms_p95"] >= r["latency_ms_p50"]
        assert r["throughput"] == pytest.approx(
            r["batch_size"] / (r["latency_ms_p50"] / 1000), rel=1e-3
        )
    assert all(r["speedup"] == 1.0 for r in rows if r["model"] == ref)
    # The run holds the same model as the reference: speed-up ~ 1 (loose: shared CPU).
    self_speedups = [r["speedup"] for r in rows if r["model"] == "run"]
    assert 0.5 <= statistics.median(self_speedups) <= 2.0, self_speedups

    dev = data["device"]
    assert dev["threads"] == 1 and dev["device"] == "cpu" and dev["cpu"]
    assert dev["torch"] == str(torch.__version__) and dev["cores"] >= 1
    assert data["settings"]["iterations"] == 15 and data["settings"]["reference"] == ref
    assert "| t2 |" in data["markdown"] and "speed-up" in data["markdown"]
    assert torch.get_num_threads() == 1  # restored to what it was before the call


def test_inputs_are_fixed_and_in_vocab():
    a, b = make_inputs(27, 4, 16), make_inputs(27, 4, 16)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert a[key].shape == (4, 16) and a[key].dtype == np.int64
        np.testing.assert_array_equal(a[key], b[key])
    assert a["input_ids"].min() >= 0 and a["input_ids"].max() < 27
    assert (a["attention_mask"] == 1).all()


def test_benchmark_errors(tiny_teacher, tmp_path, pkd_cli):
    not_model = tmp_path / "empty"
    not_model.mkdir()
    assert f"--models: {not_model} is neither a model directory" in pkd_cli.error(
        ["benchmark", "--models", str(not_model)]
    )
    assert "does not exist" in pkd_cli.error(["benchmark", "--models", str(tmp_path / "missing")])
    assert "--backend: 'tf' is not one of torch, onnx" in pkd_cli.error(
        ["benchmark", "--models", str(tiny_teacher), "--backend", "tf"]
    )
    assert "--seq-lengths: 65 exceeds the 64 positions" in pkd_cli.error(
        ["benchmark", "--models", str(tiny_teacher), "--seq-lengths", "65"]
    )
    assert "--iterations" in pkd_cli.error(
        ["benchmark", "--models", str(tiny_teacher), "--iterations", "0"]
    )


def test_onnx_backend_needs_onnxruntime(tiny_teacher, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(PkdError, match="onnxruntime is not installed"):
        benchmark([str(tiny_teacher)], [1], [8], 1, backend="onnx")


def test_onnx_backend_uses_export_loader(tmp_path, monkeypatch):
    """The ONNX path through the `pkd.deploy.onnx_model.load_onnx` contract (stand-in loader)."""
    export_dir = tmp_path / "onnx"
    export_dir.mkdir()
    (export_dir / "model.onnx").write_bytes(b"\0" * 3000)
    (export_dir / "config.json").write_text(
        json.dumps({"vocab_size": 50, "max_position_embeddings": 32})
    )
    seen = []

    class Session:
        input_names = ["input_ids", "attention_mask"]
        num_parameters = 1234
        path = str(export_dir / "model.onnx")

        def run(self, feeds):
            seen.append({k: v.copy() for k, v in feeds.items()})
            return np.zeros((len(feeds["input_ids"]), 2), dtype=np.float32)

    calls = []

    def load_onnx(path, int8=False, threads=None, spinning=True):
        calls.append({"threads": threads, "spinning": spinning})
        return Session()

    monkeypatch.setattr("pkd.deploy.bench.load_onnx", load_onnx)
    result = benchmark([str(export_dir)], [2], [8], 1, backend="onnx", warmup=1, iterations=3)
    assert result["models"][0]["parameters"] == {"total": 1234, "transformer_layers": None}
    assert result["models"][0]["size_bytes"] == 3000
    assert result["device"]["backend"] == "onnx" and "onnxruntime" in result["device"]
    assert len(seen) == 4 and set(seen[0]) == {"input_ids", "attention_mask"}
    assert calls == [{"threads": 1, "spinning": False}]  # sessions share the cores
    assert seen[0]["input_ids"].shape == (2, 8) and seen[0]["input_ids"].max() < 50
    with pytest.raises(PkdError, match="--seq-lengths: 64 exceeds the 32 positions"):
        benchmark([str(export_dir)], [2], [64], 1, backend="onnx")


def test_onnx_backend_on_a_real_export(tiny_teacher, tmp_path):
    from pkd.deploy.export import export

    export(str(tiny_teacher), str(tmp_path / "onnx"))
    result = benchmark(
        [str(tmp_path / "onnx")], [2], [16], 1, backend="onnx", warmup=1, iterations=3
    )
    m = result["models"][0]
    total, _ = _expected_params(tiny_teacher)
    # The export counts identical initializers once (an untrained model's LayerNorm ones/zeros).
    assert m["parameters"]["total"] == pytest.approx(total, rel=0.05) and m["layers"] == 4
    assert m["size_bytes"] == (tmp_path / "onnx" / "model.onnx").stat().st_size
    (row,) = result["results"]
    assert row["latency_ms_p95"] >= row["latency_ms_p50"] > 0 and row["speedup"] == 1.0
