"""Test-wide settings: 8 simulated CPU devices and strict rank promotion (set before jax starts);
shared fixtures: a tiny checkpoint folder, and fcrl.serve running on it."""

import os
import pathlib
import subprocess
import sys
import threading

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random checkpoint folder with a tokenizer (tests/models/tiny.py)."""
    from tests.models import tiny

    return tiny.tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="session")
def served(tiny_model_dir) -> str:
    """`python -m fcrl.serve` on the tiny model, as a real process on 127.0.0.1: its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fcrl.serve", "--model", str(tiny_model_dir), "--port", "0",
         "--max-new-tokens", "64"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = process.stderr.readline()
    while line and "listening on" not in line:
        line = process.stderr.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"fcrl.serve did not start: {process.stderr.read()[-2000:]}")
    # Drain the request log so the server never blocks on a full pipe.
    threading.Thread(target=process.stderr.read, daemon=True).start()
    yield line.split("listening on ")[1].strip()
    process.terminate()
    process.wait(timeout=30)
