"""Layer maps I(j) of SPEC §1: PKD-Skip, PKD-Last, explicit lists, and their errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pkd.cli import build_parser
from pkd.config.choices import STRATEGIES
from pkd.errors import PkdError
from pkd.objectives.mapping import layer_map


def teacher_side(pairs):
    return [t for t, _ in pairs]


@pytest.mark.parametrize(
    ("strategy", "n", "m", "expected"),
    [
        ("skip", 12, 6, [2, 4, 6, 8, 10]),
        ("skip", 12, 3, [4, 8]),
        ("skip", 24, 6, [4, 8, 12, 16, 20]),
        ("skip", 6, 3, [2, 4]),
        ("skip", 6, 2, [3]),
        ("last", 12, 6, [7, 8, 9, 10, 11]),
        ("last", 12, 3, [10, 11]),
        ("last", 6, 3, [4, 5]),
        ("last", 24, 6, [19, 20, 21, 22, 23]),
    ],
)
def test_paper_maps(strategy, n, m, expected):
    pairs = layer_map(strategy, n, m)
    assert teacher_side(pairs) == expected
    # (teacher, student) pairs; students are 1..M-1 (the top layer learns from the logits)
    assert [s for _, s in pairs] == list(range(1, m))
    assert pairs[0] == (expected[0], 1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_layer_student_has_no_intermediate_pairs(strategy):
    assert layer_map(strategy, 12, 1) == []


def test_explicit_list_is_used_and_strategy_ignored():
    assert layer_map("last", 12, 4, [1, 5, 9]) == [(1, 1), (5, 2), (9, 3)]
    assert layer_map(None, 6, 3, [1, 5]) == [(1, 1), (5, 2)]
    assert layer_map(None, 6, 1, []) == []


@pytest.mark.parametrize(
    ("n", "m", "explicit", "option", "words"),
    [
        (12, 12, None, "--student-layers", "need 1 <= M < 12"),
        (12, 13, None, "--student-layers", "13 is impossible"),
        (12, 0, None, "--student-layers", "0 is impossible"),
        (12, -1, None, "--student-layers", "impossible"),
        (12, 3, [4], "--layer-map", "needs 2 teacher layers, got 1"),
        (12, 3, [2, 4, 6], "--layer-map", "needs 2 teacher layers, got 3"),
        (12, 3, [0, 4], "--layer-map", "in 1..11"),
        (12, 3, [4, 12], "--layer-map", "in 1..11"),
        (12, 3, [4, 4], "--layer-map", "strictly increasing"),
        (12, 3, [8, 4], "--layer-map", "strictly increasing"),
    ],
)
def test_impossible_maps_are_errors(n, m, explicit, option, words):
    with pytest.raises(PkdError) as e:
        layer_map("skip", n, m, explicit)
    msg = str(e.value)
    assert msg.startswith(option + ":")
    assert words in msg
    assert "\n" not in msg


def test_unknown_strategy_names_option_and_choices():
    with pytest.raises(
        PkdError, match=r"^--strategy: unknown strategy 'middle'; valid: skip, last"
    ):
        layer_map("middle", 12, 6)
    with pytest.raises(PkdError, match="^--strategy"):
        layer_map(None, 12, 6)


def test_layer_map_option_parses_integers():
    """--layer-map text as the command line reads it (`pkd.cli`), before `layer_map` checks it."""
    parser = build_parser()
    for text, expected in (("2,4", [2, 4]), (" 7, 8 ,9 ", [7, 8, 9]), ("5", [5]), ("", [])):
        assert vars(parser.parse_args(["distill", f"--layer-map={text}"]))["distill.layer_map"] == (
            expected
        )


@pytest.mark.parametrize("text", ["2;4", "a,b", "2,4.5", "two"])
def test_layer_map_option_errors(text, pkd_cli):
    code, out, err = pkd_cli(["distill", f"--layer-map={text}"])
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (
        f"pkd distill: error: argument --layer-map: expected comma-separated ints, got {text!r}"
    )


@given(
    n=st.integers(min_value=2, max_value=48),
    data=st.data(),
    strategy=st.sampled_from(STRATEGIES),
)
def test_map_property(n, data, strategy):
    m = data.draw(st.integers(min_value=1, max_value=n - 1))
    pairs = layer_map(strategy, n, m)
    assert len(pairs) == m - 1
    teacher = teacher_side(pairs)
    assert all(1 <= t <= n - 1 for t in teacher)
    assert all(a < b for a, b in zip(teacher, teacher[1:], strict=False))
    assert [s for _, s in pairs] == list(range(1, m))
    # the map round-trips as an explicit list
    assert layer_map(None, n, m, teacher) == pairs
