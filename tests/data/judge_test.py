"""fcrl.data.judge: verdict parsing, the stage logic (with a scripted judge), the cache, and the
real backends: HTTP against fcrl.serve running as a process, and the local model."""

import json

import pytest

from fcrl.data import judge as judge_lib

RECORD = {
    "id": "1",
    "messages": [{"role": "user", "content": "Weather in Oslo?"}],
    "tools": [{"name": "weather", "description": "", "parameters": {"type": "object",
               "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
    "answer": [{"name": "weather", "arguments": {"city": "Olso"}}],
    "source": "chat",
}  # fmt: skip


class Scripted:
    """A judge that replies from a script, in order, and counts what it was asked."""

    name = "scripted"

    def __init__(self, *replies: dict | str):
        self.replies, self.prompts = list(replies), []

    def __call__(self, messages):
        self.prompts.append(messages[0]["content"])
        reply = self.replies.pop(0)
        return reply if isinstance(reply, str) else "Sure. " + json.dumps(reply) + " Done."


def verdict(correct: bool, corrected=None, **flags) -> dict:
    return {"function_call_task": True, "tools_can_solve": True, "answer_correct": correct,
            "corrected_answer": corrected, **flags}  # fmt: skip


def test_verdict_of():
    assert judge_lib.verdict_of('x {"a": 1} {"answer_correct": true} y') == {"answer_correct": True}
    assert judge_lib.verdict_of("no json here") is None
    assert judge_lib.verdict_of('{"answer_correct": "yes"}') is None


def test_stage1_corrects_then_keeps(tmp_path):
    fixed = [{"name": "weather", "arguments": {"city": "Oslo"}}]
    chat = Scripted(verdict(False, fixed), verdict(True))
    judge = judge_lib.Judge(chat, tmp_path / "cache.jsonl")
    record, outcome = judge_lib.stage1(judge, RECORD, rounds=2, keep_unparseable=True)
    assert outcome == "changed" and record["answer"] == fixed
    assert "Olso" in chat.prompts[0] and "Oslo" in chat.prompts[1]


@pytest.mark.parametrize(
    "replies, outcome",
    [
        ([verdict(True)], "kept"),
        ([verdict(False)], "judged_wrong"),
        (
            [verdict(False, [{"name": "weather", "arguments": {}}]), verdict(False, [])],
            "judged_wrong",
        ),
        ([verdict(True, function_call_task=False)], "not_function_call_task"),
        ([verdict(True, tools_can_solve=False)], "tools_cannot_solve"),
        (["I think it is fine."], "abstained"),
    ],
)
def test_stage1_outcomes(tmp_path, replies, outcome):
    judge = judge_lib.Judge(Scripted(*replies), tmp_path / "cache.jsonl")
    record, got = judge_lib.stage1(judge, RECORD, rounds=2, keep_unparseable=True)
    assert got == outcome and (record is None) == (outcome not in ("kept", "abstained"))


def test_cache_survives_a_new_process_and_a_cut_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    first = judge_lib.Judge(Scripted(verdict(True)), path)
    judge_lib.stage1(first, RECORD, rounds=1, keep_unparseable=True)
    with path.open("a") as f:
        f.write('{"key": "abc", "rep')  # a write cut by a crash
    again = judge_lib.Judge(Scripted(), path)  # would fail if asked
    assert judge_lib.stage1(again, RECORD, rounds=1, keep_unparseable=True)[1] == "kept"
    assert (again.asked, again.cached) == (0, 1)


def test_http_judge_against_fcrl_serve(served, tmp_path):
    chat = judge_lib.HttpChat(served, max_tokens=8)
    judge = judge_lib.Judge(chat, tmp_path / "cache.jsonl")
    record, outcome = judge_lib.stage1(judge, RECORD, rounds=1, keep_unparseable=True)
    assert outcome == "abstained" and record == RECORD  # a random tiny model gives no verdict
    assert judge.asked == 1 and len((tmp_path / "cache.jsonl").read_text().splitlines()) == 1
    with pytest.raises(judge_lib.JudgeError, match="400"):
        judge_lib.HttpChat(served, max_tokens=10_000)([{"role": "user", "content": "hi"}])
    with pytest.raises(RuntimeError, match="judge endpoint"):
        judge_lib.HttpChat("http://127.0.0.1:9", retries=0)([{"role": "user", "content": "hi"}])


def test_local_judge(tiny_model_dir, tmp_path):
    chat = judge_lib.LocalChat(tiny_model_dir, max_new_tokens=8)
    reply = chat([{"role": "user", "content": "Is this right?"}])
    assert isinstance(reply, str) and reply == chat([{"role": "user", "content": "Is this right?"}])
    with pytest.raises(judge_lib.JudgeError):
        chat([{"role": "user", "content": "x" * 5000}])  # longer than the context
