"""Stage 2: rule-based AST validation (METHOD.md §5) of canonical records.

The answer must parse (JSON calls, `<tool_call>` blocks or a BFCL call list, read with the
verifier's parser); every called function must exist in the tools; required parameters must be
present; no parameter may be invented; values must fit the declared JSON types and enums. A valid
record gets its `ground_truth` in BFCL's accepted-values form: each passed value, and for each
optional parameter left out, "" (may stay out) or its declared default.
"""

import hashlib
import json

from fcrl.data.records import Bad
from fcrl.verifier.parse import Rejected, parse_call_list, parse_tool_calls

REASONS = {
    "answer_unparseable": "the answer is not JSON calls, <tool_call> blocks or a call list",
    "unknown_function": "a call to a function the tools do not declare",
    "missing_required": "a required parameter is missing",
    "invented_param": "a parameter the function does not declare",
    "wrong_type": "a value that does not fit its declared type",
    "not_in_enum": "a value outside its declared enum",
    "duplicate": "the same prompt, tools and ground truth as an earlier record",
}
PY_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


def validate(record: dict) -> dict:
    """The record with `ground_truth` (and without `answer`); raises Bad(reason, detail)."""
    tools = {t["name"]: t["parameters"] for t in record["tools"]}
    if record["source"] == "bfcl":
        ground_truth = record["answer"]
        check_ground_truth(ground_truth, tools)
    else:
        calls = answer_calls(record["answer"], prose_is_no_call=record["source"] == "chat")
        for name, args in calls:
            check_call(name, args, tools)
        ground_truth = [accepted_values(name, args, tools[name]) for name, args in calls]
    out = {k: v for k, v in record.items() if k != "answer"}
    out["ground_truth"] = ground_truth
    return out


def answer_calls(answer, prose_is_no_call: bool) -> list[tuple[str, dict]]:
    """(name, arguments) of each call of a source answer."""
    if isinstance(answer, str):
        text = answer.strip()
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as e:
            try:
                if "<tool_call>" in text:
                    return parse_tool_calls(text)
                if text.startswith("[") and "(" in text:
                    return parse_call_list(text)
            except Rejected as r:
                raise Bad("answer_unparseable", r.detail) from None
            if prose_is_no_call and not text.startswith(("[", "{")):
                return []  # a plain-text reply: no call
            raise Bad("answer_unparseable", f"malformed JSON: {e}") from None
    if isinstance(answer, dict):
        answer = [answer]
    if not isinstance(answer, list):
        raise Bad("answer_unparseable", f"a {type(answer).__name__}, not a list of calls")
    calls = []
    for i, call in enumerate(answer):
        args = call.get("arguments", {}) if isinstance(call, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise Bad("answer_unparseable", f"call {i}: arguments: {e}") from None
        if not isinstance(args, dict) or not isinstance(call.get("name"), str):
            raise Bad("answer_unparseable", f'call {i}: needs "name" and object "arguments"')
        calls.append((call["name"], args))
    return calls


def check_call(name: str, args: dict, tools: dict) -> None:
    schema = check_names(name, args, tools)
    for param, value in args.items():
        check_value(value, schema["properties"][param], f"{name}.{param}")


def check_names(name: str, params: dict, tools: dict) -> dict:
    """The function exists, its required parameters are there, none is invented: its schema."""
    if name not in tools:
        raise Bad("unknown_function", name)
    schema = tools[name]
    for param in schema.get("required", []):
        if param not in params:
            raise Bad("missing_required", f"{name}: {param}")
    for param in params:
        if param not in schema["properties"]:
            raise Bad("invented_param", f"{name}: {param}")
    return schema


def check_value(value, prop: dict, where: str) -> None:
    """The JSON type (int fits number, bool fits neither integer nor number) and enum."""
    kinds = PY_TYPES.get(prop.get("type"))
    bad_bool = isinstance(value, bool) and prop.get("type") in ("integer", "number")
    if kinds and (not isinstance(value, kinds) or bad_bool):
        raise Bad("wrong_type", f"{where}: {value!r:.60} is not {prop['type']}")
    if "enum" in prop and value not in prop["enum"]:
        raise Bad("not_in_enum", f"{where}: {value!r:.60} not in {prop['enum']!r:.100}")
    if isinstance(value, (list, tuple)) and isinstance(prop.get("items"), dict):
        for i, item in enumerate(value):
            check_value(item, prop["items"], f"{where}[{i}]")


def check_ground_truth(ground_truth, tools: dict) -> None:
    """A BFCL-style ground truth against the tools: every accepted value is checked."""
    if not isinstance(ground_truth, list) or not all(
        isinstance(e, dict) and len(e) == 1 for e in ground_truth
    ):
        raise Bad("answer_unparseable", "ground truth must be [{function: {param: [values]}}]")
    for entry in ground_truth:
        ((name, params),) = entry.items()
        if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
            raise Bad("answer_unparseable", f"{name}: expected {{param: [values]}}")
        schema = check_names(name, params, tools)
        for param, values in params.items():
            for value in values:
                if value != "":
                    check_value(value, schema["properties"][param], f"{name}.{param}")


def accepted_values(name: str, args: dict, schema: dict) -> dict:
    """{name: {param: [value]}}; optional parameters left out accept "" and their default."""
    params = {p: [v] for p, v in args.items()}
    for param, prop in schema["properties"].items():
        if param not in args and param not in schema.get("required", []):
            params[param] = ["", prop["default"]] if prop.get("default") is not None else [""]
    return {name: params}


def content_key(record: dict) -> str:
    """A hash of what a record teaches (prompt, tools, ground truth): duplicates share it."""
    text = json.dumps([record["messages"], record["tools"], record["ground_truth"]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(key: str, val_fraction: float) -> str:
    """ "train" or "val", deterministically from the content key."""
    return "val" if int(key[:8], 16) < val_fraction * 16**8 else "train"
