"""compare: the evidence that a selection beat random, one table and plot per metric, then MLflow lineage.

Reads only what the earlier stages wrote (manifests, per-example NLL, metrics, loss curves, models)
and the md5s DVC recorded for them in dvc.lock, so the MLflow runs point at exactly what DVC caches.
Evidence (infosift/evidence.py): every selector against random at the same budget, paired by seed and
by test example, with a bootstrap interval, the share of seeds won, the random-equivalent budget and a
verdict; plus, when download made a contaminated pool, the share of bad examples each selector picked.
"""

from __future__ import annotations

import json
import os
import time
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from infosift.compare import plot_metric, results_table, to_markdown
from infosift.data import read_records
from infosift.evidence import ModelResult, evidence_table, plot_vs_tokens, verdict_lines
from infosift.plots import not_computed
from infosift.tracking import (
    VariantRun,
    base_run,
    dvc_lock_hashes,
    git_commit,
    lineage_tags,
    log_pipeline,
    numeric,
    variant_run,
)
from stages._common import StageError, atomic_output, check_keys, check_param, params, run, variant_name

OUT = Path("results/compare")
METRICS = {  # metric -> lower is better
    "nll_per_token": True,
    "gsm8k_exact_match_strict": False,
    "gsm8k_exact_match_flexible": False,
    "mt_bench_score": False,
}


def load_metrics(name: str) -> dict:
    path = Path("results/evaluate") / name / "metrics.json"
    if not path.exists():
        raise StageError(f"{path} missing; run evaluate@{name} first")
    return json.loads(path.read_text())


def load_manifest(variant: str, budget: int, seed: int) -> dict:
    path = Path("results/select") / variant_name(variant, budget) / f"seed-{seed}" / "manifest.json"
    if not path.exists():
        raise StageError(f"{path} missing; run select@{variant_name(variant, budget)} first")
    return json.loads(path.read_text())


def contaminated_ids() -> set[str] | None:
    """Ids download made bad on purpose (None when the pool is clean)."""
    path = Path("data/download/manifest.json")
    report = json.loads(path.read_text()).get("contamination") if path.exists() else None
    return set(report["ids"]) if report and report.get("ids") else None


def variant_rows(all_params: dict) -> list[dict]:
    """One row per (variant, budget, seed, loss) from params.yaml, plus the base model."""
    sel, ft = all_params["select"], all_params["finetune"]
    bad = contaminated_ids()
    rows = [
        {"variant": "base", "selector": "base", "budget": 0, "seed": 0, "loss": "-", **numeric(load_metrics("base"))}
    ]
    for variant, budget, seed, loss in product(sel["run"], sel["budgets"], sel.get("seeds", [0]), ft["losses"]):
        name = variant_name(variant, budget, seed, loss)
        manifest = load_manifest(variant, budget, seed)
        row = {"variant": name, "selector": variant, "budget": budget, "seed": seed, "loss": loss}
        row["train_tokens"] = manifest.get("info", {}).get("train_tokens", 0)
        row["n_train"] = len(manifest["ids"])
        if bad is not None:
            row["contaminated_share"] = float(np.mean([i in bad for i in manifest["ids"]])) if manifest["ids"] else 0.0
        rows.append({**row, **numeric(load_metrics(name))})
    return rows


def per_example(name: str, test_ids: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, nll sums, token counts) of one model's held-out examples, in the order of the first model."""
    path = Path("results/evaluate") / name / "per_example.jsonl"
    if not path.exists():
        raise StageError(f"{path} missing; rerun evaluate@{name} (per-example NLL is needed for paired intervals)")
    rows = {r["id"]: r for r in read_records(path)}
    ids = test_ids or list(rows)
    if set(ids) != set(rows):
        raise StageError(f"{path} scores other test examples than the other models; rerun evaluate")
    return ids, np.array([rows[i]["nll_sum"] for i in ids]), np.array([rows[i]["n_tokens"] for i in ids])


def evidence(rows: list[dict], loss: str, n_boot: int, unit: str) -> tuple:
    """Evidence table, verdict lines and ModelResults for the models fine-tuned with ``loss``."""
    results, test_ids = [], None
    for row in rows:
        if row["selector"] == "base" or row["loss"] != loss:
            continue
        test_ids, num, den = per_example(row["variant"], test_ids)
        results.append(ModelResult(row["selector"], row["budget"], row["seed"], row["train_tokens"], num, den))
    df = evidence_table(results, lower_is_better=True, n_boot=n_boot, seed=0)
    share: dict[tuple, list[float]] = {}
    for r in rows:
        if "contaminated_share" in r and r["loss"] == loss:
            share.setdefault((r["selector"], r["budget"]), []).append(r["contaminated_share"])
    if share:
        df["contaminated_share"] = [
            float(np.mean(share.get((s, b), [np.nan]))) for s, b in zip(df["selector"], df["budget"], strict=True)
        ]
    return df, verdict_lines(df, metric_name="NLL", budget_unit=unit), results


def write_evidence(out: Path, rows: list[dict], all_params: dict, n_boot: int, unit: str) -> dict[str, float]:
    """evidence.md / evidence.csv / nll_vs_tokens*.png into ``out``; returns the MLflow parent-run metrics."""
    sel, losses = all_params["select"], all_params["finetune"]["losses"]
    report = [f"# Evidence: each selector against random at the same budget ({unit})\n"]
    frames, metrics = [], {}
    if "random" not in sel["run"]:
        report.append("No `random` variant in select.run: nothing to compare against.\n")
        not_computed("evidence", out / "nll_vs_tokens.png", why="no random variant in select.run")
    for loss in losses if "random" in sel["run"] else []:
        ev, lines, results = evidence(rows, loss, n_boot, unit)
        frames.append(ev.assign(loss=loss))
        report += [f"\n## loss: {loss}\n\n", to_markdown(ev), "\n"] + [f"- {line}\n" for line in lines]
        plot_vs_tokens(results, out / ("nll_vs_tokens.png" if loss == losses[0] else f"nll_vs_tokens_{loss}.png"))
        for r in ev.to_dict("records"):
            if r["verdict"] != "reference":
                key = f"evidence.{r['selector']}-{r['budget']}-{loss}"
                metrics |= {f"{key}.{m}": r[m] for m in ("rel_pct", "rel_lo_pct", "rel_hi_pct", "seeds_won")}
    if frames:
        report.append(
            f"\nIntervals: paired bootstrap over seeds and test examples ({n_boot} replicates, seed 0); "
            f"seeds {sel.get('seeds', [0])}.\n"
        )
    (out / "evidence.md").write_text("".join(report))
    (out / "evidence.csv").write_text(pd.concat(frames).to_csv(index=False) if frames else "")
    return metrics


def main(argv: list[str]) -> None:
    all_params = params()
    cfg = all_params.get("compare") or {}
    check_keys(cfg, "compare", {"bootstrap", "mlflow", "experiment", "log_models"})
    check_param(cfg.get("bootstrap", 2000), "compare.bootstrap", int, low=100)
    check_param(cfg.get("mlflow", True), "compare.mlflow", bool)
    check_param(cfg.get("log_models", True), "compare.log_models", bool)
    check_param(cfg.get("experiment", "infosift"), "compare.experiment", str)
    sel = all_params["select"]
    rows = variant_rows(all_params)
    df = results_table(rows)
    unit = sel.get("budget_unit", "examples")
    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        df.to_csv(tmp / "table.csv", index=False)
        (tmp / "table.md").write_text(to_markdown(df))
        for metric, lower in METRICS.items():
            if metric in df:
                plot_metric(df, metric, tmp / f"{metric}.png", lower_is_better=lower)
            else:
                not_computed(metric, tmp / f"{metric}.png")
        summary = {r["variant"]: {m: r[m] for m in METRICS if m in r} for r in rows}
        parent_metrics = write_evidence(tmp, rows, all_params, int(cfg.get("bootstrap", 2000)), unit)
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(to_markdown(df))
    print((OUT / "evidence.md").read_text())

    if not cfg.get("mlflow", True):
        return
    lock = dvc_lock_hashes()
    tags = {
        "git_commit": git_commit(),
        "infosift.dataset": all_params["download"]["dataset"],
        "prefect.flow_run_id": os.environ.get("INFOSIFT_PIPELINE_RUN", ""),
        **lineage_tags(lock, ("download", "embed")),
    }
    run_id = log_pipeline(
        run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        params={
            k: all_params[k]
            for k in ("model", "download", "embed", "select", "finetune", "evaluate")
            if k in all_params
        },
        tags=tags,
        variants=mlflow_variants(rows, all_params, lock, bool(cfg.get("log_models", True))),
        artifacts={"compare": str(OUT), "data_manifest": "data/download/manifest.json"},
        experiment=cfg.get("experiment", "infosift"),
        metrics=parent_metrics,
    )
    print(f"compare: MLflow parent run {run_id} (browse: mlflow ui --backend-store-uri sqlite:///mlflow.db)")


def mlflow_variants(rows: list[dict], all_params: dict, lock: dict, log_models: bool) -> list[VariantRun]:
    """One nested MLflow run per compare row: the base model, then each fine-tuned variant with its lineage."""
    finetune = all_params["finetune"].get("train", {})
    return [
        base_run(all_params["model"], row)
        if row["variant"] == "base"
        else variant_run(row, variant_name(row["selector"], row["budget"]), lock, finetune, log_models)
        for row in rows
    ]


if __name__ == "__main__":
    run(main)
