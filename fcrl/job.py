"""What the training jobs (fcrl.sft, fcrl.train) share: the run folder, the model and data they
start from, the greedy held-out evaluation and its paired comparison, the command line."""

import collections
import ctypes
import dataclasses
import functools
import json
import math
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import flags

from configs import prepare as prepare_config
from fcrl import chat, prepare
from fcrl.models.decoder import Decoder
from fcrl.models.gguf import default_model_dir
from fcrl.models.hf import load_hf
from fcrl.models.tiny import tiny_checkpoint
from fcrl.rl.train import check_optim, check_rl
from fcrl.sampler import Sampler, SamplingConfig
from fcrl.sharding import BATCH, TRAIN_RULES, make_mesh
from fcrl.verifier import REASONS, Options, verify_batch

KINDS = ("single", "multiple", "parallel", "parallel_multiple", "irrelevance")
OLD_LOGPROBS = ("sampler", "recompute")


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
    chat.system_prompt([], config.data.fmt, config.data.docs)  # data.docs
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
        "eval.bfcl_limit": config.eval.bfcl_limit,
    }.items():
        if value < 0:
            raise ValueError(f"{field}: must be ≥ 0, got {value}")
    for field in ("train", "val"):
        path = config.data[field]
        if path != "generated" and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"data.{field}: no such file {path}")
    if config.sft.steps < 0:
        raise ValueError(f"sft.steps: must be ≥ 0 (0: no SFT phase), got {config.sft.steps}")
    if config.sft.steps:
        for field in ("batch_size", "target_len"):
            if config.sft[field] < 1:
                raise ValueError(f"sft.{field}: must be ≥ 1, got {config.sft[field]}")
        check_optim(config.sft.optim)
    processes = jax.process_count()
    if (config.prompts_sampled or config.prompts_per_step) % processes:
        raise ValueError(f"prompts_sampled: {config.prompts_sampled or config.prompts_per_step} "
                         f"prompts a step do not split over {processes} processes (each reads "
                         "its part of the data)")  # fmt: skip
    if config.sft.steps and processes > 1:
        raise ValueError(
            "sft.steps: the SFT phase runs in one process; run it first (python -m "
            "fcrl.sft) and start RL from its model/ folder with sft.steps=0"
        )
    if config.prompts_sampled and config.prompts_sampled < config.prompts_per_step:
        raise ValueError(f"prompts_sampled: {config.prompts_sampled} is fewer than "
                         f"prompts_per_step ({config.prompts_per_step}); 0 = as many")  # fmt: skip
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
    return sampling_of(config)


def sampling_of(config: ml_collections.ConfigDict) -> SamplingConfig:
    """The rollouts' sampling: G per prompt at the RL temperature, stopping after </answer>."""
    return SamplingConfig(
        num_samples=config.rl.group_size,
        max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.rl.temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
        stop=("</answer>",) if config.data.fmt == "think_answer" else (),
        buckets=tuple(config.sampling.buckets),
        max_prompts=config.sampling.get("max_prompts", 0),
    )


def greedy(config: ml_collections.ConfigDict, sampling: SamplingConfig) -> SamplingConfig:
    """The held-out evaluation's sampling: one greedy completion of eval.max_new_tokens. In
    think_answer a row ends once it cannot open with <think> (the verifier's no_think either
    way): an untrained model's held-out pass costs its prefill, not its whole budget."""
    prefix = "<think>" if config.data.fmt == "think_answer" else ""
    return dataclasses.replace(sampling, num_samples=1, temperature=0.0, require_prefix=prefix,
                               max_new_tokens=config.eval.max_new_tokens)  # fmt: skip


@functools.cache
def trim_after_compiles() -> Callable | None:
    """From now on, hands the memory XLA's compiler frees back to the OS after each compile
    (glibc's malloc_trim; nothing where the C library has none). Left in the heap it adds to the
    peak of every later step: 0.4 GB in the bench's RL step (README, "Speed"). Returns the
    listener it registered with jax.monitoring (once a process), or None."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None

    def after(event: str, _seconds: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            trim(0)

    jax.monitoring.register_event_duration_secs_listener(after)
    return after


def mesh_of(config: ml_collections.ConfigDict, rows: int) -> jax.sharding.Mesh:
    """The config's mesh (fixed sizes may take the first devices only, e.g. 1 of 8 simulated
    ones); its data axes must divide the `rows` of a batch."""
    shape = dict(config.mesh)
    n = math.prod(shape.values()) if -1 not in shape.values() else len(jax.devices())
    mesh = make_mesh(shape, jax.devices()[:n])
    data = math.prod(mesh.shape.get(a, 1) for a in BATCH)
    if rows % data:
        raise ValueError(f"mesh: the data axes ({data} devices) must divide the {rows} rows of "
                         "a batch (a mini-batch of RL, sft.batch_size of SFT)")  # fmt: skip
    return mesh


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


def write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """WORKDIR/config.json: the resolved config and the commit it ran at."""
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = {"config": json.loads(config.to_json_best_effort()), "commit": git_commit()}
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")


def trainable_model(folder: pathlib.Path, config: ml_collections.ConfigDict, mesh) -> Decoder:
    """The checkpoint at `folder` placed for training on `mesh`: float32 parameters, the
    config's compute dtype and remat."""
    return load_hf(folder, mesh=mesh, rules=TRAIN_RULES, dtype=config.model.dtype,
                   param_dtype="float32", remat=config.model.get("remat", False))  # fmt: skip


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
        config.update(out=str(out), num_generated=data.num_generated,
                      distractors=data.distractors, max_calls=data.max_calls)  # fmt: skip
        prepare.run(config)
    return tuple(str(out / f"{name}.jsonl") if f == "generated" else f
                 for name, f in (("train", data.train), ("val", data.val)))  # fmt: skip


def with_prompts(
    records: list[dict], tokenizer, data: ml_collections.ConfigDict, sampling: SamplingConfig,
    context: int, skipped: list[dict], source: str,
) -> list[dict]:  # fmt: skip
    """The records with their rendered prompt ids and case kind; those too long for the largest
    bucket or the context are left out, into `skipped` with their reason."""
    out = []
    for i, record in enumerate(records):
        for key in ("messages", "tools", "ground_truth"):
            if key not in record:
                raise ValueError(f"{source}: record {i + 1} has no '{key}' (run fcrl.prepare)")
        ids = chat.render(tokenizer, record["messages"], record["tools"], data.fmt, data.docs)
        if len(ids) > max(sampling.buckets) or len(ids) + sampling.max_new_tokens > context:
            skipped.append({"file": source, "id": record.get("id"), "reason": "prompt_too_long",
                            "detail": f"{len(ids)} tokens"})  # fmt: skip
            continue
        out.append({**record, "prompt_ids": ids, "kind": case_kind(record)})
    if not out:
        raise ValueError(f"{source}: no record fits sampling.buckets (max {max(sampling.buckets)})")
    return out


def case_kind(record: dict) -> str:
    """BFCL's case kinds, read off the answer: no call (irrelevance), one call among one tool
    (single) or several (multiple), calls of one function (parallel) or of several."""
    names = [next(iter(call)) for call in record["ground_truth"]]
    if not names:
        return "irrelevance"
    if len(names) == 1:
        return "single" if len(record["tools"]) == 1 else "multiple"
    return "parallel" if len(set(names)) == 1 else "parallel_multiple"


def heldout_items(val: list[dict], size: int, seed: int, buckets: tuple[int, ...]) -> list[dict]:
    """The fixed held-out sample (seeded), ordered by prompt bucket, then by the length of the
    answer, so that a batch of greedy rows pads its prompts little and ends together."""
    order = np.random.default_rng(seed).permutation(len(val))[:size]

    def key(record: dict) -> tuple[int, int]:
        bucket = min(b for b in buckets if b >= len(record["prompt_ids"]))
        return bucket, len(json.dumps(record["ground_truth"]))

    return sorted((val[i] for i in order), key=key)


# ---------------------------------------------------------------- held-out evaluation


def evaluate(sampler: Sampler, params, items: list[dict], fmt: str, writer, step: int,
             batch: int) -> dict:  # fmt: skip
    """Greedy outputs of every item, `batch` prompts a call (the last call padded with repeats,
    so one program serves all), scored by the verifier; each output goes to eval.jsonl."""
    t0 = time.perf_counter()
    rows = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        prompts = [r["prompt_ids"] for r in chunk]
        texts = sampler.sample(params, prompts + prompts[:1] * (batch - len(chunk))).texts
        rewards, reasons = verify_batch(texts[: len(chunk)], [r["ground_truth"] for r in chunk],
                                        [r["tools"] for r in chunk], fmt)  # fmt: skip
        for record, text, reward, reason in zip(chunk, texts, rewards, reasons, strict=False):
            row = {"id": record.get("id"), "kind": record["kind"], "text": text,
                   "reward": float(reward), "reason": str(reason)}  # fmt: skip
            writer.log("eval.jsonl", step, row)
            rows.append(row)
    out = score(rows)
    flat = {f"heldout/{k}": out[k] for k in ("accuracy", "stderr", "n")}
    flat |= {f"heldout/{kind}": v["accuracy"] for kind, v in out["kinds"].items()}
    flat |= {f"heldout/zero_{k}": v for k, v in out["zeros"].items()}
    writer.scalars(step, flat | {"time/eval": time.perf_counter() - t0})
    return out


def score(rows: list[dict]) -> dict:
    """Accuracy, its standard error, n, accuracy per case kind, and the reasons of the zeros
    (fractions of all items)."""
    n = len(rows)
    accuracy = float(np.mean([r["reward"] for r in rows])) if rows else 0.0
    kinds = collections.defaultdict(list)
    for r in rows:
        kinds[r["kind"]].append(r["reward"])
    reasons = collections.Counter(r["reason"] for r in rows)
    return {
        "accuracy": accuracy,
        "n": n,
        "stderr": math.sqrt(accuracy * (1 - accuracy) / max(n - 1, 1)),
        "kinds": {
            k: {"accuracy": float(np.mean(kinds[k])), "n": len(kinds[k])}
            for k in KINDS
            if k in kinds
        },  # fmt: skip
        "zeros": {k: reasons[k] / n for k in REASONS if k != "ok" and reasons[k]},
    }


def eval_rows(workdir: pathlib.Path, which: str) -> list[dict] | None:
    """The rows of the first or last evaluation in WORKDIR/eval.jsonl (None: there is none)."""
    path = workdir / "eval.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not rows:
        return None
    step = (min if which == "first" else max)(r["step"] for r in rows)
    return [r for r in rows if r["step"] == step]


def mcnemar(before: list[dict], after: list[dict]) -> dict:
    """The exact McNemar test on the items whose verdict changed: b went 0 → 1, c went 1 → 0;
    p is the two-sided binomial tail of min(b, c) in b + c fair coin flips."""
    was = {r["id"]: r["reward"] > 0 for r in before}
    now = {r["id"]: r["reward"] > 0 for r in after}
    if was.keys() != now.keys():
        raise ValueError("mcnemar: the two evaluations are not on the same items")
    b = sum(now[i] and not was[i] for i in was)
    c = sum(was[i] and not now[i] for i in was)
    tail = sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c)
    return {"gained": b, "lost": c, "p_value": min(1.0, 2 * tail)}


def phases(workdir: pathlib.Path, with_sft: bool) -> dict | None:
    """The held-out results before SFT, after it and after RL (from the eval.jsonl of the SFT
    phase and of RL), and McNemar's test of RL against where RL started."""
    rl = eval_rows(workdir, "last")
    if rl is None:
        return None
    before = eval_rows(workdir / "sft", "first") if with_sft else eval_rows(workdir, "first")
    sft = eval_rows(workdir / "sft", "last") if with_sft else None
    versus = "rl vs sft" if sft else "rl vs before"
    return {"before": score(before), "sft": score(sft) if sft else None, "rl": score(rl),
            "mcnemar": {"versus": versus, **mcnemar(sft or before, rl)}}  # fmt: skip


def table(heldout: dict) -> str:
    """The before / SFT / RL accuracies per case kind, and the paired test, as text."""
    phases = [k for k in ("before", "sft", "rl") if heldout.get(k)]
    lines = [f"{'held-out (greedy)':<20}" + "".join(f"{p:>16}" for p in phases)]
    for kind in ("all", *KINDS):
        cells = []
        for p in phases:
            got = heldout[p] if kind == "all" else heldout[p]["kinds"].get(kind)
            cells.append(f"{got['accuracy']:.3f} ({got['n']})" if got else "")
        lines.append(f"{kind:<20}" + "".join(f"{c:>16}" for c in cells))
    lines.append(f"{'± stderr':<20}" + "".join(f"{heldout[p]['stderr']:>16.3f}" for p in phases))
    if test := heldout.get("mcnemar"):
        lines.append(f"McNemar, {test['versus']}: {test['gained']} items gained, {test['lost']} "
                     f"lost, p = {test['p_value']:.2g}")  # fmt: skip
    return "\n".join(lines)


class Clock:
    """Steps per second since the run (or its resume) started, and the ETA."""

    def __init__(self, start: int, total: int):
        self.start, self.total, self.t0 = start, total, time.perf_counter()

    def rate(self, step: int) -> float:
        return (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)

    def eta(self, step: int) -> str:
        seconds = int((self.total - step) / max(self.rate(step), 1e-9))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------- the command


def parse_flags(program: str, argv: list[str]) -> list[str]:
    """absl's flags, with a bad flag, config file or override as one line and exit code 2."""
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        if name is not None and not pathlib.Path(name).is_file():
            sys.exit(fail(program, f"--config: no such config file {name}"))
    try:
        return flags.FLAGS(argv)
    except (flags.Error, OSError, ValueError, TypeError) as e:
        sys.exit(fail(program, f"{e}".splitlines()[0]))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no known field
        name = str(e).strip("\"'")
        given = [a for a in argv if a.startswith("--config.") and f".{name}" in a.split("=")[0]]
        sys.exit(fail(program, f"unknown config field {given[0] if given else name!r}"))


def fail(program: str, message: str) -> int:
    print(f"{program}: error: {message}", file=sys.stderr)
    return 2


def report_error(program: str, error: Exception, workdir: pathlib.Path) -> int:
    """One line naming what failed (the traceback kept in WORKDIR/error.txt); exit code 2."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if workdir.is_dir():  # the whole story, for when the line is not enough
        (workdir / "error.txt").write_text(traceback.format_exc())
        message += f" (traceback in {workdir / 'error.txt'})"
    return fail(program, message)
