"""Forward time of the embedded SmolLM2-135M on 8 × 512 tokens: fcrl (JAX) vs transformers-torch.

  .venv/bin/python experiments/bench_forward.py [--repeats 5]

Needs the test dependencies (./install.sh test) for torch. Prints a table and, last, one JSON
line with the median seconds per forward and the torch/fcrl ratio for f32 and bf16.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir


def median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@jax.jit
def forward(graphdef: nnx.GraphDef, state: nnx.State, tokens_BT: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(tokens_BT, jnp.ones(tokens_BT.shape, bool))


def time_both(folder: Path, dtype: str, tokens: np.ndarray, repeats: int) -> dict[str, float]:
    """Median forward seconds of fcrl and of transformers-torch in `dtype`, and their ratio."""
    import torch
    import transformers

    graphdef, state = nnx.split(load_hf(folder, dtype=dtype, param_dtype=dtype))
    x = jnp.asarray(tokens, jnp.int32)
    ours = median_time(lambda: forward(graphdef, state, x).block_until_ready(), repeats)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    xt = torch.tensor(tokens)
    with torch.inference_mode():
        theirs = median_time(lambda: ref.eval()(input_ids=xt).logits, repeats)
    return {"fcrl_s": ours, "torch_s": theirs, "ratio": theirs / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    folder = default_model_dir()
    tokens = np.random.default_rng(0).integers(0, 49152, (args.batch, args.tokens))
    results = {d: time_both(folder, d, tokens, args.repeats) for d in ("float32", "bfloat16")}
    print(f"SmolLM2-135M forward, {args.batch} x {args.tokens} tokens, median of {args.repeats}")
    print(f"{'dtype':10}{'fcrl s':>10}{'torch s':>10}{'torch/fcrl':>12}")
    for dtype, r in results.items():
        print(f"{dtype:10}{r['fcrl_s']:10.3f}{r['torch_s']:10.3f}{r['ratio']:12.2f}")
    print(json.dumps({"batch": args.batch, "tokens": args.tokens, **results}))


if __name__ == "__main__":
    main()
