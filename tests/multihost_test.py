"""fcrl.train as 2 real processes on JAX's multi-host runtime (jax.distributed on 127.0.0.1,
gloo collectives on CPU), each with 4 simulated devices of one 8-device mesh: the same
parameters as one process holding all 8, and a checkpoint written by both processes resumes."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from fcrl import checkpoint
from fcrl import train as train_lib
from tests.train_test import MESH8, jsonl, tiny_config

ROOT = pathlib.Path(__file__).parents[1]
# Two prompts a step, one read by each process.
COMMAND = [sys.executable, "-m", "fcrl.train", "--config", "configs/tiny.py",
           "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.eval.every=0",
           "--config.prompts_per_step=2"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(workdir: pathlib.Path, *flags: str) -> list[subprocess.CompletedProcess]:
    """The same command as processes 0 and 1 of one run; both must succeed."""
    port = free_port()
    processes = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(index), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # fmt: skip
        processes.append(subprocess.Popen([*COMMAND, f"--config.workdir={workdir}", *flags],
                                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
    done = []
    for process in processes:
        out, err = process.communicate(timeout=900)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


def params_at(workdir: pathlib.Path, step: int) -> dict:
    return checkpoint.read_state(workdir / "checkpoints" / str(step))["params"]


def assert_close(got: dict, want: dict) -> None:
    flat_got, flat_want = (dict(_leaves(x)) for x in (got, want))
    assert flat_got.keys() == flat_want.keys()
    for key, value in flat_want.items():
        np.testing.assert_allclose(flat_got[key], value, atol=1e-5, rtol=0, err_msg=key)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield prefix + key, np.asarray(value)


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(tmp_path):
    """3 RL steps of configs/tiny.py: in one process on 8 devices; as 2 processes × 4 devices,
    stopped after step 2 (its checkpoint written by both) and started again to step 3."""
    single = tmp_path / "single"
    train_lib.run(tiny_config(steps=3, mesh=MESH8, prompts_per_step=2, **{"eval.every": 0}),
                  single)  # fmt: skip
    multi = tmp_path / "multi"
    two_processes(multi, "--config.steps=2")
    assert_close(params_at(multi, 2), params_at(single, 2))
    # Each process saved its own part of the data iterator beside the shared arrays.
    data = sorted(p.name for p in (multi / "checkpoints" / "2" / "data").glob("*.json"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]
    first, second = two_processes(multi, "--config.steps=3")
    # Process 0 reports; process 1 prints nothing of its own (gloo's C++ logs its peers).
    assert "run folder:" in first.stdout
    assert [line for line in second.stdout.splitlines() if not line.startswith("[Gloo]")] == []
    assert_close(params_at(multi, 3), params_at(single, 3))
    # The same records in the same order as the single process read.
    assert jsonl(multi / "batches.jsonl") == jsonl(single / "batches.jsonl")
    assert [r["step"] for r in jsonl(multi / "metrics.jsonl") if "loss/total" in r] == [1, 2, 3]
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["step"] == 3 and (multi / "model" / "model.safetensors").is_file()
