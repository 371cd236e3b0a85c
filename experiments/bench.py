"""One GRPO/EGPO step on SmolLM2-135M: fcrl against TRL's GRPOTrainer, side by side in one run.

  ./install.sh && .venv/bin/python experiments/bench.py

Measures, on this machine and in this run (so that ratios, not drifting absolute times, are what
it reports): (a) rollout tokens/s, fcrl's sampler against transformers-torch `generate`; (b) the
train step's tokens/s and FLOP rate against the matmul peak measured here, in f32 and in bf16;
(c) one full RL step (rollout + reward + update) against TRL's GRPOTrainer with the same model,
G, batch and lengths, in f32 and bf16; (d) fcrl's step-time breakdown and peak host memory.

The work, alike on both sides (BASELINES.md): one chat prompt of 211 tokens with four tools,
G = 8 rollouts of exactly 128 new tokens (no eos; TRL `min_new_tokens=128`), temperature 0.7, no
top-k / top-p, β = 0 (no reference model), token-mean PPO-clip loss (TRL `loss_type="dapo"`,
ε = 0.2), AdamW at lr 1e-6, one optimizer step per rollout batch (old log-probs = the rollout's:
the sampler's on our side, the detached current ones on TRL's). The reward runs fcrl's verifier;
its binary rewards are then replaced by a fixed mix (rows 0, 3, 5, 6 get 1) on both sides, so that
every step does the whole update (an all-equal group would have no gradient, and fcrl skips it).

Each part runs in its own process, which reports its own peak RSS. The torch side runs in a
virtualenv that this script creates in $FCRL_CACHE/bench-torch (torch==2.13.0 CPU, trl==1.16.0).
Prints a table of ratios and, as its last line, one JSON object.
"""

import argparse
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
G, NEW, TEMPERATURE, LR = 8, 128, 0.7, 1e-6
REWARDS = (1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0)  # a fixed mix: every step has a gradient
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Lisbon."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "The temperature unit."},
            },
            "required": ["city"],
        },
    },
    {
        "name": "convert_currency",
        "description": "Converts an amount between two currencies.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "description": "The amount to convert."},
                "source": {"type": "string", "description": "ISO code to convert from."},
                "target": {"type": "string", "description": "ISO code to convert to."},
            },
            "required": ["amount", "source", "target"],
        },
    },
    {
        "name": "search_flights",
        "description": "Flights between two airports on a date, cheapest first.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "description": "IATA code of departure."},
                "destination": {"type": "string", "description": "IATA code of arrival."},
                "date": {"type": "string", "description": "YYYY-MM-DD."},
                "max_stops": {"type": "integer", "description": "At most this many stops."},
            },
            "required": ["origin", "destination", "date"],
        },
    },
    {
        "name": "book_table",
        "description": "Reserves a table at a restaurant.",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "description": "The restaurant's name."},
                "party_size": {"type": "integer", "description": "How many guests."},
                "time": {"type": "string", "description": "HH:MM, 24-hour clock."},
            },
            "required": ["restaurant", "party_size", "time"],
        },
    },
]  # fmt: skip
QUERY = "What's the weather in Lisbon in celsius, and how much is 250 euros in yen?"
GROUND_TRUTH = [
    {"get_weather": {"city": ["Lisbon"], "unit": ["celsius", ""]}},
    {"convert_currency": {"amount": [250, 250.0], "source": ["EUR"], "target": ["JPY"]}},
]


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ---------------------------------------------------------------- fcrl's parts (main venv)


def prompt_ids(tokenizer) -> list[int]:
    from fcrl import chat

    return chat.render(tokenizer, [{"role": "user", "content": QUERY}], TOOLS, docs="compact")


def rl_config(dtype: str):
    """configs/egpo.py set to the bench's step: 1 prompt × G, β = 0, lr 1e-6, `dtype` compute."""
    from configs import egpo

    config = egpo.get_config()
    config.prompts_per_step, config.rl.group_size, config.rl.kl_coef = 1, G, 0.0
    config.sampling.max_new_tokens, config.rl.temperature = NEW, TEMPERATURE
    config.optim.lr, config.model.dtype, config.mesh.fsdp = LR, dtype, 1
    return config


def train_flops(cfg, prompt: int, rows: int, new: int) -> float:
    """Model FLOPs of one update (forward + backward = 3 forwards) as the step runs it: the
    prompt's tokens once for its G rows, the output projection on the completion tokens only,
    causal attention at its causal half. The chunked output projection's backward recompute is
    not counted (work the step does, not work it needs)."""
    d, f, h, k, e = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                     cfg.head_dim)  # fmt: skip
    layer = d * h * e * 2 + d * k * e * 2 + 3 * d * f  # q, o, k, v, gate, up, down
    tokens = prompt + rows * new
    context = prompt * prompt / 2 + rows * new * (prompt + new / 2)  # query-key pairs
    forward = 2 * layer * tokens + 4 * h * e * context
    forward = cfg.num_layers * forward + 2 * d * cfg.vocab_size * rows * new
    return 3.0 * forward


def rl_part(dtype: str, steps: int) -> dict:
    """fcrl's full RL step, as fcrl.train runs it: rollout, reward, batch, update (median of
    `steps` after one that compiles)."""
    import functools

    import jax
    import numpy as np
    import transformers
    from flax import nnx

    from fcrl import job
    from fcrl.models.gguf import default_model_dir
    from fcrl.rl.rollout import make_batch
    from fcrl.rl.train import init_opt_state, make_optimizer, step_shardings, train_step
    from fcrl.sampler import Sampler, token_pieces
    from fcrl.verifier import verify_batch

    config = rl_config(dtype)
    sampling = job.check_config(config)
    job.trim_after_compiles()  # as fcrl.train does
    folder = default_model_dir()
    mesh = job.mesh_of(config, G)
    model = job.trainable_model(folder, config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    graphdef, params = nnx.split(model)
    optimizer = make_optimizer(config.optim)
    opt_state = init_opt_state(optimizer, params)
    sampler = Sampler(model, sampling, tokenizer, eos=[], mesh=mesh)  # no eos: all NEW tokens
    pieces = token_pieces(tokenizer, model.cfg.vocab_size)
    in_shardings, out_shardings = step_shardings(params, opt_state, mesh)
    update = jax.jit(
        functools.partial(train_step, graphdef, rl=job.rl_section(config), optimizer=optimizer),
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        donate_argnames=("params", "opt_state"),
    )
    prompt = prompt_ids(tokenizer)
    rng = jax.random.key(0)
    times = []
    with jax.set_mesh(mesh):
        for _ in range(steps + 1):
            rng, key = jax.random.split(rng)
            t0 = time.perf_counter()
            rollouts = sampler.sample(params, [prompt], key)
            t1 = time.perf_counter()
            verify_batch(rollouts.texts, [GROUND_TRUTH] * G, [TOOLS] * G)
            t2 = time.perf_counter()
            batch = make_batch(rollouts, np.array(REWARDS, np.float32), pieces)
            batch = jax.device_put(batch, in_shardings[2])
            t3 = time.perf_counter()
            params, opt_state, metrics = update(params, opt_state, batch)
            jax.block_until_ready(params)
            t4 = time.perf_counter()
            assert (rollouts.lengths_B == NEW).all() and not metrics["update/skipped"]
            times.append({"rollout": t1 - t0, "reward": t2 - t1, "batch": t3 - t2,
                          "update": t4 - t3, "step": t4 - t0})  # fmt: skip
    med = {k: statistics.median(t[k] for t in times[1:]) for k in times[0]}
    flops = train_flops(model.cfg, batch.start, G, NEW)
    return {
        "dtype": dtype,
        "prompt_tokens": len(prompt),
        "prompt_width": batch.start,
        "first_step_s": times[0]["step"],
        **{f"{k}_s": v for k, v in med.items()},
        "train_tokens": int(np.asarray(batch.mask_BT).sum()),
        "train_flops": flops,
        "train_flop_s": flops / med["update"],
        "decode_tok_s": G * NEW / med["rollout"],
        "peak_rss_gb": peak_rss_gb(),
    }


def sampler_part(dtype: str, repeats: int) -> dict:
    """fcrl's rollouts alone at 4 prompts × G (bench_sampler's prompts and timing; 1 × G is
    the RL step's rollout)."""
    import jax
    import transformers
    from bench_sampler import TOPICS, chat_prompt, time_fcrl
    from flax import nnx

    from fcrl.models import load_hf
    from fcrl.models.gguf import default_model_dir

    folder = default_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = load_hf(folder, dtype=dtype, param_dtype=dtype)
    out = {"weight_bytes": sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))}
    out[f"4x{G}"] = time_fcrl(model, [chat_prompt(tokenizer, t) for t in TOPICS], repeats)
    return out | {"peak_rss_gb": peak_rss_gb()}


def ceilings() -> dict:
    """Memory bandwidth and the matmul peaks (4096³, median of 5) in f32 and in bf16 with f32
    accumulation (how fcrl's dots run bf16)."""
    import jax
    import jax.numpy as jnp
    from bench_sampler import memory_bandwidth

    def peak(dtype) -> float:
        a = jnp.ones((4096, 4096), dtype)
        dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        dot(a, a).block_until_ready()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            dot(a, a).block_until_ready()
            times.append(time.perf_counter() - start)
        return 2 * 4096**3 / statistics.median(times)

    return {"bandwidth_b_s": memory_bandwidth(), "peak_f32": peak(jnp.float32),
            "peak_bf16": peak(jnp.bfloat16)}  # fmt: skip


# ---------------------------------------------------------------- the torch side


def torch_python() -> pathlib.Path:
    """The torch + TRL virtualenv's python, created on first use."""
    cache = pathlib.Path(os.environ.get("FCRL_CACHE", "~/.cache/fcrl")).expanduser()
    venv = cache / "bench-torch"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        print(f"creating {venv} (torch==2.13.0 CPU, trl==1.16.0)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = ["torch==2.13.0", "trl==1.16.0", "transformers==5.23.0", "jinja2==3.1.6"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
        (venv / "ready").touch()
    return python


def child(command: list[str], job: dict | None = None, limit: float | None = None) -> dict | None:
    """Runs one part in its own process; its last stdout line is its JSON result (None when it
    ran past `limit` seconds and was killed)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, input=json.dumps(job) if job else None, text=True,
                              capture_output=True, cwd=ROOT, timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"  {' '.join(command[2:])[:70]} stopped at {limit:.0f} s", file=sys.stderr)
        return None
    if done.returncode:
        sys.exit(
            f"bench: {' '.join(command[1:])} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    print(f"  {' '.join(command[2:])[:70]} {time.perf_counter() - start:.0f} s", file=sys.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {json.dumps(result)}", file=sys.stderr)  # kept should a later part fail
    return result


# ---------------------------------------------------------------- the command


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed rollouts per setting")
    parser.add_argument("--steps", type=int, default=2, help="timed fcrl RL steps (after one)")
    parser.add_argument("--trl-steps", type=int, default=1, help="timed TRL steps (after one)")
    parser.add_argument(
        "--trl-bf16-limit",
        type=float,
        default=240.0,
        help="seconds before TRL's bf16 step is stopped (a lower bound then)",
    )
    parser.add_argument("--part", choices=("rl", "sampler"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]  # configs/ and bench_sampler
    if args.part == "rl":
        print(json.dumps(rl_part(args.dtype, args.steps)))
        return
    if args.part == "sampler":
        print(json.dumps(sampler_part(args.dtype, args.repeats)))
        return

    import transformers
    from bench_sampler import TOPICS, chat_prompt

    from fcrl import chat
    from fcrl.models.gguf import default_model_dir

    started = time.perf_counter()
    folder = str(default_model_dir())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    torch_py = [str(torch_python()), str(ROOT / "experiments" / "bench_torch.py")]
    me = [sys.executable, str(pathlib.Path(__file__).resolve())]
    print("bench: parts, each in its own process", file=sys.stderr)
    ceil = ceilings()
    print(f"  {json.dumps(ceil)}", file=sys.stderr)
    dtypes = ("float32", "bfloat16")
    rl = {d: child(me + ["--part", "rl", "--dtype", d, "--steps", str(args.steps)]) for d in dtypes}
    # bf16 rollouts are the bf16 RL step's (1 × G): they run slower than f32 on CPUs without
    # bf16 matmul units, and a 4 × G run of them would not fit the 15 minutes.
    samp = {"float32": child(me + ["--part", "sampler", "--repeats", str(args.repeats)])}
    common = {"model": folder, "g": G, "new": NEW, "temperature": TEMPERATURE}
    # One timed `generate` after its warm-up: about a minute here.
    prompts = [chat_prompt(tokenizer, t) for t in TOPICS]
    hf = {f"4x{G}": child(torch_py, {"part": "generate", "prompts": prompts, "repeats": 1,
                                     **common})}  # fmt: skip
    messages = [{"role": "system", "content": chat.system_prompt(TOOLS, docs="compact")},
                {"role": "user", "content": QUERY}]  # fmt: skip
    job = {"part": "trl", "messages": messages, "lr": LR, "rewards": REWARDS, **common}
    trl = {"float32": child(torch_py, job | {"steps": args.trl_steps, "bf16": False})}
    # TRL in bf16 takes many minutes a step on a CPU without bf16 matmul units: one step (its
    # warm-up included: TRL compiles nothing), stopped at --trl-bf16-limit seconds, when the
    # limit, model loading included, is a lower bound of its step and the ratio an upper bound.
    bf16 = child(torch_py, job | {"steps": 0, "bf16": True}, args.trl_bf16_limit)
    trl["bfloat16"] = bf16 or {"step_s": args.trl_bf16_limit, "lower_bound": True,
                               "generate_s": math.nan, "update_s": math.nan,
                               "peak_rss_gb": math.nan}  # fmt: skip
    report(ceil, rl, samp, hf, trl, time.perf_counter() - started)


def report(ceil: dict, rl: dict, samp: dict, hf: dict, trl: dict, elapsed: float) -> None:
    peak = {"float32": ceil["peak_f32"], "bfloat16": ceil["peak_bf16"]}
    # The RL steps keep f32 parameters (bf16 compute casts them): the f32 bytes in both.
    floor_ms = 1e3 * samp["float32"]["weight_bytes"] / ceil["bandwidth_b_s"]
    print(f"SmolLM2-135M, G = {G}, {NEW} new tokens, T = {TEMPERATURE}; memory "
          f"{ceil['bandwidth_b_s'] / 1e9:.1f} GB/s, matmul peak f32 {peak['float32'] / 1e9:.0f} "
          f"GFLOP/s, bf16 (f32 accumulation) {peak['bfloat16'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    rows = [("rollouts", "engine", "prefill s", "decode s", "step ms", "floor ms", "tok/s",
             "decode tok/s", "vs torch")]  # fmt: skip
    for setting, t in hf.items():
        torch_tok = G * NEW * int(setting[0]) / t["total_s"]
        rows.append((setting, "torch f32", f"{t['prefill_s']:.2f}", f"{t['decode_s']:.2f}",
                     f"{1e3 * t['decode_s'] / (NEW - 1):.0f}", "", f"{torch_tok:.0f}",
                     f"{G * NEW * int(setting[0]) / t['decode_s']:.0f}", "1.00"))  # fmt: skip
        for d, s in samp.items():
            r = s[setting]
            tok = G * NEW * int(setting[0])
            rows.append((setting, f"fcrl {d}", f"{r['prefill_s']:.2f}", f"{r['decode_s']:.2f}",
                         f"{r['step_ms']:.0f}", f"{floor_ms:.0f}",
                         f"{tok / (r['prefill_s'] + r['decode_s']):.0f}",
                         f"{tok / r['decode_s']:.0f}",
                         f"{t['decode_s'] / r['decode_s']:.2f}"))  # fmt: skip
    print(table(rows))
    rows = [("RL step", "fcrl s", "TRL s", "fcrl/TRL", "floor s", "rollout", "reward", "batch",
             "update", "TRL gen", "TRL update", "GFLOP/s", "of peak", "fcrl RSS GB",
             "TRL RSS GB")]  # fmt: skip
    for d, r in rl.items():
        floor = r["train_flops"] / peak[d] + NEW * floor_ms / 1e3
        bound = trl[d].get("lower_bound", False)  # TRL stopped: ≥ its time, ≤ the ratio
        rows.append((d, f"{r['step_s']:.1f}", f"{'> ' * bound}{trl[d]['step_s']:.1f}",
                     f"{'< ' * bound}{r['step_s'] / trl[d]['step_s']:.2f}", f"{floor:.1f}",
                     f"{r['rollout_s']:.1f}", f"{r['reward_s']:.3f}", f"{r['batch_s']:.3f}",
                     f"{r['update_s']:.1f}", f"{trl[d]['generate_s']:.1f}",
                     f"{trl[d]['update_s']:.1f}", f"{r['train_flop_s'] / 1e9:.0f}",
                     f"{r['train_flop_s'] / peak[d]:.0%}", f"{r['peak_rss_gb']:.2f}",
                     f"{trl[d]['peak_rss_gb']:.2f}"))  # fmt: skip
    print(table(rows))
    f32, bf16 = rl["float32"], rl["bfloat16"]
    print(
        f"train step: {f32['train_tokens']} tokens ({f32['prompt_width']}-column prompt run once "
        f"for its {G} rows), {f32['train_flops'] / 1e12:.2f} TFLOP; bench {elapsed:.0f} s"
    )
    wide = f"4x{G}"
    print(json.dumps({
        "rl_step_s": f32["step_s"], "trl_step_s": trl["float32"]["step_s"],
        "rl_step_ratio": f32["step_s"] / trl["float32"]["step_s"],
        "rl_step_s_bf16": bf16["step_s"], "trl_step_s_bf16": trl["bfloat16"]["step_s"],
        "rl_step_ratio_bf16": bf16["step_s"] / trl["bfloat16"]["step_s"],
        "trl_bf16_stopped": trl["bfloat16"].get("lower_bound", False),
        "decode_tok_s": G * NEW * 4 / samp["float32"][wide]["decode_s"],
        "hf_decode_tok_s": G * NEW * 4 / hf[wide]["decode_s"],
        "decode_ratio": hf[wide]["decode_s"] / samp["float32"][wide]["decode_s"],
        "train_flops_fraction": f32["train_flop_s"] / peak["float32"],
        "train_flops_fraction_bf16": bf16["train_flop_s"] / peak["bfloat16"],
        "peak_flop_s_f32": peak["float32"], "peak_flop_s_bf16": peak["bfloat16"],
        "peak_rss_gb": f32["peak_rss_gb"], "peak_rss_gb_bf16": bf16["peak_rss_gb"],
        "trl_peak_rss_gb": trl["float32"]["peak_rss_gb"], "bench_s": elapsed,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
