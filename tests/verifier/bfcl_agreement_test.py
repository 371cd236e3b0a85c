"""Our verifier agrees with BFCL's official checker on every python single-turn category.

Cases per entry: the ground truth rendered as text (first accepted values, and last ones), and
the systematic corruptions of `fcrl.verifier.render.CORRUPTIONS`; irrelevance entries get no-call
answers and calls to the listed functions instead. Every disagreement, and every entry whose
ground truth cannot be satisfied, is listed in bfcl_disagreements.json with its reason.
"""

import json
import pathlib

import pytest

from fcrl.eval import bfcl
from fcrl.eval.bfcl import official_accepts
from fcrl.verifier import verify
from fcrl.verifier.render import CORRUPTIONS, first_accepted, render

FIXTURE = json.loads((pathlib.Path(__file__).parent / "bfcl_disagreements.json").read_text())
DUMMY = {"string": "x", "integer": 1, "float": 1.5, "boolean": True, "array": [], "dict": {}}


def last_accepted(ground_truth: list, tools: list) -> list:
    """The right answer built from each parameter's last accepted value instead of its first."""
    flipped = [
        {n: {p: vs[::-1] for p, vs in ps.items()} for n, ps in e.items()} for e in ground_truth
    ]
    return first_accepted(flipped, tools)


def cases(entry: dict) -> list[tuple[str, str]]:
    """(case name, prompt-mode text) for one entry."""
    gt, tools = entry["ground_truth"], entry["function"]
    if not gt:  # irrelevance: right answers are no call; any call is wrong
        texts = [
            ("empty", "[]"),
            ("prose", "None of the functions can answer this question."),
            ("prose_parens", "Sorry (no function fits), I cannot do that."),
            ("prose_brackets", "[No suitable function]"),
            ("unterminated", "[lookup(query='x'"),
            ("unlisted_call", "[search_web(query='weather in Paris')]"),
        ]
        for i, tool in enumerate(tools[:3]):
            props = tool["parameters"].get("properties", {})
            required = tool["parameters"].get("required", [])
            args = {p: DUMMY.get(props[p].get("type"), "x") for p in required if p in props}
            texts += [
                (f"call_{i}", render([(tool["name"], args)])),
                (f"bare_{i}", f"{tool['name']}()"),
            ]
        return texts
    right = first_accepted(gt, tools)
    texts = [("right", render(right)), ("right_last", render(last_accepted(gt, tools)))]
    for name, corrupt in CORRUPTIONS.items():
        calls = corrupt(right)
        if calls is not None:
            texts.append((name, render(calls)))
    return texts


@pytest.fixture(scope="module")
def verdicts() -> list[dict]:
    rows = []
    for category in bfcl.PYTHON:
        for entry in bfcl.load(category):
            for case, text in cases(entry):
                ours = verify(text, entry["ground_truth"], entry["function"], fmt="bfcl")
                wrapped = verify(f"<think>ok</think><answer>{text}</answer>", entry["ground_truth"],
                                 entry["function"])  # fmt: skip
                assert wrapped.reward == ours.reward, (entry["id"], case, text)
                rows.append(
                    {
                        "id": entry["id"],
                        "case": case,
                        "ours": ours.reward == 1.0,
                        "bfcl": official_accepts(text, entry, category),
                        "reason": ours.reason,
                    }
                )
    return rows


def test_disagreements_are_the_listed_ones_and_rare(verdicts):
    found = {
        (r["id"], r["case"]): (r["ours"], r["bfcl"]) for r in verdicts if r["ours"] != r["bfcl"]
    }
    listed = {(d["id"], d["case"]): (d["ours"], d["bfcl"]) for d in FIXTURE["disagreements"]}
    assert found == listed
    assert len(found) < 0.001 * len(verdicts), (len(found), len(verdicts))


def test_every_entry_has_six_cases_and_every_category_is_covered(verdicts):
    per_entry = {}
    for r in verdicts:
        per_entry[r["id"]] = per_entry.get(r["id"], 0) + 1
    assert min(per_entry.values()) >= 6
    assert len(per_entry) == sum(len(bfcl.load(c)) for c in bfcl.PYTHON)


def test_ground_truth_as_text_is_accepted_by_both(verdicts):
    unsatisfiable = {u["id"] for u in FIXTURE["unsatisfiable"]}
    rejected = {r["id"] for r in verdicts if r["case"] == "right" and not (r["ours"] and r["bfcl"])}
    assert rejected == unsatisfiable


def test_corruptions_are_rejected(verdicts):
    """Corruptions that always break a right answer: both checkers must say no."""
    breaking = {"wrong_name", "extra_param", "drop_call", "duplicate_call"}
    accepted = [r for r in verdicts if r["case"] in breaking and (r["ours"] or r["bfcl"])]
    assert not accepted
    reasons = {r["case"]: r["reason"] for r in verdicts if r["id"] == "simple_python_0"}
    assert reasons["wrong_name"] == "wrong_function"
    assert reasons["extra_param"] == "unexpected_param"
    assert reasons["drop_call"] == "no_call"
    assert reasons["duplicate_call"] == "wrong_count"
