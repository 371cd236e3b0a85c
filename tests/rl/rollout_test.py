"""fcrl.rl.rollout: the <think> span from the tokens' bytes, group selection, and the
micro-batched log-prob pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcrl.models.tiny import char_tokenizer
from fcrl.rl import rollout
from fcrl.sampler import token_pieces
from tests.models import tiny
from tests.rl.train_test import G, make_batch


def test_think_mask_follows_the_bytes():
    tokenizer = char_tokenizer()
    pieces = token_pieces(tokenizer, 96)
    texts = ["<think>ab</think><answer>[]</answer>", "no think here", "<think>open"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    n = max(map(len, ids))
    tokens = np.zeros((3, n), np.int32)
    for row, x in enumerate(ids):
        tokens[row, : len(x)] = x
    mask = rollout.think_mask(tokens, np.asarray([len(x) for x in ids]), pieces)
    assert "".join(texts[0][i] for i in np.flatnonzero(mask[0])) == "ab"
    assert not mask[1].any()
    assert "".join(texts[2][i] for i in np.flatnonzero(mask[2])) == "open"


def test_signal_groups_prefer_groups_whose_rewards_differ():
    from fcrl.rl.rollout import signal_groups

    rewards = np.asarray([1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1], np.float32)  # 4 groups of 3
    assert signal_groups(rewards, 3, 2).tolist() == [1, 3]  # groups 0 and 2 are uniform
    assert signal_groups(rewards, 3, 3).tolist() == [0, 1, 3]  # then the first uniform one
    assert signal_groups(rewards, 3, 4).tolist() == [0, 1, 2, 3]  # no oversampling: all
    assert signal_groups(np.zeros(6, np.float32), 3, 1).tolist() == [0]


def test_micro_batched_logprobs_equal_the_whole_batch():
    """The old / reference pass in parts, per row or with each prompt run once for its group,
    gives the whole batch's log-probs and entropies; in float64, where only the order of the
    sums differs (in float32 the batch shape alone moves entropies by ~2e-5)."""
    model, state = tiny.random_model("qwen2")
    batch = make_batch(model, state)
    model.cfg = dataclasses.replace(model.cfg, dtype="float64")
    tokens, mask = jnp.asarray(batch.tokens_BT), jnp.asarray(batch.mask_BT)

    def run(**kw):
        return rollout.sequence_logprobs(nnx.graphdef(model), state, tokens, mask,
                                         temperature=0.7, chunk=5, start=8, **kw)  # fmt: skip

    with jax.enable_x64(True):
        state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
        want = run()
        for kw in ({"micro_batches": 4}, {"group": G, "micro_batches": 2}):
            for got, expected in zip(run(**kw), want, strict=True):
                np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
