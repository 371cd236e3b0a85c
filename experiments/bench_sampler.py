"""Rollout speed on the embedded SmolLM2-135M: fcrl's sampler vs transformers-torch `generate`.

  .venv/bin/python experiments/bench_sampler.py [--repeats 3]

Needs the test dependencies (./install.sh test) for torch. Settings: 1 and 4 chat prompts of
~200 tokens, G = 8 samples each, 128 new tokens at temperature 0.7 (no top-k / top-p), every row
forced to full length (no eos). Both sides run the same converted f32 model (fcrl also in bf16:
weights and KV cache, dots accumulating in f32). Prints a table and, last, one JSON line.
tok/s counts the new tokens of all rows over prefill + decode; decode tok/s over decode alone.
The memory floor of a decode step is the weight bytes over the measured memory bandwidth.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from fcrl.chat import render
from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir
from fcrl.sampler import Sampler, SamplingConfig, decode, prefill

TOPICS = ("weather", "flights", "stocks", "recipes")
NEW, G, TEMPERATURE = 128, 8, 0.7


def chat_prompt(tokenizer: transformers.PreTrainedTokenizerBase, topic: str) -> list[int]:
    """A function-calling style request of at most 200 tokens (about 200)."""
    words = (
        f"You can call tools about {topic}: get_{topic}(query: str, limit: int = 5) returns "
        f"records; summarize_{topic}(records: list, style: str) writes a short report. Think "
        "step by step inside <think> tags, then give the calls inside <answer> tags as a Python "
        "list. The user asks: please look up the latest five records for the city of Lisbon, "
        "compare them with last week's, and summarize what changed in a friendly tone. "
    ).split() * 4
    while len(ids := render(tokenizer, [{"role": "user", "content": " ".join(words)}])) > 200:
        words.pop()
    return ids


def memory_bandwidth() -> float:
    """Bytes per second of a jitted sum over 512 MiB (median of 5)."""
    x = jnp.ones((128 << 20,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        total(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return x.nbytes / statistics.median(times)


def time_fcrl(model, prompts: list[list[int]], repeats: int) -> dict[str, float]:
    """Median prefill and decode seconds of the sampler (after one compiling run)."""
    sampling = SamplingConfig(num_samples=G, max_new_tokens=NEW, temperature=TEMPERATURE)
    sampler = Sampler(model, sampling, None, eos=[])  # no eos: every row runs to NEW tokens
    state = nnx.state(model)
    prompt_BS, mask_BS = sampler.pad(prompts)
    tables = (sampler.eos, *sampler.tables)
    runs = []
    for seed in range(repeats + 1):
        start = time.perf_counter()
        cache, s = prefill(
            sampler.graphdef, state, prompt_BS, mask_BS, jax.random.key(seed), *tables,
            sampling=sampling,
        )  # fmt: skip
        jax.block_until_ready(s)
        middle = time.perf_counter()
        s = decode(sampler.graphdef, state, cache, s, *tables, sampling=sampling)
        jax.block_until_ready(s)
        runs.append((middle - start, time.perf_counter() - middle))
        assert (np.asarray(s.lengths_B) == NEW).all()
    prefill_s = statistics.median(r[0] for r in runs[1:])
    decode_s = statistics.median(r[1] for r in runs[1:])
    return {"prefill_s": prefill_s, "decode_s": decode_s, "step_ms": 1e3 * decode_s / (NEW - 1)}


def time_torch(folder, prompts: list[list[int]], repeats: int) -> dict[str, float]:
    """Median seconds of `generate` (KV cache) and of its prefill alone: bench_torch's part."""
    from bench_torch import generate

    r = generate({"model": str(folder), "prompts": prompts, "g": G, "new": NEW,
                  "temperature": TEMPERATURE, "repeats": repeats})  # fmt: skip
    return {"prefill_s": r["prefill_s"], "decode_s": r["decode_s"],
            "step_ms": 1e3 * r["decode_s"] / (NEW - 1)}  # fmt: skip


def rates(r: dict[str, float], tokens: int) -> dict[str, float]:
    return {
        **r,
        "tok_s": tokens / (r["prefill_s"] + r["decode_s"]),
        "decode_tok_s": tokens / r["decode_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    folder = default_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    bandwidth = memory_bandwidth()
    models = {d: load_hf(folder, dtype=d, param_dtype=d) for d in ("float32", "bfloat16")}
    weight_bytes = {
        d: sum(x.nbytes for x in jax.tree.leaves(nnx.state(m))) for d, m in models.items()
    }
    results = {}
    for n_prompts in (1, 4):
        prompts = [chat_prompt(tokenizer, t) for t in TOPICS[:n_prompts]]
        tokens = n_prompts * G * NEW
        hf = rates(time_torch(folder, prompts, args.repeats), tokens)
        row = {"prompt_tokens": [len(p) for p in prompts], "hf": hf}
        for dtype, model in models.items():
            ours = rates(time_fcrl(model, prompts, args.repeats), tokens)
            ours["floor_step_ms"] = 1e3 * weight_bytes[dtype] / bandwidth
            row[dtype] = ours
        f32 = row["float32"]
        row.update(
            fcrl_tok_s=f32["tok_s"],
            hf_tok_s=hf["tok_s"],
            ratio=f32["tok_s"] / hf["tok_s"],
            decode_ratio=f32["decode_tok_s"] / hf["decode_tok_s"],
            bf16_ratio=row["bfloat16"]["tok_s"] / hf["tok_s"],
        )
        results[f"{n_prompts}x{G}"] = row

    print(f"SmolLM2-135M, G = {G}, {NEW} new tokens, T = {TEMPERATURE}, median of {args.repeats}")
    megabytes = weight_bytes["float32"] / 1e6
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s; f32 weights {megabytes:.0f} MB")
    header = (
        "setting",
        "engine",
        "prefill s",
        "decode s",
        "step ms",
        "floor ms",
        "tok/s",
        "dec tok/s",
    )
    print("".join(f"{h:>11}" for h in header))
    for name, row in results.items():
        for engine in ("hf", "float32", "bfloat16"):
            r = row[engine]
            label = {"hf": "torch f32", "float32": "fcrl f32", "bfloat16": "fcrl bf16"}[engine]
            floor = f"{r['floor_step_ms']:11.1f}" if "floor_step_ms" in r else f"{'':>11}"
            print(
                f"{name:>11}{label:>11}{r['prefill_s']:11.2f}{r['decode_s']:11.2f}"
                f"{r['step_ms']:11.1f}{floor}{r['tok_s']:11.0f}{r['decode_tok_s']:11.0f}"
            )
        print(f"{'':>11}{'ratio':>11}  f32 {row['ratio']:.2f} (decode {row['decode_ratio']:.2f})"
              f", bf16 {row['bf16_ratio']:.2f}")  # fmt: skip
    print(json.dumps({"bandwidth_gb_s": bandwidth / 1e9, **results}))


if __name__ == "__main__":
    main()
