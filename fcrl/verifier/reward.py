"""The binary reward: parse a completion, match its calls, return (reward, reason)."""

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
from collections.abc import Sequence

import numpy as np

from fcrl.verifier.match import Expected, compile_ground_truth, match
from fcrl.verifier.parse import FORMATS, MAX_ANSWER_CHARS, Rejected, parse

# Every reason a verdict can carry; "ok" is the only one with reward 1.
REASONS = {
    "ok": "format right and calls right (for an irrelevance item: no call)",
    "too_long": "over max_chars, or an answer over max_answer_chars; rejected before parsing",
    "no_think": "think_answer: not exactly one <think>…</think> opening the completion",
    "no_answer": "think_answer: not exactly one <answer>…</answer> after </think>, ending it",
    "bad_answer_syntax": "the answer is not a call list (or <tool_call> JSON) that parses",
    "bad_argument": "a call with a non-literal value, a positional argument or **kwargs",
    "no_call": "no call (`[]` or prose) where the item needs calls",
    "call_on_irrelevant": "a call where no function fits (irrelevance item)",
    "wrong_count": "a number of calls other than the ground truth's",
    "wrong_function": "a function name the ground truth does not call",
    "missing_required": "a parameter the doc or the ground truth requires is missing",
    "unexpected_param": "a parameter outside the doc or the ground truth",
    "wrong_type": "a value of the wrong type (int is accepted for float, bool is not int)",
    "wrong_value": "a value outside the accepted values",
}
# Reasons that still mean "the format was right" (for the format_credit shape).
FORMAT_OK = frozenset(REASONS) - {"too_long", "no_think", "no_answer", "bad_answer_syntax"}
# Named reward shapes: "binary" is the method's; "format_credit" an ablation (see verify).
SHAPES = ("binary", "format_credit")
MAX_CHARS = 65_536


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    reward: float
    reason: str  # a key of REASONS
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Options:
    """How completions are judged; see `verify`."""

    fmt: str = "think_answer"
    max_chars: int = MAX_CHARS
    max_answer_chars: int = MAX_ANSWER_CHARS
    shape: str = "binary"
    format_credit: float = 0.1

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt: unknown output format {self.fmt!r}; expected one of {FORMATS}")
        if self.shape not in SHAPES:
            raise ValueError(
                f"shape: unknown reward shape {self.shape!r}; expected one of {SHAPES}"
            )
        for field in ("max_chars", "max_answer_chars"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: must be positive, got {getattr(self, field)}")


def verify(
    completion: str,
    ground_truth: list,
    tools: list | None = None,
    fmt: str = "think_answer",
    *,
    max_chars: int = MAX_CHARS,
    max_answer_chars: int = MAX_ANSWER_CHARS,
    shape: str = "binary",
    format_credit: float = 0.1,
) -> Verdict:
    """Judges one completion against a BFCL-style ground truth `[{func: {param: [values]}}]`.

    `tools` (function docs) add BFCL's type checks. shape="format_credit" gives `format_credit`
    to completions whose format is right but whose calls are wrong. Bad ground truth, tools or
    options raise ValueError; nothing the completion holds can raise.
    """
    options = Options(fmt, max_chars, max_answer_chars, shape, format_credit)
    return judge(completion, compile_ground_truth(ground_truth, tools), options)


def judge(completion: str, expected: list[Expected], options: Options) -> Verdict:
    """`verify` on a compiled ground truth."""
    if not isinstance(completion, str):
        raise TypeError(f"completion: expected str, got {type(completion).__name__}")
    if len(completion) > options.max_chars:
        reason, detail = "too_long", f"{len(completion)} characters > {options.max_chars}"
    else:
        try:
            calls = parse(completion, options.fmt, options.max_answer_chars)
            reason, detail = match(calls, expected)
        except Rejected as e:
            reason, detail = e.reason, e.detail
            if not expected and reason == "bad_answer_syntax":
                reason, detail = "ok", ""  # irrelevance, as BFCL: text that is no call list
            elif not expected and reason == "bad_argument":
                reason = "call_on_irrelevant"
    if reason == "ok":
        return Verdict(1.0, reason, detail)
    credit = options.shape == "format_credit" and reason in FORMAT_OK
    return Verdict(options.format_credit if credit else 0.0, reason, detail)


def verify_batch(
    completions: Sequence[str],
    ground_truths: Sequence[list],
    tools: Sequence[list | None] | None = None,
    fmt: str = "think_answer",
    *,
    max_chars: int = MAX_CHARS,
    max_answer_chars: int = MAX_ANSWER_CHARS,
    shape: str = "binary",
    format_credit: float = 0.1,
    workers: int | None = None,
    min_parallel: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards [N] float32 and reasons [N] (str objects) in input order.

    ground_truths[i] (and tools[i]) belong to completions[i]; pass the same object for the G
    rollouts of a prompt and it is compiled once. Batches of `min_parallel` or more are split
    over `workers` processes (default: all cores).
    """
    n = len(completions)
    tools = [None] * n if tools is None else tools
    if len(ground_truths) != n or len(tools) != n:
        raise ValueError(
            f"verify_batch: {n} completions, {len(ground_truths)} ground_truths, {len(tools)} tools"
        )
    options = Options(fmt, max_chars, max_answer_chars, shape, format_credit)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 2 or n < min_parallel:
        return _verify_chunk((0, completions, ground_truths, tools, options))
    cuts = np.linspace(0, n, workers + 1).astype(int)
    jobs = [
        (a, completions[a:b], ground_truths[a:b], tools[a:b], options)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    parts = list(_pool(workers).map(_verify_chunk, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _verify_chunk(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    start, completions, ground_truths, tools, options = job
    compiled = {}  # (id(ground truth), id(tools)) -> compiled; pickling keeps shared objects
    rewards, reasons = np.zeros(len(completions), np.float32), np.empty(len(completions), object)
    for i, (completion, gt, doc) in enumerate(zip(completions, ground_truths, tools, strict=True)):
        key = (id(gt), id(doc))
        if key not in compiled:
            try:
                compiled[key] = compile_ground_truth(gt, doc)
            except ValueError as e:
                raise ValueError(f"item {start + i}: {e}") from None
        verdict = judge(completion, compiled[key], options)
        rewards[i], reasons[i] = verdict.reward, verdict.reason
    return rewards, reasons


@functools.cache
def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # spawn, not fork: the parent runs JAX's threads, which a fork would copy mid-state.
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )
