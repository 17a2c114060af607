"""Train/test records -> the pool a selector picks from, the target slice GIP queries with, and the test set.

Why here: these are the rules that keep an evaluation honest, and they deserve direct tests.
- A train example whose id is also in test is dropped (and counted), even if the source splits overlap.
- The target slice is held out from train, never from test, and is disjoint from the pool.
- The validation slice (``validation_size``) is held out from train after the target (``seed + 3``): every
  choice (a learning rate, a filter) is made on it, so the test split is only ever scored. It is disjoint from
  pool, target and test, and never contaminated.
- Each subset is seeded (target: ``seed + 1``; pool and test: ``seed``) and keeps its records' source order.
- A dataset with no test split (one file) gets one carved from train first (``seed + 2``): those records are
  test only, never pool or target.
- Contamination (infosift/contaminate.py), when asked for, alters the POOL only, after it is sampled; an
  altered record may not equal a target or test record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infosift.contaminate import MODES, contaminate
from infosift.data import subsample
from infosift.errors import ContaminationError, DataError


@dataclass(frozen=True)
class Contamination:
    """Make ``share`` of the pool bad with ``modes``, drawn from ``seed`` (see infosift/contaminate.py)."""

    share: float
    seed: int
    modes: tuple[str, ...] = MODES


@dataclass
class Splits:
    """What download writes: the three record lists and what was dropped or altered on the way."""

    pool: list[dict]
    target: list[dict]
    test: list[dict]
    leaked: int  # train examples dropped because their id is in test
    contamination: dict = field(default_factory=lambda: {"share": 0})  # contaminate()'s report, or share 0
    carved: int = 0  # test records held out from train (no test split given), 0 when the dataset had one
    validation: list[dict] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"pool": len(self.pool), "target": len(self.target), "validation": len(self.validation),
                "test": len(self.test)}  # fmt: skip


def split_records(
    train: list[dict],
    test: list[dict] | None,
    *,
    pool_size: int | None = None,
    target_size: int = 0,
    test_size: int | None = None,
    validation_size: int = 0,
    seed: int = 0,
    contamination: Contamination | None = None,
) -> Splits:
    """Pool, target and test from train/test records with stable ids; None sizes keep everything.

    ``test`` None: there is no test split, and ``test_size`` train records (seeded) are held out as one.
    Raises DataError when a size asks for more train records than there are, ContaminationError when the
    contamination cannot be applied.
    """
    carved = 0
    if test is None:
        train, test = carve_test(train, test_size, seed)
        carved, test_size = len(test), None
    test_ids = {r["id"] for r in test}
    leaked = sum(r["id"] in test_ids for r in train)
    train = [r for r in train if r["id"] not in test_ids]

    if target_size >= len(train):
        raise DataError(f"target_size {target_size} leaves no training pool ({len(train)} train records)")
    target = subsample(train, target_size, seed=seed + 1) if target_size else []
    target_ids = {r["id"] for r in target}
    rest = [r for r in train if r["id"] not in target_ids]
    if validation_size >= len(rest):
        raise DataError(f"validation_size {validation_size} leaves no training pool ({len(rest)} train records "
                        "after the target)")  # fmt: skip
    validation = subsample(rest, validation_size, seed=seed + 3) if validation_size else []
    held = {r["id"] for r in validation}
    rest = [r for r in rest if r["id"] not in held]
    if pool_size is not None and pool_size > len(rest):
        raise DataError(f"pool_size {pool_size} is larger than the {len(rest)} train records available")
    pool = subsample(rest, pool_size, seed=seed)
    test = subsample(test, test_size, seed=seed)
    splits = Splits(pool, target, test, leaked, carved=carved, validation=validation)
    if contamination is not None:
        clean = target_ids | held | {r["id"] for r in test}
        splits.pool, splits.contamination = contaminate_pool(pool, contamination, clean)
    return splits


def carve_test(train: list[dict], size: int | None, seed: int) -> tuple[list[dict], list[dict]]:
    """(train less the held-out records, ``size`` seeded train records as the test split), each in source order.

    Drawn with ``seed + 2``, apart from the target's and the pool's draws, so the other sizes do not move it.
    """
    if size is None or size < 1:
        raise DataError("no test split: say how many train records to hold out as one (test_size)")
    if size >= len(train):
        raise DataError(f"test_size {size} would hold out every one of the {len(train)} train records as test")
    test = subsample(train, size, seed=seed + 2)
    held = {r["id"] for r in test}
    return [r for r in train if r["id"] not in held], test


def contaminate_pool(pool: list[dict], c: Contamination, clean_ids: set[str]) -> tuple[list[dict], dict]:
    """The pool with ``c`` applied and contaminate()'s report; no altered record may equal a clean one."""
    try:
        pool, report = contaminate(pool, c.share, seed=c.seed, modes=c.modes)
    except (ValueError, TypeError) as e:  # a bad share, seed or mode
        raise ContaminationError(str(e)) from None
    clash = sorted(set(report["ids"]) & clean_ids)
    if clash:
        raise ContaminationError(f"altered record {clash[0]} equals a target or test record")
    return pool, report
