"""Data preparation (METHOD.md §5); by default the embedded training set, rules only.

  python -m fcrl.prepare --config configs/prepare.py --config.out=data/prepared

writes data/prepared/{train,val,rejects}.jsonl and summary.json in about 1 s on 2 cores: of
5,000 generated tasks stage 2 keeps 4,818 (4,588 train, 230 val) and drops 182 duplicates.
Point --config.input at an xLAM / BFCL / chat file (--config.format) for real data, and set
--config.judge=local|http for the LLM stages (http: --config.judge_url of an OpenAI-compatible
server, e.g. python -m fcrl.serve).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return ml_collections.ConfigDict(
        {
            "input": "generated",  # a file, or "generated": the embedded task set
            "format": "xlam",  # xlam | bfcl | chat
            "out": "data/prepared",
            "judge": "none",  # none | local | http
            "judge_model": "",  # local: a checkpoint folder (default: the embedded SmolLM2)
            "judge_url": "http://127.0.0.1:8000",  # http: an OpenAI-compatible server
            "judge_name": "",  # http: the model name sent to it
            "judge_max_tokens": 512,  # the longest verdict
            "judge_rounds": 2,  # stage 1: verdict + correction rounds per record
            "judge_final": True,  # stage 3: a final verdict on every kept record
            "keep_unjudged": True,  # keep records whose verdict does not parse
            "val_fraction": 0.05,
            "num_generated": 5000,
            "distractors": 3,  # generated: other tools offered beside the asked ones
            "max_calls": 3,  # generated: the most calls a parallel task asks for
            "seed": 0,
        }
    )
