"""fcrl.eval.bfcl: the installed package's data, joined by id, and the official checker."""

import pytest

from fcrl.eval import bfcl

COUNTS = {
    "simple_python": 400,
    "simple_java": 100,
    "simple_javascript": 50,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "live_simple": 258,
    "live_multiple": 1053,
    "live_parallel": 16,
    "live_parallel_multiple": 24,
    "irrelevance": 240,
    "live_irrelevance": 884,
    "live_relevance": 16,
}


@pytest.mark.parametrize("category", list(bfcl.CATEGORIES))
def test_load(category):
    entries = bfcl.load(category)
    assert len(entries) == COUNTS[category]
    assert all(e["function"] is not None and e["question"] for e in entries)
    assert all(bool(e["ground_truth"]) == bfcl.has_answers(category) for e in entries)


def test_unknown_category():
    with pytest.raises(ValueError, match="category"):
        bfcl.load("simple_rust")


def test_official_checker():
    entry = bfcl.load("simple_python")[0]
    ((name, params),) = entry["ground_truth"][0].items()
    args = ", ".join(f"{p}={vs[0]!r}" for p, vs in params.items() if vs[0] != "")
    assert bfcl.official_accepts(f"[{name}({args})]", entry, "simple_python")
    assert not bfcl.official_accepts(f"[{name}_x({args})]", entry, "simple_python")


def test_official_checker_of_java_and_relevance():
    entry = bfcl.load("simple_java")[1]  # useShortName: true, params: {limit: 50, ...}
    call = ("[SQLCompletionAnalyzer.makeProposalsFromObject(object='Customers', useShortName="
            "'true', params='new HashMap<String, Object>() {{ put(\"limit\", 50); "
            "put(\"schemaFilter\", \"public\"); }}')]")  # fmt: skip
    assert bfcl.official_accepts(call, entry, "simple_java")
    assert not bfcl.official_accepts(call.replace("'true'", "'false'"), entry, "simple_java")
    entry = bfcl.load("live_relevance")[0]
    assert bfcl.official_accepts("[anything(a=1)]", entry, "live_relevance")
    assert not bfcl.official_accepts("No call.", entry, "live_relevance")


def test_evals_code_finds_what_bfcls_decoder_would_eval():
    assert bfcl.evals_code("[f(a=1+2)]") and bfcl.evals_code("f(a=lambda: 1)")
    assert bfcl.evals_code("[f(a=__import__('os').getpid() * 1)]")
    assert not bfcl.evals_code("[f(a=-1, b=[1, 2], c={'k': 'v'})]")
    assert not bfcl.evals_code("You can use the (f) function")
