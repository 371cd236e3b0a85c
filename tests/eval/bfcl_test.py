"""fcrl.eval.bfcl: the installed package's data, joined by id, and the official checker."""

import pytest

from fcrl.eval import bfcl

COUNTS = {
    "simple_python": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "live_simple": 258,
    "live_multiple": 1053,
    "live_parallel": 16,
    "live_parallel_multiple": 24,
    "irrelevance": 240,
    "live_irrelevance": 884,
}


@pytest.mark.parametrize("category", list(bfcl.CATEGORIES))
def test_load(category):
    entries = bfcl.load(category)
    assert len(entries) == COUNTS[category]
    assert all(e["function"] is not None and e["question"] for e in entries)
    assert all(bool(e["ground_truth"]) == bfcl.CATEGORIES[category] for e in entries)


def test_unknown_category():
    with pytest.raises(ValueError, match="category"):
        bfcl.load("simple_java")


def test_official_checker():
    entry = bfcl.load("simple_python")[0]
    ((name, params),) = entry["ground_truth"][0].items()
    args = ", ".join(f"{p}={vs[0]!r}" for p, vs in params.items() if vs[0] != "")
    assert bfcl.official_accepts(f"[{name}({args})]", entry, "simple_python")
    assert not bfcl.official_accepts(f"[{name}_x({args})]", entry, "simple_python")
