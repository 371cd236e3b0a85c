"""The repository is ruff-formatted and ruff-clean (the settings live in pyproject.toml)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]])
def test_ruff(command):
    # ruff comes with the test requirements, beside this interpreter (./install.sh test).
    ruff = shutil.which("ruff", path=pathlib.Path(sys.executable).parent) or shutil.which("ruff")
    assert ruff, "ruff is not installed: ./install.sh test"
    out = subprocess.run([ruff, *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
