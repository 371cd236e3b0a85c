"""The README's first command, the demo (slow: ~20 min on 2 CPU cores), killed once during RL
and started again: it resumes without redoing SFT, RL beats its SFT start on the same held-out
items (McNemar, p < 0.05), and it leaves the curves and a policy that fcrl.generate loads."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.train_test import ROOT, run_until

pytestmark = pytest.mark.slow


def test_the_demo(tmp_path):
    command = [sys.executable, "-m", "fcrl.train", "--config", "configs/demo.py",
               f"--config.workdir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # the demo's own devices: the machine's, not 8 simulated ones
    run_until(command, env, lambda lines: any(line.startswith("step 2/") for line in lines))
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft step" not in done.stderr  # the finished SFT phase is not redone
    summary = json.loads((tmp_path / "summary.json").read_text())
    heldout = summary["heldout"]
    assert [heldout[k]["n"] for k in ("before", "sft", "rl")] == [300] * 3
    assert heldout["rl"]["accuracy"] > heldout["sft"]["accuracy"]
    assert heldout["mcnemar"]["p_value"] < 0.05, heldout["mcnemar"]
    assert pathlib.Path(summary["curves"]).is_file()
    answer = subprocess.run([sys.executable, "-m", "fcrl.generate", "--model", summary["model"],
                             "--prompt", "What is the capital of France?"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith("policy (HF folder): ")
