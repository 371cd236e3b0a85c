"""The RL job: records → prompts → G rollouts each → rewards → updates, checkpointed and resumable.

  python -m fcrl.train --config configs/egpo.py [--config.some.field=value] [--config.workdir=DIR]

`run(config, workdir)` is the loop (the same call tests and notebooks make); `main` turns flags
into it. The workdir holds config.json (and the git commit), metrics.jsonl and TensorBoard
events (tb/), completions.jsonl (sampled completions with rewards and reasons), batches.jsonl
(the record ids of every step), eval.jsonl (held-out outputs), checkpoints/ and summary.json
(`step`, `params_sha256`). Started again on a workdir that holds a checkpoint, it resumes there.

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
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import transformers
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from configs import prepare as prepare_config
from fcrl import chat, checkpoint, metrics, prepare
from fcrl.data.pipeline import dataset, load_records
from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir
from fcrl.models.tiny import tiny_checkpoint
from fcrl.rl.rollout import (
    make_batch,
    mini_batches,
    policy_logprobs,
    rollout_metrics,
    sequence_logprobs,
)
from fcrl.rl.train import (
    check_optim,
    check_rl,
    init_opt_state,
    make_optimizer,
    step_shardings,
    train_step,
)
from fcrl.sampler import FINISH, Rollouts, Sampler, SamplingConfig, token_pieces
from fcrl.sharding import BATCH, TRAIN_RULES, make_mesh
from fcrl.verifier import REASONS, Options, verify_batch

OLD_LOGPROBS = ("sampler", "recompute")


class NonFiniteLoss(RuntimeError):
    """The loss of a step is not finite: the run stops, its last checkpoint intact."""


# ---------------------------------------------------------------- config checks


def rl_section(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The objective's settings as the train step takes them: `rl`, with Dr.GRPO's constant,
    the generation budget, from `sampling` (so it is not a second knob)."""
    budget = {"completion_budget": config.sampling.max_new_tokens}
    return ml_collections.FrozenConfigDict(config.rl.to_dict() | budget)


def check_config(config: ml_collections.ConfigDict) -> SamplingConfig:
    """Raises ValueError naming the first bad field; returns the rollout sampling."""
    if config.data.fmt not in chat.FORMATS:
        raise ValueError(f"data.fmt: unknown {config.data.fmt!r}; expected one of {chat.FORMATS}")
    if config.old_logprobs not in OLD_LOGPROBS:
        raise ValueError(f"old_logprobs: unknown {config.old_logprobs!r}; expected {OLD_LOGPROBS}")
    positive = {
        "steps": config.steps,
        "prompts_per_step": config.prompts_per_step,
        "updates.epochs": config.updates.epochs,
        "updates.mini_batches": config.updates.mini_batches,
        "keep_checkpoints": config.keep_checkpoints,
        "log_every": config.log_every,
        "checkpoint_every": config.checkpoint_every,
    }
    for field, value in positive.items():
        if value < 1:
            raise ValueError(f"{field}: must be ≥ 1, got {value}")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype: expected float32 or bfloat16, got {config.model.dtype!r}")
    check_rl(rl_section(config))
    check_optim(config.optim)
    Options(fmt=config.data.fmt, shape=config.reward.shape)
    for field, value in {
        "completions_every": config.completions_every,
        "eval.every": config.eval.every,
        "eval.size": config.eval.size,
    }.items():
        if value < 0:
            raise ValueError(f"{field}: must be ≥ 0, got {value}")
    for field in ("train", "val"):
        path = config.data[field]
        if path != "generated" and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"data.{field}: no such file {path}")
    rows = config.prompts_per_step * config.rl.group_size
    if config.prompts_per_step % config.updates.mini_batches:
        raise ValueError(
            f"updates.mini_batches: {config.updates.mini_batches} must divide prompts_per_step "
            f"({config.prompts_per_step}): a mini-batch holds whole groups"
        )
    if (rows // config.updates.mini_batches) % config.rl.micro_batches:
        raise ValueError(
            f"rl.micro_batches: {config.rl.micro_batches} must divide the "
            f"{rows // config.updates.mini_batches} rows of a mini-batch"
        )
    return SamplingConfig(
        num_samples=config.rl.group_size,
        max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.rl.temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
        stop=("</answer>",) if config.data.fmt == "think_answer" else (),
        buckets=tuple(config.sampling.buckets),
    )


# ---------------------------------------------------------------- the run's inputs


def git_commit() -> str:
    """The source checkout's commit ("+dirty" with uncommitted changes), or "unknown"."""
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def model_folder(path: str, workdir: pathlib.Path) -> pathlib.Path:
    """The HF folder of `model.path`: a folder, "" (the embedded SmolLM2) or "tiny"."""
    if path == "tiny":
        folder = workdir / "tiny_model"
        return folder if (folder / "config.json").is_file() else tiny_checkpoint(folder)
    if not path:
        return default_model_dir()
    folder = pathlib.Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {folder} is not an HF checkpoint folder")
    return folder


def data_files(data: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[str, str]:
    """(train, val) files; "generated" prepares the embedded task set into WORKDIR/data once."""
    if "generated" not in (data.train, data.val):
        return data.train, data.val
    out = workdir / "data"
    if not (out / "summary.json").is_file():
        config = prepare_config.get_config()
        config.update(out=str(out), num_generated=data.num_generated)
        prepare.run(config)
    return tuple(str(out / f"{name}.jsonl") if f == "generated" else f
                 for name, f in (("train", data.train), ("val", data.val)))  # fmt: skip


def with_prompts(
    records: list[dict], tokenizer, fmt: str, sampling: SamplingConfig, context: int,
    skipped: list[dict], source: str,
) -> list[dict]:  # fmt: skip
    """The records with their rendered prompt ids; those too long for the largest bucket or the
    context are left out, into `skipped` with their reason."""
    out = []
    for i, record in enumerate(records):
        for key in ("messages", "tools", "ground_truth"):
            if key not in record:
                raise ValueError(f"{source}: record {i + 1} has no '{key}' (run fcrl.prepare)")
        ids = chat.render(tokenizer, record["messages"], record["tools"], fmt)
        if len(ids) > max(sampling.buckets) or len(ids) + sampling.max_new_tokens > context:
            skipped.append({"file": source, "id": record.get("id"), "reason": "prompt_too_long",
                            "detail": f"{len(ids)} tokens"})  # fmt: skip
            continue
        out.append({**record, "prompt_ids": ids})
    if not out:
        raise ValueError(f"{source}: no record fits sampling.buckets (max {max(sampling.buckets)})")
    return out


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
    sampling = check_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
        json.dumps(
            {"config": json.loads(config.to_json_best_effort()), "commit": git_commit()}, indent=2
        )
        + "\n"  # fmt: skip
    )
    rl = rl_section(config)
    g, p = config.rl.group_size, config.prompts_per_step

    # ------------------------------------------------------------ mesh
    shape = dict(config.mesh)
    # A mesh of fixed sizes may take the first devices only (e.g. 1 of 8 simulated ones).
    n = math.prod(shape.values()) if -1 not in shape.values() else len(jax.devices())
    mesh = make_mesh(shape, jax.devices()[:n])
    data_size = math.prod(mesh.shape.get(a, 1) for a in BATCH)
    if (p * g // config.updates.mini_batches) % data_size:
        raise ValueError(
            f"mesh: the data axes ({data_size} devices) must divide the "
            f"{p * g // config.updates.mini_batches} rows of a mini-batch"
        )

    # ------------------------------------------------------------ model
    folder = model_folder(config.model.path, workdir)
    model = load_hf(folder, mesh=mesh, rules=TRAIN_RULES, dtype=config.model.dtype,
                    param_dtype="float32")  # fmt: skip
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    graphdef, params = nnx.split(model)
    context = model.cfg.max_position_embeddings
    pieces = token_pieces(tokenizer, model.cfg.vocab_size)
    optimizer = make_optimizer(config.optim)
    opt_state = init_opt_state(optimizer, params)
    use_ref = config.rl.kl_coef > 0
    ref_params = jax.tree.map(jnp.copy, params) if use_ref else None  # frozen, sharded alike

    # ------------------------------------------------------------ data
    train_file, val_file = data_files(config.data, workdir)
    skipped = []
    train = with_prompts(load_records(train_file), tokenizer, config.data.fmt, sampling, context,
                         skipped, train_file)  # fmt: skip
    val = with_prompts(load_records(val_file), tokenizer, config.data.fmt, sampling, context,
                       skipped, val_file)  # fmt: skip
    (workdir / "skipped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in skipped))
    order = np.random.default_rng(config.seed).permutation(len(val))[: config.eval.size]
    heldout = [val[i] for i in sorted(order)]
    iterator = iter(dataset(train, seed=config.seed))

    # ------------------------------------------------------------ step functions
    sampler = Sampler(model, sampling, tokenizer, chat.eos_ids(folder, tokenizer), mesh=mesh)
    greedy = dataclasses.replace(sampling, num_samples=1, temperature=0.0,
                                 max_new_tokens=config.eval.max_new_tokens)  # fmt: skip
    eval_sampler = Sampler(model, greedy, tokenizer, chat.eos_ids(folder, tokenizer), mesh=mesh)
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
    logprobs = jax.jit(both, out_shardings=rows)  # old policy: log-probs and entropies
    ref_logprobs = jax.jit(lambda *args: both(*args)[0], out_shardings=rows)  # no entropies

    # ------------------------------------------------------------ restore
    mngr = checkpoint.manager(workdir / "checkpoints", config.keep_checkpoints)
    state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(
        jax.random.key(config.seed))}  # fmt: skip
    meta = {"step": 0, "skipped_updates": 0, "heldout": None}
    restored = checkpoint.restore(mngr, state, iterator)
    if restored is not None:
        _, state, meta = restored
        logging.info("resumed from step %d (params %s)", meta["step"], meta["params_sha256"])
    params, opt_state = state["params"], state["opt_state"]
    rng = jax.random.wrap_key_data(np.asarray(state["rng"]))  # uncommitted: any mesh
    start = meta["step"]

    # ------------------------------------------------------------ loop
    # The logs are cut back to the checkpoint's step (wholly when starting afresh).
    writer = metrics.Writer(workdir, start if restored is not None else -1)
    pending, clock = None, Clock(start, config.steps)
    with jax.set_mesh(mesh):
        try:
            if config.eval.every and start == 0:
                meta["heldout"] = evaluate(eval_sampler, params, heldout, config, writer, 0)
            for step in range(start + 1, config.steps + 1):
                jax.block_until_ready(params)  # the previous step's updates: its update time
                t0 = time.perf_counter()
                if pending is not None:
                    pending.host["time/update"] = t0 - pending.dispatched
                records = [next(iterator) for _ in range(p)]
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
                host_batch = make_batch(rollouts, rewards_B, pieces)
                batch = jax.device_put(host_batch, rows)
                t2 = time.perf_counter()
                host = rollout_metrics(rollouts, rewards_B, reasons_B, host_batch, t1 - t0, t2 - t1)
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
                writer.log("batches.jsonl", step, {"ids": [r.get("id") for r in records]})
                evaluating = config.eval.every and (
                    step % config.eval.every == 0 or step == config.steps
                )
                if evaluating or step % config.checkpoint_every == 0 or step == config.steps:
                    jax.block_until_ready(params)  # the update's time, then its metrics
                    pending.host["time/update"] = time.perf_counter() - pending.dispatched
                    meta = flush(pending, meta, writer, clock, config)
                    pending = None
                if evaluating:
                    meta["heldout"] = evaluate(eval_sampler, params, heldout, config, writer, step)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    meta = save(mngr, step, params, opt_state, rng, iterator, meta, writer)
        finally:
            writer.close()
    summary = {"step": meta["step"], "params_sha256": checkpoint.fingerprint(params),
               "skipped_updates": meta["skipped_updates"], "heldout": meta["heldout"],
               "workdir": str(workdir)}  # fmt: skip
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if sys.stderr.isatty():
        print(file=sys.stderr)  # ends the progress line
    return summary


class Clock:
    """Steps per second since the run (or its resume) started, and the ETA."""

    def __init__(self, start: int, total: int):
        self.start, self.total, self.t0 = start, total, time.perf_counter()

    def rate(self, step: int) -> float:
        return (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)

    def eta(self, step: int) -> str:
        seconds = int((self.total - step) / max(self.rate(step), 1e-9))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def flush(pending: Pending, meta: dict, writer: metrics.Writer, clock: Clock, config) -> dict:
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


def evaluate(sampler: Sampler, params, items: list[dict], config, writer, step: int) -> dict:
    """Greedy accuracy on the fixed held-out sample, its standard error, and the reasons of
    the zeros (fractions of all items); every output goes to eval.jsonl."""
    t0 = time.perf_counter()
    rewards, reasons = [], []
    for i in range(0, len(items), 8):
        chunk = items[i : i + 8]
        rollouts = sampler.sample(params, [r["prompt_ids"] for r in chunk])
        r_B, why_B = verify_batch(rollouts.texts, [r["ground_truth"] for r in chunk],
                                  [r["tools"] for r in chunk], config.data.fmt)  # fmt: skip
        for record, text, r, why in zip(chunk, rollouts.texts, r_B, why_B, strict=True):
            writer.log("eval.jsonl", step, {"id": record.get("id"), "text": text,
                                            "reward": float(r), "reason": str(why)})  # fmt: skip
        rewards += list(r_B)
        reasons += list(why_B)
    n, accuracy = len(rewards), float(np.mean(rewards)) if rewards else 0.0
    out = {"accuracy": accuracy, "n": n,
           "stderr": math.sqrt(accuracy * (1 - accuracy) / max(n - 1, 1))}  # fmt: skip
    zeros = {f"heldout/zero_{k}": float(np.mean(np.asarray(reasons) == k)) for k in REASONS
             if k != "ok" and k in reasons}  # fmt: skip
    seconds = {"time/eval": time.perf_counter() - t0}
    writer.scalars(step, {f"heldout/{k}": float(v) for k, v in out.items()} | zeros | seconds)
    return out


# ---------------------------------------------------------------- the command


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flags, with a bad flag, config file or override as one line and exit code 2."""
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        if name is not None and not pathlib.Path(name).is_file():
            sys.exit(_fail(f"--config: no such config file {name}"))
    try:
        return flags.FLAGS(argv)
    except (flags.Error, OSError, ValueError, TypeError) as e:
        sys.exit(_fail(f"{e}".splitlines()[0]))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no known field
        name = str(e).strip("\"'")
        given = [a for a in argv if a.startswith("--config.") and f".{name}" in a.split("=")[0]]
        sys.exit(_fail(f"unknown config field {given[0] if given else name!r}"))


def _fail(message: str) -> int:
    print(f"fcrl.train: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    if config is None:
        sys.exit(_fail("--config is required, e.g. --config configs/tiny.py"))
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = run(config, config.workdir)
    except (OSError, ValueError, NonFiniteLoss) as e:  # they name the file or field
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        workdir = pathlib.Path(config.workdir)
        if workdir.is_dir():  # the whole story, for when the line is not enough
            (workdir / "error.txt").write_text(traceback.format_exc())
            message += f" (traceback in {workdir / 'error.txt'})"
        sys.exit(_fail(message))
    print(json.dumps(summary))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "an RL config file", lock_config=True)
    app.run(main, flags_parser=parse_flags)
