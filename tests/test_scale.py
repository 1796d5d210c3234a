"""Long-run machinery on tiny models: checkpoints, kill-and-resume, two processes, TensorBoard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pkd.cli import main

TRAIN = ["--epochs", "3", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--quiet"]


def teacher_args(tiny_bert, sst2_dir, out):
    return finetune_args(tiny_bert, sst2_dir, out) + ["--epochs", "8"]


def finetune_args(tiny_bert, sst2_dir, out):
    return [
        "finetune",
        "--model",
        str(tiny_bert),
        "--task",
        "sst2",
        "--data-dir",
        str(sst2_dir),
        "--output",
        str(out),
        *TRAIN,
    ]


def run_cli(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def weights(run: Path) -> dict:
    return load_file(run / "model" / "model.safetensors")


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as the in-process reference run (conftest): the same float sums
import pkd.train as T
original = T.save_checkpoint
def save_then_die(accelerator, output, state, limit):
    path = original(accelerator, output, state, limit)
    if state["step"] == 6:  # mid-epoch 1 (8 steps per epoch)
        os.kill(os.getpid(), signal.SIGKILL)
    return path
T.save_checkpoint = save_then_die
from pkd.cli import main
main(sys.argv[1:])
"""


def test_kill_and_resume_matches_uninterrupted_run(tiny_bert, sst2_dir, tmp_path):
    ref = tmp_path / "ref"
    assert run_cli(finetune_args(tiny_bert, sst2_dir, ref)) == 0

    run = tmp_path / "killed"
    args = finetune_args(tiny_bert, sst2_dir, run) + ["--save-steps", "3"]
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run / "checkpoints" / "step-6" / "trainer_state.json").is_file()
    assert not (run / "metrics.json").exists()  # an interrupted run is not a result

    assert run_cli(args + ["--resume"]) == 0
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    m_ref = json.loads((ref / "metrics.json").read_text())
    m_run = json.loads((run / "metrics.json").read_text())
    assert m_run["best"]["metrics"] == m_ref["best"]["metrics"]
    assert [h["metrics"] for h in m_run["history"]] == [h["metrics"] for h in m_ref["history"]]


def test_half_written_checkpoint_is_ignored(tmp_path):
    from pkd.train import checkpoints

    root = tmp_path / "checkpoints"
    (root / "step-2").mkdir(parents=True)
    (root / "step-2" / "trainer_state.json").write_text("{}")
    (root / ".step-4.tmp").mkdir()  # interrupted while being written
    (root / "step-6").mkdir()  # no trainer_state.json: incomplete
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2"]


def test_resume_without_checkpoint_is_an_error(tiny_bert, sst2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert run_cli(finetune_args(tiny_bert, sst2_dir, out) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pkd: error: --resume:") and len(err.splitlines()) == 1


def test_tensorboard_has_loss_terms_and_metrics(tiny_bert, sst2_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher = tmp_path / "teacher"
    assert run_cli(teacher_args(tiny_bert, sst2_dir, teacher)) == 0
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(teacher / "model"), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--output", str(out), "--student-layers", "2", *TRAIN, "--logging-steps", "2"]  # fmt: skip
    assert run_cli(args) == 0
    files = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"ce", "kd", "pt", "loss", "lr", "examples_per_s", "dev/accuracy"} <= tags


def test_two_processes_match_one_process(tiny_bert, sst2_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): one output dir, full dev set, same result."""
    teacher = tmp_path / "teacher"
    assert run_cli(teacher_args(tiny_bert, sst2_dir, teacher)) == 0
    common = ["distill", "--teacher", str(teacher / "model"), "--task", "sst2", "--data-dir", str(sst2_dir),
              "--student-layers", "2", *TRAIN, "--max-grad-norm", "0"]  # fmt: skip
    one = tmp_path / "one"
    assert run_cli(common + ["--output", str(one)]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PKD_CACHE_DIR": os.environ["PKD_CACHE_DIR"]}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
    ]
    proc = subprocess.run([*torchrun, "-m", "pkd.cli", *common, "--output", str(two)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["data"]["dev"]["examples"] == 32
    # Metrics are over exactly the dev set: accuracy is a multiple of 1/32.
    acc2 = m2["final"]["metrics"]["dev"]["accuracy"]
    assert abs(acc2 * 32 - round(acc2 * 32)) < 1e-9
    assert abs(acc2 - m1["final"]["metrics"]["dev"]["accuracy"]) <= 0.1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two"]


def test_bf16_mixed_precision_runs_on_cpu(tiny_bert, sst2_dir, tmp_path):
    out = tmp_path / "bf16"
    args = finetune_args(tiny_bert, sst2_dir, out) + ["--epochs", "1", "--mixed-precision", "bf16"]
    assert run_cli(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["best"]["metrics"]["dev"]["accuracy"] <= 1.0
    assert "mixed_precision: bf16" in (out / "config.yaml").read_text()
    # weights are saved in fp32 whatever the compute precision
    assert all(t.dtype == torch.float32 for t in weights(out).values())


def test_runs_in_one_process_may_change_mixed_precision(tmp_path):
    """compare/sweep/API users run several trainings in one Python process."""
    from pkd.config import TrainConfig
    from pkd.train import make_accelerator

    seen = []
    for precision in ["no", "bf16", "no"]:
        accelerator = make_accelerator(TrainConfig(mixed_precision=precision), tmp_path / precision)
        seen.append(accelerator.mixed_precision)
    assert seen == ["no", "bf16", "no"]
