"""fcrl.sft: every target it teaches earns reward 1 from the verifier, the batch layout, and
the loss and its update against a cross-entropy written directly from the model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fcrl import sft
from fcrl.models import load_hf
from fcrl.verifier import verify
from tests.job_test import generated


def test_every_generated_target_earns_the_reward():
    for kind, record in generated(400, distractors=3, max_calls=3):
        text = sft.target_text(record)
        assert text.startswith("<think>") and text.endswith("</answer>"), text
        verdict = verify(text, record["ground_truth"], record["tools"], "think_answer")
        assert verdict.reward == 1.0, (kind, text, verdict)
        if kind == "irrelevance":
            assert text.endswith("<answer>[]</answer>")


def test_think_text_names_the_functions_and_parameters():
    calls = [("f", {"a": 1, "b": 2}), ("f", {"a": 3}), ("g", {})]
    assert sft.think_text(calls, []) == "f ×2: a, b. g: no parameters."
    assert sft.think_text([], [{"name": "f"}]) == "No function fits."


def test_make_batch_puts_prompt_then_target():
    records = [
        {"prompt_ids": [5, 6, 7], "target_ids": [8, 9]},
        {"prompt_ids": [1], "target_ids": [2]},
    ]
    got = sft.make_batch(records, (2, 4, 8), 3)  # prompts in 4 columns, targets in 3
    np.testing.assert_array_equal(got["tokens_BT"], [[0, 5, 6, 7, 8, 9, 0], [0, 0, 0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(got["mask_BT"], [[0, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(got["target_BT"], [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0, 0]])


def test_with_targets_skips_what_does_not_fit(tiny_model_dir):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    _, record = generated(1)[0]
    record = {**record, "prompt_ids": [1] * 10}
    skipped = []
    kept = sft.with_targets([record], tokenizer, 0, 10_000, skipped, "f.jsonl")
    assert kept[0]["target_ids"][-1] == 0 and not skipped
    with pytest.raises(ValueError, match="no record's target fits sft.target_len"):
        sft.with_targets([record], tokenizer, 0, len(kept[0]["target_ids"]) - 1, skipped, "f.jsonl")
    assert skipped[0]["reason"] == "sft_too_long" and skipped[0]["file"] == "f.jsonl"


def test_the_step_minimises_the_targets_cross_entropy(tiny_model_dir):
    """The loss is the mean −log softmax(logits)[next token] over target tokens only, computed
    here from full logits (no chunks); the step applies the optimizer to its gradient."""
    model = load_hf(tiny_model_dir, dtype="float32", param_dtype="float32")
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    records = [
        {
            "prompt_ids": rng.integers(1, 90, p).tolist(),
            "target_ids": rng.integers(1, 90, t).tolist(),
        }
        for p, t in ((7, 5), (3, 9))
    ]
    batch = jax.tree.map(jnp.asarray, sft.make_batch(records, (8,), 10))

    def reference(params):
        m = nnx.merge(graphdef, params)
        hidden = m.hidden(batch["tokens_BT"], batch["mask_BT"])[0]
        logp = jax.nn.log_softmax(m.logits(hidden)[:, :-1].astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, batch["tokens_BT"][:, 1:, None], axis=-1)[..., 0]
        on = batch["target_BT"][:, 1:]
        return -jnp.sum(picked * on) / on.sum()

    optimizer = optax.sgd(0.1)
    new, _, m = sft.sft_step(graphdef, params, optimizer.init(params), batch,
                             optimizer=optimizer, chunk=4, width=10)  # fmt: skip
    assert float(m["sft/loss"]) == pytest.approx(float(reference(params)), rel=1e-5)
    assert m["sft/tokens"] == 14
    grads = jax.grad(reference)(params)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(reference(new)) < float(reference(params))
