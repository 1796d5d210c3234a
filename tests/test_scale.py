"""Long-run machinery on tiny models: checkpoints, kill-and-resume, two processes, TensorBoard."""

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    WORDS,
    make_tiny_teacher,
    make_tokenizer,
    run_killed_after_checkpoint,
    sentiment_rows,
    untimed,
    write_sst2,
)
from safetensors.torch import load_file

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


def weights(run: Path) -> dict:
    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    ref = tmp_path / "ref"
    pkd_cli.ok(finetune_args(tiny_bert, sst2_dir, ref))

    run = tmp_path / "killed"
    args = finetune_args(tiny_bert, sst2_dir, run) + ["--save-steps", "3"]
    proc = run_killed_after_checkpoint(6, args)  # mid-epoch 1 (8 steps per epoch)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run / "checkpoints" / "step-6" / "trainer_state.json").is_file()
    assert not (run / "metrics.json").exists()  # an interrupted run is not a result

    pkd_cli.ok(args + ["--resume"])
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    m_ref = json.loads((ref / "metrics.json").read_text())
    m_run = json.loads((run / "metrics.json").read_text())
    assert m_run["best"]["metrics"] == m_ref["best"]["metrics"]
    assert [h["metrics"] for h in m_run["history"]] == [h["metrics"] for h in m_ref["history"]]


@pytest.mark.slow
def test_resumed_run_reports_what_the_whole_run_saw(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    """Killed mid-epoch and resumed, a distillation with a transfer set writes the
    metrics.json of an uninterrupted run but for wall times: examples seen (labelled and
    transfer) and gradient shares count the steps before the kill too (before, only those
    after the resume)."""
    transfer = tmp_path / "transfer.tsv"
    rows = [f"{i}\t{s}" for i, (s, _) in enumerate(sentiment_rows(80, seed=7))]
    transfer.write_text("\n".join(["index\tsentence", *rows]) + "\n")

    def args(out):
        return ["distill", "--teacher", tiny_teacher, "--task", "sst2", "--data-dir", sst2_dir,
                "--output", out, "--student-layers", "2", "--allow-weak-teacher", *TRAIN,
                "--epochs", "2", "--transfer-file", transfer, "--teacher-mode", "online",
                "--logging-steps", "2", "--save-steps", "3"]  # fmt: skip

    ref, run = tmp_path / "ref", tmp_path / "killed"
    pkd_cli.ok(args(ref))
    proc = run_killed_after_checkpoint(6, args(run))  # mid-epoch 1 (8 steps per epoch)
    assert proc.returncode == -9, proc.stderr[-2000:]
    pkd_cli.ok([*args(run), "--resume"])
    assert untimed(ref)["examples_seen"] == {"labelled": 128, "transfer": 128}
    assert untimed(run) == untimed(ref)


def test_half_written_checkpoint_is_ignored(tmp_path):
    from pkd.training.checkpoints import checkpoints

    root = tmp_path / "checkpoints"
    (root / "step-2").mkdir(parents=True)
    (root / "step-2" / "trainer_state.json").write_text("{}")
    (root / ".step-4.tmp").mkdir()  # interrupted while being written
    (root / "step-6").mkdir()  # no trainer_state.json: incomplete
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2"]


def test_resume_without_checkpoint_is_an_error(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "run"
    out.mkdir()
    err = pkd_cli.error(finetune_args(tiny_bert, sst2_dir, out) + ["--resume"])
    assert err.startswith("--resume:"), err


def test_tensorboard_has_loss_terms_and_metrics(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher = tmp_path / "teacher"
    pkd_cli.ok(teacher_args(tiny_bert, sst2_dir, teacher))
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(teacher / "model"), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--output", str(out), "--student-layers", "2", *TRAIN, "--logging-steps", "2"]  # fmt: skip
    pkd_cli.ok(args)
    files = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"ce", "kd", "pt", "loss", "lr", "examples_per_s", "dev/accuracy"} <= tags


def torchrun(*args: str) -> list[str]:
    """The command line of 2 CPU processes (gloo) under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29533", *args]  # fmt: skip


def run_torchrun(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run 2 CPU processes (gloo) under torchrun; on timeout kill the launcher and its workers
    (their own session) and fail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PKD_CACHE_DIR": os.environ["PKD_CACHE_DIR"]}
    proc = subprocess.Popen(torchrun(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not return within {timeout}s: {(out + err)[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def logged_lrs(run: Path) -> dict[int, float]:
    """step -> learning rate, from log.jsonl's step records."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def linear_schedule(lr: float, total: int, warmup: int) -> list[float]:
    """The lr each of `total` optimizer steps uses: linear warm-up to `lr`, then linear decay
    (transformers' get_linear_schedule_with_warmup, whose step s multiplies lr by s / warmup,
    then by (total - s) / (total - warmup); step 1 uses s = 0)."""
    return [
        lr * (s / warmup if s < warmup else (total - s) / (total - warmup)) for s in range(total)
    ]


@pytest.mark.slow
def test_two_processes_follow_the_one_process_schedule(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    """torchrun --nproc_per_node 2 (gloo) and 1 process, the same effective batch of 8: the
    same learning rate at every optimizer step, down to the schedule's last value; one output
    dir; metrics over exactly the dev set.

    accelerate's prepared scheduler steps once per process per optimizer step, so 2 processes
    reached lr 0 after half the steps; 64 examples / 8 = 8 steps per epoch, 3 epochs: 24 steps,
    warm-up int(0.1 * 24) = 2 (the linear schedule, not `pkd distill`'s constant default, so
    that every step's value differs).
    """
    teacher = tmp_path / "teacher"
    pkd_cli.ok(teacher_args(tiny_bert, sst2_dir, teacher))
    common = ["distill", "--teacher", str(teacher / "model"), "--task", "sst2", "--data-dir", str(sst2_dir),
              "--student-layers", "2", *TRAIN, "--max-grad-norm", "0", "--logging-steps", "1",
              "--lr-schedule", "linear", "--warmup-ratio", "0.1"]  # fmt: skip
    one = tmp_path / "one"
    pkd_cli.ok(common + ["--output", str(one)])
    two = tmp_path / "two"
    proc = run_torchrun(["-m", "pkd.cli", *common, "--output", str(two)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected = linear_schedule(3e-3, total=24, warmup=2)
    lr1, lr2 = logged_lrs(one), logged_lrs(two)
    assert sorted(lr1) == sorted(lr2) == list(range(1, 25))  # every step logged once
    assert [lr2[k] for k in range(1, 25)] == [lr1[k] for k in range(1, 25)]
    assert [lr1[k] for k in range(1, 25)] == pytest.approx(expected, rel=1e-12)
    assert lr2[24] == pytest.approx(3e-3 / 22, rel=1e-12)  # the last step's lr is not 0
    assert lr2[1] == 0.0 and lr2[3] == pytest.approx(3e-3, rel=1e-12)  # the warm-up

    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["data"]["dev"]["examples"] == 32
    # Metrics are over exactly the dev set: accuracy is a multiple of 1/32.
    acc2 = m2["final"]["metrics"]["dev"]["accuracy"]
    assert abs(acc2 * 32 - round(acc2 * 32)) < 1e-9
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two"]


NAN_ON_RANK_1 = """
import os, sys
import torch
import pkd.training.hooks as T
class NanOnRank1AtStep3(T.LoopHooks):
    def on_loss(self, step, terms):
        if os.environ["RANK"] == "1" and step == 3:
            terms["ce"] = terms["ce"] * float("nan")
from pkd.cli import main
with T.use_hooks(NanOnRank1AtStep3()):
    main(sys.argv[1:])
"""


@pytest.mark.slow
def test_non_finite_loss_on_one_process_stops_every_process(tiny_bert, sst2_dir, tmp_path):
    """A NaN on rank 1 only: every rank stops at the same step with the same one-line error
    and exit 2. Before, rank 1 stopped alone: rank 0 waited in the next all-reduce (forever
    across machines; on one machine torchrun killed it, without a message).

    torchrun itself returns 1 (ChildFailedError) and prints each failed rank's exit code. It
    stops the other workers as soon as one has exited (SIGTERM, exit code -15), and a Python
    process with torch loaded takes a second or more to finish exiting, so a rank that has
    printed the error may still be reported as -15: each rank's code is 2 or -15, the first
    one observed is 2. Each rank's stderr goes to its own file (`--redirects`): torchrun's
    `--tee` may drop a worker's last lines when it exits.
    """
    driver = tmp_path / "driver.py"
    driver.write_text(NAN_ON_RANK_1)
    run, logs = tmp_path / "run", tmp_path / "logs"
    args = finetune_args(tiny_bert, sst2_dir, run) + ["--save-steps", "2"]
    proc = run_torchrun(["--log-dir", str(logs), "--redirects", "3", str(driver), *args], 120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    codes = dict(re.findall(r"rank\s+: (\d) \(local_rank: \d\)\n\s+exitcode\s+: (-?\d+)", out))
    assert sorted(codes) == ["0", "1"] and set(codes.values()) <= {"2", "-15"}, out[-3000:]
    root_cause = out.split("Root Cause (first observed failure)", 1)[1]
    assert re.search(r"exitcode\s+: 2 ", root_cause), out[-3000:]
    errors = {}
    for rank in ("0", "1"):
        (stderr,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        lines = [x for x in stderr.read_text().splitlines() if x.startswith("pkd: error: ")]
        assert len(lines) <= 1, lines
        errors[rank] = lines[0].removeprefix("pkd: error: ") if lines else None
    msg = errors["1"]  # the rank that saw the NaN always says so
    assert msg and msg.startswith("non-finite loss at step 3 on process 1 of 2 (ce=nan)"), msg
    assert msg.endswith(f"; last checkpoint: {run / 'checkpoints' / 'step-2'}"), msg
    # rank 0 stopped at the same step with the same message (unless torchrun's SIGTERM for
    # rank 1's exit came first, under heavy load: then its exit code says so)
    assert errors["0"] == msg or (errors["0"] is None and codes["0"] == "-15"), errors
    assert not (run / "metrics.json").exists()


def test_bf16_mixed_precision_trains_on_cpu(tiny_bert, sst2_dir, tmp_path, monkeypatch, pkd_cli):
    """--mixed-precision bf16 on the CPU: the encoder's matmuls really run in bf16 (autocast),
    the losses are finite and fall, the toy task is learnt, the weights are saved in fp32."""
    import pkd.objectives.objective

    computed, real = set(), pkd.objectives.objective.loss_terms

    def spy(model, *args, **kwargs):  # the dtype of the first Linear's output, every step
        if not computed:
            linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda mod, inp, out: computed.add(out.dtype))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(pkd.objectives.objective, "loss_terms", spy)
    out = tmp_path / "bf16"
    args = finetune_args(tiny_bert, sst2_dir, out)
    args += ["--epochs", "5", "--mixed-precision", "bf16", "--logging-steps", "8"]  # 8 steps/epoch
    pkd_cli.ok(args)
    assert computed == {torch.bfloat16}
    assert "mixed_precision: bf16" in (out / "config.yaml").read_text()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]  # one mean per epoch
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0]  # from ln 2 = 0.69 at the start
    m = json.loads((out / "metrics.json").read_text())
    assert m["majority_baseline"]["dev"] == 0.5625  # 18 of the 32 dev rows share a label
    assert m["best"]["metrics"]["dev"]["accuracy"] >= 0.9
    # weights are saved in fp32 whatever the compute precision
    assert all(t.dtype == torch.float32 for t in weights(out).values())


def test_runs_in_one_process_may_change_mixed_precision(tmp_path):
    """compare/sweep/API users run several trainings in one Python process."""
    from pkd.config.sections import TrainConfig
    from pkd.training.accelerator import make_accelerator

    seen = []
    for precision in ["no", "bf16", "no"]:
        accelerator = make_accelerator(TrainConfig(mixed_precision=precision), tmp_path / precision)
        seen.append(accelerator.mixed_precision)
    assert seen == ["no", "bf16", "no"]


# ---------------------------------------------------------------------------------------------
# Every objective on two processes

COMMANDS = """
import json, os, sys
import torch
torch.set_num_threads(1)
import pkd.data.text
import pkd.training.hooks as T
from pkd.cli import run

seen = []  # (epoch, example) of each training passage this process masked
masked = pkd.data.text.MaskedText.__getitem__
def spy(self, i):
    if not self.fixed:
        seen.append((self.epoch, i))
    return masked(self, i)
pkd.data.text.MaskedText.__getitem__ = spy

class Stop(Exception):
    pass
class StopAfterCheckpoint(T.LoopHooks):  # on every process: all stop at the same step
    def __init__(self, step):
        self.step = step
    def on_checkpoint(self, state, path):
        if state.step == self.step:
            raise Stop()

for stop, argv in json.loads(open(sys.argv[1]).read()):
    print("running: pkd", *argv, file=sys.stderr, flush=True)
    try:
        with T.use_hooks(StopAfterCheckpoint(stop)):
            code = run(argv)
    except Stop:
        continue
    if code != 0:
        raise RuntimeError("pkd " + " ".join(argv) + " failed")
with open(sys.argv[2] + "." + os.environ["RANK"], "w") as f:
    json.dump(seen, f)
"""


def run_commands_on_two_processes(commands: list, tmp_path: Path, timeout: float):
    """Run pkd commands one after the other in one torchrun (2 processes); a command may be
    (step, argv): stopped (an exception on every process) after the checkpoint of `step`.
    Returns, per rank, the (epoch, example) of each passage `MaskedText` masked for training."""
    commands = [c if isinstance(c[0], int) else (0, c) for c in commands]
    plain = [(stop, [str(a) for a in argv]) for stop, argv in commands]
    (tmp_path / "commands.json").write_text(json.dumps(plain))
    driver = tmp_path / "commands.py"
    driver.write_text(COMMANDS)
    seen = tmp_path / "masked"
    proc = run_torchrun([str(driver), str(tmp_path / "commands.json"), str(seen)], timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads(Path(f"{seen}.{rank}").read_text()) for rank in (0, 1)]


def without_dropout(source: Path, path: Path) -> Path:
    """The BERT `source` saved again with dropout off: 1 and 2 processes then compute the
    same steps (each process draws its own dropout masks)."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(
        source, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


SMALL = ["--epochs", "1", "--batch-size", "8", "--max-length", "16", "--quiet"]


@pytest.mark.slow
def test_pretrain_trains_every_objective_on_two_processes(tiny_bert, tmp_path):
    """DDP stops at step 2 on a trained parameter that no loss reads (BERT's pooler in
    `pkd pretrain`; projections with MLM terms alone). Every objective runs on 2 processes:
    with and without MLM terms, a narrower student (projections), and PKD from that student
    into `pkd distill` (projections again). The pooler is kept but untouched; the MLM masks
    change with the epoch on every process, also after a resume, which ends as the
    uninterrupted run (weights, metrics.json but for wall times)."""
    from transformers import BertConfig, BertForMaskedLM

    teacher = tmp_path / "mlm-teacher"  # a tiny BERT with an MLM head
    make_tokenizer(teacher)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(teacher)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(s for s, _ in sentiment_rows(44)) + "\n")

    def pretrain(out, *extra, teacher=teacher):
        return ["pretrain", "--teacher", teacher, "--text-file", corpus, "--output", tmp_path / out,
                "--student-layers", "2", "--eval-texts", "4", *SMALL, *extra]  # fmt: skip

    mlm = ["--mlm-distill-weight", "1", "--mlm-weight", "0.5"]
    stopped = pretrain("stopped", *mlm, "--epochs", "2", "--save-steps", "3")
    narrow = ["--student-hidden-size", "16"]
    sst2 = write_sst2(tmp_path / "SST-2", n_train=24, n_dev=8)
    classifier = make_tiny_teacher(tmp_path / "classifier", tiny_bert)
    commands = [
        pretrain("plain", teacher=tiny_bert),  # the MLM teacher has no pooler
        pretrain("mlm", *mlm, "--epochs", "2"),
        (6, stopped),  # 5 steps per epoch: stopped after the first step of epoch 2
        [*stopped, "--resume"],
        pretrain("narrow", *narrow, "--pt-tokens", "cls", "--keep-checkpoints"),
        pretrain("narrow-mlm", *narrow, "--beta", "0", "--top-weight", "0", *mlm),
        [
            "distill",
            "--teacher",
            classifier,
            "--task",
            "sst2",
            "--data-dir",
            sst2,
            "--student-init",
            tmp_path / "narrow",
            "--student-layers",
            "2",
            "--allow-weak-teacher",
            "--output",
            tmp_path / "distill-narrow",
            *SMALL,
        ],  # fmt: skip
    ]
    seen = run_commands_on_two_processes(commands, tmp_path, timeout=500)

    for run in ("plain", "mlm", "narrow", "narrow-mlm", "distill-narrow"):
        assert (tmp_path / run / "metrics.json").is_file(), run
    # resumed on 2 processes: the epoch reaches the masks again; the uninterrupted run's end
    assert untimed(tmp_path / "stopped") == untimed(tmp_path / "mlm")
    a, b = weights(tmp_path / "mlm"), weights(tmp_path / "stopped")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    pooler = "pooler.dense.weight"
    assert torch.equal(weights(tmp_path / "plain")[pooler], load_file(tiny_bert / "model.safetensors")[pooler])  # fmt: skip
    assert json.loads((tmp_path / "distill-narrow" / "metrics.json").read_text())["projection"]
    # 40 training passages, 4 per process per step: each process masks 20 an epoch, the
    # second with epoch 1's masks: the MLM run, the stopped one (20 + 4), resumed (20: the
    # batch it skips is read too), the narrower MLM run (1 epoch)
    for rank in seen:
        epochs = [e for e, _ in rank]
        assert epochs == [0] * 20 + [1] * 20 + [0] * 20 + [1] * 4 + [1] * 20 + [0] * 20, epochs


@pytest.mark.slow
def test_distill_trains_every_method_on_two_processes(tiny_bert, tmp_path, pkd_cli):
    """FT, KD and PKD-Skip/Last with [CLS] and with mean pooling (the teacher a mean-pooled
    `pkd finetune` on 2 processes too) run on 2 processes. With a transfer file over 2
    epochs, 2 processes end with the weights of 1: each epoch draws new transfer partners
    on every process (before, the processes kept epoch 0's)."""
    sst2 = write_sst2(tmp_path / "SST-2", n_train=32, n_dev=8)
    transfer = tmp_path / "transfer.tsv"
    rows = [f"{i}\t{s}" for i, (s, _) in enumerate(sentiment_rows(40, seed=7))]
    transfer.write_text("\n".join(["index\tsentence", *rows]) + "\n")
    base = without_dropout(tiny_bert, tmp_path / "bert")  # the student's init too
    teacher = make_tiny_teacher(tmp_path / "teacher", base)

    def distill(out, *extra, teacher=teacher):
        return ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", sst2, "--output",
                tmp_path / out, "--student-layers", "2", "--allow-weak-teacher", *SMALL, *extra]  # fmt: skip

    mean_teacher = tmp_path / "mean-teacher"
    with_transfer = ["--method", "kd", "--transfer-file", transfer, "--epochs", "2", "--lr", "3e-3",
                     "--keep-checkpoints"]  # fmt: skip
    commands = [
        [
            "finetune",
            "--model",
            tiny_bert,
            "--task",
            "sst2",
            "--data-dir",
            sst2,
            "--output",
            mean_teacher,
            "--pooling",
            "mean",
            *SMALL,
        ],  # fmt: skip
        distill("ft", "--method", "ft"),
        distill("kd", "--method", "kd"),
        distill("pkd-skip", "--method", "pkd", "--strategy", "skip"),
        distill("pkd-last", "--method", "pkd", "--strategy", "last", "--teacher-mode", "online"),
        distill("ft-mean", "--method", "ft", "--pooling", "mean"),
        distill("kd-mean", "--method", "kd", "--pooling", "mean"),
        distill("pkd-mean", "--method", "pkd", teacher=mean_teacher / "model"),
        distill("transfer-2", *with_transfer),
    ]
    run_commands_on_two_processes(commands, tmp_path, timeout=500)
    for run in ("ft", "kd", "pkd-skip", "pkd-last", "ft-mean", "kd-mean", "pkd-mean"):
        m = json.loads((tmp_path / run / "metrics.json").read_text())
        assert m["pooling"] == ("mean" if run.endswith("mean") else "cls"), run

    pkd_cli.ok(distill("transfer-1", *with_transfer))
    one, two = (
        json.loads((tmp_path / r / "metrics.json").read_text())
        for r in ("transfer-1", "transfer-2")
    )
    assert one["examples_seen"] == two["examples_seen"] == {"labelled": 64, "transfer": 64}
    assert two["history"] == one["history"]
    a, b = (load_file(tmp_path / r / "checkpoints" / "step-8" / "model.safetensors") for r in ("transfer-1", "transfer-2"))  # fmt: skip
    for k in a:  # 1e-7 apart; epoch 0's partners again in epoch 1 moved them 2e-4
        assert torch.allclose(a[k], b[k], atol=1e-5), k
