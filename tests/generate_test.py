"""The embedded SmolLM2-135M-Instruct end to end: logit parity with transformers on its
converted folder, and the generation command."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from fcrl.chat import render
from fcrl.models import load_hf
from fcrl.models.gguf import default_model_dir

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder():
    return default_model_dir()


def test_logits_match_transformers_on_a_chat_prompt(folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = render(
        tokenizer,
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    )[:30]
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
