"""The encoder support matrix (docs/encoders.md): every BERT-family architecture transformers 5
ships, as a tiny random model (hidden 32, 4 layers, the test tokenizer), through the whole
chain with both poolings, and the combinations pkd refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import WORDS, make_tokenizer, sentiment_rows, write_sst2

VOCAB = 5 + len(WORDS)  # the test tokenizer: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4
SHAPE = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 37, "max_position_embeddings": 64, "pad_token_id": 0}  # fmt: skip
SPECIALS = {"bos_token_id": 2, "eos_token_id": 3}
# No SDPA in transformers 5.24: pkd runs these with eager attention.
EAGER = ("deberta-v2", "mpnet", "roformer")


def tiny_config(arch: str, **extra):
    """A tiny random config of `arch` that fits the test tokenizer."""
    import transformers as T

    configs = {
        "bert": lambda: T.BertConfig(**SHAPE),
        # position ids from pad_token_id + 1; no token types, as RoBERTa's own checkpoints
        "roberta": lambda: T.RobertaConfig(**SHAPE, **SPECIALS, type_vocab_size=1),
        "xlm-roberta": lambda: T.XLMRobertaConfig(**SHAPE, **SPECIALS, type_vocab_size=1),
        "electra": lambda: T.ElectraConfig(**SHAPE, embedding_size=16),  # projected embeddings
        "deberta-v2": lambda: T.DebertaV2Config(  # as DeBERTa-v3: relative attention only
            **SHAPE,
            type_vocab_size=0,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            norm_rel_ebd="layer_norm",
        ),  # fmt: skip
        "mpnet": lambda: T.MPNetConfig(**SHAPE, **SPECIALS),  # relative attention buckets
        "distilbert": lambda: T.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=4,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            pad_token_id=0,
        ),  # fmt: skip
        "modernbert": lambda: T.ModernBertConfig(  # layers 0 and 3 global, 1 and 2 local
            **{**SHAPE, "intermediate_size": 38},
            **SPECIALS,
            cls_token_id=2,
            sep_token_id=3,
            global_attn_every_n_layers=3,
            local_attention=8,
        ),  # fmt: skip
        "albert": lambda: T.AlbertConfig(**SHAPE, embedding_size=16),  # one shared layer
        "camembert": lambda: T.CamembertConfig(**SHAPE, **SPECIALS, type_vocab_size=1),
        "ernie": lambda: T.ErnieConfig(**SHAPE),
        "roformer": lambda: T.RoFormerConfig(**SHAPE),  # rotary positions
    }
    config = configs[arch]()
    for key, value in extra.items():
        setattr(config, key, value)
    return config


ARCHS = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet", "distilbert",
         "modernbert", "albert", "camembert", "ernie", "roformer")  # fmt: skip


def make_encoder(path: Path, arch: str, **extra) -> Path:
    """A randomly initialised 'pre-trained' encoder of `arch` with the test tokenizer."""
    import torch
    from transformers import AutoModel

    path.mkdir(parents=True, exist_ok=True)
    make_tokenizer(path)
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(arch, **extra)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """SST-2 (GLUE layout) and its train sentences as a text file (`pkd pretrain`)."""
    d = write_sst2(tmp_path_factory.mktemp("glue") / "SST-2", n_train=32, n_dev=16)
    rows = (d / "train.tsv").read_text().splitlines()[1:]
    (d / "train.txt").write_text("\n".join(r.split("\t")[0] for r in rows) + "\n")
    return d


def train_args(data: Path) -> list:
    return ["--task", "sst2", "--data-dir", data, "--max-length", "16", "--epochs", "1",
            "--max-train-samples", "16", "--batch-size", "8", "--quiet"]  # fmt: skip


# Each method runs with the cached teacher under one pooling and online under the other.
DISTILL = {
    "cls": [("ft", "skip", "online"), ("kd", "skip", "cached"), ("pkd", "skip", "cached"),
            ("pkd", "last", "online")],
    "mean": [("ft", "skip", "cached"), ("kd", "skip", "online"), ("pkd", "skip", "online"),
             ("pkd", "last", "cached")],
}  # fmt: skip


def model_config(run: Path) -> dict:
    return json.loads((run / "model" / "config.json").read_text())


def check_student(config: dict, arch: str, pooling: str) -> None:
    """Two layers of the teacher's architecture, pooled as asked, run with the attention
    implementation the architecture has."""
    from transformers import AutoConfig

    from pkd.models.encoders import encoder_type, model_pooling, num_layers

    loaded = AutoConfig.for_model(config.pop("model_type"), **config)
    assert (encoder_type(loaded), model_pooling(loaded), num_layers(loaded)) == (arch, pooling, 2)
    assert loaded.pkd_attention == ("eager" if arch in EAGER else "sdpa")
    if arch == "modernbert":  # the teacher's first two: global, local
        assert loaded.layer_types == ["full_attention", "sliding_attention"]


def distill(pkd_cli, teacher: Path, out: Path, data: Path, method, strategy, mode) -> dict:
    argv = ["distill", "--teacher", teacher, "--output", out, "--student-layers", "2",
            "--method", method, "--strategy", strategy, "--teacher-mode", mode,
            "--allow-weak-teacher", *train_args(data)]  # fmt: skip
    pkd_cli.ok(argv)
    return json.loads((out / "metrics.json").read_text())


def trainer_loss(teacher: Path, out: Path, cached: bool) -> float:
    """Two steps of `PatientDistillationTrainer` (PKD-Skip, 4 -> 2 layers); the last loss."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainingArguments

    from pkd.config.sections import DistillConfig
    from pkd.hf import PatientDistillationTrainer, add_example_index

    tok = AutoTokenizer.from_pretrained(teacher)
    rows = sentiment_rows(16)
    train = Dataset.from_dict(
        {"sentence": [s for s, _ in rows], "label": [int(y) for _, y in rows]}
    )
    train = train.map(lambda b: tok(b["sentence"], max_length=16, truncation=True), batched=True)
    args = TrainingArguments(str(out), per_device_train_batch_size=8, max_steps=2, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True,
                             logging_steps=1)  # fmt: skip
    trainer = PatientDistillationTrainer(
        teacher=str(teacher), args=args, processing_class=tok,
        distill=DistillConfig(student_layers=2),
        train_dataset=add_example_index(train) if cached else train,
    )  # fmt: skip
    assert (getattr(trainer, "teacher_cache", None) is not None) is cached
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r][-1]


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("arch", ARCHS)
def test_whole_chain(arch, pooling, data, tmp_path, pkd_cli):
    base = make_encoder(tmp_path / "base", arch)
    teacher = tmp_path / "teacher"
    pkd_cli.ok(["finetune", "--model", base, "--output", teacher, "--pooling", pooling,
                *train_args(data)])  # fmt: skip
    assert model_config(teacher)["pkd_attention"] == ("eager" if arch in EAGER else "sdpa")

    for method, strategy, mode in DISTILL[pooling]:
        out = tmp_path / f"{method}-{strategy}-{mode}"
        metrics = distill(pkd_cli, teacher, out, data, method, strategy, mode)
        assert (metrics["method"], metrics["pooling"]) == (method, pooling)
        assert (metrics["teacher_cache"] is None) is (mode == "online" or method == "ft")
        check_student(model_config(out), arch, pooling)
    student = tmp_path / "pkd-skip-cached" if pooling == "cls" else tmp_path / "pkd-skip-online"

    # cls: from the pre-trained encoder; mean: from the mean-pooled teacher's encoder
    general = tmp_path / "general"
    pkd_cli.ok(["pretrain", "--teacher", base if pooling == "cls" else teacher / "model",
                "--text-file", data / "train.txt", "--output", general, "--student-layers", "2",
                "--max-length", "16", "--epochs", "1", "--batch-size", "8", "--quiet"])  # fmt: skip
    assert model_config(general)["pkd_pretrain"]["layers"] == 2

    out = pkd_cli.ok(["evaluate", "--model", student, "--task", "sst2", "--data-dir", data,
                      "--max-length", "16"]).out  # fmt: skip
    assert "accuracy" in out

    report = json.loads(
        pkd_cli.ok(
            [
                "export",
                "--model",
                student,
                "--output",
                tmp_path / "onnx",
                "--quantize",
                "int8",
                "--task",
                "sst2",
                "--data-dir",
                data,
            ]
        ).out  # fmt: skip
    )
    assert report["fp32"]["max_abs_diff"] <= 1e-3 and report["int8"]["agreement"] >= 0.5
    assert (tmp_path / "onnx" / "model.int8.onnx").is_file()

    pkd_cli.ok(["benchmark", "--models", student, "--batch-sizes", "1", "--seq-lengths", "8",
                "--threads", "1", "--warmup", "1", "--iterations", "2", "--output",
                tmp_path / "bench"])  # fmt: skip
    bench = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert [m["model"] for m in bench["models"]] == [student.name]

    assert math.isfinite(trainer_loss(teacher / "model", tmp_path / "hf", pooling == "cls"))


def test_mean_head_reads_distilbert_names():
    """A pooled config answers the standard names the encoder spells its own way."""
    from pkd.models.pooling import PkdPooledConfig

    config = PkdPooledConfig.from_encoder(tiny_config("distilbert"), num_labels=2)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 4, 4)
    config.num_hidden_layers = 2  # as from_pretrained(num_hidden_layers=2) sets it
    assert config.n_layers == 2 and "num_hidden_layers" not in config.to_dict()
    assert config.encoder_config().n_layers == 2
    with pytest.raises(AttributeError, match="no attribute 'not_a_key'"):
        _ = config.not_a_key


@pytest.mark.parametrize(("arch", "attention"), [("bert", "sdpa"), ("mpnet", "eager"),
                                                 ("deberta-v2", "eager")])  # fmt: skip
def test_mean_head_takes_the_attention_its_encoder_has(arch, attention):
    from pkd.models.pooling import PkdPooledConfig, PkdPooledForSequenceClassification

    config = PkdPooledConfig.from_encoder(tiny_config(arch), num_labels=2)
    model = PkdPooledForSequenceClassification(config)
    assert model.config._attn_implementation == attention
    assert model.encoder.config._attn_implementation == attention


def test_student_cut_keeps_the_first_layer_types():
    from pkd.models.students import depth_overrides

    config = tiny_config("modernbert")
    assert config.layer_types[:3] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert depth_overrides(config, 3, "student-layers") == {
        "num_hidden_layers": 3,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
    }
    assert depth_overrides(tiny_config("bert"), 3, "student-layers") == {"num_hidden_layers": 3}


@pytest.mark.parametrize(
    ("arch", "pad", "limit"),
    [("bert", 0, 514), ("roberta", 1, 512), ("roberta", 0, 513), ("mpnet", 1, 512),
     ("camembert", 1, 512)],
)  # fmt: skip
def test_max_length_limit_skips_the_position_offset(arch, pad, limit):
    """RoBERTa numbers positions from pad_token_id + 1, MPNet from 2: a 514-position RoBERTa
    takes 512 tokens."""
    from pkd.models.encoders import max_length_limit
    from pkd.models.pooling import PkdPooledConfig

    config = tiny_config(arch, max_position_embeddings=514, pad_token_id=pad)
    assert max_length_limit(config, None) == limit
    assert max_length_limit(PkdPooledConfig.from_encoder(config), None) == limit


@pytest.mark.slow
def test_roberta_max_length_over_its_positions_is_refused(data, tmp_path, pkd_cli):
    base = make_encoder(tmp_path / "base", "roberta")  # 64 positions, numbered from 1
    argv = ["finetune", "--model", base, "--output", tmp_path / "run", *train_args(data)]
    assert pkd_cli.error([*argv, "--max-length", "64"]) == (
        f"--max-length: 64 is more than the 63 positions of --model {base}; "
        "pass --max-length 63 or less"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_albert_of_several_layer_groups_is_refused(data, tmp_path, pkd_cli):
    """Its groups are spread over all its layers: its first M layers are no model."""
    base = make_encoder(tmp_path / "base", "albert", num_hidden_groups=2)
    teacher = tmp_path / "teacher"
    pkd_cli.ok(["finetune", "--model", base, "--output", teacher, *train_args(data)])
    want = (
        "--student-layers: ALBERT with num_hidden_groups=2 cannot keep its first 2 layers "
        "(its groups are spread over all layers); pkd cuts ALBERTs of one shared layer group"
    )
    student = ["--output", tmp_path / "student", "--student-layers", "2"]
    assert pkd_cli.error(["distill", "--teacher", teacher, *student, "--allow-weak-teacher",
                          *train_args(data)]) == want  # fmt: skip
    assert pkd_cli.error(["pretrain", "--teacher", base, *student, "--text-file",
                          data / "train.txt", "--max-length", "16"]) == want  # fmt: skip
    assert not (tmp_path / "student").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["distilbert", "modernbert"])
def test_pretrain_a_narrower_student_of_its_own_names(arch, data, tmp_path, pkd_cli):
    """A fresh student of another width: DistilBERT's feed-forward is `hidden_dim`,
    ModernBERT's `layer_types` are cut with its layers."""
    from transformers import AutoConfig

    base = make_encoder(tmp_path / "base", arch)
    out = tmp_path / "general"
    pkd_cli.ok(["pretrain", "--teacher", base, "--text-file", data / "train.txt", "--output", out,
                "--student-layers", "3", "--student-hidden-size", "16", "--max-length", "16",
                "--epochs", "1", "--batch-size", "8", "--quiet"])  # fmt: skip
    config = AutoConfig.from_pretrained(out / "model")
    assert (config.num_hidden_layers, config.hidden_size) == (3, 16)
    assert config.pkd_pretrain["init"] == "fresh (random) weights"
    if arch == "distilbert":
        assert config.hidden_dim == round(37 * 16 / 32)
    else:
        assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]


def test_token_positions_of_a_config_json():
    """What `benchmark` and the ONNX runner read from an export's config.json."""
    from pkd.models.encoders import token_positions

    roberta = {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}
    assert token_positions(roberta) == 512
    assert token_positions({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert token_positions({}) is None


@pytest.mark.slow
def test_sentence_transformers_mpnet_trains_with_the_default_pooling(data, tmp_path, pkd_cli):
    """all-mpnet-base-v2's layout: `--pooling auto` reads mean from 1_Pooling, and the
    mean-pooled MPNet runs eager (it has no SDPA) instead of crashing."""
    base = make_encoder(tmp_path / "mpnet", "mpnet")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]  # fmt: skip
    (base / "modules.json").write_text(json.dumps(modules))
    (base / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    (base / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    run = tmp_path / "run"
    pkd_cli.ok(["finetune", "--model", base, "--output", run, *train_args(data)])
    config = model_config(run)
    assert (config["model_type"], config["encoder_type"], config["pooling"]) == (
        "pkd_pooled", "mpnet", "mean",
    )  # fmt: skip
    assert config["pkd_attention"] == "eager"
