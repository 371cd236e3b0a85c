"""fcrl.data.records: the three readers, tool schemas, and malformed input as rejects."""

import json

import pytest

from fcrl.data import records, validate


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


XLAM = {
    "id": 7,
    "query": "Weather in Oslo?",
    "tools": json.dumps([{"name": "weather", "description": "d",
                          "parameters": {"city": {"type": "str", "description": "c"},
                                         "unit": {"type": "str, optional", "default": "C"}}}]),
    "answers": json.dumps([{"name": "weather", "arguments": {"city": "Oslo"}}]),
}  # fmt: skip


def test_malformed_lines_become_rejects_with_line_and_reason(tmp_path):
    lines = [
        json.dumps(XLAM).encode(),
        b'{"query": "x", "tools": "[]", ',  # cut JSON
        json.dumps({"query": "x", "tools": "[]"}).encode(),  # no answers
        json.dumps({**XLAM, "tools": json.dumps({"name": "weather"})}).encode(),
        b'{"query": "caf\xe9", "tools": "[]", "answers": "[]"}',  # Latin-1, not UTF-8
        b"",
        json.dumps([1, 2]).encode(),
        json.dumps({**XLAM, "tools": "[{"}).encode(),
        json.dumps({**XLAM, "id": 8}).encode(),
    ]
    out = list(records.read(write(tmp_path, "x.jsonl", b"\n".join(lines)), "xlam"))
    rejects = [(r["line"], r["reason"]) for r in out if r.get("stage") == "read"]
    assert rejects == [
        (2, "bad_json"),
        (3, "missing_field"),
        (4, "tools_not_a_list"),
        (5, "not_utf8"),
        (7, "not_an_object"),
        (8, "bad_tools_json"),
    ]
    kept = [r for r in out if "stage" not in r]
    assert [r["id"] for r in kept] == ["7", "8"] and kept[0]["provenance"]["line"] == 1


def test_empty_file_and_json_array(tmp_path):
    assert [r["reason"] for r in records.read(write(tmp_path, "e.json", b" \n"), "xlam")] == [
        "empty_file"
    ]
    array = json.dumps([XLAM, {"query": 1}]).encode()
    out = list(records.read(write(tmp_path, "a.json", array), "xlam"))
    assert out[0]["id"] == "7" and out[1]["reason"] == "missing_field" and out[1]["line"] == 2
    broken = list(records.read(write(tmp_path, "b.json", array[:-5]), "xlam"))
    assert [r["reason"] for r in broken] == ["bad_json"]


def test_xlam_types_become_json_schema():
    tools = records.tool_schemas(
        [{"name": "f", "parameters": {
            "a": {"type": "str"}, "b": {"type": "int, optional"}, "c": {"type": "Optional[float]"},
            "d": {"type": "List[str]", "default": []}, "e": {"type": "Dict[str, Any]"},
            "g": {"type": "bool", "enum": [True]}}}]
    )[0]["parameters"]  # fmt: skip
    props = tools["properties"]
    assert tools["required"] == ["a", "e", "g"]
    assert [props[k].get("type") for k in "abcdeg"] == [
        "string", "integer", "number", "array", "object", "boolean"
    ]  # fmt: skip
    assert props["d"]["items"] == {"type": "string"} and props["g"]["enum"] == [True]


def test_bfcl_layout_with_sibling_possible_answer(tmp_path):
    test = {"id": "t_0", "question": [[{"role": "user", "content": "Area of a 3 by 4 box?"}]],
            "function": [{"name": "area", "description": "", "parameters": {"type": "dict",
                          "properties": {"w": {"type": "integer"}, "h": {"type": "float"}},
                          "required": ["w", "h"]}}]}  # fmt: skip
    path = write(tmp_path, "set.json", json.dumps(test).encode())
    (tmp_path / "possible_answer").mkdir()
    answer = {"id": "t_0", "ground_truth": [{"area": {"w": [3], "h": [4.0, 4]}}]}
    (tmp_path / "possible_answer" / "set.json").write_text(json.dumps(answer))
    (record,) = records.read(path, "bfcl")
    assert record["tools"][0]["parameters"]["properties"]["h"]["type"] == "number"
    assert validate.validate(record)["ground_truth"] == answer["ground_truth"]


def test_chat_layouts(tmp_path):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    user = {"role": "user", "content": "do it"}
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    hermes = '<tool_call>\n{"name": "f", "arguments": {"x": 2}}\n</tool_call>'
    answers = [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "assistant", "content": hermes},
        {"role": "assistant", "content": "I cannot do that."},
    ]
    rows = [{"messages": [user, a], "tools": tools} for a in answers]
    rows.append({"messages": [user], "tools": tools})
    path = write(tmp_path, "c.jsonl", b"\n".join(json.dumps(r).encode() for r in rows))
    out = list(records.read(path, "chat"))
    assert out[3]["reason"] == "no_answer"
    truths = [validate.validate(r)["ground_truth"] for r in out[:3]]
    assert truths == [[{"f": {"x": [1]}}], [{"f": {"x": [2]}}], []]


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        list(records.read(write(tmp_path, "x", b"{}"), "sharegpt"))
