"""`python -m fcrl.eval --config configs/eval_bfcl.py`: the BFCL evaluation (fcrl.eval.harness)."""

import functools
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from fcrl import job
from fcrl.eval import harness


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    if config is None:
        sys.exit(job.fail("fcrl.eval", "--config is required: --config configs/eval_bfcl.py"))
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = harness.run(config, config.workdir)
    except (OSError, ValueError) as e:  # they name the file, field or package
        sys.exit(job.report_error("fcrl.eval", e, pathlib.Path(config.workdir)))
    workdir = pathlib.Path(config.workdir)
    print((workdir / "summary.md").read_text())
    print(f"results: {workdir / 'result' / summary['model']} (BFCL's layout); summary: "
          f"{workdir / 'summary.json'}, {workdir / 'summary.png'}")  # fmt: skip


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "an eval config file", lock_config=True)
    app.run(main, flags_parser=functools.partial(job.parse_flags, "fcrl.eval"))
