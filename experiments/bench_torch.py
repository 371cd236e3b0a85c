"""The torch side of experiments/bench.py, run by it in its own virtualenv (torch, trl): it
imports nothing of fcrl's. Reads one JSON job on stdin and prints one JSON line.

  {"part": "generate", "model": DIR, "prompts": [[ids], ...], "g": 8, "new": 128,
   "temperature": 0.7, "repeats": 2}
    → median prefill and decode seconds of transformers' `generate` (KV cache, sampling, every
      row forced to `new` tokens), after a warm-up.
  {"part": "trl", "model": DIR, "messages": [...], "g": 8, "new": 128, "temperature": 0.7,
   "lr": 1e-6, "rewards": [...], "steps": 2, "bf16": false}
    → TRL's GRPOTrainer on one prompt × G per step: the median step after a first one, and of it
      the generation (and scoring) and the update; "steps": 0 runs and reports one step.
"""

import json
import resource
import statistics
import sys
import tempfile
import time

import torch
import transformers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def generate(job: dict) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    model.eval()
    prompts, g, new = job["prompts"], job["g"], job["new"]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True,
                temperature=job["temperature"], top_k=0, top_p=1.0, num_return_sequences=g,
                max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
            )  # fmt: skip
        assert out.shape == (len(prompts) * g, width + n)
        return time.perf_counter() - start

    run(2)  # warm-up
    total = statistics.median(run(new) for _ in range(job["repeats"]))
    prefill = statistics.median(run(1) for _ in range(job["repeats"]))
    return {"prefill_s": prefill, "decode_s": total - prefill, "total_s": total}


def trl(job: dict) -> dict:
    import datasets
    import trl as trl_lib

    rewards = job["rewards"]

    def reward(completions, **kwargs) -> list[float]:
        return list(rewards)  # fixed mix: every step has a gradient (as on fcrl's side)

    times = {"step": [], "generate": []}

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times["step"].append(time.perf_counter() - self.start)

    g = job["g"]
    data = datasets.Dataset.from_list([{"prompt": job["messages"]}] * (g * (job["steps"] + 2)))
    with tempfile.TemporaryDirectory() as out:
        args = trl_lib.GRPOConfig(
            output_dir=out, report_to="none", save_strategy="no", use_cpu=True,
            bf16=job["bf16"], per_device_train_batch_size=g, gradient_accumulation_steps=1,
            num_generations=g, steps_per_generation=1, num_iterations=1,
            max_completion_length=job["new"], generation_kwargs={"min_new_tokens": job["new"]},
            temperature=job["temperature"], top_p=1.0, top_k=0, beta=0.0, loss_type="dapo",
            epsilon=0.2, learning_rate=job["lr"], lr_scheduler_type="constant",
            weight_decay=0.01, max_grad_norm=1.0, max_steps=job["steps"] + 1, logging_steps=1,
            dataloader_num_workers=0, shuffle_dataset=False, disable_tqdm=True,
            model_init_kwargs={"dtype": torch.float32},
        )  # fmt: skip
        trainer = trl_lib.GRPOTrainer(
            model=job["model"], reward_funcs=reward, args=args, train_dataset=data,
            callbacks=[Clock()],
        )  # fmt: skip
        scored = trainer._generate_and_score_completions

        def timed(*a, **k):
            start = time.perf_counter()
            out = scored(*a, **k)
            times["generate"].append(time.perf_counter() - start)
            return out

        trainer._generate_and_score_completions = timed
        trainer.train()
    kept = slice(1 if job["steps"] else 0, None)  # with 0 timed steps: the one step run
    step = statistics.median(times["step"][kept])
    gen = statistics.median(times["generate"][kept])
    return {"step_s": step, "generate_s": gen, "update_s": step - gen,
            "first_step_s": times["step"][0], "steps": len(times["step"])}  # fmt: skip


if __name__ == "__main__":
    job = json.loads(sys.stdin.read())
    result = {"generate": generate, "trl": trl}[job["part"]](job)
    print(json.dumps(result | {"peak_rss_gb": peak_rss_gb(), "torch": torch.__version__}))
