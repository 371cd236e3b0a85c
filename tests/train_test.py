"""fcrl.train on configs/tiny.py: the whole loop runs, writes what it promises, resumes exactly
after a SIGKILL (real processes), and gives the same update on 1 device, 8 devices and in
micro-batches; bad configs and inputs end in one line with exit code 2."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from fcrl import checkpoint
from fcrl import train as train_lib
from fcrl.models import load_hf
from fcrl.sharding import path_str

ROOT = pathlib.Path(__file__).parents[1]
MESH8 = {"data": 1, "fsdp": 4, "tensor": 2}
COMMAND = [sys.executable, "-m", "fcrl.train", "--config", "configs/tiny.py",
           "--config.mesh.fsdp=4", "--config.mesh.tensor=2"]  # fmt: skip


def tiny_config(**overrides):
    config = tiny.get_config()
    for key, value in overrides.items():
        *path, last = key.split(".")
        section = config
        for name in path:
            section = section[name]
        section[last] = value
    return config


def params_of(workdir: pathlib.Path) -> dict:
    summary = json.loads((workdir / "summary.json").read_text())
    return checkpoint.read_state(workdir / "checkpoints" / str(summary["step"]))["params"]


def jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted tiny run (4 steps, checkpoints at 2 and 4) on the 8-device mesh, ending
    with BFCL on one item of two categories."""
    workdir = tmp_path_factory.mktemp("reference")
    bfcl = {"eval.bfcl_limit": 1, "eval.bfcl_categories": "simple_python,irrelevance"}
    train_lib.run(tiny_config(**{"mesh": MESH8}, **bfcl), workdir)
    return workdir


def test_the_tiny_run_writes_what_it_promises(reference_run):
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["step"] == 4 and len(summary["params_sha256"]) == 64
    assert checkpoint.fingerprint(params_of(reference_run)) == summary["params_sha256"]
    assert sorted(os.listdir(reference_run / "checkpoints")) == ["2", "4"]
    saved = json.loads((reference_run / "config.json").read_text())
    assert saved["config"]["model"]["path"] == "tiny" and saved["commit"]
    rows = [r for r in jsonl(reference_run / "metrics.jsonl") if "loss/total" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "reward/mean",
        "entropy/mean",
        "kl/mean",
        "grad/norm",
        "rollout/tokens_per_s",
        "time/rollout",
        "time/update",
        "adv/uniform_groups",
        "reward/zero_no_think",
    ):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert all(r["grad/norm"] > 0 and r["update/skipped"] == 0 for r in rows)
    # BFCL's check of where RL started and of the exported policy, each in BFCL's own layout.
    assert set(summary["bfcl"]) == {"before", "rl"}
    for phase, model in (("before", "tiny_model"), ("rl", "model")):
        bfcl = json.loads((reference_run / "bfcl" / phase / "summary.json").read_text())
        assert bfcl["config"]["model"].endswith(model) and bfcl["config"]["limit"] == 1
        assert summary["bfcl"][phase]["categories"].keys() == {"simple_python", "irrelevance"}
        for c in ("simple_python", "irrelevance"):
            result = reference_run / "bfcl" / phase / "result" / model / f"BFCL_v4_{c}_result.json"
            assert len(jsonl(result)) == 1
    completions = jsonl(reference_run / "completions.jsonl")
    assert {c["step"] for c in completions} == {2, 4} and all("reason" in c for c in completions)
    assert len(jsonl(reference_run / "batches.jsonl")) == 4
    assert list((reference_run / "tb").iterdir())  # TensorBoard event files
    heldout = summary["heldout"]
    assert heldout["sft"] is None and heldout["mcnemar"]["versus"] == "rl vs before"
    assert [heldout[k]["n"] for k in ("before", "rl")] == [4, 4]
    assert heldout["rl"]["accuracy"] == 0.0 and sum(heldout["rl"]["zeros"].values()) == 1.0
    assert (reference_run / "curves.png").read_bytes().startswith(b"\x89PNG")
    evals = jsonl(reference_run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0] * 4 + [2] * 4 + [4] * 4
    assert all(e["reward"] == 0.0 and e["reason"] for e in evals)
    heldout = [r for r in jsonl(reference_run / "metrics.jsonl") if "heldout/accuracy" in r]
    assert [r["step"] for r in heldout] == [0, 2, 4]


SFT = {"sft.steps": 3, "steps": 2}  # SFT checkpoints at 2 and 3, then RL steps 1 and 2
SFT_COMMAND = [*COMMAND, "--config.sft.steps=3", "--config.steps=2"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> pathlib.Path:
    """The tiny run with an SFT phase first, uninterrupted, on the 8-device mesh."""
    workdir = tmp_path_factory.mktemp("sft")
    train_lib.run(tiny_config(mesh=MESH8, **SFT), workdir)
    return workdir


@pytest.mark.slow
def test_the_sft_phase_comes_first_and_rl_starts_from_it(sft_run):
    summary = json.loads((sft_run / "summary.json").read_text())
    rows = jsonl(sft_run / "sft" / "metrics.jsonl")
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert sorted(os.listdir(sft_run / "sft" / "checkpoints")) == ["2", "3"]
    assert [e["step"] for e in jsonl(sft_run / "sft" / "eval.jsonl")] == [0] * 4 + [3] * 4
    assert [e["step"] for e in jsonl(sft_run / "eval.jsonl")] == [2] * 4  # no second SFT eval
    heldout = summary["heldout"]
    assert [heldout[k]["n"] for k in ("before", "sft", "rl")] == [4, 4, 4]
    assert heldout["mcnemar"]["versus"] == "rl vs sft"
    assert set(heldout["rl"]["kinds"]) <= {"single", "multiple", "parallel",
                                           "parallel_multiple", "irrelevance"}  # fmt: skip
    # RL's first update starts from the SFT model (its export), not from the initial model.
    sft_model = nnx.state(load_hf(sft_run / "sft" / "model"))
    last = checkpoint.read_state(sft_run / "sft" / "checkpoints" / "3")["params"]
    assert checkpoint.fingerprint(sft_model) == checkpoint.fingerprint(last)
    assert checkpoint.fingerprint(sft_model) != checkpoint.fingerprint(
        nnx.state(load_hf(sft_run / "tiny_model"))
    )
    # The policy's export is the final checkpoint's parameters.
    policy = nnx.state(load_hf(summary["model"]))
    assert checkpoint.fingerprint(policy) == summary["params_sha256"]
    assert pathlib.Path(summary["curves"]).read_bytes().startswith(b"\x89PNG")


def test_the_exported_policy_loads_in_transformers(sft_run):
    """transformers (torch) reads the export and computes our model's logits."""
    import torch
    import transformers

    folder = sft_run / "model"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokens = np.arange(1, 40, dtype=np.int32)[None] % 90
    ours = load_hf(folder, dtype="float32", param_dtype="float32")
    want = ours.logits(ours.hidden(tokens, np.ones_like(tokens, bool))[0])
    with torch.no_grad():
        got = theirs(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_killed_sft_phase_resumes_and_a_finished_one_is_not_redone(sft_run, tmp_path):
    """Killed once SFT's checkpoint 2 is written, then again during RL (SFT done): the third
    start runs no SFT step, and the run ends where the uninterrupted one did."""
    command = [*SFT_COMMAND, f"--config.workdir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run_until(command, env, lambda _: (tmp_path / "sft" / "checkpoints" / "2").is_dir())
    run_until(command, env, lambda lines: any(line.startswith("step 1/2") for line in lines))
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    sft_rows = jsonl(tmp_path / "sft" / "metrics.jsonl")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft step" not in done.stderr and jsonl(tmp_path / "sft" / "metrics.jsonl") == sft_rows
    got = json.loads((tmp_path / "summary.json").read_text())
    want = json.loads((sft_run / "summary.json").read_text())
    assert got["params_sha256"] == want["params_sha256"]
    assert got["heldout"] == want["heldout"]
    assert "McNemar, rl vs sft" in done.stdout and "curves: " in done.stdout


def run_until(command: list[str], env: dict, stop) -> None:
    """Runs the command and SIGKILLs it as soon as stop(stderr lines so far) is true (or lets
    it finish)."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    while process.poll() is None and not stop(lines):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def without_times(rows: list[dict]) -> list[dict]:
    keep = ("time/", "rollout/tokens_per_s", "train/steps_per_s")
    return [{k: v for k, v in r.items() if not k.startswith(keep)} for r in rows]


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(reference_run, tmp_path):
    """Killed the moment the checkpoint of step 2 starts to appear (mid-write, or just after),
    then again while step 3 runs, then started a third time with the same command: the same
    final parameters as the uninterrupted run, the same records in the same order, and the same
    logs (times aside)."""
    command = [*COMMAND, f"--config.workdir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ckpts = tmp_path / "checkpoints"
    run_until(command, env, lambda _: ckpts.is_dir() and any(ckpts.iterdir()))
    run_until(command, env, lambda lines: any("step 3/4" in line for line in lines))
    assert (ckpts / "2").is_dir()  # the third run resumes from step 2
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 2" in done.stderr
    got = json.loads((tmp_path / "summary.json").read_text())
    want = json.loads((reference_run / "summary.json").read_text())
    assert (got["step"], got["params_sha256"]) == (want["step"], want["params_sha256"])
    for name in ("batches.jsonl", "completions.jsonl", "eval.jsonl", "metrics.jsonl"):
        a, b = (without_times(jsonl(d / name)) for d in (tmp_path, reference_run))
        assert a == b, name


def fake_rewards(texts, ground_truths, tools, fmt, shape="binary"):
    """Rewards that vary within a group (a random model earns none), from the text alone."""
    rewards = np.asarray([float(len(t) % 2) for t in texts], np.float32)
    return rewards, np.asarray(["ok" if r else "wrong_value" for r in rewards], object)


@pytest.fixture
def graded(monkeypatch):
    monkeypatch.setattr(train_lib, "verify_batch", fake_rewards)


def one_step(workdir: pathlib.Path, **overrides) -> dict:
    # AdamW with a large eps is SGD scaled by lr / eps: the update is the gradient, so float32
    # noise in it stays noise instead of flipping the sign of near-zero Adam steps.
    base = {
        "steps": 1,
        "prompts_per_step": 2,
        "optim.lr": 1.0,
        "optim.eps": 1.0,
        "optim.weight_decay": 0.0,
        "rl.uniform_groups": "mask",
        "rl.entropy_coef": 0.0,
    }
    train_lib.run(tiny_config(**base | overrides), workdir)  # fmt: skip
    return params_of(workdir)


def flat(tree) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(v, np.float64)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}  # fmt: skip


@pytest.mark.slow
def test_one_device_eight_devices_and_micro_batches_give_one_update(graded, tmp_path):
    """Through the whole loop (rollouts, rewards, batch, update): the 1-device step, the same
    step on a 4 × 2 (fsdp × tensor) mesh, and in 4 micro-batches agree within float32 noise."""
    one = {"mesh": {"data": 1, "fsdp": 1, "tensor": 1}}
    single = flat(one_step(tmp_path / "one", **one))
    initial = flat(nnx.state(load_hf(tmp_path / "one" / "tiny_model")))
    update = {k: single[k] - initial[k] for k in single}
    scale = max(np.abs(u).max() for u in update.values())
    assert scale > 1e-3  # a real update: rewards differ within the groups
    for name, others in (("eight", {"mesh": MESH8}), ("micro", one | {"rl.micro_batches": 4})):
        other = flat(one_step(tmp_path / name, **others))
        assert max(np.abs(other[k] - single[k]).max() for k in single) <= 1e-4 * scale, name
    first = next(r for r in jsonl(tmp_path / "one" / "metrics.jsonl") if "loss/total" in r)
    assert first["update/skipped"] == 0 and 0 < first["reward/mean"] < 1


@pytest.mark.slow
def test_all_uniform_groups_skip_the_update(tmp_path):
    """A random model earns no reward: with uniform groups masked, nothing moves (no AdamW
    momentum or weight decay on a zero gradient), and the skipped updates are counted."""
    config = tiny_config(steps=2, mesh=MESH8, **{"rl.uniform_groups": "mask"})
    summary = train_lib.run(config, tmp_path)
    assert summary["skipped_updates"] == 2
    rows = [r for r in jsonl(tmp_path / "metrics.jsonl") if "update/skipped" in r]
    assert [(r["reward/mean"], r["update/skipped"]) for r in rows] == [(0.0, 1.0), (0.0, 1.0)]
    assert "loss/total" not in rows[0]  # a skipped update has no loss to log
    initial = nnx.state(load_hf(tmp_path / "tiny_model"))
    assert summary["params_sha256"] == checkpoint.fingerprint(initial)


@pytest.mark.slow
def test_mini_batches_on_a_mesh(graded, tmp_path):
    """Two optimizer updates per rollout batch (two mini-batches of whole groups), each placed
    on the 8-device mesh like the batch."""
    one_step(tmp_path, mesh=MESH8, **{"updates.mini_batches": 2})
    (row,) = [r for r in jsonl(tmp_path / "metrics.jsonl") if "update/count" in r]
    # Each mini-batch is one group of 4 here; a group whose fake rewards are uniform skips.
    assert row["update/count"] == 2 and row["update/skipped"] < 2 and "loss/total" in row


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_with_the_last_checkpoint_intact(tmp_path):
    """lr = 1e38 turns the weights into ~1e38 after step 1 (whose loss was finite, and which is
    checkpointed): step 2's loss is not finite, and the run stops naming it."""
    overrides = {"optim.lr": 1e38, "optim.grad_clip": 0.0}
    config = tiny_config(steps=3, checkpoint_every=1, mesh=MESH8, **overrides)
    with pytest.raises(train_lib.NonFiniteLoss, match="step 2: .*checkpoint \\(step 1\\)"):
        train_lib.run(config, tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["1"]
    assert checkpoint.read_state(tmp_path / "checkpoints" / "1")["params"]


BAD = [
    (["--config.nope=1"], "config.nope"),
    (["--config.steps=abc"], "steps"),
    (["--config.rl.bonus=sigmoid"], "rl.bonus"),
    (["--config.updates.mini_batches=3"], "updates.mini_batches"),
    (["--config.data.train=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
    (["--config.model.path=/nonexistent/model"], "model.path"),
    (["--config.model.dtype=float8"], "model.dtype"),
    (["--config.steps=0"], "steps"),
    (["--config.eval.bfcl_limit=1", "--config.eval.bfcl_categories=simple_rust"], "eval.bfcl"),
    (["--config.eval.bfcl_limit=-1"], "eval.bfcl_limit"),
]


BAD.append((["--config=configs/nonexistent.py"], "configs/nonexistent.py"))


@pytest.mark.parametrize("args, named", BAD, ids=[b[1] for b in BAD])
def test_bad_config_or_input_is_one_line_and_exit_2(args, named, tmp_path):
    out = subprocess.run([*COMMAND, f"--config.workdir={tmp_path}", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("fcrl.train: error:")]
    assert len(errors) == 1 and named in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
