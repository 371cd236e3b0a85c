"""fcrl.rl.train: one batch = micro-batches = a sharded mesh, uniform groups give no gradient,
bf16 compute over float32 weights, optimizer state placement, and config checks."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs.egpo import get_config
from fcrl.rl import train
from fcrl.rl.loss import token_logprobs
from fcrl.sharding import TRAIN_RULES, make_mesh, shardings
from tests.models import tiny

G, B, T = 4, 8, 20
STEP = jax.jit(
    train.train_step,
    static_argnames=("graphdef", "rl", "optimizer"),
    donate_argnames=("params", "opt_state"),
)


def rl_config(**overrides) -> ml_collections.FrozenConfigDict:
    config = get_config(f"group_size={G}")
    config.rl.update({"logprob_chunk": 7, "completion_budget": 16, **overrides})
    return ml_collections.FrozenConfigDict(config.rl)


def make_batch(model, state, seed: int = 0, rewards=(1, 0, 0, 1, 1, 1, 1, 1)) -> train.Batch:
    """Prompts of 5–8 tokens (left-padded), completions of 6–12 tokens (right-padded), old and
    reference log-probs near the model's own."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 96, (B, T)).astype(np.int32)
    tokens[:, :8] = np.repeat(tokens[::G, :8], G, axis=0)  # a group's rows share its prompt
    start = np.repeat(rng.integers(0, 4, (B // G, 1)), G, axis=0)
    completion_end = 8 + rng.integers(6, 13, (B, 1))
    pos = np.arange(T)[None]
    mask = (pos >= start) & (pos < completion_end)
    completion = (pos >= 8) & (pos < completion_end)
    think = completion & (pos < 8 + rng.integers(0, 6, (B, 1)))
    nnx.update(model, state)
    logp, entropy = token_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask), 0.7, 64)
    noise = rng.normal(0, 0.05, (2, B, T)).astype(np.float32)
    return train.Batch(
        tokens_BT=tokens,
        mask_BT=mask,
        completion_BT=completion,
        think_BT=think,
        old_logp_BT=np.asarray(logp) + noise[0],
        old_entropy_BT=np.asarray(entropy),
        ref_logp_BT=np.asarray(logp) + noise[1],
        rewards_B=np.asarray(rewards, np.float32),
    )


def step(state, batch, rl, optimizer=None, model_dtype="float32", mesh=None):
    """One train step from a copy of `state` (the step donates its inputs); on `mesh`, jitted
    with explicit in/out shardings."""
    model, _ = tiny.random_model("qwen2")
    model.cfg = dataclasses.replace(model.cfg, dtype=model_dtype)
    graphdef = nnx.graphdef(model)
    optimizer = optimizer or optax.sgd(1.0)  # update = −gradient: compares gradients exactly
    params = jax.tree.map(jnp.copy, state)
    opt_state = train.init_opt_state(optimizer, params)
    if mesh is None:
        return STEP(graphdef, params, opt_state, batch, rl=rl, optimizer=optimizer)
    in_shardings, out_shardings = train.step_shardings(params, opt_state, mesh)
    sharded_step = jax.jit(
        functools.partial(train.train_step, graphdef, rl=rl, optimizer=optimizer),
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        donate_argnames=("params", "opt_state"),
    )
    return sharded_step(params, opt_state, batch)


def max_rel_diff(a, b) -> float:
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.abs(x - y).max(), a, b))
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(b))
    return max(float(d) for d in diffs) / scale


def as_dtype(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


# One aggregation by default; the others (the same code path, ~25 s each) with -m slow.
@pytest.mark.parametrize(
    "aggregation",
    ["token_mean", *(pytest.param(a, marks=pytest.mark.slow) for a in ("seq_mean_token_mean",
                                                                     "dr_grpo"))],
)  # fmt: skip
def test_micro_batches_a_mesh_and_a_start_give_the_one_batch_update(aggregation):
    """In float64 the four agree to ~1e-14: only the order of the sums differs. (In float32
    that reordering alone moves the update by ~1e-5 of its largest entry.) `start` = 8, the
    prompt width, leaves the prompt's columns out of the output projection, and (micro-batches
    of whole groups) runs each prompt once for its G rows."""
    dtype, tol = "float64", 1e-9
    model, state = tiny.random_model("qwen2")
    batch = make_batch(model, state)
    with jax.enable_x64(True):
        state, batch = as_dtype(state, dtype), as_dtype(batch, dtype)
        rl = {"aggregation": aggregation, "entropy_coef": 0.01}
        whole, _, metrics = step(state, batch, rl_config(**rl), model_dtype=dtype)
        micro, _, micro_metrics = step(
            state, batch, rl_config(**rl, micro_batches=4), model_dtype=dtype
        )
        mesh = make_mesh({"fsdp": 2, "tensor": 4})
        with jax.set_mesh(mesh):
            sharded_state = jax.device_put(state, shardings(state, TRAIN_RULES, mesh))
            sharded, _, sharded_metrics = step(
                sharded_state, batch, rl_config(**rl), model_dtype=dtype, mesh=mesh
            )
        from_prompt, _, start_metrics = step(
            state, batch.replace(start=8), rl_config(**rl, micro_batches=2), model_dtype=dtype
        )  # each prompt run once for its group
        update = jax.tree.map(jnp.subtract, whole, state)
        for other in (micro, sharded, from_prompt):
            assert max_rel_diff(jax.tree.map(jnp.subtract, other, state), update) <= tol
        for m in (micro_metrics, sharded_metrics, start_metrics):
            for key in ("loss/total", "loss/pg", "loss/kl", "grad/norm", "clip/low", "ratio/max"):
                np.testing.assert_allclose(m[key], metrics[key], rtol=tol, atol=tol)
    spec = jax.tree.leaves(sharded)[0].sharding.spec
    assert spec == jax.tree.leaves(sharded_state)[0].sharding.spec


@pytest.mark.parametrize("uniform_groups, kl_coef", [("mask", 0.001), ("keep", 0.0)])
def test_a_uniform_group_contributes_exactly_zero_gradient(uniform_groups, kl_coef):
    """Changing the tokens, log-probs and reward of the group whose rewards are all equal (rows
    4–7) leaves the update unchanged, bit for bit."""
    model, state = tiny.random_model("qwen2")
    batch = make_batch(model, state, seed=0)
    other = make_batch(model, state, seed=1)
    changed = batch.replace(
        **{
            name: np.concatenate([getattr(batch, name)[:4], getattr(other, name)[4:]])
            for name in ("tokens_BT", "old_logp_BT", "old_entropy_BT", "ref_logp_BT")
        },
        rewards_B=np.asarray([1, 0, 0, 1, 0, 0, 0, 0], np.float32),
    )
    rl = rl_config(uniform_groups=uniform_groups, kl_coef=kl_coef)
    a, _, metrics = step(state, batch, rl)
    b, _, _ = step(state, changed, rl)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert float(metrics["adv/uniform_groups"]) == 0.5


def test_bf16_compute_over_float32_weights():
    """On a near-initial model (a noisy one amplifies bf16 rounding), the bf16 update is within 5%
    (L2) of the float32 one, and the weights stay float32."""
    model, state = tiny.random_model("qwen2", noise=0.02)
    batch = make_batch(model, state)
    f32, _, _ = step(state, batch, rl_config())
    bf16, _, metrics = step(state, batch, rl_config(), model_dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16))

    def update(new):
        return jnp.concatenate(
            [
                (x - y).ravel()
                for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True)
            ]
        )

    assert float(jnp.linalg.norm(update(bf16) - update(f32)) / jnp.linalg.norm(update(f32))) <= 0.05
    assert np.isfinite(float(metrics["loss/total"]))


def test_adamw_step_and_optimizer_state_placement():
    config = get_config(f"group_size={G}")
    config.optim.update(lr=1e-3, schedule="cosine", warmup_steps=2, total_steps=10)
    optimizer = train.make_optimizer(config.optim)
    model, state = tiny.random_model("qwen2")
    batch = make_batch(model, state)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    before = jax.tree.map(np.asarray, state)  # the step donates buffers device_put may share
    with jax.set_mesh(mesh):
        params = jax.device_put(state, shardings(state, TRAIN_RULES, mesh))
        opt_state = train.init_opt_state(optimizer, params)
        mu = opt_state[1][0].mu  # chain(clip, adamw): adamw's first moment
        for m, p in zip(jax.tree.leaves(mu), jax.tree.leaves(params), strict=True):
            assert m.sharding == p.sharding
        graphdef = nnx.graphdef(model)
        for _ in range(3):
            params, opt_state, metrics = STEP(
                graphdef, params, opt_state, batch, rl=rl_config(), optimizer=optimizer
            )
    assert np.isfinite(float(metrics["loss/total"])) and float(metrics["grad/norm"]) > 0
    assert max_rel_diff(params, before) > 0


@pytest.mark.parametrize(
    "uniform_groups, kl_coef, skipped",
    [("mask", 0.001, True), ("keep", 0.0, True), ("keep", 0.001, False)],
)
def test_a_batch_without_signal_skips_the_update(uniform_groups, kl_coef, skipped):
    """Every group uniform: AdamW would still move the weights (momentum, weight decay) on a
    zero gradient, so the step returns parameters and optimizer state unchanged and says so.
    With uniform groups kept and a KL term there is a gradient, and the update runs."""
    model, state = tiny.random_model("qwen2")
    batch = make_batch(model, state).replace(rewards_B=np.ones(B, np.float32))
    config = get_config(f"group_size={G}")
    optimizer = train.make_optimizer(config.optim)
    rl = rl_config(uniform_groups=uniform_groups, kl_coef=kl_coef)
    params, opt_state = jax.tree.map(jnp.copy, state), train.init_opt_state(optimizer, state)
    before = jax.tree.map(np.asarray, (params, opt_state))
    graphdef = nnx.graphdef(model)
    params, opt_state, metrics = STEP(graphdef, params, opt_state, batch, rl=rl,
                                      optimizer=optimizer)  # fmt: skip
    assert float(metrics["update/skipped"]) == float(skipped)
    same = [np.array_equal(x, y) for x, y in zip(jax.tree.leaves((params, opt_state)),
                                                jax.tree.leaves(before), strict=True)]  # fmt: skip
    assert all(same) if skipped else not all(same)


BAD = [
    ("rl", {"advantage": "ppo"}, "rl.advantage"),
    ("rl", {"bonus": "sigmoid"}, "rl.bonus"),
    ("rl", {"aggregation": "sum"}, "rl.aggregation"),
    ("rl", {"kl_estimator": "k4"}, "rl.kl_estimator"),
    ("rl", {"uniform_groups": "skip"}, "rl.uniform_groups"),
    ("rl", {"eps_low": 0.0}, "rl.eps_low"),
    ("rl", {"eps_high": -0.1}, "rl.eps_high"),
    ("rl", {"bonus_kappa": 1.0}, "rl.bonus_kappa"),
    ("rl", {"bonus_lambda": -0.1}, "rl.bonus_lambda"),
    ("rl", {"bonus_lambda": 2.5}, "rl.bonus_lambda"),  # ≥ κ with lambda_outside
    ("rl", {"kl_coef": -0.001}, "rl.kl_coef"),
    ("rl", {"dual_clip": 0.5}, "rl.dual_clip"),
    ("rl", {"group_size": 1}, "rl.group_size"),
    ("rl", {"aggregation": "dr_grpo", "completion_budget": 0}, "rl.completion_budget"),
    ("optim", {"lr": 0.0}, "optim.lr"),
    ("optim", {"schedule": "step"}, "optim.schedule"),
    ("optim", {"warmup_steps": 1000}, "optim.warmup_steps"),
]


@pytest.mark.parametrize("section, override, field", BAD, ids=[b[2] for b in BAD])
def test_bad_config_names_the_field_before_compiling(section, override, field):
    config = get_config()
    config[section].update(override)
    check = train.check_rl if section == "rl" else train.make_optimizer
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check(config[section])
    if section == "rl":  # the step refuses it while tracing: nothing is compiled
        model, state = tiny.random_model("qwen2")
        lowered = jax.jit(train.train_step, static_argnames=("graphdef", "rl", "optimizer"))
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            lowered.trace(
                nnx.graphdef(model),
                state,
                optax.sgd(1.0).init(state),
                make_batch(model, state),
                rl=ml_collections.FrozenConfigDict(config.rl),
                optimizer=optax.sgd(1.0),
            )


def test_the_configs_are_valid():
    for arg in (None, "bonus=none", "bonus=lambda_inside,group_size=16"):
        config = get_config(arg)
        train.check_rl(config.rl)
        train.check_optim(config.optim)


def test_micro_split_keeps_each_devices_rows_where_they_are():
    """32 rows on 4 devices (8 each), 2 micro-batches of units of 4 rows: each device's part
    of every micro-batch is one whole unit of its own rows, the split compiles to no
    collective, and micro_join undoes it."""
    m, unit = 2, 4
    mesh = make_mesh({"fsdp": 4}, devices=jax.devices()[:4])
    rows = jax.device_put(jnp.arange(32), jax.NamedSharding(mesh, jax.P("fsdp")))
    split = jax.jit(train.micro_split, static_argnums=(1, 2))
    parts = np.asarray(split(rows, m, unit))
    assert parts.shape == (m, 16)
    for k in range(m):
        for d in range(4):
            share = parts[k, 4 * d : 4 * d + 4]
            assert (share // 8 == d).all() and len(set(share // unit)) == 1
    hlo = split.lower(rows, m, unit).compile().as_text()
    assert not any(op in hlo for op in ("all-to-all", "all-gather", "collective-permute"))
    np.testing.assert_array_equal(train.micro_join(jnp.asarray(parts), unit), np.arange(32))
