"""BFCL evaluation: prompts rendered by fcrl.chat, greedy outputs from the sampler; every
single-turn output scored by our verifier and by BFCL's official checker, multi-turn entries run
as conversations on BFCL's backends (fcrl.eval.multi_turn) and scored by its state checker.

  python -m fcrl.eval --config configs/eval_bfcl.py --config.workdir=DIR

writes, in DIR:
- result/<model_name>/BFCL_v4_<category>_result.json: BFCL's own result layout, JSON lines
  {"id", "result"} with the model's raw text (and token counts), for its tools to re-score;
- scores.jsonl: one line per item, both verdicts and our reason;
- summary.json / summary.md / summary.png: accuracies per category, the aggregate scores, the
  agreement of the two scorers and every disagreement (fcrl.eval.report).
Ids already in the result files are not generated again: a killed run resumes where it stopped.
"""

import dataclasses
import itertools
import json
import os
import pathlib
import time
import zlib

import ml_collections
import numpy as np
import tqdm
import transformers
from absl import logging
from flax import nnx

from configs import eval_bfcl
from fcrl import chat, job
from fcrl.eval import bfcl, report
from fcrl.eval import multi_turn as mt
from fcrl.sampler import FINISH, Sampler, SamplingConfig
from fcrl.verifier import parse, verify
from fcrl.verifier.parse import Rejected

FORMATS = ("think_answer", "bfcl")  # the output formats BFCL's prompt-mode decoder can read
# Category names the config may use for a set of them.
ALIASES = {
    "single_turn": tuple(bfcl.CATEGORIES),
    "multi_turn": mt.CATEGORIES,
    "python": tuple(c for c, (_, lang) in bfcl.CATEGORIES.items() if lang == "python"),
}
ALL = (*bfcl.CATEGORIES, *mt.CATEGORIES)
# What the outputs depend on: a workdir's results are resumed only under the same values.
GENERATION = ("model", "fmt", "docs", "dtype", "max_new_tokens", "early_stop", "share")


def categories_of(spec: str) -> list[str]:
    """'a,b,…' (category names or ALIASES) -> category names, in BFCL's order."""
    names = set()
    for name in filter(None, (s.strip() for s in spec.split(","))):
        if name not in ALL and name not in ALIASES:
            raise ValueError(f"categories: unknown {name!r}; expected names from "
                             f"{[*ALIASES, *ALL]}")  # fmt: skip
        names.update(ALIASES.get(name, (name,)))
    if not names:
        raise ValueError("categories: none given")
    return [c for c in ALL if c in names]


def check_config(config: ml_collections.ConfigDict) -> list[str]:
    """Raises ValueError naming the first bad field; returns the categories."""
    if config.fmt not in FORMATS:
        raise ValueError(f"fmt: {config.fmt!r} is not one of {FORMATS} (BFCL's prompt-mode "
                         "decoder reads these)")  # fmt: skip
    chat.system_prompt([], config.fmt, config.docs)
    for field in ("batch_size", "batch_tokens", "max_new_tokens", "share"):
        if config[field] < 1:
            raise ValueError(f"{field}: must be ≥ 1, got {config[field]}")
    if config.limit < 0:
        raise ValueError(f"limit: must be ≥ 0 (0: every item), got {config.limit}")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: expected float32 or bfloat16, got {config.dtype!r}")
    categories = categories_of(config.categories)
    bfcl.data_dir()  # a missing bfcl-eval says so before the model loads
    return categories


def select(entries: list[dict], limit: int, seed: int, category: str) -> list[dict]:
    """A seeded sample of `limit` entries (all with 0), in file order; the same for a category
    whatever else the run holds."""
    if not limit or limit >= len(entries):
        return entries
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    return [entries[i] for i in sorted(rng.choice(len(entries), limit, replace=False))]


def buckets(context: int, max_new_tokens: int) -> tuple[int, ...]:
    """Prompt widths: steps of about 1.5× from 64 (a shared prompt's suffixes are short), then
    the widest the context leaves room for (BFCL's live prompts run to thousands of tokens)."""
    top = (context - max_new_tokens) // 64 * 64
    if top < 64:
        raise ValueError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {context}")  # fmt: skip
    steps = [64 * 2 ** (k // 2) * (3 if k % 2 else 2) // 2 for k in range(20)]  # 64, 96, 128…
    return tuple(sorted({*(b for b in steps if b < top), top}))


# ---------------------------------------------------------------- result files


def result_file(workdir: pathlib.Path, model_name: str, category: str) -> pathlib.Path:
    return workdir / "result" / model_name / f"BFCL_v4_{category}_result.json"


def read_results(path: pathlib.Path) -> dict[str, dict]:
    """id -> result row of a result file; a last line cut by a crash is dropped (atomically)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (ValueError, KeyError, TypeError):
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not a result row") from None
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{x}\n" for x in lines[:-1]), encoding="utf-8")
            os.replace(tmp, path)
    return rows


def append_results(path: pathlib.Path, rows: list[dict]) -> None:
    """One write per batch, flushed to disk before the next batch starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def check_settings(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """WORKDIR/generation.json: what the results were generated with; a resume must match it."""
    path = workdir / "generation.json"
    settings = {k: config[k] for k in GENERATION}
    if path.exists():
        held = json.loads(path.read_text())
        for k in GENERATION:
            if held.get(k) != settings[k]:
                raise ValueError(f"workdir: {workdir} holds results generated with "
                                 f"{k}={held.get(k)!r}, not {settings[k]!r}; use a new "
                                 "workdir")  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


# ---------------------------------------------------------------- generation


def batches(items: list[dict], widths: tuple[int, ...], batch_size: int, batch_tokens: int):
    """Batches of items of one prompt width each, widest first (a memory limit shows at once):
    `batch_tokens // width` rows (at most batch_size), the rest by `cuts`. A row's result does
    not depend on its batch-mates, only on the program's shapes."""
    by_width = {}
    for item in sorted(items, key=lambda x: (len(x["prompt_ids"]), x["category"], x["order"])):
        width = min(w for w in widths if w >= len(item["prompt_ids"]))
        by_width.setdefault(width, []).append(item)
    for width in sorted(by_width, reverse=True):
        rows = max(1, min(batch_size, batch_tokens // width))
        group = by_width[width]
        for i, size in cuts(len(group), rows):
            yield width, size, group[i : i + size]


def cuts(n: int, full: int) -> list[tuple[int, int]]:
    """(start, size) of batches over n items: `full` at a time, the rest in powers of two (no
    padding rows, and few batch sizes to compile)."""
    out, i = [], 0
    while i < n:
        size = full if n - i >= full else 1 << (n - i).bit_length() - 1
        out.append((i, size))
        i += size
    return out


def sample_batches(engine: "Engine", items: list[dict], config: ml_collections.ConfigDict):
    """Greedy completions of `items` in the fixed batches of `batches`: yields (batch, result
    rows, timing)."""
    for _, _, batch in batches(items, engine.widths, config.batch_size, config.batch_tokens):
        if not any(x["write"] for x in batch):
            continue
        t0 = time.perf_counter()
        ids = [x["prompt_ids"] for x in batch]
        out = engine.sampler.sample(engine.state, ids)
        rows = [result_row(x["id"], out, i, len(ids[i])) for i, x in enumerate(batch)]
        yield batch, rows, _timing(t0, rows)


def timing(workdir: pathlib.Path) -> dict:
    """The generation's figures summed over its batches, of every session (timing.jsonl: one
    line per batch, the first of a session with its compiling)."""
    path = workdir / "timing.jsonl"
    parts = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            parts.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    total = {k: sum(p[k] for p in parts) for k in ("seconds", "prompts", "prompt_tokens",
                                                    "new_tokens")}  # fmt: skip
    return total | {"prompts_per_s": total["prompts"] / max(total["seconds"], 1e-9)}


# ---------------------------------------------------------------- scoring


def official_text(text: str, fmt: str) -> str:
    """What BFCL's prompt-mode decoder reads of an output. In think_answer, as BFCL's handlers
    for thinking models do, the text after </think>, out of its <answer> tags; "[]" (no call)
    for a text that does not open with <think>, or has no </think>."""
    if fmt == "bfcl":
        return text
    _, sep, rest = text.partition("</think>")
    if not sep or not text.strip().startswith("<think>"):
        return "[]"
    return rest.strip().removeprefix("<answer>").removesuffix("</answer>")


def score_item(text: str, entry: dict, category: str, fmt: str) -> dict:
    """Our verdict (with its reason) and the official one (None where BFCL's decoder would
    eval() part of the text, which is never run)."""
    group, language = bfcl.CATEGORIES[category]
    if group == "relevance":  # right with any call
        try:
            calls = parse(text, fmt)
            ours, reason = bool(calls), "ok" if calls else "no_call"
        except Rejected as e:
            ours, reason = False, e.reason
    else:
        verdict = verify(text, entry["ground_truth"], entry["function"], fmt)
        ours, reason = verdict.reward == 1.0, verdict.reason
    answer = official_text(text, fmt)
    if language == "python" and bfcl.evals_code(answer):
        official = None
    else:
        official = bfcl.official_accepts(answer, entry, category)
    return {"ours": ours, "reason": reason, "official": official}


# ---------------------------------------------------------------- the job


@dataclasses.dataclass
class Engine:
    """The model, its tokenizer and a greedy sampler over the eval's prompt widths."""

    sampler: Sampler
    state: nnx.State
    tokenizer: transformers.PreTrainedTokenizerBase
    widths: tuple[int, ...]

    @classmethod
    def load(cls, model_dir: pathlib.Path, config: ml_collections.ConfigDict) -> "Engine":
        try:
            loaded = chat.ChatModel(model_dir, config.dtype, config.fmt)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"model: {model_dir} does not load ({e})") from e
        widths = tuple(config.buckets) or buckets(loaded.model.cfg.max_position_embeddings,
                                                  config.max_new_tokens)  # fmt: skip
        think = config.fmt == "think_answer"
        sampling = SamplingConfig(
            max_new_tokens=config.max_new_tokens,
            temperature=0.0,
            stop=("</answer>",) if think else (),
            buckets=widths,
            # Rows end once both verdicts are fixed (no call, whatever would follow).
            require_prefix="<think>" if think and config.early_stop else "",
            require_call=not think and config.early_stop,
            compact=True,  # a few long rows do not keep a wide batch decoding
        )
        sampler = Sampler(loaded.model, sampling, loaded.tokenizer, loaded.eos)
        return cls(sampler, loaded.state, loaded.tokenizer, widths)

    def prompt(self, messages: list[dict], tools: list[dict], config) -> list[int] | str:
        """The prompt's ids, or why it cannot run (kept, and scored as a failure)."""
        ids = chat.render(self.tokenizer, messages, tools, config.fmt, config.docs)
        if len(ids) > max(self.widths):
            return (f"prompt_too_long: {len(ids)} tokens > {max(self.widths)} (the context "
                    "less max_new_tokens)")  # fmt: skip
        return ids


def share_chunks(entries: list[dict], size: int) -> list[list[dict]]:
    """The category's entries in chunks of at most `size` with the same functions (so the same
    system prompt), in file order: each chunk's common prefix runs through the model once. A
    chunk depends on the data alone, so a resumed run computes every row as before."""
    groups = {}
    for entry in entries:
        groups.setdefault(json.dumps(entry["function"], sort_keys=True), []).append(entry)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), max(size, 1))]


def shared_batches(engine: Engine, units: list[dict], config):
    """Like `sample_batches` for units {prefix, members: [(item, suffix ids)]}: P units a call
    (`cuts`), each padded to `share` rows with repeats."""
    m = config.share

    def width(ids: list[int]) -> int:
        return min(w for w in engine.widths if w >= len(ids))

    by_shape = {}
    for unit in units:
        shape = (width(unit["prefix"]), max(width(s) for _, s in unit["members"]))
        by_shape.setdefault(shape, []).append(unit)
    for (wp, wq), group in sorted(by_shape.items(), reverse=True):
        p = max(1, min(config.batch_size // m, config.batch_tokens // (wp + m * wq)))
        for i, size in cuts(len(group), p):
            batch = group[i : i + size]
            if not any(x["write"] for u in batch for x, _ in u["members"]):
                continue
            t0 = time.perf_counter()
            suffixes = [s for u in batch for s in _rows(u["members"], m)]
            out = engine.sampler.sample(engine.state, suffixes,
                                        prefixes=[u["prefix"] for u in batch])  # fmt: skip
            items, rows = [], []
            for j, unit in enumerate(batch):
                for k, (item, suffix) in enumerate(unit["members"]):
                    r = j * m + k
                    items.append(item)
                    rows.append(result_row(item["id"], out, r, len(unit["prefix"]) + len(suffix)))
            yield items, rows, _timing(t0, rows)


def _rows(members: list, m: int) -> list[list[int]]:
    suffixes = [s for _, s in members]
    return suffixes + suffixes[:1] * (m - len(suffixes))


def result_row(item_id: str, out, row: int, prompt_tokens: int) -> dict:
    """Row `row` of the sampler's output as a BFCL result line."""
    return {"id": item_id, "result": out.texts[row], "input_token_count": prompt_tokens,
            "output_token_count": int(out.lengths_B[row]),
            "finish_reason": FINISH[out.finish_B[row]]}  # fmt: skip


def _timing(t0: float, rows: list[dict]) -> dict:
    return {"seconds": time.perf_counter() - t0, "prompts": len(rows),
            "prompt_tokens": sum(r["input_token_count"] for r in rows),
            "new_tokens": sum(r["output_token_count"] for r in rows)}  # fmt: skip


def single_turn(engine: Engine, entries: dict, done: dict, config, out) -> None:
    """Generates the entries the result files lack; `out(category, rows, timing)`. Entries with
    the same functions share their prompt's common prefix (`share` > 1)."""
    singles, units = [], []
    for c in (c for c in entries if c in bfcl.CATEGORIES):
        # Every entry is rendered and planned, done or not: the batches (and so each row's
        # program) are those of an uninterrupted run; batches with nothing to write are skipped.
        for order, chunk in enumerate(share_chunks(entries[c], config.share)):
            members = []
            for e in chunk:
                ids = engine.prompt(e["question"][0], e["function"], config)
                if isinstance(ids, str):  # kept, with its reason, and scored as a failure
                    if e["id"] not in done[c]:
                        out(c, [{"id": e["id"], "result": "", "error": ids}], None)
                    continue
                item = {"category": c, "order": order, "id": e["id"], "prompt_ids": ids,
                        "write": e["id"] not in done[c]}  # fmt: skip
                members.append(item)
            lcp = len(os.path.commonprefix([x["prompt_ids"] for x in members])) if members else 0
            lcp = min([lcp, *(len(x["prompt_ids"]) - 1 for x in members)])
            if len(members) > 1 and lcp >= 64:
                suffixes = [(x, x["prompt_ids"][lcp:]) for x in members]
                units.append({"prefix": members[0]["prompt_ids"][:lcp], "members": suffixes})
            else:
                singles += members
    # Progress in prompt tokens + budget per row written, shared prefixes counted in full.
    written = [x for x in singles if x["write"]]
    written += [x for u in units for x, _ in u["members"] if x["write"]]
    cost = sum(len(x["prompt_ids"]) + config.max_new_tokens for x in written)
    with tqdm.tqdm(total=cost, unit="tok", unit_scale=True, desc="bfcl single-turn",
                   mininterval=5, dynamic_ncols=True) as bar:  # fmt: skip
        for items, rows, timing in itertools.chain(
            shared_batches(engine, units, config), sample_batches(engine, singles, config)
        ):
            for c in dict.fromkeys(x["category"] for x in items):
                out(c, [r for x, r in zip(items, rows, strict=True)
                        if x["category"] == c and x["write"]], None)  # fmt: skip
            out(None, [], timing)
            bar.update(sum(r["input_token_count"] + config.max_new_tokens
                           for x, r in zip(items, rows, strict=True) if x["write"]))  # fmt: skip


def multi_turn_chats(engine: Engine, pending: list[tuple[str, int, dict]], config, out) -> None:
    """Runs the pending conversations in lockstep: each step one prompt per open conversation,
    in fixed batches; a finished conversation's row goes to `out` at once."""
    chats = [(c, order, mt.Conversation(entry, config.fmt)) for c, order, entry in pending]
    with tqdm.tqdm(total=len(chats), unit="entry", desc="bfcl multi-turn",
                   mininterval=5, dynamic_ncols=True) as bar:  # fmt: skip
        while chats:
            items = []
            for i, (c, order, chat_) in enumerate(chats):
                ids = engine.prompt(chat_.messages, chat_.functions, config)
                if isinstance(ids, str):
                    chat_.stop(ids)
                    continue
                items.append({"category": c, "order": (order, i), "id": chat_.entry["id"],
                              "prompt_ids": ids, "chat": chat_})  # fmt: skip
            for batch, rows, timing in sample_batches(engine, items, config):
                for x, row in zip(batch, rows, strict=True):
                    x["chat"].advance(row["result"])
                out(None, [], timing)
            for c, _, chat_ in chats:
                if chat_.done:
                    out(c, [chat_.result()], None)
                    bar.update(1)
            chats = [x for x in chats if not x[2].done]


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Generates what the result files lack, scores everything, writes the summary."""
    workdir = pathlib.Path(workdir)
    categories = check_config(config)
    entries = {c: select(mt.load(c) if c in mt.CATEGORIES else bfcl.load(c), config.limit,
                         config.seed, c) for c in categories}  # fmt: skip
    model_dir = job.model_folder(config.model, workdir)
    name = config.model_name or model_dir.name
    check_settings(workdir, config)
    job.write_config(config, workdir)

    def out(category: str | None, rows: list[dict], speed: dict | None) -> None:
        if rows:
            append_results(result_file(workdir, name, category), rows)
        if speed:
            append_results(workdir / "timing.jsonl", [speed])

    done = {c: read_results(result_file(workdir, name, c)) for c in categories}
    pending = [(c, i, e) for c in categories for i, e in enumerate(entries[c])
               if e["id"] not in done[c]]  # fmt: skip
    if pending:
        engine = Engine.load(model_dir, config)
        logging.info("bfcl: %d items to generate (%d done)", len(pending),
                     sum(map(len, done.values())))  # fmt: skip
        single_turn(engine, entries, done, config, out)
        multi_turn_chats(engine, [p for p in pending if p[0] in mt.CATEGORIES], config, out)

    scores = []
    for c in categories:
        results = read_results(result_file(workdir, name, c))
        for entry in entries[c]:
            row = results[entry["id"]]
            if c in mt.CATEGORIES:
                valid, reason = mt.score(row, entry)
                verdicts = {"ours": None, "reason": reason, "official": valid}
            else:
                verdicts = score_item(row["result"], entry, c, config.fmt)
            scores.append({"id": entry["id"], "category": c, **verdicts,
                           "text": row["result"]})  # fmt: skip
    with (workdir / "scores.jsonl").open("w", encoding="utf-8") as f:
        f.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in scores))
    summary = report.summarize(scores, categories, entries, config, name, timing(workdir))
    report.write(summary, workdir)
    return summary


def trainer_config(config: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """The BFCL check of a training run (`eval.bfcl_limit` > 0): a seeded sample of
    `eval.bfcl_limit` per category of `eval.bfcl_categories`, in the run's format, docs, dtype,
    seed and held-out budget."""
    bfcl_config = eval_bfcl.get_config()
    bfcl_config.update(model=model, categories=config.eval.bfcl_categories,
                       limit=config.eval.bfcl_limit, seed=config.seed, fmt=config.data.fmt,
                       docs=config.data.docs, dtype=config.model.dtype,
                       max_new_tokens=config.eval.max_new_tokens)  # fmt: skip
    try:
        check_config(bfcl_config)
    except ValueError as e:
        raise ValueError(f"eval.bfcl_limit: the run's BFCL check cannot run: {e}") from e
    return bfcl_config


def trainer_check(config: ml_collections.ConfigDict, phases: dict[str, pathlib.Path],
                  workdir: pathlib.Path) -> dict:  # fmt: skip
    """Runs the BFCL sample on each phase's HF folder, into WORKDIR/bfcl/<phase> (resumable,
    as any run); returns per phase our verifier's accuracy per category and the paper's
    Overall, the agreement with the official checker and the summary file."""
    out = {}
    for phase, folder in phases.items():
        summary = run(trainer_config(config, str(folder)), workdir / "bfcl" / phase)
        out[phase] = {
            "categories": {c: v["ours"] for c, v in summary["categories"].items()},
            "overall_paper": summary["ours"]["overall_paper"]["value"],
            "agreement": summary["agreement"]["fraction"],
            "summary": str(workdir / "bfcl" / phase / "summary.md"),
        }
    return out
