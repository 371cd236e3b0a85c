"""The RL loop on a tiny random model with a character tokenizer: seconds per step, on CPU.

  python -m fcrl.train --config configs/tiny.py --config.workdir=/tmp/tiny

runs 4 steps of 1 prompt × 4 rollouts × 32 new tokens of the embedded generated tasks (compact
function docs), with a checkpoint and a greedy held-out evaluation of 4 items at steps 2 and 4
(and one before the first step), in about 40 s on 2 CPU cores: ~20 s of start-up and
compiling, then ~2.5 s a step. `--config.sft.steps=N` puts an SFT phase first.
A random model earns no reward, so `rl.uniform_groups=keep` and a small entropy term make its
updates move the weights: the loop, its checkpoints and its resume are exercised for real. The
tests run this config.
"""

import ml_collections

from configs import egpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = egpo.get_config(arg or "group_size=4")
    config.workdir = "runs/tiny"
    config.steps = 4
    config.model.path = "tiny"
    config.data.num_generated = 400
    config.sampling.max_new_tokens = 32
    # One character a token, so prompts run to ~800 tokens: one bucket compiles once, and the
    # few longer prompts are skipped (listed in WORKDIR/skipped.jsonl).
    config.data.docs = "compact"
    config.sampling.buckets = (768,)
    config.sft.target_len = 512
    config.rl.uniform_groups = "keep"
    config.rl.entropy_coef = 0.01
    config.optim.lr = 1e-3
    config.checkpoint_every = 2
    config.completions_every = 2
    config.completions_per_log = 4
    config.eval.update(every=2, size=4)
    return config
