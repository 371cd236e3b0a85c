"""SFT warm start: token-level cross-entropy on (prompt, target) pairs, to prime the answer
format on small models before RL.

  python -m fcrl.sft --config configs/demo.py [--config.sft.steps=N] [--config.workdir=DIR]

The same config file, model, mesh, data, checkpoints and metrics as the RL job (fcrl.train,
which runs this phase first when `sft.steps` > 0). Prompts come from the one renderer; the
target is the method's format built from the record's answer: a short `<think>` naming the
function(s) that fit and the parameters the question gives, then the calls in `<answer>`, then
the end-of-turn token. Everything goes to WORKDIR/sft: config.json, metrics.jsonl and tb/,
eval.jsonl (the greedy held-out evaluation before the first step and after the last),
skipped.jsonl, checkpoints/ (a killed phase resumes there), and at the end the model as an HF
folder, WORKDIR/sft/model, which the RL phase starts from; once that folder exists the phase
is done and is not redone.
"""

import functools
import json
import logging
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import transformers
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from fcrl import chat, checkpoint, job, metrics
from fcrl.data.pipeline import dataset, load_records
from fcrl.models import export_hf
from fcrl.rl.loss import token_logprobs
from fcrl.rl.train import init_opt_state, make_optimizer, step_shardings
from fcrl.sampler import Sampler
from fcrl.verifier.render import first_accepted, render


def think_text(calls: list[tuple[str, dict]], tools: list[dict]) -> str:
    """Which function fits and which parameters the question gives, from the answer's calls:
    `f ×2: a, b. g: c.` (no call: `No function fits.`)."""
    if not calls:
        return "No function fits."
    parts = []
    for name in dict.fromkeys(n for n, _ in calls):  # first-seen order
        mine = [args for n, args in calls if n == name]
        given = ", ".join(dict.fromkeys(p for args in mine for p in args)) or "no parameters"
        parts.append(f"{name}{f' ×{len(mine)}' if len(mine) > 1 else ''}: {given}.")
    return " ".join(parts)


def target_text(record: dict) -> str:
    """The completion SFT teaches for `record`: <think>…</think><answer>[…]</answer>."""
    calls = first_accepted(record["ground_truth"], record["tools"])
    return render(calls, "think_answer", think=think_text(calls, record["tools"]))


def with_targets(records: list[dict], tokenizer, eos: int, width: int, skipped: list[dict],
                 source: str) -> list[dict]:  # fmt: skip
    """The records with their target ids (ending with `eos`); those whose target exceeds
    `width` tokens go to `skipped` with their reason."""
    out = []
    for record in records:
        ids = tokenizer(target_text(record), add_special_tokens=False)["input_ids"] + [eos]
        if len(ids) > width:
            skipped.append({"file": source, "id": record.get("id"), "reason": "sft_too_long",
                            "detail": f"{len(ids)} target tokens"})  # fmt: skip
            continue
        out.append({**record, "target_ids": ids})
    if not out:
        raise ValueError(f"{source}: no record's target fits sft.target_len ({width})")
    return out


def make_batch(records: list[dict], buckets: tuple[int, ...], width: int) -> dict[str, np.ndarray]:
    """The RL batch's layout: each prompt left-padded to the smallest bucket that holds the
    longest, then its target right-padded to `width`: tokens, mask and the target mask."""
    start = min(b for b in buckets if b >= max(len(r["prompt_ids"]) for r in records))
    tokens = np.zeros((len(records), start + width), np.int32)
    mask, target = np.zeros(tokens.shape, bool), np.zeros(tokens.shape, bool)
    for row, r in enumerate(records):
        p, t = len(r["prompt_ids"]), len(r["target_ids"])
        tokens[row, start - p : start + t] = r["prompt_ids"] + r["target_ids"]
        mask[row, start - p : start + t], target[row, start : start + t] = True, True
    return {"tokens_BT": tokens, "mask_BT": mask, "target_BT": target}


def sft_step(graphdef: nnx.GraphDef, params: nnx.State, opt_state: optax.OptState, batch: dict,
             *, optimizer: optax.GradientTransformation, chunk: int, width: int):  # fmt: skip
    """One update on the mean cross-entropy of the batch's target tokens, the last `width`
    columns (the only ones given to the output projection)."""
    start = batch["tokens_BT"].shape[1] - width

    def loss_fn(params: nnx.State):
        model = nnx.merge(graphdef, params)
        tokens_BT, mask_BT = batch["tokens_BT"], batch["mask_BT"]
        logp_BT, _ = token_logprobs(model, tokens_BT, mask_BT, 1.0, chunk, start)
        on_BT = batch["target_BT"]
        count = jnp.maximum(on_BT.sum(), 1)
        return -jnp.sum(jnp.where(on_BT, logp_BT, 0.0)) / count, count

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    out = {"sft/loss": loss, "sft/tokens": count.astype(jnp.float32),
           "grad/norm": optax.tree.norm(grads)}  # fmt: skip
    return optax.apply_updates(params, updates), opt_state, out


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """The SFT phase of `config` in WORKDIR/sft (resuming its newest checkpoint); returns the
    HF folder of the trained model (at once, if the phase had finished)."""
    sampling = job.check_config(config)
    job.trim_after_compiles()
    workdir = pathlib.Path(workdir)
    phase, sft = workdir / "sft", config.sft
    out = phase / "model"
    if (out / "config.json").is_file():
        return out
    if not sft.steps:
        raise ValueError("sft.steps: 0, so there is no SFT phase to run")
    job.write_config(config, phase)
    mesh = job.mesh_of(config, sft.batch_size)

    folder = job.model_folder(config.model.path, workdir)
    model = job.trainable_model(folder, config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    graphdef, params = nnx.split(model)
    context, eos = model.cfg.max_position_embeddings, chat.eos_ids(folder, tokenizer)
    optimizer = make_optimizer(sft.optim)
    opt_state = init_opt_state(optimizer, params)

    train_file, val_file = job.data_files(config.data, workdir)
    skipped = []
    train = job.with_prompts(load_records(train_file), tokenizer, config.data, sampling, context,
                             skipped, train_file)  # fmt: skip
    train = with_targets(train, tokenizer, eos[0], sft.target_len, skipped, train_file)
    val = job.with_prompts(load_records(val_file), tokenizer, config.data, sampling, context,
                           skipped, val_file)  # fmt: skip
    (phase / "skipped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in skipped))
    heldout = job.heldout_items(val, config.eval.size, config.seed, sampling.buckets)
    iterator = iter(dataset(train, seed=config.seed))

    eval_sampler = Sampler(model, job.greedy(config, sampling), tokenizer, eos, mesh=mesh)
    in_shardings, out_shardings = step_shardings(params, opt_state, mesh)
    update = jax.jit(
        functools.partial(
            sft_step,
            graphdef,
            optimizer=optimizer,
            chunk=config.rl.logprob_chunk,
            width=sft.target_len,
        ),
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        donate_argnames=("params", "opt_state"),
    )

    mngr = checkpoint.manager(phase / "checkpoints", config.keep_checkpoints)
    state = {"params": params, "opt_state": opt_state}
    restored = checkpoint.restore(mngr, state, iterator)
    meta = {"step": 0}
    if restored is not None:
        _, state, meta = restored
        logging.info("sft: resumed from step %d (params %s)", meta["step"], meta["params_sha256"])
    params, opt_state, start = state["params"], state["opt_state"], meta["step"]

    writer = metrics.Writer(phase, start if restored is not None else -1)
    clock, evaluating = job.Clock(start, sft.steps), bool(config.eval.every)
    batch_eval = min(config.eval.batch_size, len(heldout))
    with jax.set_mesh(mesh):
        try:
            if evaluating and start == 0:
                job.evaluate(eval_sampler, params, heldout, config.data.fmt, writer, 0, batch_eval)
            for step in range(start + 1, sft.steps + 1):
                t0 = time.perf_counter()
                pairs = [next(iterator) for _ in range(sft.batch_size)]
                host = make_batch(pairs, sampling.buckets, sft.target_len)
                batch = jax.device_put(host, in_shardings[2])
                params, opt_state, m = update(params, opt_state, batch)
                m = jax.tree.map(float, jax.device_get(m))
                m |= {"time/step": time.perf_counter() - t0}
                m["sft/tokens_per_s"] = float(host["mask_BT"].sum()) / m["time/step"]
                writer.scalars(step, m)
                line = (f"sft step {step}/{sft.steps} | loss {m['sft/loss']:.3f} | "
                        f"{m['time/step']:.1f} s/step | ETA {clock.eta(step)}")  # fmt: skip
                print(f"{line:<110}", end="\r" if sys.stderr.isatty() else "\n",
                      file=sys.stderr, flush=True)  # fmt: skip
                if evaluating and step == sft.steps:  # before its checkpoint, as in fcrl.train
                    job.evaluate(eval_sampler, params, heldout, config.data.fmt, writer, step,
                                 batch_eval)  # fmt: skip
                if step % config.checkpoint_every == 0 or step == sft.steps:
                    meta = {"step": step, "params_sha256": checkpoint.fingerprint(params)}
                    checkpoint.save(mngr, step, {"params": params, "opt_state": opt_state},
                                    iterator, meta)  # fmt: skip
        finally:
            writer.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return export_hf(nnx.merge(graphdef, params), out, source=folder)


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    if config is None:
        sys.exit(job.fail("fcrl.sft", "--config is required, e.g. --config configs/demo.py"))
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        out = run(config, config.workdir)
    except (OSError, ValueError) as e:  # they name the file or field
        sys.exit(job.report_error("fcrl.sft", e, pathlib.Path(config.workdir) / "sft"))
    print(f"sft model: {out}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "a config file with an sft section",
                                    lock_config=True)  # fmt: skip
    app.run(main, flags_parser=functools.partial(job.parse_flags, "fcrl.sft"))
