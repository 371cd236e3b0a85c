"""fcrl.data.pipeline: seeded order, per-epoch reshuffle, disjoint hosts, exact resume."""

import itertools
import json

import pytest

from fcrl.data import pipeline

RECORDS = [{"id": str(i)} for i in range(40)]


def take(it, n: int) -> list[str]:
    return [r["id"] for r in itertools.islice(it, n)]


def test_seeded_order_reshuffled_each_epoch():
    first = take(iter(pipeline.dataset(RECORDS, seed=1, process_index=0, process_count=1)), 80)
    again = take(iter(pipeline.dataset(RECORDS, seed=1, process_index=0, process_count=1)), 80)
    other = take(iter(pipeline.dataset(RECORDS, seed=2, process_index=0, process_count=1)), 80)
    assert first == again and first != other
    assert sorted(first[:40]) == sorted(first[40:]) == sorted(r["id"] for r in RECORDS)
    assert first[:40] != first[40:]


def test_hosts_take_disjoint_shares():
    shares = [take(iter(pipeline.dataset(RECORDS, seed=0, process_index=i, process_count=4,
                                         epochs=1)), 100) for i in range(4)]  # fmt: skip
    assert [len(s) for s in shares] == [10] * 4
    assert sorted(sum(shares, [])) == sorted(r["id"] for r in RECORDS)


def test_resume_from_saved_state_equals_never_stopping():
    ds = pipeline.dataset(RECORDS, seed=3, process_index=1, process_count=2)
    it = iter(ds)
    take(it, 17)
    state = json.loads(json.dumps(it.get_state()))  # survives a checkpoint as JSON
    expected = take(it, 30)
    resumed = iter(ds)
    resumed.set_state(state)
    assert take(resumed, 30) == expected


def test_load_records(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert pipeline.load_records(path) == [{"id": "a"}, {"id": "b"}]
    path.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="train.jsonl:2"):
        pipeline.load_records(path)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.dataset(RECORDS, seed=0, process_index=2, process_count=2)
