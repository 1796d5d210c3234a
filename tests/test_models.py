"""Students are the first M layers (and embeddings) of the pre-trained init checkpoint."""

import json

import pytest
import torch
from conftest import WORDS, make_tiny_bert, make_tiny_teacher

from pkd.errors import PkdError
from pkd.models.encoders import (
    BASE_MODEL_KEY,
    layer_states,
    load_finetuned,
    model_labels,
    num_layers,
)
from pkd.models.students import build_student
from pkd.tasks import MULTIPLE_CHOICE

SLC = "single_label_classification"
VOCAB = 5 + len(WORDS)


@pytest.fixture(scope="module")
def named_teacher(tmp_path_factory, tiny_bert):
    """A fine-tuned-looking 4-layer BERT classifier with named labels."""
    path = tmp_path_factory.mktemp("named") / "teacher"
    make_tiny_teacher(path, tiny_bert, labels=("negative", "positive"))
    return load_finetuned(str(path))


def _save(model, path):
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def _layer_index(key: str) -> int | None:
    """'encoder.layer.3.attention...' -> 3; None for embeddings, pooler, head."""
    parts = key.split(".")
    if "layer" in parts:
        i = parts.index("layer") + 1
        if i < len(parts) and parts[i].isdigit():
            return int(parts[i])
    return None


def assert_truncated_copy(student, init_dir, m: int):
    """The student's encoder = the init checkpoint's embeddings and layers 0..m-1, exactly."""
    from transformers import AutoModel

    init = AutoModel.from_pretrained(init_dir).state_dict()
    body = student.base_model.state_dict()
    assert student.config.num_hidden_layers == m
    layers = {_layer_index(k) for k in body} - {None}
    assert layers == set(range(m))
    assert any(k.startswith("embeddings.") for k in body)
    for key, value in body.items():
        assert key in init, key
        assert torch.equal(value, init[key]), key
    # what the student lacks of init: layers >= m (and BERT's pooler, when the head has none)
    missing = set(init) - set(body)
    assert all((_layer_index(k) or 0) >= m or k.startswith("pooler.") for k in missing), missing
    assert any(_layer_index(k) == m for k in missing)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_student_is_first_m_layers_of_init(tiny_bert, named_teacher, m):
    student = build_student(str(tiny_bert), m, named_teacher, SLC)
    assert type(student).__name__ == "BertForSequenceClassification"
    assert len(student.bert.encoder.layer) == m
    assert_truncated_copy(student, tiny_bert, m)
    # the pooler also comes from init (BERT's classification head reads it)
    from transformers import BertModel

    pre = BertModel.from_pretrained(tiny_bert)
    assert torch.equal(student.bert.pooler.dense.weight, pre.pooler.dense.weight)
    # label names and order come from the teacher; the head is new
    assert student.config.id2label == {0: "negative", 1: "positive"}
    assert student.config.label2id == {"negative": 0, "positive": 1}
    assert student.config.num_labels == 2
    assert student.config.problem_type == SLC
    assert student.config.to_dict()[BASE_MODEL_KEY] == str(tiny_bert)


def test_student_full_depth_is_allowed(tiny_bert, named_teacher):
    student = build_student(str(tiny_bert), 4, named_teacher, SLC)
    assert len(student.bert.encoder.layer) == 4


@pytest.mark.parametrize("m", [5, 0, -1])
def test_student_depth_impossible_for_init(tiny_bert, named_teacher, m):
    with pytest.raises(PkdError) as e:
        build_student(str(tiny_bert), m, named_teacher, SLC)
    assert str(e.value) == (
        f"--student-layers: {m} is impossible for the 4 layers of {tiny_bert} (need 1 <= M <= 4)"
    )


def test_student_of_another_width_keeps_its_init_width(tmp_path, named_teacher):
    """Another hidden size than the teacher's is no longer refused (issue 18): the student
    is the init's first M layers at the init's width (PKD then goes through projections)."""
    from safetensors.torch import load_file

    narrow = make_tiny_bert(tmp_path / "narrow", hidden=16)
    student = build_student(str(narrow), 2, named_teacher, SLC)
    assert student.config.hidden_size == 16 and len(student.bert.encoder.layer) == 2
    init = load_file(narrow / "model.safetensors")
    got = student.state_dict()
    for key in ("encoder.layer.1.output.dense.weight", "embeddings.word_embeddings.weight"):
        assert torch.equal(got[f"bert.{key}"], init[key]), key
    assert model_labels(student) == model_labels(named_teacher)


def test_student_vocab_mismatch(tmp_path, named_teacher):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB + 10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    path = _save(BertModel(config), tmp_path / "bigvocab")
    with pytest.raises(PkdError, match=rf"vocab_size={VOCAB + 10} but the teacher has vocab_size"):
        build_student(str(path), 2, named_teacher, SLC)


def test_student_architecture_mismatch(tmp_path, named_teacher):
    # DistilBERT can be truncated (see below), but not to become a BERT teacher's student
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64
    )
    path = _save(DistilBertModel(config), tmp_path / "distil")
    with pytest.raises(PkdError) as e:
        build_student(str(path), 1, named_teacher, SLC)
    assert "model_type=distilbert but the teacher has model_type=bert" in str(e.value)


def test_distilbert_truncates_through_n_layers(tmp_path):
    # DistilBertConfig maps num_hidden_layers onto n_layers, so a DistilBERT teacher works
    from transformers import (
        AutoModelForSequenceClassification,
        DistilBertConfig,
        DistilBertModel,
    )

    torch.manual_seed(3)
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=64
    )
    init = _save(DistilBertModel(config), tmp_path / "distil")
    teacher = AutoModelForSequenceClassification.from_pretrained(init, num_labels=2)
    student = build_student(str(init), 2, teacher, SLC)
    assert student.config.n_layers == 2
    assert len(student.distilbert.transformer.layer) == 2
    assert_truncated_copy(student, init, 2)


def test_architecture_without_num_hidden_layers(tmp_path, named_teacher):
    from transformers import PerceiverConfig

    path = tmp_path / "perceiver"
    PerceiverConfig(d_model=32, num_latents=4, d_latents=32).save_pretrained(path)
    with pytest.raises(PkdError) as e:
        build_student(str(path), 2, named_teacher, SLC)
    msg = str(e.value)
    assert "architecture 'perceiver' has no num_hidden_layers" in msg
    assert "\n" not in msg
    with pytest.raises(PkdError, match="'perceiver'"):
        num_layers(PerceiverConfig())


def test_student_init_missing_dir(tmp_path, named_teacher):
    with pytest.raises(PkdError, match=r"^--student-init: .*nope does not exist; pass a Hub"):
        build_student(str(tmp_path / "nope"), 2, named_teacher, SLC)


def test_multiple_choice_student(tiny_bert, named_teacher):
    student = build_student(str(tiny_bert), 2, named_teacher, MULTIPLE_CHOICE)
    assert type(student).__name__ == "BertForMultipleChoice"
    assert_truncated_copy(student, tiny_bert, 2)


# ---------------------------------------------------------------------------------------------
# Other BERT-family encoders


def _tiny_roberta(path):
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(1)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=66,  # RoBERTa positions start after the padding index
        pad_token_id=1,
    )
    return _save(RobertaModel(config), path)


def _tiny_electra(path):
    from transformers import ElectraConfig, ElectraModel

    torch.manual_seed(2)
    config = ElectraConfig(
        vocab_size=VOCAB,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return _save(ElectraModel(config), path)


@pytest.mark.parametrize(
    ("make", "cls_name"),
    [
        (_tiny_roberta, "RobertaForSequenceClassification"),
        (_tiny_electra, "ElectraForSequenceClassification"),
    ],
)
def test_truncation_other_encoders(tmp_path, make, cls_name):
    from transformers import AutoModelForSequenceClassification

    init = make(tmp_path / "init")
    teacher = AutoModelForSequenceClassification.from_pretrained(
        init, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}
    )
    student = build_student(str(init), 2, teacher, SLC)
    assert type(student).__name__ == cls_name
    assert_truncated_copy(student, init, 2)
    assert student.config.id2label == {0: "a", 1: "b", 2: "c"}
    # the student runs and exposes M+1 hidden states
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    out = student(input_ids=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 3)
    mask = torch.ones_like(ids)
    assert layer_states(out.hidden_states, mask, out.logits).shape == (2, 3, 32)


# ---------------------------------------------------------------------------------------------
# Loading fine-tuned models


def test_load_finetuned_teacher(tiny_teacher):
    model = load_finetuned(str(tiny_teacher))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not model.training
    assert model.config.num_hidden_layers == 4


def test_load_finetuned_refuses_bare_encoder(tiny_bert):
    with pytest.raises(PkdError) as e:
        load_finetuned(str(tiny_bert))
    msg = str(e.value)
    assert msg.startswith(f"--teacher: {tiny_bert} has no fine-tuned task head")
    assert "BertModel" in msg
    assert "fine-tune it first with `pkd finetune`" in msg


def test_load_finetuned_option_name_in_message(tiny_bert):
    with pytest.raises(PkdError, match="^--model: "):
        load_finetuned(str(tiny_bert), option="model")


def test_load_finetuned_refuses_pickled_weights(tmp_path, tiny_teacher):
    # a dir with config.json and only pytorch_model.bin: never unpickled
    model = load_finetuned(str(tiny_teacher))
    path = tmp_path / "pickled"
    path.mkdir()
    (path / "config.json").write_text((tiny_teacher / "config.json").read_text())
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(PkdError) as e:
        load_finetuned(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: no *.safetensors weights")
    assert "pickled .bin weights are not loaded" in msg


def test_load_finetuned_not_a_model_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match=r"^--teacher: .*empty is neither a model directory"):
        load_finetuned(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(PkdError, match=r"^--teacher: cannot load a model config from"):
        load_finetuned(str(tmp_path / "bad"))


def test_damaged_weights_are_a_pkd_error(tmp_path, tiny_bert, tiny_teacher, named_teacher):
    import shutil

    for src, name in ((tiny_teacher, "teacher"), (tiny_bert, "init")):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        f = dst / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])  # a download cut short
    with pytest.raises(PkdError) as e:
        load_finetuned(str(tmp_path / "teacher"))
    assert str(e.value).startswith(f"--teacher: cannot load the weights of {tmp_path / 'teacher'}")
    assert "\n" not in str(e.value)
    with pytest.raises(PkdError, match=r"^--student-init: cannot load the weights of"):
        build_student(str(tmp_path / "init"), 2, named_teacher, SLC)


# ---------------------------------------------------------------------------------------------
# [CLS] states


def test_cls_states_classification(named_teacher):
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0], [2, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    out = named_teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    cls = layer_states(out.hidden_states, mask, out.logits)
    assert cls.shape == (3, 5, 32)  # (B, L+1, H): embeddings + 4 layers
    for layer in range(5):
        assert torch.equal(cls[:, layer], out.hidden_states[layer][:, 0])


def test_cls_states_multiple_choice(tiny_bert):
    from transformers import AutoModelForMultipleChoice

    model = AutoModelForMultipleChoice.from_pretrained(tiny_bert).eval()
    b, c, t = 2, 4, 6
    torch.manual_seed(0)
    ids = torch.randint(5, VOCAB, (b, c, t))
    ids[..., 0] = 2
    out = model(input_ids=ids, output_hidden_states=True)
    assert out.logits.shape == (b, c)
    assert out.hidden_states[0].shape == (b * c, t, 32)  # the encoder sees B*C sequences
    cls = layer_states(out.hidden_states, torch.ones_like(ids), out.logits)
    assert cls.shape == (b, c, 5, 32)  # (B, C, L+1, H)
    for i in range(b):
        for j in range(c):
            for layer in range(5):
                assert torch.equal(cls[i, j, layer], out.hidden_states[layer][i * c + j, 0])


def test_saved_student_config_is_json(tmp_path, tiny_bert, named_teacher):
    student = build_student(str(tiny_bert), 2, named_teacher, SLC)
    student.save_pretrained(tmp_path / "s")
    conf = json.loads((tmp_path / "s" / "config.json").read_text())
    assert conf["num_hidden_layers"] == 2
    assert conf["id2label"] == {"0": "negative", "1": "positive"}
    assert conf[BASE_MODEL_KEY] == str(tiny_bert)
