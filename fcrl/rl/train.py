"""The RL train step (advantages → exact micro-batched gradient → AdamW) and its config checks.

`train_step` is a pure function of (graphdef, params, opt_state, batch) with the objective's
config section as a static argument; jit it at the call site with in/out shardings and donate
params and optimizer state:

  in_shardings, out_shardings = step_shardings(params, opt_state, mesh)
  step = jax.jit(functools.partial(train_step, graphdef, rl=rl, optimizer=optimizer),
                 in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnames=("params", "opt_state"))
  params, opt_state, metrics = step(params, opt_state, batch)
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fcrl.rl.advantages import ADVANTAGES, BONUSES, token_advantages, uniform_groups
from fcrl.rl.loss import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    aggregate,
    kl_penalty,
    policy_loss,
    token_logprobs,
)
from fcrl.sharding import BATCH

RL_CHOICES = {
    "advantage": tuple(ADVANTAGES),
    "bonus": tuple(BONUSES),
    "uniform_groups": ("mask", "keep"),
    "kl_estimator": tuple(KL_ESTIMATORS),
    "aggregation": AGGREGATIONS,
}
SCHEDULES = ("constant", "linear", "cosine")


def check_rl(rl: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field of a bad `rl` (objective) section."""
    _check_choices("rl", rl, RL_CHOICES)
    _check_rules(
        "rl",
        rl,
        [
            ("group_size", rl.group_size >= 2, "must be ≥ 2 (advantages compare rollouts)"),
            ("eps_low", rl.eps_low > 0, "must be > 0"),
            ("eps_high", rl.eps_high > 0, "must be > 0"),
            ("dual_clip", rl.dual_clip == 0 or rl.dual_clip > 1, "must be 0 (off) or > 1"),
            ("bonus_lambda", rl.bonus_lambda >= 0, "must be ≥ 0"),
            ("bonus_kappa", rl.bonus_kappa > 1, "must be > 1 (else the bonus can flip Â's sign)"),
            (
                "bonus_lambda",
                rl.bonus != "lambda_outside" or rl.bonus_lambda < rl.bonus_kappa,
                "must be < bonus_kappa with lambda_outside (else the bonus can flip Â's sign)",
            ),
            ("kl_coef", rl.kl_coef >= 0, "must be ≥ 0 (0: no reference model)"),
            ("kl_clamp", rl.kl_clamp > 0, "must be > 0"),
            ("entropy_coef", rl.entropy_coef >= 0, "must be ≥ 0"),
            ("temperature", rl.temperature > 0, "must be > 0"),
            ("logprob_chunk", rl.logprob_chunk >= 1, "must be ≥ 1"),
            ("micro_batches", rl.micro_batches >= 1, "must be ≥ 1"),
            (
                "completion_budget",
                rl.get("completion_budget", 0) >= 1 or rl.aggregation != "dr_grpo",
                "must be ≥ 1 (the generation budget) with aggregation dr_grpo",
            ),
        ],
    )


def check_optim(optim: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field of a bad `optim` section."""
    _check_choices("optim", optim, {"schedule": SCHEDULES})
    _check_rules(
        "optim",
        optim,
        [
            ("lr", optim.lr > 0, "must be > 0"),
            ("grad_clip", optim.grad_clip >= 0, "must be ≥ 0 (0: off)"),
            ("weight_decay", optim.weight_decay >= 0, "must be ≥ 0"),
            ("total_steps", optim.total_steps >= 1, "must be ≥ 1"),
            (
                "warmup_steps",
                0 <= optim.warmup_steps <= optim.total_steps,
                "must be in [0, total_steps]",
            ),
        ],
    )


def _check_choices(name: str, section, choices: dict) -> None:
    for field, allowed in choices.items():
        if section[field] not in allowed:
            raise ValueError(
                f"{name}.{field}: unknown {section[field]!r}; expected one of {allowed}"
            )


def _check_rules(name: str, section, rules: list) -> None:
    for field, ok, message in rules:
        if not ok:
            raise ValueError(f"{name}.{field}: {message}, got {section[field]!r}")


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, on a constant / linear / cosine schedule with warmup."""
    check_optim(optim)
    warmup, total = optim.warmup_steps, optim.total_steps
    decay = {
        "constant": optax.constant_schedule(optim.lr),
        "linear": optax.linear_schedule(optim.lr, 0.0, max(total - warmup, 1)),
        "cosine": optax.cosine_decay_schedule(optim.lr, max(total - warmup, 1)),
    }[optim.schedule]
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup]
    ) if warmup else decay  # fmt: skip
    adamw = optax.adamw(schedule, optim.b1, optim.b2, optim.eps, weight_decay=optim.weight_decay)
    return (
        optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw) if optim.grad_clip else adamw
    )


@struct.dataclass
class Batch:
    """One RL batch: B = P·G rows, the G rollouts of a prompt on consecutive rows."""

    tokens_BT: jax.Array  # int32: prompt, then completion; padding anywhere
    mask_BT: jax.Array  # bool: real tokens
    completion_BT: jax.Array  # bool: completion tokens (the trained ones)
    think_BT: jax.Array  # bool: completion tokens inside <think>…</think>
    old_logp_BT: jax.Array  # float32: log-probs under the rollout policy
    old_entropy_BT: jax.Array  # float32: the rollout policy's token entropies (for the bonus)
    ref_logp_BT: jax.Array  # float32: the reference policy's log-probs (unused if kl_coef = 0)
    rewards_B: jax.Array  # float32
    # The prompt width S (static: one program per prompt bucket, as before): columns < S are
    # the prompt, alike on a group's G rows, and have no log-prob to compute; 1: unknown.
    start: int = struct.field(pytree_node=False, default=1)


def prompt_group(batch: Batch, rows: int, group_size: int) -> int:
    """G when `rows` consecutive rows of `batch` hold whole groups behind a known prompt, as many
    on each data-parallel device of the current mesh (each prompt then runs through the model
    once, where its rows are), else 1 (each row runs its own)."""
    mesh = jax.sharding.get_abstract_mesh()
    devices = 1 if mesh.empty else math.prod(mesh.shape.get(a, 1) for a in BATCH)
    return group_size if batch.start > 1 and rows % (group_size * devices) == 0 else 1


def micro_split(x: jax.Array, m: int, unit: int) -> jax.Array:
    """[B, …] → [m, B/m, …]: micro-batch k holds the units (`unit` consecutive rows: 1, or a
    group behind its shared prompt) k, k + m, k + 2m, …, so rows split over devices stay where
    they are (a device holding whole units of every micro-batch, as it does when its rows are
    a multiple of m·unit) and each micro-batch spreads over all devices."""
    b = x.shape[0]
    units = x.reshape(b // (m * unit), m, unit, *x.shape[1:])
    return units.swapaxes(0, 1).reshape(m, b // m, *x.shape[1:])


def micro_join(x: jax.Array, unit: int) -> jax.Array:
    """The inverse of `micro_split`: [m, B/m, …] → [B, …]."""
    m, rows = x.shape[:2]
    units = x.reshape(m, rows // unit, unit, *x.shape[2:])
    return units.swapaxes(0, 1).reshape(m * rows, *x.shape[2:])


def objective_inputs(batch: Batch, rl) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """Â [B, T], the token weights [B, T] (0 off the trained tokens and, with
    uniform_groups = "mask", on groups with one reward), the whole batch's count, and metrics."""
    adv_BT, metrics = token_advantages(
        batch.rewards_B, batch.old_entropy_BT, batch.completion_BT, batch.think_BT, rl
    )
    trained_BT = batch.think_BT if rl.think_only else batch.completion_BT
    weight_BT = trained_BT.astype(adv_BT.dtype)
    if rl.uniform_groups == "mask":
        uniform_B = jnp.repeat(
            uniform_groups(batch.rewards_B.reshape(-1, rl.group_size)), rl.group_size
        )
        weight_BT = weight_BT * ~uniform_B[:, None]
    zeros_BT = jnp.zeros_like(weight_BT)
    budget = rl.get("completion_budget", 0)
    count = jnp.maximum(aggregate(zeros_BT, weight_BT, rl.aggregation, budget)[1], 1)
    return adv_BT, weight_BT, count, metrics


def train_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    opt_state: optax.OptState,
    batch: Batch,
    *,
    rl: ml_collections.FrozenConfigDict,
    optimizer: optax.GradientTransformation,
) -> tuple[nnx.State, optax.OptState, dict[str, jax.Array]]:
    """One update. The gradient is Σ over micro-batches of ∇(sums / whole-batch count), which
    equals the one-batch gradient; the model computes in its graphdef's dtype (e.g. bf16 over
    float32 `params`). A batch without learning signal (no trained token left after masking
    uniform groups, or every group uniform with no KL or entropy term) is skipped: parameters
    and optimizer state come back unchanged (AdamW's momentum and weight decay would move them
    on a zero gradient), with `update/skipped` = 1."""
    check_rl(rl)  # while tracing: before anything compiles
    b, m = batch.rewards_B.shape[0], rl.micro_batches
    if b % m or b % rl.group_size:
        raise ValueError(
            f"rl.micro_batches / rl.group_size: {m} and {rl.group_size} must divide {b} rows"
        )
    adv_BT, weight_BT, count, metrics = objective_inputs(batch, rl)
    tokens = jnp.maximum(weight_BT.sum(), 1.0)
    skip = weight_BT.sum() == 0
    if rl.kl_coef == 0 and rl.entropy_coef == 0:
        skip |= jnp.all(uniform_groups(batch.rewards_B.reshape(-1, rl.group_size)))

    unit = prompt_group(batch, b // m, rl.group_size)

    def micro(x: jax.Array) -> jax.Array:
        return micro_split(x, m, unit)

    def loss_fn(params: nnx.State, mb: Batch, adv_BT: jax.Array, weight_BT: jax.Array):
        model = nnx.merge(graphdef, params)
        logp_BT, entropy_BT = token_logprobs(
            model, mb.tokens_BT, mb.mask_BT, rl.temperature, rl.logprob_chunk, mb.start, unit
        )
        loss, sums = policy_loss(
            logp_BT, entropy_BT, mb.old_logp_BT, mb.ref_logp_BT, adv_BT, weight_BT, count, rl
        )
        return loss, (sums, _token_stats(logp_BT, entropy_BT, mb, adv_BT, weight_BT, rl))

    def accumulate(carry, xs):
        grads, loss, sums, stats = carry
        (mb_loss, (mb_sums, mb_stats)), mb_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, *xs
        )
        add = functools.partial(jax.tree.map, jnp.add)
        return (
            add(grads, mb_grads),
            loss + mb_loss,
            add(sums, mb_sums),
            _merge_stats(stats, mb_stats),
        ), None

    xs = (jax.tree.map(micro, batch), micro(adv_BT), micro(weight_BT))

    def update(params: nnx.State, opt_state: optax.OptState):
        # Zero accumulators shaped like one micro-batch's outputs.
        loss_shape, (sums_shape, stats_shape) = jax.eval_shape(
            lambda: loss_fn(params, *jax.tree.map(lambda x: x[0], xs))
        )
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), (params, loss_shape, sums_shape)
        )
        (grads, loss, sums, stats), _ = jax.lax.scan(
            accumulate, (*zeros, _empty_stats(stats_shape)), xs
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        out = {f"loss/{k}": v / count for k, v in sums.items()}
        out |= {"loss/total": loss, "grad/norm": optax.tree.norm(grads)}
        out |= {k: v if k.endswith(("/min", "/max")) else v / tokens for k, v in stats.items()}
        return optax.apply_updates(params, updates), opt_state, out

    def unchanged(params: nnx.State, opt_state: optax.OptState):
        out = jax.eval_shape(update, params, opt_state)[2]  # no loss, gradient or ratios: NaN
        return params, opt_state, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), out)

    params, opt_state, out = jax.lax.cond(skip, unchanged, update, params, opt_state)
    return params, opt_state, metrics | out | {"update/skipped": skip.astype(jnp.float32)}


def _token_stats(logp_BT, entropy_BT, mb: Batch, adv_BT, weight_BT, rl) -> dict[str, jax.Array]:
    """Per-token diagnostics over the trained tokens: sums (divided by the token count later),
    and min / max."""
    on_BT = weight_BT > 0
    ratio_BT = jnp.exp(logp_BT - mb.old_logp_BT)
    gap_BT = jnp.abs(logp_BT - mb.old_logp_BT)

    def total(x_BT):
        return jnp.sum(jnp.where(on_BT, x_BT, 0.0))

    stats = {
        "clip/low": total((adv_BT < 0) & (ratio_BT < 1 - rl.eps_low)),
        "clip/high": total((adv_BT > 0) & (ratio_BT > 1 + rl.eps_high)),
        "ratio/mean": total(ratio_BT),
        "ratio/min": jnp.min(jnp.where(on_BT, ratio_BT, jnp.inf)),
        "ratio/max": jnp.max(jnp.where(on_BT, ratio_BT, -jnp.inf)),
        "entropy/mean": total(entropy_BT),
        # Before the first update the policy is the rollout policy: this is the gap between the
        # recorded old log-probs and the training graph's.
        "logp_gap/mean": total(gap_BT),
        "logp_gap/max": jnp.max(jnp.where(on_BT, gap_BT, 0.0)),
    }
    if rl.kl_coef > 0:
        stats["kl/mean"] = total(kl_penalty(logp_BT, mb.ref_logp_BT, rl.kl_estimator, rl.kl_clamp))
    return stats


def _empty_stats(shapes: dict) -> dict[str, jax.Array]:
    def start(k):
        return jnp.inf if k.endswith("/min") else -jnp.inf if k.endswith("/max") else 0.0

    return {k: jnp.full(s.shape, start(k), s.dtype) for k, s in shapes.items()}


def _merge_stats(a: dict, b: dict) -> dict:
    def merge(k):
        op = jnp.minimum if k.endswith("/min") else jnp.maximum if k.endswith("/max") else jnp.add
        return op(a[k], b[k])

    return {k: merge(k) for k in a}


def init_opt_state(optimizer: optax.GradientTransformation, params: nnx.State) -> optax.OptState:
    """The optimizer state, each moment placed like its parameter (scalars replicated) from the
    start, so the first step does not reshard."""
    return jax.jit(optimizer.init, out_shardings=opt_shardings(optimizer, params))(params)


def opt_shardings(optimizer: optax.GradientTransformation, params: nnx.State):
    """The optimizer state's shardings for `params` (arrays or ShapeDtypeStructs)."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    leaf = jax.tree.leaves(shardings)[0]
    scalar = NamedSharding(leaf.mesh, P()) if isinstance(leaf, NamedSharding) else leaf
    return optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        jax.eval_shape(optimizer.init, params),
        shardings,
        transform_non_params=lambda _: scalar,
    )


def step_shardings(params: nnx.State, opt_state: optax.OptState, mesh: jax.sharding.Mesh):
    """(in_shardings, out_shardings) of the jitted train_step: parameters and optimizer state
    where they are, batch rows split over the data axes, metrics replicated."""
    here = jax.tree.map(lambda x: x.sharding, (params, opt_state))
    rows = NamedSharding(mesh, P(tuple(a for a in BATCH if a in mesh.shape)))
    return (*here, rows), (*here, NamedSharding(mesh, P()))
