"""Calls -> text in each output format, ground truth -> concrete calls, and systematic
corruptions of calls (for testing a reward, and for building deliberately broken data)."""

import json

from fcrl.verifier.match import function_docs
from fcrl.verifier.parse import Call


def render(calls: list[Call], fmt: str = "bfcl", think: str = "") -> str:
    """The text a model would write for `calls` in format `fmt` (see fcrl.verifier.FORMATS)."""
    if fmt == "tool_call":
        return "\n".join(
            f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
            for name, args in calls
        )
    text = "[" + ", ".join(f"{name}({_kwargs(args)})" for name, args in calls) + "]"
    if fmt == "think_answer":
        return f"<think>{think}</think><answer>{text}</answer>"
    if fmt == "bfcl":
        return text
    raise ValueError(f"fmt: unknown output format {fmt!r}")


def _kwargs(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def first_accepted(ground_truth: list, tools: list | None = None) -> list[Call]:
    """One correct answer: each parameter at its first accepted value other than "". Left out:
    parameters with no such value, and optional ones that the function's doc (if given) lacks."""
    docs = function_docs(tools) if tools else {}
    calls = []
    for entry in ground_truth:
        ((name, params),) = entry.items()
        doc = docs.get(name)
        args = {}
        for p, vs in params.items():
            values = [v for v in vs if v != ""]
            if values and not ("" in vs and doc is not None and p not in doc.get("properties", {})):
                args[p] = _concrete(values[0])
            elif not values and "" in vs and doc is not None and p in doc.get("required", ()):
                args[p] = ""  # required by the doc, and "" is what the ground truth accepts
        calls.append((name, args))
    return calls


def _concrete(value):
    """Accepted dicts are {key: [values]} one level deep (lists of them too), as in BFCL."""
    if isinstance(value, dict):
        return {k: vs[0] for k, vs in value.items() if isinstance(vs, list) and vs and vs[0] != ""}
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [_concrete(x) for x in value]
    return value


def _changed(value):
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7
    if isinstance(value, str):
        return value + "zq"  # a suffix that string normalisation keeps
    if isinstance(value, (list, tuple)):
        return [*value, *(value[:1] or ["zq"])]
    if isinstance(value, dict):
        return {**value, "zq": 1}
    return "zq"


def _first_arg(calls: list[Call], want=lambda v: True) -> tuple[int, str] | None:
    """(call index, parameter) of the first argument whose value satisfies `want`."""
    return next(((i, k) for i, (_, a) in enumerate(calls) for k, v in a.items() if want(v)), None)


def _edit_arg(calls: list[Call], where: tuple[int, str] | None, edit) -> list[Call] | None:
    """`calls` with the argument at `where` replaced by edit(value) (dropped if that is None)."""
    if where is None:
        return None
    i, key = where
    name, args = calls[i]
    new = edit(args[key])
    args = {k: v for k, v in args.items() if k != key} if new is None else {**args, key: new}
    return [*calls[:i], (name, args), *calls[i + 1 :]]


def _renamed(calls: list[Call]) -> list[Call] | None:
    return [(calls[0][0] + "_v2", calls[0][1]), *calls[1:]] if calls else None


def _extra_param(calls: list[Call]) -> list[Call] | None:
    return [(calls[0][0], {**calls[0][1], "zq_extra": 1}), *calls[1:]] if calls else None


# name -> calls -> corrupted calls (None where the corruption does not apply). All but
# reverse_order make a right answer wrong (float_for_int only where the doc says integer).
CORRUPTIONS = {
    "wrong_name": _renamed,
    "wrong_value": lambda c: _edit_arg(c, _first_arg(c), _changed),
    "extra_param": _extra_param,
    "drop_param": lambda c: _edit_arg(c, _first_arg(c), lambda v: None),
    "drop_call": lambda c: c[:-1] if c else None,
    "duplicate_call": lambda c: [*c, c[0]] if c else None,
    "float_for_int": lambda c: _edit_arg(c, _first_arg(c, lambda v: type(v) is int), float),
    "reverse_order": lambda c: c[::-1] if len(c) > 1 else None,
}
