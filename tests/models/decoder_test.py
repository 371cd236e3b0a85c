"""Logit parity with transformers' PyTorch models on tiny random configs, over a padded batch."""

import jax.numpy as jnp
import numpy as np
import pytest

from fcrl.models import load_hf
from tests.models import tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=tiny.KINDS)
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, tiny.make_checkpoint(request.param, folder)


# 150 tokens run the causal attention in three query blocks (64, 64, 22).
@pytest.mark.parametrize("length", [12, 150])
def test_logits_match_transformers_f32(checkpoint, length):
    folder, reference = checkpoint
    tokens, mask = tiny.padded_batch(length)
    ours = np.asarray(load_hf(folder)(jnp.asarray(tokens), jnp.asarray(mask)))
    expected = tiny.torch_logits(reference, tokens, mask)
    # Padding positions produce unused logits; every real token must agree.
    assert np.abs(ours - expected)[mask].max() <= 1e-4


def test_bf16_compute_stays_close(checkpoint):
    folder, _ = checkpoint
    tokens, mask = tiny.padded_batch()
    f32 = np.asarray(load_hf(folder)(jnp.asarray(tokens), jnp.asarray(mask)))
    model = load_hf(folder, dtype="bfloat16", param_dtype="bfloat16")
    assert model.layers.q_DHE[...].dtype == jnp.bfloat16
    bf16 = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32)[mask].max() < 0.05 * np.abs(f32).max()


def test_padding_does_not_change_real_tokens(checkpoint):
    folder, _ = checkpoint
    model = load_hf(folder)
    tokens, mask = tiny.padded_batch()
    alone = model(jnp.asarray(tokens[1:2, 4:]), jnp.ones((1, 8), bool))
    padded = model(jnp.asarray(tokens[1:2]), jnp.asarray(mask[1:2]))
    # Padding changes float32 reduction shapes: noise of ~1e-6 relative, 100x of room.
    np.testing.assert_allclose(
        np.asarray(padded)[0, 4:], np.asarray(alone)[0], rtol=1e-4, atol=1e-4
    )
