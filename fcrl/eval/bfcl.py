"""BFCL's single-turn data, read from the installed `bfcl-eval` package (installed --no-deps),
and its official checker, the reference our verifier is tested against.

The data is found without importing the package (its import pulls in vendor SDKs). Each test
line is joined with its possible answer by id; irrelevance categories have ground truth [].
"""

import ast
import functools
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import types
import warnings

# Every single-turn category: (score group, language). Groups: "non_live" and "live" are AST
# checks against possible answers; "irrelevance" is right without a call, "relevance" with any.
CATEGORIES = {
    "simple_python": ("non_live", "python"),
    "simple_java": ("non_live", "java"),
    "simple_javascript": ("non_live", "javascript"),
    "multiple": ("non_live", "python"),
    "parallel": ("non_live", "python"),
    "parallel_multiple": ("non_live", "python"),
    "live_simple": ("live", "python"),
    "live_multiple": ("live", "python"),
    "live_parallel": ("live", "python"),
    "live_parallel_multiple": ("live", "python"),
    "irrelevance": ("irrelevance", "python"),
    "live_irrelevance": ("irrelevance", "python"),
    "live_relevance": ("relevance", "python"),
}
# The python categories with a verdict per answer (our verifier's scope).
PYTHON = tuple(c for c, (g, lang) in CATEGORIES.items() if lang == "python" and g != "relevance")


def has_answers(category: str) -> bool:
    """Whether the category is scored against possible answers (an AST category)."""
    return CATEGORIES[category][0] in ("non_live", "live")


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
    tests = jsonl(root / f"BFCL_v4_{category}.json")
    if not has_answers(category):
        return [{**t, "ground_truth": []} for t in tests]
    answers = {
        a["id"]: a["ground_truth"] for a in jsonl(root / f"possible_answer/BFCL_v4_{category}.json")
    }
    missing = [t["id"] for t in tests if t["id"] not in answers]
    if missing:
        raise ValueError(f"{category}: no possible answer for {missing[:5]}")
    return [{**t, "ground_truth": answers[t["id"]]} for t in tests]


def jsonl(path: pathlib.Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def official_accepts(text: str, entry: dict, category: str) -> bool:
    """Whether BFCL's own checker accepts prompt-mode output `text` for `entry` of `category`.

    Mirrors eval_runner's _evaluate_single_ast_entry / _evaluate_single_relevance_entry with the
    default prompt-mode decoder. Needs the checker's imports (requirements.txt). BFCL's decoder
    eval()s arithmetic and lambdas in argument values: `evals_code` says whether it would, and a
    caller holding model output must not pass such text here.
    """
    with warnings.catch_warnings():  # its ast.parse warns on odd literals ("1st")
        warnings.simplefilter("ignore", SyntaxWarning)
        return _official_accepts(text, entry, category)


def _official_accepts(text: str, entry: dict, category: str) -> bool:
    language, return_format, ast_checker, decode, is_empty, is_call_format = _official()
    group, lang = CATEGORIES[category]
    if group in ("irrelevance", "relevance"):
        try:
            called = not is_empty(decode(text, return_format.PYTHON))
        except Exception:  # BFCL: text that does not decode holds no call
            called = False
        return called == (group == "relevance")
    try:
        decoded = decode(text, getattr(return_format, lang.upper()))
    except Exception:
        return False
    if not is_call_format(decoded):
        return False
    result = ast_checker(entry["function"], decoded, entry["ground_truth"],
                         getattr(language, lang.upper()), category, "fcrl")  # fmt: skip
    return result["valid"]


def evals_code(text: str) -> bool:
    """Whether BFCL's python decoder would eval() part of `text`: it runs `eval` on every binary
    operation and lambda among the argument values, which model output must never reach."""
    src = text.strip("`\n ")
    src = ("" if src.startswith("[") else "[") + src + ("" if src.endswith("]") else "]")
    try:  # the decoder's own steps (default_decode_ast_prompting, then ast_parse)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(src.strip().strip("'"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return any(isinstance(node, (ast.BinOp, ast.Lambda)) for node in ast.walk(tree))


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
    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    return (
        Language,
        ReturnFormat,
        ast_checker,
        default_decode_ast_prompting,
        is_empty_output,
        is_function_calling_format_output,
    )
