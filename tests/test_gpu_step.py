"""Issue 28: a GPU step without avoidable launches and syncs (fused AdamW, pinned batches,
non-blocking copies) that leaves the CPU step as it was; the precision benchmark's FLOPs."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import pkd.training.accelerator as A
from pkd.config.sections import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device" / "precision.py"


def tiny_model() -> torch.nn.Module:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(config)


def prepared(cfg: TrainConfig, **kwargs) -> A.Prepared:
    accelerator = A.make_accelerator(TrainConfig())
    return A.prepare(accelerator, tiny_model(), list(range(8)), {}, cfg, lambda x: x, **kwargs)


def test_cpu_step_fuses_adamw_and_keeps_a_plain_loader():
    p = prepared(TrainConfig(batch_size=4))
    assert [g["fused"] for g in p.optimizer.param_groups] == [True, True]
    assert p.train_loader.pin_memory is False
    assert p.accelerator.dataloader_config.non_blocking is False


@pytest.mark.parametrize(("precision", "fused"), [("no", True), ("bf16", True), ("fp16", False)])
def test_gpu_step_fuses_adamw_except_under_fp16(monkeypatch, precision, fused):
    # on a GPU (here pretended: the flag is all prepare reads) AdamW is fused; fp16 keeps the
    # unfused step, whose skip on a gradient overflow accelerate reports to the loop
    monkeypatch.setattr(A, "on_gpu", lambda accelerator: True)
    p = prepared(TrainConfig(batch_size=4, mixed_precision=precision))
    assert [g["fused"] for g in p.optimizer.param_groups] == [fused or None] * 2
    assert p.train_loader.pin_memory is True


def test_fused_can_be_forced_off_and_on():
    off = prepared(TrainConfig(batch_size=4), fused=False)
    on = prepared(TrainConfig(batch_size=4), fused=True)
    assert off.optimizer.param_groups[0]["fused"] is None
    assert on.optimizer.param_groups[0]["fused"] is True


def load_script():
    spec = importlib.util.spec_from_file_location("precision_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_precision_benchmark_flops_follow_kaplan():
    bench = load_script()
    model = tiny_model()
    # non-embedding: 2 layers x (4 H^2 + 4H attention, 8 H^2 + 5H MLP, 4H two LayerNorms)
    # + pooler (H^2 + H) + classifier (2H + 2)
    h, inter = 16, 32
    layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h
    n = 2 * layer + h * h + h + 2 * h + 2
    assert bench.non_embedding_params(model) == n
    b, t = 4, 8
    train = 6 * n * b * t + 12 * 2 * h * t * t * b
    assert bench.model_flops(model, b, t, training=True) == train
    assert bench.model_flops(model, b, t, training=False) == pytest.approx(train / 3)


def test_precision_benchmark_peak_and_quick_settings():
    bench = load_script()
    args = bench.parse_args(["--quick", "--output", "/tmp/x"])
    assert (args.models, args.steps, args.shapes) == ("tiny", 2, "4x16,8x32")
    assert args.variants == "eager,foreach"
    assert bench.parse_args(["--quick", "--variants", "compile"]).variants == "compile"
    if not torch.cuda.is_available():
        assert args.precisions == "fp32,bf16"
        assert bench.peak_tflops(args, torch.device("cpu"), "bf16") is None
    forced = bench.parse_args(["--peak-tflops", "100"])
    assert bench.peak_tflops(forced, torch.device("cpu"), "fp32") == 100
