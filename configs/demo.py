"""The README's first command: SFT warm start, then EGPO, on the embedded SmolLM2-135M-Instruct.

  python -m fcrl.train --config configs/demo.py [--config.rl.bonus=none]

On 2 CPU cores, in one command: the embedded generated tasks prepared by the data pipeline
(easier ones: one distractor tool, at most two calls, compact one-line function docs), a few
minutes of SFT (fcrl.sft) to prime the answer format, then EGPO with the entropy bonus on
(`rl.bonus=none`: the GRPO baseline). The same 300 validation tasks are evaluated greedily
before SFT, after it and after RL; McNemar's test on the items that changed says whether RL
beat its SFT start. The run folder is runs/demo (README, "The demo").
"""

import ml_collections

from configs import egpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = egpo.get_config(arg or "group_size=4")
    config.workdir = "runs/demo"
    config.steps = 12
    config.prompts_per_step = 2  # × G = 4: 8 rows a step, two groups of signal
    config.data.update(num_generated=7000, distractors=1, max_calls=2, docs="compact")
    # Prompts run to 180 tokens and answers (with their <think>) to 110.
    config.sampling.update(max_new_tokens=112, buckets=(128, 192))
    config.sft.update(steps=12, batch_size=8, max_len=288)
    config.sft.optim.update(lr=1e-4, warmup_steps=2)
    config.rl.kl_coef = 0.001
    config.optim.update(lr=3e-5, warmup_steps=0)
    config.checkpoint_every = 4
    config.completions_every = 1
    config.eval.update(every=12, size=300, max_new_tokens=112, batch_size=60)
    return config
