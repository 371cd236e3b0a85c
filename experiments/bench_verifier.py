"""Verifier speed on one core: verdicts per second on a mixed batch built from BFCL entries.

  .venv/bin/python experiments/bench_verifier.py [--repeats 5]

The batch: for every entry of the 10 python single-turn categories, the right answer and the
systematic corruptions of fcrl.verifier.render (wrong name, wrong value, extra / dropped
parameter, dropped / duplicated call, float for int, reversed order), each in the method's
`<think>…</think><answer>…</answer>` format; irrelevance entries get no-call and call answers.
Timed (median of --repeats): `verify_batch` in one process (the trainer's path: the completions
of one entry share a ground truth, compiled once), `verify` one completion at a time, and BFCL's
official checker on the same answers in its own prompt format. Needs ./install.sh test for the
official checker. Prints a table and, last, one JSON line.
"""

import argparse
import json
import os
import statistics
import time

from fcrl.eval import bfcl
from fcrl.verifier import verify, verify_batch
from fcrl.verifier.render import CORRUPTIONS, first_accepted, render

THINK = "The user wants the tool that fits; I fill each argument from the query."
NO_CALL = ["[]", "No function fits this request.", "[search_web(query='x')]"]


def mixed_batch() -> list[tuple[str, str, dict, str]]:
    """(think_answer completion, prompt-mode answer, entry, category) for every case."""
    cases = []
    for category in bfcl.PYTHON:
        for entry in bfcl.load(category):
            if not entry["ground_truth"]:
                answers = NO_CALL + [render([(f["name"], {})]) for f in entry["function"][:2]]
            else:
                right = first_accepted(entry["ground_truth"], entry["function"])
                answers = [render(c) for c in [right, *(f(right) for f in CORRUPTIONS.values())]
                           if c is not None]  # fmt: skip
            for answer in answers:
                cases.append(
                    (f"<think>{THINK}</think><answer>{answer}</answer>", answer, entry, category)
                )
    return cases


def rate(fn, n: int, repeats: int) -> float:
    """Items per second of fn() over n items, median of `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    cases = mixed_batch()
    completions = [c[0] for c in cases]
    gts = [c[2]["ground_truth"] for c in cases]
    tools = [c[2]["function"] for c in cases]
    n = len(cases)

    rewards, _ = verify_batch(completions, gts, tools, workers=1)
    official = [bfcl.official_accepts(a, e, cat) for _, a, e, cat in cases]
    agree = sum((r == 1.0) == o for r, o in zip(rewards, official, strict=True)) / n

    pairs = list(zip(completions, gts, tools, strict=True))
    results = {
        "verdicts_per_s": rate(
            lambda: verify_batch(completions, gts, tools, workers=1), n, args.repeats
        ),
        "verify_per_s": rate(lambda: [verify(c, g, t) for c, g, t in pairs], n, args.repeats),
        "official_per_s": rate(
            lambda: [bfcl.official_accepts(a, e, cat) for _, a, e, cat in cases], n, args.repeats
        ),
    }
    results["ratio_vs_official"] = results["verdicts_per_s"] / results["official_per_s"]
    print(f"{n} completions from {len(bfcl.PYTHON)} BFCL categories, one core, "
          f"median of {args.repeats}; reward 1 for {rewards.mean():.1%}, "
          f"agreement with the official checker {agree:.2%}")  # fmt: skip
    print(f"{'path':<44}{'verdicts/s':>12}")
    print(f"{'fcrl verify_batch (shared ground truths)':<44}{results['verdicts_per_s']:>12,.0f}")
    print(f"{'fcrl verify, one at a time':<44}{results['verify_per_s']:>12,.0f}")
    print(f"{'BFCL official decode + ast_checker':<44}{results['official_per_s']:>12,.0f}")
    print(json.dumps({"n": n, "agreement": agree, **results}))


if __name__ == "__main__":
    main()
