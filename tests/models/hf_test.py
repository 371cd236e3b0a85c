"""HF folder I/O: sharded checkpoints, export round trip, and one clear error per bad input."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fcrl.models import export_hf, load_hf, load_hf_config
from tests.models import tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3_untied")
    tiny.make_checkpoint("llama3_untied", path)
    return path


def logits(model) -> np.ndarray:
    tokens, mask = tiny.padded_batch()
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))


def test_sharded_checkpoint_with_index(tmp_path):
    reference = tiny.make_checkpoint("qwen2", tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    tokens, mask = tiny.padded_batch()
    expected = tiny.torch_logits(reference, tokens, mask)
    assert np.abs(logits(load_hf(tmp_path)) - expected)[mask].max() <= 1e-4


@pytest.mark.parametrize("kind", ["llama3_untied", "qwen3"])
def test_export_round_trip_through_transformers(kind, tmp_path):
    import transformers

    tiny.make_checkpoint(kind, tmp_path / "src")
    model = load_hf(tmp_path / "src")
    out = export_hf(model, tmp_path / "export", source=tmp_path / "src")
    assert not list(tmp_path.glob("export.tmp-*"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens, mask = tiny.padded_batch()
    expected = tiny.torch_logits(reloaded, tokens, mask)
    assert np.abs(logits(model) - expected)[mask].max() <= 1e-4
    np.testing.assert_array_equal(logits(load_hf(out)), logits(model))


def broken_copy(folder, tmp_path, edit) -> str:
    """A copy of `folder` whose tensors went through `edit(dict)`; returns the safetensors path."""
    dst = tmp_path / "broken"
    shutil.copytree(folder, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf(tmp_path)


def config_copy(folder, tmp_path, edit) -> str:
    """A copy of `folder` whose config.json dict went through `edit(dict)`."""
    dst = tmp_path / "config"
    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_model_type(folder, tmp_path):
    dst = config_copy(folder, tmp_path, lambda c: c.update(model_type="gpt2"))
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'gpt2'"):
        load_hf(dst)


def test_missing_field(folder, tmp_path):
    dst = config_copy(folder, tmp_path, lambda c: c.pop("num_hidden_layers"))
    with pytest.raises(ValueError, match="config.json: required field 'num_hidden_layers'"):
        load_hf_config(dst)


def test_missing_tensor(folder, tmp_path):
    dst = broken_copy(folder, tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_hf(dst)


def test_wrong_shape(folder, tmp_path):
    def edit(t):
        t["model.layers.2.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)

    dst = broken_copy(folder, tmp_path, edit)
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'model\.layers\.2\.self_attn\.k_proj\.weight'"
        r" has shape \(8, 64\), expected \(32, 64\)",
    ):
        load_hf(dst)


def test_unexpected_tensor(folder, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)

    dst = broken_copy(folder, tmp_path, edit)
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.self_attn.rotary_emb"):
        load_hf(dst)


def test_layer_beyond_config_is_unexpected(folder, tmp_path):
    def edit(t):
        t["model.layers.3.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"]

    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.3.mlp.up_proj.weight'"):
        load_hf(broken_copy(folder, tmp_path, edit))


@pytest.mark.parametrize("keep", [0.5, 0.999, 5e-5])
def test_truncated_file(folder, tmp_path, keep):
    dst = tmp_path / "truncated"
    shutil.copytree(folder, dst)
    file = dst / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"model\.safetensors: (truncated|corrupt)"):
        load_hf(dst)
