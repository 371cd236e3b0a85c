"""fcrl.data.validate (stage 2) on the generated set: every deliberately broken record is
rejected with its reason, every valid one kept, and its ground truth accepts the answer."""

import collections
import json

import pytest

from fcrl.data import records, synth, validate
from fcrl.verifier import verify
from fcrl.verifier.render import render


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """(item, stage-2 outcome) for 5,000 generated records, 10% of them broken."""
    items = synth.with_broken(synth.generate(5000, seed=0), 0.1, seed=1)
    path = tmp_path_factory.mktemp("gen") / "gen.jsonl"
    lines = [
        json.dumps({k: v for k, v in it.items() if k not in ("kind", "broken")}) for it in items
    ]
    path.write_text("\n".join(lines))
    out = []
    for item, record in zip(items, records.read(path, "xlam"), strict=True):
        try:
            out.append((item, validate.validate(record)))
        except records.Bad as e:
            out.append((item, e.reason))
    return out


def test_broken_records_are_rejected_with_their_reason_and_valid_ones_kept(judged):
    outcomes = collections.Counter(
        (item.get("broken", "ok"), "ok" if isinstance(got, dict) else got) for item, got in judged
    )
    assert sum(n for (want, _), n in outcomes.items() if want != "ok") == 500
    assert all(want == got for want, got in outcomes), outcomes
    assert {want for want, _ in outcomes} == {"ok", *synth.BREAK_REASONS}


def test_ground_truth_accepts_the_generated_answer(judged):
    kinds = collections.Counter()
    for item, record in judged:
        if "broken" in item:
            continue
        kinds[item["kind"]] += 1
        calls = [(c["name"], c["arguments"]) for c in json.loads(item["answers"])]
        completion = render(calls, "think_answer", think="plan")
        assert verify(completion, record["ground_truth"], record["tools"]).reward == 1.0, item
    assert set(kinds) == set(synth.KINDS) and min(kinds.values()) > 400


def test_generation_is_deterministic_and_varied():
    a, b = synth.generate(300, seed=5), synth.generate(300, seed=5)
    assert a == b and a != synth.generate(300, seed=6)
    assert len({item["query"] for item in a}) > 280
    assert len({t["name"] for item in a for t in json.loads(item["tools"])}) == len(synth.TOOLS)


def test_optional_parameters_accept_absence_and_default():
    schema = {"properties": {"a": {"type": "integer"}, "b": {"type": "string", "default": "x"},
                             "c": {"type": "string"}}, "required": ["a"]}  # fmt: skip
    assert validate.accepted_values("f", {"a": 1}, schema) == {
        "f": {"a": [1], "b": ["", "x"], "c": [""]}
    }


def test_split_is_deterministic():
    keys = [
        validate.content_key({"messages": [i], "tools": [], "ground_truth": []})
        for i in range(2000)
    ]
    splits = [validate.split_of(k, 0.1) for k in keys]
    assert splits == [validate.split_of(k, 0.1) for k in keys]
    assert 150 < splits.count("val") < 250
