"""The policy loss: PPO clip, KL to a reference, an entropy regulariser, their aggregation, and
the log-probs / entropies recomputed by the training graph in remat'd sequence chunks.

Every term is per token [B, T] and is reduced by `aggregate` into an unreduced (sum, count)
pair; the train step divides the sums of all micro-batches by the count of the whole batch, so
that micro-batching and sharding give the one-batch gradient exactly.
"""

import jax
import jax.numpy as jnp

from fcrl.models import Decoder


def ppo_clip(
    logp_BT: jax.Array,
    old_logp_BT: jax.Array,
    adv_BT: jax.Array,
    eps_low: float,
    eps_high: float,
    dual_clip: float = 0.0,
) -> jax.Array:
    """ℓ = −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)·Â), ρ = exp(logp − old_logp).

    PPO: Schulman et al. 2017, arXiv 1707.06347, eq. 7; ε_high > ε_low is DAPO's clip-higher
    (Yu et al. 2025, arXiv 2503.14476). With dual_clip c > 1, ℓ = min(ℓ, −c·Â) where Â < 0
    (Ye et al. 2020, arXiv 1912.09729, eq. 5), bounding the loss of a large ratio.
    """
    ratio_BT = jnp.exp(logp_BT - old_logp_BT)
    clipped_BT = jnp.clip(ratio_BT, 1.0 - eps_low, 1.0 + eps_high)
    loss_BT = -jnp.minimum(ratio_BT * adv_BT, clipped_BT * adv_BT)
    if dual_clip > 0:
        loss_BT = jnp.where(adv_BT < 0, jnp.minimum(loss_BT, -dual_clip * adv_BT), loss_BT)
    return loss_BT


def k1(logp_BT: jax.Array, ref_logp_BT: jax.Array) -> jax.Array:
    """log(π/π_ref): unbiased for KL(π‖π_ref), but its gradient has zero mean (never a loss)."""
    return logp_BT - ref_logp_BT


def k2(logp_BT: jax.Array, ref_logp_BT: jax.Array) -> jax.Array:
    """½·log(π/π_ref)²."""
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


def k3(logp_BT: jax.Array, ref_logp_BT: jax.Array) -> jax.Array:
    """π_ref/π − log(π_ref/π) − 1 ≥ 0: unbiased and low-variance (the "low_var_kl" of verl);
    the log-ratio is clamped to ±20 before exp."""
    log_ratio_BT = jnp.clip(ref_logp_BT - logp_BT, -20.0, 20.0)
    return jnp.exp(log_ratio_BT) - log_ratio_BT - 1.0


# KL estimators of Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html).
KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_penalty(
    logp_BT: jax.Array, ref_logp_BT: jax.Array, estimator: str, clamp: float
) -> jax.Array:
    """The per-token KL estimate, clamped to ±clamp."""
    return jnp.clip(KL_ESTIMATORS[estimator](logp_BT, ref_logp_BT), -clamp, clamp)


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


def aggregate(
    values_BT: jax.Array, weight_BT: jax.Array, mode: str, budget: int = 0
) -> tuple[jax.Array, jax.Array]:
    """(sum, count): the loss of the batch is sum / count, and both add over micro-batches.

    token_mean: Σ w·v / Σ w over all tokens of the batch (verl's default).
    seq_mean_token_mean: each row's token mean, averaged over rows with tokens (GRPO's paper).
    dr_grpo: Σ w·v / (rows with tokens × budget), `budget` the configured maximum completion
      length, a constant (Dr.GRPO, arXiv 2503.20783, §3.2: the generation budget, not the width
      of a padded batch, which changes from step to step).
    Positions with weight 0 contribute exactly 0, even where `values_BT` is not finite.
    """
    weighted_BT = jnp.where(weight_BT > 0, values_BT * weight_BT, 0.0)
    tokens_B = weight_BT.sum(axis=1)
    rows = jnp.sum(tokens_B > 0).astype(tokens_B.dtype)
    if mode == "token_mean":
        return weighted_BT.sum(), tokens_B.sum()
    if mode == "seq_mean_token_mean":
        return jnp.sum(weighted_BT.sum(axis=1) / jnp.maximum(tokens_B, 1e-12)), rows
    if mode == "dr_grpo":
        if budget < 1:
            raise ValueError(f"rl.completion_budget: dr_grpo needs a length ≥ 1, got {budget}")
        return weighted_BT.sum(), rows * budget
    raise ValueError(f"rl.aggregation: unknown mode {mode!r}; expected one of {AGGREGATIONS}")


def token_logprobs(
    model: Decoder,
    tokens_BT: jax.Array,
    mask_BT: jax.Array,
    temperature: float,
    chunk: int,
    start: int = 1,
    group: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """log π(token_t | tokens_<t) and the entropy of π(· | tokens_<t), float32 [B, T], for the
    columns t ≥ `start` (0 before: a prompt's columns need no output projection). With
    `group` = G > 1, rows g·G … g·G + G − 1 share their first `start` columns (a prompt and its
    G rollouts), and each prompt runs through the model once (`Decoder.hidden_shared`).

    π is softmax(logits / temperature), the distribution the rollouts were drawn from. The
    output projection runs over at most `chunk` positions at a time (the chunks evened out, so
    none is mostly padding) under jax.checkpoint, so neither pass holds more than [B, chunk, V]
    logits; the backward pass recomputes each chunk's.
    """
    if not 1 <= start < tokens_BT.shape[1]:
        raise ValueError(f"start: {start} is not in [1, {tokens_BT.shape[1]})")
    if group > 1:
        x_PSD, x_BND, _ = model.hidden_shared(tokens_BT[::group, :start], mask_BT[::group, :start],
                                           tokens_BT[:, start:], mask_BT[:, start:])  # fmt: skip
        last_BD = jnp.repeat(x_PSD[:, -1:], group, axis=0)  # the prompt's last state
        x_BTD = jnp.concatenate([last_BD, x_BND[:, :-1]], axis=1)  # state t-1 predicts token t
    else:
        x_BTD = model.hidden(tokens_BT, mask_BT)[0][:, start - 1 : -1]
    targets_BT = tokens_BT[:, start:]
    b, t, d = x_BTD.shape
    n = -(-t // chunk)  # J: n chunks of C ≤ `chunk` positions, as even as they come
    chunk = -(-t // n)
    pad = n * chunk - t
    x_JBCD = jnp.pad(x_BTD, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    targets_JBC = jnp.pad(targets_BT, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(x_BCD: jax.Array, targets_BC: jax.Array) -> tuple[jax.Array, jax.Array]:
        z_BCV = model.logits(x_BCD) / temperature
        logz_BC = jax.nn.logsumexp(z_BCV, axis=-1)
        z_target_BC = jnp.take_along_axis(z_BCV, targets_BC[..., None], axis=-1)[..., 0]
        p_BCV = jnp.exp(z_BCV - logz_BC[..., None])
        return z_target_BC - logz_BC, logz_BC - jnp.sum(p_BCV * z_BCV, axis=-1)

    logp_JBC, entropy_JBC = jax.lax.map(lambda xs: one_chunk(*xs), (x_JBCD, targets_JBC))

    def unchunk(v_JBC: jax.Array) -> jax.Array:
        v_BT = v_JBC.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
        return jnp.pad(v_BT, ((0, 0), (start, 0)))

    return unchunk(logp_JBC), unchunk(entropy_JBC)


def policy_loss(
    logp_BT: jax.Array,
    entropy_BT: jax.Array,
    old_logp_BT: jax.Array,
    ref_logp_BT: jax.Array,
    adv_BT: jax.Array,
    weight_BT: jax.Array,
    count: jax.Array,
    rl,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of one (micro-)batch given the policy's log-probs and entropies:

      L = Σ ℓ_pg / count + β·Σ kl / count − c_H·Σ H / count,

    each Σ an `aggregate` sum over the tokens weighted by `weight_BT`, `count` the whole batch's
    (see `aggregate`). β = rl.kl_coef (0: no KL term), c_H = rl.entropy_coef (0 by default).
    Returns L and the unreduced sums {"pg", "kl", "entropy"}. Inputs at positions of weight 0
    are replaced by 0 first, so that a non-finite value there (e.g. a -inf log-prob of padding)
    cannot reach the loss or its gradient.
    """
    on_BT = weight_BT > 0
    logp_BT, entropy_BT, old_logp_BT, ref_logp_BT, adv_BT = (
        jnp.where(on_BT, x, 0.0) for x in (logp_BT, entropy_BT, old_logp_BT, ref_logp_BT, adv_BT)
    )

    def mean_sum(values_BT: jax.Array) -> jax.Array:
        return aggregate(values_BT, weight_BT, rl.aggregation, rl.get("completion_budget", 0))[0]

    pg_BT = ppo_clip(logp_BT, old_logp_BT, adv_BT, rl.eps_low, rl.eps_high, rl.dual_clip)
    sums = {"pg": mean_sum(pg_BT)}
    loss = sums["pg"] / count
    if rl.kl_coef > 0:
        sums["kl"] = mean_sum(kl_penalty(logp_BT, ref_logp_BT, rl.kl_estimator, rl.kl_clamp))
        loss = loss + rl.kl_coef * sums["kl"] / count
    if rl.entropy_coef > 0:
        sums["entropy"] = mean_sum(entropy_BT)
        loss = loss - rl.entropy_coef * sums["entropy"] / count
    return loss, sums
