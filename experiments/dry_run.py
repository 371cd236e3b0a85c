"""Will a config fit its slice, and what will its run cost? Before renting the slice.

  python experiments/dry_run.py --config configs/egpo_qwen25_coder_7b.py:slice=v5p-32 [--mfu=0.4]

Builds the model abstractly from the HF config.json at `model.shape` (no weights), places it with
the train rules on a simulated CPU mesh of the slice's chip count (`slice.chips`), lowers and
compiles the RL train step, the reference pass (β > 0) and the sampler's prefill and decode for
the config's largest shapes (the widest prompt bucket, the whole `max_new_tokens`, the
`sampling.max_prompts` rolled out together), and prints
per chip: parameter, optimizer and reference-model bytes, each program's arguments and
temporaries from its compiled memory analysis, and the peak against `slice.hbm_gb`. Then the
run's cost at the same largest shapes: tokens, FLOPs and hours on the slice at `--mfu`. Figures
from XLA:CPU's compiler: TPU and GPU compilers fuse and lay out differently, so these are
estimates (tpu/README.md has the table). The last line is the same as JSON.
"""

import functools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/, as with -m

from fcrl import job  # noqa: E402
from fcrl.models.config import ModelConfig  # noqa: E402
from fcrl.models.decoder import Decoder  # noqa: E402
from fcrl.rl.rollout import sequence_logprobs  # noqa: E402
from fcrl.rl.train import (  # noqa: E402
    Batch,
    make_optimizer,
    opt_shardings,
    prompt_group,
    step_shardings,
    train_step,
)
from fcrl.sampler import decode, prefill  # noqa: E402
from fcrl.sharding import BATCH, TRAIN_RULES, make_mesh, shardings  # noqa: E402

_MFU = flags.DEFINE_float("mfu", 0.4, "the model-FLOP utilisation the run's hours assume")
GB = 1e9


def per_chip(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))  # fmt: skip


def abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes}  # fmt: skip


def flops(cfg: ModelConfig, params: int, tokens: int, context: int) -> float:
    """Forward FLOPs of `tokens` tokens attending to `context` positions on average: 2 per
    parameter (the embedding table is a lookup) and 4·L·H·E per attended position."""
    embed = cfg.vocab_size * cfg.hidden_size
    return tokens * (2 * (params - embed) + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
                     * context)  # fmt: skip


def dry_run(config, mfu: float) -> dict:
    """The memory table and the cost of `config` on its slice (config.slice)."""
    chips, hbm = config.slice.chips, config.slice.hbm_gb * GB
    if len(jax.devices()) != chips:
        raise ValueError(f"slice.chips: {chips} simulated devices wanted, JAX has "
                         f"{len(jax.devices())} (set before JAX starts)")  # fmt: skip
    sampling = job.sampling_of(config)
    mesh = make_mesh(dict(config.mesh))
    hf = json.loads(pathlib.Path(config.model.shape).read_text())
    cfg = ModelConfig.from_hf(hf, config.model.shape, dtype=config.model.dtype,
                              param_dtype="float32", remat=config.model.remat)  # fmt: skip
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
    params = jax.tree.map(lambda x, s: abstract(x.shape, x.dtype, s), state,
                          shardings(state, TRAIN_RULES, mesh))  # fmt: skip
    optimizer = make_optimizer(config.optim)
    opt_state = jax.tree.map(lambda x, s: abstract(x.shape, x.dtype, s),
                             jax.eval_shape(optimizer.init, params),
                             opt_shardings(optimizer, params))  # fmt: skip
    g, p = config.rl.group_size, config.prompts_per_step
    b, s, n = p * g, max(sampling.buckets), sampling.max_new_tokens
    rows = NamedSharding(mesh, P(tuple(a for a in BATCH if a in mesh.shape)))
    columns = {"tokens_BT": jnp.int32, "mask_BT": bool, "completion_BT": bool, "think_BT": bool,
               "old_logp_BT": jnp.float32, "old_entropy_BT": jnp.float32,
               "ref_logp_BT": jnp.float32}  # fmt: skip
    batch = Batch(**{k: abstract((b, s + n), d, rows) for k, d in columns.items()},
                  rewards_B=abstract((b,), jnp.float32, rows), start=s)  # fmt: skip

    in_shardings, out_shardings = step_shardings(params, opt_state, mesh)
    rl = job.rl_section(config)
    programs = {}
    with jax.set_mesh(mesh):
        m = config.rl.micro_batches
        group = prompt_group(batch, b // m, g)  # G: each prompt runs once for its rows
        step = jax.jit(functools.partial(train_step, graphdef, rl=rl, optimizer=optimizer),
                       in_shardings=in_shardings, out_shardings=out_shardings,
                       donate_argnames=("params", "opt_state"))  # fmt: skip
        programs["train step"] = step.lower(params, opt_state, batch).compile()
        if config.rl.kl_coef > 0:
            ref = jax.jit(functools.partial(sequence_logprobs, graphdef,
                                            temperature=config.rl.temperature,
                                            chunk=config.rl.logprob_chunk, start=s,
                                            group=group, micro_batches=m),
                          out_shardings=rows)  # fmt: skip
            programs["reference pass"] = ref.lower(params, batch.tokens_BT, batch.mask_BT).compile()
        key = jax.eval_shape(lambda: jax.random.key(0))
        tables = (abstract((4,), jnp.int32, None),  # eos ids
                  *(abstract(shape, dtype, None) for shape, dtype in  # automata: states × vocab
                    (((16, cfg.vocab_size), jnp.int32), ((16,), bool),
                     ((16, cfg.vocab_size), jnp.int32), ((16,), bool))))  # fmt: skip
        r = min(sampling.max_prompts or p, p)  # prompts rolled out together
        prompts = (abstract((r, s), jnp.int32, None), abstract((r, s), bool, None))  # as numpy
        args = (graphdef, params, *prompts, key, *tables)
        programs["prefill"] = prefill.lower(*args, sampling=sampling).compile()
        prompt, started = jax.eval_shape(functools.partial(prefill, sampling=sampling), *args)
        programs["decode"] = decode.lower(graphdef, params, prompt, started, *tables,
                                          sampling=sampling).compile()  # fmt: skip

    held = {"parameters": per_chip(params), "optimizer": per_chip(opt_state),
            "reference": per_chip(params) if config.rl.kl_coef > 0 else 0}  # fmt: skip
    resident = sum(held.values())  # on the chip the whole run
    table = {}
    for name, compiled in programs.items():
        m = memory(compiled)
        # Beyond what stays resident: the program's other inputs, its temporaries and the
        # outputs it does not write in place.
        weights = held["parameters"] + (held["optimizer"] if name == "train step" else 0)
        extra = m["arguments"] - weights + m["temporaries"] + m["outputs"] - m["aliased"]
        table[name] = m | {"peak": resident + max(extra, 0)}
    peak = max(t["peak"] for t in table.values())

    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    rollout = flops(cfg, n_params, b * n, s + n / 2) + flops(cfg, n_params, p * s, s / 2)
    # Forward + backward (2 forwards' worth), remat's second forward, the reference and old passes.
    passes = (3 + config.model.remat + (config.rl.kl_coef > 0)
              + (config.old_logprobs == "recompute"))  # fmt: skip
    train = passes * flops(cfg, n_params, b * (s + n), (s + n) / 2)
    per_step = rollout + train
    peak_flops = chips * config.slice.peak_tflops * 1e12
    out = {
        "config": {
            "slice": config.slice.name,
            "chips": chips,
            "hbm_gb": config.slice.hbm_gb,
            "mesh": dict(config.mesh),
            "model": config.model.shape,
            "parameters": n_params,
            "rows": b,
            "prompt": s,
            "new_tokens": n,
            "micro_batches": config.rl.micro_batches,
            "prompt_group": group,
            "rollout_prompts": r,
        },  # fmt: skip
        "per_chip_bytes": held | {"resident": resident},
        "programs": table,
        "peak_bytes": peak,
        "fits": peak <= hbm,
        "cost": {
            "tokens_per_step": b * (s + n),
            "flops_per_step": per_step,
            "steps": config.steps,
            "tokens": b * (s + n) * config.steps,
            "flops": per_step * config.steps,
            "mfu": mfu,
            "hours": per_step * config.steps / (peak_flops * mfu) / 3600,
        },  # fmt: skip
    }
    return out


def report(out: dict) -> str:
    c, cost = out["config"], out["cost"]
    lines = [f"{c['model']} on {c['slice']} ({c['chips']} chips, {c['hbm_gb']} GB HBM each), "
             f"mesh {c['mesh']}; {c['parameters'] / 1e9:.2f} B parameters; a step of "
             f"{c['rows']} rows × ({c['prompt']} + {c['new_tokens']}) tokens, "
             f"{c['micro_batches']} micro-batches"
             + (", each prompt run once for its group" if c["prompt_group"] > 1 else "")
             + f"; rollouts of {c['rollout_prompts']} prompts at a time",
             "per chip (GB, estimates from the CPU compiler):"]  # fmt: skip
    for name, value in out["per_chip_bytes"].items():
        lines.append(f"  {name:<26}{value / GB:9.2f}")
    lines.append(f"  {'program':<26}{'arguments':>10}{'temporaries':>12}{'peak':>9}")
    for name, m in out["programs"].items():
        lines.append(f"  {name:<26}{m['arguments'] / GB:10.2f}{m['temporaries'] / GB:12.2f}"
                     f"{m['peak'] / GB:9.2f}")  # fmt: skip
    verdict = "fits" if out["fits"] else "does NOT fit"
    lines.append(f"  peak {out['peak_bytes'] / GB:.2f} GB of {c['hbm_gb']} GB: {verdict}")
    lines.append(f"cost at the largest shapes: {cost['tokens_per_step'] / 1e6:.2f} M tokens and "
                 f"{cost['flops_per_step'] / 1e15:.1f} PFLOP a step; {cost['steps']} steps = "
                 f"{cost['tokens'] / 1e9:.2f} B tokens, {cost['flops'] / 1e18:.1f} EFLOP, "
                 f"{cost['hours']:.1f} h at {cost['mfu']:.0%} MFU")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    for field in ("slice", "model.shape"):
        section, _, name = field.rpartition(".")
        if name not in (config[section] if section else config):
            sys.exit(job.fail("dry_run", f"{field}: the config has none (configs/paper.py)"))
    jax.config.update("jax_num_cpu_devices", config.slice.chips)  # before JAX starts
    try:
        out = dry_run(config, _MFU.value)
    except (OSError, ValueError) as e:
        sys.exit(job.fail("dry_run", str(e).splitlines()[0]))
    print(report(out))
    print(json.dumps(out))


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_file("config", None, "an RL config with a slice",
                                              lock_config=False)  # fmt: skip
    app.run(main)
