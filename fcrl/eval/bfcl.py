"""BFCL's single-turn data, read from the installed `bfcl-eval` package (installed --no-deps).

The package is found without importing it (its import pulls in vendor SDKs). Each test line is
joined with its possible answer by id; irrelevance categories have no answers (ground truth []).
"""

import importlib.util
import json
import pathlib

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
