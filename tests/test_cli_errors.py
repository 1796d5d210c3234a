"""Bad input through the `pkd` command: exit code 2, one `pkd: error:` line naming the file and
line (or the option), nothing written. Plus one happy path: finetune -> evaluate -> predict."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, snapshot, write_sst2

from pkd.config.runs import MODEL_SOURCES

# Tiny models on a shared 2-core machine: several torch threads per process fight over the
# cores and make each step ~40x slower than one thread.


TRAIN_OPTS = ["--epochs", "1", "--batch-size", "8", "--max-length", "16", "--quiet"]


def finetune_argv(model, data_dir, output, *extra):
    return [
        "finetune",
        "--model",
        str(model),
        "--task",
        "sst2",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        *TRAIN_OPTS,
        *extra,
    ]


def not_a_model(option: str, path: Path, found: str) -> str:
    return (
        f"{option}: {path} is neither a model directory (no config.json) nor a run directory "
        f"(no model/config.json); {found}; pass {MODEL_SOURCES}"
    )


def tsv(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Bad data: each names the file and line, and no run directory appears


def _missing_dev(d: Path) -> str:
    (d / "dev.tsv").unlink()
    return f"{d / 'dev.tsv'}: file not found"


def _too_few_columns(d: Path) -> str:
    tsv(d / "train.tsv", ["sentence\tlabel", "good film\t1", "no tab on this line", "bad\t0"])
    return f"{d / 'train.tsv'}:3: expected at least 2 columns, found 1"


def _label_out_of_range(d: Path) -> str:
    tsv(d / "dev.tsv", ["sentence\tlabel", "good film\t1", "bad film\t0", "meh film\t2"])
    return f"{d / 'dev.tsv'}:4: label '2' is not one of ['0', '1']"


def _header_only(d: Path) -> str:
    tsv(d / "train.tsv", ["sentence\tlabel"])
    return f"{d / 'train.tsv'}: no examples in the train split"


def _wrong_header(d: Path) -> str:
    tsv(d / "train.tsv", ["text\tlabel", "good\t1"])
    return f"{d / 'train.tsv'}:1: no column 'sentence'"


def _not_utf8(d: Path) -> str:
    (d / "train.tsv").write_bytes(b"sentence\tlabel\ngood\t1\nna\xefve\t0\n")
    return f"{d / 'train.tsv'}:3: not valid utf-8"


def _tab_inside_a_field(d: Path) -> str:
    tsv(d / "train.tsv", ["sentence\tlabel", "good film\t1", "a tab\tinside\t0"])
    return f"{d / 'train.tsv'}:3: 3 columns, the header has 2 (a tab inside a field?)"


def _file_is_a_directory(d: Path) -> str:
    (d / "dev.tsv").unlink()
    (d / "dev.tsv").mkdir()
    return f"{d / 'dev.tsv'}: is a directory, not a file"


@pytest.mark.parametrize(
    "corrupt",
    [_missing_dev, _too_few_columns, _label_out_of_range, _header_only, _wrong_header, _not_utf8,
     _tab_inside_a_field, _file_is_a_directory],
)  # fmt: skip
def test_bad_sst2_data(corrupt, tiny_bert, tmp_path, pkd_cli):
    d = write_sst2(tmp_path / "SST-2", n_train=8, n_dev=4, n_test=2)
    expected = corrupt(d)
    line = pkd_cli.error(finetune_argv(tiny_bert, d, tmp_path / "run"))
    assert expected in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("score", "problem"),
    [("five", "is not a number"), ("5.5", "is outside stsb's range 0 to 5")],
)
def test_bad_stsb_score(score, problem, tiny_bert, tmp_path, pkd_cli):
    d = tmp_path / "STS-B"
    d.mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane."
    tsv(d / "train.tsv", [head, row + "\t5.000", row + f"\t{score}"])
    tsv(d / "dev.tsv", [head, row + "\t4.2"])
    argv = finetune_argv(tiny_bert, d, tmp_path / "run")
    argv[argv.index("sst2")] = "stsb"
    line = pkd_cli.error(argv)
    assert line == f"{d / 'train.tsv'}:3: score '{score}' {problem}"
    assert not (tmp_path / "run").exists()


def custom_argv(model, train, dev, output, *extra):
    return ["finetune", "--model", model, "--train-file", train, "--validation-file", dev,
            "--text-columns", "text", "--output", output, *TRAIN_OPTS, *extra]  # fmt: skip


def test_bad_custom_files(tiny_bert, tmp_path, pkd_cli):
    train, dev, run = tmp_path / "train.csv", tmp_path / "dev.csv", tmp_path / "run"
    dev.write_text("text,label\ngood,1\nbad,0\n")
    train.write_text("text,label\ngood,1\nno label,\nbad,0\n")
    line = pkd_cli.error(custom_argv(tiny_bert, train, dev, run))
    assert line == f"{train}:3: empty label (column 'label')"
    train.write_text('text,label\ngood,1\n"never closed,0\nbad,0\nfine,1\n')
    line = pkd_cli.error(custom_argv(tiny_bert, train, dev, run))
    assert line == f"{train}:3: a quoted field opens here and is never closed"
    line = pkd_cli.error(custom_argv(tiny_bert, tmp_path, dev, run))
    assert line == f"--train-file: {tmp_path} is a directory, not a file"
    line = pkd_cli.error(custom_argv(tiny_bert, dev, dev, run, "--config", tmp_path))
    assert line == f"--config: {tmp_path} is a directory, not a YAML file"
    assert not run.exists()


def test_positive_label_must_be_one_of_the_labels(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    run = tmp_path / "run"
    line = pkd_cli.error(finetune_argv(tiny_bert, sst2_dir, run, "--positive-label", "pos"))
    assert line == "--positive-label: 'pos' is not one of the labels ['0', '1'] of task sst2"
    d = tmp_path / "custom.csv"
    d.write_text("text,label\ngood,pos\nbad,neg\n")
    line = pkd_cli.error(custom_argv(tiny_bert, d, d, run, "--positive-label", "1"))
    assert line == "--positive-label: '1' is not one of the labels ['neg', 'pos'] of task custom"
    d.write_text("text,label\ngood,4.5\nbad,0.5\n")
    line = pkd_cli.error(
        custom_argv(tiny_bert, d, d, run, "--positive-label", "1", "--problem-type", "regression")
    )
    assert line == (
        "--positive-label: task custom is regression; only classification has a positive class"
    )
    assert not run.exists()


def test_unknown_task(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    argv = finetune_argv(tiny_bert, sst2_dir, tmp_path / "run")
    argv[argv.index("sst2")] = "sst3"
    line = pkd_cli.error(argv)
    assert line.startswith("--task: unknown task 'sst3'")
    assert "sst2" in line and "mnli" in line  # lists the valid names
    assert not (tmp_path / "run").exists()


def test_model_directory_missing(sst2_dir, tmp_path, pkd_cli):
    missing = tmp_path / "no-such-model"
    line = pkd_cli.error(finetune_argv(missing, sst2_dir, tmp_path / "run"))
    assert line == f"--model: {missing} does not exist; pass {MODEL_SOURCES}"
    assert not (tmp_path / "run").exists()


def test_model_directory_that_is_not_a_model(sst2_dir, tmp_path, pkd_cli):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a model\n")
    line = pkd_cli.error(finetune_argv(junk, sst2_dir, tmp_path / "run"))
    assert line == not_a_model("--model", junk, "it holds notes.txt")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_not_a_model_as_a_user_sees_it(sst2_dir, tmp_path):
    """In a real process: logging, warnings and progress bars must not add to the one line."""
    junk = tmp_path / "junk"
    junk.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = finetune_argv(junk, sst2_dir, tmp_path / "run")
    argv.remove("--quiet")
    proc = subprocess.run(
        [sys.executable, "-m", "pkd.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines == [f"pkd: error: {not_a_model('--model', junk, 'it is empty')}"], proc.stderr
    assert not (tmp_path / "run").exists()


def test_bad_option_value_names_the_option(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    line = pkd_cli.error(finetune_argv(tiny_bert, sst2_dir, tmp_path / "run", "--max-length", "0"))
    assert line.startswith("--max-length:")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", "-1"], "--seed: must be in 0..4294967295, got -1"),
        (["--seed", str(2**32)], "--seed: must be in 0..4294967295, got 4294967296"),
        (["--max-steps", "0"], "--max-steps: must be -1 (train --epochs) or > 0, got 0"),
    ],
)
def test_bad_seed_or_max_steps_is_refused(extra, message, tiny_bert, sst2_dir, tmp_path, pkd_cli):
    """Once a traceback from set_seed (exit 1), or a run that trains 0 steps."""
    line = pkd_cli.error(finetune_argv(tiny_bert, sst2_dir, tmp_path / "run", *extra))
    assert line == message
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# A finished run: the happy path, and what must not happen to it


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert, pkd_cli):
    root = tmp_path_factory.mktemp("cli")
    data = write_sst2(root / "SST-2")
    argv = finetune_argv(tiny_bert, data, root / "run", "--epochs", "6", "--lr", "3e-3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("PKD_CACHE_DIR", str(root / "cache"))
        pkd_cli.ok(argv)
    return root / "run", data


def test_finetune_evaluate_predict(finished_run, pkd_cli):
    run, data = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "sst2" and metrics["labels"] == ["0", "1"]
    assert metrics["best"]["metrics"]["dev"]["accuracy"] >= 0.8  # separable toy data

    out = pkd_cli.ok(
        ["evaluate", "--model", run / "model", "--task", "sst2", "--data-dir", data]
    ).out
    result = json.loads(out)
    assert result["task"] == "sst2" and result["split"] == "dev" and result["examples"] == 32
    assert result["accuracy"] >= 0.8
    written = run / "eval_sst2_dev.json"
    assert json.loads(written.read_text()) == result

    preds_file = run / "preds.tsv"
    out = pkd_cli.ok(["predict", "--model", run / "model", "--task", "sst2", "--data-dir", data,
                      "--output-file", preds_file]).out  # fmt: skip
    assert out.strip() == str(preds_file)
    lines = preds_file.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [str(i) for i in range(8)]  # one row per test example
    assert {r[1] for r in rows} <= {"0", "1"}  # label names, not logits
    gold = [y for _, y in sentiment_rows(8, 2)]  # what write_sst2 put in test.tsv
    assert sum(r[1] == y for r, y in zip(rows, gold, strict=True)) >= 6


def test_existing_run_is_not_overwritten(finished_run, tiny_bert, pkd_cli):
    run, data = finished_run
    before = snapshot(run)
    assert "metrics.json" in before and "model/model.safetensors" in before
    line = pkd_cli.error(finetune_argv(tiny_bert, data, run))
    assert line.startswith(f"--output: {run} already holds a finished run")
    assert "--overwrite" in line
    assert snapshot(run) == before


def test_evaluate_refuses_the_test_split(finished_run, pkd_cli):
    run, data = finished_run
    before = snapshot(run)
    line = pkd_cli.error(["evaluate", "--model", run / "model", "--task", "sst2",
                          "--data-dir", data, "--split", "test"])  # fmt: skip
    assert line.startswith("--split: test")
    assert "pkd predict" in line
    assert snapshot(run) == before  # no eval file written


def test_evaluate_bad_label_in_dev(finished_run, tmp_path, pkd_cli):
    run, _ = finished_run
    d = write_sst2(tmp_path / "SST-2", n_train=4, n_dev=4, n_test=2)
    tsv(d / "dev.tsv", ["sentence\tlabel", "good\t1", "bad\tpositive"])
    line = pkd_cli.error(
        ["evaluate", "--model", run / "model", "--task", "sst2", "--data-dir", d,
         "--output-file", tmp_path / "eval.json"]
    )  # fmt: skip
    assert f"{d / 'dev.tsv'}:3: label 'positive'" in line
    assert not (tmp_path / "eval.json").exists()


# ---------------------------------------------------------------------------------------------
# Outputs that would destroy an input; models without a tokenizer; bad paths and sizes


@pytest.fixture
def inputs(tmp_path, tiny_teacher, tiny_bert):
    """A teacher run directory, a pre-trained init and SST-2 data, all in tmp_path."""
    shutil.copytree(tiny_teacher, tmp_path / "teacher-run" / "model")
    shutil.copytree(tiny_bert, tmp_path / "bert")
    write_sst2(tmp_path / "data" / "SST-2", n_train=16, n_dev=8, n_test=4)
    return tmp_path


def _destroying(t: Path) -> dict[str, tuple[list, str]]:
    """Commands whose output is or holds one of their inputs. The first is the issue's: it
    trained, then replaced the teacher with the student. The others are dry runs, which must
    refuse too (they check everything), so that the code before the fix exits 0."""
    run, model, data = t / "teacher-run", t / "teacher-run" / "model", t / "data" / "SST-2"
    sst2 = ["--task", "sst2", "--data-dir", data, "--max-length", "16"]
    train = [*sst2, "--allow-weak-teacher", "--student-layers", "2"]
    dry = [*train, "--dry-run"]
    return {
        "distill into its teacher's run": (
            ["distill", "--teacher", model, "--output", run, "--overwrite", *train]
            + ["--epochs", "1", "--quiet"],
            f"--output: {run} holds the --teacher {model}",
        ),
        "distill into the teacher, named by its run": (
            ["distill", "--teacher", run, "--output", run, "--overwrite", *dry],
            f"--output: {run} holds the --teacher {model}",
        ),
        "distill over its student init": (
            ["distill", "--teacher", model, "--student-init", t / "bert"]
            + ["--output", t / "bert", "--overwrite", *dry],
            f"--output: {t / 'bert'} is the --student-init {t / 'bert'}",
        ),
        "distill over the teacher's recorded base": (
            ["distill", "--teacher", model, "--output", t / "bert-base", "--overwrite", *dry],
            "holds the --student-init",
        ),
        "distill over its data": (
            ["distill", "--teacher", model, "--output", t / "data", "--overwrite", *dry],
            f"--output: {t / 'data'} holds the --data-dir {data}",
        ),
        "finetune over its model": (
            ["finetune", "--model", model, "--output", run, "--overwrite", *sst2, "--dry-run"],
            f"--output: {run} holds the --model {model}",
        ),
        "compare over a teacher among its runs": (
            ["compare", "--teacher", t / "cmp" / "runs" / "L2-kd-seed1", "--output", t / "cmp"]
            + [*dry, "--bench-seq-length", "16"],
            f"--output: {t / 'cmp' / 'runs'} holds the --teacher {t / 'cmp' / 'runs' / 'L2-kd-seed1' / 'model'}",
        ),
        "sweep over a teacher among its trials": (
            ["sweep", "--teacher", t / "swp" / "trials" / "trial-0", "--output", t / "swp"]
            + ["--grid", "paper", *dry],
            f"--output: {t / 'swp' / 'trials'} holds the --teacher {t / 'swp' / 'trials' / 'trial-0' / 'model'}",
        ),
        "evaluate over its data": (
            ["evaluate", "--model", model, *sst2, "--output-file", data / "dev.tsv"],
            f"--output-file: {data / 'dev.tsv'} is the data file {data / 'dev.tsv'}",
        ),
        "predict over its model": (
            ["predict", "--model", model, *sst2, "--output-file", model / "config.json"],
            f"--output-file: {model / 'config.json'} is the --model {model / 'config.json'}",
        ),
    }


@pytest.mark.parametrize("case", list(_destroying(Path("x"))))
def test_output_that_holds_an_input_is_refused(case, inputs, pkd_cli):
    if case == "distill over the teacher's recorded base":  # the teacher records bert-base
        base = inputs / "bert-base" / "pretrained"
        shutil.copytree(inputs / "bert", base)
        config = inputs / "teacher-run" / "model" / "config.json"
        conf = json.loads(config.read_text())
        config.write_text(json.dumps({**conf, "pkd_base_model": str(base)}))
    if case == "compare over a teacher among its runs":  # an unfinished run compare replaces
        shutil.copytree(inputs / "teacher-run", inputs / "cmp" / "runs" / "L2-kd-seed1")
    if case == "sweep over a teacher among its trials":
        shutil.copytree(inputs / "teacher-run", inputs / "swp" / "trials" / "trial-0")
    argv, message = _destroying(inputs)[case]
    before = snapshot(inputs)
    line = pkd_cli.error(argv)
    assert message in line, line
    assert "writing there would destroy it; choose another" in line
    assert snapshot(inputs) == before  # nothing replaced, nothing written


def _without_tokenizer(src: Path, dst: Path, keep: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors", *keep):
        shutil.copy(src / name, dst / name)
    return dst


def test_model_without_tokenizer_is_refused(inputs, tiny_teacher, pkd_cli):
    notok = _without_tokenizer(tiny_teacher, inputs / "notok")
    cfgonly = _without_tokenizer(tiny_teacher, inputs / "cfgonly", ("tokenizer_config.json",))
    sst2 = ["--task", "sst2", "--data-dir", inputs / "data" / "SST-2", "--max-length", "16"]
    expected = "has no tokenizer for its 27-token vocabulary (tokenizer files: {}; it would read 5"

    # transformers 5 would build a 5-token tokenizer: every word [UNK], metrics with exit 0
    line = pkd_cli.error(["evaluate", "--model", notok, *sst2])
    assert line.startswith(f"--model: {notok} {expected.format('none')}"), line
    assert "tokenizer.save_pretrained" in line
    line = pkd_cli.error(["evaluate", "--model", cfgonly, *sst2])
    assert f"--model: {cfgonly} {expected.format('tokenizer_config.json')}" in line
    distill = ["distill", "--teacher", notok, "--output", inputs / "out", *sst2, "--dry-run"]
    line = pkd_cli.error([*distill, "--student-init", "teacher"])
    assert line.startswith(f"--teacher: {notok} has no tokenizer"), line
    # the default init (the teacher's base) has a tokenizer: the teacher is blamed, not it
    line = pkd_cli.error(distill)
    assert line.startswith(f"--teacher: {notok} has no tokenizer"), line
    assert not (inputs / "out").exists()


def test_cache_dir_that_is_a_file(inputs, pkd_cli):
    (inputs / "cache.txt").write_text("not a directory\n")
    argv = ["distill", "--teacher", inputs / "teacher-run", "--output", inputs / "out",
            "--task", "sst2", "--data-dir", inputs / "data" / "SST-2", "--max-length", "16",
            "--epochs", "1", "--quiet"]  # fmt: skip
    line = pkd_cli.error([*argv, "--cache-dir", inputs / "cache.txt"])
    assert line == (
        f"--cache-dir: {inputs / 'cache.txt'} is a file, not a directory; pass a directory"
    )
    line = pkd_cli.error([*argv, "--cache-dir", inputs / "cache.txt" / "sub"])
    assert line.startswith(
        f"--cache-dir: {inputs / 'cache.txt' / 'sub'} cannot be created: "
        f"{inputs / 'cache.txt'} is a file"
    )
    assert not (inputs / "out").exists()  # so a corrected re-run is not refused


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_batch_size_zero(command, inputs, pkd_cli):
    argv = [command, "--model", inputs / "teacher-run", "--task", "sst2", "--data-dir",
            inputs / "data" / "SST-2", "--batch-size", "0"]  # fmt: skip
    before = snapshot(inputs)
    assert pkd_cli.error(argv) == "--batch-size: must be >= 1, got 0"
    assert snapshot(inputs) == before


def test_predict_output_file_that_is_a_directory(inputs, pkd_cli):
    out = inputs / "preds"
    out.mkdir()
    argv = ["predict", "--model", inputs / "teacher-run", "--task", "sst2", "--data-dir",
            inputs / "data" / "SST-2", "--output-file", out]  # fmt: skip
    line = pkd_cli.error(argv)
    assert line == f"--output-file: {out} is a directory; pass a file name"
    assert list(out.iterdir()) == []  # no hidden temp file
    assert sorted(p.name for p in inputs.iterdir()) == ["bert", "data", "preds", "teacher-run"]


# ---------------------------------------------------------------------------------------------
# Two runs on one --output: the run directory's lock file (.pkd.lock)


def _lock(run: Path, pid: int) -> dict:
    """A lock file as a run holding `run` leaves it (pid on this host)."""
    record = {"pid": pid, "host": socket.gethostname(), "command": "pkd distill --seed 1",
              "started": "2026-01-01T00:00:00+0000"}  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    (run / ".pkd.lock").write_text(json.dumps(record))
    return record


@pytest.mark.parametrize("command", ["finetune", "export", "demo"])
def test_run_dir_held_by_a_live_run_is_refused(command, inputs, pkd_cli):
    run = inputs / "runs" / "conc"
    with subprocess.Popen(["sleep", "60"]) as other:  # a live process holds the directory
        lock = _lock(run, other.pid)
        argv = {
            "finetune": finetune_argv(inputs / "bert", inputs / "data" / "SST-2", run),
            "export": ["export", "--model", inputs / "teacher-run", "--output", run],
            "demo": ["demo", "--output", run, "--quiet"],
        }[command]
        line = pkd_cli.error(argv)
        other.kill()
    assert line == (
        f"--output: {run} is in use by another run (pid {other.pid} on {lock['host']}, "
        f"started 2026-01-01T00:00:00+0000: pkd distill --seed 1); wait for it to end or "
        f"choose another --output; if no run is writing there, delete {run / '.pkd.lock'}"
    )
    assert sorted(p.name for p in run.iterdir()) == [".pkd.lock"]  # the other run's, kept


def test_stale_lock_of_a_dead_run_is_taken_over(inputs, pkd_cli, caplog):
    run = inputs / "runs" / "conc"
    with subprocess.Popen(["true"]) as gone:  # its pid is gone once it ran
        pass
    _lock(run, gone.pid)
    # the lock is taken before the run's checks (here: its data)
    line = pkd_cli.error(finetune_argv(inputs / "bert", inputs / "nodata", run))
    assert line.startswith(f"--data-dir: {inputs / 'nodata'}")
    assert f"{run}: took over the lock of a run that is gone (pid {gone.pid} on" in caplog.text
    assert list(run.iterdir()) == []  # the lock is released (the dead run made the dir)


def test_lock_of_a_reused_pid_is_stale_and_one_taker_wins(tmp_path):
    """A restarted container reuses small pids (often the new run's own): the lock records
    when its process started, so a live pid of another start is stale. Of two processes that
    read one stale lock, only one takes it over; the other leaves the new lock alone."""
    from pkd.fsio import is_stale, process_start, take_stale, try_lock

    host, pid = socket.gethostname(), os.getpid()
    assert process_start(pid) is not None  # Linux /proc
    assert is_stale({"pid": pid, "host": host, "pid_start": process_start(pid) - 1})
    assert not is_stale({"pid": pid, "host": host, "pid_start": process_start(pid)})
    assert not is_stale({"pid": pid, "host": host})  # an older lock without a start: alive
    assert not is_stale({"pid": 1, "host": "elsewhere", "pid_start": 0})  # never another host's
    lock = tmp_path / ".pkd.lock"
    stale = {"pid": pid, "host": host, "pid_start": process_start(pid) - 1}
    lock.write_text(json.dumps(stale))
    mine, taken = try_lock(lock)
    assert (
        mine and taken == stale and json.loads(lock.read_text())["pid_start"] == process_start(pid)
    )
    fresh = lock.read_text()  # a second taker that read the stale record before: refused
    assert take_stale(lock, stale) is False and lock.read_text() == fresh
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pkd.lock"]


def test_lock_is_released_after_a_run(inputs, pkd_cli):
    run = inputs / "runs" / "done"
    pkd_cli.ok(finetune_argv(inputs / "bert", inputs / "data" / "SST-2", run))
    assert (run / "metrics.json").is_file()
    assert not (run / ".pkd.lock").exists()
    assert json.loads((run / "metrics.json").read_text())["task"] == "sst2"


# ---------------------------------------------------------------------------------------------
# pkd demo: every option checked before anything is written


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--train-samples", "0", "--train-samples: must be >= 1, got 0"),
        ("--train-samples", "-100", "--train-samples: must be >= 1, got -100"),
        ("--eval-samples", "-3", "--eval-samples: must be >= 1, got -3"),
        ("--transfer-samples", "-1", "--transfer-samples: must be >= 0, got -1"),
        ("--epochs", "0", "--epochs: must be > 0, got 0.0"),
        ("--epochs", "nan", "--epochs: must be > 0, got nan"),
    ],
)
def test_demo_bad_sizes_write_nothing(option, value, expected, tmp_path, pkd_cli):
    out = tmp_path / "demo"
    assert pkd_cli.error(["demo", "--output", out, option, value]) == expected
    assert list(tmp_path.iterdir()) == []


def test_demo_output_that_is_a_file(tmp_path, pkd_cli):
    out = tmp_path / "demo.txt"
    out.write_text("mine\n")
    line = pkd_cli.error(["demo", "--output", out, "--train-samples", "8"])
    assert line == f"--output: {out} exists and is not a directory"
    assert out.read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------
# Unwritable places: refused up front (no traceback, no partial run left behind)


def _cache_argv(command: str, inputs: Path, out: Path) -> list:
    if command == "pretrain":
        text = inputs / "text.txt"
        text.write_text("".join(f"a short sentence number {i}\n" for i in range(40)))
        return ["pretrain", "--teacher", inputs / "bert", "--text-file", text, "--output", out,
                "--student-layers", "2", "--teacher-mode", "cached", "--pt-tokens", "cls",
                "--max-length", "16", "--epochs", "1", "--quiet"]  # fmt: skip
    return ["distill", "--teacher", inputs / "teacher-run", "--output", out, "--task", "sst2",
            "--data-dir", inputs / "data" / "SST-2", "--max-length", "16", "--epochs", "1",
            "--allow-weak-teacher", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("command", ["pretrain", "distill"])
@pytest.mark.parametrize("where", ["a file", "read-only"])
def test_unusable_cache_dir_leaves_no_run(command, where, inputs, pkd_cli):
    # root ignores chmod: /sys stands for a read-only place (as in test_export)
    (inputs / "cache.txt").write_text("not a directory\n")
    cache = inputs / "cache.txt" if where == "a file" else Path("/sys/pkd-cache-test")
    out = inputs / "out"
    line = pkd_cli.error([*_cache_argv(command, inputs, out), "--cache-dir", cache])
    if where == "a file":
        assert line == f"--cache-dir: {cache} is a file, not a directory; pass a directory"
    else:
        assert line.startswith(
            f"--cache-dir: cannot write the teacher cache under {cache}: /sys is not writable ("
        ), line
    assert not out.exists()  # no config.yaml, no run directory


@contextlib.contextmanager
def unwritable(path: Path):
    """`path` as a directory nothing can be created in: chmod for a user, `chattr +i` for root
    (which chmod does not stop); skipped where neither works."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def test_evaluate_of_a_read_only_run_prints_its_metrics(inputs, pkd_cli, caplog):
    run = inputs / "teacher-run"
    argv = ["evaluate", "--model", run, "--task", "sst2", "--data-dir", inputs / "data" / "SST-2"]
    with unwritable(run):
        result = pkd_cli.ok(argv)
    metrics = json.loads(result.out)
    assert metrics["task"] == "sst2" and metrics["examples"] == 8 and "accuracy" in metrics
    assert (
        f"--output-file: cannot create {run / 'eval_sst2_dev.json'}: {run} is not writable ("
        in (caplog.text)
    )
    assert "the metrics are printed only (pass --output-file to keep them)" in caplog.text
    assert sorted(p.name for p in run.iterdir()) == ["model"]


def test_predict_into_a_read_only_model_dir_is_refused_before_it_runs(inputs, pkd_cli):
    model = inputs / "teacher-run" / "model"
    argv = ["predict", "--model", model, "--task", "sst2", "--data-dir", inputs / "data" / "SST-2"]
    before = snapshot(inputs)
    with unwritable(model):
        line = pkd_cli.error(argv)
    assert line.startswith(
        f"--output-file: cannot create {model / 'predictions_sst2_test.tsv'}: {model} is not "
        "writable ("
    ), line
    assert snapshot(inputs) == before


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_output_file_in_a_read_only_place_is_refused(command, inputs, pkd_cli):
    out = Path("/sys/pkd-test/out.json")  # /sys refuses new entries, even for root
    argv = [command, "--model", inputs / "teacher-run", "--task", "sst2", "--data-dir",
            inputs / "data" / "SST-2", "--output-file", out]  # fmt: skip
    line = pkd_cli.error(argv)
    assert line.startswith(f"--output-file: cannot create {out}: /sys is not writable ("), line


def test_benchmark_output_checked_before_timing(inputs, pkd_cli):
    argv = ["benchmark", "--models", inputs / "teacher-run", "--batch-sizes", "1",
            "--seq-lengths", "8", "--warmup", "0", "--iterations", "1"]  # fmt: skip
    line = pkd_cli.error([*argv, "--output", "/sys/pkd-test/bench"])
    assert line.startswith("--output: cannot create /sys/pkd-test/bench: /sys is not writable (")
    (inputs / "bench.txt").write_text("a file\n")
    line = pkd_cli.error([*argv, "--output", inputs / "bench.txt" / "sub"])
    assert line == (
        f"--output: cannot create {inputs / 'bench.txt' / 'sub'}: {inputs / 'bench.txt'} is a "
        "file, not a directory"
    )


def test_read_only_output_dir_is_refused_before_the_run(inputs, pkd_cli):
    run = inputs / "runs" / "ro"
    run.mkdir(parents=True)
    with unwritable(run):
        line = pkd_cli.error(finetune_argv(inputs / "bert", inputs / "data" / "SST-2", run))
    assert line.startswith(f"--output: cannot write in {run} ("), line
    assert list(run.iterdir()) == []
