"""synthetic: FisherSFT's synthetic multinomial-logistic experiment -> table, metrics, plot.

Reads params.yaml `synthetic`, runs infosift.synthetic.run_experiment and writes
results/synthetic/{table.csv, table.md, prediction_error.png, metrics.json}, each under a temporary
name renamed on success (metrics last: a metrics file means the run finished).
"""

from __future__ import annotations

import os

# Every array here is tiny (d = 10, d*L = 200): BLAS/OpenMP thread pools only add sync cost, and on
# a shared 2-core box they made the Newton fits 25x and FisherSFT's greedy 18x slower (measured).
# Set before numpy/torch load; a value the user exported wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from infosift import synthetic as syn  # noqa: E402
from stages._common import StageError, atomic_output, params, run  # noqa: E402

OUT = Path("results/synthetic")
PROBLEM_KEYS = ("d", "num_classes", "tokens_per_sentence", "pool_size", "test_size", "theta_scale")


def config(p: dict) -> tuple[dict, list[int], list[int], dict, float]:
    """(selectors, budgets, seeds, problem kwargs, MLE ridge) from the params section, validated."""
    try:
        problem = {k: p[k] for k in PROBLEM_KEYS if k in p}
        problem["scale_range"] = tuple(float(s) for s in p.get("scale_range", (0.1, 2.0)))
        budgets, seeds = [int(n) for n in p["budgets"]], list(range(int(p["seeds"])))
        selectors, ridge = dict(p["selectors"]), float(p.get("ridge", 1.0))
    except KeyError as e:
        raise StageError(f"params.yaml synthetic: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise StageError(f"params.yaml synthetic: {e}") from None
    pool = int(problem.get("pool_size", 1000))
    if not budgets or min(budgets) < 1 or max(budgets) > pool:
        raise StageError(f"synthetic budgets {budgets} must lie in 1..pool_size ({pool})")
    if not seeds or ridge <= 0 or not selectors:
        raise StageError("synthetic needs seeds >= 1, ridge > 0 and at least one selector")
    lo, hi = problem["scale_range"]
    if not 0 < lo <= hi:
        raise StageError(f"synthetic scale_range must be 0 < low <= high, got {[lo, hi]}")
    return {k: dict(v or {}) for k, v in selectors.items()}, budgets, seeds, problem, ridge


def main(argv: list[str]) -> None:
    selectors, budgets, seeds, problem, ridge = config(params("synthetic"))
    t0 = time.perf_counter()
    table = syn.run_experiment(selectors, budgets, seeds, ridge=ridge, **problem)
    md, metrics = syn.report(table)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    title = (
        f"d={problem.get('d', 10)}, L={problem.get('num_classes', 20)}, "
        f"M={problem.get('tokens_per_sentence', 10)}, N={problem.get('pool_size', 1000)}, "
        f"{len(seeds)} seeds, bars = s.e."
    )
    fig = syn.figure(syn.summarize(table), title)

    with atomic_output(OUT / "table.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(OUT / "table.md") as tmp:
        tmp.write_text(md)
    with atomic_output(OUT / "prediction_error.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    with atomic_output(OUT / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    print(md, end="")
    print(f"synthetic: {len(table)} fits in {metrics['seconds']} s -> {OUT}/")


if __name__ == "__main__":
    run(main)
