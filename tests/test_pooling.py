"""Mean-pooling teachers and students (`--pooling auto|cls|mean`) on tiny random BERTs."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_bert

from pkd.api import distill, evaluate, finetune
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
from pkd.config.sections import DataConfig, DistillConfig, TrainConfig
from pkd.models.encoders import checkpoint_pooling, layer_states, load_finetuned, resolve_pooling
from pkd.models.pooling import MODEL_TYPE, mean_pool

DATA = {"task": "sst2", "max_length": 16}
TRAIN = {"lr": 3e-3, "batch_size": 8, "quiet": True}


def sentence_transformers_dir(path: Path, mode: str = "mean_tokens") -> Path:
    """A tiny BERT laid out as a sentence-transformers checkpoint (modules.json + 1_Pooling)."""
    make_tiny_bert(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]  # fmt: skip
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    conf = {"word_embedding_dimension": 32, **{f"pooling_mode_{m}": m == mode for m in modes}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    return path


@pytest.fixture(scope="module")
def st_bert(tmp_path_factory) -> Path:
    return sentence_transformers_dir(tmp_path_factory.mktemp("st") / "bert")


@pytest.fixture(scope="module")
def mean_teacher(tmp_path_factory, st_bert, sst2_dir) -> Path:
    """A mean-pooled teacher fine-tuned by pkd (`--pooling auto` on a sentence-transformers dir)."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    cfg = FinetuneRunConfig(
        model=str(st_bert),
        output=str(out),
        data=DataConfig(data_dir=str(sst2_dir), **DATA),
        train=TrainConfig(epochs=6, **TRAIN),
    )
    finetune(cfg)
    return out


def batch_of(tokenizer, texts, **padding):
    return tokenizer(texts, return_tensors="pt", **padding)


# ---------------------------------------------------------------------------------------------
# Which pooling


def test_auto_reads_the_sentence_transformers_pooling_config(tmp_path, st_bert, tiny_bert):
    from pkd.models.encoders import load_config

    assert checkpoint_pooling(str(st_bert)) == (
        "mean",
        "its 1_Pooling/config.json says mean_tokens",
    )
    assert checkpoint_pooling(str(tiny_bert)) == (None, "it has no modules.json")
    cls_dir = sentence_transformers_dir(tmp_path / "cls", mode="cls_token")
    assert checkpoint_pooling(str(cls_dir))[0] == "cls"
    max_dir = sentence_transformers_dir(tmp_path / "max", mode="max_tokens")
    assert checkpoint_pooling(str(max_dir))[0] == "max_tokens"
    for path, want in ((st_bert, "mean"), (tiny_bert, "cls"), (cls_dir, "cls")):
        assert resolve_pooling("auto", str(path), load_config(str(path), "model"))[0] == want
    # an explicit choice wins; a mode pkd lacks falls back to mean with a warning
    config = load_config(str(st_bert), "model")
    assert resolve_pooling("cls", str(st_bert), config) == ("cls", "--pooling cls")
    assert resolve_pooling("auto", str(max_dir), load_config(str(max_dir), "model"))[0] == "mean"


def test_auto_pooling_says_what_it_chose_and_why(tmp_path, st_bert, tiny_bert, caplog):
    """Every --pooling auto choice is logged with its reason; a Hub checkpoint whose
    modules.json cannot be read (offline here) falls back to cls with a warning."""
    from pkd.models.encoders import load_config

    config = load_config(str(tiny_bert), "model")
    with caplog.at_level(logging.INFO, logger="pkd.models.encoders"):
        assert (
            resolve_pooling("auto", str(st_bert), load_config(str(st_bert), "model"))[0] == "mean"
        )
        assert resolve_pooling("auto", str(tiny_bert), config)[0] == "cls"
        pooling, why = resolve_pooling("auto", "someone/st-model", config)
    assert (pooling, why) == ("cls", "its modules.json could not be read from the Hub (offline?)")
    infos = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert infos == [
        ("INFO", f"--pooling auto: mean for {st_bert} (its 1_Pooling/config.json says mean_tokens)"),
        ("INFO", f"--pooling auto: cls for {tiny_bert} (it has no modules.json)"),
        ("WARNING", "--pooling auto: cls for someone/st-model (its modules.json could not be read "
         "from the Hub (offline?)); pass --pooling mean if it was trained with mean pooling"),
    ]  # fmt: skip


@pytest.mark.slow
def test_mean_teacher_records_its_pooling(mean_teacher):
    conf = json.loads((mean_teacher / "model" / "config.json").read_text())
    assert conf["model_type"] == MODEL_TYPE and conf["pooling"] == "mean"
    assert conf["architectures"] == ["PkdPooledForSequenceClassification"]
    assert (mean_teacher / "model" / "pooling.py").is_file()  # for trust_remote_code users
    saved = yaml.safe_load((mean_teacher / "config.yaml").read_text())
    assert saved["pooling"] == "auto" and saved["meta"]["resolved"] == {
        "pooling": "mean",
        "pooling_reason": "its 1_Pooling/config.json says mean_tokens",  # why auto chose it
    }
    metrics = json.loads((mean_teacher / "metrics.json").read_text())
    assert metrics["pooling"] == "mean"
    assert metrics["best"]["metrics"]["dev"]["accuracy"] >= 0.8  # it learned through the mean


@pytest.mark.slow
def test_cls_checkpoint_keeps_the_papers_head(tiny_bert, sst2_dir, tmp_path):
    cfg = FinetuneRunConfig(
        model=str(tiny_bert),
        output=str(tmp_path / "t"),
        data=DataConfig(data_dir=str(sst2_dir), **DATA),
        train=TrainConfig(epochs=1, **TRAIN),
    )
    assert finetune(cfg)["pooling"] == "cls"
    conf = json.loads((tmp_path / "t" / "model" / "config.json").read_text())
    assert conf["architectures"] == ["BertForSequenceClassification"]


# ---------------------------------------------------------------------------------------------
# The head


@pytest.mark.slow
def test_mean_pooling_ignores_padding(mean_teacher):
    from transformers import AutoTokenizer

    model = load_finetuned(str(mean_teacher), "model")
    tok = AutoTokenizer.from_pretrained(mean_teacher / "model")
    texts = ["good film", "the plot is very boring and the actors are awful"]
    short = batch_of(tok, texts, padding="longest")
    long = batch_of(tok, texts, padding="max_length", max_length=40)
    assert long["input_ids"].shape[1] > short["input_ids"].shape[1]
    with torch.no_grad():
        a = model(**short, output_hidden_states=True)
        b = model(**long, output_hidden_states=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    states_a = layer_states(a.hidden_states, short["attention_mask"], a.logits, "mean")
    states_b = layer_states(b.hidden_states, long["attention_mask"], b.logits, "mean")
    assert torch.allclose(states_a, states_b, atol=1e-5)
    # by hand: the mean of the real tokens' last-layer states, through the linear head
    real = short["attention_mask"][0].bool()
    pooled = a.hidden_states[-1][0][real].mean(0)
    assert torch.allclose(states_a[0, -1], pooled, atol=1e-6)
    assert torch.allclose(model.classifier(pooled), a.logits[0], atol=1e-5)


@pytest.mark.slow
def test_saved_mean_student_loads_with_auto_class_and_pipeline(mean_teacher, sst2_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = tmp_path / "student"
    cfg = DistillRunConfig(
        teacher=str(mean_teacher),
        output=str(out),
        data=DataConfig(data_dir=str(sst2_dir), **DATA),
        train=TrainConfig(epochs=1, **TRAIN),
        distill=DistillConfig(student_layers=2),
    )
    m = distill(cfg)
    assert m["pooling"] == "mean"  # inherited from the teacher
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert type(model).__name__ == "PkdPooledForSequenceClassification"
    assert model.config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(out / "model")
    texts = ["great movie", "awful plot"]
    with torch.no_grad():
        logits = model(**batch_of(tok, texts, padding=True)).logits
    # the same logits as pkd's own loader, and the same labels as the pipeline
    ours = load_finetuned(str(out), "model")
    with torch.no_grad():
        assert torch.allclose(ours(**batch_of(tok, texts, padding=True)).logits, logits)
    preds = pipeline("text-classification", model=str(out / "model"), tokenizer=str(out / "model"))
    labels = [p["label"] for p in preds(texts)]
    assert labels == [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    # evaluate scores it like training did
    ev = evaluate(str(out), DataConfig(data_dir=str(sst2_dir), **DATA))
    assert ev["accuracy"] == m["final"]["metrics"]["dev"]["accuracy"]


@pytest.mark.slow
def test_saved_model_loads_without_pkd_through_remote_code(mean_teacher):
    """`pooling.py` next to the weights needs nothing from pkd (trust_remote_code=True)."""
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        f"m = A.from_pretrained({str(mean_teacher / 'model')!r}, trust_remote_code=True).eval()\n"
        "assert 'pkd' not in sys.modules, 'pkd was imported'\n"
        "ids = torch.tensor([[2, 5, 6, 3]])\n"
        "print(type(m).__name__, m(input_ids=ids).logits.shape[-1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PkdPooledForSequenceClassification", "2"]


@pytest.mark.slow
def test_onnx_export_of_a_mean_pooled_model_passes_parity(mean_teacher, sst2_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from pkd.deploy.export import export

    report = export(
        str(mean_teacher),
        str(tmp_path / "onnx"),
        task="sst2",
        data_dir=str(sst2_dir),
        parity_samples=32,
    )
    assert report["samples"] == 32
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["fp32"]["agreement"] == 1.0
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    # its config.json loads without custom code: the encoder's, no auto_map
    conf = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert "auto_map" not in conf and conf["model_type"] == "bert"
    assert conf["pkd_pooling"] == "mean" and conf["id2label"] == {"0": "0", "1": "1"}
    # docs/serving.md's "plain onnxruntime, no pkd" recipe, in a fresh interpreter
    docs = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    recipe = docs.split("### Classify with plain onnxruntime")[1].split("```python")[1]
    recipe = recipe.split("```")[0].replace('"runs/sst2-pkd-onnx"', repr(str(tmp_path / "onnx")))
    recipe = recipe.replace("model.int8.onnx", "model.onnx")  # exported without int8 here
    script = (
        "from transformers import AutoConfig\n"
        + recipe
        + (f"\nAutoConfig.from_pretrained({str(tmp_path / 'onnx')!r}, trust_remote_code=False)\n")
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "custom code" not in out.stdout + out.stderr
    assert set(ast.literal_eval(out.stdout.strip().splitlines()[-1])) <= {"0", "1"}


# ---------------------------------------------------------------------------------------------
# The patient loss on the representation the model uses


@pytest.mark.slow
def test_patient_loss_with_mean_pooling_equals_a_hand_computation(mean_teacher, sst2_dir):
    from transformers import AutoTokenizer

    from pkd.models.students import build_student
    from pkd.objectives.mapping import layer_map
    from pkd.objectives.objective import Objective, loss_terms, online_teacher

    teacher = load_finetuned(str(mean_teacher), "teacher")
    student = build_student(
        str(mean_teacher), 2, teacher, "single_label_classification", pooling="mean"
    )
    student.eval()
    tok = AutoTokenizer.from_pretrained(mean_teacher / "model")
    batch = dict(batch_of(tok, ["good film", "the plot is very boring", "awful"], padding=True))
    batch["labels"] = torch.tensor([1, 0, 0])
    pairs = layer_map("skip", 4, 2)  # [(2, 1)]
    objective = Objective(
        terms=("ce", "kd", "pt"), alpha=0.5, beta=100.0, temperature=5.0, pooling="mean",
        pairs=pairs, teacher=online_teacher(teacher),
    )  # fmt: skip
    with torch.no_grad():
        got = loss_terms(student, batch, objective, regression=False)
        s = student(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        )
        t = teacher(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        )
    mask = batch["attention_mask"].unsqueeze(-1).float()
    sq = 0.0
    for t_layer, s_layer in pairs:
        hs = (s.hidden_states[s_layer] * mask).sum(1) / mask.sum(1)
        ht = (t.hidden_states[t_layer] * mask).sum(1) / mask.sum(1)
        hs, ht = hs / hs.norm(dim=-1, keepdim=True), ht / ht.norm(dim=-1, keepdim=True)
        sq += ((hs - ht) ** 2).sum()
    expected = sq / (len(pairs) * 3 * hs.shape[-1])  # F.mse_loss: mean over B x layers x H
    assert torch.allclose(got["pt"], expected, rtol=1e-5)
    # not the [CLS] states: the two poolings give different losses on the same batch
    cls_objective = Objective(**{**objective.__dict__, "pooling": "cls"})
    with torch.no_grad():
        assert not torch.allclose(loss_terms(student, batch, cls_objective, False)["pt"], expected)


@pytest.mark.slow
def test_cached_and_online_teacher_agree_with_mean_pooling(mean_teacher, sst2_dir, tmp_path):
    from pkd.data.loading import collator, encode_all, load_splits
    from pkd.models.encoders import load_tokenizer
    from pkd.objectives.cache import build_or_load, cache_extra
    from pkd.objectives.objective import online_teacher

    teacher = load_finetuned(str(mean_teacher), "teacher")
    tok = load_tokenizer(str(mean_teacher), "teacher")
    data = DataConfig(data_dir=str(sst2_dir), **DATA)
    spec, splits = load_splits(data, ["train"])
    enc = encode_all(splits, tok, 16, dict(teacher.config.label2id), True)["train"]
    cfg = DistillRunConfig(teacher=str(mean_teacher), output=str(tmp_path / "x"), data=data)
    cache = build_or_load(
        teacher,
        enc,
        collator(tok),
        "sst2",
        cache_extra(spec.name, cfg.data.max_length, spec.labels),
        tmp_path / "c",
    )
    assert cache.manifest["pooling"] == "mean"
    batch = collator(tok)([enc[i] for i in (5, 0, 17, 3)])
    layers = [1, 2, 4]
    on_logits, on_states = online_teacher(teacher)(batch, layers)
    ca_logits, ca_states = cache.targets(batch["example_index"], layers)
    assert torch.allclose(ca_logits, on_logits, atol=1e-4)
    assert torch.allclose(ca_states, on_states, atol=1e-2)  # fp16 storage
    mask = batch["attention_mask"]
    with torch.no_grad():
        out = teacher(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
    assert torch.allclose(on_states[:, 0], mean_pool(out.hidden_states[1], mask), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Teacher and student must pool alike for PKD


@pytest.mark.slow
def test_pooling_mismatch_is_refused_for_pkd_and_warned_for_kd(
    mean_teacher, sst2_dir, tmp_path, caplog, pkd_cli
):
    argv = ["distill", "--teacher", str(mean_teacher), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--max-length", "16", "--epochs", "1", "--batch-size", "8", "--quiet",
            "--student-layers", "2", "--pooling", "cls"]  # fmt: skip
    err = pkd_cli.error([*argv, "--output", str(tmp_path / "pkd")])
    assert err.startswith("--pooling: the student would pool cls but the teacher")
    assert "pools mean" in err
    assert not (tmp_path / "pkd").exists()
    pkd_cli.ok([*argv, "--method", "kd", "--output", str(tmp_path / "kd")])
    assert "allowed for --method kd" in caplog.text
    assert json.loads((tmp_path / "kd" / "metrics.json").read_text())["pooling"] == "cls"
    conf = json.loads((tmp_path / "kd" / "model" / "config.json").read_text())
    assert conf["architectures"] == ["BertForSequenceClassification"]


@pytest.mark.slow
def test_finetune_cli_pooling_option(st_bert, sst2_dir, tmp_path, pkd_cli):
    argv = ["finetune", "--model", str(st_bert), "--task", "sst2", "--data-dir", str(sst2_dir),
            "--max-length", "16", "--epochs", "1", "--batch-size", "8", "--quiet",
            "--output", str(tmp_path / "t"), "--pooling", "cls"]  # fmt: skip
    pkd_cli.ok(argv)
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["pooling"] == "cls"
    saved = yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())
    resolved = {"pooling": "cls", "pooling_reason": "--pooling cls"}
    assert saved["pooling"] == "cls" and saved["meta"]["resolved"] == resolved


@pytest.mark.slow
def test_dry_runs_show_the_pooling(mean_teacher, st_bert, sst2_dir, tmp_path, pkd_cli):
    common = ["--task", "sst2", "--data-dir", str(sst2_dir), "--max-length", "16", "--quiet",
              "--dry-run", "--output", str(tmp_path / "x")]  # fmt: skip
    for argv, want in (
        (["finetune", "--model", str(st_bert), *common], "pooling:    mean (masked token mean)"),
        (["distill", "--teacher", str(mean_teacher), "--student-layers", "2", *common],
         "pooling:    mean (masked token mean), head and patient loss"),
        # the patient loss matches token means, as `layer_states` pools them, not [CLS]
        (["distill", "--teacher", str(mean_teacher), "--student-layers", "2", *common],
         "loss:       0.5*CE + 0.5*KD(kl, x T^2, T=10) + 100*PT(mean, L2-normalised token-mean)"),
    ):  # fmt: skip
        assert want in pkd_cli.ok(argv).out.splitlines()
    assert not (tmp_path / "x").exists()
