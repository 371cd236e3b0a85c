"""fcrl.verifier.reward: verdicts, reward shapes, the batch API, options."""

import numpy as np
import pytest

from fcrl.verifier import REASONS, Verdict, verify, verify_batch
from fcrl.verifier.render import render

GT = [{"get_weather": {"city": ["Paris"], "unit": ["celsius", ""]}}]
TOOLS = [
    {
        "name": "get_weather",
        "parameters": {
            "type": "dict",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    }
]
RIGHT = "<think>Paris, default unit.</think><answer>[get_weather(city='paris')]</answer>"


def test_verdicts():
    assert verify(RIGHT, GT, TOOLS) == Verdict(1.0, "ok", "")
    wrong = verify(RIGHT.replace("paris", "Rome"), GT, TOOLS)
    assert (wrong.reward, wrong.reason) == (0.0, "wrong_value")
    assert "Rome" in wrong.detail
    assert verify("<think>x</think><answer>[]</answer>", [], TOOLS).reward == 1.0
    assert (
        verify(
            render([("get_weather", {"city": "Paris"})], "tool_call"), GT, TOOLS, "tool_call"
        ).reward
        == 1.0
    )


def test_format_credit_shape():
    """format_credit pays a little for a well-formed wrong answer, nothing for a broken one."""
    wrong = RIGHT.replace("paris", "Rome")
    assert verify(wrong, GT, shape="format_credit").reward == pytest.approx(0.1)
    assert verify(wrong, GT, shape="format_credit", format_credit=0.2).reward == pytest.approx(0.2)
    assert verify(RIGHT, GT, shape="format_credit").reward == 1.0
    assert verify("[get_weather(city='Paris')]", GT, shape="format_credit").reward == 0.0
    assert verify(wrong, GT).reward == 0.0  # binary by default


def test_too_long_is_rejected_before_parsing():
    long = "<think>" + "x" * 100 + "</think><answer>[get_weather(city='Paris')]</answer>"
    assert verify(long, GT, max_chars=50).reason == "too_long"
    assert verify(long, GT).reason == "ok"


@pytest.mark.parametrize(
    "kwargs, field",
    [({"fmt": "xml"}, "fmt"), ({"shape": "partial"}, "shape"), ({"max_chars": 0}, "max_chars")],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        verify(RIGHT, GT, **kwargs)


def test_completion_must_be_text():
    with pytest.raises(TypeError, match="completion"):
        verify(b"[get_weather(city='Paris')]", GT)


def batch():
    completions, gts, tools = [], [], []
    variants = [RIGHT, RIGHT.replace("paris", "Rome"), "<answer>[]</answer>", "x" * 70_000]
    for i in range(64):
        irrelevant = i % 5 == 0
        completions.append(variants[i % 4])
        gts.append([] if irrelevant else GT)
        tools.append(TOOLS if i % 2 else None)
    return completions, gts, tools


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_equals_one_by_one_in_order(workers):
    completions, gts, tools = batch()
    rewards, reasons = verify_batch(completions, gts, tools, workers=workers, min_parallel=8)
    expected = [verify(c, g, t) for c, g, t in zip(completions, gts, tools, strict=True)]
    assert rewards.dtype == np.float32 and rewards.shape == (64,)
    np.testing.assert_array_equal(rewards, [v.reward for v in expected])
    assert list(reasons) == [v.reason for v in expected]
    assert set(reasons) <= set(REASONS) and len(set(reasons)) >= 4


def test_batch_errors_name_the_item():
    completions, gts, tools = batch()
    gts[7] = [{"f": "not a dict"}]
    with pytest.raises(ValueError, match=r"item 7: ground_truth\[0\]"):
        verify_batch(completions, gts, tools, workers=1)
    gts[7], gts[40] = GT, [{"f": "not a dict"}]  # in the second of two worker chunks
    with pytest.raises(ValueError, match=r"item 40: ground_truth\[0\]"):
        verify_batch(completions, gts, tools, workers=2, min_parallel=8)
    with pytest.raises(ValueError, match="63 ground_truths"):
        verify_batch(completions, gts[:-1], tools)
