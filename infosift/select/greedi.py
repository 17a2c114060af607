"""GreeDi: two-round distributed greedy (Mirzasoleiman et al. 2013), with random parts (Barbosa et al. 2015).

A pool too big for one greedy is split at random into k parts. Round 1 runs the selector's own greedy for the
full budget on each part, independently (one process, or k Ray tasks: the caller's ``round1``). Round 2 runs
the same greedy over the union of the k winning sets (at most k * budget examples). The answer is the better,
by the selector's objective, of the union's set and the best single part's set.

Why it works: f(S) = log det(ridge*I + sum_{i in S} X_i^T X_i) is monotone submodular and depends only on the
rows of S, so a set chosen on a part scores the same on the whole pool, and each run's exact marginal gains
sum to f(S) - f(empty) (the objective CELF compares too, select/celf.py). With a random partition the better
of the two sets is a constant-factor approximation in expectation (Barbosa et al.: (1 - 1/e)/2 for a
cardinality budget); in practice it lands within a few percent of the central greedy (bench/select_bench.py).
k = 1 is the central greedy itself: one part holding the whole pool, in its order.

Budgets. Each part and the union get the full budget, capped at what they hold (an example budget above a
part's size takes the whole part; a token budget above its tokens takes all of them; a part whose every
example costs more than the budget contributes nothing), so the final set fits the budget as the central one.
A token budget is filled within the union, not the pool: what is left is less than the cheapest example of
the union not chosen, and an example outside the union might still fit (at most one short example's worth).

This module is engine-agnostic: ``greedi`` takes ``round1(parts, budget, seed, unit)``; ``local_round1``
runs it here (each part a TokenFeatures.view: its rows are read from the pool as the greedy needs them, never
copied whole), infosift/scale/select.py runs it as Ray tasks that each read only their rows from disk.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable

import numpy as np

from infosift.features import TokenFeatures
from infosift.select.base import SelectionError, SelectionResult, Selector, budget_info, check_budget, unit_costs

__all__ = [
    "ENGINES",
    "Distributed",
    "check_distributable",
    "check_engine",
    "check_partitions",
    "greedi",
    "local_round1",
    "partition",
    "select_rows",
]

ENGINES = ("local", "ray")

# (rows of each part in the full pool, budget, seed, unit) -> one result per part, indices into the full pool
Round1 = Callable[[list[np.ndarray], int, int, str], list[SelectionResult]]


def check_partitions(partitions: object, n: int | None = None) -> int:
    """k as an int in [1, n]: more parts than examples would leave parts empty."""
    if isinstance(partitions, bool) or not isinstance(partitions, numbers.Integral) or int(partitions) < 1:
        raise SelectionError(f"partitions must be a whole number >= 1, got {partitions!r}")
    if n is not None and int(partitions) > n:
        raise SelectionError(f"partitions {int(partitions)} is larger than the pool ({n} examples)")
    return int(partitions)


def check_engine(engine: object) -> str:
    if engine not in ENGINES:
        raise SelectionError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return str(engine)


def check_distributable(selector: Selector) -> None:
    """Only a selector whose gains are exact marginal gains of a set objective can be split and compared."""
    if not getattr(selector, "distributable", False):
        raise SelectionError(
            f"selector {getattr(selector, 'name', selector)!r} cannot run distributed (partitions/engine): its "
            "gains are not the marginal gains of a set objective; distributable: fishersft, sentence_od"
        )


def partition(n: int, k: int, seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into k parts of near-equal size, each sorted (ties keep their order)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, k)]


def fitting_budget(costs: np.ndarray, budget: int, unit: str) -> int:
    """The budget capped at what these examples hold; 0 when none of them fits it."""
    if len(costs) == 0 or int(costs.min()) > budget:
        return 0
    return min(int(budget), len(costs) if unit == "examples" else int(costs.sum()))


def objective(result: SelectionResult) -> float:
    """f(S) - f(empty): the sum of the run's exact marginal gains (0 for an empty set)."""
    return float(np.sum(result.gains)) if result.gains is not None and len(result.gains) else 0.0


def select_rows(
    selector: Selector, part: TokenFeatures, rows: np.ndarray, budget: int, seed: int, unit: str
) -> SelectionResult:
    """Run ``selector`` on ``part`` (the pool's ``rows``, in that order); indices come back as pool rows."""
    rows, t0, c0 = np.asarray(rows, dtype=np.int64), time.perf_counter(), time.process_time()
    b = fitting_budget(unit_costs(part, unit), budget, unit)
    if b == 0:
        res = SelectionResult(np.zeros(0, dtype=np.int64), np.zeros(0), {})
    else:
        res = selector.select(part, budget=b, seed=seed, unit=unit)
    read = {"rows": len(rows), "token_rows": int(len(part.values)), "objective": objective(res)}
    read.update(select_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)  # cpu: what a free core takes
    return SelectionResult(rows[np.asarray(res.indices, dtype=np.int64)], res.gains, {**res.info, "part": read})


def local_round1(selector: Selector, features: TokenFeatures) -> Round1:
    """Round 1 in this process, one part after another."""

    def run(parts: list[np.ndarray], budget: int, seed: int, unit: str) -> list[SelectionResult]:
        return [select_rows(selector, features.view(rows), rows, budget, seed, unit) for rows in parts]

    return run


def greedi(
    selector: Selector,
    features: TokenFeatures,
    budget: int,
    partitions: int,
    seed: int = 0,
    unit: str = "examples",
    round1: Round1 | None = None,
) -> SelectionResult:
    """The better of the greedy over the union of the parts' winners and the best part (see the module).

    ``seed`` draws the partition and is passed on to the selector (a stochastic greedy's samples).
    """
    costs = check_budget(features, budget, unit)
    k = check_partitions(partitions, len(features))
    parts, t0 = partition(len(features), k, seed), time.perf_counter()
    results = (round1 or local_round1(selector, features))(parts, budget, seed, unit)
    t1 = time.perf_counter()
    scores = [objective(r) for r in results]
    best = int(np.argmax(scores))  # the lowest part on ties
    info = {"partitions": k, "partition_seed": int(seed), "best_part": best, "objective_best_part": scores[best]}
    winner, won = results[best], "part"
    if k > 1:
        union = np.sort(np.concatenate([r.indices for r in results]))
        joint = select_rows(selector, features.view(union), union, budget, seed, unit)
        info.update(union_size=len(union), objective_union=objective(joint), round2_cpu_s=joint.info["part"]["cpu_s"])
        if objective(joint) >= scores[best]:
            winner, won = joint, "union"
    info.update(greedi_winner=won, parts=[r.info["part"] for r in results])
    info.update(round1_s=t1 - t0, round2_s=time.perf_counter() - t1)
    run_info = {key: v for key, v in winner.info.items() if key != "part"}
    spent = budget_info(costs, winner.indices, budget, unit)
    return SelectionResult(winner.indices, winner.gains, {**run_info, **info, **spent})


class Distributed:
    """A distributable selector run as GreeDi over ``partitions`` parts; ``round1`` picks where round 1 runs.

    ``round1(selector, features)`` returns the Round1 callable (default: this process). The partition is drawn
    with the selection seed, so with k > 1 each seed is its own selection.
    """

    def __init__(
        self,
        base: Selector,
        partitions: int = 1,
        engine: str = "local",
        round1: Callable[[Selector, TokenFeatures], Round1] | None = None,
    ) -> None:
        check_distributable(base)
        self.base, self.partitions, self.engine = base, check_partitions(partitions), check_engine(engine)
        self.round1 = round1 or local_round1
        self.name = getattr(base, "name", "distributed")
        self.deterministic = bool(getattr(base, "deterministic", False)) and self.partitions == 1

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        check_partitions(self.partitions, len(features))
        res = greedi(self.base, features, budget, self.partitions, seed, unit, self.round1(self.base, features))
        res.info["engine"] = self.engine
        return res
