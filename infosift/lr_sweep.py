"""The learning-rate sweep of the evidence protocol: chosen on random selections and a validation split only.

A selector comparison is only as good as the fine-tune under it: at a learning rate far from the model's, every
selector looks alike (or whichever buys more steps wins). The protocol therefore picks one learning rate per
pool *before* any selector is run, from seeded random selections scored on the validation split, and freezes
it for every selector; the test split is never read while choosing (tests/test_lr_sweep.py proves it).

    chosen = argmin_lr  mean_seeds  NLL_validation(finetune(random_seed(pool, budget), lr))

Ties go to the smaller rate (the safer one). Each trial is cached by what made it, so a killed sweep resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infosift.errors import InfosiftError


@dataclass
class Trial:
    learning_rate: float
    seed: int
    validation_nll: float  # NLL per assistant token on the validation split
    steps: int  # optimizer steps the fine-tune took


def run_sweep(
    learning_rates: list[float],
    seeds: list[int],
    trial: Callable[[float, int], Trial],
    cache_dir: Path | None = None,
    key: Callable[[float, int], str] | None = None,
) -> list[Trial]:
    """Every (learning rate, seed) trial, in that order; a trial found in ``cache_dir`` under ``key(lr, seed)``
    is read, not rerun."""
    if not learning_rates or not seeds:
        raise InfosiftError("the sweep needs at least one learning rate and one seed")
    trials = []
    for lr in learning_rates:
        for seed in seeds:
            path = cache_dir / f"{key(lr, seed)}.json" if cache_dir is not None and key is not None else None
            if path is not None and path.exists():
                trials.append(Trial(**json.loads(path.read_text())))
                continue
            t = trial(lr, seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(t.__dict__))
            trials.append(t)
    return trials


def summarize(trials: list[Trial]) -> list[dict]:
    """One row per learning rate: mean and spread of validation NLL over seeds, sorted by learning rate."""
    by_lr: dict[float, list[Trial]] = {}
    for t in trials:
        by_lr.setdefault(t.learning_rate, []).append(t)
    rows = []
    for lr in sorted(by_lr):
        vals = [t.validation_nll for t in by_lr[lr]]
        rows.append({"learning_rate": lr, "validation_nll": sum(vals) / len(vals), "min": min(vals),
                     "max": max(vals), "n_seeds": len(vals), "steps": by_lr[lr][0].steps})  # fmt: skip
    return rows


def choose(rows: list[dict]) -> float:
    """The learning rate of the lowest mean validation NLL; the smaller rate on a tie. A diverged trial (NaN or
    inf) never wins."""
    finite = [r for r in rows if r["validation_nll"] == r["validation_nll"] and r["validation_nll"] != float("inf")]
    if not finite:
        raise InfosiftError("every learning rate of the sweep diverged (validation NLL not finite)")
    return min(finite, key=lambda r: (r["validation_nll"], r["learning_rate"]))["learning_rate"]
