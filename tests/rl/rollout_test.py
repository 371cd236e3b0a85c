"""fcrl.rl.rollout: the <think> span from the tokens' bytes."""

import numpy as np

from fcrl.models.tiny import char_tokenizer
from fcrl.rl import rollout
from fcrl.sampler import token_pieces


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
