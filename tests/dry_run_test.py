"""experiments/dry_run.py on a small Qwen-shaped model: it compiles the train step, the reference
pass and the sampler for the slice's simulated mesh and reports per-chip memory and the run's
cost, which are checked against their definitions."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]
SMALL = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 512, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
         "rope_theta": 1e6, "tie_word_embeddings": False}  # fmt: skip


def test_the_dry_run_of_a_small_qwen_on_8_chips(tmp_path):
    shape = tmp_path / "config.json"
    shape.write_text(json.dumps(SMALL))
    command = [sys.executable, "experiments/dry_run.py",
               "--config", "configs/egpo_qwen25_coder_7b.py:slice=8xh100",
               f"--config.model.shape={shape}", "--config.prompts_per_step=2",
               "--config.sampling.max_new_tokens=64", "--config.sampling.buckets=(128,)",
               "--config.rl.micro_batches=2", "--config.steps=10", "--mfu=0.5"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert "per chip (GB, estimates from the CPU compiler)" in done.stdout
    assert set(out["programs"]) == {"train step", "reference pass", "prefill", "decode"}
    d, f, v, layers = 128, 256, 512, 2
    e = d // 4
    per_layer = 2 * d + d * 4 * e + 2 * d * 2 * e + 4 * e + 2 * 2 * e + 4 * e * d + 3 * d * f
    params = layers * per_layer + 2 * v * d + d
    assert out["config"]["parameters"] == params
    # f32 parameters split 8 ways along the model width (norms and biases replicated)
    held = out["per_chip_bytes"]
    replicated = layers * (2 * d + 4 * e + 2 * 2 * e) + d  # norms and q/k/v biases
    assert held["parameters"] == 4 * ((params - replicated) // 8 + replicated)
    # AdamW's two moments, placed like the parameters, and a few step counters.
    assert 2 * held["parameters"] <= held["optimizer"] < 2 * held["parameters"] + 64
    assert held["reference"] == held["parameters"]  # β > 0: a frozen copy, sharded alike
    for name, program in out["programs"].items():
        assert program["temporaries"] > 0 and program["peak"] >= held["resident"], name
    assert out["fits"] and out["peak_bytes"] == max(p["peak"] for p in out["programs"].values())
    cost = out["cost"]
    rows, s, n = 2 * 8, 128, 64
    assert cost["tokens_per_step"] == rows * (s + n) and cost["tokens"] == 10 * rows * (s + n)
    assert math.isclose(cost["hours"], cost["flops"] / (8 * 989e12 * 0.5) / 3600)
    dense = 2 * (params - v * d)  # forward FLOPs per token, attention aside
    assert dense * 4 * rows * (s + n) < cost["flops_per_step"] < 3 * dense * 4 * rows * (s + n)
