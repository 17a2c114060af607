"""compare: one table and one plot per metric across all variants, then MLflow lineage for the run.

Reads only what the earlier stages wrote (manifests, metrics, loss curves, models) and the md5s
DVC recorded for them in dvc.lock, so the MLflow runs point at exactly what DVC caches.
"""

from __future__ import annotations

import csv
import json
import os
import time
from itertools import product
from pathlib import Path

from infosift.compare import plot_metric, results_table, to_markdown
from infosift.tracking import VariantRun, dvc_lock_hashes, git_commit, log_pipeline
from stages._common import StageError, atomic_output, params, run, variant_name

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


def variant_rows(all_params: dict) -> list[dict]:
    """One row per (variant, budget, loss) from params.yaml, plus the base model."""
    sel, ft = all_params["select"], all_params["finetune"]
    rows = [{"variant": "base", "selector": "base", "budget": 0, "loss": "-", **_numeric(load_metrics("base"))}]
    for variant, budget, loss in product(sel["run"], sel["budgets"], ft["losses"]):
        name = variant_name(variant, budget, loss)
        rows.append(
            {"variant": name, "selector": variant, "budget": budget, "loss": loss, **_numeric(load_metrics(name))}
        )
    return rows


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def mlflow_variants(rows: list[dict], all_params: dict, lock: dict, log_models: bool) -> list[VariantRun]:
    runs = []
    for row in rows:
        name = row["variant"]
        if name == "base":
            runs.append(
                VariantRun(
                    name="base",
                    params={"model": all_params["model"]},
                    metrics=_numeric(row),
                    tags={"infosift.variant": "base"},
                    artifacts={"metrics": "results/evaluate/base/metrics.json"},
                )
            )
            continue
        sel_name = variant_name(row["selector"], row["budget"])
        manifest_path = Path("results/select") / sel_name / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        lineage = {
            f"dvc.md5.{path}": md5
            for stage in (f"select@{sel_name}", f"finetune@{name}")
            for path, md5 in lock.get(stage, {}).items()
        }
        loss_csv = Path("results/finetune") / name / "train_loss.csv"
        with loss_csv.open() as f:
            curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
        artifacts = {
            "manifest": str(manifest_path),
            "metrics": f"results/evaluate/{name}/metrics.json",
            "train_loss": str(loss_csv),
        }
        samples = Path("results/evaluate") / name / "gsm8k_samples"
        if samples.exists():
            artifacts["gsm8k_samples"] = str(samples)
        if log_models:
            artifacts["model"] = str(Path("models") / name)
        runs.append(
            VariantRun(
                name=name,
                params={
                    "selector": manifest["selector"],
                    "variant": manifest["variant"],
                    "budget": row["budget"],
                    "loss_type": row["loss"],
                    "selector_params": manifest["params"],
                    "seed": manifest["seed"],
                    "finetune": all_params["finetune"].get("train", {}),
                },
                metrics=_numeric(row) | {"select_seconds": manifest.get("seconds", 0.0)},
                tags={
                    "infosift.variant": name,
                    "infosift.manifest_hash": manifest["hash"],
                    "infosift.features_sha256": manifest["inputs"].get("features", ""),
                    **lineage,
                },
                artifacts=artifacts,
                step_metrics={"train_loss": curve},
            )
        )
    return runs


def main(argv: list[str]) -> None:
    all_params = params()
    rows = variant_rows(all_params)
    df = results_table(rows)
    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        df.to_csv(tmp / "table.csv", index=False)
        (tmp / "table.md").write_text(to_markdown(df))
        for metric, lower in METRICS.items():
            if metric in df:
                plot_metric(df, metric, tmp / f"{metric}.png", lower_is_better=lower)
        summary = {r["variant"]: {m: r[m] for m in METRICS if m in r} for r in rows}
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(to_markdown(df))

    cfg = all_params.get("compare", {})
    if not cfg.get("mlflow", True):
        return
    lock = dvc_lock_hashes()
    tags = {
        "git_commit": git_commit(),
        "infosift.dataset": all_params["download"]["dataset"],
        "prefect.flow_run_id": os.environ.get("INFOSIFT_PIPELINE_RUN", ""),
        **{f"dvc.md5.{p}": m for stage in ("download", "embed") for p, m in lock.get(stage, {}).items()},
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
    )
    print(f"compare: MLflow parent run {run_id} (browse: mlflow ui --backend-store-uri sqlite:///mlflow.db)")


if __name__ == "__main__":
    run(main)
