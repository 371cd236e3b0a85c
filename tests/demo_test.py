"""The README's first command, the demo (slow: 21 min on 2 CPU cores), killed once
during RL after its step-4 checkpoint and started again: it resumes there without redoing SFT,
evaluates the same 300 held-out items before SFT, after it and after RL, shows RL beating its
SFT start with McNemar's p < 0.05 (0.367 → 0.410, p = 0.047 at commit e12e84e, see the README),
and leaves the curves and a policy that fcrl.generate loads."""

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
    run_until(command, env, lambda lines: any(line.startswith("step 5/") for line in lines))
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft step" not in done.stderr  # the finished SFT phase is not redone
    assert "resumed from step 4" in done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    heldout = summary["heldout"]
    assert [heldout[k]["n"] for k in ("before", "sft", "rl")] == [300] * 3
    assert heldout["rl"]["accuracy"] > heldout["sft"]["accuracy"] > heldout["before"]["accuracy"]
    test = heldout["mcnemar"]
    assert test["versus"] == "rl vs sft" and test["p_value"] < 0.05, test
    assert pathlib.Path(summary["curves"]).is_file()
    answer = subprocess.run([sys.executable, "-m", "fcrl.generate", "--model", summary["model"],
                             "--prompt", "What is the capital of France?"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith("policy (HF folder): ")
