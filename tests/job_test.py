"""fcrl.job: case kinds read off the answer, the held-out scores per kind, McNemar's exact test
against values computed by hand, the before / SFT / RL table, the SFT config checks, and the
heap trimmed after each compile."""

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from fcrl import job
from fcrl.data import records, synth, validate

TOOL = {"name": "f", "parameters": {"type": "object", "properties": {}}}
G = {"name": "g", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    "ground_truth, tools, kind",
    [
        ([], [TOOL], "irrelevance"),
        ([{"f": {}}], [TOOL], "single"),
        ([{"f": {}}], [TOOL, G], "multiple"),
        ([{"f": {}}, {"f": {}}], [TOOL], "parallel"),
        ([{"f": {}}, {"g": {}}], [TOOL, G], "parallel_multiple"),
    ],
)
def test_case_kind(ground_truth, tools, kind):
    assert job.case_kind({"ground_truth": ground_truth, "tools": tools}) == kind


def generated(n: int, **knobs) -> list[tuple[str, dict]]:
    """(kind, record after stage 2) of n generated tasks."""
    out = []
    for item in synth.generate(n, seed=3, **knobs):
        row = {k: v for k, v in item.items() if k != "kind"}
        out.append((item["kind"], validate.validate(records.from_xlam(row, {}))))
    return out


def test_the_generated_kinds_are_recovered_from_the_answers():
    """Each generated task's kind (kept by synth) is what case_kind reads off its answer, once
    stage 2 has turned it into a record; the easier knobs offer fewer tools and calls."""
    for kind, record in generated(300, distractors=1, max_calls=2):
        assert job.case_kind(record) == kind
        assert len(record["tools"]) <= 3 and len(record["ground_truth"]) <= 2


def rows(rewards, kinds=None):
    kinds = kinds or ["single"] * len(rewards)
    return [{"id": str(i), "reward": float(r), "kind": k, "reason": "ok" if r else "wrong_value"}
            for i, (r, k) in enumerate(zip(rewards, kinds, strict=True))]  # fmt: skip


def test_mcnemar_is_the_exact_two_sided_binomial_test():
    # 10 items gained, 2 lost: p = 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096.
    before = rows([0] * 10 + [1] * 2 + [1] * 5 + [0] * 3)
    after = rows([1] * 10 + [0] * 2 + [1] * 5 + [0] * 3)
    test = job.mcnemar(before, after)
    assert (test["gained"], test["lost"]) == (10, 2)
    assert test["p_value"] == pytest.approx(158 / 4096, rel=1e-12)
    assert job.mcnemar(after, before)["p_value"] == test["p_value"]  # two-sided
    assert job.mcnemar(before, before) == {"gained": 0, "lost": 0, "p_value": 1.0}
    assert job.mcnemar(rows([0] * 5), rows([1] * 5))["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="same items"):
        job.mcnemar(before, after[:-1])


def test_score_per_kind_and_reasons():
    got = job.score(rows([1, 0, 1, 1], ["single", "single", "parallel", "irrelevance"]))
    assert got["accuracy"] == 0.75 and got["n"] == 4
    assert got["stderr"] == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    assert got["kinds"] == {"single": {"accuracy": 0.5, "n": 2},
                            "parallel": {"accuracy": 1.0, "n": 1},
                            "irrelevance": {"accuracy": 1.0, "n": 1}}  # fmt: skip
    assert got["zeros"] == {"wrong_value": 0.25}


def test_phases_read_the_logs(tmp_path):
    import json

    def write(folder, steps_rewards):
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"step": s, **r}) for s, rs in steps_rewards for r in rows(rs)]
        (folder / "eval.jsonl").write_text("\n".join(lines) + "\n")

    write(tmp_path / "sft", [(0, [0, 0, 0, 0]), (5, [1, 0, 0, 0])])
    write(tmp_path, [(3, [1, 1, 0, 0]), (6, [1, 1, 1, 1])])
    got = job.phases(tmp_path, with_sft=True)
    assert [got[k]["accuracy"] for k in ("before", "sft", "rl")] == [0.0, 0.25, 1.0]
    assert got["mcnemar"] == {"versus": "rl vs sft", "gained": 3, "lost": 0, "p_value": 0.25}
    assert job.phases(tmp_path, with_sft=False)["before"]["accuracy"] == 0.5
    text = job.table(got)
    assert "before" in text and "McNemar, rl vs sft: 3 items gained, 0 lost, p = 0.25" in text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sft.steps", -1, "sft.steps: must be ≥ 0"),
        ("sft.batch_size", 0, "sft.batch_size: must be ≥ 1"),
        ("sft.target_len", 0, "sft.target_len: must be ≥ 1"),
        ("data.docs", "yaml", "docs: 'yaml' is not one of"),
        ("prompts_sampled", 1, "prompts_sampled: 1 is fewer than prompts_per_step"),
    ],
)
def test_bad_sft_and_docs_fields_are_named(field, value, message):
    config = demo.get_config()
    *section, name = field.split(".")
    (config[section[0]] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        job.check_config(config)


def test_memory_is_trimmed_after_each_compile_only(monkeypatch):
    """The listener calls malloc_trim once a compile is done (counted through a stand-in libc),
    and not when a compiled program is merely called again."""
    calls = []

    class Libc:
        def malloc_trim(self, pad):
            calls.append(pad)

    x = jnp.ones(3)
    monkeypatch.setattr(job.ctypes, "CDLL", lambda _: Libc())
    listener = job.trim_after_compiles.__wrapped__()
    try:
        double = jax.jit(lambda x: 2 * x + 7)  # a new program: compiled here
        double(x).block_until_ready()
        assert calls == [0]
        double(x).block_until_ready()
        assert calls == [0]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
