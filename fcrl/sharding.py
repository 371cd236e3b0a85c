"""Device meshes and sharding as data: ordered (param-path regex → PartitionSpec) rule tables.

The first rule whose regex fully matches a parameter path ('layers/q_DHE') wins; a path that
matches no rule is an error, so anything replicated is replicated by an explicit row. Specs of
`layers/*` parameters start with None for the stacked L axis.

Several processes (hosts of a pod, or local processes in tests) run the same program on one
global mesh. Host values that enter it (prompts, the rollout batch) are the same on every
process; `to_host` brings global arrays back whole to each; `global_order` joins what each
process read of the data.
"""

import os
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over every data-parallel axis

Rules = Sequence[tuple[str, P]]

TRAIN_RULES: Rules = (
    ("embed_VD", P("tensor", "fsdp")),
    ("layers/(attn|mlp)_norm_D", P(None, None)),
    ("layers/q_DHE", P(None, "fsdp", "tensor", None)),
    ("layers/[kv]_DKE", P(None, "fsdp", "tensor", None)),
    ("layers/o_HED", P(None, "tensor", None, "fsdp")),
    ("layers/q_bias_HE", P(None, "tensor", None)),
    ("layers/[kv]_bias_KE", P(None, "tensor", None)),
    ("layers/o_bias_D", P(None, None)),
    ("layers/[qk]_norm_E", P(None, None)),
    ("layers/(gate|up)_DF", P(None, "fsdp", "tensor")),
    ("layers/down_FD", P(None, "tensor", "fsdp")),
    ("final_norm_D", P(None)),
    ("lm_head_DV", P("fsdp", "tensor")),
)


def without_axis(rules: Rules, axis: str) -> Rules:
    """The same table with one mesh axis replaced by None (e.g. no FSDP for sampling)."""

    def drop(entry: str | tuple | None) -> str | tuple | None:
        if isinstance(entry, tuple):
            kept = tuple(a for a in entry if a != axis)
            return kept or None
        return None if entry == axis else entry

    return tuple((pattern, P(*(drop(e) for e in spec))) for pattern, spec in rules)


# Sampling keeps weights whole along the data axes and splits them over `tensor` only.
SAMPLE_RULES: Rules = without_axis(TRAIN_RULES, "fsdp")

ACTIVATIONS: Mapping[str, P] = {
    "act_BTD": P(BATCH, None, None),
    "act_BTHE": P(BATCH, None, "tensor", None),
    "act_BTKE": P(BATCH, None, "tensor", None),
    "act_BTF": P(BATCH, None, "tensor"),
    "act_BTV": P(BATCH, None, "tensor"),
    "cache_LBKSE": P(None, BATCH, "tensor", None, None),
}


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axis types from {axis: size}; one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(shape) - set(AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axis names {sorted(unknown)} (known: {AXES})")
    sizes = dict(shape)
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    for name, size in sizes.items():
        if size == -1:
            sizes[name] = len(devices) // fixed
    if int(np.prod(list(sizes.values()))) != len(devices):
        raise ValueError(f"mesh: shape {dict(shape)} does not cover {len(devices)} devices")
    names = tuple(sizes)
    return jax.make_mesh(
        tuple(sizes.values()),
        names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(names),
        devices=devices,
    )


def _axes(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _fit(spec: P, shape: tuple[int, ...], mesh_sizes: Mapping[str, int]) -> P:
    """Drops mesh axes the mesh lacks; None where a dim is not divisible (for activations)."""
    out = []
    for entry, dim in zip(spec, shape, strict=True):
        axes = tuple(a for a in _axes(entry) if a in mesh_sizes)
        size = int(np.prod([mesh_sizes[a] for a in axes]))
        out.append(axes if axes and dim % size == 0 else None)
    return P(*out)


def constrain(x: jax.Array, name: str) -> jax.Array:
    """Sharding hint for an activation named in ACTIVATIONS; a no-op without a current mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, _fit(ACTIVATIONS[name], x.shape, mesh.shape))


def path_str(path: tuple) -> str:
    """'layers/q_DHE' from a pytree path of nnx state (the Variable's `.value` step dropped)."""
    keys = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def spec_for(path: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh) -> P:
    """The first matching rule's spec, checked against the parameter's rank and the mesh."""
    pattern, spec = next(((p, s) for p, s in rules if re.fullmatch(p, path)), (None, None))
    if spec is None:
        raise ValueError(f"sharding: parameter '{path}' matches no partition rule")
    if len(spec) != len(shape):
        raise ValueError(f"sharding: rule {pattern!r} has rank {len(spec)}, '{path}' is {shape}")
    for dim, entry in zip(shape, spec, strict=True):
        axes = _axes(entry)
        size = int(np.prod([mesh.shape.get(a, 1) for a in axes]))
        if dim % size:
            raise ValueError(
                f"sharding: '{path}' dim {dim} is not divisible by mesh axes {axes} (size {size})"
            )
    return _fit(spec, shape, mesh.shape)


def shardings(state: object, rules: Rules, mesh: Mesh) -> object:
    """A pytree of NamedShardings matching `state` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(path_str(path), x.shape, rules, mesh)), state
    )


# ---------------------------------------------------------------- several processes


def initialize_distributed() -> None:
    """`jax.distributed.initialize` when this process is one of several: JAX_COORDINATOR_ADDRESS
    (with JAX_NUM_PROCESSES and JAX_PROCESS_ID) set, or FCRL_MULTIHOST=1 where JAX finds the
    cluster itself (TPU pod slices, SLURM). A no-op otherwise, or when already done."""
    if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("FCRL_MULTIHOST")):
        return
    if jax.distributed.is_initialized():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)  # fmt: skip


def is_main() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def main_first(fn, *args):
    """fn(*args) on process 0, then, once it returned, on the others: a step that writes shared
    files (a prepared dataset, a tiny checkpoint) runs once, and the others find it done."""
    if jax.process_count() == 1:
        return fn(*args)
    out = fn(*args) if is_main() else None
    multihost_utils.sync_global_devices(f"fcrl: {fn.__name__}")
    return out if is_main() else fn(*args)


def to_host(tree):
    """Numpy copies of a pytree's arrays; each whole on every process (gathered where a process
    holds only some shards)."""

    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def global_order(local: Sequence[int]) -> list[int]:
    """The data's global order from each process's part of it: process i read items i, i + n,
    i + 2n, … (grain's `ds[index::count]`), so the k-th item of process i is item k·n + i. The
    same list on every process; one process: `local` itself."""
    if jax.process_count() == 1:
        return list(local)
    parts = multihost_utils.process_allgather(np.asarray(local, np.int64))  # [n, k]
    return parts.T.reshape(-1).tolist()
