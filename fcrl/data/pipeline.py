"""grain input for training: prepared records, shuffled by seed (anew each epoch), split across
hosts, through an iterator whose state (a small dict) goes into checkpoints.

  it = iter(dataset(load_records("data/prepared/train.jsonl"), seed=0))
  batch = [next(it) for _ in range(8)]
  state = it.get_state()        # save with the checkpoint (orbax: grain.checkpoint.CheckpointSave)
  it.set_state(state)           # resume exactly there
"""

import json
import pathlib

import grain
import jax


def load_records(path: str | pathlib.Path) -> list[dict]:
    """The records of a prepared JSON Lines file (train.jsonl / val.jsonl)."""
    records = []
    with pathlib.Path(path).open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not JSON ({e})") from None
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def dataset(
    records: list[dict],
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    epochs: int | None = None,
) -> grain.IterDataset:
    """Records in a seeded order, reshuffled every epoch (`epochs` None: forever); this host
    takes every process_count-th one from its process_index (default: JAX's)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index: {index} is not in [0, {count})")
    ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat(epochs)
    return ds[index::count].to_iter_dataset()
