"""Source readers: xLAM, BFCL and chat files -> canonical records, or rejects with line and reason.

A canonical record is a plain dict:
  id: str; messages: [{"role", "content"}] (the prompt); tools: [{"name", "description",
  "parameters": JSON schema}]; answer: the source's answer, as given (stage 2 parses and checks
  it into `ground_truth`, BFCL's accepted-values form); source: "xlam" | "bfcl" | "chat";
  provenance: {"file", "line"}.
Nothing here raises on bad input: every unreadable unit becomes a reject {"stage": "read",
"reason", "detail", "file", "line", "raw"}.
"""

import json
import pathlib
import re
from collections.abc import Iterator

FORMATS = ("xlam", "bfcl", "chat")
# Type names of xLAM / Python annotations / BFCL docs -> JSON Schema.
JSON_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "array": "array",
    "tuple": "array",
    "set": "array",
    "dict": "object",
    "object": "object",
}


class Bad(Exception):
    """A unit of input that cannot become a record: `reason` is a short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def read(path: str | pathlib.Path, fmt: str) -> Iterator[dict]:
    """Records and rejects (those have "stage": "read") of one file, in file order."""
    if fmt not in FORMATS:
        raise ValueError(f"format: unknown {fmt!r}; expected one of {FORMATS}")
    path = pathlib.Path(path)
    data = path.read_bytes()
    if not data.strip():
        yield reject(path, 0, "empty_file", "no records", b"")
        return
    convert = {"xlam": from_xlam, "bfcl": from_bfcl, "chat": from_chat}[fmt]
    answers = bfcl_answers(path) if fmt == "bfcl" else {}
    for line, raw in units(path, data):
        if isinstance(raw, UnicodeDecodeError):
            yield reject(path, line, "not_utf8", f"byte {raw.start}: {raw.reason}", b"")
            continue
        if isinstance(raw, json.JSONDecodeError):
            yield reject(path, line, "bad_json", str(raw), b"")
            continue
        try:
            item = json.loads(raw.decode("utf-8")) if isinstance(raw, bytes) else raw
            record = convert(item, answers)
        except UnicodeDecodeError as e:
            yield reject(path, line, "not_utf8", f"byte {e.start}: {e.reason}", raw)
        except json.JSONDecodeError as e:
            yield reject(path, line, "bad_json", str(e), raw)
        except Bad as e:
            yield reject(path, line, e.reason, e.detail, raw)
        else:
            record["provenance"] = {"file": str(path), "line": line}
            yield record


def units(path: pathlib.Path, data: bytes) -> Iterator[tuple[int, bytes | object]]:
    """(line, raw line) of a JSON Lines file, or (item number, item) of a JSON array; a JSON
    array that does not decode is one unit: (1, the error)."""
    if data.lstrip()[:1] == b"[":  # one JSON array (xlam-function-calling-60k ships this way)
        try:
            items = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield 1, e  # the whole file is one bad unit
            return
        for i, item in enumerate(items):
            yield i + 1, item
        return
    for i, raw in enumerate(data.split(b"\n")):
        if raw.strip():
            yield i + 1, raw


def reject(path: pathlib.Path, line: int, reason: str, detail: str, raw) -> dict:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(raw)[:500]
    return {
        "stage": "read",
        "reason": reason,
        "detail": detail,
        "file": str(path),
        "line": line,
        "raw": text[:500],
    }


def field(item, name: str):
    if not isinstance(item, dict):
        raise Bad("not_an_object", f"a {type(item).__name__}, not a JSON object")
    if name not in item:
        raise Bad("missing_field", name)
    return item[name]


def as_json(value, name: str):
    """A field that may hold JSON as a string (xLAM's tools and answers do)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise Bad(f"bad_{name}_json", str(e)) from None
    return value


def from_xlam(item, answers: dict) -> dict:
    """xlam-function-calling-60k: query, tools and answers (JSON strings), optional id."""
    query = field(item, "query")
    tools = as_json(field(item, "tools"), "tools")
    answer = field(item, "answers")
    if not isinstance(query, str) or not query.strip():
        raise Bad("bad_query", "query must be a non-empty string")
    return {
        "id": str(item.get("id", "")),
        "messages": [{"role": "user", "content": query}],
        "tools": tool_schemas(tools),
        "answer": answer,
        "source": "xlam",
    }


def from_bfcl(item, answers: dict) -> dict:
    """BFCL's layout: id, question (turns of messages), function, and a ground truth inline or
    in the sibling possible_answer/<same file name>."""
    question = field(item, "question")
    turns = question[0] if question and isinstance(question[0], list) else question
    if not isinstance(turns, list) or not all(isinstance(m, dict) for m in turns):
        raise Bad("bad_question", "question must be a list of messages (or of turns of them)")
    ident = str(field(item, "id"))
    ground_truth = item.get("ground_truth", answers.get(ident))
    if ground_truth is None:
        raise Bad("missing_field", "ground_truth (inline or in possible_answer/)")
    return {
        "id": ident,
        "messages": [
            {"role": m.get("role", "user"), "content": m.get("content", "")} for m in turns
        ],
        "tools": tool_schemas(field(item, "function")),
        "answer": ground_truth,
        "source": "bfcl",
    }


def bfcl_answers(path: pathlib.Path) -> dict:
    """id -> ground truth from possible_answer/<file name> beside `path`, if there is one."""
    sibling = path.parent / "possible_answer" / path.name
    if not sibling.exists():
        return {}
    out = {}
    for raw in sibling.read_bytes().split(b"\n"):
        try:
            item = json.loads(raw)
            out[str(item["id"])] = item["ground_truth"]
        except (ValueError, KeyError, TypeError):
            continue  # a bad answer line: its test line is rejected as missing ground_truth
    return out


def from_chat(item, answers: dict) -> dict:
    """Chat JSONL: messages ending with the assistant's answer (OpenAI `tool_calls`, Hermes
    `<tool_call>` text, or plain text = no call) and tools (OpenAI or plain docs)."""
    messages = field(item, "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Bad("bad_messages", "messages must be a list of objects")
    if not messages or messages[-1].get("role") != "assistant":
        raise Bad("no_answer", "the last message must be the assistant's answer")
    *prompt, last = messages
    if not any(m.get("role") == "user" for m in prompt):
        raise Bad("no_query", "no user message before the answer")
    if last.get("tool_calls"):
        answer = [c.get("function", c) if isinstance(c, dict) else c for c in last["tool_calls"]]
    else:
        answer = last.get("content") or ""
    return {
        "id": str(item.get("id", "")),
        "messages": [{"role": m.get("role"), "content": m.get("content") or ""} for m in prompt],
        "tools": tool_schemas(item.get("tools", [])),
        "answer": answer,
        "source": "chat",
    }


def tool_schemas(tools) -> list[dict]:
    """Function docs (xLAM, BFCL or OpenAI style) as {name, description, parameters: schema}."""
    if not isinstance(tools, list):
        raise Bad("tools_not_a_list", f"a {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise Bad("bad_tool", f"tools[{i}] needs a string name")
        params = tool.get("parameters") or {}
        if not isinstance(params, dict):
            raise Bad("bad_tool", f"tools[{i}].parameters is not an object")
        out.append(
            {
                "name": tool["name"],
                "description": str(tool.get("description", "")),
                "parameters": schema_of(params, f"tools[{i}]"),
            }
        )
    return out


def schema_of(params: dict, where: str) -> dict:
    """JSON Schema of a parameters object: already one (BFCL's type names mapped), or xLAM's
    {name: {"type": "str, optional", "description", "default"}}."""
    if isinstance(params.get("properties"), dict):
        props = {k: prop_schema(v, f"{where}.{k}") for k, v in params["properties"].items()}
        required = params.get("required", [])
        if not isinstance(required, list):
            raise Bad("bad_tool", f"{where}.required is not a list")
        return {
            "type": "object",
            "properties": props,
            "required": [r for r in required if r in props],
        }
    props, required = {}, []
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise Bad("bad_tool", f"{where}.{name} is not an object")
        prop = prop_schema(spec, f"{where}.{name}")
        if not prop.pop("optional", False) and "default" not in spec:
            required.append(name)
        props[name] = prop
    return {"type": "object", "properties": props, "required": required}


def prop_schema(spec: dict, where: str) -> dict:
    """One property: its JSON type ("optional" set for xLAM's "X, optional" / Optional[X]),
    items, enum, default and description."""
    if not isinstance(spec, dict):
        raise Bad("bad_tool", f"{where} is not an object")
    out = {k: spec[k] for k in ("description", "enum", "default") if k in spec}
    declared = spec.get("type", "")
    if isinstance(declared, list):  # JSON Schema ["string", "null"]
        declared = next((t for t in declared if t != "null"), "")
    declared = str(declared).strip()
    if declared.endswith(", optional"):
        declared, out["optional"] = declared[: -len(", optional")], True
    if m := re.fullmatch(r"Optional\[(.*)\]", declared):
        declared, out["optional"] = m.group(1), True
    base, _, inner = declared.partition("[")
    json_type = JSON_TYPES.get(base.strip().lower())
    if json_type:
        out["type"] = json_type
    if isinstance(spec.get("items"), dict):
        out["items"] = prop_schema(spec["items"], f"{where}.items")
    elif json_type == "array" and (item_type := JSON_TYPES.get(inner.rstrip("]").strip().lower())):
        out["items"] = {"type": item_type}
    return out
