"""`pkd export`: ONNX graph with dynamic axes, int8, parity check, self-contained directory."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_SST2, make_tiny_bert, sentiment_rows

from pkd.deploy import export as X
from pkd.errors import PkdError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, sst2_dir) -> Path:
    """A `pkd finetune` run on the toy SST-2: predictions that vary, so agreement means
    something (an untrained head predicts one class for every text)."""
    from pkd.api import finetune
    from pkd.config.runs import FinetuneRunConfig
    from pkd.config.sections import DataConfig, TrainConfig

    run = tmp_path_factory.mktemp("finetune") / "run"
    cfg = FinetuneRunConfig(
        model=str(tiny_bert),
        output=str(run),
        data=DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
        train=TrainConfig(epochs=8, lr=3e-3, batch_size=8, quiet=True),
    )
    finetune(cfg)
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained, sst2_dir, pkd_cli):
    """The trained run exported through the CLI with int8, parity on the toy SST-2 dev split."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    argv = ["export", "--model", str(trained), "--output", str(out), "--quantize", "int8"]
    stdout = pkd_cli.ok(argv + ["--task", "sst2", "--data-dir", str(sst2_dir)]).out
    return out, json.loads(stdout)


def test_export_card_is_the_models_with_onnx_files_and_parity(exported, trained):
    from huggingface_hub import ModelCard

    out, printed = exported
    card = ModelCard.load(out / "README.md")
    source = ModelCard.load(trained / "model" / "README.md")
    assert card.data.library_name == "onnx" and {"onnx", "pkd"} <= set(card.data.tags)
    assert card.data.eval_results == source.data.eval_results  # the model's dev metrics
    assert card.text.startswith(source.text.rstrip("\n"))
    assert "`model.int8.onnx`, `model.onnx`" in card.text
    assert (
        f"| fp32 max abs. logit difference | {printed['fp32']['max_abs_diff']:.4g} |" in card.text
    )
    assert f"| int8 label agreement | {printed['int8']['agreement']:.4g} |" in card.text
    assert not [line for line in card.text.splitlines() if line.startswith(";")]  # one sentence
    assert f"`pkd export` of `{trained.name}/model` (opset " in card.text
    assert (
        "; run it with onnxruntime and the tokenizer here, e.g. `pkd predict --model onnx"
        in card.text
    )
    assert str(out.parent) not in card.text and str(trained) not in card.text  # no local path


def torch_logits(model_dir: Path, enc: dict) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification

    net = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return net(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()


def test_cli_export_writes_parity_report_and_files(exported, trained, sst2_dir):
    out, printed = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.int8.onnx",
        "model.onnx",
        "parity.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    report = json.loads((out / "parity.json").read_text())
    assert printed == {**report, "output": str(out), "files": sorted(printed["files"])}
    assert report["samples"] == 32  # the whole toy dev split
    assert report["model"] == str(trained / "model")  # a run dir means its model/
    assert report["source"] == str(sst2_dir / "dev.tsv")
    assert report["input_names"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert report["labels"] == ["0", "1"]
    assert report["fp32"]["max_abs_diff"] <= X.FP32_MAX_ABS_DIFF
    assert report["fp32"]["agreement"] == 1.0
    assert report["int8"]["agreement"] >= X.INT8_MIN_AGREEMENT
    assert report["tolerance"] == {
        "fp32_max_abs_diff": 1e-3,
        "int8_min_agreement": 0.95,
        "int8_tie_margin": 0.25,
    }
    assert not list(out.parent.glob(".onnx.*"))  # no temp dirs left beside it


def test_graph_has_dynamic_axes_and_matches_pytorch(exported, trained):
    import onnx

    out, _ = exported
    graph = onnx.load(str(out / "model.onnx")).graph
    for inp in graph.input:
        dims = [d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], inp.name
    assert [o.name for o in graph.output] == ["logits"]
    model = X.load_onnx(out)
    assert model.input_names == ["input_ids", "token_type_ids", "attention_mask"]
    rng = np.random.default_rng(0)
    words = "good bad movie plot the was very not boring great".split()
    for batch in (1, 3, 17):  # the graph was traced at batch 2
        lengths = rng.integers(1, 40, size=batch)
        texts = [" ".join(rng.choice(words, n)) for n in lengths]
        pairs = [" ".join(rng.choice(words, 3)) for _ in texts]  # token_type_ids = 1 too
        for b in (None, pairs):
            enc = model.encode(texts, b)
            got = model.run(enc)
            assert got.shape == (batch, 2)
            ref = torch_logits(trained / "model", dict(enc))
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_int8_predictions_agree_with_pytorch(exported, trained):
    import onnx

    out, _ = exported
    q = X.load_onnx(out, int8=True)
    assert q.path.name == "model.int8.onnx"
    assert X.load_onnx(out / "model.int8.onnx").path == q.path
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # weights really are int8
    rows = sentiment_rows(200, seed=5)
    texts, gold = [s for s, _ in rows], [y for _, y in rows]
    preds = q.predict(texts, batch_size=64)
    ref = [str(i) for i in torch_logits(trained / "model", dict(q.encode(texts))).argmax(-1)]
    assert np.mean([r == y for r, y in zip(ref, gold, strict=True)]) > 0.9  # it learned
    assert set(preds) == {"0", "1"}
    agreement = np.mean([p == r for p, r in zip(preds, ref, strict=True)])
    assert agreement >= 0.95


def test_export_dir_is_self_contained(exported, tmp_path):
    out, _ = exported
    texts = ["good movie", "awful boring plot", "the actors were not nice"]
    before = X.load_onnx(out).predict(texts)
    copy = shutil.copytree(out, tmp_path / "a" / "onnx")
    moved = Path(shutil.move(copy, tmp_path / "elsewhere"))
    model = X.load_onnx(moved)
    assert model.labels == ("0", "1")
    assert model.predict(texts) == before
    assert all(p in ("0", "1") for p in model.predict(texts))
    # everything it needs lives in the directory: config, tokenizer, graph
    assert json.loads((moved / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    assert model.num_parameters > 20_000  # tiny BERT: ~40k weights


def test_overwrite_custom_validation_file_and_atomic_replace(tiny_teacher, tmp_path, pkd_cli):
    data = tmp_path / "dev.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])  # no label column: parity needs texts only
        w.writerows([s] for s, _ in sentiment_rows(12, seed=3))
    out = tmp_path / "exp"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    argv = ["export", "--model", str(tiny_teacher), "--output", str(out)]
    argv += ["--validation-file", str(data), "--text-columns", "text", "--parity-samples", "5"]
    assert (
        pkd_cli.error(argv)
        == f"--output: {out} already holds files; pass --overwrite to replace it"
    )
    stdout = pkd_cli.ok(argv + ["--overwrite"]).out
    report = json.loads(stdout)
    assert (report["samples"], report["source"]) == (5, str(data))
    assert "int8" not in report and not (out / "model.int8.onnx").exists()
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.csv", "exp"]  # no temp dirs


def test_parity_failure_publishes_nothing(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(X, "FP32_MAX_ABS_DIFF", -1.0)  # any graph fails this
    out = tmp_path / "exp"
    with pytest.raises(PkdError, match=r"parity check failed: ONNX fp32 max \|dlogit\|"):
        X.export(str(tiny_teacher), str(out), parity_samples=4)
    assert list(tmp_path.iterdir()) == []


def test_regression_model_exports_scores(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = make_tiny_bert(tmp_path / "bert", layers=2)
    net = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, problem_type="regression"
    )
    net.save_pretrained(tmp_path / "reg", safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "reg")
    report = X.export(str(tmp_path / "reg"), str(tmp_path / "out"), "int8", parity_samples=8)
    assert report["labels"] == [] and report["fp32"]["agreement"] is None
    assert report["fp32"]["max_abs_diff"] <= X.FP32_MAX_ABS_DIFF
    model = X.load_onnx(tmp_path / "out")
    texts = ["good movie", "bad plot"]
    ref = torch_logits(tmp_path / "reg", dict(model.encode(texts)))[:, 0]
    assert model.labels == ()
    assert model.predict(texts) == [f"{v:.3f}" for v in ref]


def _bad_cases(tmp: Path, tiny_teacher: Path, tiny_bert: Path):
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("not a model")
    (tmp / "file.txt").write_text("x")
    ok = ["--model", str(tiny_teacher)]
    out = ["--output", str(tmp / "out")]
    return {
        "not a model": (
            ["--model", str(tmp / "notes"), *out],
            f"--model: {tmp / 'notes'} is neither a model directory (no config.json) nor a run "
            "directory (no model/config.json)",
        ),
        "missing model": (
            ["--model", str(tmp / "nope"), *out],
            f"--model: {tmp / 'nope'} does not exist; pass a Hub model name",
        ),
        "bare encoder": (["--model", str(tiny_bert), *out], "has no fine-tuned task head"),
        "output under a file": (
            [*ok, "--output", str(tmp / "file.txt" / "out")],
            f"--output: cannot create {tmp / 'file.txt' / 'out'}: {tmp / 'file.txt'} is a file, "
            "not a directory",
        ),
        "output is a file": (
            [*ok, "--output", str(tmp / "file.txt")],
            f"--output: {tmp / 'file.txt'} exists and is not a directory",
        ),
        # /sys refuses new entries even for root (a chmod 0555 dir does not stop root)
        "unwritable output": (
            [*ok, "--output", "/sys/pkd-export-test/out"],
            "--output: cannot create /sys/pkd-export-test/out: /sys is not writable",
        ),
        "output is the model": (
            [*ok, "--output", str(tiny_teacher.parent), "--overwrite"],
            f"--output: {tiny_teacher.parent} holds the --model {tiny_teacher}; writing there "
            "would destroy it; choose another --output",
        ),
        "opset too old": (
            [*ok, *out, "--opset", "11"],
            "--opset: 11 is not supported; the exporter supports 14..",
        ),
        "opset too new": ([*ok, *out, "--opset", "99"], "--opset: 99 is not supported"),
        "parity samples": (
            [*ok, *out, "--parity-samples", "0"],
            "--parity-samples: must be at least 1, got 0",
        ),
        "data dir without task": (
            [*ok, *out, "--data-dir", str(tmp)],
            "--data-dir: give --task too",
        ),
        "custom file without columns": (
            [*ok, *out, "--validation-file", str(tmp / "file.txt")],
            "--text-columns: required",
        ),
    }


CASES = [
    "not a model",
    "missing model",
    "bare encoder",
    "output under a file",
    "output is a file",
    "unwritable output",
    "output is the model",
    "opset too old",
    "opset too new",
    "parity samples",
    "data dir without task",
    "custom file without columns",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, tmp_path, tiny_teacher, tiny_bert, pkd_cli):
    argv, message = _bad_cases(tmp_path, tiny_teacher, tiny_bert)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert message in pkd_cli.error(["export", *argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_multiple_choice_model_is_refused(tiny_bert, tmp_path, pkd_cli):
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    AutoModelForMultipleChoice.from_pretrained(tiny_bert).save_pretrained(tmp_path / "mc")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "mc")
    out = tmp_path / "x"
    err = pkd_cli.error(["export", "--model", str(tmp_path / "mc"), "--output", str(out)])
    assert "is a multiple-choice model; `pkd export` supports sequence classifiers" in err
    assert not out.exists()


def test_load_onnx_errors(exported, tmp_path):
    with pytest.raises(PkdError, match=r"no model.onnx \(not a `pkd export` directory\)"):
        X.load_onnx(tmp_path)
    out, _ = exported
    copy = shutil.copytree(out, tmp_path / "fp32only")
    (copy / "model.int8.onnx").unlink()
    with pytest.raises(PkdError, match=r"no model.int8.onnx \(export with --quantize int8\)"):
        X.load_onnx(copy, int8=True)
    (copy / "config.json").unlink()
    with pytest.raises(PkdError, match="no config.json beside model.onnx"):
        X.load_onnx(copy)


# ---------------------------------------------------------------------------------------------
# The real MiniLM: a 3-layer student (new head) on real SST-2 dev sentences


def sst2_dev_sentences(n: int) -> list[str]:
    path = SHARED_SST2 / "dev.tsv"
    if path.is_file():
        rows = path.read_text(encoding="utf-8").splitlines()[1 : n + 1]
        return [r.split("\t")[0] for r in rows]
    return [s for s in X.PARITY_SENTENCES * (n // len(X.PARITY_SENTENCES) + 1)][:n]


@pytest.mark.slow
def test_minilm_student_export_int8(minilm, tmp_path, pkd_cli):
    from transformers import AutoTokenizer

    from pkd.models.encoders import load_for_finetuning
    from pkd.models.students import build_student
    from pkd.tasks import CLASSIFICATION

    teacher = load_for_finetuning(str(minilm), CLASSIFICATION, ("0", "1"))
    student = build_student(str(minilm), 3, teacher, CLASSIFICATION)
    assert student.config.num_hidden_layers == 3
    run = tmp_path / "run"
    student.save_pretrained(run / "model", safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(run / "model")
    data = ["--task", "sst2", "--data-dir", str(SHARED_SST2)] if SHARED_SST2.is_dir() else []
    out = tmp_path / "onnx"
    argv = ["export", "--model", str(run), "--output", str(out), "--quantize", "int8"]
    stdout = pkd_cli.ok(argv + data + ["--parity-samples", "200"]).out  # run dir -> model/
    report = json.loads(stdout)
    assert report["samples"] == 200 and report["model"] == str(run / "model")
    assert report["fp32"]["max_abs_diff"] <= 1e-3
    assert report["int8"]["agreement"] >= 0.95
    # int8 weights: about a quarter of the fp32 file; logits move, but only a little
    assert report["int8"]["file_bytes"] < 0.35 * report["fp32"]["file_bytes"]
    assert report["int8"]["max_abs_diff"] < 0.05
    # an independent check over the same sentences, through the serving API
    texts = sst2_dev_sentences(200)
    fp32, int8 = X.load_onnx(out), X.load_onnx(out, int8=True)
    enc = fp32.encode(texts)
    with torch.inference_mode():
        ref = student.eval()(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    assert np.abs(fp32.run(enc) - ref).max() <= 1e-3
    labels = [str(i) for i in ref.argmax(-1)]
    assert np.mean([a == b for a, b in zip(int8.predict(texts), labels, strict=True)]) >= 0.95


def test_predict_accepts_an_onnx_export(exported, trained, sst2_dir, tmp_path, pkd_cli):
    """`pkd predict --model EXPORT_DIR`: onnxruntime predictions, same as the PyTorch model's."""
    out, _ = exported
    onnx_file, torch_file = tmp_path / "onnx.tsv", tmp_path / "torch.tsv"
    common = ["--task", "sst2", "--data-dir", str(sst2_dir), "--split", "test"]
    pkd_cli.ok(["predict", "--model", str(out), *common, "--output-file", str(onnx_file)])
    model = str(trained / "model")
    pkd_cli.ok(["predict", "--model", model, *common, "--output-file", str(torch_file)])
    rows = onnx_file.read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 8
    assert rows == torch_file.read_text().splitlines()


def test_int8_agreement_counts_near_ties_only_within_the_margin(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    ref = np.array([[1.0, 0.9], [2.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    got = np.array([[0.8, 1.0], [0.0, 2.0], [0.0, 1.0], [0.4, 0.1]])
    r = X._compare(ref, got, True, f)
    # row 0 flips a 0.1-logit near-tie, row 1 flips a 2-logit decision
    assert (r["agreement"], r["agreement_beyond_ties"], r["near_ties"]) == (0.5, 0.75, 1)
    report = {"fp32": {"max_abs_diff": 0.0}, "int8": r, "samples": 4, "source": "s"}
    with pytest.raises(X.PkdError, match=r"agree with PyTorch on 75.0% < 95%.*near-ties"):
        X._check_parity(report)
    r["agreement_beyond_ties"] = 0.96  # strict agreement alone does not decide
    X._check_parity(report)


def test_load_onnx_spinning_is_a_session_option(exported):
    out, _ = exported
    for spinning, expected in [(True, "1"), (False, "0")]:
        options = X.load_onnx(out, threads=1, spinning=spinning).session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        assert options.intra_op_num_threads == 1
