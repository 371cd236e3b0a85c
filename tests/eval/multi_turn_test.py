"""fcrl.eval.multi_turn: BFCL's multi-turn data, the conversation loop on BFCL's backends, its
checker, and that only validated `name(key=literal)` calls ever reach BFCL's `eval`."""

import ast
import builtins
import os

import pytest

from fcrl.eval import multi_turn as mt
from tests.verifier.robustness_test import PATH, corpus


def keyword_only(entry: dict) -> bool:
    calls = [n for t in entry["ground_truth"] for s in t
             for n in ast.walk(ast.parse(s, mode="eval")) if isinstance(n, ast.Call)]  # fmt: skip
    return all(not c.args for c in calls)


@pytest.mark.parametrize("category", mt.CATEGORIES)
def test_load(category):
    entries = mt.load(category)
    assert len(entries) == 200
    for e in entries:
        assert len(e["ground_truth"]) == len(e["question"]) and e["function"]
        names = {d["name"] for d in e["function"]}
        for turn, held in e["missed_function"].items():
            assert held and not names & {d["name"] for d in held} and not e["question"][int(turn)]


def play(entry: dict, fmt: str = "bfcl") -> mt.Conversation:
    """The ground truth as the model's responses: each turn's calls in one step, then `[]`."""
    chat = mt.Conversation(entry, fmt)
    for calls in entry["ground_truth"]:
        assert not chat.done
        if calls:
            text = "[" + ", ".join(calls) + "]"
            chat.advance(f"<think>t</think><answer>{text}</answer>" if fmt != "bfcl" else text)
        chat.advance("[]")
    assert chat.done and not chat.force_quit
    return chat


@pytest.mark.parametrize("category", mt.CATEGORIES)
def test_the_ground_truth_played_back_passes_bfcls_checker(category):
    """All 176 entries of multi_turn_base whose ground truth is keyword-only (every backend,
    MathAPI's included), three of each other category."""
    entries = [e for e in mt.load(category) if keyword_only(e)]
    entries = entries if category == "multi_turn_base" else entries[:3]
    for i, entry in enumerate(entries):
        chat = play(entry, "think_answer" if i % 2 else "bfcl")
        assert mt.score(chat.result(), entry) == (True, "ok"), entry["id"]
        # Calls fed back as tool messages, in order, with the backends' outputs.
        assert [m["role"] for m in chat.messages].count("tool") == sum(
            map(len, entry["ground_truth"])
        )


def test_a_wrong_call_fails_the_checker_and_unknown_functions_never_run():
    entry = next(e for e in mt.load("multi_turn_base") if keyword_only(e))
    chat = mt.Conversation(entry, "bfcl")
    chat.advance("[os_system(cmd='ls'), ls()]")
    assert chat.decoded == [[["ls()"]]]
    tools = [m for m in chat.messages if m["role"] == "tool"]
    assert "os_system is not a function here" in tools[-1]["content"]
    while not chat.done:
        chat.advance("[]")
    valid, reason = mt.score(chat.result(), entry)
    assert not valid and reason.startswith("multi_turn")


def test_more_than_twenty_steps_force_quit():
    entry = mt.load("multi_turn_base")[0]
    chat = mt.Conversation(entry, "bfcl")
    for _ in range(mt.MAX_STEPS + 1):
        chat.advance("[ls()]")
    assert chat.done and chat.force_quit
    assert mt.score(chat.result(), entry)[0] is False


def test_the_adversarial_corpus_runs_nothing_but_validated_calls(monkeypatch):
    """Every text of the verifier's adversarial corpus (and the same with `f(` turned into a
    backend function, `cd(`) as a model response: what reaches BFCL's execution is only
    `name(key=literal, ...)` with a backend name; the sentinel never runs, no file appears."""
    reached = []
    module = mt._backend()[1]
    execute = module.execute_multi_turn_func_call

    def recording(calls, *args, **kwargs):
        reached.extend(calls)
        return execute(calls, *args, **kwargs)

    monkeypatch.setattr(module, "execute_multi_turn_func_call", recording)
    calls = []
    monkeypatch.setattr(builtins, "fcrl_sentinel", lambda *a: calls.append(a), raising=False)
    entry = mt.load("multi_turn_base")[0]
    allowed = {d["name"] for d in entry["function"]}
    texts = corpus()
    texts = texts[::3] + [t.replace("f(", "cd(") for t in texts[1::3]]
    for fmt in ("bfcl", "think_answer"):
        chat = mt.Conversation(entry, fmt)
        for text in texts:
            if chat.done:
                chat = mt.Conversation(entry, fmt)
            chat.advance(text[:20_000])
    assert not calls and not os.path.exists(PATH)
    assert reached, "some calls are valid and run"
    for call in reached:
        node = ast.parse(call, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        assert node.func.id in allowed and not node.args
        for keyword in node.keywords:
            assert keyword.arg is not None
            ast.literal_eval(keyword.value)
