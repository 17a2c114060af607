"""split_records: what download keeps out of training, holds out as the target, and samples as the pool."""

from __future__ import annotations

import re

import pytest

from infosift.data import record_id
from infosift.errors import ContaminationError, DataError
from infosift.splits import Contamination, split_records


def records(lo: int, hi: int) -> list[dict]:
    """Normalized records i in [lo, hi), with content ids (the same i gives the same id in train and test)."""
    out = []
    for i in range(lo, hi):
        prompt, response = f"q{i} how many?", f"step one, step two, step three #### {i}"
        out.append({"id": record_id(prompt, response), "prompt": prompt, "response": response, "source": "t"})
    return out


def ids(recs: list[dict]) -> set[str]:
    return {r["id"] for r in recs}


TRAIN, TEST = records(0, 40), records(35, 50)  # 5 train examples are also test examples


def test_train_examples_in_test_are_dropped_and_counted():
    s = split_records(TRAIN, TEST, target_size=6, seed=3)
    assert s.leaked == 5
    assert not (ids(s.pool) | ids(s.target)) & ids(TEST)
    assert len(s.pool) + len(s.target) == 35
    assert s.contamination == {"share": 0}


def test_target_is_held_out_from_train_and_disjoint_from_pool():
    s = split_records(TRAIN, TEST, target_size=6, pool_size=20, seed=3)
    assert len(s.target) == 6 and not ids(s.target) & ids(s.pool)
    assert ids(s.target) <= ids(TRAIN) and s.test == TEST


def test_sizes_honoured_and_order_kept():
    s = split_records(TRAIN, TEST, pool_size=20, target_size=6, test_size=10, seed=3)
    assert s.counts == {"pool": 20, "target": 6, "validation": 0, "test": 10}
    position = {r["id"]: i for i, r in enumerate(TRAIN + TEST)}
    for part in (s.pool, s.target, s.test):
        assert [position[r["id"]] for r in part] == sorted(position[r["id"]] for r in part)


def test_validation_is_seeded_and_disjoint_from_pool_target_and_test():
    s = split_records(TRAIN, TEST, target_size=6, validation_size=8, seed=3)
    assert len(s.validation) == 8 and ids(s.validation) <= ids(TRAIN)
    for other in (s.pool, s.target, s.test):
        assert not ids(s.validation) & ids(other)
    assert len(s.pool) + len(s.target) + len(s.validation) == 35  # everything else still reaches the pool
    again = split_records(TRAIN, TEST, target_size=6, validation_size=8, seed=3)
    assert again.validation == s.validation and again.pool == s.pool
    assert ids(split_records(TRAIN, TEST, target_size=6, validation_size=8, seed=4).validation) != ids(s.validation)


def test_validation_is_never_contaminated_and_a_size_that_leaves_no_pool_is_an_error():
    s = split_records(TRAIN, TEST, target_size=6, validation_size=8, seed=3,
                      contamination=Contamination(share=0.5, seed=0))  # fmt: skip
    assert not set(s.contamination["ids"]) & ids(s.validation)
    with pytest.raises(DataError, match="validation_size 29 leaves no training pool"):
        split_records(TRAIN, TEST, target_size=6, validation_size=29, seed=3)


def test_none_sizes_keep_everything():
    s = split_records(TRAIN, TEST)
    assert s.pool == TRAIN[:35] and s.target == [] and s.test == TEST


def test_seeded_and_reproducible():
    a = split_records(TRAIN, TEST, pool_size=20, target_size=6, test_size=10, seed=3)
    b = split_records(TRAIN, TEST, pool_size=20, target_size=6, test_size=10, seed=3)
    c = split_records(TRAIN, TEST, pool_size=20, target_size=6, test_size=10, seed=4)
    assert (a.pool, a.target, a.test) == (b.pool, b.target, b.test)
    assert (a.pool, a.target) != (c.pool, c.target)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"target_size": 35}, "target_size 35 leaves no training pool (35 train records)"),
        ({"target_size": 5, "pool_size": 31}, "pool_size 31 is larger than the 30 train records available"),
    ],
)
def test_too_large_sizes_raise_data_error(sizes, message):
    with pytest.raises(DataError) as e:
        split_records(TRAIN, TEST, **sizes)
    assert str(e.value) == message


def test_contamination_alters_the_pool_only():
    clean = split_records(TRAIN, TEST, pool_size=20, target_size=4, seed=0)
    s = split_records(TRAIN, TEST, pool_size=20, target_size=4, seed=0, contamination=Contamination(0.25, 5))
    report = s.contamination
    assert report["n"] == 5 and report["seed"] == 5 and set(report["ids"]) <= ids(s.pool)
    assert (s.target, s.test) == (clean.target, clean.test)
    assert len(ids(s.pool) - ids(clean.pool)) == 5
    assert not set(report["ids"]) & (ids(s.target) | ids(s.test))


@pytest.mark.parametrize(
    ("contamination", "message"),
    [
        (Contamination(1.5, 0), "contamination share must be a number in [0, 1)"),
        (Contamination(0.2, 0, ("swap", "shuffle")), "unknown contamination mode 'shuffle'"),
    ],
)
def test_bad_contamination_raises_contamination_error(contamination, message):
    with pytest.raises(ContaminationError, match=re.escape(message)):
        split_records(TRAIN, TEST, contamination=contamination)


def test_altered_record_equal_to_a_test_record_is_refused():
    pool = records(0, 2)
    # test holds the truncation of each pool record ("step one," is the first third of its eight words)
    truncated = [{**r, "id": record_id(r["prompt"], "step one,"), "response": "step one,"} for r in pool]
    with pytest.raises(ContaminationError, match="equals a target or test record"):
        split_records(pool, truncated, contamination=Contamination(0.5, 0, ("truncate",)))
