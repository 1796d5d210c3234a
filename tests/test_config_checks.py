"""Issue 15 (config): resume with other options, options a method ignores, seeds, file modes,
a one-example holdout. Each check goes through the command and must exit 2 with one line."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, snapshot

from pkd import fsio
from pkd.config.files import build, config_drift, to_dict
from pkd.config.runs import DistillRunConfig
from pkd.config.sections import DataConfig, DistillConfig, TrainConfig
from pkd.errors import PkdError

TINY = ["--task", "sst2", "--max-length", "16", "--batch-size", "8", "--epochs", "1", "--quiet"]
TINY += ["--max-train-samples", "16", "--max-eval-samples", "8"]


def run_argv(command, tiny_bert, tiny_teacher, data, out, *extra) -> list:
    if command == "finetune":
        head = ["finetune", "--model", tiny_bert]
    else:
        head = ["distill", "--teacher", tiny_teacher, "--student-layers", "2"]
        head += ["--allow-weak-teacher"]
    return [*head, "--data-dir", data, "--output", out, *TINY, "--lr", "3e-3", *extra]


# ---------------------------------------------------------------------------------------------
# Defect 3: --resume keeps the run's config.yaml, so other options would train a mixture


@pytest.fixture(params=["finetune", "distill"])
def interrupted(request, tiny_bert, tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    """A run with a complete checkpoint and no metrics.json (as if killed after saving)."""
    command, out = request.param, tmp_path / "run"

    def argv(*extra):
        return run_argv(command, tiny_bert, tiny_teacher, sst2_dir, out, "--save-steps", "1",
                        "--keep-checkpoints", *extra)  # fmt: skip

    pkd_cli.ok(argv())
    (out / "metrics.json").unlink()
    return command, out, argv


def test_resume_with_other_options_is_refused(interrupted, pkd_cli):
    command, out, argv = interrupted
    before = snapshot(out)
    msg = pkd_cli.error(argv("--lr", "1e-3", "--warmup-ratio", "0.2", "--resume"))
    warmup = "0.0" if command == "distill" else "0.1"  # distill's default: no warm-up
    assert msg == (
        f"--resume: {out} was started with other settings (train.lr: 0.003 -> 0.001; "
        f"train.warmup_ratio: {warmup} -> 0.2); resume with its own (--config {out}/config.yaml "
        "--resume) or start a new --output"
    )
    assert snapshot(out) == before  # nothing trained, nothing rewritten
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    msg = pkd_cli.error(argv("--seed", "7", "--resume-from", checkpoint))
    assert msg.startswith(f"--resume-from: {out} was started with other settings (train.seed: 42")
    assert snapshot(out) == before
    if command == "distill":
        msg = pkd_cli.error(argv("--beta", "10", "--resume"))
        assert "(distill.beta: 100.0 -> 10.0)" in msg
        assert snapshot(out) == before
    # what the message proposes works
    pkd_cli.ok([command, "--config", out / "config.yaml", "--resume"])
    assert (out / "metrics.json").is_file()


def test_resume_with_options_that_change_nothing(interrupted, pkd_cli):
    _, out, argv = interrupted
    extra = ["--logging-steps", "5", "--no-quiet", "--save-steps", "2", "--eval-batch-size", "4"]
    pkd_cli.ok(argv(*extra, "--resume"))
    assert (out / "metrics.json").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["logging_steps"] == 20  # the run's own config.yaml is kept


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["distill", "pretrain"])
def test_resume_after_the_data_changed_is_refused(
    command, tiny_bert, tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    """Before, a resumed run trained on a mixture of the old and the new data and recorded
    only the new: distill after train.tsv was cut (and a changed transfer file), pretrain
    after the corpus changed. The hashes recorded at the start (config.yaml) refuse it."""
    data = tmp_path / "SST-2"
    shutil.copytree(sst2_dir, data)
    corpus, transfer, out = data / "train.tsv", data / "test.tsv", tmp_path / "run"
    if command == "distill":
        head = run_argv(command, tiny_bert, tiny_teacher, data, out, "--transfer-file", transfer)
    else:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(s for s, _ in sentiment_rows(40)) + "\n")
        head = ["pretrain", "--teacher", tiny_bert, "--text-file", corpus, "--output", out,
                "--student-layers", "2", "--eval-texts", "4", *TINY[2:8]]  # fmt: skip
    argv = [*head, "--save-steps", "1", "--keep-checkpoints"]
    pkd_cli.ok(argv)
    (out / "metrics.json").unlink()  # as if killed after its last checkpoint
    saved = yaml.safe_load((out / "config.yaml").read_text())["meta"]["data"]
    before, old = snapshot(out), corpus.read_bytes()
    assert saved["train"]["source"] == str(corpus) and saved["train"]["sha256"][:12] == sha(old)

    lines = old.decode().splitlines(keepends=True)
    corpus.write_text("".join(lines[: len(lines) // 2]))  # cut, as `head -n`
    msg = pkd_cli.error([*argv, "--resume"])
    splits = "train" if command == "distill" else "train, heldout"  # pretrain's: one file
    assert msg == (
        f"--resume: the data of {out} changed since it started ({splits}: {corpus} sha256 "
        f"{sha(old)} -> {corpus} sha256 {sha(corpus.read_bytes())}); resuming would train on a mixture: "
        "restore the data or start a new --output"
    )
    assert snapshot(out) == before
    checkpoint = sorted((out / "checkpoints").glob("step-*"))[-1]
    elsewhere = tmp_path / "elsewhere"  # a checkpoint into a new run: its run's data counts
    moved = [elsewhere if a == out else a for a in argv]
    msg = pkd_cli.error([*moved, "--resume-from", checkpoint])
    assert msg.startswith(f"--resume-from: the data of {out} changed since it started ({splits}: ")
    assert not elsewhere.exists() and snapshot(out) == before
    corpus.write_bytes(old)
    if command == "distill":
        old_transfer = transfer.read_bytes()
        transfer.write_text(old_transfer.decode() + "8\tnot a good film\n")
        msg = pkd_cli.error([*argv, "--resume"])
        assert f"(transfer: {transfer} sha256 {sha(old_transfer)} -> {transfer} sha256" in msg
        assert snapshot(out) == before
        transfer.write_bytes(old_transfer)
    pkd_cli.ok([*argv, "--resume"])  # the same data again: it resumes
    assert (out / "metrics.json").is_file()


def test_config_drift_names_each_setting():
    old = to_dict(DistillRunConfig(teacher="t", output="a"))
    new = DistillRunConfig(
        teacher="t",
        output="b",  # the run directory itself is not a setting
        train=TrainConfig(
            lr=1e-4,
            warmup_ratio=0.0,  # distill's defaults: a constant lr from the first step
            lr_schedule="constant",
            quiet=True,
            logging_steps=3,
            save_total_limit=2,
        ),
        distill=DistillConfig(beta=10.0, cache_dir="elsewhere"),
    )
    assert config_drift(old, to_dict(new)) == [
        "train.lr: 5e-05 -> 0.0001",
        "distill.beta: 100.0 -> 10.0",
    ]
    assert config_drift(old, {**old, "teacher": "u"}) == ["teacher: 't' -> 'u'"]


# ---------------------------------------------------------------------------------------------
# Defect 7: an option the method ignores is refused, not dropped


def test_method_resolves_weights_and_saved_configs_still_load():
    assert (DistillConfig().alpha, DistillConfig().beta) == (0.5, 100.0)
    kd = DistillConfig(method="kd", alpha=0.7)
    assert (kd.alpha, kd.beta) == (0.7, 0.0)
    ft = DistillConfig(method="ft")
    assert (ft.alpha, ft.beta, ft.layer_map) == (0.0, 0.0, None)
    # what a saved config.yaml of a kd / ft run holds (the resolved values) loads again
    for method in ("kd", "ft"):
        saved = to_dict(
            DistillRunConfig(teacher="t", output="o", distill=DistillConfig(method=method))
        )
        again = build(DistillRunConfig, yaml.safe_load(yaml.safe_dump(saved)))
        assert to_dict(again) == saved
    with pytest.raises(PkdError, match=r"^--beta: 500.0 has no effect with --method kd"):
        DistillConfig(method="kd", beta=500.0)
    with pytest.raises(PkdError, match=r"^--layer-map: 2,4 has no effect with --method ft"):
        DistillConfig(method="ft", student_layers=3, layer_map=[2, 4])


def test_compare_shares_beta_only_with_pkd(tiny_teacher, sst2_dir, tmp_path):
    """`compare --beta 500` (one distill section for every method) plans beta 0 for ft/kd."""
    from pkd.recipes.compare import compare

    distill = {"beta": 500.0, "alpha": 0.7}
    data = {"task": "sst2", "data_dir": str(sst2_dir), "max_length": 16, "max_train_samples": 16}
    base = {
        "data": data,
        "train": {"epochs": 1, "batch_size": 8, "quiet": True},
        "distill": {**distill, "allow_weak_teacher": True},
    }
    out = tmp_path / "cmp"
    result = compare(str(tiny_teacher), str(out), base, [2], ["ft", "kd", "pkd-skip"], [1],
                     bench_seq_length=16, dry_run=True, options={"distill": distill})  # fmt: skip
    weights = {
        g["method"]: (g["loss"]["alpha"], g["loss"]["beta"]) for g in result["plans"]["groups"]
    }
    assert weights == {"ft": (0.0, 0.0), "kd": (0.7, 0.0), "pkd-skip": (0.7, 500.0)}
    assert not out.exists()


def test_sweep_refuses_an_option_its_method_ignores(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [3e-3, 1e-3]\n")
    argv = ["sweep", "--teacher", tiny_teacher, "--data-dir", sst2_dir, "--output", tmp_path / "o",
            "--space", space, "--method", "kd", "--student-layers", "2", *TINY, "--beta", "500",
            "--allow-weak-teacher", "--dry-run"]  # fmt: skip
    msg = pkd_cli.error(argv)
    assert msg.startswith("--beta: 500.0 has no effect with --method kd (no patient loss)")


# ---------------------------------------------------------------------------------------------
# Seeds: checked up front in every command (numpy's range), not after the teacher is scored


def test_compare_and_sweep_check_seeds_up_front(
    tiny_teacher, sst2_dir, tmp_path, monkeypatch, pkd_cli
):
    def never(*a, **k):
        raise AssertionError("the teacher is scored before the seeds are checked")

    monkeypatch.setattr("pkd.recipes.compare.evaluate_model", never)
    common = ["--teacher", tiny_teacher, "--data-dir", sst2_dir, "--output", tmp_path / "o",
              "--student-layers", "2", *TINY, "--allow-weak-teacher", "--dry-run"]  # fmt: skip
    argv = ["compare", *common, "--seeds", "1,-1", "--bench-seq-length", "16"]
    msg = pkd_cli.error(argv)
    assert msg == "--seeds: must be in 0..4294967295, got -1"
    space = tmp_path / "space.yaml"
    space.write_text("lr: [3e-3, 1e-3]\n")
    argv = ["sweep", *common, "--space", space, "--method", "kd", "--seeds", str(2**32)]
    msg = pkd_cli.error(argv)
    assert msg == "--seeds: must be in 0..4294967295, got 4294967296"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Bad inputs 3: files pkd writes get the umask's modes, not mkstemp's 0600


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_follows_the_umask(umask, tmp_path):
    umask(0o027)
    fsio.atomic_write(tmp_path / "a.json", "{}\n")
    assert mode(tmp_path / "a.json") == 0o640
    umask(0o022)
    fsio.atomic_write(tmp_path / "a.json", "{}\n")  # replacing a file: the new one's mode
    assert mode(tmp_path / "a.json") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_run_outputs_are_readable_by_others(
    umask, tiny_bert, tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    files = ["model/model.safetensors", "model/config.json", "metrics.json", "config.yaml"]
    for command in ("finetune", "distill"):
        out = tmp_path / command
        argv = run_argv(command, tiny_bert, tiny_teacher, sst2_dir, out, "--keep-checkpoints")
        pkd_cli.ok(argv)
        for name in files:
            assert mode(out / name) == 0o644, (command, name, oct(mode(out / name)))
        assert mode(out / "model") == 0o755
        (ckpt,) = (out / "checkpoints").iterdir()
        assert {mode(p) for p in ckpt.rglob("*") if p.is_file()} == {0o644}
    (cache,) = [p for p in (tmp_path / "teacher-cache").rglob("manifest.json")]
    assert mode(cache.parent) == 0o755 and mode(cache) == 0o644
    result = tmp_path / "eval.json"
    argv = ["evaluate", "--model", tmp_path / "distill" / "model", "--task", "sst2",
            "--data-dir", sst2_dir, "--max-eval-samples", "8", "--output-file", result]  # fmt: skip
    pkd_cli.ok(argv)
    assert mode(result) == 0o644 and json.loads(result.read_text())["task"] == "sst2"


# ---------------------------------------------------------------------------------------------
# Bad inputs 5: epochs selected on a handful of held-out examples


def test_tiny_holdout_warns(sst2_dir, caplog):
    from pkd.data.loading import load_splits

    def held(fraction: float) -> int:
        data = DataConfig(task="sst2", data_dir=str(sst2_dir), holdout_fraction=fraction)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pkd.data.loading"):
            _, splits = load_splits(
                DataConfig(**{**vars(data), "max_train_samples": 20}), ["train"]
            )
        return len(splits["holdout"])

    assert held(0.05) == 1
    (record,) = caplog.records
    assert record.getMessage() == (
        "--holdout-fraction 0.05 holds out 1 training example(s): too few to select epochs on; "
        "use a larger fraction or more data (at least 10 examples)"
    )
    assert held(0.5) == 10 and not caplog.records


def test_run_configs_keep_their_keys_in_order():
    """config.yaml lists a run config's fields in order: the shared teacher-run fields first."""
    import dataclasses

    from pkd.config import DistillRunConfig, FinetuneRunConfig, PretrainRunConfig

    flags = ["output", "overwrite", "resume", "resume_from", "trust_remote_code"]
    names = {
        c: [f.name for f in dataclasses.fields(c)]
        for c in (FinetuneRunConfig, DistillRunConfig, PretrainRunConfig)
    }
    assert names[FinetuneRunConfig] == ["model", *flags, "pooling", "data", "train"]
    assert names[DistillRunConfig] == ["teacher", *flags, "data", "train", "distill"]
    assert names[PretrainRunConfig] == ["teacher", *flags, "text", "train", "pretrain"]
    with pytest.raises(PkdError, match=r"--teacher: required \(a fine-tuned model directory\)"):
        DistillRunConfig(output="x")
    with pytest.raises(PkdError, match=r"--output: required \(the run directory\)"):
        PretrainRunConfig(teacher="bert-base-uncased")
