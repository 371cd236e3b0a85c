"""Parsed calls vs a ground truth in BFCL's accepted-values form, with BFCL's AST rules.

Ground truth: `[{func: {param: [accepted values]}}, …]`; `""` among a parameter's values means it
may be left out, and a parameter absent from the dict must not be passed. The rules follow BFCL's
`ast_checker` (bfcl-eval, python categories), including its quirks, so that verdicts agree; the
one deliberate difference is that parallel calls are paired by an exact one-to-one assignment
(BFCL pairs greedily and can miss a valid pairing).
"""

from typing import NamedTuple

from fcrl.verifier.parse import Call

# Function-doc type names (BFCL's and JSON Schema's) -> the Python type a value must have.
TYPES = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,  # as BFCL
}
# Per-call failure codes, in the order the checks run: a later one means a closer miss.
CALL_REASONS = (
    "wrong_function",
    "missing_required",
    "unexpected_param",
    "wrong_type",
    "wrong_value",
)

_EMPTY = frozenset()
_STANDARD = str.maketrans(dict.fromkeys(" ,./-_*^") | {"'": '"'})


def standardize(s: str) -> str:
    """BFCL's string normal form: lower case, no spaces or `, . / - _ * ^`, `'` as `"`."""
    return s.translate(_STANDARD).lower()


def _std(x):
    return x.translate(_STANDARD).lower() if type(x) is str else x


class Param(NamedTuple):
    """One parameter of an expected call: its accepted values and the type it must have."""

    accepted: list
    optional: bool  # "" among the accepted values
    kind: type | None  # the doc's type, else the accepted values' type (None: unknown)
    answer_type: type | None  # type of the first accepted value that is not ""
    nested: type | None  # element type of a documented array / tuple
    is_tuple: bool  # documented as tuple: a tuple value counts as a list
    strings: frozenset  # standardized accepted strings
    lists: tuple  # accepted lists with their strings standardized


class Expected(NamedTuple):
    """One call of the ground truth, compiled against its function doc (if any)."""

    name: str
    params: dict  # name -> Param
    required: tuple  # required by the doc
    documented: dict | None  # the doc's properties (None: no doc)


def compile_ground_truth(ground_truth: list, tools: list | None = None) -> list[Expected]:
    """Checks and precomputes a ground truth; ValueError names the bad field."""
    if not isinstance(ground_truth, list):
        raise ValueError(f"ground_truth: expected a list, got {type(ground_truth).__name__}")
    docs = function_docs(tools) if tools is not None else {}
    expected = []
    for i, entry in enumerate(ground_truth):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"ground_truth[{i}]: expected {{function name: {{param: [values]}}}}")
        ((name, params),) = entry.items()
        if not isinstance(name, str) or not isinstance(params, dict):
            raise ValueError(f"ground_truth[{i}]: expected {{function name: {{param: [values]}}}}")
        doc = docs.get(name)
        props = doc.get("properties", {}) if doc else {}
        compiled = {}
        for param, accepted in params.items():
            if not isinstance(accepted, list):
                raise ValueError(
                    f"ground_truth[{i}].{name}.{param}: accepted values must be a list"
                )
            compiled[param] = _param(accepted, props.get(param))
        expected.append(
            Expected(
                name=name,
                params=compiled,
                required=tuple(doc.get("required", ())) if doc else (),
                documented=props if doc else None,
            )
        )
    return expected


def function_docs(tools: list) -> dict:
    """name -> parameters schema of BFCL or OpenAI style docs; ValueError names the bad field."""
    if not isinstance(tools, list):
        raise ValueError(f"tools: expected a list of function docs, got {type(tools).__name__}")
    docs = {}
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            tool = tool["function"]  # OpenAI {"type": "function", "function": {...}}
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ValueError(f"tools[{i}]: expected a function doc with a string 'name'")
        schema = tool.get("parameters", {})
        if not isinstance(schema, dict) or not isinstance(schema.get("properties", {}), dict):
            raise ValueError(f"tools[{i}].parameters: expected an object with 'properties'")
        if not isinstance(schema.get("required", []), list):
            raise ValueError(f"tools[{i}].parameters.required: expected a list")
        docs.setdefault(tool["name"], schema)  # BFCL uses the first doc of a name
    return docs


def _param(accepted: list, prop) -> Param:
    answer_type = None
    for a in accepted:
        if a != "":
            answer_type = type(a)
            break
    declared = prop.get("type") if isinstance(prop, dict) else None
    declared_kind = TYPES.get(declared) if isinstance(declared, str) else None
    kind = declared_kind or answer_type
    nested, strings, lists = None, _EMPTY, ()
    if kind is str:
        strings = frozenset([standardize(a) for a in accepted if type(a) is str])
    elif kind is list:
        # BFCL iterates each accepted value here: "" (optional) becomes [].
        lists = tuple([_std(x) for x in a] for a in accepted if isinstance(a, (list, str)))
        if declared_kind is None:  # no doc: a list of dicts is compared key by key
            first = next(a for a in accepted if a != "")
            nested = dict if first and all(type(x) is dict for x in first) else None
        elif isinstance(prop.get("items"), dict) and isinstance(prop["items"].get("type"), str):
            nested = TYPES.get(prop["items"]["type"])
    return Param(
        accepted=accepted,
        optional="" in accepted,
        kind=kind,
        answer_type=answer_type if declared_kind else None,
        nested=nested,
        is_tuple=declared == "tuple" or (declared_kind is None and answer_type is list),
        strings=strings,
        lists=lists,
    )


def check_call(call: Call, exp: Expected) -> tuple[str, str] | None:
    """None if `call` matches `exp`, else (reason, detail); BFCL's simple_function_checker."""
    name, args = call
    if name != exp.name:
        return "wrong_function", f"{name} is not {exp.name}"
    for param in exp.required:
        if param not in args:
            return "missing_required", f"{name}: {param} is required"
    for param, value in args.items():
        p = exp.params.get(param)
        if p is None or (exp.documented is not None and param not in exp.documented):
            return "unexpected_param", f"{name}: {param} is not allowed"
        reason = check_value(value, p)
        if reason is not None:
            return reason, f"{name}: {param}={value!r:.80} not among {p.accepted!r:.120}"
    for param, p in exp.params.items():
        if not p.optional and param not in args:
            return "missing_required", f"{name}: {param} is required by the ground truth"
    return None


def check_value(value, p: Param) -> str | None:
    """None if `value` is accepted, else `wrong_type` / `wrong_value`; BFCL's type_checker and
    value checkers, quirks included (e.g. a value of the accepted values' type is taken as a
    "variable" when that type differs from the doc's)."""
    kind = p.kind
    if p.is_tuple and type(value) is tuple:
        value = list(value)
    if kind is float and type(value) is int:
        value = float(value)  # int is accepted for float, not the reverse
    variable = False
    if kind is not None:
        variable = p.answer_type is not None and p.answer_type is not kind
        if type(value) is kind:
            if p.nested is not None and not any(_nested_ok(value, a, p.nested) for a in p.accepted):
                return "wrong_type"
        elif p.answer_type is not None and type(value) is p.answer_type:
            variable = True
        else:
            return "wrong_type"
    if variable or kind is None:
        ok = value in p.accepted
    elif kind is dict:
        ok = _dict_ok(value, p.accepted)
    elif kind is list and p.nested is dict:
        ok = any(_dicts_ok(value, a) for a in p.accepted)
    elif kind is str:
        ok = standardize(value) in p.strings
    elif kind is list:
        ok = [_std(x) for x in value] in p.lists
    else:
        ok = value in p.accepted
    return None if ok else "wrong_value"


def _nested_ok(value: list, accepted, nested: type) -> bool:
    if type(accepted) is not list:
        return True  # as BFCL: an accepted value that is not a list ("") passes the check
    answer_type = next((type(a) for a in accepted if a != ""), None)
    return all(type(x) is nested or type(x) is answer_type for x in value)


def _dict_ok(value: dict, accepted: list) -> bool:
    """One level deep, key by key: some accepted {key: [values]} takes every key of `value`, and
    every key it needs is there."""
    for a in accepted:
        if not isinstance(a, dict):
            continue
        if all(
            k in a and _std(v) in [_std(x) for x in _as_list(a[k])] for k, v in value.items()
        ) and all(k in value or "" in _as_list(vs) for k, vs in a.items()):
            return True
    return False


def _dicts_ok(value: list, accepted) -> bool:
    if not isinstance(accepted, (list, str)) or len(value) != len(accepted):
        return False
    return all(type(v) is dict and _dict_ok(v, [a]) for v, a in zip(value, accepted, strict=True))


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def match(calls: list[Call], expected: list[Expected]) -> tuple[str, str]:
    """("ok", "") or (reason, detail). An empty ground truth is an irrelevance item: no call is
    right. Otherwise the calls must pair one-to-one with the expected calls, in any order."""
    if not expected:
        if calls:
            return "call_on_irrelevant", f"{len(calls)} call(s) where none fits"
        return "ok", ""
    if not calls:
        return "no_call", f"expected {len(expected)} call(s)"
    if len(calls) != len(expected):
        return "wrong_count", f"{len(calls)} call(s), expected {len(expected)}"
    if len(calls) == 1:
        return check_call(calls[0], expected[0]) or ("ok", "")
    misses = [[check_call(c, e) for c in calls] for e in expected]
    unpaired = _unpaired([[m is None for m in row] for row in misses])
    if not unpaired:
        return "ok", ""
    # Report the closest miss of the first expected call left without a partner.
    row = [m for m in misses[unpaired[0]] if m is not None]
    return max(row, key=lambda m: CALL_REASONS.index(m[0]))


def _unpaired(fits: list[list[bool]]) -> list[int]:
    """Rows left unpaired by a maximum one-to-one pairing of rows with columns (Kuhn's
    augmenting paths); fits[i][j]: row i may pair with column j."""
    owner = [-1] * len(fits)

    def augment(i: int, seen: set) -> bool:
        for j, fit in enumerate(fits[i]):
            if fit and j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return [i for i in range(len(fits)) if not augment(i, set())]
