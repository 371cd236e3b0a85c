"""The RL job: records → prompts → G rollouts each → rewards → updates, checkpointed and resumable.

  python -m fcrl.train --config configs/egpo.py [--config.some.field=value] [--config.workdir=DIR]

`run(config, workdir)` is the loop (the same call tests and notebooks make); `main` turns flags
into it. The workdir holds config.json (and the git commit), metrics.jsonl and TensorBoard
events (tb/), completions.jsonl (sampled completions with rewards and reasons), batches.jsonl
(the record ids of every step), eval.jsonl (held-out outputs), checkpoints/, and at the end
curves.png, the policy as an HF folder (model/) and summary.json (`step`, `params_sha256`, the
held-out accuracies before SFT, after it and after RL with McNemar's test; with `eval.bfcl_limit`,
BFCL on a sample, in bfcl/). With `sft.steps` > 0
the SFT phase (fcrl.sft) runs first, into WORKDIR/sft, unless it has finished there. Started
again on a workdir that holds a checkpoint, it resumes there.

The sampler reads the training parameters in their train sharding (fsdp × tensor): no second
copy of the weights is kept. Its programs gather each layer's shards as they run it, which on
one host costs little; a resharded sampling copy (SAMPLE_RULES) would save those gathers on a
pod at the price of a second set of weights, and is the performance issue's to weigh.
"""

import dataclasses
import functools
import json
import logging
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import transformers
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from fcrl import chat, checkpoint, job, metrics, sft
from fcrl.data.pipeline import dataset, load_records
from fcrl.eval import harness
from fcrl.models import export_hf
from fcrl.rl.rollout import (
    make_batch,
    mini_batches,
    policy_logprobs,
    rollout_metrics,
    sequence_logprobs,
    signal_groups,
)
from fcrl.rl.train import init_opt_state, make_optimizer, step_shardings, train_step
from fcrl.sampler import FINISH, Rollouts, Sampler, token_pieces
from fcrl.sharding import (
    global_order,
    initialize_distributed,
    is_main,
    main_first,
    to_host,
)
from fcrl.verifier import verify_batch


class NonFiniteLoss(RuntimeError):
    """The loss of a step is not finite: the run stops, its last checkpoint intact."""


# ---------------------------------------------------------------- the loop


@dataclasses.dataclass
class Pending:
    """A step's results not yet fetched from the devices (metrics are read one step late)."""

    step: int
    device: list[dict]  # one metrics dict per optimizer update
    host: dict[str, float]
    dispatched: float  # when its updates were dispatched


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains `config` in `workdir` (resuming from its newest checkpoint); returns the summary."""
    sampling = job.check_config(config)
    job.trim_after_compiles()
    if config.eval.bfcl_limit:
        harness.trainer_config(config, "")  # a bad BFCL check fails before training
    workdir = pathlib.Path(workdir)
    main = is_main()  # process 0 writes the run's files; every process checkpoints
    if main:
        job.write_config(config, workdir)
    rl = job.rl_section(config)
    g, p = config.rl.group_size, config.prompts_per_step
    sampled = config.prompts_sampled or p  # prompts rolled out per step, ≥ p
    mesh = job.mesh_of(config, p * g // config.updates.mini_batches)

    # ------------------------------------------------------------ model
    # With an SFT phase, RL starts from its model (trained first, or found done in WORKDIR/sft).
    folder = main_first(job.model_folder, config.model.path, workdir)
    start_folder = sft.run(config, workdir) if config.sft.steps else folder
    model = job.trainable_model(start_folder, config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    eos = chat.eos_ids(folder, tokenizer)
    graphdef, params = nnx.split(model)
    context = model.cfg.max_position_embeddings
    pieces = token_pieces(tokenizer, model.cfg.vocab_size)
    optimizer = make_optimizer(config.optim)
    opt_state = init_opt_state(optimizer, params)
    use_ref = config.rl.kl_coef > 0
    ref_params = jax.tree.map(jnp.copy, params) if use_ref else None  # frozen, sharded alike

    # ------------------------------------------------------------ data
    train_file, val_file = main_first(job.data_files, config.data, workdir)
    skipped = []
    train = job.with_prompts(load_records(train_file), tokenizer, config.data, sampling, context,
                             skipped, train_file)  # fmt: skip
    val = job.with_prompts(load_records(val_file), tokenizer, config.data, sampling, context,
                           skipped, val_file)  # fmt: skip
    if main:
        (workdir / "skipped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in skipped))
    heldout = job.heldout_items(val, config.eval.size, config.seed, sampling.buckets)
    batch_eval = min(config.eval.batch_size, len(heldout))
    # Each process reads its part of the data (indices into `train`); `global_order` joins them.
    iterator = iter(dataset(list(range(len(train))), seed=config.seed))
    per_process = sampled // jax.process_count()

    # ------------------------------------------------------------ step functions
    sampler = Sampler(model, sampling, tokenizer, eos, mesh=mesh)
    eval_sampler = Sampler(model, job.greedy(config, sampling), tokenizer, eos, mesh=mesh)
    in_shardings, out_shardings = step_shardings(params, opt_state, mesh)
    rows = in_shardings[2]
    update = jax.jit(
        functools.partial(train_step, graphdef, rl=rl, optimizer=optimizer),
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        donate_argnames=("params", "opt_state"),
    )
    both = functools.partial(sequence_logprobs, graphdef, temperature=config.rl.temperature,
                             chunk=config.rl.logprob_chunk)  # fmt: skip
    static = ("start", "group", "micro_batches")
    logprobs = jax.jit(both, out_shardings=rows, static_argnames=static)  # and entropies
    ref_logprobs = jax.jit(
        lambda *args, **columns: both(*args, **columns)[0],
        out_shardings=rows,
        static_argnames=static,
    )  # no entropies

    # ------------------------------------------------------------ restore
    mngr = checkpoint.manager(workdir / "checkpoints", config.keep_checkpoints)
    key_data = jax.random.key_data(jax.random.key(config.seed))
    state = {"params": params, "opt_state": opt_state,
             "rng": jax.device_put(key_data, NamedSharding(mesh, P()))}  # fmt: skip
    meta = {"step": 0, "skipped_updates": 0, "heldout": None}
    restored = checkpoint.restore(mngr, state, iterator)
    if restored is not None:
        _, state, meta = restored
        logging.info("resumed from step %d (params %s)", meta["step"], meta["params_sha256"])
    params, opt_state = state["params"], state["opt_state"]
    rng = jax.random.wrap_key_data(state["rng"])  # replicated over the mesh, as saved
    start = meta["step"]

    # ------------------------------------------------------------ loop
    # The logs are cut back to the checkpoint's step (wholly when starting afresh).
    writer = metrics.Writer(workdir, start if restored is not None else -1, enabled=main)
    pending, clock = None, job.Clock(start, config.steps)
    with jax.set_mesh(mesh):
        try:
            # The start's evaluation: the SFT phase's last one, when there is one.
            if config.sft.steps and start == 0 and config.eval.every:
                meta["heldout"] = job.score(job.eval_rows(workdir / "sft", "last"))
                writer.scalars(0, {"heldout/accuracy": meta["heldout"]["accuracy"]})
            elif config.eval.every and start == 0:
                meta["heldout"] = job.evaluate(eval_sampler, params, heldout, config.data.fmt,
                                               writer, 0, batch_eval)  # fmt: skip
            for step in range(start + 1, config.steps + 1):
                jax.block_until_ready(params)  # the previous step's updates: its update time
                t0 = time.perf_counter()
                if pending is not None:
                    pending.host["time/update"] = t0 - pending.dispatched
                local = [int(next(iterator)) for _ in range(per_process)]
                records = [train[i] for i in global_order(local)]
                rng, key = jax.random.split(rng)
                rollouts = sampler.sample(params, [r["prompt_ids"] for r in records], key)
                t1 = time.perf_counter()
                rewards_B, reasons_B = verify_batch(
                    rollouts.texts,
                    [r["ground_truth"] for r in records for _ in range(g)],
                    [r["tools"] for r in records for _ in range(g)],
                    config.data.fmt,
                    shape=config.reward.shape,
                )
                rolled = make_batch(rollouts, rewards_B, pieces)  # every rollout, for metrics
                groups = signal_groups(rewards_B, g, p)  # all of them without oversampling
                trained = (groups[:, None] * g + np.arange(g)).reshape(-1)  # their rows
                host_batch = jax.tree.map(lambda x, rows_=trained: x[rows_], rolled)
                batch = jax.device_put(host_batch, rows)
                t2 = time.perf_counter()
                host = rollout_metrics(rollouts, rewards_B, reasons_B, rolled, t1 - t0, t2 - t1)
                r_PG = rewards_B.reshape(-1, g)
                host["rollout/groups_with_signal"] = float(np.mean(r_PG.min(1) < r_PG.max(1)))
                batch, gaps = policy_logprobs(
                    batch, params, ref_params, logprobs, ref_logprobs, config
                )
                host |= gaps | {"time/logprobs": time.perf_counter() - t2}
                t3 = time.perf_counter()
                device = []
                for mini in mini_batches(batch, config.updates):
                    params, opt_state, m = update(params, opt_state, mini)
                    device.append(m)
                if pending is not None:
                    meta = flush(pending, meta, writer, clock, config)
                pending = Pending(step, device, host, t3)
                log_samples(writer, step, records, rollouts, rewards_B, reasons_B, config)
                writer.log("batches.jsonl", step, {"ids": [r.get("id") for r in records],
                                                   "trained": groups.tolist()})  # fmt: skip
                evaluating = config.eval.every and (
                    step % config.eval.every == 0 or step == config.steps
                )
                if evaluating or step % config.checkpoint_every == 0 or step == config.steps:
                    jax.block_until_ready(params)  # the update's time, then its metrics
                    pending.host["time/update"] = time.perf_counter() - pending.dispatched
                    meta = flush(pending, meta, writer, clock, config)
                    pending = None
                if evaluating:
                    meta["heldout"] = job.evaluate(eval_sampler, params, heldout, config.data.fmt,
                                                   writer, step, batch_eval)  # fmt: skip
                if step % config.checkpoint_every == 0 or step == config.steps:
                    meta = save(mngr, step, params, opt_state, rng, iterator, meta, writer)
        finally:
            writer.close()
    host_params = to_host(params)  # whole on every process (a collective), written by one
    fingerprint = checkpoint.fingerprint(host_params)
    if not main:
        return {"step": meta["step"], "params_sha256": fingerprint}
    export = export_hf(nnx.merge(graphdef, host_params), workdir / "model", source=folder)
    summary = {"step": meta["step"], "params_sha256": fingerprint,
               "skipped_updates": meta["skipped_updates"],
               "heldout": job.phases(workdir, bool(config.sft.steps)), "workdir": str(workdir),
               "curves": str(metrics.plot(workdir)), "model": str(export)}  # fmt: skip
    if config.eval.bfcl_limit:
        start = "sft" if config.sft.steps else "before"
        summary["bfcl"] = harness.trainer_check(config, {start: start_folder, "rl": export},
                                                workdir)  # fmt: skip
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if sys.stderr.isatty():
        print(file=sys.stderr)  # ends the progress line
    return summary


def flush(pending: Pending, meta: dict, writer: metrics.Writer, clock: job.Clock, config) -> dict:
    """Fetches a step's device metrics (averaged over its updates), stops on a non-finite loss,
    logs, prints progress."""
    updates = [jax.tree.map(float, jax.device_get(m)) for m in pending.device]
    for m in updates:
        if not m["update/skipped"] and not math.isfinite(m["loss/total"]):
            raise NonFiniteLoss(
                f"step {pending.step}: the loss is {m['loss/total']}; the newest checkpoint "
                f"(step {meta['step']}) is intact"
            )
    skipped = sum(m["update/skipped"] for m in updates)
    # A skipped update has no loss, gradient or ratios (NaN): only what came before it.
    done = [m for m in updates if not m["update/skipped"]] or updates
    row = {k: float(np.mean([m[k] for m in done])) for k in done[0] if k != "update/skipped"}
    row = {k: v for k, v in row.items() if math.isfinite(v)}
    row |= pending.host | {"update/skipped": skipped, "update/count": len(updates)}
    row["time/step"] = sum(v for k, v in pending.host.items() if k.startswith("time/"))
    row["train/steps_per_s"] = clock.rate(pending.step)
    meta = {**meta, "skipped_updates": meta["skipped_updates"] + int(skipped)}
    writer.scalars(pending.step, row)
    if pending.step % config.log_every == 0 or pending.step == config.steps:
        heldout = meta["heldout"]["accuracy"] if meta["heldout"] else float("nan")
        line = (
            f"step {pending.step}/{config.steps} | reward {row['reward/mean']:.3f} | "
            f"heldout {heldout:.3f} | entropy {row.get('entropy/mean', 0.0):.3f} | "
            f"kl {row.get('kl/mean', 0.0):.2e} | {row['rollout/tokens_per_s']:.0f} tok/s | "
            f"ETA {clock.eta(pending.step)}"
        )
        end = "\r" if sys.stderr.isatty() else "\n"
        if writer.enabled:
            print(f"{line:<110}", end=end, file=sys.stderr, flush=True)
    return meta


def log_samples(writer, step: int, records, rollouts: Rollouts, rewards_B, reasons_B, config):
    """Every `completions_every` steps, the first completions with their rewards and reasons."""
    if not config.completions_every or step % config.completions_every:
        return
    g = config.rl.group_size
    for i in range(min(config.completions_per_log, len(rollouts.texts))):
        writer.log("completions.jsonl", step, {
            "id": records[i // g].get("id"), "sample": i % g, "text": rollouts.texts[i],
            "reward": float(rewards_B[i]), "reason": str(reasons_B[i]),
            "finish": FINISH[rollouts.finish_B[i]],
        })  # fmt: skip


def save(mngr, step: int, params, opt_state, rng, iterator, meta: dict, writer) -> dict:
    """Checkpoint `step`; its fingerprint goes in the checkpoint's meta and metrics.jsonl."""
    t0 = time.perf_counter()
    meta = {**meta, "step": step, "params_sha256": checkpoint.fingerprint(params)}
    state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng)}
    checkpoint.save(mngr, step, state, iterator, meta)
    logging.info("checkpoint %d: params %s", step, meta["params_sha256"])
    writer.scalars(step, {"time/checkpoint": time.perf_counter() - t0})
    return meta


# ---------------------------------------------------------------- the command


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    if config is None:
        sys.exit(job.fail("fcrl.train", "--config is required, e.g. --config configs/tiny.py"))
    logging.getLogger("absl").setLevel(logging.WARNING)
    initialize_distributed()  # one of several processes: one program on the global mesh
    try:
        summary = run(config, config.workdir)
    except (OSError, ValueError, NonFiniteLoss) as e:  # they name the file or field
        sys.exit(job.report_error("fcrl.train", e, pathlib.Path(config.workdir)))
    if not is_main():
        return
    if summary["heldout"]:
        print(job.table(summary["heldout"]))
    print(f"run folder: {summary['workdir']} (summary.json, metrics.jsonl, eval.jsonl, tb/)")
    print(f"curves: {summary['curves']}")
    for phase, got in summary.get("bfcl", {}).items():
        cells = ", ".join(f"{c} {acc:.3f}" for c, acc in got["categories"].items())
        print(f"BFCL sample, {phase}: {cells} ({got['summary']})")
    print(
        f"policy (HF folder): {summary['model']}; try python -m fcrl.generate --model "
        f"{summary['model']}"
    )


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "an RL config file", lock_config=True)
    app.run(main, flags_parser=functools.partial(job.parse_flags, "fcrl.train"))
