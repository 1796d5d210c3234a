"""Issue 7: bad input is caught before training, runs are reproducible, loading is safe.

Each up-front check goes through the `pkd` command and must: exit 2 with one `pkd: error:`
line naming the file/line or option, create no run directory, and leave an earlier finished
run untouched even with --overwrite. Plus the numerical guards, determinism, provenance,
trust_remote_code, pickles, and text edge cases through a whole run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import WORDS, make_tiny_teacher, snapshot, write_sst2
from safetensors.torch import load_file

from pkd.api import finetune
from pkd.config.runs import FinetuneRunConfig
from pkd.config.sections import DataConfig, TrainConfig

TRAIN = ["--batch-size", "8", "--max-length", "16", "--quiet"]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Fixtures: a teacher that passes the weak-teacher check, and one finished distillation run


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robust")


@pytest.fixture(scope="module")
def data(root) -> Path:
    return write_sst2(root / "SST-2")


@pytest.fixture(scope="module")
def teacher(root, data, tiny_bert) -> Path:
    """tiny_bert fine-tuned on the separable toy SST-2 (dev accuracy 1.0); keeps a checkpoint."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PKD_CACHE_DIR", str(root / "cache"))
        m = finetune(
            FinetuneRunConfig(
                model=str(tiny_bert),
                output=str(root / "teacher"),
                data=DataConfig(task="sst2", data_dir=str(data), max_length=16),
                train=TrainConfig(
                    epochs=8, lr=3e-3, batch_size=8, quiet=True, keep_checkpoints=True
                ),
            )
        )
    assert m["best"]["metrics"]["dev"]["accuracy"] >= 0.9
    return root / "teacher" / "model"


def distill_argv(teacher, data, output, *extra):
    return ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", data,
            "--output", output, "--student-layers", "2", "--epochs", "1", "--lr", "1e-3",
            *TRAIN, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(root, data, teacher, pkd_cli) -> Path:
    """A finished PKD run that every failed check below must leave exactly as it is."""
    out = root / "finished"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PKD_CACHE_DIR", str(root / "cache"))
        pkd_cli.ok(distill_argv(teacher, data, out))
    assert (out / "metrics.json").is_file()
    return out


# ---------------------------------------------------------------------------------------------
# Up-front validation: one case per check


def _bad_dev_row(ctx):
    d = write_sst2(ctx["tmp"] / "SST-2", n_train=16, n_dev=8)
    (d / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nno label here\nbad\t0\n")
    return ["--data-dir", d], f"{d / 'dev.tsv'}:3: expected at least 2 columns, found 1"


def _not_utf8(ctx):
    d = write_sst2(ctx["tmp"] / "SST-2", n_train=16, n_dev=8)
    (d / "train.tsv").write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9 film\t0\n")
    return ["--data-dir", d], (
        f"{d / 'train.tsv'}:3: not valid utf-8 (byte 0xe9); pass --encoding (e.g. latin-1) "
        "to read it"
    )


def _missing_train(ctx):
    d = write_sst2(ctx["tmp"] / "SST-2", n_train=16, n_dev=8)
    (d / "train.tsv").unlink()
    return ["--data-dir", d], f"{d / 'train.tsv'}: file not found"


def _dev_label_unknown(ctx):
    d = write_sst2(ctx["tmp"] / "SST-2", n_train=16, n_dev=8)
    (d / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nmeh film\tneutral\n")
    return ["--data-dir", d], f"{d / 'dev.tsv'}:3: label 'neutral' is not one of ['0', '1']"


def _custom_labels_not_teachers(ctx):
    # the user's own file, with label names the teacher does not have
    train, dev = ctx["tmp"] / "train.csv", ctx["tmp"] / "dev.csv"
    train.write_text('text,label\n"good, great film",pos\nawful film,neg\n')
    dev.write_text("text,label\ngood film,pos\n")
    argv = ["--task", "custom", "--train-file", train, "--validation-file", dev,
            "--text-columns", "text"]  # fmt: skip
    return argv, f"{train}:2: label 'pos' is not one of ['0', '1']"


def _teacher_labels_differ(ctx):
    other = make_tiny_teacher(ctx["tmp"] / "named", ctx["tiny_bert"], labels=("neg", "pos"))
    return ["--teacher", other], (
        "--teacher: its labels ['neg', 'pos'] differ from the data's ['0', '1']"
    )


def _student_other_vocabulary(ctx):
    # same vocabulary size and weights, but two words swapped: token ids would mean other words
    from transformers import BertTokenizerFast

    init = ctx["tmp"] / "swapped"
    shutil.copytree(ctx["tiny_bert"], init)
    for f in init.glob("*token*"):
        f.unlink()
    (init / "vocab.txt").unlink(missing_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    words[5], words[6] = words[6], words[5]  # good <-> great
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(init)
    return ["--student-init", init], (
        f"--student-init: the tokenizer of {init} differs from the teacher's (2 vocabulary "
        "entries differ, e.g. 'good': 6 vs 5); student and teacher must share one tokenizer"
    )


def _student_other_casing(ctx):
    # same vocabulary, but no lower-casing: 'GOOD' becomes [UNK] for the student's tokenizer
    from transformers import BertTokenizerFast

    init = ctx["tmp"] / "cased"
    shutil.copytree(ctx["tiny_bert"], init)
    for f in init.glob("*token*"):
        f.unlink()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(
        vocab={w: i for i, w in enumerate(words)}, do_lower_case=False
    ).save_pretrained(init)
    return ["--student-init", init], (
        f"--student-init: the tokenizer of {init} has the teacher's vocabulary but splits text "
        "differently"
    )


def _student_pickled_weights(ctx):
    init = ctx["tmp"] / "pickled"
    shutil.copytree(ctx["tiny_bert"], init)
    state = load_file(str(init / "model.safetensors"))
    (init / "model.safetensors").unlink()
    torch.save(state, init / "pytorch_model.bin")
    return ["--student-init", init], (
        f"{init}: no *.safetensors weights (pickled .bin weights are not loaded; convert them "
        "with save_pretrained(safe_serialization=True))"
    )


def _layer_map_out_of_range(ctx):
    return ["--student-layers", "3", "--layer-map", "2,4"], (
        "--layer-map: layers must be in 1..3 for a 4-layer teacher"
    )


def _layer_map_wrong_length(ctx):
    return ["--layer-map", "1,2"], "--layer-map: 2-layer student needs 1 teacher layers, got 2"


def _beta_with_kd(ctx):
    # the method has no patient loss: today's silent beta = 0 would train something else
    return ["--method", "kd", "--beta", "500"], (
        "--beta: 500.0 has no effect with --method kd (no patient loss); drop it, or use "
        "--method pkd"
    )


def _alpha_with_ft(ctx):
    return ["--method", "ft", "--alpha", "0.7"], (
        "--alpha: 0.7 has no effect with --method ft (no teacher terms); drop it, or use "
        "--method kd or pkd"
    )


def _layer_map_with_kd(ctx):
    return ["--method", "kd", "--layer-map", "2"], "--layer-map: 2 has no effect with --method kd"


def _negative_seed(ctx):
    return ["--seed", "-1"], "--seed: must be in 0..4294967295, got -1"


def _seed_too_large(ctx):
    return ["--seed", str(2**32)], "--seed: must be in 0..4294967295, got 4294967296"


def _zero_max_steps(ctx):
    return ["--max-steps", "0"], "--max-steps: must be -1 (train --epochs) or > 0, got 0"


def _student_too_deep(ctx):
    return ["--student-layers", "4"], (
        "--student-layers: 4 is impossible for a 4-layer teacher (need 1 <= M < 4)"
    )


def _max_length_beyond_positions(ctx):
    # tiny BERTs have 64 position embeddings: 100 would crash in the first forward pass
    return ["--max-length", "100"], (
        f"--max-length: 100 is more than the 64 positions of --teacher {ctx['teacher']}; "
        "pass --max-length 64 or less"
    )


def _weak_teacher(ctx):
    return ["--teacher", ctx["tiny_teacher"]], "not 2 points above the majority baseline"


def _no_disk_for_cache(ctx):
    free = shutil.disk_usage(ctx["tmp"])
    ctx["mp"].setattr(shutil, "disk_usage", lambda p: free._replace(free=1000))
    # 64 examples x (2 float32 logits + 5 layers x 32 fp16) = 20,992 bytes
    return [], "--cache-dir: the teacher cache needs about 21.0 kB but "


def _bad_config_value(ctx):
    f = ctx["tmp"] / "bad.yaml"
    f.write_text("train:\n  warmup_ratio: ten percent\n")  # --epochs etc. are given as options
    return ["--config", f], (
        f"{f}: train.warmup_ratio (--warmup-ratio) expects a number, got 'ten percent'"
    )


def _config_not_a_mapping(ctx):
    f = ctx["tmp"] / "bad.yaml"
    f.write_text("distill: pkd\n")
    return ["--config", f], f"{f}: section 'distill' must be a mapping of options"


CHECKS = [
    _bad_dev_row,
    _not_utf8,
    _missing_train,
    _dev_label_unknown,
    _custom_labels_not_teachers,
    _teacher_labels_differ,
    _student_other_vocabulary,
    _student_other_casing,
    _student_pickled_weights,
    _layer_map_out_of_range,
    _layer_map_wrong_length,
    _beta_with_kd,
    _alpha_with_ft,
    _layer_map_with_kd,
    _negative_seed,
    _seed_too_large,
    _zero_max_steps,
    _student_too_deep,
    _max_length_beyond_positions,
    _weak_teacher,
    _no_disk_for_cache,
    _bad_config_value,
    _config_not_a_mapping,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_refused_before_training(
    check, finished, teacher, data, tiny_bert, tiny_teacher, tmp_path, monkeypatch, pkd_cli
):
    ctx = {"tmp": tmp_path, "tiny_bert": tiny_bert, "tiny_teacher": tiny_teacher,
           "teacher": teacher, "mp": monkeypatch}  # fmt: skip
    extra, expected = check(ctx)
    trained = []
    monkeypatch.setattr("pkd.recipes.distill.train", lambda *a, **k: trained.append(1))

    # a new run directory: never created
    fresh = tmp_path / "run"
    msg = pkd_cli.error(distill_argv(teacher, data, fresh, *extra))
    assert expected in msg
    assert not fresh.exists()

    # an earlier finished run, with --overwrite: left exactly as it was
    before = snapshot(finished)
    msg = pkd_cli.error(distill_argv(teacher, data, finished, "--overwrite", *extra))
    assert expected in msg
    assert snapshot(finished) == before
    assert not trained


def test_finished_run_is_refused_without_overwrite(finished, teacher, data, pkd_cli):
    before = snapshot(finished)
    msg = pkd_cli.error(distill_argv(teacher, data, finished))
    assert (
        msg == f"--output: {finished} already holds a finished run; pass --overwrite to replace it"
    )
    assert snapshot(finished) == before


def test_cache_estimate_is_logged_before_training(teacher, data, tmp_path, caplog, pkd_cli):
    caplog.set_level(logging.INFO, logger="pkd.recipes.distill")
    pkd_cli.ok(distill_argv(teacher, data, tmp_path / "run", "--dry-run"))
    logged = [r.getMessage() for r in caplog.records if "teacher cache: about" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].startswith("teacher cache: about 21.0 kB for 64 examples under ")
    assert not (tmp_path / "run").exists()  # --dry-run writes nothing


def test_existing_cache_needs_no_new_space(
    finished, teacher, data, tmp_path, monkeypatch, caplog, pkd_cli
):
    # the finished run's cache lies under PKD_CACHE_DIR=root/cache: a rerun reuses it
    cache = finished.parent / "cache"
    monkeypatch.setenv("PKD_CACHE_DIR", str(cache))
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: free._replace(free=1000))
    before = {"run": snapshot(finished), "cache": snapshot(cache)}
    caplog.set_level(logging.INFO, logger="pkd.recipes.distill")
    stdout = pkd_cli.ok(distill_argv(teacher, data, tmp_path / "run", "--dry-run")).out
    logged = [r.getMessage() for r in caplog.records if "teacher cache: about" in r.getMessage()]
    assert logged == [f"teacher cache: about 21.0 kB for 64 examples under {cache} (1.0 kB free)"]
    assert "layer map:" in stdout  # the plan, not a refusal
    # the earlier run and the cache it would reuse are left exactly as they were
    assert {"run": snapshot(finished), "cache": snapshot(cache)} == before
    assert not (tmp_path / "run").exists()
    # without that cache, the same free space is refused in one line, and nothing is written
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert pkd_cli.error(distill_argv(teacher, data, tmp_path / "run", "--dry-run")) == (
        "--cache-dir: the teacher cache needs about 21.0 kB but "
        f"{tmp_path} has 1.0 kB free; free some space or pass --cache-dir on a larger disk"
    )
    assert {"run": snapshot(finished), "cache": snapshot(cache)} == before
    assert not (tmp_path / "run").exists()


def test_config_yaml_numbers_written_as_text(tmp_path):
    from pkd.cli.commands import resolve
    from pkd.cli.parser import build_parser

    # YAML 1.1 reads `lr: 1e-5` (no dot) as the string '1e-5'
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-5\n  epochs: 2\ndata:\n  max_length: '64'\n")
    args = build_parser().parse_args(["finetune", "--config", str(f), "--model", "m",
                                      "--output", str(tmp_path / "r")])  # fmt: skip
    cfg = resolve(args, FinetuneRunConfig)
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2.0 and cfg.data.max_length == 64


# ---------------------------------------------------------------------------------------------
# Numerical guards


def test_non_finite_loss_stops_the_run(teacher, data, tmp_path, pkd_cli):
    import pkd.training.hooks as T

    class NanAtStep3(T.LoopHooks):
        def on_loss(self, step, terms):
            if step == 3:
                terms["pt"] = terms["pt"] * float("nan")

    run = tmp_path / "run"
    with T.use_hooks(NanAtStep3()):
        msg = pkd_cli.error(distill_argv(teacher, data, run, "--save-steps", "1"))
    assert msg.startswith("non-finite loss at step 3 (ce=")
    for term in ("ce=", "kd=", "pt=nan"):
        assert term in msg
    assert msg.endswith(f"; last checkpoint: {run / 'checkpoints' / 'step-2'}")
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (run / "metrics.json").exists()  # not a finished run


def test_non_finite_loss_without_checkpoint(tiny_bert, data, tmp_path, pkd_cli):
    import pkd.training.hooks as T

    class InfCe(T.LoopHooks):
        def on_loss(self, step, terms):
            terms["ce"] = torch.tensor(float("inf"))

    run = tmp_path / "run"
    with T.use_hooks(InfCe()):
        msg = pkd_cli.error(["finetune", "--model", tiny_bert, "--task", "sst2",
                             "--data-dir", data, "--output", run, "--epochs", "1", *TRAIN])  # fmt: skip
    assert msg == "non-finite loss at step 1 (ce=inf); last checkpoint: none"


def _encoder_change(run: Path, init: Path) -> float:
    """Largest change of any encoder weight between init and the trained model."""
    before = load_file(str(init / "model.safetensors"))
    after = weights(run / "model")
    return max(
        (after[f"bert.{k}"] - v).abs().max().item()
        for k, v in before.items()
        if f"bert.{k}" in after and "layer." in k
    )


def test_max_grad_norm_clips(tiny_bert, data, tmp_path):
    def run(name, norm):
        finetune(
            FinetuneRunConfig(
                model=str(tiny_bert),
                output=str(tmp_path / name),
                data=DataConfig(task="sst2", data_dir=str(data), max_length=16),
                train=TrainConfig(
                    epochs=1,
                    lr=0.05,
                    batch_size=8,
                    max_grad_norm=norm,
                    weight_decay=0.0,
                    warmup_ratio=0.0,
                    quiet=True,
                ),
            )
        )
        return _encoder_change(tmp_path / name, tiny_bert)

    free = run("free", 0.0)  # 0: off
    clipped = run("clipped", 1e-9)
    # AdamW normalises the gradient scale away, except against its eps (1e-8): a gradient
    # clipped to norm 1e-9 gives per-weight updates ~1e-3 of the unclipped ones
    assert free > 0.1
    assert clipped < free * 0.02


# ---------------------------------------------------------------------------------------------
# Reproducibility and provenance


def test_same_command_twice_gives_identical_results(finished, teacher, data, tmp_path, pkd_cli):
    again = tmp_path / "again"
    pkd_cli.ok(distill_argv(teacher, data, again))
    a = json.loads((finished / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    for key in ("best", "final", "history", "teacher_metrics", "layer_map", "data"):
        assert a[key] == b[key], key
    wa, wb = weights(finished / "model"), weights(again / "model")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la = [json.loads(x) for x in (finished / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (again / "log.jsonl").read_text().splitlines()]
    strip = ("examples_per_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in la] == [
        {k: v for k, v in r.items() if k not in strip} for r in lb
    ]


def test_run_records_config_versions_and_data_fingerprints(finished, data):
    conf = yaml.safe_load((finished / "config.yaml").read_text())
    assert conf["distill"]["student_layers"] == 2 and conf["train"]["seed"] == 42
    assert conf["data"]["data_dir"] == str(data) and conf["data"]["max_length"] == 16
    for key in ("pkd", "torch", "transformers", "accelerate", "python", "git_sha"):
        assert key in conf["meta"], key
    import torch as _torch
    import transformers

    assert conf["meta"]["torch"] == str(_torch.__version__)
    assert conf["meta"]["transformers"] == transformers.__version__
    summary = json.loads((finished / "metrics.json").read_text())["data"]
    for split, file in (("train", "train.tsv"), ("dev", "dev.tsv")):
        assert summary[split]["source"] == str(data / file)
        assert summary[split]["sha256"] == hashlib.sha256((data / file).read_bytes()).hexdigest()


def test_rerun_from_config_yaml(finished, tmp_path, pkd_cli):
    new = tmp_path / "rerun"
    out = pkd_cli.ok(["distill", "--config", finished / "config.yaml", "--output", new]).out
    assert json.loads(out)["output"] == str(new)
    a = json.loads((finished / "metrics.json").read_text())
    b = json.loads((new / "metrics.json").read_text())
    assert a["best"] == b["best"] and a["history"] == b["history"]
    wa, wb = weights(finished / "model"), weights(new / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the re-run's own config equals the original but for the output
    ca = yaml.safe_load((finished / "config.yaml").read_text())
    cb = yaml.safe_load((new / "config.yaml").read_text())
    ca.pop("meta"), cb.pop("meta")
    assert cb.pop("output") == str(new) and ca.pop("output") == str(finished)
    assert ca == cb


# ---------------------------------------------------------------------------------------------
# Safe loading


def _record_trust_remote_code(monkeypatch) -> list:
    import transformers

    seen = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        cls = getattr(transformers, name)
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return seen


@pytest.mark.parametrize("flag", [False, True])
def test_trust_remote_code_only_when_asked(flag, teacher, data, tmp_path, monkeypatch, pkd_cli):
    seen = _record_trust_remote_code(monkeypatch)
    extra = ["--trust-remote-code"] if flag else []
    pkd_cli.ok(distill_argv(teacher, data, tmp_path / "r", "--dry-run", *extra))
    loaded = {name for name, _ in seen}
    assert loaded == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    assert {value for _, value in seen} == {flag}, seen


def test_evaluate_never_trusts_remote_code(teacher, data, tmp_path, monkeypatch, pkd_cli):
    seen = _record_trust_remote_code(monkeypatch)
    pkd_cli.ok(["evaluate", "--model", teacher, "--task", "sst2", "--data-dir", data,
                "--output-file", tmp_path / "e.json"])  # fmt: skip
    assert seen and {value for _, value in seen} == {False}


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_checkpoint_code_is_never_run(teacher, data, tmp_path, pkd_cli):
    ckpt = next((teacher.parent / "checkpoints").glob("step-*"))
    evil = tmp_path / "step-64"
    shutil.copytree(ckpt, evil)
    marker = tmp_path / "pwned.txt"
    with open(evil / "optimizer.bin", "wb") as f:
        pickle.dump(_Payload(marker), f, protocol=2)
    run = tmp_path / "run"
    msg = pkd_cli.error(["finetune", "--model", teacher,
                         "--task", "sst2", "--data-dir", data, "--output", run, "--epochs", "2",
                         "--resume-from", evil, *TRAIN])  # fmt: skip
    assert not marker.exists()
    pickle.loads((evil / "optimizer.bin").read_bytes())  # the payload is live: plain pickle runs it
    assert marker.read_text() == "pwned"
    assert msg.startswith(f"{evil}: cannot load the checkpoint (Weights only load failed.")


@pytest.mark.parametrize(
    "state, why",
    [
        ('{"step": 64, "epoch": 8}', "trainer_state.json lacks batches_in_epoch, best, history"),
        ("[]", "trainer_state.json lacks step, epoch, batches_in_epoch, best, history"),
        (
            '{"step": 64, "epoch": 8, "batches_in_epoch": 0, "best": null, "history": [], '
            '"stats": {"seen": {}, "bogus": 1}}',
            "trainer_state.json: its stats are not pkd's RunStats",
        ),
    ],
)
def test_checkpoint_with_a_broken_loop_state_is_refused(
    teacher, data, tmp_path, state, why, pkd_cli
):
    """Before: a missing field was a KeyError traceback after the weights were loaded."""
    ckpt = next((teacher.parent / "checkpoints").glob("step-*"))
    broken = tmp_path / "step-64"
    shutil.copytree(ckpt, broken)
    (broken / "trainer_state.json").write_text(state)
    run = tmp_path / "run"
    msg = pkd_cli.error(["finetune", "--model", teacher,
                         "--task", "sst2", "--data-dir", data, "--output", run, "--epochs", "2",
                         "--resume-from", broken, *TRAIN])  # fmt: skip
    assert msg == f"{broken}: cannot load the checkpoint ({why})"


# ---------------------------------------------------------------------------------------------
# Text edge cases through a whole run

EDGE_ROWS = [
    ("", "0"),  # empty text
    (" ".join(["good movie"] * 60), "1"),  # 120 words: truncated at --max-length
    ('the "plot" was "great', "1"),  # quotes inside an unquoted GLUE field
    ("naïve café — 😀 très bien 🎬", "1"),  # Unicode and emoji
    ("bad\u00a0film\u2028awful", "0"),  # no-break space, line separator inside a field
]


def test_glue_edge_cases_through_finetune_and_predict(tiny_bert, tmp_path, pkd_cli):
    d = tmp_path / "SST-2"
    d.mkdir()
    from conftest import sentiment_rows

    for name, seed in (("train", 0), ("dev", 1)):
        rows = sentiment_rows(16, seed) + EDGE_ROWS
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows]
        (d / f"{name}.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CRLF
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, (s, _) in enumerate(EDGE_ROWS)]
    (d / "test.tsv").write_bytes(("\r\n".join(test) + "\r\n").encode())
    run = tmp_path / "run"
    pkd_cli.ok(["finetune", "--model", tiny_bert, "--task", "sst2", "--data-dir", d,
                "--output", run, "--epochs", "1", *TRAIN])  # fmt: skip
    summary = json.loads((run / "metrics.json").read_text())["data"]
    assert summary["train"]["examples"] == summary["dev"]["examples"] == 21
    assert summary["train"]["truncated"] == round(1 / 21, 4)  # only the 120-word text
    out = tmp_path / "preds.tsv"
    predict = ["predict", "--model", run / "model", "--task", "sst2", "--data-dir", d,
               "--output-file", out]  # fmt: skip
    pkd_cli.ok(predict)  # default --max-length 128: cut at the 64 positions
    lines = out.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + len(EDGE_ROWS)
    assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])


def test_custom_csv_and_jsonl_edge_cases_through_finetune(tiny_bert, tmp_path, pkd_cli):
    from conftest import sentiment_rows

    rows = sentiment_rows(16) + EDGE_ROWS + [('a "quoted", comma\nand a newline', "1")]
    csv_text = "text,label\r\n" + "".join(
        '"' + s.replace('"', '""') + f'",{y}\r\n' for s, y in rows
    )
    (tmp_path / "train.csv").write_text(csv_text, encoding="utf-8", newline="")
    jsonl = "".join(
        json.dumps({"text": s, "label": y}, ensure_ascii=False) + "\r\n" for s, y in rows
    )
    (tmp_path / "dev.jsonl").write_text(jsonl, encoding="utf-8", newline="")
    run = tmp_path / "run"
    pkd_cli.ok(["finetune", "--model", tiny_bert, "--task", "custom",
                "--train-file", tmp_path / "train.csv",
                "--validation-file", tmp_path / "dev.jsonl", "--text-columns", "text",
                "--output", run, "--epochs", "1", *TRAIN])  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == ["0", "1"]
    assert metrics["data"]["train"]["examples"] == metrics["data"]["dev"]["examples"] == 22


def test_an_older_transformers_is_a_clear_import_error_and_the_floor_is_declared():
    """`import pkd` checks transformers first (4.x lacks names pkd imports); pyproject.toml
    declares the same floor, the oldest version the suite passed with."""
    import pkd

    want = r"^pkd needs transformers>=5.0.0, but 4.57.6 is installed: pip install 'transformers>=5.0.0'$"
    with pytest.raises(ImportError, match=want):
        pkd.check_transformers("4.57.6")
    pkd.check_transformers("5.0.0")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"transformers>={pkd.MIN_TRANSFORMERS}"' in pyproject
