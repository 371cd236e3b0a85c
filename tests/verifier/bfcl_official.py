"""BFCL's official single-turn checker (bfcl-eval), imported offline, as our reference.

Importing it needs BFCL_PROJECT_ROOT and a stand-in for `bfcl_eval.constants.model_config` (the
real one imports every vendor SDK); see shared/BFCL.md. The verdict mirrors eval_runner's
_evaluate_single_ast_entry / _evaluate_single_relevance_entry for a prompt-mode model.
"""

import functools
import os
import sys
import tempfile
import types


@functools.cache
def _checker():
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl_root_"))

    class _Config:
        underscore_to_dot = False  # prompt mode: dotted names stay dotted

    stand_in = types.ModuleType("bfcl_eval.constants.model_config")
    stand_in.MODEL_CONFIG_MAPPING = _Mapping(_Config)
    sys.modules["bfcl_eval.constants.model_config"] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    return (
        Language,
        ast_checker,
        default_decode_ast_prompting,
        is_empty_output,
        (is_function_calling_format_output),
    )


class _Mapping(dict):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def __missing__(self, key):
        return self.config


def official_accepts(text: str, entry: dict, category: str) -> bool:
    """Whether BFCL's checker accepts prompt-mode output `text` for `entry` of `category`."""
    language, ast_checker, decode, is_empty, is_call_format = _checker()
    if "irrelevance" in category:
        try:
            return is_empty(decode(text))
        except Exception:
            return True  # does not decode: no call
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
