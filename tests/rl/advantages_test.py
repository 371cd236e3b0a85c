"""fcrl.rl.advantages against the float64 reference, and the bonus's properties."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.egpo import get_config
from fcrl.rl import advantages
from tests.rl import reference

G = 4


def random_rollouts(seed: int, p: int = 3, t: int = 10):
    """Rewards with a uniform group among others, entropies, completion and think masks (one row
    without a think span, one without completion tokens)."""
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, (p, G)).astype(np.float64)
    rewards[0] = 1.0  # a uniform group
    rewards[1, :2] = [0.0, 1.0]  # a mixed one
    entropy = rng.uniform(0, 3, (p * G, t))
    completion = np.zeros((p * G, t), bool)
    completion[:, 3:] = True
    completion[5] = False
    think = completion & (np.arange(t) < rng.integers(4, t, (p * G, 1)))
    think[2] = False
    return rewards.reshape(-1), entropy, completion, think


def rl_config(**overrides):
    rl = get_config(f"group_size={G}").rl
    rl.update(overrides)
    return rl


MODES = list(
    itertools.product(
        ["grpo", "dr_grpo", "rloo"],
        ["lambda_outside", "lambda_inside", "none"],
        [False, True],  # per-token entropy
        [False, True],  # think tokens only
    )
)


@pytest.mark.parametrize("estimator, bonus, per_token, think_only", MODES)
def test_token_advantages_match_the_reference(estimator, bonus, per_token, think_only):
    rl = rl_config(
        advantage=estimator, bonus=bonus, entropy_per_token=per_token, think_only=think_only
    )
    rewards, entropy, completion, think = random_rollouts(seed=len(estimator) + len(bonus))
    expected = reference.token_advantages(rewards, entropy, completion, think, rl.to_dict())
    with jax.enable_x64(True):
        got, _ = advantages.token_advantages(rewards, entropy, completion, think, rl)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    f32 = (rewards.astype(np.float32), entropy.astype(np.float32))
    got32, _ = advantages.token_advantages(*f32, completion, think, rl)
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4)


def test_grpo_small_case():
    # rewards (1, 0, 0, 1): mean 0.5, unbiased std sqrt(1/3) -> A = ±0.5·sqrt(3) ≈ ±0.8660
    a = advantages.grpo(jnp.array([[1.0, 0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(a, [[0.8660, -0.8660, -0.8660, 0.8660]], atol=1e-4)
    # RLOO: 1 - mean(0, 0, 1) = 2/3
    np.testing.assert_allclose(advantages.rloo(jnp.array([[1.0, 0.0, 0.0, 1.0]]))[0, 0], 2 / 3)


@pytest.mark.parametrize("placement", ["lambda_outside", "lambda_inside"])
def test_bonus_properties(placement):
    """On random A (with exact zeros) and H ≥ 0: bonus ≥ 0, bonus = 0 where A = 0, and
    sign(A + bonus) = sign(A), for λ < κ and κ > 1."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        kappa = rng.uniform(1.001, 5)
        lam = rng.uniform(0, kappa * 0.999)
        adv = rng.normal(size=64) * rng.choice([0.0, 1.0], size=64)
        entropy = rng.exponential(2.0, size=64)
        b = np.asarray(advantages.BONUSES[placement](adv, entropy, lam, kappa))
        assert (b >= 0).all()
        assert (b[adv == 0] == 0).all()
        assert (np.sign(adv + b) == np.sign(adv)).all()


def test_uniform_groups_and_their_share():
    rewards, entropy, completion, think = random_rollouts(seed=1)
    uniform = np.asarray(advantages.uniform_groups(rewards.reshape(-1, G)))
    assert uniform[0] and not uniform[1]
    adv, metrics = advantages.token_advantages(rewards, entropy, completion, think, rl_config())
    assert not np.asarray(adv)[:G].any()  # a uniform group: A = 0 and no bonus
    assert float(metrics["adv/uniform_groups"]) == pytest.approx(uniform.mean())
