"""fcrl.eval: the BFCL harness end to end on the tiny model (result files, both scorers, the
summary, resume after SIGKILL, bad input), and the early stop's claim on both checkers."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fcrl.eval import bfcl, harness
from fcrl.sampler import call_automaton

FRAGMENTS = ["You", " can", "[", "]", "f", "(", "a=1", ")", ",", " ", "\n", "`", "not ", ".", "#",
             "'", "1", "2. ", "Sure", ":", "python", "x", "=", "lambda", "{", "\u00a0", "\u3000",
             "중지는", "é", "？"]  # fmt: skip
SUFFIXES = ["", "(a=1)]", " f(a=1)]", "[f(a=1)]", "calculate_triangle_area(base=10, height=5)]",
            ") or g(a=2)", "\n[calculate_triangle_area(base=10, height=5)]"]  # fmt: skip


def fails(text: str) -> bool:
    delta, failed_S = call_automaton()
    state = 0
    for byte in text.encode():
        state = delta[state, byte]
    return bool(failed_S[state])


def test_the_call_automaton_only_ends_texts_whose_verdicts_are_fixed():
    """A text the automaton fails: with any continuation, both checkers find no call (AST item
    wrong, irrelevance item right). Right answers never fail."""
    from fcrl.verifier import verify

    simple = bfcl.load("simple_python")[0]  # calculate_triangle_area(base=10, height=5)
    irrelevant = bfcl.load("irrelevance")[0]
    rng = np.random.default_rng(0)
    failed = 0
    for _ in range(1500):
        text = "".join(rng.choice(FRAGMENTS, rng.integers(1, 7)))
        if not fails(text):
            continue
        failed += 1
        for suffix in SUFFIXES:
            full = text + suffix
            for entry, category, right in ((simple, "simple_python", False),
                                           (irrelevant, "irrelevance", True)):  # fmt: skip
                ours = verify(full, entry["ground_truth"], entry["function"], "bfcl").reward
                assert ours == right, (full, category)
                if not bfcl.evals_code(full):
                    assert bfcl.official_accepts(full, entry, category) == right, (full, category)
    assert failed > 300
    for right in ("[calculate_triangle_area(base=10, height=5)]", " ```\n[f(a=1)]```",
                  "calculate_triangle_area (base=10)", "[ math . sqrt(x=1)]",
                  "(f(a=1))"):  # fmt: skip
        assert not fails(right), right


def test_categories_and_aliases():
    assert harness.categories_of("irrelevance,simple_python") == ["simple_python", "irrelevance"]
    assert len(harness.categories_of("single_turn")) == 13
    assert "simple_java" not in harness.categories_of("python")
    with pytest.raises(ValueError, match="categories: unknown 'simple_rust'"):
        harness.categories_of("simple_python,simple_rust")


def test_buckets_reach_the_context():
    assert harness.buckets(8192, 512) == (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
                                          3072, 4096, 6144, 7680)  # fmt: skip
    with pytest.raises(ValueError, match="max_new_tokens"):
        harness.buckets(512, 500)


def test_a_seeded_sample_per_category_is_stable():
    entries = bfcl.load("parallel")
    a = harness.select(entries, 5, 0, "parallel")
    assert [e["id"] for e in a] == [e["id"] for e in harness.select(entries, 5, 0, "parallel")]
    assert a != harness.select(entries, 5, 1, "parallel") and len(a) == 5
    assert harness.select(entries, 0, 0, "parallel") == entries


def test_official_text_of_think_answer():
    assert harness.official_text("<think>x</think><answer>[f(a=1)]</answer>", "think_answer") \
        == "[f(a=1)]"  # fmt: skip
    assert harness.official_text("[f(a=1)]", "think_answer") == "[]"
    assert harness.official_text("x</think>[f(a=1)]", "think_answer") == "[]"
    assert harness.official_text("[f(a=1)]", "bfcl") == "[f(a=1)]"


def eval_command(workdir: pathlib.Path, model: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fcrl.eval", "--config", "configs/eval_bfcl.py",
            f"--config.workdir={workdir}", f"--config.model={model}", "--config.limit=3",
            "--config.max_new_tokens=24", "--config.batch_size=4", *extra]  # fmt: skip


def run_eval(*args, **kwargs) -> subprocess.CompletedProcess:
    root = pathlib.Path(__file__).resolve().parents[2]
    return subprocess.run(*args, cwd=root, capture_output=True, text=True, timeout=900, **kwargs)


def without_speed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "speed"}


@pytest.fixture(scope="module")
def whole(tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    """A `--config.limit=3` run over every single-turn category, uninterrupted: its workdir."""
    workdir = tmp_path_factory.mktemp("whole")
    done = run_eval(eval_command(workdir, tiny_model_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_limit_3_over_every_category(whole, tiny_model_dir):
    """BFCL's result layout (every id once), both verdicts on every item, the summary files."""
    summary = json.loads((whole / "summary.json").read_text())
    assert set(summary["categories"]) == set(bfcl.CATEGORIES)
    assert all(v["n"] == 3 for v in summary["categories"].values())
    # The agreement covers the 11 python categories; Java and JavaScript count by BFCL's.
    assert summary["agreement"]["items"] + summary["agreement"]["unchecked"] == 33
    for c in ("simple_java", "simple_javascript"):
        assert summary["categories"][c]["agreement"] is not None
    for category in bfcl.CATEGORIES:
        path = whole / "result" / tiny_model_dir.name / f"BFCL_v4_{category}_result.json"
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(
            e["id"] for e in harness.select(bfcl.load(category), 3, 0, category)
        )
        assert all(isinstance(r["result"], str) for r in rows)
    scores = [json.loads(x) for x in (whole / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 39 and all(s["reason"] for s in scores)
    assert (whole / "summary.png").stat().st_size > 10_000
    assert "Overall (paper" in (whole / "summary.md").read_text()
    again = run_eval(eval_command(whole, tiny_model_dir))  # all done: nothing generated
    assert again.returncode == 0 and json.loads((whole / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_same_results(whole, tiny_model_dir, tmp_path):
    """A run killed (SIGKILL) after its first results and started again: the same result files
    (no id twice, finished ids not generated again) and the same summary as `whole`'s."""
    root = pathlib.Path(__file__).resolve().parents[2]
    summary = json.loads((whole / "summary.json").read_text())
    killed = tmp_path / "killed"
    process = subprocess.Popen(eval_command(killed, tiny_model_dir), cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results = killed / "result" / tiny_model_dir.name
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        text = "".join(f.read_text() for f in results.glob("*_result.json"))
        if text.count("finish_reason") >= 4:  # a first batch generated
            break
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {f.name: f.read_text().splitlines() for f in results.glob("*_result.json")}
    again = run_eval(eval_command(killed, tiny_model_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    for f in results.glob("*_result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        assert len({r["id"] for r in rows}) == len(rows) == 3, f.name
        kept = [json.loads(x) for x in before.get(f.name, []) if x.endswith("}")]
        assert rows[: len(kept)] == kept[: len(rows)]  # finished ids were not generated again
        same = [json.loads(x) for x in (whole / "result" / tiny_model_dir.name / f.name)
                .read_text().splitlines()]  # fmt: skip
        assert sorted(rows, key=lambda r: r["id"]) == sorted(same, key=lambda r: r["id"])
    resumed = json.loads((killed / "summary.json").read_text())
    assert without_speed(resumed) == without_speed(summary)
    # Each batch's time is kept with its results: the killed session's batches count too (the
    # one it was killed in, at most, twice or not at all).
    assert abs(resumed["speed"]["prompts"] - summary["speed"]["prompts"]) <= 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.categories=simple_python,simple_rust"], "categories: unknown 'simple_rust'"),
        (["--config.fmt=tool_call"], "fmt: 'tool_call'"),
    ],
)
def test_bad_config_is_one_line_and_exit_code_2(tiny_model_dir, tmp_path, extra, message):
    done = run_eval(eval_command(tmp_path / "w", tiny_model_dir, *extra))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_model_that_does_not_load_is_one_line_and_exit_code_2(tmp_path):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"')  # cut short
    done = run_eval(eval_command(tmp_path / "w", model))
    assert done.returncode == 2 and "model:" in done.stderr and "broken" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_bfcl_eval_says_how_to_install_it(tiny_model_dir, tmp_path):
    hide = ("import importlib.util as u, runpy, sys; find = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'bfcl_eval' else find(n, *a); "
            "sys.argv = ['fcrl.eval', *sys.argv[1:]]; runpy.run_module('fcrl.eval', "
            "run_name='__main__')")  # fmt: skip
    done = run_eval([sys.executable, "-c", hide, *eval_command(tmp_path / "w", tiny_model_dir)[3:]])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install --no-deps bfcl-eval" in done.stderr and "Traceback" not in done.stderr


def test_multi_turn_entries_too_long_for_the_context_are_kept_as_failures(tiny_model_dir, tmp_path):
    """The tiny model's 4k context holds no multi-turn prompt (its tokenizer is per character):
    each entry is a result row with its reason, scored by the state checker as a failure."""
    done = run_eval(eval_command(tmp_path, tiny_model_dir, "--config.categories=multi_turn",
                                 "--config.limit=1"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["categories"]) == set(harness.mt.CATEGORIES)
    assert (
        summary["ours"]["multi_turn"]["value"] == 0.0
        and not summary["ours"]["multi_turn"]["missing"]
    )
    scores = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert all(s["reason"].startswith("prompt_too_long") and s["ours"] is None for s in scores)
