"""fcrl.prepare end to end: malformed input never stops a run and every unit is accounted for;
the command; the HTTP judge against fcrl.serve; a SIGKILL in stage 1, then a re-run, gives the
uninterrupted run's outputs without asking the judge again for what it cached."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from configs.prepare import get_config
from fcrl import prepare
from fcrl.data import synth

ROOT = pathlib.Path(__file__).parents[1]


def config(**overrides):
    c = get_config()
    c.update(overrides)
    return c


def write_input(path: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
    lines = [
        json.dumps({k: v for k, v in it.items() if k != "kind"}) for it in synth.generate(n, seed)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_input_goes_to_rejects_and_counts_add_up(tmp_path):
    path = write_input(tmp_path / "in.jsonl", 20)
    with path.open("ab") as f:
        f.write(b'{"query": "broken\n{"query": "q", "tools": {}, "answers": "[]"}\n\xff\xfe\n')
    summary = prepare.run(config(input=str(path), out=str(tmp_path / "out")))
    assert summary["read"] == 23 == summary["kept"] + summary["dropped"]
    assert summary["stages"]["read"] == {
        "kept": 20,
        "bad_json": 1,
        "tools_not_a_list": 1,
        "not_utf8": 1,
    }
    rejects = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    read_rejects = [(r["line"], r["reason"]) for r in rejects if r["stage"] == "read"]
    assert read_rejects == [(21, "bad_json"), (22, "tools_not_a_list"), (23, "not_utf8")]
    train = (tmp_path / "out/train.jsonl").read_text().splitlines()
    val = (tmp_path / "out/val.jsonl").read_text().splitlines()
    assert len(train) + len(val) == summary["kept"]
    assert "read 23 = kept" in prepare.table(summary)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert prepare.run(config(input=str(empty), out=str(tmp_path / "o2")))["stages"]["read"] == {
        "empty_file": 1
    }


def test_the_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fcrl.prepare", "--config", "configs/prepare.py",
         "--config.num_generated=300", f"--config.out={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["read"] == 300 and "stage2" in out.stdout and "300/300" in out.stderr
    assert json.loads((tmp_path / "config.json").read_text())["num_generated"] == 300
    bad = subprocess.run(
        [sys.executable, "-m", "fcrl.prepare", "--config", "configs/prepare.py",
         "--config.input=/nonexistent.jsonl", f"--config.out={tmp_path}/x"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "/nonexistent.jsonl" in bad.stderr


def judged_command(path: pathlib.Path, out: pathlib.Path, url: str) -> list[str]:
    return [sys.executable, "-m", "fcrl.prepare", "--config", "configs/prepare.py",
            f"--config.input={path}", f"--config.out={out}", "--config.judge=http",
            f"--config.judge_url={url}", "--config.judge_max_tokens=8",
            "--config.judge_rounds=1"]  # fmt: skip


def outputs(out: pathlib.Path) -> dict:
    files = {
        name: (out / name).read_text() for name in ("train.jsonl", "val.jsonl", "rejects.jsonl")
    }
    summary = json.loads((out / "summary.json").read_text())
    return {**files, "summary": {k: v for k, v in summary.items() if k != "judge"}}


def test_sigkill_during_stage1_then_rerun_equals_an_uninterrupted_run(served, tmp_path):
    path = write_input(tmp_path / "in.jsonl", 24, seed=7)
    reference = subprocess.run(judged_command(path, tmp_path / "a", served), cwd=ROOT,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    asks = json.loads((tmp_path / "a/summary.json").read_text())["judge"]["asked"]
    assert asks == 48  # stage 1 and stage 3 for each of the 24 records

    cache = tmp_path / "b/judge_cache.jsonl"
    process = subprocess.Popen(judged_command(path, tmp_path / "b", served), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and (
        not cache.exists() or len(cache.read_text().splitlines()) < 5
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len([line for line in cache.read_text().splitlines() if line.endswith("}")])
    assert 5 <= done_before < asks and not (tmp_path / "b/summary.json").exists()

    resumed = subprocess.run(judged_command(path, tmp_path / "b", served), cwd=ROOT,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    judge = json.loads((tmp_path / "b/summary.json").read_text())["judge"]
    assert judge["cached"] >= done_before and judge["asked"] == asks - judge["cached"]
    assert outputs(tmp_path / "b") == outputs(tmp_path / "a")


def test_local_judge_end_to_end(tiny_model_dir, tmp_path):
    path = write_input(tmp_path / "in.jsonl", 4)
    summary = prepare.run(config(input=str(path), out=str(tmp_path / "out"), judge="local",
                                 judge_model=str(tiny_model_dir), judge_max_tokens=8))  # fmt: skip
    assert summary["judge"] == {"asked": 8, "cached": 0}
    assert summary["read"] == summary["kept"] + summary["dropped"]
