"""fcrl.checkpoint: a save killed mid-write (a real process, SIGKILL) leaves the previous
checkpoint restorable, with the grain iterator where it was; fcrl.metrics cuts logs back."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fcrl import checkpoint, metrics
from fcrl.data.pipeline import dataset

ROOT = pathlib.Path(__file__).parents[1]
# Saves step 1 (small), prints "saved", then step 2 with 1 GiB of state, slow enough to be
# killed while orbax is writing it.
CHILD = """
import sys, jax.numpy as jnp
from fcrl import checkpoint
from fcrl.data.pipeline import dataset
it = iter(dataset([{"id": i} for i in range(10)], seed=0))
next(it)
mngr = checkpoint.manager(sys.argv[1], keep=3)
checkpoint.save(mngr, 1, {"w": jnp.ones((4,))}, it, {"step": 1})
print("saved", flush=True)
next(it)
checkpoint.save(mngr, 2, {"w": jnp.ones((1 << 28,))}, it, {"step": 2})
"""


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 120
    while not any("tmp" in p.name for p in tmp_path.iterdir()):  # orbax's folder for step 2
        assert time.monotonic() < deadline and child.poll() is None, "no write to interrupt"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    iterator = iter(dataset([{"id": i} for i in range(10)], seed=0))
    mngr = checkpoint.manager(tmp_path, keep=3)
    assert mngr.all_steps() == [1]
    step, state, meta = checkpoint.restore(mngr, {"w": jnp.zeros((4,))}, iterator)
    assert (step, meta) == (1, {"step": 1}) and np.all(np.asarray(state["w"]) == 1)
    fresh = iter(dataset([{"id": i} for i in range(10)], seed=0))
    next(fresh)
    assert next(iterator) == next(fresh)  # the iterator resumes after the one record it gave
    checkpoint.save(mngr, 2, {"w": jnp.full((4,), 2.0)}, iterator, {"step": 2})
    assert mngr.all_steps() == [1, 2]  # and saving goes on


def test_fingerprint_is_order_free_and_sensitive():
    a = {"x": jnp.arange(3.0), "y": {"z": jnp.ones((2, 2))}}
    b = {"y": {"z": jnp.ones((2, 2))}, "x": jnp.arange(3.0)}
    assert checkpoint.fingerprint(a) == checkpoint.fingerprint(b)
    c = jax.tree.map(lambda v: v.at[0].add(1e-7 if v.ndim == 1 else 0.0), a)
    assert checkpoint.fingerprint(c) != checkpoint.fingerprint(a)


def test_cut_jsonl_keeps_the_checkpointed_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "v": s} for s in (1, 2, 3, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "v"')  # cut line
    metrics.cut_jsonl(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 2, 3]
