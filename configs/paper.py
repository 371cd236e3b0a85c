"""The paper's runs (METHOD.md §4): EGPO and its plain-GRPO baseline, the same in everything
else, on Qwen2.5-Coder-7B-Instruct and Llama-3.2-3B-Instruct, each for a TPU v5p-32, a v4-32,
a v5e-8 or 8×H100 (`slice=...`). The four files egpo_*/grpo_* call `get_config` here.

Before a run: the checkpoint downloaded to `model.path` (e.g. `huggingface-cli download
Qwen/Qwen2.5-Coder-7B-Instruct --local-dir checkpoints/Qwen2.5-Coder-7B-Instruct`) and the
training data prepared (`python -m fcrl.prepare --config.input=xlam_function_calling_60k.json
--config.format=xlam --config.judge=http ... --config.out=data/xlam`). On a pod, the workdir
must be one filesystem for all hosts (orbax writes one checkpoint from all of them).
`python experiments/dry_run.py --config configs/egpo_qwen25_coder_7b.py:slice=v4-32` compiles
the step for the slice on simulated CPU devices and prints its memory and cost (tpu/README.md).
Marks: [P] the paper, [S] a third-party reading of it, [D] our choice.
"""

import ml_collections

from configs import egpo
from configs.common import parse_arg

# JAX devices (chips), HBM per chip (GB) and dense bf16 peak per chip (TFLOP/s). The mesh is
# FSDP over every chip (7B: 91 GB of f32 parameters and AdamW moments), and each chip trains one
# row at a time (rows / chips micro-batches): a group's 8 rows on one chip (its prompt run once)
# would need ~170 GB on a v5p at 10k tokens a row (experiments/dry_run.py).
SLICES = {
    "v5e-8": {"chips": 8, "hbm_gb": 16, "peak_tflops": 197},  # one host
    "v5p-32": {"chips": 16, "hbm_gb": 95, "peak_tflops": 459},
    "v4-32": {"chips": 16, "hbm_gb": 32, "peak_tflops": 275},
    "8xh100": {"chips": 8, "hbm_gb": 80, "peak_tflops": 989},
}
# name: (checkpoint folder, the HF config.json it has: the dry run's shapes, and the prompts
# rolled out together on each slice, from the dry run's decode memory: the KV cache of 8 rows ×
# 10k tokens is 4.7 GB a prompt for the 7B and 9.4 GB for the 3B, whose 8 kv heads double it).
MODELS = {
    "qwen25_coder_7b": ("checkpoints/Qwen2.5-Coder-7B-Instruct",
                        "configs/hf/qwen2.5-coder-7b-instruct.json",
                        {"v5p-32": 64, "8xh100": 32, "v4-32": 16, "v5e-8": 8}),
    "llama32_3b": ("checkpoints/Llama-3.2-3B-Instruct", "configs/hf/llama-3.2-3b-instruct.json",
                   {"v5p-32": 32, "8xh100": 16, "v4-32": 8, "v5e-8": 4}),
}  # fmt: skip


def get_config(model: str, bonus: str, arg: str | None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, slice="v5p-32")
    if arg.slice not in SLICES:
        raise ValueError(f"config arg: slice '{arg.slice}' is not one of {sorted(SLICES)}")
    config = egpo.get_config(f"bonus={bonus},group_size=8")  # G = 8 [D]
    path, shape, rollout_prompts = MODELS[model]
    config.workdir = f"runs/{'egpo' if bonus != 'none' else 'grpo'}_{model}_{arg.slice}"
    config.model.update(path=path, dtype="bfloat16", remat=True)  # bf16 over f32 parameters [D]
    config.model.shape = shape
    chips = SLICES[arg.slice]["chips"]
    config.slice = ml_collections.ConfigDict({"name": arg.slice, **SLICES[arg.slice]})
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": chips, "tensor": 1})
    config.data.update(train="data/xlam/train.jsonl", val="data/xlam/val.jsonl")  # [S]
    config.steps = 570  # [P]: the learning curves' length (5 epochs [S] of the refined set)
    config.prompts_per_step = 64  # × G = 512 rollouts a step [D] (not reported)
    config.sampling.update(max_new_tokens=8192, buckets=(512, 1024, 2048),  # 8k responses [S]
                           max_prompts=rollout_prompts[arg.slice])  # fmt: skip
    config.rl.update(kl_coef=0.001, temperature=0.7, bonus_lambda=0.4, bonus_kappa=2.0)  # [S]
    config.rl.micro_batches = config.prompts_per_step * 8 // chips  # one row per chip
    config.optim.update(lr=1e-6, schedule="constant")  # [S]
    config.checkpoint_every = 10
    config.eval.update(every=50, size=256, max_new_tokens=1024, batch_size=256)
    return config
