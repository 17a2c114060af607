"""synthetic: FisherSFT's synthetic multinomial-logistic experiment -> table, metrics, plot.

Reads params.yaml `synthetic`, runs infosift.synthetic.run_experiment and writes
results/synthetic/{table.csv, table.md, prediction_error.png, metrics.json}, each under a temporary
name renamed on success (metrics last: a metrics file means the run finished).
"""

from __future__ import annotations

import os

# Every array here is tiny (d = 10, d*L = 200): BLAS/OpenMP thread pools only add sync cost, and on
# a shared 2-core box they made the Newton fits 25x and FisherSFT's greedy 18x slower (measured).
# Set before numpy/torch load; a value the user exported wins. Only when this runs as the stage: a flow that
# imports the module to check its params must not pass one thread on to every stage it starts.
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from infosift import synthetic as syn  # noqa: E402
from infosift.errors import InfosiftError  # noqa: E402
from infosift.plots import prediction_error_plot  # noqa: E402
from infosift.select import get_selector  # noqa: E402
from stages._common import StageError, atomic_output, check_items, check_keys, check_param, params, run  # noqa: E402

OUT = Path("results/synthetic")
PROBLEM_KEYS = ("d", "num_classes", "tokens_per_sentence", "pool_size", "test_size", "theta_scale")
KEYS = {*PROBLEM_KEYS, "scale_range", "ridge", "budgets", "seeds", "selectors"}


def config(p: dict) -> tuple[dict, list[int], list[int], dict, float]:
    """(selectors, budgets, seeds, problem kwargs, MLE ridge) from the params section, each value checked."""
    check_keys(p, "synthetic", KEYS)
    lows = {"d": 1, "num_classes": 2, "tokens_per_sentence": 1, "pool_size": 1, "test_size": 1}
    defaults = {"d": 10, "num_classes": 20, "tokens_per_sentence": 10, "pool_size": 1000, "test_size": 500}
    problem: dict = {k: check_param(p.get(k, defaults[k]), f"synthetic.{k}", int, low=low) for k, low in lows.items()}
    problem["theta_scale"] = check_param(p.get("theta_scale", 1.0), "synthetic.theta_scale", float, low=0.0)
    if problem["theta_scale"] == 0:
        raise StageError("params.yaml synthetic.theta_scale: must be > 0 (Θ = 0 labels every token uniformly)")
    scale_range = check_param(p.get("scale_range", [0.1, 2.0]), "synthetic.scale_range", list)
    if len(scale_range) != 2:
        raise StageError(f"params.yaml synthetic.scale_range: must be [low, high], got {scale_range!r}")
    lo, hi = (check_param(v, f"synthetic.scale_range[{i}]", float) for i, v in enumerate(scale_range))
    if not 0 < lo <= hi:
        raise StageError(f"params.yaml synthetic.scale_range: must be 0 < low <= high, got {[lo, hi]}")
    problem["scale_range"] = (lo, hi)
    ridge = check_param(p.get("ridge", 1.0), "synthetic.ridge", float)
    if ridge <= 0:
        raise StageError(f"params.yaml synthetic.ridge: must be > 0, got {ridge!r}")
    pool = problem["pool_size"]
    budgets = check_items(p.get("budgets"), "synthetic.budgets", int, low=1)
    if max(budgets) > pool:
        raise StageError(f"params.yaml synthetic.budgets: {max(budgets)} is more than pool_size ({pool})")
    seeds = list(range(check_param(p.get("seeds"), "synthetic.seeds", int, low=1)))
    selectors = check_param(p.get("selectors"), "synthetic.selectors", dict)
    if not selectors:
        raise StageError("params.yaml synthetic.selectors: empty; name at least one selector, e.g. {random: {}}")
    for name, options in selectors.items():
        check_param(options or {}, f"synthetic.selectors.{name}", dict)
        try:  # built once here so that a typo fails now, not after the first seed's fits
            get_selector(name, **(options or {}))
        except (InfosiftError, TypeError) as e:  # unknown selector, unknown or mistyped parameter
            raise StageError(f"params.yaml synthetic.selectors.{name}: {e}") from None
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

    with atomic_output(OUT / "table.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(OUT / "table.md") as tmp:
        tmp.write_text(md)
    with atomic_output(OUT / "prediction_error.png") as tmp:
        prediction_error_plot(syn.summarize(table), tmp, title)
    with atomic_output(OUT / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    print(md, end="")
    print(f"synthetic: {len(table)} fits in {metrics['seconds']} s -> {OUT}/")


if __name__ == "__main__":
    run(main)
