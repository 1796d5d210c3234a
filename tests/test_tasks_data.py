"""Task registry and data readers on files in the real GLUE layouts, custom CSV/TSV/JSONL,
text edge cases, encoding and dynamic padding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pkd.data.loading import collator, encode, infer_labels, load_split, truncated_fraction
from pkd.errors import PkdError
from pkd.tasks import (
    CLASSIFICATION,
    GLUE_TASKS,
    MULTIPLE_CHOICE,
    PAIR_SCORES,
    PROBLEM_TYPES,
    REGRESSION,
    align_labels,
    custom_task,
    get_task,
    model_label_order,
)


def write_tsv(path, rows, header=None, newline="\n", bom=False):
    """A GLUE-style TSV: tab-joined fields, no quoting (GLUE files are not quoted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header is not None else []) + ["\t".join(r) for r in rows]
    text = newline.join(lines) + newline
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


def tab(*names):
    return "\t".join(names)


# ---------------------------------------------------------------------------------------------
# Task registry


def test_registry_holds_all_of_glue():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert get_task("stsb").problem_type == REGRESSION
    assert get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
    assert get_task("mnli").eval_splits == ["dev_matched", "dev_mismatched"]
    assert get_task("sst2").eval_splits == ["dev"]
    assert get_task("cola").main_metric == "matthews_correlation"
    assert get_task("mrpc").main_metric == "f1"
    assert get_task("qqp").main_metric == "f1"
    assert get_task("stsb").metrics == ("pearson", "spearman")


@pytest.mark.parametrize(
    "alias,name",
    [("SST-2", "sst2"), ("sst-2", "sst2"), ("SST2", "sst2"), ("STS-B", "stsb"), ("MNLI", "mnli")],
)
def test_get_task_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(PkdError) as e:
        get_task("sst3")
    msg = str(e.value)
    assert msg.startswith("--task:") and "'sst3'" in msg
    for name in ("cola", "sst2", "mnli", "custom"):
        assert name in msg


def test_custom_task_checks_its_arguments():
    spec = custom_task(("q1", "q2"), "label")
    assert spec.source == "custom" and spec.problem_type == CLASSIFICATION
    assert spec.metrics == ("accuracy", "macro_f1")
    assert custom_task(("text",), "y", REGRESSION).metrics == ("pearson", "spearman")
    with pytest.raises(PkdError, match="--text-columns"):
        custom_task((), "label")
    with pytest.raises(PkdError, match="--text-columns"):
        custom_task(("a", "b", "c"), "label")
    with pytest.raises(PkdError, match="--problem-type"):
        custom_task(("text",), "label", "multiple_choice")


@pytest.mark.parametrize(
    "task, hub, files",
    [
        ("cola", ["unacceptable", "acceptable"], ["0", "1"]),
        ("sst2", ["negative", "positive"], ["0", "1"]),
        ("mrpc", ["not_equivalent", "equivalent"], ["0", "1"]),
        ("qqp", ["not_duplicate", "duplicate"], ["0", "1"]),
        ("mnli", ["entailment", "neutral", "contradiction"], ["entailment", "neutral", "contradiction"]),
        ("qnli", ["entailment", "not_entailment"], ["entailment", "not_entailment"]),
        ("rte", ["entailment", "not_entailment"], ["entailment", "not_entailment"]),
        ("wnli", ["not_entailment", "entailment"], ["0", "1"]),
    ],
)  # fmt: skip
def test_glue_tasks_know_the_hubs_label_names_by_class_id(task, hub, files):
    """A run_glue.py teacher names its outputs as the Hub's ClassLabel does; output i is class
    id i of the files (or the label of the same name); LABEL_i likewise."""
    spec = get_task(task)
    assert model_label_order(spec, tuple(hub)) == tuple(files)
    assert model_label_order(spec, tuple(hub[::-1])) == tuple(files[::-1])
    generic = tuple(f"LABEL_{i}" for i in range(len(hub)))
    assert model_label_order(spec, generic) == tuple(files)
    assert model_label_order(spec, tuple(spec.labels)) == spec.labels  # the files' own names


def test_label_names_that_are_not_the_tasks_are_refused():
    sst2, mrpc = get_task("sst2"), get_task("mrpc")
    assert model_label_order(sst2, ("neg", "pos")) is None
    assert model_label_order(sst2, ("negative", "positive", "neutral")) is None
    assert model_label_order(sst2, ("LABEL_1", "LABEL_0")) is None
    assert model_label_order(custom_task(("text",), "y", labels=("neg", "pos")), ("LABEL_0", "LABEL_1")) is None  # fmt: skip
    assert model_label_order(custom_task(("text",), "y", labels=("0", "1")), ("LABEL_0", "LABEL_1")) == ("0", "1")  # fmt: skip
    with pytest.raises(PkdError, match=r"^--model: its labels \['neg', 'pos'\] differ from the data's \['0', '1'\]$"):  # fmt: skip
        align_labels(sst2, ("neg", "pos"), "--model")
    # MRPC's F1 stays on the paraphrase class, whatever the model calls it and in any order
    assert align_labels(mrpc, ("equivalent", "not_equivalent"), "--teacher").positive_index() == 0
    assert align_labels(mrpc, ("not_equivalent", "equivalent"), "--teacher").positive_index() == 1


# ---------------------------------------------------------------------------------------------
# GLUE readers, one per task, on the real column layouts


def test_cola_no_header_in_train_dev_header_in_test(tmp_path):
    d = tmp_path / "CoLA"
    rows = [
        (
            "gj04",
            "1",
            "",
            "Our friends won't buy this analysis, let alone the next one we propose.",
        ),
        ("gj04", "0", "*", "They drank the pub."),
        ("cj99", "1", "", 'He said "hello" to her.'),
    ]
    write_tsv(d / "train.tsv", rows)
    write_tsv(d / "dev.tsv", rows[:2])
    write_tsv(d / "test.tsv", [("0", "Bill whistled past the house."), ("1", "The car honked.")],
              header="index\tsentence")  # fmt: skip
    spec = get_task("cola")
    train = load_split(spec, "train", data_dir=str(d))
    assert len(train) == 3  # the first line is an example, not a header
    assert train.text_a[0].startswith("Our friends won't buy")
    assert train.text_a[2] == 'He said "hello" to her.'
    assert train.labels == ["1", "0", "1"]
    assert train.text_b is None
    assert train.ids == ["0", "1", "2"]
    assert load_split(spec, "dev", data_dir=str(d)).labels == ["1", "0"]
    test = load_split(spec, "test", data_dir=str(d))
    assert test.labels is None
    assert test.ids == ["0", "1"]
    assert test.text_a == ["Bill whistled past the house.", "The car honked."]


def test_sst2(tmp_path):
    d = tmp_path / "SST-2"
    write_tsv(d / "train.tsv", [("hide new secretions ", "0"), ("a gorgeous film ", "1")],
              header="sentence\tlabel")  # fmt: skip
    write_tsv(d / "test.tsv", [("0", "uneasy mishmash"), ("1", "this is fun")],
              header="index\tsentence")  # fmt: skip
    spec = get_task("sst-2")
    train = load_split(spec, "train", data_dir=str(d))
    assert train.text_a == ["hide new secretions ", "a gorgeous film "]  # text kept as is
    assert train.labels == ["0", "1"]
    test = load_split(spec, "test", data_dir=str(d))
    assert (test.ids, test.text_a, test.labels) == (["0", "1"], ["uneasy mishmash", "this is fun"], None)  # fmt: skip


def test_mrpc_header_with_byte_order_mark(tmp_path):
    d = tmp_path / "MRPC"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [
        ("1", "702876", "702977", "Amrozi accused his brother .", "Referring to him as ..."),
        ("0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."),
    ]
    write_tsv(d / "train.tsv", rows, header=header, bom=True)
    write_tsv(d / "dev.tsv", rows[::-1], header=header, bom=True)
    write_tsv(d / "test.tsv", [("0", "1089874", "1089925", "PCCW 's chief", "Current Chief")],
              header="index\t#1 ID\t#2 ID\t#1 String\t#2 String")  # fmt: skip
    spec = get_task("mrpc")
    train = load_split(spec, "train", data_dir=str(d))
    assert train.labels == ["1", "0"]
    assert train.text_a == ["Amrozi accused his brother .", "Yucaipa owned Dominick 's ."]
    assert train.text_b == ["Referring to him as ...", "Yucaipa bought Dominick 's ."]
    assert load_split(spec, "dev", data_dir=str(d)).labels == ["0", "1"]
    test = load_split(spec, "test", data_dir=str(d))
    assert (test.ids, test.text_a, test.text_b) == (["0"], ["PCCW 's chief"], ["Current Chief"])


def test_qqp_uses_id_column_for_test(tmp_path):
    d = tmp_path / "QQP"
    write_tsv(
        d / "dev.tsv",
        [("201359", "303345", "303346", "Why are African-Americans so beautiful?",
          "Why are hispanics so beautiful?", "0"),
         ("263843", "69383", "380476", "I want to pursue PhD?", "How can I get PhD?", "1")],
        header=tab("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
    )  # fmt: skip
    write_tsv(d / "test.tsv", [("7", "How do I?", "What is?"), ("12", "Why?", "When?")],
              header=tab("id", "question1", "question2"))  # fmt: skip
    spec = get_task("qqp")
    dev = load_split(spec, "dev", data_dir=str(d))
    assert dev.labels == ["0", "1"]
    assert dev.text_a[1] == "I want to pursue PhD?" and dev.text_b[1] == "How can I get PhD?"
    test = load_split(spec, "test", data_dir=str(d))
    assert test.ids == ["7", "12"] and test.text_b == ["What is?", "When?"]


STSB_HEADER = tab(
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
)


def test_stsb_regression_scores(tmp_path):
    d = tmp_path / "STS-B"
    write_tsv(
        d / "dev.tsv",
        [("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
          "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", "5.000"),
         ("1", "main-captions", "MSRvid", "2012test", "0002", "none", "none",
          "A young child is riding a horse.", "A child is riding a horse.", "4.750")],
        header=STSB_HEADER + "\tscore",
    )  # fmt: skip
    write_tsv(
        d / "test.tsv",
        [("0", "main-captions", "MSRvid", "2012test", "0024", "none", "none", "A girl.", "A boy.")],
        header=STSB_HEADER,
    )
    spec = get_task("STS-B")
    dev = load_split(spec, "dev", data_dir=str(d))
    assert dev.labels == [5.0, 4.75]
    assert dev.text_b[1] == "A child is riding a horse."
    test = load_split(spec, "test", data_dir=str(d))
    assert (test.ids, test.text_a, test.text_b, test.labels) == (["0"], ["A girl."], ["A boy."], None)  # fmt: skip


MNLI_COMMON = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
)  # fmt: skip


def _mnli_row(i, genre, s1, s2, labels):
    return (str(i), "31193", f"{i}n", genre, f"( ( {s1} ) )", f"( {s2} )", "(ROOT)", "(ROOT)",
            s1, s2, *labels)  # fmt: skip


def test_mnli_train_and_both_dev_splits(tmp_path):
    d = tmp_path / "MNLI"
    write_tsv(
        d / "train.tsv",
        [_mnli_row(0, "government", "Conceptually cream skimming", "Product and geography",
                   ("neutral", "neutral")),
         _mnli_row(1, "telephone", "you know during the season", "You lose the things",
                   ("entailment", "entailment"))],
        header=tab(*MNLI_COMMON, "label1", "gold_label"),
    )  # fmt: skip
    five = tab(*MNLI_COMMON, "label1", "label2", "label3", "label4", "label5", "gold_label")
    write_tsv(
        d / "dev_matched.tsv",
        [_mnli_row(0, "fiction", "The new rights are nice", "Everyone really likes",
                   ("neutral", "entailment", "neutral", "neutral", "neutral", "neutral"))],
        header=five,
    )  # fmt: skip
    write_tsv(
        d / "dev_mismatched.tsv",
        [_mnli_row(0, "letters", "Your contribution helped", "Your contributions were of no help",
                   ("contradiction",) * 5 + ("contradiction",)),
         _mnli_row(1, "verbatim", "The answer is no", 'He said "yes"',
                   ("entailment",) * 5 + ("entailment",))],
        header=five,
    )  # fmt: skip
    write_tsv(
        d / "test_matched.tsv",
        [_mnli_row(0, "slate", "Hierbas, ans seco", "Hierbas is a name", ())],
        header=tab(*MNLI_COMMON),
    )
    spec = get_task("mnli")
    train = load_split(spec, "train", data_dir=str(d))
    assert train.labels == ["neutral", "entailment"]  # gold_label, not label1
    assert train.text_a[0] == "Conceptually cream skimming"  # sentence1, not the parse
    assert train.text_b[1] == "You lose the things"
    m = load_split(spec, "dev_matched", data_dir=str(d))
    assert m.labels == ["neutral"] and m.text_b == ["Everyone really likes"]
    mm = load_split(spec, "dev_mismatched", data_dir=str(d))
    assert mm.labels == ["contradiction", "entailment"]
    assert mm.text_b[1] == 'He said "yes"'
    assert mm.name == "dev_mismatched" and mm.source.endswith("dev_mismatched.tsv")
    test = load_split(spec, "test_matched", data_dir=str(d))
    assert test.labels is None and test.ids == ["0"] and test.text_b == ["Hierbas is a name"]
    with pytest.raises(PkdError, match=r"--split: .*'dev'"):
        load_split(spec, "dev", data_dir=str(d))  # MNLI has no plain dev split


@pytest.mark.parametrize(
    "task,header,labels",
    [
        ("qnli", ("index", "question", "sentence", "label"), ("entailment", "not_entailment")),
        ("rte", ("index", "sentence1", "sentence2", "label"), ("not_entailment", "entailment")),
        ("wnli", ("index", "sentence1", "sentence2", "label"), ("1", "0")),
    ],
)
def test_pair_tasks_with_index_column(tmp_path, task, header, labels):
    d = tmp_path / task
    write_tsv(d / "train.tsv", [("0", "first a", "first b", labels[0]),
                                ("1", "second a", "second b", labels[1])],
              header=tab(*header))  # fmt: skip
    write_tsv(d / "test.tsv", [("0", "t a", "t b"), ("1", "u a", "u b")], header=tab(*header[:3]))
    spec = get_task(task)
    train = load_split(spec, "train", data_dir=str(d))
    assert train.text_a == ["first a", "second a"]
    assert train.text_b == ["first b", "second b"]
    assert train.labels == list(labels)
    test = load_split(spec, "test", data_dir=str(d))
    assert test.ids == ["0", "1"] and test.text_b == ["t b", "u b"] and test.labels is None


# ---------------------------------------------------------------------------------------------
# Text edge cases in GLUE files


def test_crlf_line_endings(tmp_path):
    path = write_tsv(tmp_path / "SST-2" / "train.tsv", [("good film", "1"), ("bad film", "0")],
                     header="sentence\tlabel", newline="\r\n")  # fmt: skip
    split = load_split(get_task("sst2"), "train", data_dir=str(path.parent))
    assert split.text_a == ["good film", "bad film"]
    assert split.labels == ["1", "0"]  # no '\r' left on the last column


def test_quotes_empty_text_and_unicode_kept(tmp_path):
    rows = [
        ('"a film" that "works', "1"),  # unbalanced quote: GLUE is unquoted, the text keeps it
        ("", "0"),
        ("naïve café — 😀 füm", "1"),
        ("x", "0"),
    ]
    path = write_tsv(tmp_path / "SST-2" / "train.tsv", rows, header="sentence\tlabel")
    split = load_split(get_task("sst2"), "train", data_dir=str(path.parent))
    assert split.text_a == ['"a film" that "works', "", "naïve café — 😀 füm", "x"]
    assert split.labels == ["1", "0", "1", "0"]


def test_non_utf8_bytes_name_file_line_and_encoding(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\ncaf\xe9 film\t0\n")
    spec = get_task("sst2")
    with pytest.raises(PkdError) as e:
        load_split(spec, "train", data_dir=str(d))
    msg = str(e.value)
    assert f"{d / 'train.tsv'}:3:" in msg
    assert "--encoding" in msg
    assert "\n" not in msg
    split = load_split(spec, "train", data_dir=str(d), encoding="latin-1")
    assert split.text_a == ["good film", "café film"]
    with pytest.raises(PkdError, match="--encoding"):
        load_split(spec, "train", data_dir=str(d), encoding="no-such-codec")


def test_glue_read_errors_name_file_and_line(tmp_path):
    d = tmp_path / "SST-2"
    spec = get_task("sst2")
    write_tsv(d / "train.tsv", [("ok", "1"), ("no label column",)], header="sentence\tlabel")
    with pytest.raises(
        PkdError, match=r"train\.tsv:3: expected at least 2 columns, found 1 \(the header has 2\)"
    ):
        load_split(spec, "train", data_dir=str(d))
    write_tsv(d / "train.tsv", [("ok", "1"), ("fine", "2")], header="sentence\tlabel")
    with pytest.raises(PkdError, match=r"train\.tsv:3: label '2' is not one of \['0', '1'\]"):
        load_split(spec, "train", data_dir=str(d))
    write_tsv(d / "train.tsv", [], header="sentence\tlabel")
    with pytest.raises(PkdError, match=r"train\.tsv: no examples in the train split"):
        load_split(spec, "train", data_dir=str(d))
    write_tsv(d / "train.tsv", [("ok", "1")], header="text\tlabel")
    with pytest.raises(PkdError, match=r"train\.tsv:1: no column 'sentence'"):
        load_split(spec, "train", data_dir=str(d))
    with pytest.raises(PkdError, match=r"dev\.tsv: file not found"):
        load_split(spec, "dev", data_dir=str(d))
    with pytest.raises(PkdError, match="--data-dir"):
        load_split(spec, "train", data_dir=str(tmp_path / "nope"))


def test_stsb_non_numeric_score(tmp_path):
    d = tmp_path / "STS-B"
    row = ("0", "g", "f", "2012", "0", "none", "none", "a", "b")
    write_tsv(d / "train.tsv", [(*row, "4.0"), (*row, "high")], header=STSB_HEADER + "\tscore")
    with pytest.raises(PkdError, match=r"train\.tsv:3: score 'high' is not a number"):
        load_split(get_task("stsb"), "train", data_dir=str(d))
    for bad in ("nan", "inf"):  # float() takes them; a NaN target would poison the MSE
        write_tsv(d / "train.tsv", [(*row, "4.0"), (*row, bad)], header=STSB_HEADER + "\tscore")
        with pytest.raises(PkdError, match=rf"train\.tsv:3: score '{bad}' is not a finite number"):
            load_split(get_task("stsb"), "train", data_dir=str(d))


def test_stsb_score_outside_0_to_5(tmp_path):
    d = tmp_path / "STS-B"
    row = ("0", "g", "f", "2012", "0", "none", "none", "a", "b")
    write_tsv(d / "train.tsv", [(*row, "0.000"), (*row, "5.000")], header=STSB_HEADER + "\tscore")
    assert load_split(get_task("stsb"), "train", data_dir=str(d)).labels == [0.0, 5.0]  # ends
    for bad in ("5.2", "-0.5", "50"):
        write_tsv(d / "train.tsv", [(*row, "4.0"), (*row, bad)], header=STSB_HEADER + "\tscore")
        with pytest.raises(PkdError) as e:
            load_split(get_task("stsb"), "train", data_dir=str(d))
        assert str(e.value) == f"{d / 'train.tsv'}:3: score '{bad}' is outside stsb's range 0 to 5"
    # the user's own regression data has no range
    path = tmp_path / "reg.csv"
    path.write_text("s,y\na,-3\nb,50\n")
    assert load_split(custom_task(("s",), "y", REGRESSION), "train", file=str(path)).labels == [
        -3.0,
        50.0,
    ]


def test_empty_label_in_a_custom_file(tmp_path):
    spec = custom_task(("text",), "label")
    for cell in ("", "  "):
        path = tmp_path / "train.csv"
        path.write_text(f"text,label\ngood,1\nno label,{cell}\nbad,0\n")
        with pytest.raises(PkdError) as e:
            load_split(spec, "train", file=str(path))
        assert str(e.value) == f"{path}:3: empty label (column 'label')"
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "good", "label": "1"}\n{"text": "bad", "label": ""}\n')
    with pytest.raises(PkdError, match=r"train\.jsonl:2: empty label \(column 'label'\)"):
        load_split(spec, "train", file=str(path))


def test_extra_tab_inside_a_field_names_the_column_count(tmp_path):
    d = tmp_path / "SST-2"
    write_tsv(d / "train.tsv", [("good film", "1"), ("a tab\there", "0")], header="sentence\tlabel")
    with pytest.raises(PkdError) as e:
        load_split(get_task("sst2"), "train", data_dir=str(d))
    assert (
        str(e.value) == f"{d / 'train.tsv'}:3: 3 columns, the header has 2 (a tab inside a field?)"
    )
    # MRPC: 5 columns; a tab in the second sentence makes 6
    d = tmp_path / "MRPC"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write_tsv(d / "dev.tsv", [("1", "7", "8", "A b .", "C\td ."), ("0", "9", "10", "e", "f")],
              header=header, bom=True)  # fmt: skip
    with pytest.raises(PkdError, match=r"dev\.tsv:2: 6 columns, the header has 5 \(a tab"):
        load_split(get_task("mrpc"), "dev", data_dir=str(d))
    # the user's CSV: an unquoted comma
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,1\nfine, really,1\n")
    with pytest.raises(PkdError) as e:
        load_split(custom_task(("text",), "label"), "train", file=str(path))
    assert str(e.value) == (
        f"{path}:3: 3 columns, the header has 2 (a comma in an unquoted field?)"
    )
    # a multiple-choice CSV too
    from pkd.data.multiple_choice import choice_task

    path.write_text('p,q,c,a\nctx,q,"[""x"", ""y""]",A\nctx,q,["x", "y"],B\n')
    with pytest.raises(PkdError) as e:
        load_split(choice_task("p", "q", "c", "a"), "train", file=str(path))
    assert str(e.value) == (
        f"{path}:3: 5 columns, the header has 4 (a comma in an unquoted field?)"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # the open quote on line 3 swallows lines 4-6 into one field
        ('text,label\ngood,1\n"oops, 0\nfine,1\nbad,0\nnice,1\n', 3),
        # label first: the swallowed rows were silently lost (2 examples instead of 5)
        ('label,text\n1,good\n0,"oops\n1,fine\n0,bad\n1,nice\n', 3),
        # a closed quoted field may span lines; CRLF and LF both end one
        ('label,text\n1,"two\nlines"\n0,bad\n1,"three\r\nmore\nlines\n0,x\n', 5),
    ],
)
def test_unterminated_quote_names_the_line_where_it_opens(tmp_path, text, line):
    path = tmp_path / "train.csv"
    path.write_text(text, newline="")
    with pytest.raises(PkdError) as e:
        load_split(custom_task(("text",), "label"), "train", file=str(path))
    assert str(e.value) == f"{path}:{line}: a quoted field opens here and is never closed"


def test_a_directory_is_not_a_file(tmp_path):
    from pkd.config.files import load_yaml

    spec = custom_task(("text",), "label")
    for split, option in (("train", "--train-file"), ("dev", "--validation-file"),
                          ("test", "--test-file")):  # fmt: skip
        with pytest.raises(PkdError) as e:
            load_split(spec, split, file=str(tmp_path))
        assert str(e.value) == f"{option}: {tmp_path} is a directory, not a file"
    (tmp_path / "SST-2" / "train.tsv").mkdir(parents=True)
    with pytest.raises(PkdError) as e:
        load_split(get_task("sst2"), "train", data_dir=str(tmp_path / "SST-2"))
    assert str(e.value) == f"{tmp_path / 'SST-2' / 'train.tsv'}: is a directory, not a file"
    with pytest.raises(PkdError) as e:
        load_yaml(str(tmp_path))
    assert str(e.value) == f"--config: {tmp_path} is a directory, not a YAML file"
    with pytest.raises(PkdError, match="--validation-file: no file given for the dev split"):
        load_split(spec, "dev")


def test_short_row_in_a_test_file_with_the_id_column_last(tmp_path):
    path = write_tsv(tmp_path / "mine.tsv", [("good", "7"), ("no id here",)],
                     header="sentence\tindex")  # fmt: skip
    with pytest.raises(PkdError, match=r"mine\.tsv:3: expected at least 2 columns, found 1"):
        load_split(get_task("sst2"), "test", file=str(path))
    write_tsv(path, [("good", "7"), ("bad", "9")], header="sentence\tindex")
    assert load_split(get_task("sst2"), "test", file=str(path)).ids == ["7", "9"]


# ---------------------------------------------------------------------------------------------
# The user's own files


def test_custom_csv_with_quoted_fields_and_numeric_label_order(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'text,other,label\n"Hello, world",x,10\n"She said ""hi""",y,2\n'
        '"two\nlines",z,-1\nplain,w,2\n',
        encoding="utf-8",
    )
    spec = custom_task(("text",), "label")
    split = load_split(spec, "train", file=str(path))
    assert split.text_a == ["Hello, world", 'She said "hi"', "two\nlines", "plain"]
    assert split.labels == ["10", "2", "-1", "2"]
    assert split.ids == ["0", "1", "2", "3"]
    assert infer_labels(split) == ("-1", "2", "10")  # numeric, not string, order


def test_custom_tsv_pair_and_string_labels(tmp_path):
    path = tmp_path / "dev.tsv"
    write_tsv(path, [("q one", "q two", "pos"), ("q three", "q four", "neg")], header="a\tb\ty")
    spec = custom_task(("a", "b"), "y")
    split = load_split(spec, "dev", file=str(path))
    assert split.text_a == ["q one", "q three"] and split.text_b == ["q two", "q four"]
    assert infer_labels(split) == ("neg", "pos")


def test_custom_jsonl_labelled_unlabelled_and_regression(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "ok", "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    spec = custom_task(("text",), "label")
    split = load_split(spec, "train", file=str(path))
    assert split.text_a == ["good", "bad", "ok"] and split.labels == ["1", "0", "1"]
    assert infer_labels(split) == ("0", "1")

    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "what"}\n{"text": "else"}\n')
    t = load_split(spec, "test", file=str(test))
    assert t.labels is None and t.text_a == ["what", "else"] and t.ids == ["0", "1"]

    reg = tmp_path / "reg.jsonl"
    reg.write_text('{"s": "a", "y": 0.5}\n{"s": "b", "y": "3"}\n')
    r = load_split(custom_task(("s",), "y", REGRESSION), "train", file=str(reg))
    assert r.labels == [0.5, 3.0]

    # CRLF, and characters str.splitlines() would break a line at (U+2028, U+0085, form feed)
    odd = tmp_path / "odd.jsonl"
    texts = ["line\u2028separator", "next\x85line", "form\x0cfeed", "plain"]
    odd.write_bytes(
        "\r\n".join(json.dumps({"text": t, "label": "x"}, ensure_ascii=False) for t in texts)
        .encode("utf-8") + b"\r\n"
    )  # fmt: skip
    o = load_split(spec, "train", file=str(odd))
    assert o.text_a == texts and o.labels == ["x"] * 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(PkdError, match=r"bad\.jsonl:2: missing key\(s\) \['label'\]"):
        load_split(spec, "train", file=str(bad))
    bad.write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(PkdError, match=r"bad\.jsonl:2: not a JSON object"):
        load_split(spec, "train", file=str(bad))


def test_custom_csv_regression_and_missing_file_option(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("s1,s2,score\na,b,1.5\nc,d,-2\n")
    spec = custom_task(("s1", "s2"), "score", REGRESSION)
    split = load_split(spec, "train", file=str(path))
    assert split.labels == [1.5, -2.0] and split.text_b == ["b", "d"]
    with pytest.raises(PkdError, match="--train-file"):
        load_split(spec, "train")


# ---------------------------------------------------------------------------------------------
# Encoding and dynamic padding


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _sst2_split(tmp_path, rows):
    path = write_tsv(tmp_path / "SST-2" / "train.tsv", rows, header="sentence\tlabel")
    return load_split(get_task("sst2"), "train", data_dir=str(path.parent))


def test_encode_maps_labels_by_name_and_truncates(tmp_path, tokenizer):
    long = " ".join(["good movie"] * 20)  # 40 words -> 42 tokens with [CLS]/[SEP]
    split = _sst2_split(tmp_path, [("good", "1"), ("bad film", "0"), (long, "1"), ("", "0")])
    enc = encode(split, tokenizer, max_length=8, label2id={"1": 0, "0": 1}, show_progress=False)
    assert enc.labels == [0, 1, 0, 1]  # by name through label2id, not by position
    assert enc.lengths() == [3, 4, 8, 2]  # [CLS] text [SEP]; the long one cut at 8; empty text
    assert enc[2]["input_ids"][-1] == tokenizer.sep_token_id
    assert truncated_fraction(enc, 8) == pytest.approx(0.25)
    assert truncated_fraction(enc, 64) == 0.0
    item = enc[1]
    assert item["labels"] == 1 and item["example_index"] == 1
    assert tokenizer.convert_ids_to_tokens(item["input_ids"]) == ["[CLS]", "bad", "film", "[SEP]"]
    with pytest.raises(PkdError, match=r"labels \['0'\] are not among the model's labels"):
        encode(split, tokenizer, 8, {"1": 0, "2": 1}, show_progress=False)


def test_encode_pairs_and_regression(tmp_path, tokenizer):
    spec = custom_task(("a", "b"), "y", REGRESSION)
    path = write_tsv(tmp_path / "reg.tsv", [("good", "bad film", "0.25")], header="a\tb\ty")
    enc = encode(load_split(spec, "train", file=str(path)), tokenizer, 16, None, False)
    assert enc.labels == [0.25]
    assert tokenizer.convert_ids_to_tokens(enc[0]["input_ids"]) == [
        "[CLS]", "good", "[SEP]", "bad", "film", "[SEP]"
    ]  # fmt: skip
    assert enc[0]["token_type_ids"] == [0, 0, 0, 1, 1, 1]


def test_unlabelled_split_encodes_without_labels(tmp_path, tokenizer):
    path = write_tsv(tmp_path / "SST-2" / "test.tsv", [("5", "good"), ("9", "bad")],
                     header="index\tsentence")  # fmt: skip
    test = load_split(get_task("sst2"), "test", data_dir=str(path.parent))
    enc = encode(test, tokenizer, 16, {"0": 0, "1": 1}, show_progress=False)
    assert enc.labels is None and "labels" not in enc[0]
    assert [enc[i]["example_index"] for i in range(2)] == [0, 1]


def test_collator_pads_each_batch_to_its_longest(tmp_path, tokenizer):
    rows = [
        ("good", "1"),  # 3 tokens
        ("bad film was awful", "0"),  # 6
        ("a", "1"),  # 3
        ("the", "0"),  # 3
        ("very very very very very good", "1"),  # 8
        ("not", "0"),  # 3
    ]
    enc = encode(_sst2_split(tmp_path, rows), tokenizer, 64, {"0": 0, "1": 1}, False)
    loader = torch.utils.data.DataLoader(enc, batch_size=2, collate_fn=collator(tokenizer))
    batches = list(loader)
    assert [b["input_ids"].shape for b in batches] == [(2, 6), (2, 3), (2, 8)]
    for b in batches:
        assert b["attention_mask"].shape == b["input_ids"].shape
        assert b["input_ids"].shape[1] < 64  # not padded to max_length
    assert batches[0]["attention_mask"].sum(1).tolist() == [3, 6]
    assert batches[0]["input_ids"][0, 3:].tolist() == [tokenizer.pad_token_id] * 3
    assert batches[2]["attention_mask"].sum(1).tolist() == [8, 3]
    assert torch.cat([b["example_index"] for b in batches]).tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.cat([b["labels"] for b in batches]).tolist() == [1, 0, 1, 0, 1, 0]

    shuffled = torch.utils.data.DataLoader(
        enc, batch_size=3, shuffle=True, collate_fn=collator(tokenizer),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for b in shuffled:  # example_index still points at the right example after shuffling
        for row, i in enumerate(b["example_index"].tolist()):
            n = enc.lengths()[i]
            assert b["input_ids"][row, :n].tolist() == enc[i]["input_ids"]
            assert b["labels"][row].item() == enc.labels[i]


# ---------------------------------------------------------------------------------------------
# Task kinds


def test_every_problem_type_has_a_kind():
    from pkd.data.kinds import KINDS, task_kind

    assert set(KINDS) == set(PROBLEM_TYPES)
    assert task_kind(get_task("sst2")).name == CLASSIFICATION
    assert task_kind(get_task("stsb")).name == REGRESSION
    assert task_kind(get_task("race")).name == MULTIPLE_CHOICE
    assert task_kind(PAIR_SCORES).name == PAIR_SCORES


def test_every_problem_type_has_a_head():
    """The model side of a problem type: one table (`pkd.tasks.HEADS`), two heads."""
    from pkd.tasks import (
        CHOICE_HEAD,
        HEADS,
        SEQUENCE_HEAD,
        architecture_head,
        head_config,
        problem_head,
    )

    assert set(HEADS) == set(PROBLEM_TYPES)
    assert {p for p, h in HEADS.items() if h is CHOICE_HEAD} == {MULTIPLE_CHOICE}
    assert architecture_head(["BertForMultipleChoice"]) is CHOICE_HEAD
    assert architecture_head(["RobertaForSequenceClassification"]) is SEQUENCE_HEAD
    assert architecture_head(["BertForMaskedLM"]) is None and architecture_head([]) is None
    assert not CHOICE_HEAD.exportable and CHOICE_HEAD.pipeline_tag is None
    assert (CHOICE_HEAD.card_task, SEQUENCE_HEAD.card_task) == (
        "multiple-choice",
        "text-classification",
    )
    assert problem_head("classification") is SEQUENCE_HEAD  # transformers' name, as callers pass it
    assert head_config(MULTIPLE_CHOICE, ()) == {}
    assert head_config(REGRESSION, ()) == {"num_labels": 1, "problem_type": "regression"}
    assert head_config(CLASSIFICATION, ("neg", "pos")) == {
        "num_labels": 2,
        "id2label": {0: "neg", 1: "pos"},
        "label2id": {"neg": 0, "pos": 1},
        "problem_type": "single_label_classification",
    }


def test_custom_data_options_choose_the_problem_type():
    from pkd.tasks import check_choice_options, custom_problem

    assert custom_problem("classification", None) == CLASSIFICATION
    assert custom_problem("regression", None) == REGRESSION
    assert custom_problem("multiple_choice", "options") == MULTIPLE_CHOICE
    assert custom_problem("classification", "options") == MULTIPLE_CHOICE  # a choices column
    check_choice_options("classification", "options")
    with pytest.raises(PkdError, match="--choices-column: required for multiple-choice files"):
        check_choice_options("multiple_choice", None)
    with pytest.raises(PkdError, match="--problem-type: regression cannot have --choices-column"):
        check_choice_options("regression", "options")


def test_the_kind_of_a_split_or_batch_comes_from_its_data(tokenizer):
    from pkd.data.kinds import batch_kind, split_kind, task_kind
    from pkd.data.splits import Split

    texts = Split("dev", "x", ["0"], ["a text"], None, ["pos"])
    choices = Split("dev", "x", ["0"], ["an article"], ["a question"], ["B"], [["yes", "no"]])
    assert split_kind(texts, {"pos": 0}).name == CLASSIFICATION
    assert split_kind(texts, None).name == REGRESSION
    assert split_kind(choices, None).name == MULTIPLE_CHOICE
    assert task_kind(MULTIPLE_CHOICE).choices_per_example(choices) == 2
    assert task_kind(CLASSIFICATION).choices_per_example(texts) == 0
    assert batch_kind([{"input_ids": [[1, 2], [1, 3]]}]).name == MULTIPLE_CHOICE
    assert batch_kind([{"input_ids": [1, 2]}]).name == CLASSIFICATION


def test_each_kind_turns_logits_into_predictions_names_and_metrics():
    from pkd.data.kinds import task_kind

    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.4]], dtype=np.float32)
    gold = np.array([1.0, 0.0, 0.0], dtype=np.float32)  # as gathered: floats
    sst2 = task_kind(CLASSIFICATION)
    assert sst2.predictions(logits).tolist() == [1, 0, 1]
    assert sst2.prediction_names(sst2.predictions(logits), ("neg", "pos")) == ["pos", "neg", "pos"]
    assert sst2.metrics(get_task("sst2"), sst2.predictions(logits), gold) == {"accuracy": 2 / 3}
    race = task_kind(MULTIPLE_CHOICE)
    assert race.prediction_names(race.predictions(logits), ()) == ["B", "A", "B"]
    scores = task_kind(REGRESSION)
    assert scores.predictions(logits[:, :1]).tolist() == pytest.approx([0.1, 2.0, 0.3])
    assert scores.prediction_names(np.array([0.1234, 4.0]), ()) == ["0.123", "4.000"]


def test_pair_scores_read_encode_and_score_as_regression(tmp_path, tokenizer):
    """Sentence pairs with a float score (STS-B-like, for embeddings) share regression's code."""
    import dataclasses

    from pkd.data.kinds import task_kind

    rows = [("0", "a man", "a person", "4.5"), ("1", "a cat", "a car", "0.5")]
    write_tsv(tmp_path / "dev.tsv", rows, header=tab("index", "sentence1", "sentence2", "score"))
    spec = dataclasses.replace(get_task("stsb"), problem_type=PAIR_SCORES)
    assert spec.num_labels == 1 and spec.label2id() is None
    dev = load_split(spec, "dev", data_dir=str(tmp_path))
    assert dev.labels == [4.5, 0.5] and dev.text_b == ["a person", "a car"]
    kind, regression = task_kind(spec), task_kind(REGRESSION)
    enc = kind.encode(dev, tokenizer, 16, None, show_progress=False)
    assert enc.labels == [4.5, 0.5]
    assert enc.features == encode(dev, tokenizer, 16, None, show_progress=False).features
    logits = np.array([[4.0], [1.0]], dtype=np.float32)
    gold = np.array(dev.labels, dtype=np.float32)
    assert kind.metrics(spec, kind.predictions(logits), gold) == regression.metrics(
        get_task("stsb"), regression.predictions(logits), gold
    )
    write_tsv(
        tmp_path / "train.tsv",
        [("0", "a", "b", "5.5")],
        header=tab("index", "sentence1", "sentence2", "score"),
    )
    with pytest.raises(PkdError, match=r"train.tsv:2: score '5.5' is outside stsb's range 0 to 5"):
        load_split(spec, "train", data_dir=str(tmp_path))
