"""BFCL scores from per-item verdicts: accuracies per category, BFCL's aggregates (shared/BFCL.md),
the agreement of our verifier with the official checker, and the summary files (JSON, markdown,
a bar chart beside the paper's numbers)."""

import json
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

from fcrl.eval import bfcl  # noqa: E402

# METHOD.md §6, the FunRL paper's table: (Non-Live AST, Live, Overall (paper)), in %.
PAPER = {
    "Qwen2.5-Coder-7B-Instruct": (84.08, 69.78, 76.93),
    "Qwen2.5-Coder-7B-Instruct + FunRL": (90.40, 81.64, 86.02),
    "Llama-3.2-3B-Instruct": (80.56, 55.80, 68.18),
    "Llama-3.2-3B-Instruct + FunRL": (79.75, 74.77, 77.26),
    "ToolACE-2-8B (FC)": (87.58, 80.05, 83.82),
}
SIMPLE = ("simple_python", "simple_java", "simple_javascript")
NON_LIVE = ("multiple", "parallel", "parallel_multiple")  # beside the mean of SIMPLE
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
IRRELEVANCE = ("irrelevance", "live_irrelevance")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context")  # fmt: skip
# BFCL v4's overall: weights of its parts; multi-turn and agentic are not single-turn.
V4_WEIGHTS = {"non_live_ast": 0.1, "live": 0.1, "irrelevance": 0.1, "multi_turn": 0.3,
              "agentic": 0.4}  # fmt: skip


def aggregates(acc: dict[str, float], n: dict[str, int]) -> dict:
    """BFCL's aggregate scores from per-category accuracies; each lists the parts it lacks
    (its value is then over the parts present, or None with none)."""

    def part(value, missing):
        return {"value": value, "missing": sorted(missing)}

    simple = [acc[c] for c in SIMPLE if c in acc]
    parts = ([np.mean(simple)] if simple else []) + [acc[c] for c in NON_LIVE if c in acc]
    missing = [c for c in (*SIMPLE, *NON_LIVE) if c not in acc]
    out = {"non_live_ast": part(float(np.mean(parts)) if parts else None, missing)}
    live = [c for c in LIVE if c in acc]
    total = sum(n[c] for c in live)
    value = sum(acc[c] * n[c] for c in live) / total if total else None
    out["live"] = part(value, set(LIVE) - set(live))
    irr = [acc[c] for c in IRRELEVANCE if c in acc]
    out["irrelevance"] = part(float(np.mean(irr)) if irr else None, set(IRRELEVANCE) - set(acc))
    out["relevance"] = part(acc.get("live_relevance"), {"live_relevance"} - set(acc))
    turns = [acc[c] for c in MULTI_TURN if c in acc]
    out["multi_turn"] = part(float(np.mean(turns)) if turns else None, set(MULTI_TURN) - set(acc))
    nl, lv = out["non_live_ast"], out["live"]
    both = nl["value"] is not None and lv["value"] is not None
    out["overall_paper"] = part((nl["value"] + lv["value"]) / 2 if both else None,
                                nl["missing"] + lv["missing"])  # fmt: skip
    have = {k: out[k]["value"] for k in ("non_live_ast", "live", "irrelevance", "multi_turn")}
    value = sum(V4_WEIGHTS[k] * (v or 0.0) for k, v in have.items())
    lacking = [k for k in V4_WEIGHTS if have.get(k) is None or out.get(k, {}).get("missing")]
    out["bfcl_v4_partial"] = part(value, lacking)  # missing parts count as 0
    return out


def summarize(scores: list[dict], categories: list[str], entries: dict, config, model_name: str,
              speed: dict) -> dict:  # fmt: skip
    """summary.json's content: per category n, both accuracies and the unchecked count, the
    aggregates by each scorer, the agreement and every disagreement, the speed."""
    per = {}
    for c in categories:
        rows = [s for s in scores if s["category"] == c]
        checked = [s for s in rows if s["official"] is not None and s["ours"] is not None]
        scored = [s["ours"] for s in rows if s["ours"] is not None]
        per[c] = {
            "n": len(rows),
            # Multi-turn has one scorer, BFCL's state checker: None here.
            "ours": float(np.mean(scored)) if scored else None,
            # Unchecked items (BFCL would eval() their text) count as failures here.
            "official": float(np.mean([bool(s["official"]) for s in rows])),
            "unchecked": sum(s["official"] is None for s in rows),
            "agreement": float(np.mean([s["ours"] == s["official"] for s in checked]))
            if checked
            else None,  # fmt: skip
            "total": len(entries[c]) if not config.limit else None,
        }
    n = {c: v["n"] for c, v in per.items()}
    # Our verifier reads Python literals: the agreement is over the python categories, and Java
    # and JavaScript (`true`, `new Path(...)`, typed values) count by the official checker.
    other = {c for c, (_, language) in bfcl.CATEGORIES.items() if language != "python"}
    python = [s for s in scores if s["category"] not in other]
    checked = [s for s in python if s["official"] is not None and s["ours"] is not None]
    differ = [s for s in checked if s["ours"] != s["official"]]
    official = other | set(MULTI_TURN)
    return {
        "model": model_name,
        "config": {
            k: config[k]
            for k in ("model", "fmt", "docs", "dtype", "max_new_tokens", "limit", "seed")
        },  # fmt: skip
        "sampled": bool(config.limit),
        "categories": per,
        # Multi-turn (BFCL's state checker), Java and JavaScript count by BFCL's in both.
        "ours": aggregates(
            {c: v["official"] if c in official else v["ours"] for c, v in per.items()}, n
        ),  # fmt: skip
        "official": aggregates({c: v["official"] for c, v in per.items()}, n),
        "agreement": {
            "items": len(checked),
            "agree": len(checked) - len(differ),
            "fraction": (len(checked) - len(differ)) / len(checked) if checked else None,
            "unchecked": sum(s["official"] is None for s in python),
            "scope": "python categories",
        },
        "disagreements": [
            {k: s[k] for k in ("id", "category", "ours", "official", "reason")} for s in differ
        ],  # fmt: skip
        "unchecked": [s["id"] for s in scores if s["official"] is None],
        "speed": speed,
    }


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def markdown(summary: dict) -> str:
    """The summary as markdown tables."""
    note = " (a seeded sample per category)" if summary["sampled"] else ""
    lines = [f"# BFCL v4: {summary['model']}{note}", "",
             f"fmt {summary['config']['fmt']}, docs {summary['config']['docs']}, greedy, "
             f"max_new_tokens {summary['config']['max_new_tokens']}", "",
             "| category | n | ours | official | unchecked | agreement |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for c, v in summary["categories"].items():
        lines.append(f"| {c} | {v['n']} | {_pct(v['ours'])} | {_pct(v['official'])} | "
                     f"{v['unchecked']} | {_pct(v['agreement'])} |")  # fmt: skip
    names = {"non_live_ast": "Non-Live AST", "live": "Live", "irrelevance": "Irrelevance",
             "relevance": "Relevance", "multi_turn": "Multi-Turn (BFCL's state checker)",
             "overall_paper": "Overall (paper: (Non-Live + Live) / 2)",
             "bfcl_v4_partial": "BFCL v4 overall, partial (missing parts count 0)"}  # fmt: skip
    lines += ["", "| score | ours | official | missing parts |", "|---|---|---|---|"]
    for key, label in names.items():
        ours, official = summary["ours"][key], summary["official"][key]
        lines.append(f"| {label} | {_pct(ours['value'])} | {_pct(official['value'])} | "
                     f"{', '.join(ours['missing']) or '—'} |")  # fmt: skip
    lines += ["", "| model (paper, METHOD.md §6) | Non-Live AST | Live | Overall (paper) |",
              "|---|---|---|---|"]  # fmt: skip
    ours = [summary["ours"][k]["value"] for k in ("non_live_ast", "live", "overall_paper")]
    lines.append(f"| **{summary['model']}** (this run, our verifier) | "
                 + " | ".join(_pct(x) for x in ours) + " |")  # fmt: skip
    for model, values in PAPER.items():
        lines.append(f"| {model} | " + " | ".join(f"{x:.2f}" for x in values) + " |")
    a = summary["agreement"]
    lines += ["", f"Ours vs official (python categories; Java, JavaScript and multi-turn "
              f"count by the official checker): {a['agree']} of {a['items']} items agree "
              f"({_pct(a['fraction'])}%); {a['unchecked']} unchecked (BFCL's decoder would "
              "eval() their text, which is never run)."]  # fmt: skip
    if summary["disagreements"]:
        lines += ["", "| id | category | ours | official | our reason |", "|---|---|---|---|---|"]
        lines += [f"| {d['id']} | {d['category']} | {d['ours']} | {d['official']} | "
                  f"{d['reason']} |" for d in summary["disagreements"]]  # fmt: skip
    speed = summary["speed"]
    if speed.get("prompts"):
        lines += ["", f"Generation: {speed['prompts']} prompts in {speed['seconds']:.0f} s "
                  f"({speed['prompts_per_s']:.2f} prompts/s)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def chart(summary: dict, path: pathlib.Path) -> None:
    """Non-Live AST, Live and the paper's Overall: this run's bars beside the paper's models."""
    keys = ("non_live_ast", "live", "overall_paper")
    rows = {f"{summary['model']} (this run)": [100 * (summary["ours"][k]["value"] or 0)
                                               for k in keys]}  # fmt: skip
    rows |= {m: list(v) for m, v in PAPER.items()}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(rows)
    for i, (model, values) in enumerate(rows.items()):
        ax.bar(np.arange(3) + i * width, values, width, label=model)
    ax.set_xticks(np.arange(3) + 0.4 - width / 2,
                  ["Non-Live AST", "Live", "Overall (paper)"])  # fmt: skip
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("BFCL v4 single-turn" + (" (sampled)" if summary["sampled"] else ""))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary: dict, workdir: pathlib.Path) -> None:
    """WORKDIR/summary.json, summary.md and summary.png."""
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (workdir / "summary.md").write_text(markdown(summary))
    chart(summary, workdir / "summary.png")
