"""The one loop on tiny random BERTs: fine-tuning learns, distillation logs its terms."""

import json

from pkd import config as C
from pkd.api import distill, finetune


def _finetune(tiny_bert, sst2_dir, out, **train):
    cfg = C.FinetuneConfig(
        model=str(tiny_bert),
        output=str(out),
        data=C.DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
        train=C.TrainConfig(
            epochs=train.pop("epochs", 3), lr=3e-3, batch_size=8, quiet=True, **train
        ),
    )
    return finetune(cfg)


def test_finetune_learns_toy_sentiment(tiny_bert, sst2_dir, tmp_path):
    m = _finetune(tiny_bert, sst2_dir, tmp_path / "run", epochs=8)
    assert m["best"]["metrics"]["dev"]["accuracy"] >= 0.8
    for name in (
        "config.yaml",
        "metrics.json",
        "log.jsonl",
        "model/config.json",
        "model/model.safetensors",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("ce" in r and "lr" in r and "step" in r for r in rows)
    assert any("dev/accuracy" in r for r in rows)
    assert not (tmp_path / "run" / "checkpoints").exists()  # removed after a finished run


def test_distill_methods_log_their_terms(tiny_bert, sst2_dir, tmp_path):
    _finetune(tiny_bert, sst2_dir, tmp_path / "teacher", epochs=8)
    expected = {"ft": {"ce"}, "kd": {"ce", "kd"}, "pkd": {"ce", "kd", "pt"}}
    for method, terms in expected.items():
        cfg = C.DistillRunConfig(
            teacher=str(tmp_path / "teacher" / "model"),
            output=str(tmp_path / method),
            data=C.DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
            train=C.TrainConfig(epochs=1, lr=1e-3, batch_size=8, quiet=True),
            distill=C.DistillConfig(method=method, student_layers=2),
        )
        m = distill(cfg)
        rows = [
            json.loads(line) for line in (tmp_path / method / "log.jsonl").read_text().splitlines()
        ]
        logged = {k for r in rows for k in r if k in ("ce", "kd", "pt")}
        assert logged == terms, method
        assert m["layer_map"] == ([[2, 1]] if method == "pkd" else [])
