"""The EGPO objective of METHOD.md §2–3: the `rl` and `optim` sections of an RL run.

The RL loop that consumes them lands with the trainer; today they configure
`fcrl.rl.train.train_step` (see tests/rl/train_test.py). `get_config("bonus=none")` is plain GRPO,
the baseline of every comparison. Marks: [S] a third-party reading of the paper, [D] our choice.
"""

import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, bonus="lambda_outside", group_size=8)
    config = ml_collections.ConfigDict()
    config.rl = ml_collections.ConfigDict(
        {
            "group_size": arg.group_size,  # G rollouts per prompt [D]
            "advantage": "grpo",  # grpo | dr_grpo | rloo
            "bonus": arg.bonus,  # lambda_outside [S] | lambda_inside | none (plain GRPO)
            "bonus_lambda": 0.4,  # λ [S]
            "bonus_kappa": 2.0,  # κ [S]
            "entropy_per_token": False,  # H per rollout over <think> (True: per token) [D]
            "think_only": False,  # Â on every completion token (True: think tokens only) [D]
            "uniform_groups": "mask",  # groups with one reward: mask | keep | drop [D]
            "eps_low": 0.2,  # PPO clip [S]
            "eps_high": 0.2,  # > eps_low: clip-higher
            "dual_clip": 0.0,  # 0: off; else c > 1
            "kl_coef": 0.001,  # β [S]; 0 drops the reference model
            "kl_estimator": "k3",  # k1 | k2 | k3 [S]
            "kl_clamp": 10.0,
            "entropy_coef": 0.0,  # entropy regulariser, off [S]
            "aggregation": "token_mean",  # token_mean [S] | seq_mean_token_mean | dr_grpo
            "temperature": 0.7,  # the rollout temperature: logits are divided by it [S]
            "logprob_chunk": 256,  # positions per chunk of the log-prob recompute
            "micro_batches": 1,
        }
    )
    config.optim = ml_collections.ConfigDict(
        {
            "lr": 1e-6,  # [S]
            "schedule": "constant",  # constant [S] | linear | cosine (after warmup)
            "warmup_steps": 0,
            "total_steps": 570,  # the paper's learning curves [P]
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.01,  # [D]
            "grad_clip": 1.0,  # global norm; 0: off [D]
        }
    )
    return config
