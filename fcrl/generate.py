"""Chat completion with a local HF checkpoint folder (the embedded SmolLM2 by default).

  python -m fcrl.generate --prompt "What is the capital of France?"

prints only the completion on standard output. This is the simple reference loop (full
forward per step, no KV cache); the batched rollout engine lives in fcrl/sampler.py.
"""

import argparse
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from fcrl.models import Decoder, load_hf
from fcrl.models.gguf import default_model_dir


def eos_ids(model_dir: Path, tokenizer: transformers.PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn ids: generation_config.json, else config.json, else the tokenizer's."""
    for name in ("generation_config.json", "config.json"):
        file = model_dir / name
        eos = json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None
        if eos is not None:
            return [eos] if isinstance(eos, int) else list(eos)
    return [tokenizer.eos_token_id]


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def prompt_ids(tokenizer: transformers.PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user message in the chat template, ending with the assistant header."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already wrote any special tokens it wants (e.g. <|im_start|>).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def generate_tokens(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_BP: jax.Array,
    prompt_mask_BP: jax.Array,
    eos: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    max_new_tokens: int,
) -> jax.Array:
    """New tokens [B, N] after left-padded prompts; rows stop at an eos id (kept), then pad 0."""
    model = nnx.merge(graphdef, state)
    b, p = prompt_BP.shape
    tokens_BT = jnp.concatenate([prompt_BP, jnp.zeros((b, max_new_tokens), prompt_BP.dtype)], 1)
    mask_BT = jnp.concatenate([prompt_mask_BP, jnp.zeros((b, max_new_tokens), bool)], 1)

    def cond(carry: tuple) -> jax.Array:
        step, _, _, done_B, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done_B)

    def body(carry: tuple) -> tuple:
        step, tokens_BT, mask_BT, done_B, key = carry
        logits_BV = model(tokens_BT, mask_BT)[:, p + step - 1]
        key, sub = jax.random.split(key)
        sampled_B = jax.random.categorical(sub, logits_BV / jnp.maximum(temperature, 1e-6))
        next_B = jnp.where(temperature > 0, sampled_B, jnp.argmax(logits_BV, -1))
        next_B = jnp.where(done_B, 0, next_B).astype(tokens_BT.dtype)
        tokens_BT = tokens_BT.at[:, p + step].set(next_B)
        mask_BT = mask_BT.at[:, p + step].set(~done_B)
        return step + 1, tokens_BT, mask_BT, done_B | jnp.isin(next_B, eos), key

    init = (0, tokens_BT, mask_BT, jnp.zeros((b,), bool), key)
    _, tokens_BT, *_ = jax.lax.while_loop(cond, body, init)
    return tokens_BT[:, p:]


def generate(
    model: Decoder,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: list[str],
    eos: list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Completions of user `prompts`, each wrapped in the model's chat template."""
    check_sampling(max_new_tokens, temperature)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    longest = max(len(x) for x in ids)
    prompt_BP = np.zeros((len(ids), longest), np.int32)
    mask_BP = np.zeros((len(ids), longest), bool)
    for row, x in enumerate(ids):  # left padding: every prompt ends at the same column
        prompt_BP[row, longest - len(x) :], mask_BP[row, longest - len(x) :] = x, True
    graphdef, state = nnx.split(model)
    new_BN = generate_tokens(
        graphdef,
        state,
        jnp.asarray(prompt_BP),
        jnp.asarray(mask_BP),
        jnp.asarray(eos),
        jax.random.key(seed),
        jnp.float32(temperature),
        max_new_tokens,
    )
    texts = []
    for row in np.asarray(new_BN).tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts.append(tokenizer.decode(row[:stop], skip_special_tokens=True))
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fcrl.generate", description=__doc__)
    parser.add_argument("--prompt", required=True, help="user message")
    parser.add_argument("--model", help="HF checkpoint folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        check_sampling(args.max_new_tokens, args.temperature)  # before the slow model load
        model_dir = Path(args.model) if args.model else default_model_dir()
        model = load_hf(model_dir, dtype=args.dtype, param_dtype=args.dtype)
    except (OSError, ValueError) as e:  # our errors already name the file, tensor or field
        parser.exit(2, f"fcrl.generate: error: {e}\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    (text,) = generate(
        model,
        tokenizer,
        [args.prompt],
        eos_ids(model_dir, tokenizer),
        args.max_new_tokens,
        args.temperature,
        args.seed,
    )
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
