"""The rollout engine on tiny random models: cache = no cache, recorded = recomputed
log-probabilities, sharded = unsharded, no recompiles, stops, seeds, and bad input."""

import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from fcrl import sampler as sampler_lib
from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir
from fcrl.sampler import FINISH, Sampler, SamplingConfig
from fcrl.sharding import SAMPLE_RULES, make_mesh, shardings
from tests.models import tiny

# Three prompt lengths in one batch, all in the 32 bucket.
PROMPTS = [[5, 17, 3], list(range(20, 37)), [int(x) for x in np.arange(30) * 7 % 90]]


@functools.partial(jax.jit, static_argnames=("graphdef", "new"))
def argmax_loop(graphdef, state, tokens_BT, mask_BT, new):
    """Reference: a full forward over the whole buffer at every step, no cache."""
    model = nnx.merge(graphdef, state)
    start = tokens_BT.shape[1] - new

    def step(i, carry):
        tokens_BT, mask_BT = carry
        logits_BV = model(tokens_BT, mask_BT)[:, start + i - 1]
        tokens_BT = tokens_BT.at[:, start + i].set(jnp.argmax(logits_BV, -1).astype(jnp.int32))
        return tokens_BT, mask_BT.at[:, start + i].set(True)

    return jax.lax.fori_loop(0, new, step, (tokens_BT, mask_BT))[0][:, start:]


def reference_greedy(model, state, prompts, new):
    width = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width + new), np.int32)
    mask = np.zeros_like(tokens, bool)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids) : width], mask[row, width - len(ids) : width] = ids, True
    return np.asarray(argmax_loop(nnx.graphdef(model), state, tokens, mask, new))


def teacher_forced(model, state, rollouts, temperature):
    """Log-probabilities and entropies of the sampled tokens from one forward over each row."""
    tokens = np.concatenate([rollouts.prompt_BS, rollouts.tokens_BN], axis=1)
    n = rollouts.tokens_BN.shape[1]
    completion = np.arange(n)[None] < rollouts.lengths_B[:, None]
    mask = np.concatenate([rollouts.prompt_mask_BS, completion], axis=1)
    logits = nnx.merge(nnx.graphdef(model), state)(jnp.asarray(tokens), jnp.asarray(mask))
    logp = jax.nn.log_softmax(logits[:, -n - 1 : -1] / temperature, axis=-1)
    chosen = jnp.take_along_axis(logp, jnp.asarray(rollouts.tokens_BN)[..., None], -1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return np.asarray(chosen), np.asarray(entropy), completion


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_greedy_equals_a_no_cache_argmax_loop(kind):
    model, state = tiny.random_model(kind)
    sampling = SamplingConfig(num_samples=2, max_new_tokens=64, temperature=0, buckets=(32,))
    rollouts = Sampler(model, sampling, None, []).sample(state, PROMPTS)
    expected = reference_greedy(model, state, PROMPTS, 64)
    np.testing.assert_array_equal(rollouts.tokens_BN, np.repeat(expected, 2, axis=0))
    assert (rollouts.lengths_B == 64).all()
    assert [FINISH[f] for f in rollouts.finish_B] == ["length"] * 6


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(num_samples=3, max_new_tokens=24, temperature=0.7),
        SamplingConfig(num_samples=2, max_new_tokens=24, temperature=1.3, top_k=5, top_p=0.8),
    ],
    ids=["t0.7", "t1.3-topk-topp"],
)
def test_recorded_logprobs_equal_a_teacher_forced_recompute(sampling):
    model, state = tiny.random_model("qwen2")
    rollouts = Sampler(model, sampling, None, [3]).sample(state, PROMPTS, seed=4)
    logp, entropy, valid = teacher_forced(model, state, rollouts, sampling.temperature)
    assert rollouts.logprobs_BN.dtype == np.float32
    assert np.abs(rollouts.logprobs_BN - logp)[valid].max() <= 1e-4
    assert np.abs(rollouts.entropies_BN - entropy)[valid].max() <= 1e-4
    assert not rollouts.logprobs_BN[~valid].any() and not rollouts.tokens_BN[~valid].any()


def test_bf16_weights_and_cache_stay_close_to_float32():
    model, state = tiny.random_model("qwen2")
    bf16_model, _ = tiny.random_model("qwen2")
    bf16_model.cfg = dataclasses.replace(model.cfg, dtype="bfloat16", param_dtype="bfloat16")
    bf16_state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)
    sampling = SamplingConfig(num_samples=2, max_new_tokens=16, temperature=1.0)
    rollouts = Sampler(bf16_model, sampling, None, []).sample(bf16_state, PROMPTS, seed=3)
    assert rollouts.logprobs_BN.dtype == np.float32
    same, _, valid = teacher_forced(bf16_model, bf16_state, rollouts, 1.0)
    f32, _, _ = teacher_forced(model, state, rollouts, 1.0)
    # bf16 rounding differs between the cached and the full forward: a loose mean bound.
    assert np.abs(rollouts.logprobs_BN - same)[valid].mean() < 0.05
    assert np.abs(rollouts.logprobs_BN - f32)[valid].mean() < 0.15


def test_top_k_and_top_p_only_sample_the_allowed_tokens():
    model, state = tiny.random_model("llama_tied")
    top_k = SamplingConfig(num_samples=4, max_new_tokens=16, temperature=2.0, top_k=3)
    top_p = SamplingConfig(num_samples=4, max_new_tokens=16, temperature=2.0, top_p=0.3)
    for sampling in (top_k, top_p):
        rollouts = Sampler(model, sampling, None, []).sample(state, PROMPTS, seed=1)
        tokens = np.concatenate([rollouts.prompt_BS, rollouts.tokens_BN], axis=1)
        mask = np.concatenate([rollouts.prompt_mask_BS, np.ones_like(rollouts.tokens_BN, bool)], 1)
        logits = nnx.merge(nnx.graphdef(model), state)(jnp.asarray(tokens), jnp.asarray(mask))
        probs = np.asarray(jax.nn.softmax(logits[:, -17:-1] / 2.0, axis=-1))
        chosen = np.take_along_axis(probs, rollouts.tokens_BN[..., None], -1)
        rank = (probs > chosen).sum(-1)  # likelier tokens than the sampled one
        mass_before = np.where(probs > chosen, probs, 0).sum(-1)
        if sampling.top_k:
            assert rank.max() < 3
        else:
            assert mass_before.max() < 0.3
        assert rank.max() > 0  # it does sample, not only take the argmax


def test_sharded_decoding_equals_unsharded():
    model, state = tiny.random_model("qwen3")
    sampling = SamplingConfig(num_samples=2, max_new_tokens=20, temperature=0.9)
    prompts = PROMPTS + [[9, 9, 9, 9]]
    expected = Sampler(model, sampling, None, []).sample(state, prompts, seed=2)
    greedy = SamplingConfig(num_samples=2, max_new_tokens=20, temperature=0)
    expected_greedy = Sampler(model, greedy, None, []).sample(state, prompts)
    for shape in ({"data": 2, "tensor": 4}, {"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}):
        mesh = make_mesh(shape)
        sharded = jax.device_put(state, shardings(state, SAMPLE_RULES, mesh))
        got = Sampler(model, sampling, None, [], mesh=mesh).sample(sharded, prompts, seed=2)
        np.testing.assert_array_equal(got.tokens_BN, expected.tokens_BN)
        # float32 reductions in another order on another mesh: ~1e-5 of noise, 10x of room.
        np.testing.assert_allclose(got.logprobs_BN, expected.logprobs_BN, rtol=1e-4, atol=1e-4)
        got = Sampler(model, greedy, None, [], mesh=mesh).sample(sharded, prompts)
        np.testing.assert_array_equal(got.tokens_BN, expected_greedy.tokens_BN)


def test_new_parameter_values_and_prompt_lengths_do_not_recompile():
    model, state = tiny.random_model("llama3_untied")
    sampler = Sampler(model, SamplingConfig(num_samples=2, max_new_tokens=8), None, [])
    first = sampler.sample(state, PROMPTS)
    sizes = sampler_lib.prefill._cache_size(), sampler_lib.decode._cache_size()
    other = jax.tree.map(lambda x: x * 1.5, state)
    second = sampler.sample(other, [p[::-1][:11] for p in PROMPTS])  # same bucket, new lengths
    assert (sampler_lib.prefill._cache_size(), sampler_lib.decode._cache_size()) == sizes
    assert (first.tokens_BN != second.tokens_BN).any()


def test_compacting_finished_prompts_away_gives_the_same_rows(monkeypatch):
    """Rows ending at scattered lengths (one eos id in 12): decoding only the prompts still
    running, in ever smaller batches, gives every row's tokens, log-probs and ends unchanged."""
    model, state = tiny.random_model("qwen2")
    prompts = [[(7 * i + j) % 90 + 1 for j in range(3 + i % 5)] for i in range(16)]
    eos = list(range(0, model.cfg.vocab_size, 12))
    sampling = SamplingConfig(num_samples=2, max_new_tokens=48, temperature=0.8, buckets=(8,))
    plain = Sampler(model, sampling, None, eos).sample(state, prompts, seed=1)
    stages = []
    keep = sampler_lib.keep_prompts
    monkeypatch.setattr(sampler_lib, "keep_prompts",
                        lambda prompt, s, keep_P, g: stages.append(len(keep_P)) or keep(
                            prompt, s, keep_P, g=g))  # fmt: skip
    compact = dataclasses.replace(sampling, compact=True)
    cut = Sampler(model, compact, None, eos).sample(state, prompts, seed=1)
    assert stages and stages == sorted(stages, reverse=True) and stages[-1] < 4, stages
    assert len(set(plain.lengths_B.tolist())) > 5  # the ends are scattered
    np.testing.assert_array_equal(cut.tokens_BN, plain.tokens_BN)
    np.testing.assert_array_equal(cut.lengths_B, plain.lengths_B)
    np.testing.assert_array_equal(cut.finish_B, plain.finish_B)
    np.testing.assert_allclose(cut.logprobs_BN, plain.logprobs_BN, atol=1e-5)
    np.testing.assert_allclose(cut.entropies_BN, plain.entropies_BN, atol=1e-5)


def test_prompts_in_parts_are_each_parts_own_sample():
    """max_prompts = 2 over 6 prompts: three parts, each what sampling its prompts alone gives
    with the seed's key folded by the part's index (same bucket, same rows), joined in order."""
    model, state = tiny.random_model("qwen2")
    prompts = [[(5 * i + j) % 90 + 1 for j in range(2 + i)] for i in range(6)]
    sampling = SamplingConfig(num_samples=2, max_new_tokens=16, temperature=0.8, buckets=(8,))
    key = jax.random.key(3)
    parts = Sampler(model, dataclasses.replace(sampling, max_prompts=2), None, [5]).sample(
        state, prompts, key
    )
    alone = Sampler(model, sampling, None, [5])
    for k in range(3):
        want = alone.sample(state, prompts[2 * k : 2 * k + 2], jax.random.fold_in(key, k))
        rows = slice(4 * k, 4 * k + 4)
        np.testing.assert_array_equal(parts.tokens_BN[rows], want.tokens_BN)
        np.testing.assert_array_equal(parts.lengths_B[rows], want.lengths_B)
        np.testing.assert_array_equal(parts.prompt_BS[rows], want.prompt_BS)
        np.testing.assert_allclose(parts.logprobs_BN[rows], want.logprobs_BN, atol=1e-6)
    assert len({tuple(row) for row in parts.tokens_BN}) == 12


def test_seeds_reproduce_and_rows_of_a_group_differ():
    model, state = tiny.random_model("qwen2")
    sampler = Sampler(model, SamplingConfig(num_samples=4, max_new_tokens=12), None, [])
    a, b, c = (sampler.sample(state, PROMPTS[:1], seed=s).tokens_BN for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert len({tuple(row) for row in a}) == 4


def test_eos_ends_a_row_and_keeps_the_eos_token():
    model, state = tiny.random_model("llama_tied")
    greedy = reference_greedy(model, state, PROMPTS, 10)
    eos = int(greedy[1, 3])
    first = [int(np.flatnonzero(row == eos)[0]) if eos in row else None for row in greedy]
    sampling = SamplingConfig(max_new_tokens=10, temperature=0)
    rollouts = Sampler(model, sampling, None, [eos]).sample(state, PROMPTS)
    for row, end in enumerate(first):
        if end is None:
            assert FINISH[rollouts.finish_B[row]] == "length"
            continue
        assert FINISH[rollouts.finish_B[row]] == "eos"
        assert rollouts.lengths_B[row] == end + 1
        assert rollouts.tokens_BN[row, end] == eos and not rollouts.tokens_BN[row, end + 1 :].any()


def test_a_stop_string_across_tokens_ends_the_row_and_stays_in_the_text():
    model, state = tiny.random_model("qwen3")
    tokenizer = tiny.char_tokenizer()
    base = SamplingConfig(max_new_tokens=30, temperature=0)
    free = Sampler(model, base, tokenizer, []).sample(state, PROMPTS)
    text = free.texts[0]
    assert 95 not in free.tokens_BN[0, :9]  # one character per token up to the stop
    stop = text[6:9]  # three characters, so three tokens
    sampling = SamplingConfig(max_new_tokens=30, temperature=0, stop=(stop, "never seen"))
    rollouts = Sampler(model, sampling, tokenizer, []).sample(state, PROMPTS)
    end = text.index(stop) + len(stop)
    assert rollouts.texts[0] == text[:end]
    assert FINISH[rollouts.finish_B[0]] == "stop" and rollouts.lengths_B[0] == end
    for row in (1, 2):  # the other rows stop at their own first match, or run to the end
        want = text_end = free.texts[row]
        if stop in text_end:
            want = text_end[: text_end.index(stop) + len(stop)]
        assert rollouts.texts[row] == want


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text("abc", max_size=3).map(str.encode), min_size=1, max_size=8),
    stops=st.lists(st.text("ab", min_size=1, max_size=4), min_size=1, max_size=3),
    ids=st.lists(st.integers(0, 7), max_size=20),
)
def test_stop_table_agrees_with_searching_the_decoded_text(pieces, stops, ids):
    ids = [i % len(pieces) for i in ids]
    table, accept = sampler_lib.stop_table(pieces, stops)
    state = 0
    for n in range(len(ids) + 1):
        text = b"".join(pieces[i] for i in ids[:n]).decode()
        assert bool(accept[state]) == any(s in text for s in stops)
        if n < len(ids):
            state = table[state, ids[n]]


def test_token_pieces_concatenate_to_the_decoded_text_of_the_real_tokenizer():
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    pieces = sampler_lib.token_pieces(tokenizer, 49152)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, 49152, 12).tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace") == text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_new_tokens", 0, "sampling.max_new_tokens must be positive, got 0"),
        ("temperature", -0.1, "sampling.temperature must be >= 0, got -0.1"),
        ("top_p", 0.0, "sampling.top_p must be in (0, 1], got 0.0"),
        ("top_p", 1.5, "sampling.top_p must be in (0, 1], got 1.5"),
        ("top_k", -1, "sampling.top_k must be >= 0, got -1"),
        ("num_samples", 0, "sampling.num_samples must be >= 1, got 0"),
        ("cache_dtype", "fp8", "sampling.cache_dtype is not a dtype, got 'fp8'"),
    ],
)
def test_bad_sampling_values_name_the_field(field, value, message):
    with pytest.raises(ValueError) as error:
        SamplingConfig(**{field: value})
    assert str(error.value) == message


def test_bad_prompts_name_their_index_and_length():
    model, state = tiny.random_model("qwen2")  # context: 256 positions
    sampler = Sampler(model, SamplingConfig(max_new_tokens=8, buckets=(16, 64)), None, [])
    with pytest.raises(ValueError, match="prompt 1 has 65 tokens, more than the largest bucket"):
        sampler.sample(state, [[1], [2] * 65])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sampler.sample(state, [[]])
    long_run = Sampler(model, SamplingConfig(max_new_tokens=200, buckets=(64,)), None, [])
    with pytest.raises(ValueError, match="prompt 2 has 60 tokens; with max_new_tokens=200 it "):
        long_run.sample(state, [[1], [1], [1] * 60])


@pytest.mark.slow
def test_generate_command_prints_one_json_line_per_sample():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fcrl.generate",
            "--prompt",
            "Name a color.",
            "--num-samples",
            "3",
            "--temperature",
            "0.8",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"text", "token_ids", "logprobs", "finish_reason"}
        assert len(row["token_ids"]) == len(row["logprobs"]) <= 6
        assert row["finish_reason"] in ("eos", "length")
        assert all(lp <= 0 for lp in row["logprobs"])


def test_the_prefix_automaton_decides_exactly_what_str_strip_startswith_decides():
    """After any text: "failed" only if no continuation can strip() to an opening <think>, and
    "matched" once the stripped text opens with it."""
    from fcrl.sampler import prefix_automaton

    prefix = "<think>"
    delta, failed_S = prefix_automaton(prefix.encode())
    rng = np.random.default_rng(0)
    alphabet = [" ", "\n", "\t", "\x1c", "\u00a0", "<", "t", "h", "i", "n", "k", ">", "x", "é"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, rng.integers(0, 10)))
        if rng.random() < 0.3:
            text = "".join(rng.choice([" ", "\n"], rng.integers(0, 3))) + prefix[: rng.integers(8)]
        state = 0
        for byte in text.encode():
            state = delta[state, byte]
        if failed_S[state]:
            for suffix in ("", prefix, "k>", " <think>x"):
                assert not (text + suffix).strip().startswith(prefix), repr(text)
        elif text.strip().startswith(prefix):
            assert state == len(prefix), repr(text)
        else:  # undecided: some continuation still opens with the prefix
            assert not failed_S[state]


def test_require_prefix_ends_rows_early_with_the_same_verdicts(tiny_model_dir):
    """Greedy rows of a random model rarely open with <think>: with require_prefix they end
    ("format") once they cannot, and the verifier's verdict on every row is unchanged."""
    from fcrl.verifier import verify

    model = load_hf(tiny_model_dir, dtype="float32", param_dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(f"prompt {i} <th")["input_ids"] for i in range(12)]
    base = SamplingConfig(max_new_tokens=24, temperature=0.0, buckets=(32,))
    full, early = (
        Sampler(model, dataclasses.replace(base, require_prefix=p), tokenizer, [1]).sample(
            nnx.state(model), prompts
        )
        for p in ("", "<think>")
    )
    assert (
        early.lengths_B <= full.lengths_B
    ).all() and early.lengths_B.sum() < full.lengths_B.sum()
    for a, b, finish in zip(full.texts, early.texts, early.finish_B, strict=True):
        assert a.startswith(b)
        if FINISH[finish] == "format":
            assert not b.strip().startswith("<think>"[: len(b.strip())])
        assert verify(a, [], None).reason == verify(b, [], None).reason


def test_require_call_ends_prose_rows_early_with_the_same_verdicts(tiny_model_dir):
    """With require_call a row ends ("format") once its text cannot open a call list; every
    ended text is a prefix of the full one and our verdict (fmt bfcl) on it is the same."""
    from fcrl.verifier import verify

    model = load_hf(tiny_model_dir, dtype="float32", param_dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(f"prompt {i} f(")["input_ids"] for i in range(12)]
    base = SamplingConfig(max_new_tokens=24, temperature=0.0, buckets=(32,))
    full, early = (
        Sampler(model, dataclasses.replace(base, require_call=c), tokenizer, [1]).sample(
            nnx.state(model), prompts
        )
        for c in (False, True)
    )
    assert (early.lengths_B <= full.lengths_B).all()
    assert "format" in [FINISH[f] for f in early.finish_B]
    gt = [{"f": {"a": [1]}}]
    for a, b in zip(full.texts, early.texts, strict=True):
        assert a.startswith(b)
        for truth in ([], gt):
            assert verify(a, truth, None, "bfcl").reward == verify(b, truth, None, "bfcl").reward


@pytest.mark.parametrize(
    "kind", [k if k == "qwen2" else pytest.param(k, marks=pytest.mark.slow) for k in tiny.KINDS]
)
def test_shared_prefixes_equal_the_whole_prompts(kind):
    """Two prefixes, three prompts each: greedy tokens equal the no-cache argmax loop over each
    [prefix | prompt], and the recorded log-probs a teacher-forced recompute of the rows."""
    model, state = tiny.random_model(kind)
    prefixes = [list(range(40, 61)), [7, 9]]
    suffixes = PROMPTS + [[3, 4], [11] * 9, [60, 50, 40, 30]]
    whole = [prefixes[i // 3] + s for i, s in enumerate(suffixes)]
    sampling = SamplingConfig(num_samples=2, max_new_tokens=24, temperature=0, buckets=(32,))
    sampler = Sampler(model, sampling, None, [])
    rollouts = sampler.sample(state, suffixes, prefixes=prefixes)
    expected = reference_greedy(model, state, whole, 24)
    np.testing.assert_array_equal(rollouts.tokens_BN, np.repeat(expected, 2, axis=0))
    shown = [row["prompt_ids"] for row in rollouts.rows()[::2]]
    assert shown == whole
    hot = dataclasses.replace(sampling, temperature=0.8)
    rollouts = Sampler(model, hot, None, []).sample(state, suffixes, seed=3, prefixes=prefixes)
    chosen, entropy, completion = teacher_forced(model, state, rollouts, 0.8)
    assert np.abs(rollouts.logprobs_BN - chosen)[completion].max() <= 1e-4  # as above
    assert np.abs(rollouts.entropies_BN - entropy)[completion].max() <= 1e-4
    with pytest.raises(ValueError, match="2 prefixes do not divide 5 prompts"):
        sampler.sample(state, suffixes[:5], prefixes=prefixes)
