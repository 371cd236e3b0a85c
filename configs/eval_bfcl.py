"""BFCL v4 single-turn evaluation (fcrl.eval): every category from the installed bfcl-eval data.

  python -m fcrl.eval --config configs/eval_bfcl.py --config.workdir=runs/bfcl \
      [--config.model=PATH] [--config.categories=python] [--config.limit=N]

`model`: an HF checkpoint folder (a run's model/ export), "" for the embedded SmolLM2-135M or
"tiny". `categories`: comma-separated names, or `single_turn` (all 13) or `python` (all but
java and javascript). `limit`: a seeded sample of N per category. `fmt`: think_answer (the
method's format) or bfcl (BFCL's own prompt-mode system prompt and bare call lists); a run's
checkpoint is evaluated in the format and `docs` it was trained on. Results, scores and the
summary go to the workdir (fcrl/eval/harness.py); a rerun there resumes.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return ml_collections.ConfigDict(
        {
            "workdir": "runs/bfcl",
            "model": "",  # an HF folder; "" = the embedded SmolLM2-135M-Instruct; "tiny"
            "model_name": "",  # the result folder's name; "" = the model folder's
            "categories": "single_turn",
            "limit": 0,  # N: a seeded sample of N per category; 0 = all
            "seed": 0,
            "fmt": "think_answer",  # think_answer | bfcl
            "docs": "json",  # json | compact (think_answer only): how the functions are listed
            "dtype": "float32",
            # End a row once both verdicts are fixed: think_answer, a text not opening with
            # <think>; bfcl, one that cannot open a call list (fcrl.sampler.call_automaton).
            "early_stop": True,
            "max_new_tokens": 512,
            "batch_size": 32,  # rows of a batch at most ...
            "batch_tokens": 16384,  # ... and rows × prompt width at most
            "buckets": (),  # prompt widths; () = steps of 1.5× from 64 up to the context
            # Entries with the same functions, up to `share` of them, run their prompts' common
            # prefix (the system prompt with the docs) once; 1 = off.
            "share": 4,
        }
    )
