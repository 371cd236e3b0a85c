"""Chat completion with a local HF checkpoint folder (the embedded SmolLM2 by default).

  python -m fcrl.generate --prompt "What is the capital of France?"

prints only the completion on standard output. With `--num-samples G` it prints G
samples as JSON lines (`text`, `token_ids`, `logprobs`, `finish_reason`) instead. Sampling is
fcrl/sampler.py's KV-cached engine.
"""

import argparse
import json
import os
from pathlib import Path

from fcrl.chat import ChatModel
from fcrl.models.gguf import default_model_dir
from fcrl.sampler import SamplingConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fcrl.generate", description=__doc__)
    parser.add_argument("--prompt", required=True, help="user message")
    parser.add_argument("--model", help="HF checkpoint folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument(
        "--num-samples", type=int, help="G: print G samples as JSON lines instead of one text"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        sampling = SamplingConfig(  # checked before the slow model load
            num_samples=1 if args.num_samples is None else args.num_samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            stop=tuple(args.stop),
        )
        chat = ChatModel(Path(args.model) if args.model else default_model_dir(), args.dtype)
        messages = [{"role": "user", "content": args.prompt}]
        _, rows = chat.sample(messages, None, sampling, args.seed)
    except (OSError, ValueError) as e:  # our errors already name the file, tensor or field
        parser.exit(2, f"fcrl.generate: error: {e}\n")
    if args.num_samples is None:
        print(rows[0]["text"])
        return
    for row in rows:
        print(json.dumps({k: row[k] for k in ("text", "token_ids", "logprobs", "finish_reason")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
