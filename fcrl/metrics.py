"""What a run writes as it goes: flat `/`-namespaced metrics in WORKDIR/metrics.jsonl and in
TensorBoard event files (tensorboardX, no TensorFlow), and other per-step JSON Lines logs
(completions.jsonl, batches.jsonl, eval.jsonl).

A resumed run first cuts every log back to the steps its checkpoint holds (and TensorBoard
purges the later events), so the files read as one uninterrupted run.
"""

import json
import math
import os
import pathlib

import tensorboardX

LOGS = ("metrics.jsonl", "completions.jsonl", "batches.jsonl", "eval.jsonl")


def cut_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Keeps the rows of `path` with step ≤ last_step (a line cut by a crash goes too); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class Writer:
    """Appends metrics and logs of steps after `start_step` (the resumed checkpoint's); with
    `enabled` False (every process but the first of a multi-process run), writes nothing."""

    def __init__(self, workdir: pathlib.Path, start_step: int, enabled: bool = True):
        self.workdir, self.enabled = pathlib.Path(workdir), enabled
        self.files, self.tb = {}, None
        if not enabled:
            return
        for name in LOGS:
            cut_jsonl(self.workdir / name, start_step)
        self.files = {name: (self.workdir / name).open("a", encoding="utf-8") for name in LOGS}
        self.tb = tensorboardX.SummaryWriter(str(self.workdir / "tb"), purge_step=start_step + 1)

    def log(self, name: str, step: int, row: dict) -> None:
        """One JSON line {"step": step, **row} in `name` (one of LOGS)."""
        if not self.enabled:
            return
        f = self.files[name]
        f.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        f.flush()

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.log("metrics.jsonl", step, metrics)
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        if self.tb is not None:
            self.tb.close()


# (title, metrics.jsonl key) of each panel of curves.png
CURVES = (
    ("training reward", "reward/mean"),
    ("held-out accuracy (greedy)", "heldout/accuracy"),
    ("entropy of the <think> span", "rollout/think_entropy"),
    ("KL to the reference", "kl/mean"),
    ("completion length (tokens)", "rollout/length_mean"),
    ("<think> length (tokens)", "rollout/think_length_mean"),
)


def plot(workdir: pathlib.Path) -> pathlib.Path:
    """WORKDIR/curves.png: the CURVES of metrics.jsonl against the step (a panel whose metric
    was never logged says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (title, key) in zip(axes.flat, CURVES, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    out = workdir / "curves.png"
    fig.savefig(out.with_suffix(".tmp.png"), dpi=90)
    plt.close(fig)
    os.replace(out.with_suffix(".tmp.png"), out)
    return out
