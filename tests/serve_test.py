"""fcrl.serve as a real process on 127.0.0.1 with a tiny model: OpenAI-shaped answers, 400s."""

import json
import urllib.error
import urllib.request

import pytest


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_completion(served):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "n": 2,
            "temperature": 0.8, "seed": 3}  # fmt: skip
    status, out = post(served, body)
    assert status == 200 and out["object"] == "chat.completion"
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" for c in out["choices"])
    assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
    assert 0 < out["usage"]["completion_tokens"] <= 16
    assert post(served, body)[1]["choices"] == out["choices"]  # same seed, same samples
    with urllib.request.urlopen(f"{served}/v1/models", timeout=30) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny-qwen2"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "sampling"),
        (b"{not json", None),
        ([1, 2], None),
    ],
)
def test_bad_requests_get_400_naming_the_field(served, body, param):
    status, out = post(served, body)
    assert status == 400
    assert out["error"]["param"] == param
