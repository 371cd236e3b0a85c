"""Checkpoints of a run (orbax CheckpointManager): everything needed to resume exactly.

Items: `state` (parameters, optimizer state, step and the RNG key's data, one pytree restored
onto the shardings it is asked for), `data` (the grain iterator, through grain's own orbax
handler) and `meta` (JSON: the step, the parameter fingerprint, counters). orbax writes each
step into a temporary folder and renames it when complete, so a process killed mid-write leaves
the previous checkpoint intact (the partial folder is ignored, then removed); the
`keep` newest are kept.
"""

import hashlib
import pathlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from fcrl.sharding import path_str, to_host


def manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,  # what a killed write left behind
        enable_async_checkpointing=False,  # the step is written when save() returns
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), options=options, item_names=("state", "data", "meta")
    )


def save(
    mngr: ocp.CheckpointManager, step: int, state: dict, iterator: grain.DatasetIterator,
    meta: dict,
) -> None:  # fmt: skip
    """Writes checkpoint `step` (state: a pytree of arrays; meta: JSON)."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    mngr.wait_until_finished()


def restore(
    mngr: ocp.CheckpointManager, like: dict, iterator: grain.DatasetIterator
) -> tuple[int, dict, dict] | None:
    """(step, state, meta) of the newest checkpoint, the state placed like `like` and the
    iterator moved to where it was; None when there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return step, out.state, out.meta


def fingerprint(params) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes, in path order (the same for
    an nnx.State and the plain dict a checkpoint reads back as)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(to_host(params))[0]  # every process's the same
    for path, array in sorted(leaves, key=lambda kv: path_str(kv[0])):
        digest.update(f"{path_str(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_state(step_dir: pathlib.Path) -> dict:
    """The `state` item of a checkpoint step folder (params, opt_state, rng) as plain dicts
    on one device (nnx's {"value": array} levels removed): for inspecting or exporting a run
    without rebuilding its mesh."""
    checkpointer = ocp.StandardCheckpointer()
    path = pathlib.Path(step_dir).absolute() / "state"
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(path).item_metadata.tree,
    )
    return _unwrap(checkpointer.restore(path, abstract))


def _unwrap(tree):
    if isinstance(tree, dict):
        return (
            tree["value"] if tree.keys() == {"value"} else {k: _unwrap(v) for k, v in tree.items()}
        )
    return tree
