"""sweep: the learning rate for every selector, chosen on random selections and the validation split.

For each learning rate in ``sweep.learning_rates`` and seed in ``sweep.seeds``, fine-tune the base model (the
finetune params, the first of finetune.losses) on ``sweep.budget`` seeded random pool examples and score the
validation split's NLL; the rate of the lowest mean wins (infosift/lr_sweep.py). The test split is not read.
Writes results/sweep/{sweep.json, sweep.csv, sweep.png}; `python -m flows.evidence` freezes the chosen rate
(finetune.train.learning_rate) for every selector of the pool. Each trial is cached in .cache/sweep by what
made it: a killed sweep resumes at the next trial.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
from pathlib import Path

from infosift.data import read_examples, subsample
from infosift.errors import InfosiftError
from infosift.evaluate import heldout_nll
from infosift.lr_sweep import Trial, choose, run_sweep, summarize
from infosift.manifest import content_hash
from infosift.models import load_model_and_tokenizer, model_fingerprint
from infosift.plots import lr_sweep_plot
from infosift.steps import check_step_floor
from infosift.train import DEFAULT_ARGS, finetune
from stages._common import StageError, atomic_output, check_items, check_keys, check_param, params, run
from stages.finetune import checked_finetune_params, train_config
from stages.model import base_model_dir, load_options, model_options, model_params

OUT = Path("results/sweep")
CACHE = Path(".cache/sweep")  # one JSON per finished trial, keyed by everything that made it
KEYS = {"learning_rates", "budget", "seeds"}


def checked_params() -> dict:
    """params.yaml sweep: at least one positive learning rate, a budget in examples, seeds."""
    p = params("sweep")
    check_keys(p, "sweep", KEYS)
    rates = check_items(p.get("learning_rates"), "sweep.learning_rates", float)
    if not rates or any(r <= 0 for r in rates):
        raise StageError(f"params.yaml sweep.learning_rates: positive rates, got {rates!r}")
    check_param(p.get("budget"), "sweep.budget", int, low=1)
    check_items(p.get("seeds", [0]), "sweep.seeds", int)
    return p


def main(argv: list[str]) -> None:
    if argv:
        raise StageError("usage: python -m stages.sweep")
    p = checked_params()
    ft = checked_finetune_params(params("finetune"))
    loss = (ft.get("losses") or ["nll"])[0]
    ev = params("evaluate")
    val_path = Path("data/download/validation.jsonl")
    if not val_path.is_file() or val_path.stat().st_size == 0:
        raise StageError(f"{val_path} is empty: set download.validation_size (the sweep scores "
                         "learning rates on it, never on the test split)")  # fmt: skip
    validation = read_examples(val_path)
    pool = read_examples("data/download/pool.jsonl")
    if p["budget"] > len(pool):
        raise StageError(f"params.yaml sweep.budget: {p['budget']} examples, but the pool has {len(pool)}")
    try:
        steps = check_step_floor(p["budget"], {**DEFAULT_ARGS, **(ft.get("train") or {})},
                                 int(ft.get("step_floor", 0)), int(ft.get("processes", 1)))  # fmt: skip
    except InfosiftError as e:
        raise StageError(f"sweep.budget: {e}") from None
    base_dir, trust = base_model_dir()
    mp = model_params()
    fingerprint = model_fingerprint(base_dir, mp["cache_dir"])

    def config(lr: float, seed: int):
        return train_config({**ft, "train": {**(ft.get("train") or {}), "learning_rate": lr}}, loss, seed)

    def key(lr: float, seed: int) -> str:
        chosen = [r["id"] for r in subsample(pool, p["budget"], seed=seed)]
        return content_hash({"base": fingerprint, "ids": chosen, "train": dataclasses.asdict(config(lr, seed)),
                             "validation": [r["id"] for r in validation], "model": mp,
                             "evaluate": {k: ev.get(k) for k in ("max_length", "batch_size")}})  # fmt: skip

    def trial(lr: float, seed: int) -> Trial:
        records = subsample(pool, p["budget"], seed=seed)
        model, tokenizer = load_model_and_tokenizer(base_dir, **model_options(mp, trust))
        with tempfile.TemporaryDirectory(prefix="infosift-sweep-") as tmp:
            res = finetune(model, tokenizer, records, Path(tmp) / "model", config(lr, seed), progress=False)
            del model
            nll = heldout_nll(str(Path(tmp) / "model"), validation, max_length=int(ev.get("max_length", 512)),
                              batch_size=int(ev.get("batch_size", 8)), device=ev.get("device"),
                              trust_remote_code=trust, model_kwargs=load_options(mp))  # fmt: skip
        print(f"sweep: lr {lr:g} seed {seed}: {res.steps} steps, validation NLL {nll['nll_per_token']:.4f}",
              flush=True)  # fmt: skip
        return Trial(lr, seed, float(nll["nll_per_token"]), res.steps)

    trials = run_sweep(sorted(p["learning_rates"]), list(p.get("seeds", [0])), trial, CACHE, key)
    rows = summarize(trials)
    chosen = choose(rows)
    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        summary = {"chosen_learning_rate": chosen, "budget": p["budget"], "steps": steps, "seeds": p.get("seeds", [0]),
                   "loss": loss, "n_validation": len(validation), "rows": rows,
                   "trials": [dataclasses.asdict(t) for t in trials]}  # fmt: skip
        (tmp / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (tmp / "sweep.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        lr_sweep_plot(rows, chosen, tmp / "sweep.png")
    table = ", ".join(f"{r['learning_rate']:g}: {r['validation_nll']:.4f}" for r in rows)
    print(f"sweep: chosen learning rate {chosen:g} (validation NLL by rate: {table})")


if __name__ == "__main__":
    run(main)
