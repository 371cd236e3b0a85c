"""Sharded forward on a simulated 8-device CPU mesh equals the unsharded forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fcrl import sharding
from fcrl.models import load_hf
from tests.models import tiny

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    tiny.make_checkpoint("qwen2", path)
    return path


@jax.jit
def forward(graphdef, state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, mask)


@pytest.mark.parametrize(
    "shape",
    [{"fsdp": 2, "tensor": 4}, {"fsdp": 8, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}],
)
@pytest.mark.parametrize("rules", ["train", "sample"])
def test_sharded_forward_equals_unsharded(folder, shape, rules):
    assert jax.device_count() == 8
    tokens, mask = tiny.padded_batch()
    tokens, mask = np.tile(tokens, (8, 1)), np.tile(mask, (8, 1))  # batch 24 splits 8 ways
    expected = np.asarray(load_hf(folder)(jnp.asarray(tokens), jnp.asarray(mask)))
    mesh = sharding.make_mesh(shape)
    table = sharding.TRAIN_RULES if rules == "train" else sharding.SAMPLE_RULES
    model = load_hf(folder, mesh=mesh, rules=table)
    q = model.layers.q_DHE[...]
    expected_spec = sharding.spec_for("layers/q_DHE", q.shape, table, mesh)
    assert q.sharding.spec == expected_spec
    assert q.addressable_shards[0].data.size == q.size // np.prod(
        [mesh.shape[a] for a in jax.tree.leaves(tuple(expected_spec))]
    )
    with jax.set_mesh(mesh):
        got = forward(*nnx.split(model), jnp.asarray(tokens), jnp.asarray(mask))
    assert np.abs(np.asarray(got) - expected)[mask].max() <= 1e-5


def test_unmatched_parameter_is_an_error():
    mesh = sharding.make_mesh({"fsdp": 8})
    with pytest.raises(ValueError, match="'layers/new_DD' matches no partition rule"):
        sharding.spec_for("layers/new_DD", (2, 8, 8), sharding.TRAIN_RULES, mesh)


def test_indivisible_dimension_is_an_error():
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    with pytest.raises(ValueError, match="'layers/k_DKE' dim 3 is not divisible"):
        sharding.spec_for("layers/k_DKE", (30, 576, 3, 64), sharding.TRAIN_RULES, mesh)


def test_mesh_from_config():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
    with pytest.raises(ValueError, match="unknown axis names"):
        sharding.make_mesh({"model": 8})
    with pytest.raises(ValueError, match="does not cover 8 devices"):
        sharding.make_mesh({"fsdp": 3})


def test_sample_rules_drop_fsdp():
    rules = dict(sharding.SAMPLE_RULES)
    assert rules["layers/q_DHE"] == P(None, None, "tensor", None)
    assert rules["embed_VD"] == P("tensor", None)
