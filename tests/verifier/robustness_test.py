"""No input crashes the verifier, makes it run anything, or makes it slow.

Proof that nothing executes: while a verdict is computed, a Python audit hook records every
audited action (imports, exec/eval, open, os.system, subprocess, ...) other than `compile`, which
`ast.parse` raises; the payloads also call a sentinel builtin and try to create a file. Over a
fixed adversarial corpus of more than 10,000 inputs, judged in all three formats, and a
hypothesis search, nothing is recorded, every verdict is well formed and each takes < 50 ms.
"""

import builtins
import json
import os
import random
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcrl.verifier import FORMATS, REASONS, verify

GT = [{"f": {"a": [1, ""], "b": ["x"]}}]
TOOLS = [
    {
        "name": "f",
        "parameters": {
            "type": "dict",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            "required": ["b"],
        },
    }
]
PATH = "/tmp/fcrl_verifier_sentinel"
PAYLOADS = [
    "fcrl_sentinel()",
    f"__import__('os').system('touch {PATH}')",
    f"open('{PATH}', 'w').write('x')",
    "exec('fcrl_sentinel()')",
    "eval('fcrl_sentinel()')",
    "(lambda: fcrl_sentinel())()",
    "lambda: fcrl_sentinel()",
    "f'{fcrl_sentinel()}'",
    "[fcrl_sentinel() for _ in range(3)]",
    "(x := fcrl_sentinel())",
    "getattr(__builtins__, 'exec')('fcrl_sentinel()')",
    "().__class__.__base__.__subclasses__()",
    "globals()['fcrl_sentinel']()",
    "breakpoint()",
    "compile('fcrl_sentinel()', '', 'exec')",
    f"__import__('subprocess').run(['touch', '{PATH}'])",
    "9**9**9**9",
    "'a' * 10**10",
    "fcrl_sentinel() + 1",
    "-fcrl_sentinel()",
    "not fcrl_sentinel()",
    "fcrl_sentinel()[0]",
    "fcrl_sentinel().x",
    "{fcrl_sentinel(): 1}",
    "{**fcrl_sentinel()}",
    "[*fcrl_sentinel()]",
    "fcrl_sentinel() if 1 else 2",
    "await fcrl_sentinel()",
    "(yield fcrl_sentinel())",
    "...",
    "b'x'",
    "1j",
    "{1, 2}",
    "None",
    "-1.5e308",
    "1e99999",
    "9" * 5000,
    "0x" + "f" * 100,
    "'''multi\nline'''",
    "'\\x00'",
    "'\\ud800'",
    "\ud800",
    "'\u202eevil'",
    "ｆ(ａ=1)",
    "fсrl_sentinel()",  # Cyrillic "с"
]
TEMPLATES = {
    "think_answer": [
        "<think>t</think><answer>[f(b='x', a={p})]</answer>",
        "<think>t</think><answer>[f({p})]</answer>",
        "<think>t</think><answer>[{p}]</answer>",
        "<think>t</think><answer>{p}</answer>",
        "<think>{p}</think><answer>[f(b='x')]</answer>",
        "<think>t</think><answer>[f(b='x'), g(c={p})]</answer>",
        "<think>t</think><answer>[f(b=[{p}])]</answer>",
        "<think>t</think><answer>[f(b={{'k': {p}}})]</answer>",
    ],
    "bfcl": ["[f(b='x', a={p})]", "{p}", "f(a={p})", "```{p}```"],
    "tool_call": [
        '<tool_call>{{"name": "f", "arguments": {{"a": {j}}}}}</tool_call>',
        '<tool_call>{{"name": "f", "arguments": {p}}}</tool_call>',
        "<tool_call>{p}</tool_call>",
        '<tool_call>{{"name": {j}, "arguments": {{}}}}</tool_call>',
    ],
}
BIG = 10_000_000
STRUCTURAL = [
    "<think>t</think><answer>" + "[" * 16_000 + "</answer>",
    "<think>t</think><answer>[f(b=" + "(" * 16_000 + "</answer>",
    "<think>t</think><answer>[f(b=" + "-" * 16_000 + "1)]</answer>",
    "<think>t</think><answer>[f(b=" + "1+" * 8_000 + "1)]</answer>",
    "<think>t</think><answer>[" + "f(b='x')," * 1_800 + "]</answer>",
    "<think>t</think><answer>[f(b=[" + "1," * 8_000 + "])]</answer>",
    "<tool_call>" + "[" * 16_000 + "</tool_call>",
    "[" * 100_000,
    "[f(a=" + "[" * 100_000 + "]" * 100_000 + ")]",
    "<think>t</think><answer>" + "(" * 100_000 + "</answer>",
    "<think>t</think><answer>[f(b=" + "{'a':" * 30_000 + "</answer>",
    "<think>t</think><answer>[f(b=" + "-" * 60_000 + "1)]</answer>",
    "<think>t</think><answer>[" + "a." * 30_000 + "f(b='x')]</answer>",
    "<think>t</think><answer>[f(b=" + "1+" * 30_000 + "1)]</answer>",
    "<think>t</think><answer>[" + "f(b='x')," * 7_000 + "]</answer>",
    "<tool_call>" + "[" * 60_000 + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": ' + '{"a":' * 30_000 + "</tool_call>",
    "x" * BIG,
    "<think>" + "y" * BIG + "</think><answer>[f(b='x')]</answer>",
    "<think>t</think><answer>[f(b='" + "z" * BIG + "')]</answer>",
    "<think>" * 10_000,
    "</think>" * 10_000 + "<answer>[]</answer>",
    "<think><answer></think></answer>",
    "<think>t</think><answer>" * 1_000,
    "<tool_call>" * 10_000,
    "</tool_call><tool_call>" * 5_000,
    "\x00" * 1_000,
    "<think>\x00</think><answer>[f(b='\x00')]</answer>",
    "<think>t</think><answer>[f\x00(b='x')]</answer>",
    "<think>t</think><answer>[f(b='x\u200d')]</answer>",
    "\ufeff<think>t</think><answer>[f(b='x')]</answer>",
    "<think>t</think><answer>[ｆ(ｂ='x')]</answer>",
    "<think>t</think><answer>[f(b='x')]</answer>\ud800",
]
FRAGMENTS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<tool_call>",
    "</tool_call>",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    "'",
    '"',
    "=",
    ",",
    "\\",
    "\n",
    "\x00",
    "fcrl_sentinel()",
    "f(b='x')",
    '{"name": "f", "arguments": {}}',
]


def corpus() -> list[str]:
    """The fixed adversarial corpus: payloads in every template, structural extremes, and
    seeded random mutations of both."""
    base = [
        t.format(p=p, j=json.dumps(p)) for p in PAYLOADS for ts in TEMPLATES.values() for t in ts
    ]
    rng = random.Random(0)
    mutants = []
    while len(base) + len(STRUCTURAL) + len(mutants) < 10_500:
        s = rng.choice(base)
        for _ in range(rng.randint(1, 4)):
            i, j = sorted(rng.randrange(len(s) + 1) for _ in range(2))
            op = rng.randrange(4)
            if op == 0:
                s = s[:i]  # truncate
            elif op == 1:
                s = s[:i] + s[i:j] * rng.randint(2, 50) + s[j:]  # repeat a slice
            elif op == 2:
                s = s[:i] + s[j:]  # delete a slice
            else:
                s = s[:i] + rng.choice(FRAGMENTS) + s[i:]
        mutants.append(s)
    return base + STRUCTURAL + mutants


class Watch:
    """Records audited actions and sentinel calls while active."""

    def __init__(self):
        self.active, self.events = False, []
        sys.addaudithook(self.hook)  # hooks cannot be removed: this one only records
        builtins.fcrl_sentinel = self.sentinel

    def hook(self, event: str, args: tuple) -> None:
        if self.active and event != "compile":
            self.events.append((event, repr(args)[:200]))

    def sentinel(self, *args) -> None:
        self.events.append(("sentinel", repr(args)))

    def verdict(self, *args, **kwargs):
        self.active = True
        try:
            return verify(*args, **kwargs)
        finally:
            self.active = False


@pytest.fixture(scope="module")
def watch():
    return Watch()


def check(watch: Watch, text: str, **kwargs) -> float:
    """Seconds the verdict took; asserts it is well formed."""
    start = time.perf_counter()
    v = watch.verdict(text, **kwargs)
    seconds = time.perf_counter() - start
    assert v.reason in REASONS and v.reward == (1.0 if v.reason == "ok" else 0.0), (v, text[:200])
    return seconds


def test_adversarial_corpus(watch, tmp_path):
    texts = corpus()
    assert len(texts) >= 10_000
    slow = []
    for i, text in enumerate(texts):
        for fmt in FORMATS:
            kwargs = {"ground_truth": GT if i % 2 else [], "tools": TOOLS, "fmt": fmt}
            if check(watch, text, **kwargs) > 0.05:
                slow.append((text, kwargs))
    for text in STRUCTURAL:  # the extremes again, with limits that let them reach the parsers
        for fmt in FORMATS:
            check(watch, text, ground_truth=GT, fmt=fmt, max_chars=10**6, max_answer_chars=10**6)
    # A verdict over 50 ms is timed again (best of 3) so that a busy machine is not blamed on it.
    slow = [(t[:80], k) for t, k in slow if min(check(watch, t, **k) for _ in range(3)) > 0.05]
    assert not slow
    assert not watch.events
    assert not os.path.exists(PATH)


def test_too_long_is_decided_before_parsing(watch):
    assert watch.verdict("x" * BIG, GT).reason == "too_long"
    assert watch.verdict("(" * 100_000, GT, fmt="bfcl").reason == "too_long"
    assert watch.verdict("(" * 20_000, GT, fmt="bfcl").reason == "too_long"  # max_answer_chars
    deep = watch.verdict("(" * 100_000, GT, fmt="bfcl", max_chars=10**6, max_answer_chars=10**6)
    assert deep.reason == "bad_answer_syntax"


TEXT = st.lists(st.sampled_from(FRAGMENTS + PAYLOADS) | st.text(max_size=30), max_size=30).map(
    "".join
)


@settings(max_examples=1500, deadline=None)
@given(TEXT, st.sampled_from(FORMATS), st.sampled_from([GT, []]), st.sampled_from([TOOLS, None]))
def test_random_text(watch, text, fmt, gt, tools):
    check(watch, text, ground_truth=gt, tools=tools, fmt=fmt)
    assert not watch.events
