"""fcrl.verifier.match: BFCL's rules, one small case each, and the one-to-one parallel pairing."""

import pytest

from fcrl.eval.bfcl import official_accepts
from fcrl.verifier.match import compile_ground_truth, match, standardize
from fcrl.verifier.render import render

TOOLS = [
    {
        "name": "book",
        "parameters": {
            "type": "dict",
            "properties": {
                "city": {"type": "string"},
                "nights": {"type": "integer"},
                "budget": {"type": "float"},
                "pets": {"type": "boolean"},
                "dates": {"type": "array", "items": {"type": "string"}},
                "rooms": {"type": "array", "items": {"type": "integer"}},
                "point": {"type": "tuple", "items": {"type": "float"}},
                "filters": {"type": "dict"},
                "guests": {"type": "array", "items": {"type": "dict"}},
                "note": {"type": "string"},
            },
            "required": ["city"],
        },
    }
]
GT = [
    {
        "book": {
            "city": ["New York, NY", "NYC"],
            "nights": [3],
            "budget": [200.0, ""],
            "pets": [False, ""],
            "dates": [["2024-05-01", "2024-05-04"], ""],
            "rooms": [[1, 2], ""],
            "point": [[1.5, 2.0], ""],
            "filters": [{"stars": [4, 5], "area": ["center", ""]}, ""],
            "guests": [[{"name": ["Ann"]}, {"name": ["Bob"], "age": [30, ""]}], ""],
        }
    }
]


def judge(text_args: dict, gt=GT, tools=TOOLS, name="book") -> str:
    return match([(name, text_args)], compile_ground_truth(gt, tools))[0]


BASE = {"city": "NYC", "nights": 3}


@pytest.mark.parametrize(
    "args, expected",
    [
        (BASE, "ok"),
        ({"city": "new york ny", "nights": 3}, "ok"),  # case, spaces, punctuation ignored
        ({"city": "New-York/NY", "nights": 3}, "ok"),
        ({"city": "Boston", "nights": 3}, "wrong_value"),
        ({"nights": 3}, "missing_required"),  # required by the doc
        ({"city": "NYC"}, "missing_required"),  # required by the ground truth (no "")
        ({**BASE, "note": "quiet"}, "unexpected_param"),  # in the doc, not in the ground truth
        ({**BASE, "color": "red"}, "unexpected_param"),  # in neither
        ({**BASE, "nights": 3.0}, "wrong_type"),  # float is not accepted for integer
        ({**BASE, "budget": 200}, "ok"),  # int is accepted for float
        ({**BASE, "budget": 200.5}, "wrong_value"),
        ({**BASE, "pets": 0}, "wrong_type"),  # int is not bool
        ({**BASE, "nights": True}, "wrong_type"),  # bool is not int
        ({**BASE, "dates": ["2024 05 01", "2024-05-04"]}, "ok"),
        ({**BASE, "dates": ["2024-05-04", "2024-05-01"]}, "wrong_value"),  # lists are ordered
        ({**BASE, "rooms": [1, "2"]}, "wrong_value"),  # optional arrays skip the element check
        ({**BASE, "rooms": (1, 2)}, "wrong_type"),  # a tuple is not an array, as in BFCL
        ({**BASE, "point": (1.5, 2.0)}, "ok"),  # but counts as a list for a tuple parameter
        ({**BASE, "filters": {"stars": 5}}, "ok"),  # dict key by key; "area" may be left out
        ({**BASE, "filters": {"stars": 3}}, "wrong_value"),
        ({**BASE, "filters": {"stars": 4, "pool": True}}, "wrong_value"),
        ({**BASE, "filters": {"area": "center"}}, "wrong_value"),  # "stars" is needed
        ({**BASE, "guests": [{"name": "ann"}, {"name": "Bob", "age": 30}]}, "ok"),
        ({**BASE, "guests": [{"name": "Bob"}, {"name": "Ann"}]}, "wrong_value"),
        ({**BASE, "guests": [{"name": "Ann"}]}, "wrong_value"),
    ],
)
def test_bfcl_rules(args, expected):
    assert judge(args) == expected
    entry = {"function": TOOLS, "ground_truth": GT}
    assert official_accepts(render([("book", args)]), entry, "simple_python") == (expected == "ok")


def test_array_element_types():
    gt = [{"book": {"city": ["NYC"], "rooms": [[1, 2]]}}]
    assert judge({"city": "NYC", "rooms": [1, 2]}, gt=gt) == "ok"
    assert judge({"city": "NYC", "rooms": [1, "2"]}, gt=gt) == "wrong_type"
    assert judge({"city": "NYC", "rooms": [1.0, 2.0]}, gt=gt) == "wrong_type"
    for rooms, ok in [([1, 2], True), ([1, "2"], False), ([1.0, 2.0], False)]:
        text = render([("book", {"city": "NYC", "rooms": rooms})])
        entry = {"function": TOOLS, "ground_truth": gt}
        assert official_accepts(text, entry, "simple_python") == ok


def test_wrong_function():
    assert judge(BASE, name="book_hotel") == "wrong_function"


def test_without_tools_the_ground_truth_gives_the_types():
    assert judge(BASE, tools=None) == "ok"
    assert judge({**BASE, "budget": 200}, tools=None) == "ok"
    assert judge({**BASE, "nights": 3.0}, tools=None) == "wrong_type"
    assert judge({**BASE, "note": "x"}, tools=None) == "unexpected_param"
    assert judge({**BASE, "guests": [{"name": "ann"}, {"name": "Bob"}]}, tools=None) == "ok"


def test_standardize():
    # lower case; spaces and , . / - _ * ^ removed; ' becomes "
    assert standardize("New York, N.Y. / it's_A-B*C^D") == 'newyorkny it"sabcd'.replace(" ", "")


def test_parallel_pairing_is_one_to_one_and_order_free():
    """The first expected call accepts either company; a greedy pairing gives it the Apple call
    that only the second can take (BFCL's parallel_178)."""
    gt = [
        {"price": {"company": ["Microsoft", "Apple"], "day": [1]}},
        {"price": {"company": ["Apple"], "day": [1]}},
    ]
    expected = compile_ground_truth(gt)
    apple, msft = (
        ("price", {"company": "Apple", "day": 1}),
        ("price", {"company": "Microsoft", "day": 1}),
    )
    assert match([apple, msft], expected)[0] == "ok"
    assert match([msft, apple], expected)[0] == "ok"
    assert match([apple, apple], expected)[0] == "ok"  # the first accepts Apple too
    assert match([msft, msft], expected)[0] == "wrong_value"
    assert match([apple], expected)[0] == "wrong_count"
    assert match([], expected)[0] == "no_call"


def test_closest_miss_is_reported():
    gt = [{"f": {"a": [1]}}, {"g": {"b": ["x"]}}]
    calls = [("f", {"a": 1}), ("g", {"b": "y"})]
    assert match(calls, compile_ground_truth(gt))[0] == "wrong_value"


def test_irrelevance():
    assert match([], []) == ("ok", "")
    assert match([("f", {})], [])[0] == "call_on_irrelevant"


@pytest.mark.parametrize(
    "gt, tools, field",
    [
        ({"f": {}}, None, "ground_truth"),
        ([{"f": {}, "g": {}}], None, r"ground_truth\[0\]"),
        ([["f"]], None, r"ground_truth\[0\]"),
        ([{"f": {"a": 1}}], None, r"ground_truth\[0\].f.a"),
        ([{"f": {}}], {"name": "f"}, "tools"),
        ([{"f": {}}], [{"description": "no name"}], r"tools\[0\]"),
        ([{"f": {}}], [{"name": "f", "parameters": []}], r"tools\[0\].parameters"),
        ([{"f": {}}], [{"name": "f", "parameters": {"required": "a"}}], r"required"),
    ],
)
def test_bad_ground_truth_or_tools_name_the_field(gt, tools, field):
    with pytest.raises(ValueError, match=field):
        compile_ground_truth(gt, tools)


def test_openai_style_tools():
    tools = [{"type": "function", "function": TOOLS[0]}]
    assert judge({**BASE, "nights": 3.0}, tools=tools) == "wrong_type"
