"""BFCL's single-turn data, read from the installed `bfcl-eval` package (installed --no-deps),
and its official checker, the reference our verifier is tested against.

The data is found without importing the package (its import pulls in vendor SDKs). Each test
line is joined with its possible answer by id; irrelevance categories have ground truth [].
"""

import functools
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import types

# The python single-turn categories: (name, has possible answers).
CATEGORIES = {
    "simple_python": True,
    "multiple": True,
    "parallel": True,
    "parallel_multiple": True,
    "live_simple": True,
    "live_multiple": True,
    "live_parallel": True,
    "live_parallel_multiple": True,
    "irrelevance": False,
    "live_irrelevance": False,
}


def data_dir() -> pathlib.Path:
    """bfcl_eval/data of the installed package."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "bfcl-eval is not installed: pip install --no-deps bfcl-eval (see shared/BFCL.md)"
        )
    return pathlib.Path(spec.submodule_search_locations[0]) / "data"


def load(category: str) -> list[dict]:
    """Entries {id, question, function, ground_truth} of one category, in file order."""
    if category not in CATEGORIES:
        raise ValueError(f"category: unknown {category!r}; expected one of {list(CATEGORIES)}")
    root = data_dir()
    tests = _jsonl(root / f"BFCL_v4_{category}.json")
    if not CATEGORIES[category]:
        return [{**t, "ground_truth": []} for t in tests]
    answers = {
        a["id"]: a["ground_truth"]
        for a in _jsonl(root / f"possible_answer/BFCL_v4_{category}.json")
    }
    missing = [t["id"] for t in tests if t["id"] not in answers]
    if missing:
        raise ValueError(f"{category}: no possible answer for {missing[:5]}")
    return [{**t, "ground_truth": answers[t["id"]]} for t in tests]


def _jsonl(path: pathlib.Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def official_accepts(text: str, entry: dict, category: str) -> bool:
    """Whether BFCL's own checker accepts prompt-mode output `text` for `entry` of `category`.

    Mirrors eval_runner's _evaluate_single_ast_entry / _evaluate_single_relevance_entry with the
    default prompt-mode decoder. Needs the checker's imports (requirements-test.txt). Note that
    BFCL's decoder eval()s some expressions: pass it only text you would run.
    """
    language, ast_checker, decode, is_empty, is_call_format = _official()
    if "irrelevance" in category:
        try:
            return is_empty(decode(text))
        except Exception:  # BFCL: text that does not decode holds no call
            return True
    try:
        decoded = decode(text)
    except Exception:
        return False
    if not is_call_format(decoded):
        return False
    result = ast_checker(
        entry["function"], decoded, entry["ground_truth"], language.PYTHON, category, "fcrl"
    )
    return result["valid"]


class _AnyModel(dict):
    """Stand-in for bfcl_eval's MODEL_CONFIG_MAPPING: every model keeps dotted names."""

    def __missing__(self, key):
        return types.SimpleNamespace(underscore_to_dot=False)


@functools.cache
def _official():
    # The checker creates folders under BFCL_PROJECT_ROOT at import, and its model_config module
    # imports every vendor SDK: a stand-in goes into sys.modules first (shared/BFCL.md).
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl_root_"))
    stand_in = types.ModuleType("bfcl_eval.constants.model_config")
    stand_in.MODEL_CONFIG_MAPPING = _AnyModel()
    sys.modules.setdefault("bfcl_eval.constants.model_config", stand_in)
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    return (
        Language,
        ast_checker,
        default_decode_ast_prompting,
        is_empty_output,
        is_function_calling_format_output,
    )
