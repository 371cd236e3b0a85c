"""Advantages: GRPO and its variants, plus EGPO's clipped bonus for chain-of-thought entropy.

Pure functions of arrays. Rewards come as [P, G]: P prompts (groups), G rollouts each; per-token
arrays are [B, T] with B = P·G rows, the G rollouts of a prompt on consecutive rows.
"""

import functools

import jax
import jax.numpy as jnp


def grpo(rewards_PG: jax.Array) -> jax.Array:
    """A_i = (r_i − mean(r)) / (std(r, unbiased) + 1e-6) within each group.

    GRPO: Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, §4.1.2.
    """
    centered_PG = rewards_PG - rewards_PG.mean(axis=1, keepdims=True)
    return centered_PG / (jnp.std(rewards_PG, axis=1, ddof=1, keepdims=True) + 1e-6)


def dr_grpo(rewards_PG: jax.Array) -> jax.Array:
    """A_i = r_i − mean(r): no division by the group's std.

    Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783, §3.2.
    """
    return rewards_PG - rewards_PG.mean(axis=1, keepdims=True)


def rloo(rewards_PG: jax.Array) -> jax.Array:
    """A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean(r)): a leave-one-out baseline.

    RLOO: Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740, §3.
    """
    g = rewards_PG.shape[1]
    return g / (g - 1) * dr_grpo(rewards_PG)


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


def lambda_outside(adv: jax.Array, entropy: jax.Array, lam: float, kappa: float) -> jax.Array:
    """bonus = λ·min(H, |A|/κ), i.e. λ·clip(H, −|A|/κ, |A|/κ) for H ≥ 0.

    EGPO: Hao et al. 2025, arXiv 2508.05118 (v4, "Reasoning through Exploration"), Â = A + bonus.
    """
    return lam * jnp.minimum(entropy, jnp.abs(adv) / kappa)


def lambda_inside(adv: jax.Array, entropy: jax.Array, lam: float, kappa: float) -> jax.Array:
    """bonus = min(λ·H, |A|/κ).

    Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective", arXiv 2506.14758.
    """
    return jnp.minimum(lam * entropy, jnp.abs(adv) / kappa)


def no_bonus(adv: jax.Array, entropy: jax.Array, lam: float, kappa: float) -> jax.Array:
    """Plain GRPO: bonus = 0."""
    return jnp.zeros(jnp.broadcast_shapes(adv.shape, entropy.shape), adv.dtype)


# Both bonuses are ≥ 0, exactly 0 where A = 0, and below |A| (so Â keeps A's sign) when
# κ > 1 (inside) or κ > λ (outside): the config checks enforce this.
BONUSES = {"lambda_outside": lambda_outside, "lambda_inside": lambda_inside, "none": no_bonus}


def span_mean(values_BT: jax.Array, span_BT: jax.Array, fallback_BT: jax.Array) -> jax.Array:
    """Mean of each row over its span (e.g. its `<think>` tokens); over `fallback_BT` (e.g. all
    completion tokens) where the span is empty. Rows with neither get 0."""
    has_span_B = span_BT.any(axis=1)
    use_BT = jnp.where(has_span_B[:, None], span_BT, fallback_BT)
    total_B = jnp.sum(jnp.where(use_BT, values_BT, 0.0), axis=1)
    return total_B / jnp.maximum(use_BT.sum(axis=1), 1)


def uniform_groups(rewards_PG: jax.Array) -> jax.Array:
    """[P] True where every rollout of the group got the same reward (no learning signal)."""
    return jnp.all(rewards_PG == rewards_PG[:, :1], axis=1)


def token_advantages(
    rewards_B: jax.Array,
    entropy_BT: jax.Array,
    completion_BT: jax.Array,
    think_BT: jax.Array,
    rl,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Â per token [B, T] (0 outside the trained tokens) and its metrics.

    A comes from the groups' rewards (rl.advantage, groups of rl.group_size rows); H is the
    rollout policy's token entropy, averaged over the `<think>` span (all completion tokens where
    a row has none), or per token if rl.entropy_per_token; it is a constant (no gradient).
    Â = A + bonus(A, H) (rl.bonus, rl.bonus_lambda, rl.bonus_kappa) is given to every
    completion token, or to the think tokens only if rl.think_only.
    """
    rewards_PG = rewards_B.reshape(-1, rl.group_size)
    adv_B = ADVANTAGES[rl.advantage](rewards_PG).reshape(-1)
    entropy_BT = jax.lax.stop_gradient(entropy_BT)
    bonus = functools.partial(BONUSES[rl.bonus], lam=rl.bonus_lambda, kappa=rl.bonus_kappa)
    if rl.entropy_per_token:
        bonus_BT = bonus(adv_B[:, None], entropy_BT)
    else:
        entropy_B = span_mean(entropy_BT, think_BT, completion_BT)
        bonus_BT = jnp.broadcast_to(bonus(adv_B, entropy_B)[:, None], entropy_BT.shape)
    trained_BT = think_BT if rl.think_only else completion_BT
    adv_BT = jnp.where(trained_BT, adv_B[:, None] + bonus_BT, 0.0)
    bonus_BT = jnp.where(trained_BT, bonus_BT, 0.0)
    metrics = {
        "adv/mean": adv_B.mean(),
        "adv/std": adv_B.std(),
        "adv/bonus_share": jnp.abs(bonus_BT).sum() / jnp.maximum(jnp.abs(adv_BT).sum(), 1e-12),
        "adv/uniform_groups": uniform_groups(rewards_PG).mean(),
    }
    return adv_BT, metrics
