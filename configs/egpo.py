"""EGPO (METHOD.md §2–3) on the embedded SmolLM2-135M-Instruct and the embedded generated tasks.

  python -m fcrl.train --config configs/egpo.py --config.workdir=runs/egpo

Every RL config has these sections: model, mesh, data, sampling, reward, rl, optim, old_logprobs,
updates (per rollout batch), cadences and seed. `get_config("bonus=none")` is plain
GRPO, the baseline of every comparison. One step is P = prompts_per_step prompts × G rollouts;
on 2 CPU cores a step of 1 × 8 × 128 tokens takes about 80 s (README, "Results").
Marks: [S] a third-party reading of the paper, [D] our choice.
"""

import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, bonus="lambda_outside", group_size=8)
    config = ml_collections.ConfigDict()
    config.workdir = "runs/egpo"  # --config.workdir=DIR; a run resumes from what DIR holds
    config.seed = 0
    config.steps = 570  # RL steps (rollout batches): the paper's learning curves [P]
    config.prompts_per_step = 1  # P: B = P·G rows per step
    # Prompts rolled out per step (0: P). With more, the step trains on P of their groups,
    # those whose rewards differ first (dynamic sampling, DAPO) [D].
    config.prompts_sampled = 0
    config.model = ml_collections.ConfigDict(
        {
            "path": "",  # an HF checkpoint folder; "" = the embedded SmolLM2; "tiny" = random tiny
            "dtype": "float32",  # compute dtype (parameters stay float32)
            # Recompute each layer's activations and attention scores in the backward pass:
            # long sequences (8k responses) fit, for about a third more train-step compute [D].
            "remat": False,
        }
    )
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1: the rest
    config.data = ml_collections.ConfigDict(
        {
            "train": "generated",  # a prepared train.jsonl, or "generated": the embedded set,
            "val": "generated",  # prepared by fcrl.prepare into WORKDIR/data
            "num_generated": 5000,
            "distractors": 3,  # generated: other tools offered beside the asked ones
            "max_calls": 3,  # generated: the most calls of a parallel task
            "fmt": "think_answer",  # the prompt and answer format (fcrl.chat.FORMATS)
            "docs": "json",  # the function docs: json (BFCL's prompt mode) | compact
        }
    )
    config.sampling = ml_collections.ConfigDict(
        {
            "max_new_tokens": 128,  # the generation budget (also Dr.GRPO's constant)
            "top_p": 1.0,
            "top_k": 0,
            "buckets": (256, 512, 768, 1024),  # prompt lengths; longer prompts are skipped
            "max_prompts": 0,  # prompts rolled out together (0: a step's all); bounds the KV cache
        }
    )
    config.reward = ml_collections.ConfigDict({"shape": "binary"})  # binary | format_credit
    config.rl = ml_collections.ConfigDict(
        {
            "group_size": arg.group_size,  # G rollouts per prompt [D]
            "advantage": "grpo",  # grpo | dr_grpo | rloo
            "bonus": arg.bonus,  # lambda_outside [S] | lambda_inside | none (plain GRPO)
            "bonus_lambda": 0.4,  # λ [S]
            "bonus_kappa": 2.0,  # κ [S]
            "entropy_per_token": False,  # H per rollout over <think> (True: per token) [D]
            "think_only": False,  # Â on every completion token (True: think tokens only) [D]
            # Groups whose rollouts all got one reward: "mask" leaves them out of the loss and of
            # every count at a fixed batch shape (no recompile); "keep" trains on their Â = 0.
            "uniform_groups": "mask",  # [D]
            "eps_low": 0.2,  # PPO clip [S]
            "eps_high": 0.2,  # > eps_low: clip-higher
            "dual_clip": 0.0,  # 0: off; else c > 1
            "kl_coef": 0.001,  # β [S]; 0 drops the reference model
            "kl_estimator": "k3",  # k1 | k2 | k3 [S]
            "kl_clamp": 10.0,
            "entropy_coef": 0.0,  # entropy regulariser, off [S]
            "aggregation": "token_mean",  # token_mean [S] | seq_mean_token_mean | dr_grpo
            # The rollout temperature, declared once: the sampler draws with it and the loss
            # divides the logits by it [S].
            "temperature": 0.7,
            # Positions per chunk of the log-prob recompute: [rows, chunk, V] float32 logits a
            # buffer (64: 0.37 GB less than 256 in the bench's RL step, in the same time).
            "logprob_chunk": 64,
            # Gradient accumulation within one update; micro-batches of whole groups run each
            # prompt once for its G rollouts.
            "micro_batches": 1,
        }
    )
    config.optim = ml_collections.ConfigDict(
        {
            "lr": 1e-6,  # [S]
            "schedule": "constant",  # constant [S] | linear | cosine (after warmup)
            "warmup_steps": 0,  # optimizer updates
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.01,  # [D]
            "grad_clip": 1.0,  # global norm; 0: off [D]
        }
    )
    # SFT warm start (fcrl.sft) before RL, into WORKDIR/sft; 0 steps: none [D]
    config.sft = ml_collections.ConfigDict(
        {
            "steps": 0,
            "batch_size": 8,  # (prompt, target) pairs per update
            "target_len": 192,  # target tokens (after the prompt's bucket); longer are skipped
            "optim": {"lr": 1e-5, "schedule": "constant", "warmup_steps": 0, "b1": 0.9,
                      "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 1.0},
        }
    )  # fmt: skip
    config.sft.optim.total_steps = config.sft.get_ref("steps")
    config.old_logprobs = "sampler"  # sampler: the rollout's own | recompute: training graph
    config.updates = ml_collections.ConfigDict(
        {
            "epochs": 1,  # passes over each rollout batch
            "mini_batches": 1,  # optimizer updates per pass (whole groups each)
        }
    )
    # One schedule step per optimizer update: steps × epochs × mini_batches.
    updates = config.updates.get_ref("epochs") * config.updates.get_ref("mini_batches")
    config.optim.total_steps = config.get_ref("steps") * updates
    config.log_every = 1
    config.checkpoint_every = 10
    config.keep_checkpoints = 3
    config.completions_every = 10  # sample completions into completions.jsonl
    config.completions_per_log = 8
    # Held-out: greedy on a fixed sample of the validation set every `every` steps (0: off).
    # With bfcl_limit N > 0, the run ends with BFCL (fcrl.eval) on a seeded sample of N per
    # category of bfcl_categories, of where RL started and of its result, in WORKDIR/bfcl.
    config.eval = ml_collections.ConfigDict(
        {"every": 50, "size": 64, "max_new_tokens": 128, "batch_size": 32, "bfcl_limit": 0,
         "bfcl_categories": "python"}
    )  # fmt: skip
    return config
