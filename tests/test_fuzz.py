"""Property tests: whatever a user's files, options or config hold, pkd answers with a result
or a one-line PkdError, never a traceback.

The layer-map generator's own property (valid maps for every N > M >= 1) is in
test_mapping.py; here are the inputs users type: explicit maps, --layer-map text, YAML values.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from pkd.config.files import SECTIONS, build
from pkd.config.runs import DistillRunConfig
from pkd.config.sections import DataConfig
from pkd.data.loading import encode, load_split, load_splits
from pkd.errors import PkdError
from pkd.objectives.mapping import layer_map
from pkd.tasks import get_task

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text users paste into data files: any Unicode, plus the characters readers split on.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\t", ",", '"', "'", "\n", "\r", "\\", "\ufeff", "\u2028"]),
    ),
    max_size=30,
)
LABEL = st.sampled_from(["0", "1", "neg", "pos"])
# A valid header in front of random bytes, so that the fuzzing reaches the rows.
HEADS = [b"", b"text\tlabel\n", b"text,label\r\n", b'{"text": "a", "label": "1"}\n']


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _one_line_error(e: PkdError) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, msg
    return msg


def _load_custom(path: Path, encoding: str = "utf-8"):
    """pkd's read of a user's train file, as `pkd finetune --task custom` does it."""
    data = DataConfig(
        task="custom", train_file=str(path), validation_file=str(path), text_columns=["text"],
        encoding=encoding,
    )  # fmt: skip
    return load_splits(data, ["train"])


# ---------------------------------------------------------------------------------------------
# Readers: arbitrary bytes, arbitrary rows


@FUZZ
@given(
    head=st.sampled_from(HEADS),
    raw=st.binary(max_size=300),
    suffix=st.sampled_from([".tsv", ".csv", ".jsonl"]),
)
def test_arbitrary_bytes_in_a_custom_file(work, head, raw, suffix):
    path = work / f"bytes{suffix}"
    path.write_bytes(head + raw)
    for encoding in ("utf-8", "latin-1"):  # latin-1 decodes every byte: reaches the parsers
        try:
            spec, splits = _load_custom(path, encoding)
        except PkdError as e:
            msg = _one_line_error(e)
            assert str(path) in msg or msg.startswith("--")
            continue
        train = splits["train"]
        assert len(train) >= 1
        assert set(train.labels) == set(spec.labels)
        assert all(isinstance(t, str) for t in train.text_a)


@FUZZ
@given(head=st.sampled_from(HEADS), raw=st.binary(max_size=300))
def test_arbitrary_bytes_in_a_glue_file(work, head, raw):
    d = work / "SST-2"
    d.mkdir(exist_ok=True)
    (d / "train.tsv").write_bytes(head.replace(b"text", b"sentence") + raw)
    try:
        split = load_split(get_task("sst2"), "train", data_dir=str(d), encoding="latin-1")
    except PkdError as e:
        assert str(d / "train.tsv") in _one_line_error(e)
        return
    assert len(split) >= 1 and set(split.labels) <= {"0", "1"}


CELL = TEXT | st.sampled_from(["0", "1", "-1", "²", "١", " 1 ", "-", ""])


def _expected_rows(header: list[str], rows: list[list[str]]):
    """What `pkd finetune --task custom --text-columns text` must read from these cells, once
    written with CSV quoting: (texts, labels, ids), or None where it must refuse the file."""
    lines = [r for r in [header, *rows] if r]  # an empty row is a blank line: skipped
    if len(lines) < 2:
        return None  # no header, or no examples
    head, body = [h.strip() for h in lines[0]], lines[1:]
    if "text" not in head or "label" not in head:
        return None
    t, y = head.index("text"), head.index("label")
    if any(len(r) > len(head) or len(r) <= max(t, y) for r in body):
        return None  # more columns than the header, or too few for text and label
    labels = [r[y].strip() for r in body]
    if "" in labels:
        return None  # an empty label is no class
    return [r[t] for r in body], labels, [str(i) for i in range(len(body))]


@st.composite
def tables(draw) -> tuple[list[str], list[list[str]]]:
    """A header (any cells, or text, label and another column in any order) and rows, as
    wide as the header or (ragged) of any width."""
    header = draw(
        st.lists(st.sampled_from(["text", "label", " text "]) | TEXT, max_size=3)
        | st.permutations(["text", " label", "other"])
    )
    n = len(header)
    row = (
        st.lists(CELL, max_size=4)
        if draw(st.booleans())
        else st.lists(CELL, min_size=n, max_size=n)
    )
    return header, draw(st.lists(row, max_size=8))


@FUZZ
@given(table=tables(), sep=st.sampled_from(["\t", ","]))
def test_arbitrary_rows_and_columns(work, table, sep):
    header, rows = table
    path = work / ("rows.tsv" if sep == "\t" else "rows.csv")
    # As a user might write it, without quoting: an answer or a one-line error.
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    try:
        _load_custom(path)
    except PkdError as e:
        _one_line_error(e)

    # Quoted as CSV requires: every cell comes back exactly, or the file is refused.
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=sep).writerows([header, *rows])
    assume(not buf.getvalue().startswith("\ufeff"))  # a leading byte-order mark is dropped
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    expected = _expected_rows(header, rows)
    event("read" if expected else "refused")
    try:
        spec, splits = _load_custom(path)
    except PkdError as e:
        assert expected is None, (_one_line_error(e), expected)
        assert str(path) in _one_line_error(e)
        return
    assert expected is not None
    train = splits["train"]
    assert (train.text_a, train.labels, train.ids) == expected
    assert set(spec.labels) == set(expected[1])


@FUZZ
@given(objs=st.lists(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
), max_size=6), keys=st.lists(st.sampled_from(["text", "label", "other"]), max_size=6))  # fmt: skip
def test_arbitrary_json_values(work, objs, keys):
    path = work / "values.jsonl"
    lines = []
    for i, obj in enumerate(objs):
        # some lines are objects with the expected keys, some are anything at all
        lines.append({k: obj for k in keys[: i % 4]} if i % 2 else obj)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    try:
        _load_custom(path)
    except PkdError as e:
        assert str(path) in _one_line_error(e)


@FUZZ
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=8))
def test_well_formed_csv_and_jsonl_round_trip(work, tokenizer, rows):
    """Text written correctly (CSV quoting, JSON escapes) comes back exactly, and encodes."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    (work / "ok.csv").write_text(buf.getvalue(), encoding="utf-8", newline="")
    jsonl = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    (work / "ok.jsonl").write_text(jsonl, encoding="utf-8")
    for name in ("ok.csv", "ok.jsonl"):
        spec, splits = _load_custom(work / name)
        train = splits["train"]
        assert train.text_a == [t for t, _ in rows], name
        assert train.labels == [y for _, y in rows]
        assert set(spec.labels) == {y for _, y in rows}
        enc = encode(train, tokenizer, 16, {n: i for i, n in enumerate(spec.labels)}, False)
        assert len(enc) == len(rows)
        assert all(2 <= n <= 16 for n in enc.lengths())  # [CLS] .. [SEP], truncated at 16


@FUZZ
@given(
    labels=st.lists(
        st.sampled_from(["0", "1", "-1", "10", "--1", "²", "١", "1_0", "neg"]) | TEXT,
        min_size=1,
        max_size=5,
    )
)
def test_any_label_names(work, labels):
    """Label names are sorted numerically when they are all integers, else as text."""
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([["text", "label"], *[[f"t{i}", y] for i, y in enumerate(labels)]])
    (work / "labels.csv").write_text(buf.getvalue(), encoding="utf-8", newline="")
    try:
        spec, _ = _load_custom(work / "labels.csv")
    except PkdError as e:
        _one_line_error(e)
        return
    assert set(spec.labels) == {y.strip() for y in labels}


def test_bom_only_in_the_first_field_is_dropped(work):
    # the round trip above allows this one change: a byte-order mark at the start of the file
    (work / "bom.csv").write_text("text,label\n\ufeffa,0\n", encoding="utf-8")
    _, splits = _load_custom(work / "bom.csv")
    assert splits["train"].text_a == ["\ufeffa"]  # only a BOM that starts the file goes


# ---------------------------------------------------------------------------------------------
# Layer maps and options typed by users


@FUZZ
@given(
    n=st.integers(-2, 30),
    m=st.integers(-2, 30),
    explicit=st.none() | st.lists(st.integers(-3, 33), max_size=8),
    strategy=st.sampled_from(["skip", "last", "middle", None]),
)
def test_any_map_request_is_a_valid_map_or_an_error(n, m, explicit, strategy):
    try:
        pairs = layer_map(strategy, n, m, explicit)
    except PkdError as e:
        assert _one_line_error(e).startswith(("--student-layers:", "--layer-map:", "--strategy:"))
        return
    assert 1 <= m < n
    teacher = [t for t, _ in pairs]
    assert [s for _, s in pairs] == list(range(1, m))
    assert all(1 <= t <= n - 1 for t in teacher)
    assert teacher == sorted(set(teacher))
    if explicit is not None:
        assert teacher == explicit


@FUZZ
@given(text=TEXT)
def test_layer_map_text(text, pkd_cli):
    # --help after it: the command stops there once --layer-map's text is read
    code, _, err = pkd_cli(["distill", f"--layer-map={text}", "--help"])
    if code != 0:
        assert code == 2
        assert err.splitlines()[-1].startswith("pkd distill: error: argument --layer-map:")


YAML_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(-5, 500)
    | st.floats()
    | TEXT
    | st.lists(st.integers(-2, 10) | TEXT, max_size=3)
)


@FUZZ
@given(
    section=st.sampled_from(["data", "train", "distill"]),
    values=st.data(),
)
def test_any_yaml_values_give_a_config_or_an_error(section, values):
    import dataclasses

    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    chosen = values.draw(st.dictionaries(st.sampled_from(names), YAML_VALUE, max_size=4))
    try:
        cfg = build(DistillRunConfig, {"teacher": "t", "output": "o", section: chosen}, "c.yaml")
    except PkdError as e:
        assert _one_line_error(e).startswith("c.yaml:") or _one_line_error(e).startswith("--")
        return
    sub = getattr(cfg, section)
    for f in dataclasses.fields(sub):  # every value has its field's type
        v = getattr(sub, f.name)
        kind = str(f.type).split("|")[0].strip()
        if v is None:
            assert "None" in str(f.type)
        elif kind in ("int", "float", "str", "bool"):
            assert type(v).__name__ == kind or (kind == "float" and type(v) is int), (f.name, v)
