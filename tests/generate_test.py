"""The generation loop on a tiny model, and the embedded SmolLM2-135M-Instruct end to end:
logit parity with transformers on its converted folder, and the command."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from fcrl.generate import generate_tokens, prompt_ids
from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir
from tests.models import tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder():
    return default_model_dir()


def run_loop(model, tokens, mask, eos, temperature=0.0, seed=0, n=10):
    return np.asarray(
        generate_tokens(
            *nnx.split(model),
            jnp.asarray(tokens),
            jnp.asarray(mask),
            jnp.asarray(eos),
            jax.random.key(seed),
            jnp.float32(temperature),
            n,
        )
    )


def test_greedy_loop_equals_argmax_of_unpadded_forwards(tmp_path):
    tiny.make_checkpoint("qwen3", tmp_path)
    model = load_hf(tmp_path)
    tokens, mask = tiny.padded_batch()
    rows = [list(t[m]) for t, m in zip(tokens, mask, strict=True)]

    def greedy(ids, n, eos):  # one unpadded forward per step, no cache, no batching
        out = []
        while len(out) < n and not (out and out[-1] in eos):
            logits = model(jnp.asarray([ids + out]), jnp.ones((1, len(ids + out)), bool))
            out.append(int(jnp.argmax(logits[0, -1])))
        return out

    eos = [greedy(rows[1], 3, [])[2]]  # row 1 stops by its 3rd token, eos kept
    got = run_loop(model, tokens, mask, eos)
    for row, ids in zip(got, rows, strict=True):
        expected = greedy(ids, 10, eos)
        assert list(row[: len(expected)]) == expected
        assert not row[len(expected) :].any()  # finished rows are padded with 0


def test_sampling_is_seeded(tmp_path):
    tiny.make_checkpoint("llama_tied", tmp_path)
    model = load_hf(tmp_path)
    tokens, mask = tiny.padded_batch()
    a, b, c = (run_loop(model, tokens, mask, [-1], 1.0, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_logits_match_transformers_on_a_chat_prompt(folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = prompt_ids(tokenizer, "What is the capital of France? Answer in one word.")[:30]
    assert len(ids) == 30
    tokens = np.asarray([ids], np.int32)
    ours = np.asarray(load_hf(folder)(jnp.asarray(tokens), jnp.ones_like(tokens, bool)))
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - expected).max() <= 1e-3


def test_generate_command_answers_paris():
    out = subprocess.run(
        [sys.executable, "-m", "fcrl.generate", "--prompt", "What is the capital of France?"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "<|im_end|>" not in out.stdout  # only the completion text is printed


def test_generate_command_rejects_bad_arguments():
    out = subprocess.run(
        [sys.executable, "-m", "fcrl.generate", "--prompt", "hi", "--max-new-tokens", "0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode != 0
    assert "max_new_tokens must be positive, got 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_command_names_a_bad_model_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fcrl.generate", "--prompt", "hi", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 2
    assert f"{tmp_path}/config.json: no config.json" in out.stderr
    assert "Traceback" not in out.stderr
