"""A small OpenAI-compatible chat server over a local checkpoint (the embedded SmolLM2 by default).

  python -m fcrl.serve [--model PATH] [--port 8000] [--host 127.0.0.1]

POST /v1/chat/completions takes `messages` (and optional `tools`, rendered by fcrl.chat in the
method's think/answer format; `max_tokens`, `temperature`,
`top_p`, `n`, `stop`, `seed`) and answers in OpenAI's chat.completion shape; GET /v1/models and
GET /health report the model. Requests are served one at a time by fcrl's sampler; each distinct
sampling setting compiles once. Bad requests get HTTP 400 naming the field. Binds 127.0.0.1
unless told otherwise; it prints `fcrl.serve: listening on http://HOST:PORT` when ready.
"""

import argparse
import http.server
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from fcrl.chat import ChatModel
from fcrl.models.gguf import default_model_dir
from fcrl.sampler import SamplingConfig


class Chat:
    """A ChatModel behind a lock, with the prompt-length buckets its context allows."""

    def __init__(self, model_dir: Path, dtype: str = "float32", max_new_tokens: int = 512):
        self.model = ChatModel(model_dir, dtype)
        self.name, self.max_new_tokens = self.model.name, max_new_tokens
        self.buckets = self.model.buckets(max_new_tokens)
        self.lock = threading.Lock()

    def complete(self, body: dict) -> dict:
        """An OpenAI chat.completion for a request body; ValueError(field, message) if bad."""
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in messages
            )
        ):
            raise ValueError("messages", "must be a non-empty list of {role, content} objects")
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        fields = {
            "max_tokens": body.get("max_tokens", self.max_new_tokens),
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "n": body.get("n", 1),
            "seed": body.get("seed", 0),
        }
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(name, f"must be a number, got {value!r}")
        if not 1 <= fields["max_tokens"] <= self.max_new_tokens:
            raise ValueError("max_tokens", f"must be in [1, {self.max_new_tokens}]")
        try:
            sampling = SamplingConfig(
                num_samples=int(fields["n"]),
                max_new_tokens=int(fields["max_tokens"]),
                temperature=float(fields["temperature"]),
                top_p=float(fields["top_p"]),
                stop=stop,
                buckets=self.buckets,
            )
        except ValueError as e:  # "sampling.<field> ..."
            raise ValueError("sampling", str(e)) from None
        tools = body.get("tools") or None
        with self.lock:
            prompt, rows = self.model.sample(messages, tools, sampling, int(fields["seed"]))
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": row["text"]},
                "finish_reason": "length" if row["finish_reason"] == "length" else "stop",
            }
            for i, row in enumerate(rows)
        ]
        completion_tokens = sum(row["length"] for row in rows)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt) + completion_tokens,
            },
        }


def handler(chat: Chat) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, message: str, param: str | None = None) -> None:
            self.reply(status, {"error": {"message": message, "type": "invalid_request_error",
                                          "param": param}})  # fmt: skip

        def do_GET(self) -> None:
            if self.path in ("/v1/models", "/models"):
                self.reply(200, {"object": "list", "data": [{"id": chat.name, "object": "model"}]})
            elif self.path == "/health":
                self.reply(200, {"status": "ok", "model": chat.name})
            else:
                self.error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path not in ("/v1/chat/completions", "/chat/completions"):
                return self.error(404, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
            except (ValueError, UnicodeDecodeError) as e:
                return self.error(400, f"the body is not JSON: {e}")
            if not isinstance(body, dict):
                return self.error(400, "the body must be a JSON object")
            try:
                self.reply(200, chat.complete(body))
            except ValueError as e:
                field, message = e.args if len(e.args) == 2 else (None, str(e))
                self.error(400, f"{field}: {message}" if field else message, field)

        def log_message(self, format: str, *args) -> None:  # requests go to stderr, briefly
            sys.stderr.write(f"fcrl.serve: {self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fcrl.serve", description=__doc__)
    parser.add_argument("--model", help="HF checkpoint folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-new-tokens", type=int, default=512, help="cap on max_tokens")
    args = parser.parse_args(argv)
    try:
        chat = Chat(Path(args.model) if args.model else default_model_dir(), args.dtype,
                    args.max_new_tokens)  # fmt: skip
    except (OSError, ValueError) as e:
        parser.exit(2, f"fcrl.serve: error: {e}\n")
    server = http.server.ThreadingHTTPServer((args.host, args.port), handler(chat))
    host, port = server.server_address[:2]
    print(f"fcrl.serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
