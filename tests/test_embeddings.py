"""Embedding models on tiny random BERTs: the embedding objective of `pkd pretrain` (terms,
cache, projections), its students as sentence-transformers directories, `pkd evaluate` on
scored pairs, `--eval-pairs`, `pkd export`/`benchmark` of an embedding student, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert, run_killed_after_checkpoint, sentiment_rows
from safetensors.torch import load_file

from pkd.models.sentence_transformers import SentenceHead, load_dense, sentence_head
from pkd.objectives.embedding import embedding_losses, similarity_matrix

TRAIN = ["--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--max-length", "16"]
TRAIN += ["--eval-texts", "20", "--logging-steps", "4", "--quiet", "--student-layers", "2"]
SENTENCES = ["the movie was good", "awful plot and boring actors", "a film", "not very nice"]


def st_modules(path: Path, hidden: int = 32, normalize: bool = True) -> Path:
    """Make a model directory a sentence-transformers one: mean pooling (+ Normalize)."""
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    modules += [("2_Normalize", "Normalize")] if normalize else []
    (path / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
        for i, (p, t) in enumerate(modules)
    ]))  # fmt: skip
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    return path


def write_pairs(path: Path, n: int = 40, seed: int = 3, score=None) -> Path:
    """Scored pairs with STS-B's column names (TSV, CSV or JSONL by the suffix)."""
    rng = random.Random(seed)
    rows = [
        {"sentence1": a, "sentence2": b, "score": score or f"{rng.uniform(0, 5):.2f}"}
        for (a, _), (b, _) in zip(sentiment_rows(n, seed), sentiment_rows(n, seed + 1), strict=True)
    ]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "," if path.suffix == ".csv" else "\t"
        lines = [sep.join(rows[0]), *(sep.join(r.values()) for r in rows)]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def st_teacher(tmp_path_factory) -> Path:
    return st_modules(make_tiny_bert(tmp_path_factory.mktemp("st") / "teacher", seed=2))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(s for s, _ in sentiment_rows(160)) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.tsv")


@pytest.fixture(scope="module")
def student(tmp_path_factory, st_teacher, corpus, pairs, pkd_cli) -> Path:
    """An embedding student of the teacher's width, selected on --eval-pairs."""
    out = tmp_path_factory.mktemp("emb") / "run"
    pkd_cli.ok(["pretrain", "--teacher", st_teacher, "--text-file", corpus, "--output", out,
                "--similarity-weight", "1", "--eval-pairs", pairs, *TRAIN])  # fmt: skip
    return out


def narrow_args(teacher: Path, corpus: Path, out: Path) -> list:
    return ["pretrain", "--teacher", teacher, "--text-file", corpus, "--output", out,
            "--student-hidden-size", "16", "--teacher-mode", "cached", "--pt-tokens", "mean",
            "--cosine-weight", "1", *TRAIN]  # fmt: skip


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, st_teacher, corpus, pkd_cli) -> Path:
    """A narrower embedding student (hidden 16 < 32), with the teacher cache."""
    out = tmp_path_factory.mktemp("emb") / "narrow"
    pkd_cli.ok(narrow_args(st_teacher, corpus, out))
    return out


def pkd_embeddings(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """The embeddings as pkd computes them: its encoder, its head, its dense layer."""
    from transformers import AutoModel, AutoTokenizer

    head = sentence_head(str(model_dir))
    encoder, tok = AutoModel.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = head(encoder(**batch).last_hidden_state, batch["attention_mask"])
        dense = load_dense(str(model_dir))
        return head.finish(dense(pooled) if dense is not None else pooled)


# ---------------------------------------------------------------------------------------------
# The terms


def test_embedding_terms_by_hand():
    torch.manual_seed(0)
    s, t = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    terms = embedding_losses(s, t, ("emb", "cos", "sim"))
    # EMB is sentence-transformers' MSELoss (the mean over B and H) times H
    assert torch.isclose(terms["emb"], torch.nn.MSELoss()(s, t) * 8)
    cos = torch.stack([torch.dot(a, b) for a, b in zip(s, t, strict=True)])
    assert torch.isclose(terms["cos"], (1 - cos).mean())
    assert torch.isclose(terms["emb"], 2 * terms["cos"], atol=1e-6)  # unit vectors
    assert torch.allclose(similarity_matrix(s), s @ s.T, atol=1e-6)
    assert torch.isclose(terms["sim"], ((s @ s.T - t @ t.T) ** 2).mean())
    assert embedding_losses(t, t, ("emb", "cos", "sim"))["sim"] == 0


def test_sentence_head_reads_the_teacher(st_teacher, tiny_bert):
    assert sentence_head(str(st_teacher)) == SentenceHead("mean", True, 32, False)
    assert sentence_head(str(tiny_bert)) is None  # no modules.json: not an embedding model


# ---------------------------------------------------------------------------------------------
# The run and its sentence-transformers directory


def test_embedding_objective_is_the_default_for_a_sentence_transformers_teacher(student):
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["loss_weights"] == {"pt": 1.0, "top": 1.0, "emb": 1.0, "sim": 1.0}
    rows = [json.loads(line) for line in (student / "log.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "share_emb" in r)
    shares = sum(step[f"share_{k}"] for k in ("pt", "top", "emb", "sim"))
    assert shares == pytest.approx(1.0)
    best = metrics["best"]["metrics"]
    assert set(best["pairs"]) == {"spearman", "pearson"}  # --eval-pairs selects, first
    history = [h["metrics"]["pairs"]["spearman"] for h in metrics["history"]]
    assert best["pairs"]["spearman"] == max(history)
    config = json.loads((student / "model" / "config.json").read_text())
    assert config["pkd_pretrain"]["objective"] == "embedding"
    assert "SentenceTransformer(" in (student / "model" / "README.md").read_text()  # the card


def test_general_teacher_keeps_the_general_objective(tiny_bert, corpus, tmp_path, pkd_cli):
    pkd_cli.ok(["pretrain", "--teacher", tiny_bert, "--text-file", corpus, "--output",
                tmp_path / "r", *TRAIN, "--epochs", "1"])  # fmt: skip
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["loss_weights"] == {"pt": 1.0, "top": 1.0}
    assert not (tmp_path / "r" / "model" / "modules.json").exists()


def test_student_loads_in_sentence_transformers_with_pkds_embeddings(student):
    from sentence_transformers import SentenceTransformer

    model_dir = student / "model"
    modules = json.loads((model_dir / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    got = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, convert_to_tensor=True
    )
    want = pkd_embeddings(model_dir, SENTENCES)
    assert torch.allclose(got.cpu(), want, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_narrow_student_has_its_dense_layer(narrow, st_teacher):
    from sentence_transformers import SentenceTransformer

    model_dir = narrow / "model"
    modules = json.loads((model_dir / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    got = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, convert_to_tensor=True
    )
    assert got.shape == (len(SENTENCES), 32)  # the teacher's width, through the dense layer
    assert torch.allclose(got.cpu(), pkd_embeddings(model_dir, SENTENCES), atol=1e-5)
    metrics = json.loads((narrow / "metrics.json").read_text())
    assert metrics["teacher_cache"]["path"].split("/")[-1].startswith("embedding-mean-")
    assert set(metrics["loss_weights"]) == {"pt", "top", "emb", "cos"}


def test_resume_keeps_the_dense_layer(narrow, st_teacher, corpus, tmp_path, pkd_cli):
    """Killed mid-epoch 2 and resumed: the weights and the dense layer of an uninterrupted run."""
    run = tmp_path / "killed"
    args = [*narrow_args(st_teacher, corpus, run), "--save-steps", "4"]
    proc = run_killed_after_checkpoint(12, args)  # 9 steps per epoch
    assert proc.returncode == -9, proc.stderr[-2000:]
    pkd_cli.ok([*args, "--resume"])
    for f in ("model.safetensors", "2_Dense/model.safetensors"):
        a, b = load_file(narrow / "model" / f), load_file(run / "model" / f)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), f


def test_cached_embedding_equals_the_online_one(st_teacher):
    from transformers import AutoModel, AutoTokenizer

    from pkd.objectives.pretraining import CacheableTeacher, online_signals

    teacher, tok = AutoModel.from_pretrained(st_teacher), AutoTokenizer.from_pretrained(st_teacher)
    head = sentence_head(str(st_teacher))
    batch = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    online = online_signals(teacher, "mean", False, head.embed)(batch, [2, 4])
    with torch.no_grad():
        out = CacheableTeacher(teacher, "mean", head.embed)(**batch, output_hidden_states=True)
    assert torch.allclose(out.logits, online["embedding"], atol=1e-6)
    cached = torch.stack([out.hidden_states[i][:, 0] for i in (2, 4)], dim=1)
    assert torch.allclose(cached, online["states"][:, :, 0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# pkd evaluate, export, benchmark


def test_evaluate_scores_sts_pairs(student, tmp_path, pkd_cli):
    stsb = tmp_path / "STS-B"
    stsb.mkdir()
    write_pairs(stsb / "dev.tsv")
    out = pkd_cli.ok(["evaluate", "--model", student, "--task", "stsb", "--data-dir", stsb])
    metrics = json.loads(out.out)
    assert metrics["task"] == "stsb" and metrics["examples"] == 40 and metrics["embedding"]
    # by hand: the cosine similarities' Spearman
    from scipy.stats import spearmanr

    from pkd.data.text import read_pairs

    raw = read_pairs(str(stsb / "dev.tsv"))
    a, b = (pkd_embeddings(student / "model", t) for t in (raw.text_a, raw.text_b))
    want = spearmanr(F.cosine_similarity(a, b).numpy(), raw.labels)[0]
    assert metrics["spearman"] == pytest.approx(want, abs=1e-6)
    assert (student / "eval_stsb_dev.json").is_file()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_evaluate_reads_the_users_pairs(suffix, student, tmp_path, pkd_cli):
    f = write_pairs(tmp_path / f"pairs{suffix}")
    out = pkd_cli.ok(["evaluate", "--model", student, "--validation-file", f, "--text-columns",
                      "sentence1,sentence2", "--label-column", "score",
                      "--output-file", tmp_path / "m.json"])  # fmt: skip
    assert set(json.loads(out.out)) >= {"spearman", "pearson"}


def test_export_and_benchmark_an_embedding_student(narrow, tmp_path, pkd_cli):
    pytest.importorskip("onnxruntime")
    out = pkd_cli.ok(["export", "--model", narrow, "--output", tmp_path / "onnx",
                      "--quantize", "int8", "--parity-samples", "16"])  # fmt: skip
    report = json.loads(out.out)
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["int8"]["cosine_mean"] > 0.9
    assert not (tmp_path / "onnx" / "modules.json").exists()
    assert report["output_names"] == ["logits"]
    pkd_cli.ok(["benchmark", "--models", narrow, "--batch-sizes", "2", "--seq-lengths", "8",
                "--iterations", "2", "--warmup", "1"])  # fmt: skip
    pkd_cli.ok(["benchmark", "--models", tmp_path / "onnx", "--backend", "onnx",
                "--batch-sizes", "2", "--seq-lengths", "8", "--iterations", "2", "--warmup", "1"])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Bad input


def test_pairs_without_a_score_column(student, st_teacher, corpus, tmp_path, pkd_cli):
    f = tmp_path / "pairs.tsv"
    f.write_text("sentence1\tsentence2\nthe film\ta movie\n")
    msg = pkd_cli.error(["pretrain", "--teacher", st_teacher, "--text-file", corpus,
                         "--output", tmp_path / "r", "--eval-pairs", f, *TRAIN])  # fmt: skip
    assert msg == f"{f}:1: no column 'score' in header ['sentence1', 'sentence2']"
    msg = pkd_cli.error(["evaluate", "--model", student, "--validation-file", f,
                         "--text-columns", "sentence1,sentence2", "--label-column", "score"])  # fmt: skip
    assert msg == f"{f}:1: no column 'score' in header ['sentence1', 'sentence2']"


def test_scores_that_are_not_numbers(student, tmp_path, pkd_cli):
    f = write_pairs(tmp_path / "pairs.jsonl", n=3, score="high")
    msg = pkd_cli.error(["evaluate", "--model", student, "--validation-file", f,
                         "--text-columns", "sentence1,sentence2", "--label-column", "score"])  # fmt: skip
    assert msg == f"{f}:1: score 'high' is not a number"


def test_one_text_column_is_not_pairs(student, tmp_path, pkd_cli):
    f = write_pairs(tmp_path / "pairs.jsonl", n=3)
    msg = pkd_cli.error(["evaluate", "--model", student, "--validation-file", f,
                         "--text-columns", "sentence1", "--label-column", "score"])  # fmt: skip
    assert msg.startswith(f"{f}: scored pairs need two text columns")


def test_a_teacher_that_is_not_an_encoder(corpus, tmp_path, pkd_cli):
    from conftest import make_tokenizer
    from transformers import GPT2Config, GPT2Model

    path = tmp_path / "gpt2"
    make_tokenizer(path)
    GPT2Model(GPT2Config(vocab_size=27, n_embd=16, n_layer=2, n_head=2)).save_pretrained(path)
    msg = pkd_cli.error(["pretrain", "--teacher", path, "--text-file", corpus,
                         "--output", tmp_path / "r", *TRAIN])  # fmt: skip
    assert msg.startswith(f"--teacher: {path} is a gpt2 model, not an encoder; pkd distils")


def test_a_mean_pooled_classifiers_encoder_in_sentence_transformers(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from pkd.models.encoders import load_for_finetuning
    from pkd.models.sentence_transformers import write_encoder

    clf = load_for_finetuning(str(tiny_bert), "classification", ("0", "1"), pooling="mean")
    clf.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "clf")
    st = SentenceTransformer(str(write_encoder(str(tmp_path / "clf"), str(tmp_path / "st"))))
    got = st.encode(SENTENCES, convert_to_tensor=True).cpu()
    batch = AutoTokenizer.from_pretrained(tiny_bert)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = clf.eval().encoder(**batch).last_hidden_state
    assert torch.allclose(
        got, SentenceHead("mean", False)(states, batch["attention_mask"]), atol=1e-5
    )
