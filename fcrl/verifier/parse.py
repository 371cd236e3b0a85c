"""Model output -> function calls, with `ast.parse` and `json.loads` only.

Nothing the model wrote is executed, imported, looked up or evaluated: the syntax tree is read
node by node, and only literals (numbers, negative numbers, strings, booleans, None, and lists,
tuples and dicts of literals) become values. Anything else is a `Rejected` with a reason code.
"""

import ast
import json
import re
import warnings

FORMATS = ("think_answer", "bfcl", "tool_call")
MAX_ANSWER_CHARS = 16_384  # 13x the longest BFCL answer
MAX_JSON_DEPTH = 100  # <tool_call> arguments (Python's parser stops call lists at 200 brackets)
Call = tuple[str, dict]  # (dotted function name, keyword arguments)

_SCALARS = (int, float, str, bool, type(None))
SOURCE = "<model output>"  # the file name ast.parse reports; its warnings are not shown
for _category in (SyntaxWarning, DeprecationWarning):  # e.g. "invalid decimal literal"
    warnings.filterwarnings("ignore", category=_category, module=re.escape(SOURCE))


class Rejected(Exception):
    """A completion that earns no reward: `reason` is a code of `fcrl.verifier.REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def parse(text: str, fmt: str, max_answer_chars: int = MAX_ANSWER_CHARS) -> list[Call]:
    """The calls in `text` written in format `fmt`; [] when it holds none (`[]`, prose).

    Raises Rejected: `no_think` / `no_answer` (think_answer layout), `too_long` (an answer over
    `max_answer_chars`: CPython's parser takes about 1.5 ms per 1,000 characters of dense calls),
    `bad_answer_syntax` (not a call list), `bad_argument` (a call whose arguments are not keyword
    literals).
    """
    if fmt == "think_answer":
        return parse_call_list(answer_of(text), max_answer_chars)
    if fmt == "bfcl":
        return parse_call_list(text, max_answer_chars)
    if fmt == "tool_call":
        return parse_tool_calls(text, max_answer_chars)
    raise ValueError(f"fmt: unknown output format {fmt!r}; expected one of {FORMATS}")


def answer_of(text: str) -> str:
    """The inside of `<think>…</think><answer>…</answer>`: each tag exactly once, nothing else."""
    body = text.strip()
    if not body.startswith("<think>") or body.count("<think>") != 1 or body.count("</think>") != 1:
        raise Rejected("no_think", "expected the completion to open with one <think>…</think>")
    rest = body[body.index("</think>") + len("</think>") :].strip()
    if (
        not rest.startswith("<answer>")
        or not rest.endswith("</answer>")
        or rest.count("<answer>") != 1
        or rest.count("</answer>") != 1
    ):
        raise Rejected("no_answer", "expected one <answer>…</answer> after </think> and no more")
    return rest[len("<answer>") : -len("</answer>")]


def parse_call_list(text: str, max_chars: int = MAX_ANSWER_CHARS) -> list[Call]:
    """BFCL prompt-mode calls `[f(a=1), pkg.g(b='x')]`, decoded as BFCL does.

    Like BFCL's decoder, surrounding backticks and whitespace are stripped and missing outer
    brackets added. Text without a "(" is prose: no call.
    """
    src = text.strip().strip("`").strip()
    if len(src) > max_chars:
        raise Rejected("too_long", f"an answer of {len(src)} characters > {max_chars}")
    if "(" not in src:
        return []
    if not src.startswith("["):
        src = "[" + src
    if not src.endswith("]"):
        src += "]"
    try:
        tree = ast.parse(src, SOURCE, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        # MemoryError / RecursionError: CPython's parser giving up on deep nesting.
        raise Rejected("bad_answer_syntax", f"{type(e).__name__}: {str(e)[:80]}") from None
    if not isinstance(tree.body, ast.List) or not all(
        isinstance(node, ast.Call) for node in tree.body.elts
    ):
        raise Rejected("bad_answer_syntax", "expected a list of calls")
    return [_call(node) for node in tree.body.elts]


def _call(node: ast.Call) -> Call:
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise Rejected("bad_argument", f"the called {type(func).__name__} is not a dotted name")
    parts.append(func.id)
    name = ".".join(reversed(parts))
    if node.args:
        raise Rejected("bad_argument", f"{name}: positional arguments")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise Rejected("bad_argument", f"{name}: **kwargs")
        if kw.arg in args:
            raise Rejected("bad_argument", f"{name}: {kw.arg} given twice")
        args[kw.arg] = _literal(kw.value, f"{name}({kw.arg}=…)")
    return name, args


def _literal(node: ast.AST, where: str):
    """The Python value of a literal node; Rejected for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in _SCALARS:
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, where) for e in node.elts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise Rejected("bad_argument", f"{where}: ** inside a dict")
        keys = [_literal(k, where) for k in node.keys]
        if any(isinstance(k, (list, dict)) for k in keys):
            raise Rejected("bad_argument", f"{where}: unhashable dict key")
        return dict(zip(keys, (_literal(v, where) for v in node.values), strict=True))
    raise Rejected("bad_argument", f"{where}: a {type(node).__name__} is not a literal")


def parse_tool_calls(text: str, max_chars: int = MAX_ANSWER_CHARS) -> list[Call]:
    """Qwen/Hermes `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks, in order.

    Text outside the blocks (a `<think>` block, prose) is ignored, as BFCL's Qwen handler does.
    """
    if "<tool_call>" not in text:
        return []
    blocks = []
    for part in text.split("<tool_call>")[1:]:  # linear: no regex backtracking over open tags
        end = part.find("</tool_call>")
        if end < 0:
            raise Rejected("bad_answer_syntax", "a <tool_call> without its </tool_call>")
        blocks.append(part[:end])
    if sum(map(len, blocks)) > max_chars:
        raise Rejected("too_long", f"<tool_call> blocks over {max_chars} characters")
    calls = []
    for i, block in enumerate(blocks):
        try:
            obj = json.loads(block)
            args = obj.get("arguments") if isinstance(obj, dict) else None
            if isinstance(args, str):  # OpenAI style: arguments as a JSON string
                args = json.loads(args)
        except (ValueError, RecursionError) as e:
            raise Rejected("bad_answer_syntax", f"<tool_call> {i}: {str(e)[:80]}") from None
        if not isinstance(args, dict) or not isinstance(obj.get("name"), str):
            raise Rejected("bad_answer_syntax", f'<tool_call> {i}: needs "name" and "arguments"')
        if _deeper_than(args, MAX_JSON_DEPTH):  # keeps comparisons and repr off the stack limit
            raise Rejected("bad_argument", f"<tool_call> {i}: nested over {MAX_JSON_DEPTH} levels")
        calls.append((obj["name"], args))
    return calls


def _deeper_than(x, depth: int) -> bool:
    if depth < 0:
        return True
    if isinstance(x, dict):
        return any(_deeper_than(v, depth - 1) for v in x.values())
    if isinstance(x, list):
        return any(_deeper_than(v, depth - 1) for v in x)
    return False
