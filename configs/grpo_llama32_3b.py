"""plain GRPO, EGPO's baseline on Llama-3.2-3B-Instruct, the paper's setup (configs/paper.py);
egpo_llama32_3b.py: the same with the bonus on.

  python -m fcrl.train --config configs/grpo_llama32_3b.py:slice=v5p-32   # or v4-32, 8xh100

On a pod: tpu/launch.sh (tpu/README.md). Before renting one, `python
experiments/dry_run.py --config configs/grpo_llama32_3b.py:slice=v5p-32`
prints the step's memory per chip and the run's cost.
"""

from configs import paper


def get_config(arg: str | None = None):
    return paper.get_config("llama32_3b", "none", arg)
