"""The data pipeline of METHOD.md §5: read → stage 1 (LLM judge, iterative corrections) →
stage 2 (AST rules) → duplicates and a train/val split → stage 3 (LLM judge, final pass).

  python -m fcrl.prepare --config configs/prepare.py --config.input=PATH \\
      --config.format=xlam|bfcl|chat --config.judge=none|local|http --config.out=DIR

writes DIR/train.jsonl, DIR/val.jsonl, DIR/rejects.jsonl (every dropped or changed record with
its stage, reason and source line) and DIR/summary.json (kept / changed / dropped per reason per
stage, and read = kept + dropped), and prints the summary as a table. A bad record never stops a
run; judge verdicts are cached in DIR/judge_cache.jsonl, so a re-run asks nothing twice.
"""

import collections
import json
import os
import pathlib
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from fcrl.data import judge as judge_lib
from fcrl.data import records, synth, validate


def make_judge(config: ml_collections.ConfigDict, out: pathlib.Path) -> judge_lib.Judge | None:
    if config.judge == "none":
        return None
    if config.judge == "http":
        chat = judge_lib.HttpChat(config.judge_url, config.judge_name, config.judge_max_tokens)
    elif config.judge == "local":
        from fcrl.models.gguf import default_model_dir

        model_dir = pathlib.Path(config.judge_model or default_model_dir())
        chat = judge_lib.LocalChat(model_dir, config.judge_max_tokens)
    else:
        raise ValueError(f"judge: unknown {config.judge!r}; expected none, local or http")
    return judge_lib.Judge(chat, out / "judge_cache.jsonl")


def input_path(config: ml_collections.ConfigDict, out: pathlib.Path) -> pathlib.Path:
    """The input file; "generated" writes the embedded task set (xLAM layout) into `out`."""
    if config.input != "generated":
        return pathlib.Path(config.input)
    path = out / "generated.jsonl"
    items = synth.generate(config.num_generated, config.seed, config.distractors, config.max_calls)
    write_jsonl(path, [{k: v for k, v in item.items() if k != "kind"} for item in items])
    return path


def run(config: ml_collections.ConfigDict) -> dict:
    """Runs the pipeline; returns the summary (also written to out/summary.json)."""
    if config.format not in records.FORMATS:
        raise ValueError(f"format: unknown {config.format!r}; expected one of {records.FORMATS}")
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"val_fraction: must be in [0, 1), got {config.val_fraction}")
    if config.judge_rounds < 1 or config.judge_max_tokens < 1:
        raise ValueError("judge_rounds, judge_max_tokens: must be ≥ 1")
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    path = input_path(config, out)
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file {path}")
    judge = make_judge(config, out)
    counts = collections.defaultdict(collections.Counter)  # stage -> outcome -> n
    rejects, kept = [], []

    def drop(stage: str, record: dict, reason: str, detail: str = "") -> None:
        counts[stage][reason] += 1
        rejects.append({"stage": stage, "reason": reason, "detail": detail, "id": record.get("id"),
                        **record.get("provenance", {}), "record": record})  # fmt: skip

    units = list(records.read(path, config.format))
    seen = set()
    for i, record in enumerate(units):
        progress("prepare", i + 1, len(units))
        if record.get("stage") == "read":
            counts["read"][record["reason"]] += 1
            rejects.append(record)
            continue
        counts["read"]["kept"] += 1
        if judge is not None:
            record, outcome = judge_lib.stage1(
                judge, record, config.judge_rounds, config.keep_unjudged
            )
            if record is None:
                drop("stage1", units[i], outcome)
                continue
            counts["stage1"][outcome] += 1
            if outcome == "changed":
                change = {"stage": "stage1", "reason": "changed", "id": record["id"]}
                rejects.append(
                    {**change, **record["provenance"], "record": units[i], "kept": record}
                )
        try:
            record = validate.validate(record)
        except records.Bad as e:
            drop("stage2", record, e.reason, e.detail)
            continue
        key = validate.content_key(record)
        if key in seen:
            drop("stage2", record, "duplicate")
            continue
        seen.add(key)
        counts["stage2"]["kept"] += 1
        if judge is not None and config.judge_final:
            record, outcome = judge_lib.stage3(judge, record, config.keep_unjudged)
            if record is None:
                drop("stage3", units[i], outcome)
                continue
            counts["stage3"][outcome] += 1
        kept.append({**record, "split": validate.split_of(key, config.val_fraction)})
    print(file=sys.stderr)

    write_jsonl(out / "train.jsonl", [r for r in kept if r["split"] == "train"])
    write_jsonl(out / "val.jsonl", [r for r in kept if r["split"] == "val"])
    write_jsonl(out / "rejects.jsonl", rejects)
    dropped = sum(n for stage in counts.values() for k, n in stage.items() if k not in OUTCOMES)
    summary = {
        "input": str(path),
        "read": len(units),
        "kept": len(kept),
        "dropped": dropped,
        "train": sum(r["split"] == "train" for r in kept),
        "val": sum(r["split"] == "val" for r in kept),
        "stages": {stage: dict(c) for stage, c in counts.items()},
        "judge": {"asked": judge.asked, "cached": judge.cached} if judge else None,
    }
    assert summary["read"] == summary["kept"] + summary["dropped"], summary
    write_jsonl(out / "summary.json", [summary])
    return summary


OUTCOMES = ("kept", "changed", "abstained")  # what a stage counts besides drop reasons


def progress(label: str, done: int, total: int) -> None:
    if done == total or done % 100 == 0:
        width = 30
        bar = "#" * (width * done // max(total, 1))
        print(f"\r{label} [{bar:<{width}}] {done}/{total}", end="", file=sys.stderr, flush=True)


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    """Writes atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def table(summary: dict) -> str:
    """The summary as text: one row per (stage, outcome)."""
    lines = [
        f"read {summary['read']} = kept {summary['kept']} + dropped {summary['dropped']}"
        f"   (train {summary['train']}, val {summary['val']})",
        f"{'stage':<8}{'outcome':<26}{'n':>8}",
    ]
    for stage, outcomes in summary["stages"].items():
        for outcome, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
            lines.append(f"{stage:<8}{outcome:<26}{n:>8}")
    if summary["judge"]:
        lines.append(
            f"judge: asked {summary['judge']['asked']}, cached {summary['judge']['cached']}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    try:
        summary = run(flags.FLAGS.config)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"fcrl.prepare: error: {e}")
    print(table(summary))


if __name__ == "__main__":
    # Defined here, not at import: fcrl.train imports this module and has its own --config.
    config_flags.DEFINE_config_file("config", "configs/prepare.py", lock_config=True)
    app.run(main)
