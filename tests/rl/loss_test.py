"""fcrl.rl.loss: the loss and its gradient against the float64 reference in every mode, the
chunked log-prob recompute (= a plain forward, = the sampler's records), and its memory."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.egpo import get_config
from fcrl.models import Decoder, ModelConfig
from fcrl.rl import loss as loss_lib
from fcrl.sampler import Sampler, SamplingConfig
from tests.models import tiny
from tests.rl import reference


def inputs(seed: int = 0, b: int = 4, t: int = 12):
    rng = np.random.default_rng(seed)
    logp = rng.uniform(-4, -0.1, (b, t))
    old = logp + rng.normal(0, 0.3, (b, t))
    ref = logp + rng.normal(0, 0.5, (b, t))
    entropy = rng.uniform(0, 3, (b, t))
    adv = rng.normal(0, 1, (b, t)) * (rng.uniform(size=(b, 1)) > 0.2)
    weight = (np.arange(t) >= rng.integers(2, 8, (b, 1))).astype(np.float64)
    weight[1] = 0.0  # a row without trained tokens
    # Two trained tokens with ρ = e^1.5 ≈ 4.5: one with Â < 0, where a dual clip at 2 binds,
    # and one with Â > 0, clipped at 1 + ε.
    old[0, -2:], adv[0, -2:] = logp[0, -2:] - 1.5, [-0.7, 0.9]
    return logp, entropy, old, ref, adv, weight


def config(**overrides):
    rl = get_config().rl
    # The trainer sets completion_budget from sampling.max_new_tokens: here not the width (12).
    rl.update({"kl_coef": 0.1, "completion_budget": 128, **overrides})
    return rl


MODES = [
    {"aggregation": agg, "kl_estimator": kl, "dual_clip": dual, "entropy_coef": ent}
    for agg, kl, (dual, ent) in itertools.product(
        loss_lib.AGGREGATIONS, loss_lib.KL_ESTIMATORS, [(0.0, 0.0), (2.0, 0.01)]
    )
] + [{"aggregation": agg, "kl_coef": 0.0} for agg in loss_lib.AGGREGATIONS]


def jax_loss(logp, entropy, old, ref, adv, weight, rl):
    count = loss_lib.aggregate(
        jnp.zeros_like(weight), weight, rl.aggregation, rl.completion_budget
    )[1]
    return loss_lib.policy_loss(logp, entropy, old, ref, adv, weight, count, rl)[0]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_loss_and_gradient_match_the_float64_reference(mode):
    rl = config(**mode)
    logp, entropy, old, ref, adv, weight = inputs(seed=len(str(mode)))
    rest = (old, ref, adv, weight)

    def ref_loss(logp, entropy):
        return reference.loss(logp, entropy, *rest, rl.to_dict())

    if rl.dual_clip:  # for Â < 0 the loss is |Â|·ρ: the cap binds where ρ > c
        ratio = np.exp(logp - old)
        assert ((adv < 0) & (ratio > rl.dual_clip) & (weight > 0)).any()
    expected = ref_loss(logp, entropy)
    expected_grads = (
        reference.numerical_grad(lambda x: ref_loss(x, entropy), logp),
        reference.numerical_grad(lambda x: ref_loss(logp, x), entropy),
    )
    grad_fn = jax.value_and_grad(lambda lp, h, *r: jax_loss(lp, h, *r, rl), argnums=(0, 1))
    for dtype, tol in [(np.float64, 1e-6), (np.float32, 1e-4)]:
        with jax.enable_x64(dtype == np.float64):
            value, grads = grad_fn(*(x.astype(dtype) for x in (logp, entropy, *rest)))
            assert abs(float(value) - expected) <= tol * max(abs(expected), 1e-3)
            for got, want in zip(grads, expected_grads, strict=True):
                scale = max(np.abs(want).max(), 1e-3)
                assert np.abs(np.asarray(got, np.float64) - want).max() <= tol * scale


def test_aggregation_small_case():
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    weight = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens
    assert [float(x) for x in loss_lib.aggregate(values, weight, "token_mean")] == [10, 4]
    # seq_mean_token_mean: (mean(1, 2, 3) + mean(4)) / 2 rows = (2 + 4) / 2
    assert [float(x) for x in loss_lib.aggregate(values, weight, "seq_mean_token_mean")] == [6, 2]
    # dr_grpo: 10 / (2 rows × a budget of 5 tokens), whatever the padded width (3)
    assert [float(x) for x in loss_lib.aggregate(values, weight, "dr_grpo", 5)] == [10, 10]
    with pytest.raises(ValueError, match="completion_budget"):
        loss_lib.aggregate(values, weight, "dr_grpo")


def test_dual_clip_small_case():
    # ρ = e^1.5 ≈ 4.48, Â = −1: PPO's loss is −min(−4.48, −1.2) = 4.48; the dual clip at c = 3
    # caps it at −c·Â = 3. With Â = +1 the dual clip does nothing: −min(4.48, 1.2) = −1.2.
    logp, old = jnp.array([0.0, 0.0]), jnp.array([-1.5, -1.5])
    adv = jnp.array([-1.0, 1.0])
    plain = loss_lib.ppo_clip(logp, old, adv, 0.2, 0.2)
    dual = loss_lib.ppo_clip(logp, old, adv, 0.2, 0.2, dual_clip=3.0)
    np.testing.assert_allclose(plain, [np.exp(1.5), -1.2], rtol=1e-6)
    np.testing.assert_allclose(dual, [3.0, -1.2], rtol=1e-6)


@pytest.mark.parametrize("aggregation", loss_lib.AGGREGATIONS)
def test_masked_positions_cannot_poison_the_loss(aggregation):
    """inf / nan at positions of weight 0 (e.g. -inf log-probs of padding) change neither the
    loss nor its gradient."""
    rl = config(aggregation=aggregation, entropy_coef=0.01, dual_clip=2.0)
    logp, entropy, old, ref, adv, weight = inputs(seed=3)
    grad_fn = jax.value_and_grad(lambda lp, h, *r: jax_loss(lp, h, *r, rl), argnums=(0, 1))
    clean = grad_fn(*(x.astype(np.float32) for x in (logp, entropy, old, ref, adv, weight)))
    off = weight == 0
    poisoned = [x.astype(np.float32).copy() for x in (logp, entropy, old, ref, adv)]
    for x, bad in zip(poisoned, (np.nan, np.inf, -np.inf, np.nan, np.inf), strict=True):
        x[off] = bad
    value, grads = grad_fn(*poisoned, weight.astype(np.float32))
    assert float(value) == float(clean[0])
    for got, want in zip(grads, clean[1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_kl_estimators_small_case():
    # log π = -1, log π_ref = -2: d = 1 -> k1 = 1, k2 = 0.5, k3 = e^-1 + 1 - 1 = 0.3679
    logp, ref = jnp.array([-1.0]), jnp.array([-2.0])
    got = [float(loss_lib.kl_penalty(logp, ref, k, 10.0)[0]) for k in ("k1", "k2", "k3")]
    np.testing.assert_allclose(got, [1.0, 0.5, np.exp(-1)], rtol=1e-6)
    assert float(loss_lib.kl_penalty(jnp.array([0.0]), jnp.array([-30.0]), "k1", 10.0)[0]) == 10


def plain_logprobs(model, tokens, mask, temperature):
    logp = jax.nn.log_softmax(model(tokens, mask)[:, :-1] / temperature, axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.pad(chosen, ((0, 0), (1, 0))), jnp.pad(entropy, ((0, 0), (1, 0)))


@pytest.mark.parametrize("chunk", [3, 5, 11, 64])
def test_chunked_recompute_equals_a_plain_forward(chunk):
    model, state = tiny.random_model("llama3_untied")
    nnx.update(model, state)
    tokens, mask = tiny.padded_batch(length=12)
    want = plain_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask), 0.7)
    got = loss_lib.token_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask), 0.7, chunk)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g)[mask], np.asarray(w)[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("start", [1, 4, 11])
def test_logprobs_from_a_start_column_equal_the_full_ones_there(start):
    model, state = tiny.random_model("qwen2")
    nnx.update(model, state)
    tokens, mask = (jnp.asarray(x) for x in tiny.padded_batch(length=12))
    full = loss_lib.token_logprobs(model, tokens, mask, 0.7, 5)
    part = loss_lib.token_logprobs(model, tokens, mask, 0.7, 5, start=start)
    for f, p in zip(full, part, strict=True):
        assert p.shape == f.shape and not np.asarray(p)[:, :start].any()
        np.testing.assert_allclose(np.asarray(p)[:, start:], np.asarray(f)[:, start:], atol=1e-5)
    with pytest.raises(ValueError, match="start: 12 is not in"):
        loss_lib.token_logprobs(model, tokens, mask, 0.7, 5, start=12)


@pytest.mark.parametrize("group, remat", [(3, False), (1, True), (3, True)])
def test_a_shared_prompt_and_remat_give_the_same_logprobs_and_gradient(group, remat):
    """Two prompts (one left-padded) × G = 3 rollouts (right-padded), in float64: the grouped
    path (each prompt run once) and remat (the backward pass recomputing each layer and each
    attention block) equal the plain per-row one in values and in the gradient of a weighted
    sum (to ~1e-15: only the order of the sums differs)."""
    model, state = tiny.random_model("qwen2")
    model.cfg = dataclasses.replace(model.cfg, dtype="float64")
    graphdefs = {False: nnx.graphdef(model)}
    model.cfg = dataclasses.replace(model.cfg, remat=True)
    graphdefs[True] = nnx.graphdef(model)
    rng = np.random.default_rng(1)
    g, s, n = 3, 5, 7
    prompt = np.repeat(rng.integers(0, 96, (2, s)), g, axis=0)
    prompt_mask = np.ones((2 * g, s), bool)
    prompt_mask[g:, :2] = False
    tokens = jnp.asarray(np.concatenate([prompt, rng.integers(0, 96, (2 * g, n))], axis=1))
    mask = jnp.asarray(np.concatenate([prompt_mask, np.arange(n)[None] < [[7], [3], [5]] * 2],
                                      axis=1))  # fmt: skip
    weights = rng.normal(size=(2 * g, s + n))

    def total(state, group, remat):
        logp, entropy = loss_lib.token_logprobs(nnx.merge(graphdefs[remat], state), tokens, mask,
                                                0.7, 4, start=s, group=group)  # fmt: skip
        return jnp.sum(jnp.where(mask, weights * logp + entropy, 0.0)), (logp, entropy)

    with jax.enable_x64(True):
        state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
        (want, want_aux), want_grad = jax.value_and_grad(total, has_aux=True)(state, 1, False)
        (got, got_aux), got_grad = jax.value_and_grad(total, has_aux=True)(state, group, remat)
    for a, b in zip(got_aux, want_aux, strict=True):
        np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], rtol=1e-10)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_sampler_logprobs_equal_trainer_logprobs():
    """The contract of DESIGN.md: what the sampler records is what the training graph computes."""
    model, state = tiny.random_model("qwen2")
    sampling = SamplingConfig(num_samples=3, max_new_tokens=20, temperature=0.7)
    rollouts = Sampler(model, sampling, None, [3]).sample(state, [[5, 17, 3], list(range(20, 37))])
    n = rollouts.tokens_BN.shape[1]
    completion = np.arange(n)[None] < rollouts.lengths_B[:, None]
    tokens = jnp.asarray(np.concatenate([rollouts.prompt_BS, rollouts.tokens_BN], axis=1))
    mask = jnp.asarray(np.concatenate([rollouts.prompt_mask_BS, completion], axis=1))
    nnx.update(model, state)
    logp, entropy = loss_lib.token_logprobs(model, tokens, mask, 0.7, chunk=8)
    assert np.abs(np.asarray(logp)[:, -n:] - rollouts.logprobs_BN)[completion].max() <= 1e-4
    assert np.abs(np.asarray(entropy)[:, -n:] - rollouts.entropies_BN)[completion].max() <= 1e-4


def gradient_temp_bytes(rows: int, length: int, chunk: int, **shape) -> int:
    """Temporary bytes of the compiled gradient of Σ(log-probs + entropies) over [rows, length]
    tokens, on the tiny Qwen2 config narrowed to `shape`. Nothing runs."""
    cfg = dataclasses.replace(ModelConfig.from_hf(tiny.hf_config("qwen2").to_dict()),
                              max_position_embeddings=4096, **shape)  # fmt: skip
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((rows, length), jnp.bool_)

    def loss(state, tokens, mask):
        logp, entropy = loss_lib.token_logprobs(
            nnx.merge(graphdef, state), tokens, mask, 0.7, chunk
        )
        return logp.sum() + entropy.sum()

    compiled = jax.jit(jax.grad(loss)).lower(state, tokens, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_recompute_needs_a_quarter_of_the_memory():
    """B=8, T=2048, Qwen's V=151,936 on a narrow model: the compiled gradient of the recompute,
    chunked, holds ≤ ¼ of the temporary memory of the unchunked one (fp32 [B, T, V] logits
    alone are 10 GB). Read from the compiled programs; nothing runs."""
    shape = {"vocab_size": 151_936, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
             "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}  # fmt: skip
    chunked, unchunked = (gradient_temp_bytes(8, 2048, chunk, **shape) for chunk in (256, 2048))
    assert unchunked > 8 * 2048 * 151_936 * 4  # the full logits are there
    assert chunked <= unchunked / 4, (chunked, unchunked)  # here: 4.96 vs 37.4 GiB


def test_the_backward_keeps_no_layers_attention_scores():
    """B=2, T=2048 on a narrow 4-layer model: every layer's attention probabilities would be
    4 × 2 rows × 4 heads × ~T²/2 × 4 bytes ≈ 270 MB. The gradient keeps each layer's weight
    matmul outputs only (it held ≥ 750 MB when it kept every activation), and with remat, which
    recomputes a layer and within it one query block at a time, less still (here 252 and 188 MB).
    Read from the compiled programs; nothing runs."""
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 4, "num_heads": 4,
             "num_kv_heads": 2, "head_dim": 16}  # fmt: skip
    kept, recomputed = (gradient_temp_bytes(2, 2048, 256, remat=r, **shape) for r in (False, True))
    assert kept < 4 * 2 * 4 * 2048 * 2048 // 2 * 4, kept
    assert recomputed < kept, (recomputed, kept)
