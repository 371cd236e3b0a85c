"""A float64 numpy reference of the objective, written from the formulas (METHOD.md §2–3), not
from fcrl's code: advantages, the entropy bonus, PPO clip, KL estimators, aggregation, loss."""

import numpy as np


def advantages(rewards_PG: np.ndarray, estimator: str) -> np.ndarray:
    p, g = rewards_PG.shape
    out = np.zeros_like(rewards_PG)
    for i in range(p):
        r = rewards_PG[i]
        for j in range(g):
            others = np.delete(r, j)
            if estimator == "grpo":
                out[i, j] = (r[j] - r.mean()) / (
                    np.sqrt(((r - r.mean()) ** 2).sum() / (g - 1)) + 1e-6
                )
            elif estimator == "dr_grpo":
                out[i, j] = r[j] - r.mean()
            else:  # rloo
                out[i, j] = r[j] - others.mean()
    return out


def bonus(a: float, h: float, placement: str, lam: float, kappa: float) -> float:
    if placement == "lambda_outside":
        return lam * min(h, abs(a) / kappa)
    if placement == "lambda_inside":
        return min(lam * h, abs(a) / kappa)
    return 0.0


def token_advantages(rewards_B, entropy_BT, completion_BT, think_BT, rl) -> np.ndarray:
    b, t = entropy_BT.shape
    adv_B = advantages(rewards_B.reshape(-1, rl["group_size"]), rl["advantage"]).reshape(-1)
    out = np.zeros((b, t))
    for i in range(b):
        span = think_BT[i] if think_BT[i].any() else completion_BT[i]
        h_mean = entropy_BT[i][span].mean() if span.any() else 0.0
        trained = think_BT[i] if rl["think_only"] else completion_BT[i]
        for j in range(t):
            if trained[j]:
                h = entropy_BT[i, j] if rl["entropy_per_token"] else h_mean
                out[i, j] = adv_B[i] + bonus(
                    adv_B[i], h, rl["bonus"], rl["bonus_lambda"], rl["bonus_kappa"]
                )
    return out


def token_terms(logp, old, ref, adv, rl) -> tuple[np.ndarray, np.ndarray]:
    """Per-token PPO-clip loss and KL estimate."""
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * adv, np.clip(ratio, 1 - rl["eps_low"], 1 + rl["eps_high"]) * adv)
    if rl["dual_clip"] > 0:
        pg = np.where(adv < 0, np.minimum(pg, -rl["dual_clip"] * adv), pg)
    d = logp - ref
    kl = {
        "k1": d,
        "k2": 0.5 * d**2,
        "k3": np.exp(np.clip(-d, -20, 20)) - np.clip(-d, -20, 20) - 1,
    }[rl["kl_estimator"]]
    return pg, np.clip(kl, -rl["kl_clamp"], rl["kl_clamp"])


def mean_of(values, weight, mode, budget) -> float:
    """The aggregated mean of one term over the whole batch."""
    rows = [i for i in range(values.shape[0]) if weight[i].sum() > 0]
    if mode == "token_mean":
        return (values * weight).sum() / weight.sum()
    if mode == "seq_mean_token_mean":
        return sum((values[i] * weight[i]).sum() / weight[i].sum() for i in rows) / len(rows)
    # dr_grpo, arXiv 2503.20783 eq. 3 and its code: each response's token sum divided by the
    # constant MAX_TOKENS (the generation budget, whatever the padded width), then the mean
    # over responses.
    return sum((values[i] * weight[i]).sum() / budget for i in rows) / len(rows)


def loss(logp, entropy, old, ref, adv, weight, rl) -> float:
    pg, kl = token_terms(logp, old, ref, adv, rl)
    mode, budget = rl["aggregation"], rl["completion_budget"]
    total = mean_of(pg, weight, mode, budget)
    if rl["kl_coef"] > 0:
        total += rl["kl_coef"] * mean_of(kl, weight, mode, budget)
    if rl["entropy_coef"] > 0:
        total -= rl["entropy_coef"] * mean_of(entropy, weight, mode, budget)
    return total


def numerical_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f at x (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g
