"""Stages 1 and 3: an LLM judges each record, and in stage 1 corrects it, round after round.

Asked per record (as in the authors' FunReason pipeline): is this a function-call task; can the
tools solve the query; are the function and arguments right, and if not, what is the right
answer. The judge answers with one JSON object. Backends: the project's own model from a local
folder (`LocalChat`), or any OpenAI-compatible `/v1/chat/completions` endpoint (`HttpChat`).
Verdicts are cached by the hash of (judge, stage, round, record) in an append-only JSON Lines
file, flushed per entry, so a re-run or a run resumed after a crash asks nothing twice.
"""

import hashlib
import json
import os
import pathlib
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

PROMPT = """You check training data for function calling. Reply with ONE JSON object, nothing else:
{{"function_call_task": true|false, "tools_can_solve": true|false, "answer_correct": true|false,
 "corrected_answer": null or a JSON list of {{"name": ..., "arguments": {{...}}}}}}

Tools: {tools}
User query: {query}
Proposed answer (the calls to make; [] means no call): {answer}"""


class JudgeError(Exception):
    """The judge could not answer about one record (e.g. its prompt is too long): that record
    is abstained on, the run goes on. An unreachable judge raises RuntimeError instead."""


class HttpChat:
    """An OpenAI-compatible chat endpoint; temperature 0. The API key, if any, comes from the
    environment variable named `key_env`."""

    def __init__(
        self,
        url: str,
        model: str = "",
        max_tokens: int = 512,
        key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retries: int = 3,
    ):
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1")
        self.model, self.max_tokens, self.key = model, max_tokens, os.environ.get(key_env)
        self.timeout, self.retries = timeout, retries
        self.name = f"http:{self.url}:{model}:{max_tokens}"

    def __call__(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(f"{self.url}/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if e.code < 500:  # this request is bad (e.g. too long): this record only
                    raise JudgeError(
                        f"{e.code}: {e.read()[:300].decode(errors='replace')}"
                    ) from None
                if attempt == self.retries:
                    raise RuntimeError(f"judge endpoint {self.url}: {e}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise RuntimeError(f"judge endpoint {self.url}: {e}") from None
            time.sleep(2**attempt)
        raise AssertionError("unreachable")


class LocalChat:
    """The project's own model from a checkpoint folder, greedy, through the sampler."""

    def __init__(self, model_dir: pathlib.Path, max_new_tokens: int = 256):
        from fcrl.chat import ChatModel  # loads JAX: only when a local judge is used
        from fcrl.sampler import SamplingConfig

        self.chat = ChatModel(pathlib.Path(model_dir))
        self.name = f"local:{pathlib.Path(model_dir).resolve()}:{max_new_tokens}"
        buckets = self.chat.buckets(max_new_tokens)
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                       buckets=buckets)  # fmt: skip

    def __call__(self, messages: list[dict]) -> str:
        try:
            return self.chat.sample(messages, None, self.sampling)[1][0]["text"]
        except ValueError as e:  # e.g. the prompt is longer than the model's context
            raise JudgeError(str(e)) from None


def verdict_of(reply: str) -> dict | None:
    """The judge's JSON object (the first {...} that parses and has answer_correct), or None."""
    for match in re.finditer(r"\{", reply):
        try:
            obj, _ = json.JSONDecoder().raw_decode(reply[match.start() :])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("answer_correct"), bool):
            return obj
    return None


class Judge:
    """A chat backend with a verdict cache in `cache_path`."""

    def __init__(self, chat: Callable[[list[dict]], str], cache_path: pathlib.Path):
        self.chat, self.cache_path = chat, pathlib.Path(cache_path)
        self.cache = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.cache[entry["key"]] = entry["reply"]
                except (ValueError, KeyError):
                    continue  # a line cut by a crash: asked again
        self.asked = self.cached = 0

    def ask(self, stage: str, round_: int, record: dict) -> dict | None:
        """The verdict on `record` (None if the reply has none), from the cache if there."""
        prompt = PROMPT.format(
            tools=json.dumps(record["tools"]),
            query=" / ".join(m["content"] for m in record["messages"] if m.get("role") == "user"),
            answer=json.dumps(record["answer"])
            if not isinstance(record["answer"], str)
            else record["answer"],
        )
        key = hashlib.sha256(
            json.dumps([self.chat.name, stage, round_, prompt]).encode()
        ).hexdigest()
        if key in self.cache:
            self.cached += 1
        else:
            self.asked += 1
            self.cache[key] = self.chat([{"role": "user", "content": prompt}])
            with self.cache_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "reply": self.cache[key]}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return verdict_of(self.cache[key])


def stage1(
    judge: Judge, record: dict, rounds: int, keep_unparseable: bool
) -> tuple[dict | None, str]:
    """(record, outcome): outcome is "kept", "changed", "abstained" (no usable verdict: kept as
    is when keep_unparseable), or a reason the record was dropped."""
    changed = False
    for round_ in range(rounds):
        try:
            verdict = judge.ask("stage1", round_, record)
        except JudgeError:
            verdict = None
        if verdict is None:
            return (record, "abstained") if keep_unparseable else (None, "judge_unparseable")
        if verdict.get("function_call_task") is False:
            return None, "not_function_call_task"
        if verdict.get("tools_can_solve") is False and record["answer"] not in ([], "[]"):
            return None, "tools_cannot_solve"
        if verdict["answer_correct"]:
            return record, "changed" if changed else "kept"
        corrected = verdict.get("corrected_answer")
        if not isinstance(corrected, list):
            return None, "judged_wrong"
        record, changed = {**record, "answer": corrected}, True
    return None, "judged_wrong"


def stage3(judge: Judge, record: dict, keep_unparseable: bool) -> tuple[dict | None, str]:
    """The final pass: one verdict, no corrections."""
    try:
        verdict = judge.ask("stage3", 0, {**record, "answer": record["ground_truth"]})
    except JudgeError:
        verdict = None
    if verdict is None:
        return (record, "abstained") if keep_unparseable else (None, "judge_unparseable")
    return (record, "kept") if verdict["answer_correct"] else (None, "judged_wrong")
