"""The verifier: a binary reward from an AST comparison with BFCL-style ground truth.

`verify(completion, ground_truth, tools=None, fmt="think_answer")` -> Verdict(reward, reason,
detail); `verify_batch` does many at once, in worker processes above a size threshold. Reasons
are the keys of `REASONS`. Nothing the model wrote is executed: see `fcrl.verifier.parse`.
"""

from fcrl.verifier.match import compile_ground_truth
from fcrl.verifier.parse import FORMATS, parse
from fcrl.verifier.reward import REASONS, SHAPES, Options, Verdict, judge, verify, verify_batch

__all__ = [
    "FORMATS",
    "REASONS",
    "SHAPES",
    "Options",
    "Verdict",
    "compile_ground_truth",
    "judge",
    "parse",
    "verify",
    "verify_batch",
]
