"""A tiny random model with a character tokenizer: what configs/tiny.py and the tests run on.

`tiny_checkpoint(folder)` writes a real HF folder (a 3-layer, 64-wide Qwen2 of random weights,
the 95 printable ASCII characters and <eos> as its vocabulary, and a plain chat template), so
every job loads it through the same code as a downloaded checkpoint. Made without torch.
"""

import dataclasses
import os
import pathlib
import shutil

import tokenizers
import transformers
from flax import nnx

from fcrl.models.config import ModelConfig
from fcrl.models.decoder import Decoder
from fcrl.models.hf import export_hf

HF_CONFIG = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "eos_token_id": 95,
}
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A 96-id tokenizer: the 95 printable ASCII characters, then <eos> (id 95)."""
    vocab = {chr(32 + i): i for i in range(95)} | {"<eos>": 95}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex("."), behavior="isolated"
    )
    tokenizer.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def tiny_checkpoint(folder: pathlib.Path, max_positions: int = 4096, seed: int = 0) -> pathlib.Path:
    """Writes the tiny model (random weights from `seed`) and its tokenizer into `folder`; the
    folder appears only when complete."""
    folder = pathlib.Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    cfg = ModelConfig.from_hf(HF_CONFIG)
    cfg = dataclasses.replace(cfg, max_position_embeddings=max_positions)
    export_hf(Decoder(cfg, nnx.Rngs(seed)), tmp)
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
