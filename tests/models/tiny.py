"""Tiny random HF checkpoints of each supported family, made with transformers' torch models;
the character tokenizer and the torch-free tiny checkpoint live in fcrl.models.tiny."""

from pathlib import Path

import numpy as np

from fcrl.models.tiny import HF_CONFIG, char_tokenizer, tiny_checkpoint  # noqa: F401

# The sizes of fcrl's tiny model, with a short context.
SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "rms_norm_eps")  # fmt: skip
COMMON = {k: HF_CONFIG[k] for k in SIZES} | {"max_position_embeddings": 256}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_theta": 500000.0,
}
KINDS = ("llama_tied", "llama3_untied", "qwen2", "qwen3")


def hf_config(kind: str):
    import transformers

    if kind == "llama_tied":
        return transformers.LlamaConfig(**COMMON, tie_word_embeddings=True)
    if kind == "llama3_untied":
        return transformers.LlamaConfig(
            **COMMON, tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE
        )
    if kind == "qwen2":
        return transformers.Qwen2Config(**COMMON, tie_word_embeddings=False)
    return transformers.Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True)


def make_checkpoint(kind: str, folder: Path, **save_kwargs):
    """Saves a random model (non-trivial norms and biases); returns the torch model."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(kind)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder, **save_kwargs)
    return model


def padded_batch(length: int = 12, vocab: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Three rows of `length` tokens: unpadded, 4 and length-3 left-padding tokens."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (3, length)).astype(np.int32)
    mask = np.ones((3, length), bool)
    mask[1, :4] = False
    mask[2, : length - 3] = False
    return tokens, mask


def torch_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference's logits with the same positions we use (count of real tokens before)."""
    import torch

    positions = np.maximum(mask.cumsum(1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens.astype(np.int64)),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


def random_model(kind: str, seed: int = 0, noise: float = 0.3):
    """A tiny Decoder of `kind` (no torch needed) and a parameter state noisy enough that greedy
    decoding wanders over the vocabulary instead of repeating one token."""
    import jax
    from flax import nnx

    from fcrl.models import Decoder, ModelConfig

    model = Decoder(ModelConfig.from_hf(hf_config(kind).to_dict()), nnx.Rngs(seed))
    leaves, treedef = jax.tree.flatten(nnx.state(model))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + noise * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return model, jax.tree.unflatten(treedef, noisy)
