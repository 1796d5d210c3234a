"""The `pkd` command as a user meets it: `--help` of every option, a run directory accepted
wherever a model is named, and no progress bars in logs (a non-terminal stderr)."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_sst2

from pkd.cli.parser import build_parser
from pkd.config.runs import MODEL_SOURCES
from pkd.progress import progress

SST2 = ["--task", "sst2", "--max-length", "16"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


# ---------------------------------------------------------------------------------------------
# --help


def option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help line as --help prints it, by its first long flag."""
    fmt = parser._get_formatter()
    return {
        a.option_strings[0]: fmt._expand_help(a)
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction)
    }


def test_every_option_has_help_and_shows_its_default():
    commands = subcommands()
    assert set(commands) == {
        "finetune", "distill", "pretrain", "evaluate", "predict", "benchmark", "compare",
        "sweep", "presets", "export", "demo",
    }  # fmt: skip
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = parser._get_formatter()._expand_help(action)
            where = f"pkd {name} {action.option_strings[0]}"
            assert action.help and text.strip(), f"{where}: no help"
            flag = action.nargs == 0
            assert "default" in text or "required" in text or flag, f"{where}: {text!r}"
            if isinstance(action, argparse.BooleanOptionalAction):  # --x/--no-x: which is on
                assert re.search(r"\(default: (on|off)\)$", text), f"{where}: {text!r}"


def test_help_shows_each_commands_own_defaults():
    commands = subcommands()
    distill, finetune = option_help(commands["distill"]), option_help(commands["finetune"])
    assert distill["--lr"].endswith("(default: 5e-05)")  # DistillRunConfig's train section
    assert finetune["--lr"].endswith("(default: 2e-05)")
    assert distill["--pt-normalize"].endswith("(default: on)")
    assert distill["--teacher"].endswith("run directory (required, here or in --config)")
    pretrain = option_help(commands["pretrain"])  # PretrainRunConfig's train section
    assert pretrain["--lr"].endswith("(default: 0.0001)")
    assert pretrain["--epochs"].endswith("(default: 1)")
    assert pretrain["--pt-tokens"].endswith("(default: all)")
    compare = option_help(commands["compare"])
    assert compare["--seeds"].endswith("(default: 1,2,3)")
    assert compare["--methods"].endswith("(default: ft,kd,pkd-skip,pkd-last)")
    assert compare["--teacher"].endswith("(required)")
    assert option_help(commands["sweep"])["--seeds"].endswith("(default: none)")
    assert option_help(commands["demo"])["--train-samples"].endswith("(default: 1500)")
    export = option_help(commands["export"])
    assert "--onnx" not in export  # was a flag whose default was already on
    assert export["--opset"].endswith("(default: 17)")


def test_progress_helper_honours_quiet_and_terminals():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress(3, "x", "ex", file=io.StringIO()).disable  # a log file, a pipe
    assert not progress(3, "x", "ex", file=Terminal()).disable
    assert progress(3, "x", "ex", quiet=True, file=Terminal()).disable


def test_no_progress_bars_in_a_non_terminal_stream(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    """Tokenising, the teacher cache and training all draw bars on a terminal; stderr
    captured here is not one, as in a log file or under nohup."""
    argv = ["distill", "--teacher", tiny_teacher, "--output", tmp_path / "run",
            "--data-dir", sst2_dir, *SST2, "--epochs", "1", "--batch-size", "16",
            "--student-layers", "2", "--allow-weak-teacher"]  # fmt: skip
    _, out, err = pkd_cli.ok(argv)
    assert json.loads(out)["output"] == str(tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file()
    for bar in ("tokenise", "teacher cache", "train:", "%|", "it/s", "ex/s"):
        assert bar not in err, err


# ---------------------------------------------------------------------------------------------
# Run directories: `pkd finetune --output RUN` writes RUN/model; RUN names that model anywhere


@pytest.fixture
def runs(tmp_path, tiny_teacher, tiny_bert):
    """RUN/model holds the teacher; BERT-RUN/model a pre-trained encoder; SST-2 data."""
    shutil.copytree(tiny_teacher, tmp_path / "run" / "model")
    shutil.copytree(tiny_bert, tmp_path / "bert-run" / "model")
    write_sst2(tmp_path / "SST-2", n_train=32, n_dev=16, n_test=4)
    return tmp_path


def test_finetune_takes_a_run_directory(runs, pkd_cli):
    argv = ["finetune", "--model", runs / "bert-run", "--output", runs / "out",
            "--data-dir", runs / "SST-2", *SST2, "--dry-run", "--quiet"]  # fmt: skip
    out = pkd_cli.ok(argv).out
    assert f"model:      {runs / 'bert-run' / 'model'} (bert, 4 layers" in out
    assert not (runs / "out").exists()


def test_distill_takes_run_directories(runs, pkd_cli):
    argv = ["distill", "--teacher", runs / "run", "--output", runs / "out",
            "--data-dir", runs / "SST-2", *SST2, "--student-layers", "2",
            "--allow-weak-teacher", "--dry-run", "--quiet"]  # fmt: skip
    out = pkd_cli.ok(argv).out
    assert f"teacher:    {runs / 'run' / 'model'} (4 layers" in out
    out = pkd_cli.ok([*argv, "--student-init", runs / "bert-run"]).out
    assert f"student:    2 layers from {runs / 'bert-run' / 'model'}" in out
    assert not (runs / "out").exists()


def test_compare_and_sweep_take_a_run_directory(runs, pkd_cli):
    common = ["--teacher", runs / "run", "--data-dir", runs / "SST-2", *SST2,
              "--allow-weak-teacher", "--student-layers", "2", "--dry-run"]  # fmt: skip
    out = pkd_cli.ok(["compare", *common, "--output", runs / "cmp", "--methods", "kd",
                      "--seeds", "1", "--bench-seq-length", "16", "--quiet"]).out  # fmt: skip
    assert f"Teacher: {runs / 'run' / 'model'} (4 layers)" in out
    (runs / "space.yaml").write_text("lr: [1e-3]\n")
    out = pkd_cli.ok(["sweep", *common, "--output", runs / "sweep", "--method", "kd",
                      "--space", runs / "space.yaml"]).out  # fmt: skip
    assert f"Teacher {runs / 'run' / 'model'}: " in out
    assert not (runs / "cmp").exists() and not (runs / "sweep").exists()


def test_evaluate_and_predict_take_a_run_directory(runs, pkd_cli):
    data = ["--data-dir", runs / "SST-2", *SST2]
    out = pkd_cli.ok(["evaluate", "--model", runs / "run", *data]).out
    metrics = json.loads(out)
    assert metrics["examples"] == 16
    assert json.loads((runs / "run" / "eval_sst2_dev.json").read_text()) == metrics
    out = pkd_cli.ok(["predict", "--model", runs / "run", *data]).out
    written = runs / "run" / "model" / "predictions_sst2_test.tsv"
    assert out.strip() == str(written)
    assert len(written.read_text().splitlines()) == 1 + 4


def test_a_directory_without_a_model_says_what_it_found(runs, pkd_cli):
    odd = runs / "odd"
    (odd / "checkpoints").mkdir(parents=True)
    (odd / "notes.txt").write_text("x")
    argv = ["distill", "--teacher", odd, "--output", runs / "out", "--data-dir", runs / "SST-2",
            *SST2, "--dry-run"]  # fmt: skip
    assert pkd_cli.error(argv) == (
        f"--teacher: {odd} is neither a model directory (no config.json) nor a run "
        f"directory (no model/config.json); it holds checkpoints/, notes.txt; pass {MODEL_SOURCES}"
    )
    assert "a Hub model name, a model directory" in MODEL_SOURCES
    # a relative name that is no directory here may be a Hub name: both are said
    argv[argv.index(odd)] = "no-such-dir/teacher"
    err = pkd_cli.error(argv)
    assert err.startswith(
        "--teacher: no-such-dir/teacher is not a local directory and cannot be loaded from the Hub ("
    )
    assert err.endswith(f"; pass {MODEL_SOURCES}")
    assert not Path(runs / "out").exists()


def test_hub_downloads_draw_no_bars_in_a_non_terminal_stream(monkeypatch):
    """The library leaves `datasets`' bars as the host set them; the command turns them off
    where stderr is not a terminal."""
    import importlib

    import datasets
    from datasets.utils import are_progress_bars_disabled

    from pkd.cli import quiet_datasets
    from pkd.data.splits import hub_dataset
    from pkd.tasks import get_task

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: "the split")
    # commands run in this process before may have set the CLI's environment variable, which
    # `datasets` read when imported and which outranks its switches: as if it were unset
    bars = importlib.import_module("datasets.utils.tqdm")  # the module, not its tqdm class
    monkeypatch.setattr(bars, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    datasets.enable_progress_bars()
    try:
        assert hub_dataset(get_task("sst2"), "dev", "the GLUE files") == "the split"
        assert not are_progress_bars_disabled()  # the library: as the host set them
        quiet_datasets()  # what `configure_logging` calls where stderr is not a terminal
        assert are_progress_bars_disabled()
    finally:
        datasets.enable_progress_bars()


def test_a_command_without_hub_data_does_not_import_datasets(tmp_path):
    """Where stderr is not a terminal the CLI turns `datasets`' bars off through its
    environment variable, so a run on local files never pays for importing it."""
    import subprocess
    import sys

    code = (
        "import sys; from pkd.cli import configure_logging; configure_logging(True); "
        "import os; print('datasets' in sys.modules, os.environ['HF_DATASETS_DISABLE_PROGRESS_BARS'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "1"]
    code += "; import datasets.utils as u; print(u.are_progress_bars_disabled())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "1", "True"]
