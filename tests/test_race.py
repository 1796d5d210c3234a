"""Multiple choice (RACE and custom files): readers, encoding, losses, cache, batching, the
CLI end to end on tiny models and on the real MiniLM-L6, and bad input."""

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, make_tokenizer, run_killed_after_checkpoint
from safetensors.torch import load_file

from pkd.cli.commands import resolve
from pkd.cli.parser import build_parser
from pkd.config.files import save
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
from pkd.config.sections import DataConfig, DistillConfig
from pkd.data.loading import LengthGroupedSampler, collator, encode, load_split
from pkd.data.multiple_choice import level_metrics, pad_choices
from pkd.errors import PkdError
from pkd.objectives.losses import ce_loss, kd_loss, patient_loss
from pkd.tasks import MULTIPLE_CHOICE, get_task

# ---------------------------------------------------------------------------------------------
# Data written by the tests


def write_race_file(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def toy_race(root: Path, files: dict[str, int], questions: int = 3, seed: int = 0) -> Path:
    """A RACE-layout dir in the tiny vocabulary: the positive word is the right option.

    files: split -> articles per level (middle and high).
    """
    rng = random.Random(seed)
    for split, n in files.items():
        for level in ("middle", "high"):
            for k in range(n):
                qs, options, answers = [], [], []
                for _ in range(questions):
                    a = rng.randrange(4)
                    opts = rng.sample(NEGATIVE, 4)
                    opts[a] = rng.choice(POSITIVE)
                    qs.append("the movie was")
                    options.append(opts)
                    answers.append("ABCD"[a])
                article = " ".join(rng.choice(FILLER) for _ in range(rng.randrange(6, 20)))
                obj = {
                    "article": article,
                    "questions": qs,
                    "options": options,
                    "answers": answers,
                    "id": f"{level}{k}.txt",
                }
                write_race_file(root / split / level / f"{k}.txt", obj)
    return root


@pytest.fixture(scope="module")
def race_dir(tmp_path_factory) -> Path:
    return toy_race(tmp_path_factory.mktemp("race") / "RACE", {"train": 6, "dev": 3, "test": 2})


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


# ---------------------------------------------------------------------------------------------
# Readers


def test_race_reader_texts_labels_ids_levels(tmp_path):
    root = tmp_path / "RACE"
    write_race_file(
        root / "train" / "middle" / "10.txt",
        {
            "article": "Tom has a red ball.",
            "questions": ["What colour is the ball?", "Who has it?"],
            "options": [["red", "blue", "green", "black"], ["Ann", "Bob", "Tom", "Sue"]],
            "answers": ["A", "C"],
            "id": "middle10.txt",
        },
    )
    write_race_file(
        root / "train" / "middle" / "2.txt",  # natural order: 2.txt before 10.txt
        {
            "article": "Ann reads books.",
            "questions": ["What does Ann read?"],
            "options": [["papers", "books", "mail", "maps"]],
            "answers": ["B"],
            "id": "middle2.txt",
        },
    )
    write_race_file(
        root / "train" / "high" / "1.txt",
        {
            "article": "The sea is deep.",
            "questions": ["How is the sea?", "What is deep?", "Is it deep?"],
            "options": [["deep", "dry", "flat", "small"], ["sky", "road", "sea", "hill"]]
            + [["no", "maybe", "never", "yes"]],
            "answers": ["A", "C", "D"],
            "id": "high1.txt",
        },
    )
    s = load_split(get_task("race"), "train", str(root))
    assert s.ids == [
        "middle2.txt-0",
        "middle10.txt-0",
        "middle10.txt-1",
        "high1.txt-0",
        "high1.txt-1",
        "high1.txt-2",
    ]
    assert s.labels == ["B", "A", "C", "A", "C", "D"]
    assert s.levels == ["middle"] * 3 + ["high"] * 3
    assert s.text_a == ["Ann reads books."] + ["Tom has a red ball."] * 2 + ["The sea is deep."] * 3
    assert s.text_b[1:3] == ["What colour is the ball?", "Who has it?"]
    assert s.choices[2] == ["Ann", "Bob", "Tom", "Sue"]
    assert s.source == str(root / "train")

    high = load_split(get_task("race-high"), "train", str(root))
    assert high.ids == ["high1.txt-0", "high1.txt-1", "high1.txt-2"] and set(high.levels) == {
        "high"
    }
    middle = load_split(get_task("RACE-M"), "train", str(root))  # alias, any case
    assert len(middle) == 3 and middle.labels == ["B", "A", "C"]

    # The test split is labelled in RACE; `predict` reads it without requiring answers.
    write_race_file(
        root / "test" / "high" / "5.txt",
        {"article": "x", "questions": ["q"], "options": [["a", "b", "c", "d"]], "id": "h5"},
    )
    test = load_split(get_task("race"), "test", str(root), labelled=False)
    assert test.ids == ["h5-0"] and test.labels is None and test.choices == [["a", "b", "c", "d"]]


def test_race_task_registry_and_default_max_length(tmp_path):
    for name, levels in (("race", ("middle", "high")), ("race-middle", ("middle",))):
        spec = get_task(name)
        assert spec.problem_type == MULTIPLE_CHOICE and spec.labels == ("A", "B", "C", "D")
        assert spec.metrics == ("accuracy",) and spec.levels == levels
        assert (spec.hf_path, spec.hf_name) == ("ehovy/race", "all" if name == "race" else "middle")
    assert DataConfig(task="race").max_length == 512
    assert DataConfig(task="race", max_length=128).max_length == 128
    assert DataConfig(task="sst2").max_length == 128
    # CLI without --max-length: the RACE default, recorded in config.yaml.
    args = build_parser().parse_args(
        ["finetune", "--model", "m", "--output", "o", "--task", "race", "--data-dir", "d"]
    )
    cfg = resolve(args, FinetuneRunConfig)
    assert cfg.data.max_length == 512
    save(cfg, tmp_path / "config.yaml")
    assert "max_length: 512" in (tmp_path / "config.yaml").read_text()
    args = build_parser().parse_args(
        ["distill", "--teacher", "t", "--output", "o", "--task", "race", "--max-length", "256"]
    )
    assert resolve(args, DistillRunConfig).data.max_length == 256


def test_race_from_the_hub_offline_names_data_dir():
    with pytest.raises(PkdError, match=r"--data-dir not given and ehovy/race/high could not"):
        load_split(get_task("race-high"), "train")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def choice_data(**kw) -> DataConfig:
    return DataConfig(
        context_column="passage",
        question_column="question",
        choices_column="choices",
        label_column="answer",
        **kw,
    )


def test_custom_jsonl_with_3_and_5_choices(tmp_path, tiny_tokenizer):
    from pkd.data.loading import resolve_task

    three = write_jsonl(
        tmp_path / "three.jsonl",
        [
            {"passage": "good film", "question": "was it", "choices": ["good", "bad", "poor"]}
            | {"answer": "A"},
            {"passage": "bad film", "question": "was it", "choices": ["good", "bad", "poor"]}
            | {"answer": 1},  # a 0-based index
            {"passage": "poor plot", "question": "the plot", "choices": '["nice", "fine", "poor"]'}
            | {"answer": "c", "id": "q7"},  # choices as a JSON string; lower-case letter
        ],
    )
    five = write_jsonl(
        tmp_path / "five.jsonl",
        [
            {"passage": "a b", "question": "q", "choices": list("abcde"), "answer": "E"},
            {"passage": "c d", "question": "q", "choices": list("vwxyz"), "answer": "0"},
        ],
    )
    spec = resolve_task(choice_data(train_file=str(three)))
    assert spec.problem_type == MULTIPLE_CHOICE and spec.choices_column == "choices"
    s3 = load_split(spec, "train", file=str(three))
    assert s3.ids == ["0", "1", "q7"] and s3.labels == ["A", "B", "C"]
    assert s3.choices[2] == ["nice", "fine", "poor"] and s3.text_b[2] == "the plot"
    assert s3.levels is None
    s5 = load_split(spec, "train", file=str(five))
    assert s5.labels == ["E", "A"] and len(s5.choices[0]) == 5

    for split, c in ((s3, 3), (s5, 5)):
        enc = encode(split, tiny_tokenizer, 16, None, show_progress=False)
        assert enc.labels == ["ABCDE".index(v) for v in split.labels]
        assert all(len(ids) == c for ids in enc.features["input_ids"])
        batch = collator(tiny_tokenizer)([enc[i] for i in range(len(split))])
        t = max(enc.lengths())
        assert batch["input_ids"].shape == (len(split), c, t)
        assert batch["labels"].tolist() == enc.labels
        assert batch["example_index"].tolist() == list(range(len(split)))

    # CSV: the choices column holds a JSON list.
    csv = tmp_path / "mc.csv"
    csv.write_text('passage,question,choices,answer\n"good, nice",was it,"[""good"", ""bad""]",A\n')
    s = load_split(spec, "train", file=str(csv))
    assert s.text_a == ["good, nice"] and s.choices == [["good", "bad"]] and s.labels == ["A"]


# ---------------------------------------------------------------------------------------------
# Encoding and batching


def segments(tokenizer, ids, types):
    a = [t for t, s in zip(ids, types, strict=True) if s == 0]
    b = [t for t, s in zip(ids, types, strict=True) if s == 1]
    return tokenizer.convert_ids_to_tokens(a), tokenizer.convert_ids_to_tokens(b)


def test_encoding_segments_truncate_the_article_never_the_option(tiny_tokenizer, caplog):
    from pkd.data.splits import Split

    article = " ".join(["the", "movie", "was", "very"] * 10)  # 40 tokens
    split = Split(
        "dev",
        "mem",
        ["x-0", "x-1"],
        [article, "a plot"],
        ["the plot is", "the story is"],
        ["B", "A"],
        [["good", "not great"], ["nice", "boring"]],
        ["middle", "high"],
    )
    enc = encode(split, tiny_tokenizer, 16, None, show_progress=False)
    ids, types = enc.features["input_ids"], enc.features["token_type_ids"]
    # Example 0: the article is cut to fit 16 tokens; question + option are whole, segment 1.
    a, b = segments(tiny_tokenizer, ids[0][1], types[0][1])
    assert len(ids[0][1]) == 16
    assert a == ["[CLS]"] + ["the", "movie", "was", "very"] * 2 + ["[SEP]"]
    assert b == ["the", "plot", "is", "not", "great", "[SEP]"]
    a, b = segments(tiny_tokenizer, ids[0][0], types[0][0])
    assert len(ids[0][0]) == 16 and len(a) == 11 and b == ["the", "plot", "is", "good", "[SEP]"]
    # Example 1 fits: nothing is cut.
    a, b = segments(tiny_tokenizer, ids[1][1], types[1][1])
    assert a == ["[CLS]", "a", "plot", "[SEP]"] and b == ["the", "story", "is", "boring", "[SEP]"]
    assert enc.lengths() == [16, 9] and enc.labels == [1, 0]

    # Question + option longer than max length: no article, the question cut from the left,
    # the option kept whole, and a warning.
    split.text_b[0] = "the plot is very very very very very very not"
    with caplog.at_level(logging.WARNING, logger="pkd.data.multiple_choice"):
        enc = encode(split, tiny_tokenizer, 10, None, show_progress=False)
    choice = enc.features["input_ids"][0][1], enc.features["token_type_ids"][0][1]
    a, b = segments(tiny_tokenizer, *choice)
    assert a == ["[CLS]", "[SEP]"] and len(choice[0]) == 10
    assert b == ["very"] * 4 + ["not", "not", "great", "[SEP]"]
    assert "2 of 4 choices have a question + option longer than --max-length 10" in caplog.text
    assert "options kept whole" in caplog.text


def test_pad_choices_pads_b_c_t(tiny_tokenizer):
    items = [
        {"input_ids": [[2, 5, 3], [2, 5, 6, 3]], "attention_mask": [[1] * 3, [1] * 4]}
        | {"labels": 1, "example_index": 4},
        {"input_ids": [[2, 3], [2, 7, 3]], "attention_mask": [[1] * 2, [1] * 3]}
        | {"labels": 0, "example_index": 0},
    ]
    batch = pad_choices(items, tiny_tokenizer)
    assert batch["input_ids"].tolist() == [
        [[2, 5, 3, 0], [2, 5, 6, 3]],
        [[2, 3, 0, 0], [2, 7, 3, 0]],
    ]
    assert batch["attention_mask"].sum().item() == 12
    assert batch["labels"].tolist() == [1, 0] and batch["example_index"].tolist() == [4, 0]


def test_length_grouped_sampler_is_seeded_by_epoch():
    lengths = [random.Random(i).randrange(5, 500) for i in range(400)]
    a = LengthGroupedSampler(lengths, 4, seed=3, mega=10)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        orders.append(list(a))
    assert all(sorted(o) == list(range(400)) for o in orders)
    assert orders[0] != orders[1]
    fresh = LengthGroupedSampler(lengths, 4, seed=3, mega=10)
    fresh.set_epoch(2)  # a resumed run: no history, same order
    assert list(fresh) == orders[2]
    # Neighbours have similar lengths: far less spread within a batch than at random.
    spread = np.mean([np.ptp([lengths[i] for i in orders[0][k : k + 4]]) for k in range(0, 400, 4)])
    rand = np.mean([np.ptp(lengths[k : k + 4]) for k in range(0, 400, 4)])
    assert spread < rand / 4


# ---------------------------------------------------------------------------------------------
# Losses for (B, C) logits and (B, C, L, H) states, against hand-computed values


def test_multiple_choice_losses_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
    labels = torch.tensor([1, 3])
    z = math.exp(1) + math.exp(2) + 1 + math.exp(-1)
    expected = (-math.log(math.exp(2) / z) + math.log(4)) / 2
    assert ce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)

    # T = 2: teacher soft labels (0.75, 0.25), student (0.5, 0.5).
    t = torch.tensor([[2 * math.log(3), 0.0]])
    s = torch.zeros(1, 2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 2.0, "kl").item() == pytest.approx(kl / 2 * 4, rel=1e-6)  # /(B*C) * T^2
    assert kd_loss(s, t, 2.0, "ce").item() == pytest.approx(math.log(2), rel=1e-6)

    # (B=1, C=2, L=1, H=2), choices="each": choice 0 differs after normalisation by
    # (0.6, -0.2), choice 1 agrees.
    s_cls = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])
    t_cls = torch.tensor([[[[0.0, 5.0]], [[2.0, 0.0]]]])
    each = {"choices": "each"}
    assert patient_loss(s_cls, t_cls, **each).item() == pytest.approx(0.4 / 4, rel=1e-6)
    assert patient_loss(s_cls, t_cls, form="sum", **each).item() == pytest.approx(0.4 / 2, rel=1e-6)
    raw = ((3 - 0) ** 2 + (4 - 5) ** 2 + (1 - 2) ** 2) / 4
    assert patient_loss(s_cls, t_cls, normalize=False, **each).item() == pytest.approx(raw)
    # The default, the authors' "concat": one vector per example and layer, (3, 4, 1, 0) / sqrt(26)
    # against (0, 5, 2, 0) / sqrt(29); mean over its 4 entries, sum over the 1 example.
    u, v = [3 / 26**0.5, 4 / 26**0.5, 1 / 26**0.5, 0], [0, 5 / 29**0.5, 2 / 29**0.5, 0]
    sq = sum((a - b) ** 2 for a, b in zip(u, v, strict=True))
    assert patient_loss(s_cls, t_cls).item() == pytest.approx(sq / 4, rel=1e-6)
    assert patient_loss(s_cls, t_cls, form="sum").item() == pytest.approx(sq, rel=1e-6)
    assert patient_loss(s_cls, t_cls, normalize=False).item() == pytest.approx(raw)


def test_level_metrics():
    split = type("S", (), {"levels": ["middle", "high", "high", "middle", "high"]})()
    m = level_metrics(split, [0, 1, 2, 3, 0], [0, 1, 0, 1, 0])
    assert m == {"accuracy_middle": 0.5, "accuracy_high": pytest.approx(2 / 3)}
    split.levels = ["high"] * 5
    assert level_metrics(split, [0] * 5, [0] * 5) == {}
    assert level_metrics(None, [0], [0]) == {}


# ---------------------------------------------------------------------------------------------
# Tiny models: cache round trip, CLI, resume with --group-by-length


@pytest.fixture(scope="module")
def tiny_mc_teacher(tmp_path_factory, tiny_bert, race_dir, pkd_cli) -> Path:
    out = tmp_path_factory.mktemp("mc") / "teacher"
    pkd_cli.ok([
        "finetune", "--model", tiny_bert, "--output", out, *tiny_args(race_dir),
        "--epochs", "6", "--lr", "3e-3", "--batch-size", "8",
    ])  # fmt: skip
    return out


def tiny_args(race_dir: Path) -> list[str]:
    return ["--task", "race", "--data-dir", str(race_dir), "--max-length", "32", "--quiet"]


def test_a_multiple_choice_model_is_known_by_its_head(tiny_mc_teacher, tiny_teacher):
    """Every room asks the head (`pkd.tasks.Head`), never the class name."""
    from pkd.hf import teacher_problem
    from pkd.models.encoders import config_head, load_finetuned, model_head, model_labels
    from pkd.tasks import CHOICE_HEAD, MULTIPLE_CHOICE, SEQUENCE_HEAD

    mc = load_finetuned(str(tiny_mc_teacher / "model"))
    assert model_head(mc) is CHOICE_HEAD and config_head(mc.config) is CHOICE_HEAD
    assert model_labels(mc) == () and teacher_problem(mc) == MULTIPLE_CHOICE
    sequence = load_finetuned(str(tiny_teacher))
    assert model_head(sequence) is SEQUENCE_HEAD and model_labels(sequence)


def test_teacher_cache_round_trip_multiple_choice(tiny_mc_teacher, race_dir, tmp_path, caplog):
    from pkd.models.encoders import load_finetuned, load_tokenizer
    from pkd.objectives import cache as cache_mod
    from pkd.objectives.objective import online_teacher

    teacher = load_finetuned(str(tiny_mc_teacher / "model"))
    tok = load_tokenizer(str(tiny_mc_teacher / "model"))
    train = encode(load_split(get_task("race"), "train", str(race_dir)), tok, 32, None, False)
    collate = collator(tok)
    with caplog.at_level(logging.INFO, logger="pkd.objectives.cache"):
        cache = cache_mod.build_or_load(
            teacher, train, collate, "race", {"max_length": 32}, tmp_path, 7, "cpu", False
        )
    assert f"teacher cache: {len(train)} examples" in caplog.text  # size printed before building
    n, h = len(train), teacher.config.hidden_size
    assert cache.logits.shape == (n, 4) and cache.states.shape == (n, 4, 5, h)
    assert cache.manifest["files"]["states"]["shape"] == [n, 4, 5, h]
    batch = collate([train[i] for i in (5, 0, 17, 30)])
    layers = [2, 4]
    c_logits, c_cls = cache.targets(batch["example_index"], layers)
    o_logits, o_cls = online_teacher(teacher)(batch, layers)
    assert c_logits.shape == (4, 4) and c_cls.shape == (4, 4, 2, h)
    assert torch.allclose(c_logits, o_logits, atol=1e-5)
    assert torch.allclose(c_cls, o_cls, atol=2e-2, rtol=1e-2)  # states stored in fp16
    # Rebuilt inputs -> the same cache is found again.
    again = cache_mod.build_or_load(
        teacher, train, collate, "race", {"max_length": 32}, tmp_path, 7, "cpu", False
    )
    assert again.path == cache.path and again.manifest["reused"] is True


def test_loss_terms_multiple_choice_pt_choices(tiny_mc_teacher, tiny_bert, race_dir):
    """A distill config's patient loss on RACE: by default the authors' form (each question's
    choices joined into one vector per layer), `pt_choices="each"` per choice; by hand."""
    from pkd.models.encoders import load_finetuned, load_tokenizer
    from pkd.models.students import build_student
    from pkd.objectives.objective import Objective, loss_terms, online_teacher

    teacher = load_finetuned(str(tiny_mc_teacher / "model")).eval()
    student = build_student(str(tiny_bert), 2, teacher, MULTIPLE_CHOICE).eval()
    tok = load_tokenizer(str(tiny_mc_teacher / "model"))
    train = encode(load_split(get_task("race"), "train", str(race_dir)), tok, 32, None, False)
    batch = collator(tok)([train[i] for i in (0, 5, 17)])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_index")}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states[1][:, 0]  # (B*C, H)
        t = teacher(**inputs, output_hidden_states=True).hidden_states[2][:, 0]
    b, c, h = 3, 4, s.shape[-1]
    s, t = s.double().view(b, c, h), t.double().view(b, c, h)  # choices of a question in a row

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    concat = (unit(s.reshape(b, c * h)) - unit(t.reshape(b, c * h))).pow(2).sum() / (b * c * h)
    each = (unit(s) - unit(t)).pow(2).sum() / (b * c * h)
    assert 2.0 < each / concat < 8.0  # about C = 4

    assert DistillConfig().pt_choices == "concat"
    for distill, expected in ((DistillConfig(student_layers=2), concat),
                              (DistillConfig(student_layers=2, pt_choices="each"), each)):  # fmt: skip
        objective = Objective.from_config(distill, [(2, 1)], online_teacher(teacher))
        with torch.no_grad():
            pt = loss_terms(student, batch, objective, regression=False)["pt"]
        assert pt.item() == pytest.approx(expected.item(), rel=1e-5), distill.pt_choices
    with pytest.raises(PkdError, match="--pt-choices: 'avg' is not one of concat, each"):
        DistillConfig(pt_choices="avg")


def test_tiny_cli_distill_evaluate_predict_compare(tiny_mc_teacher, race_dir, tmp_path, pkd_cli):
    from transformers import AutoModelForMultipleChoice

    args = tiny_args(race_dir)
    teacher_metrics = json.loads((tiny_mc_teacher / "metrics.json").read_text())
    dev = teacher_metrics["best"]["metrics"]["dev"]
    assert set(dev) == {"accuracy", "accuracy_middle", "accuracy_high"}
    assert dev["accuracy"] == pytest.approx((dev["accuracy_middle"] + dev["accuracy_high"]) / 2)
    assert dev["accuracy"] > teacher_metrics["majority_baseline"]["dev"] + 0.2  # it learned

    student = tmp_path / "student"
    pkd_cli.ok([
        "distill", "--teacher", str(tiny_mc_teacher / "model"), "--output", str(student), *args,
        "--student-layers", "2", "--epochs", "2", "--lr", "3e-3", "--batch-size", "8",
        "--group-by-length", "--teacher-mode", "online",
    ])  # fmt: skip
    m = json.loads((student / "metrics.json").read_text())
    assert m["layer_map"] == [[2, 1]] and m["teacher_cache"] is None
    assert (
        AutoModelForMultipleChoice.from_pretrained(student / "model").config.num_hidden_layers == 2
    )

    ev = json.loads(
        pkd_cli.ok(["evaluate", "--model", student / "model", *args, "--split", "test"]).out
    )
    assert ev["split"] == "test" and ev["examples"] == 12
    assert {"accuracy", "accuracy_middle", "accuracy_high"} <= set(ev)

    out = tmp_path / "pred.tsv"
    pkd_cli.ok(["predict", "--model", student / "model", *args, "--output-file", out])
    lines = out.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert lines[1].split("\t")[0] == "middle0.txt-0"
    assert {ln.split("\t")[1] for ln in lines[1:]} <= set("ABCD")

    # `pkd compare` on the RACE directory produces its table.
    pkd_cli.ok([
        "compare", "--teacher", str(tiny_mc_teacher / "model"), "--output", str(tmp_path / "cmp"),
        *args, "--student-layers", "2", "--methods", "ft,pkd-skip", "--seeds", "1",
        "--epochs", "1", "--lr", "3e-3", "--batch-size", "8", "--allow-weak-teacher",
        "--bench-batch-size", "2", "--bench-seq-length", "16", "--bench-warmup", "1",
        "--bench-iterations", "2",
    ])  # fmt: skip
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "# pkd compare: race (accuracy on dev" in table
    assert "| 2 | ft | 1 |" in table and "| 2 | pkd-skip | 1 |" in table
    assert (tmp_path / "cmp" / "pareto.png").is_file()


@pytest.mark.slow
def test_group_by_length_resume_matches_uninterrupted_run(tiny_bert, race_dir, tmp_path, pkd_cli):
    """Killed mid-epoch 2 and resumed: the same batches, so the same final weights."""

    def args(out):
        return [
            "finetune", "--model", str(tiny_bert), "--output", str(out), *tiny_args(race_dir),
            "--epochs", "3", "--lr", "3e-3", "--batch-size", "8", "--group-by-length",
            "--gradient-accumulation-steps", "2", "--save-steps", "3", "--keep-checkpoints",
        ]  # fmt: skip

    ref = tmp_path / "ref"
    pkd_cli.ok(args(ref))
    run = tmp_path / "killed"
    proc = run_killed_after_checkpoint(6, args(run))  # mid-epoch 2 (5 steps per epoch)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run / "metrics.json").exists()
    pkd_cli.ok([*args(run), "--resume"])
    # 36 questions in micro-batches of 4, 2 per step: 5 steps per epoch, 15 in all.
    final = "checkpoints/step-15/model.safetensors"
    a, b = load_file(ref / final), load_file(run / final)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    m_ref = json.loads((ref / "metrics.json").read_text())
    m_run = json.loads((run / "metrics.json").read_text())
    assert [h["metrics"] for h in m_run["history"]] == [h["metrics"] for h in m_ref["history"]]
    assert [h["step"] for h in m_ref["history"]] == [5, 10, 15]


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file (and question), exit 2


def bad_race(root: Path, obj: dict) -> Path:
    toy_race(root, {"train": 1, "dev": 1})
    good = json.loads((root / "train" / "high" / "0.txt").read_text())
    write_race_file(root / "train" / "high" / "0.txt", good | obj)
    return root / "train" / "high" / "0.txt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"options": [["a", "b", "c", "d"], ["a", "b", "c"], ["a", "b", "c", "d"]]},
            "question 1: expected 4 options, found 3",
        ),
        ({"answers": ["A", "E", "B"]}, "question 1: answer 'E' is not one of A, B, C, D"),
        ({"article": None}, "missing 'article'"),
        ({"answers": ["A"]}, "3 questions but 1 answers"),
    ],
)
def test_bad_race_files(tiny_bert, tmp_path, change, message, pkd_cli):
    path = bad_race(tmp_path / "RACE", change)
    err = pkd_cli.error([
        "finetune", "--model", str(tiny_bert), "--output", str(tmp_path / "o"),
        "--task", "race", "--data-dir", str(tmp_path / "RACE"),
    ])  # fmt: skip
    assert err == f"{path}: {message}"


def test_bad_multiple_choice_inputs(tiny_bert, tiny_teacher, tmp_path, pkd_cli):
    run = ["finetune", "--model", str(tiny_bert), "--output", str(tmp_path / "o")]
    # An empty directory: no questions under middle/ or high/.
    (tmp_path / "empty" / "train").mkdir(parents=True)
    err = pkd_cli.error([*run, "--task", "race", "--data-dir", str(tmp_path / "empty")])
    assert err == (
        f"{tmp_path / 'empty' / 'train'}: no RACE files (*.txt under middle/ "
        "or high/) for the train split"
    )

    # Custom files: a differing number of choices, a label outside them.
    rows = [
        {"passage": "p", "question": "q", "choices": ["a", "b", "c"], "answer": "A"},
        {"passage": "p", "question": "q", "choices": ["a", "b"], "answer": "B"},
    ]
    f = write_jsonl(tmp_path / "mc.jsonl", rows)
    custom = ["--train-file", str(f), "--validation-file", str(f), "--context-column", "passage"]
    custom += ["--question-column", "question", "--choices-column", "choices"]
    custom += ["--label-column", "answer"]
    err = pkd_cli.error([*run, *custom])
    assert err == (
        f"{f}:2: 2 choices, but line 1 has 3; every row of a file needs the same number of choices"
    )
    write_jsonl(f, [rows[0] | {"answer": "D"}])
    err = pkd_cli.error([*run, *custom])
    assert err == f"{f}:1: label 'D' is not one of the 3 choices (a letter A-C or an index 0-2)"
    write_jsonl(f, [{"question": "q", "choices": ["a", "b"], "answer": "A"}])
    assert pkd_cli.error([*run, *custom]) == f"{f}:1: missing 'passage'"
    err = pkd_cli.error([*run, "--train-file", str(f), "--problem-type", "multiple_choice"])
    assert err == "--choices-column: required for multiple-choice files"

    # A sequence classifier cannot teach multiple choice.
    toy_race(tmp_path / "RACE", {"train": 1, "dev": 1})
    err = pkd_cli.error([
        "distill", "--teacher", str(tiny_teacher), "--output", str(tmp_path / "s"),
        "--task", "race", "--data-dir", str(tmp_path / "RACE"), "--max-length", "32",
    ])  # fmt: skip
    assert "is a sequence classifier but task race is multiple_choice" in err


def test_holdout_keeps_choices_aligned(race_dir):
    from pkd.data.loading import load_splits

    data = DataConfig(task="race", data_dir=str(race_dir), holdout_fraction=0.25)
    _, splits = load_splits(data, ["train", "dev"])
    train, held = splits["train"], splits["holdout"]
    assert len(train) + len(held) == 36 and len(held) == 9
    for s in (train, held):
        assert len(s.choices) == len(s.levels) == len(s.labels) == len(s.ids)
    full = load_split(get_task("race"), "train", str(race_dir))
    i = full.ids.index(held.ids[0])
    assert held.choices[0] == full.choices[i] and held.levels[0] == full.levels[i]


# ---------------------------------------------------------------------------------------------
# The real MiniLM-L6 teacher, end to end through the CLI


NAMES = ["Tom", "Anna", "Li Wei", "Maria", "Sam", "Yuki", "Omar", "Nadia"]
THINGS = ["bike", "kite", "hat", "book", "cat", "boat", "lamp", "coat"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown"]


def english_race(root: Path, files: dict[str, int], seed: int = 0) -> Path:
    """Short English articles with questions answered in the text; some articles are long
    enough to be truncated at 128 tokens."""
    rng = random.Random(seed)
    for split, n in files.items():
        for level in ("middle", "high"):
            for k in range(n):
                owners = rng.sample(NAMES, 4)
                things = rng.sample(THINGS, 4)
                colours = rng.sample(COLOURS, 4)
                facts = [
                    f"{o} has a {c} {t}." for o, t, c in zip(owners, things, colours, strict=True)
                ]
                filler = " It was a quiet day in the small town by the river." * [0, 1, 10][k % 3]
                qs, options, answers = [], [], []
                for j in range(3):
                    qs.append(f"What colour is the {things[j]} of {owners[j]}?")
                    opts = rng.sample([c for c in COLOURS if c != colours[j]], 3)
                    a = rng.randrange(4)
                    opts.insert(a, colours[j])
                    options.append(opts)
                    answers.append("ABCD"[a])
                obj = {
                    "article": " ".join(facts) + filler,
                    "questions": qs,
                    "options": options,
                    "answers": answers,
                    "id": f"{level}{k}.txt",
                }
                write_race_file(root / split / level / f"{k}.txt", obj)
    return root


@pytest.mark.slow
def test_minilm_cli_end_to_end(minilm, tmp_path, pkd_cli):
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    data = english_race(tmp_path / "RACE", {"train": 4, "dev": 2, "test": 1})  # 24/12/6 questions
    common = ["--task", "race", "--data-dir", str(data), "--max-length", "128", "--quiet"]
    teacher = tmp_path / "teacher"
    pkd_cli.ok([
        "finetune", "--model", str(minilm), "--output", str(teacher), *common,
        "--epochs", "1", "--batch-size", "8", "--lr", "5e-5", "--group-by-length",
    ])  # fmt: skip
    t_metrics = json.loads((teacher / "metrics.json").read_text())
    assert t_metrics["data"]["train"]["examples"] == 24
    assert t_metrics["data"]["train"]["truncated"] > 0  # the long articles hit 128 tokens

    student = tmp_path / "student"
    pkd_cli.ok([
        "distill", "--teacher", str(teacher / "model"), "--output", str(student), *common,
        "--method", "pkd", "--strategy", "skip", "--student-layers", "3",
        "--epochs", "1", "--batch-size", "8", "--allow-weak-teacher",
    ])  # fmt: skip
    m = json.loads((student / "metrics.json").read_text())
    assert m["layer_map"] == [[2, 1], [4, 2]] and m["method"] == "pkd"
    manifest = json.loads((Path(m["teacher_cache"]["path"]) / "manifest.json").read_text())
    assert manifest["files"]["logits"]["shape"] == [24, 4]
    assert manifest["files"]["states"]["shape"] == [24, 4, 7, 384]
    assert "max_length: 128" in (student / "config.yaml").read_text()

    ev = json.loads(pkd_cli.ok(["evaluate", "--model", student / "model", *common]).out)
    assert ev["examples"] == 12 and 0 <= ev["accuracy"] <= 1
    assert ev["accuracy"] == pytest.approx((ev["accuracy_middle"] + ev["accuracy_high"]) / 2)

    out = tmp_path / "pred.tsv"
    pkd_cli.ok(["predict", "--model", student / "model", *common, "--output-file", out])
    rows = [ln.split("\t") for ln in out.read_text().splitlines()[1:]]
    expected_ids = [f"{lv}0.txt-{j}" for lv in ("middle", "high") for j in range(3)]
    assert [r[0] for r in rows] == expected_ids

    # The student reloads with plain transformers and predicts the same letters.
    model = AutoModelForMultipleChoice.from_pretrained(student / "model").eval()
    assert model.config.num_hidden_layers == 3
    tok = AutoTokenizer.from_pretrained(student / "model")
    test = load_split(get_task("race"), "test", str(data), labelled=False)
    enc = tok(  # one batch padded to its longest choice, as `pkd predict` does
        [a for a, c in zip(test.text_a, test.choices, strict=True) for _ in c],
        [f"{q} {o}" for q, c in zip(test.text_b, test.choices, strict=True) for o in c],
        truncation="only_first",
        max_length=128,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**{k: v.view(len(test), 4, -1) for k, v in enc.items()}).logits
    assert logits.shape == (6, 4)
    assert [r[1] for r in rows] == ["ABCD"[i] for i in logits.argmax(-1).tolist()]
