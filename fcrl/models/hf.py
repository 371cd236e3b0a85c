"""HF checkpoint folders in and out: config.json + (sharded) safetensors, strictly checked.

Each HF tensor maps to one of our parameters through TENSORS: our path, the HF name template,
and how many leading dims of our layout are the HF matrix's input dims (HF stores Linear
weights as [out, in]; ours is [in..., out...]); 0 means only flattened, None the same layout.
Every checkpoint tensor must be used and every shape must match; each parameter is put straight
onto its shards.
"""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from fcrl import sharding
from fcrl.models.config import ModelConfig
from fcrl.models.decoder import Decoder

TENSORS = (  # our path, HF name ({i} = layer), number of input dims in our layout
    ("embed_VD", "model.embed_tokens.weight", None),
    ("final_norm_D", "model.norm.weight", None),
    ("lm_head_DV", "lm_head.weight", 1),
    ("layers/attn_norm_D", "model.layers.{i}.input_layernorm.weight", None),
    ("layers/q_DHE", "model.layers.{i}.self_attn.q_proj.weight", 1),
    ("layers/k_DKE", "model.layers.{i}.self_attn.k_proj.weight", 1),
    ("layers/v_DKE", "model.layers.{i}.self_attn.v_proj.weight", 1),
    ("layers/o_HED", "model.layers.{i}.self_attn.o_proj.weight", 2),
    ("layers/q_bias_HE", "model.layers.{i}.self_attn.q_proj.bias", 0),
    ("layers/k_bias_KE", "model.layers.{i}.self_attn.k_proj.bias", 0),
    ("layers/v_bias_KE", "model.layers.{i}.self_attn.v_proj.bias", 0),
    ("layers/o_bias_D", "model.layers.{i}.self_attn.o_proj.bias", None),
    ("layers/q_norm_E", "model.layers.{i}.self_attn.q_norm.weight", None),
    ("layers/k_norm_E", "model.layers.{i}.self_attn.k_norm.weight", None),
    ("layers/mlp_norm_D", "model.layers.{i}.post_attention_layernorm.weight", None),
    ("layers/gate_DF", "model.layers.{i}.mlp.gate_proj.weight", 1),
    ("layers/up_DF", "model.layers.{i}.mlp.up_proj.weight", 1),
    ("layers/down_FD", "model.layers.{i}.mlp.down_proj.weight", 1),
)
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
SAFETENSORS_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
COPIED_FILES = (  # tokenizer and generation files an export carries over from its source
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def load_hf_config(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, raw config.json dict) of an HF checkpoint folder."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json in checkpoint folder {path}")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    return ModelConfig.from_hf(raw, source=str(file), **overrides), raw


def _read_header(file: Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name → (dtype, shape, start, end) with absolute byte offsets, checked against file size."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{file}: truncated or not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: corrupt safetensors header ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (8 + n + o for o in info["data_offsets"])
        if end > size:
            raise ValueError(
                f"{file}: truncated: tensor '{name}' needs bytes up to {end}, file has {size}"
            )
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{file}: tensor '{name}' has unsupported dtype {info['dtype']}")
        out[name] = (info["dtype"], tuple(info["shape"]), start, end)
    return out


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index}: lists shard {f.name}, which is missing")
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor its index file")
    return [single]


def _expected(state: nnx.State) -> Iterator[tuple[str, str, int | None, int | None, tuple]]:
    """(our path, HF name, layer or None, input dims, per-layer shape) for each HF tensor."""
    shapes = {sharding.path_str(p): v.shape for p, v in nnx.to_flat_state(state)}
    for ours, template, n_in in TENSORS:
        if ours not in shapes:
            continue
        if ours.startswith("layers/"):
            for i in range(shapes[ours][0]):
                yield ours, template.format(i=i), i, n_in, shapes[ours][1:]
        else:
            yield ours, template, None, n_in, shapes[ours]


def _hf_shape(shape: tuple[int, ...], n_in: int | None) -> tuple[int, ...]:
    if n_in is None:
        return shape
    if n_in == 0:
        return (int(np.prod(shape)),)
    return (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))


def load_hf(
    path: str | os.PathLike,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.SAMPLE_RULES,
    **overrides,
) -> Decoder:
    """Loads an HF checkpoint folder into a Decoder, each parameter placed on its shards.

    `overrides` set run-time ModelConfig fields such as dtype='bfloat16', param_dtype=....
    """
    folder = Path(path)
    cfg, _ = load_hf_config(folder, **overrides)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
    present = {}
    for file in _checkpoint_files(folder):
        present.update({k: (file, *v) for k, v in _read_header(file).items()})
    expected = {hf: (ours, layer, n_in, shape) for ours, hf, layer, n_in, shape in _expected(state)}
    missing = sorted(set(expected) - set(present))
    if missing:
        raise ValueError(f"{folder}: missing tensor '{missing[0]}' ({len(missing)} missing)")
    extra = sorted(set(present) - set(expected))
    if extra:
        file = present[extra[0]][0]
        raise ValueError(f"{file}: unexpected tensor '{extra[0]}' ({len(extra)} unused)")

    sources: dict[str, list[str]] = {}  # our path -> its HF tensors, in layer order
    for name, (ours, _, n_in, shape) in expected.items():
        file, _, got, *_ = present[name]
        if got != _hf_shape(shape, n_in):
            raise ValueError(
                f"{file}: tensor '{name}' has shape {got}, expected {_hf_shape(shape, n_in)}"
            )
        sources.setdefault(ours, []).append(name)

    def read(name: str) -> np.ndarray:  # memory-mapped; only this parameter is read to host
        file, dtype, got, start, _ = present[name]
        _, _, n_in, shape = expected[name]
        w = np.memmap(file, DTYPES[dtype], "r", start, got)
        return (w.T if n_in else w).reshape(shape).astype(cfg.param_dtype)

    def value(path: tuple) -> np.ndarray:
        key = sharding.path_str(path)
        parts = [read(name) for name in sources[key]]
        return np.stack(parts) if key.startswith("layers/") else parts[0]

    if mesh is None:
        state = jax.tree_util.tree_map_with_path(lambda p, _: jnp.asarray(value(p)), state)
    else:
        # Every rule is checked against the mesh before the first tensor is read.
        named = sharding.shardings(state, rules, mesh)

        def place(path: tuple, abstract: jax.ShapeDtypeStruct, s: NamedSharding) -> jax.Array:
            host = value(path)  # each device copies only its own shard from it
            return jax.make_array_from_callback(abstract.shape, s, lambda idx: host[idx])

        state = jax.tree_util.tree_map_with_path(place, state, named)
    return nnx.merge(graphdef, state)


def write_safetensors(file: Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes a safetensors file (metadata format=pt, as transformers expects)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, w in tensors.items():
        header[name] = {
            "dtype": SAFETENSORS_NAMES[w.dtype],
            "shape": list(w.shape),
            "data_offsets": [offset, offset + w.nbytes],
        }
        offset += w.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(file, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for w in tensors.values():
            f.write(np.ascontiguousarray(w).tobytes())


def export_hf(
    model: Decoder, out_dir: str | os.PathLike, source: str | os.PathLike | None = None
) -> Path:
    """Writes `model` as an HF folder transformers loads; tokenizer files come from `source`.

    The folder appears only when complete (written under a temporary name, then renamed).
    """
    out, cfg = Path(out_dir), model.cfg
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = nnx.state(model, nnx.Param)
    values = {sharding.path_str(p): v for p, v in nnx.to_flat_state(params)}
    tensors = {}
    for ours, name, layer, n_in, shape in _expected(params):
        w = np.asarray(values[ours][...] if layer is None else values[ours][...][layer])
        hf_shape = _hf_shape(shape, n_in)
        tensors[name] = w.reshape(hf_shape[::-1]).T if n_in else w.reshape(hf_shape)
    write_safetensors(tmp / "model.safetensors", tensors)
    config = {}
    if source is not None:
        _, config = load_hf_config(source)
        for name in COPIED_FILES:
            if (Path(source) / name).is_file():
                shutil.copy(Path(source) / name, tmp / name)
    config.pop("rope_scaling", None)  # superseded by rope_parameters in to_hf()
    (tmp / "config.json").write_text(json.dumps({**config, **cfg.to_hf()}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
