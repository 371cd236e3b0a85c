"""fcrl.verifier.parse: the three formats, literals only, a reason for everything else."""

import keyword

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcrl.verifier.parse import Rejected, parse
from fcrl.verifier.render import render


def reason(text: str, fmt: str = "think_answer") -> str:
    with pytest.raises(Rejected) as e:
        parse(text, fmt)
    return e.value.reason


def test_think_answer():
    text = "<think>Two calls.</think>\n<answer>[w.get(city='Paris', n=-3), g()]</answer>"
    assert parse(text, "think_answer") == [("w.get", {"city": "Paris", "n": -3}), ("g", {})]
    assert parse("  <think></think><answer>[]</answer>\n", "think_answer") == []
    assert parse("<think>x</think><answer>I cannot help.</answer>", "think_answer") == []


@pytest.mark.parametrize(
    "text, code",
    [
        ("<answer>[f(a=1)]</answer>", "no_think"),
        ("I think <think>x</think><answer>[f(a=1)]</answer>", "no_think"),
        ("<think>a</think><think>b</think><answer>[f(a=1)]</answer>", "no_think"),
        ("<think>unterminated <answer>[f(a=1)]</answer>", "no_think"),
        ("<think>x</think>", "no_answer"),
        ("<think>x</think>so: <answer>[f(a=1)]</answer>", "no_answer"),
        ("<think>x</think><answer>[f(a=1)]</answer> and more", "no_answer"),
        ("<think>x</think><answer>[f(a=1)]</answer><answer>[]</answer>", "no_answer"),
        ("<think>x</think><answer>[f(a=1)]", "no_answer"),
        ("<think>x</think><answer>[f(a=1</answer>", "bad_answer_syntax"),
        ("<think>x</think><answer>[f(a=1)] (g(b=2))</answer>", "bad_answer_syntax"),
    ],
)
def test_think_answer_layout(text, code):
    assert reason(text) == code


def test_bfcl_is_decoded_like_bfcl():
    """Backticks and whitespace are stripped and missing outer brackets added, as in BFCL."""
    assert parse("```\nf(a=1.5)\n```", "bfcl") == [("f", {"a": 1.5})]
    assert parse("[f(a=(1, 'x'), b={'k': [None, True]}, c=+2)]", "bfcl") == [
        ("f", {"a": (1, "x"), "b": {"k": [None, True]}, "c": 2})
    ]
    assert parse("", "bfcl") == parse("[]", "bfcl") == parse("No function fits.", "bfcl") == []


@pytest.mark.parametrize(
    "value",
    [
        "x",
        "os.sep",
        "g(b=1)",
        "__import__('os').system('true')",
        "lambda: 1",
        "f'{x}'",
        "[i for i in range(3)]",
        "(y := 1)",
        "1 + 1",
        "-x",
        "not True",
        "x[0]",
        "{1, 2}",
        "[*x]",
        "{**x}",
        "...",
        "b'raw'",
        "1j",
        "-True",
        "a if b else c",
    ],
)
def test_non_literal_values_are_rejected(value):
    assert reason(f"[f(a={value})]", "bfcl") == "bad_argument"


@pytest.mark.parametrize(
    "text",
    [
        "[f(1)]",
        "[f(**kw)]",
        "[f(*args)]",
        "[f(a=1, a=2)]",
        "[f()()]",
        "[(lambda: 1)()]",
        "[x[0](a=1)]",
    ],
)
def test_call_shapes_are_rejected(text):
    assert reason(text, "bfcl") == "bad_argument"


@pytest.mark.parametrize(
    "text",
    ["[f(a=1), 3]", "[f(a=1)][0]", "[f(a=1]", "[f(a=\x00)]", "[f(a='\ud800')]"],
)
def test_broken_call_lists(text):
    assert reason(text, "bfcl") == "bad_answer_syntax"


def test_tool_call():
    text = (
        "<think>ok</think>\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>\n'
        '<tool_call>{"name": "pkg.f", "arguments": "{\\"x\\": null}"}</tool_call>'
    )
    assert parse(text, "tool_call") == [
        ("get_weather", {"city": "Paris", "days": [1, 2]}),
        ("pkg.f", {"x": None}),
    ]
    assert parse("No tool fits this request.", "tool_call") == []
    for bad in [
        "<tool_call>{'name': 'f'}</tool_call>",
        '<tool_call>{"name": "f"}</tool_call>',
        '<tool_call>{"name": 1, "arguments": {}}</tool_call>',
        '<tool_call>["f", {}]</tool_call>',
        '<tool_call>{"name": "f", "arguments": {}}',
        "<tool_call>" + "[" * 10_000 + "</tool_call>",
    ]:
        assert reason(bad, "tool_call") == "bad_answer_syntax"
    deep = '<tool_call>{"name": "f", "arguments": {"a": ' + "[" * 500 + "]" * 500 + "}}</tool_call>"
    assert reason(deep, "tool_call") == "bad_argument"


def test_unicode_names():
    """Python normalises identifiers (NFKC): full-width letters are the same name, Cyrillic
    look-alikes are not."""
    assert parse("[ｆ(ａ=1)]", "bfcl") == [("f", {"a": 1})]
    assert parse("[gеt(a=1)]", "bfcl")[0][0] != "get"  # Cyrillic "е"


def test_unknown_format():
    with pytest.raises(ValueError, match="fmt"):
        parse("[]", "json")


NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="<"))  # no tags inside strings: <answer> counts
)


def values(tuples: bool):
    def extend(inner):
        out = st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        return out | st.lists(inner, max_size=3).map(tuple) if tuples else out

    return st.recursive(SCALARS, extend, max_leaves=12)


def calls(tuples: bool):
    name = st.lists(NAMES, min_size=1, max_size=3).map(".".join)
    args = st.dictionaries(NAMES, values(tuples), max_size=4)
    return st.lists(st.tuples(name, args), max_size=4)


@settings(max_examples=300, deadline=None)
@given(calls(tuples=True), st.sampled_from(["bfcl", "think_answer"]))
def test_render_then_parse_is_identity(cs, fmt):
    assert parse(render(cs, fmt, think="plan"), fmt) == cs


@settings(max_examples=150, deadline=None)
@given(calls(tuples=False))
def test_tool_call_render_then_parse_is_identity(cs):
    assert parse(render(cs, "tool_call"), "tool_call") == cs
