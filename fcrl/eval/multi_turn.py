"""BFCL's multi-turn categories: the model's calls run on BFCL's simulated backends (a file
system, a trading bot, ...), their results are fed back, turn by turn, and BFCL's own
multi-turn checker compares the backends' states and outputs with the ground truth's.

BFCL runs a call string with `eval`. Only strings built here reach it: the model's text is parsed
by our verifier's parser (literals only, nothing executed) and every call whose name is one of
the entry's backend functions is written back as `name(key=repr(literal), ...)`; any other call
is a failed step that never runs (`run_calls`). Backends are cached by BFCL in its module's
globals by model name and entry: each conversation and each scoring gets a unique name, and its
instances are dropped afterwards.
"""

import ast
import functools
import itertools
import re

from fcrl.eval import bfcl
from fcrl.verifier import parse
from fcrl.verifier.parse import Rejected

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context")  # fmt: skip
MAX_STEPS = 20  # BFCL's MAXIMUM_STEP_LIMIT: a turn past it is force-quit, the entry fails
# BFCL's prompt-mode message revealing a held-out function (miss_func), word for word.
MORE_FUNCTIONS = (
    "{functions}\nI have updated some more functions you can choose from. What about now?"
)
_NAMES = itertools.count()


def load(category: str) -> list[dict]:
    """Entries with their function docs (the involved classes' docs, held-out ones removed until
    their turn: `missed_function` maps a turn to its docs) and ground truth (calls per turn)."""
    root = bfcl.data_dir()
    docs = {}
    for cls, file in _mapping().items():
        docs[cls] = bfcl.jsonl(root / "multi_turn_func_doc" / file)
    answers = {a["id"]: a["ground_truth"]
               for a in bfcl.jsonl(root / f"possible_answer/BFCL_v4_{category}.json")}  # fmt: skip
    out = []
    for entry in bfcl.jsonl(root / f"BFCL_v4_{category}.json"):
        functions = [d for cls in entry["involved_classes"] for d in docs[cls]]
        held = {turn: [d for d in functions if d["name"] in names]
                for turn, names in entry.get("missed_function", {}).items()}  # fmt: skip
        hidden = {d["name"] for ds in held.values() for d in ds}
        out.append({**entry, "function": [d for d in functions if d["name"] not in hidden],
                    "missed_function": held, "ground_truth": answers[entry["id"]]})  # fmt: skip
    return out


def call_string(name: str, args: dict) -> str:
    """A parsed call as Python source: only literals, each written by repr."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def safe_calls(text: str, fmt: str, allowed: set[str]) -> tuple[list[str] | None, list[tuple]]:
    """(call strings that may run, (name, error) for each call that may not). None: the text
    holds no call list (BFCL then ends the turn), as does an empty list."""
    try:
        calls = parse(text, fmt)
    except Rejected:
        return None, []
    if not calls:
        return None, []
    run, errors = [], []
    for name, args in calls:
        if name not in allowed or not re.fullmatch(r"[A-Za-z_]\w*", name):
            errors.append((name, f"Error during execution: {name} is not a function here"))
        elif not all(_is_literal(repr(v)) for v in args.values()):  # inf and nan print as names
            errors.append((name, f"Error during execution: {name} has a non-literal value"))
        else:
            run.append(call_string(name, args))
    return run, errors


def _is_literal(source: str) -> bool:
    try:
        ast.literal_eval(source)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class Conversation:
    """One entry's multi-turn dialogue: the messages so far, the raw responses and the calls
    run, per turn; `advance` takes the model's next response."""

    def __init__(self, entry: dict, fmt: str):
        self.entry, self.fmt, self.turn, self.step = entry, fmt, -1, 0
        self.name = f"fcrl_{next(_NAMES)}"  # BFCL caches backends by it
        self.functions = list(entry["function"])
        self.messages, self.responses, self.decoded = [], [], []
        self.done = self.force_quit = False
        self.error = ""
        self.next_turn()

    def next_turn(self) -> None:
        self.turn, self.step = self.turn + 1, 0
        if self.turn == len(self.entry["question"]):
            self.done = True
            drop_instances(self.name)
            return
        message = self.entry["question"][self.turn]
        if str(self.turn) in self.entry["missed_function"]:
            held = self.entry["missed_function"][str(self.turn)]
            self.functions += held
            message = [{"role": "user", "content": MORE_FUNCTIONS.format(functions=held)}]
        self.messages += message
        self.responses.append([])
        self.decoded.append([])

    def advance(self, text: str) -> None:
        self.responses[-1].append(text)
        self.messages.append({"role": "assistant", "content": text})
        run, errors = safe_calls(text, self.fmt, {d["name"] for d in self.functions})
        if run is None:
            self.next_turn()
            return
        results = list(zip(run, run_calls(run, self.entry, self.name), strict=True)) if run else []
        if run:
            self.decoded[-1].append(run)
        for call, result in results + errors:
            self.messages.append({"role": "tool", "name": call, "content": result})
        self.step += 1
        if self.step > MAX_STEPS:
            self.stop(f"force_quit: more than {MAX_STEPS} steps in turn {self.turn}")

    def stop(self, error: str) -> None:
        """Ends the conversation as failed (e.g. a prompt longer than the context)."""
        self.error, self.force_quit, self.done = error, True, True
        drop_instances(self.name)

    def result(self) -> dict:
        """The BFCL result row: raw responses per turn and step, and the calls that ran."""
        row = {"id": self.entry["id"], "result": self.responses, "decoded": self.decoded,
               "force_quit": self.force_quit}  # fmt: skip
        return row | ({"error": self.error} if self.error else {})


def run_calls(calls: list[str], entry: dict, name: str) -> list[str]:
    """BFCL's execution of call strings built by `safe_calls` on the entry's backends."""
    execute = _backend()[1].execute_multi_turn_func_call  # looked up here: tests record it
    results, _ = execute(calls, entry["initial_config"], entry["involved_classes"], name,
                         entry["id"], long_context="long_context" in entry["id"])  # fmt: skip
    return results


def score(row: dict, entry: dict) -> tuple[bool, str]:
    """BFCL's multi-turn checker on the calls that ran: (valid, error type or "ok")."""
    if row["force_quit"] or len(row["decoded"]) != len(entry["ground_truth"]):
        return False, row.get("error") or "multi_turn:force_terminated"
    name = f"fcrl_score_{next(_NAMES)}"
    checker = _backend()[0]
    try:
        category = entry["id"].rsplit("_", 1)[0]
        verdict = checker(row["decoded"], entry["ground_truth"], entry, category, name)
    finally:
        for suffix in ("_eval", "_ground_truth_eval"):
            drop_instances(name + suffix)
    return verdict["valid"], "ok" if verdict["valid"] else verdict.get("error_type", "invalid")


def drop_instances(name: str) -> None:
    """Forget the backends BFCL cached for model name `name`."""
    module = _backend()[1]
    prefix = re.sub(r"[-./:]", "_", name) + "_"
    for key in [k for k in vars(module) if k.startswith(prefix) and k.endswith("_instance")]:
        del vars(module)[key]


@functools.cache
def _mapping() -> dict:
    bfcl.official_accepts("[]", {}, "irrelevance")  # the checker's imports, with their stand-ins
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    return MULTI_TURN_FUNC_DOC_FILE_MAPPING


@functools.cache
def _backend():
    _mapping()
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    return multi_turn_checker, multi_turn_utils
