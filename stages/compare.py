"""compare: the evidence that a selection beat random, one table and plot per metric, then MLflow lineage.

Reads only what the earlier stages wrote (manifests, per-example NLL, metrics, loss curves, models)
and the md5s DVC recorded for them in dvc.lock, so the MLflow runs point at exactly what DVC caches.
Evidence (infosift/evidence.py): every selector against random at the same budget, paired by seed and
by test example, with a bootstrap interval, the share of seeds won, the random-equivalent budget and a
verdict; plus, when download made a contaminated pool, the share of bad examples each selector picked.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from infosift.compare import results_table, to_markdown
from infosift.data import dataset_name, read_rows
from infosift.errors import DataError, TrackingError
from infosift.evidence import (
    ModelResult,
    control_lines,
    control_table,
    evidence_table,
    length_controls,
    tokens_curve,
    verdict_lines,
)
from infosift.manifest import read_json_object, read_manifest
from infosift.names import check_params_names
from infosift.plots import not_computed, plot_metric, plot_vs_tokens
from infosift.tracking import (
    Champion,
    VariantRun,
    base_run,
    download_datasets,
    dvc_lock_hashes,
    git_commit,
    lineage_tags,
    log_pipeline,
    numeric,
    pick_champion,
    variant_run,
)
from infosift.tracking_live import check_server, tracking_uri
from stages._common import (
    StageError,
    atomic_output,
    check_items,
    check_keys,
    check_param,
    params,
    run,
    variant_name,
)

OUT = Path("results/compare")
TRACKING = ("required", "optional")  # compare.tracking: may a tracking failure mid-run fail the stage (finetune too)
METRICS = {  # metric -> lower is better
    "nll_per_token": True,
    "gsm8k_exact_match_strict": False,
    "gsm8k_exact_match_flexible": False,
    "mt_bench_score": False,
}  # also the choices of compare.champion_metric: the registry's champion is best by one of them


def load_metrics(name: str) -> dict:
    path = Path("results/evaluate") / name / "metrics.json"
    if not path.exists():
        raise StageError(f"{path} missing; run evaluate@{name} first")
    return read_json_object(path)


def load_manifest(variant: str, budget: int, seed: int) -> dict:
    path = Path("results/select") / variant_name(variant, budget) / f"seed-{seed}" / "manifest.json"
    if not path.exists():
        raise StageError(f"{path} missing; run select@{variant_name(variant, budget)} first")
    return read_manifest(path)


DOWNLOAD_MANIFEST = Path("data/download/manifest.json")


def contaminated_ids() -> set[str] | None:
    """Ids download made bad on purpose (None when the pool is clean).

    Also checks the manifest's ``sha256`` map, which the MLflow datasets take their digests from after the
    results are written: a foreign manifest is refused here, before anything is.
    """
    if not DOWNLOAD_MANIFEST.exists():
        return None
    manifest = read_json_object(DOWNLOAD_MANIFEST)
    digests = manifest.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise DataError(f"{DOWNLOAD_MANIFEST}: field 'sha256' must map file names to hex digests, got {digests!r}")
    report = manifest.get("contamination")
    if not report:
        return None
    if not isinstance(report, dict):
        raise DataError(f"{DOWNLOAD_MANIFEST}: field 'contamination' must be an object, got {report!r}")
    ids = report.get("ids")
    if not ids:
        return None
    if not isinstance(ids, dict | list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{DOWNLOAD_MANIFEST}: field 'contamination.ids' must map record ids to how each was altered")
    return set(ids)


def matrix_params(mlflow: bool) -> None:
    """select and finetune, with the lists compare iterates checked (a string would be iterated per character).

    The same params DVC expands into the select/finetune matrix; compare may run alone, so it checks them too.
    """
    from infosift.losses import available_losses  # imports torch: only now, not for every import of this stage

    sel, ft = params("select"), params("finetune")  # a missing or non-mapping section: one line naming it
    check_params_names({"select": sel, "finetune": ft, "download": params("download") if mlflow else {}})
    variants = sel.get("variants")
    choices = tuple(variants) if isinstance(variants, dict) and variants else None
    check_items(sel.get("run"), "select.run", str, choices=choices)
    check_items(sel.get("budgets"), "select.budgets", int, low=1)
    check_items(sel.get("seeds", [0]), "select.seeds", int, low=0)
    check_param(sel.get("budget_unit", "examples"), "select.budget_unit", str)
    check_items(ft.get("losses"), "finetune.losses", str, choices=available_losses())
    if mlflow:  # what the MLflow runs are named and tagged after
        check_param(params("download").get("dataset"), "download.dataset", str)
        params("model")


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


def read_per_example(path: Path) -> dict[str, dict]:
    """id -> {id, nll_sum, n_tokens} as evaluate writes them, each row checked (file:line in errors)."""
    rows: dict[str, dict] = {}
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        for key in ("id", "nll_sum", "n_tokens"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r} (has: {', '.join(sorted(row)) or 'none'})")
        if not isinstance(row["id"], str) or not row["id"]:
            raise DataError(f"{where}: field 'id' must be a non-empty string, got {row['id']!r}")
        nll = row["nll_sum"]
        if isinstance(nll, bool) or not isinstance(nll, int | float) or not math.isfinite(nll):
            raise DataError(f"{where}: field 'nll_sum' must be a finite number, got {nll!r}")
        n = row["n_tokens"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataError(f"{where}: field 'n_tokens' must be a whole number >= 0, got {n!r}")
        if row["id"] in rows:
            raise DataError(f"{where}: id {row['id']!r} is scored twice")
        rows[row["id"]] = row
    return rows


def per_example(name: str, test_ids: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, nll sums, token counts) of one model's held-out examples, in the order of the first model."""
    path = Path("results/evaluate") / name / "per_example.jsonl"
    if not path.exists():
        raise StageError(f"{path} missing; rerun evaluate@{name} (per-example NLL is needed for paired intervals)")
    rows = read_per_example(path)
    ids = test_ids or list(rows)
    if set(ids) != set(rows):
        raise StageError(f"{path} scores other test examples than the other models; rerun evaluate")
    return ids, np.array([rows[i]["nll_sum"] for i in ids]), np.array([rows[i]["n_tokens"] for i in ids])


def trained_steps(name: str) -> tuple[float, float]:
    """(optimizer steps, learning rate) of one fine-tune from models/<name>/infosift.json; NaN where a model
    predates the record."""
    try:
        info = json.loads((Path("models") / name / "infosift.json").read_text())
    except (OSError, ValueError):
        return float("nan"), float("nan")
    trained = info.get("trained") or {}
    return tuple(float(trained.get(k, float("nan"))) for k in ("steps", "learning_rate"))


def evidence(rows: list[dict], loss: str, n_boot: int, unit: str) -> tuple:
    """Evidence table, verdict lines and ModelResults for the models fine-tuned with ``loss``."""
    results, test_ids = [], None
    for row in rows:
        if row["selector"] == "base" or row["loss"] != loss:
            continue
        test_ids, num, den = per_example(row["variant"], test_ids)
        steps, lr = trained_steps(row["variant"])
        results.append(ModelResult(row["selector"], row["budget"], row["seed"], row["train_tokens"], num, den,
                                   steps=steps, learning_rate=lr))  # fmt: skip
    df = evidence_table(results, lower_is_better=True, n_boot=n_boot, seed=0, cost=unit)
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
        ctrl = control_table(results, length_controls(sel.get("variants") or {}, sel["run"]), n_boot=n_boot, cost=unit)
        both = pd.concat([ev.assign(reference="random"), ctrl]) if len(ctrl) else ev.assign(reference="random")
        frames.append(both.assign(loss=loss))
        report += [f"\n## loss: {loss}\n\n", to_markdown(ev), "\n"] + [f"- {line}\n" for line in lines]
        if len(ctrl):  # each selector against random drawn from the same length bins (select/length_matched.py)
            report += ["\nAgainst its length-matched control:\n\n", to_markdown(ctrl), "\n"]
            report += [f"- {line}\n" for line in control_lines(ctrl, "NLL", unit)]
        name = "nll_vs_tokens.png" if loss == losses[0] else f"nll_vs_tokens_{loss}.png"
        plot_vs_tokens(tokens_curve(results), out / name)
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


def check_compare_params(cfg: dict) -> None:
    """compare's params, checked before anything is read or written."""
    known = {"bootstrap", "mlflow", "experiment", "log_models", "tracking_uri", "champion_metric", "tracking"}
    check_keys(cfg, "compare", known)
    check_param(cfg.get("tracking", "required"), "compare.tracking", str, choices=TRACKING)
    check_param(cfg.get("bootstrap", 2000), "compare.bootstrap", int, low=100)
    check_param(cfg.get("mlflow", True), "compare.mlflow", bool)
    log_models = cfg.get("log_models", True)
    if not (isinstance(log_models, bool) or log_models == "champion"):
        raise StageError(f"params.yaml compare.log_models: must be true, false or champion, got {log_models!r}")
    check_param(cfg.get("experiment", "infosift"), "compare.experiment", str)
    check_param(cfg.get("tracking_uri"), "compare.tracking_uri", str, allow_none=True)
    check_param(cfg.get("champion_metric", "nll_per_token"), "compare.champion_metric", str, choices=tuple(METRICS))


def main(argv: list[str]) -> None:
    all_params = params()
    cfg = all_params.get("compare") or {}
    check_compare_params(cfg)
    if cfg.get("mlflow", True):  # an unreachable server is an error now, not after the evidence is computed
        check_server(tracking_uri(".", cfg.get("tracking_uri")))
    matrix_params(cfg.get("mlflow", True))
    sel = all_params["select"]
    rows = variant_rows(all_params)
    champion = None
    if cfg.get("mlflow", True) and cfg.get("log_models", True):
        metric = cfg.get("champion_metric", "nll_per_token")
        champion = pick_champion(rows, metric, METRICS[metric], dataset_name(all_params["download"]["dataset"]))
        if champion is None:
            raise StageError(
                f"params.yaml compare.champion_metric: no fine-tuned model has {metric}; did evaluate skip it?"
            )
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
        # logged before the outputs are committed: a tracking failure leaves neither (log_pipeline undoes its part),
        # so the retry DVC makes finds the store and the workspace as they were
        logged = tracked(lambda: log_to_mlflow(rows, all_params, cfg, parent_metrics, champion, tmp), cfg)
    print(to_markdown(df))
    print((OUT / "evidence.md").read_text())
    for line in logged:
        print(line)


def tracked(log: Callable[[], list[str]], cfg: dict) -> list[str]:
    """What ``log`` prints, or nothing when MLflow is off; with compare.tracking optional, a tracking failure is a
    warning and the outputs are kept."""
    if not cfg.get("mlflow", True):
        return []
    try:
        return log()
    except TrackingError as e:
        if cfg.get("tracking", "required") != "optional":
            raise
        print(f"warning: {e} (compare.tracking: optional, so the results are kept)", file=sys.stderr)
        return []


def log_to_mlflow(
    rows: list[dict], all_params: dict, cfg: dict, parent_metrics: dict, champion: Champion | None, out: Path = OUT
) -> list[str]:
    """One parent run for this pipeline run, a nested run per model, datasets, models and the champion's version;
    ``out`` holds compare's results (logged as artifacts). Returns the lines to print once the results are in place.
    """
    lock = dvc_lock_hashes()
    dataset = dataset_name(all_params["download"]["dataset"])  # a file's stem, not its path: gsm8k stays gsm8k
    tags = {
        "git_commit": git_commit(),
        "infosift.dataset": dataset,
        "prefect.flow_run_id": os.environ.get("INFOSIFT_PIPELINE_RUN", ""),
        **lineage_tags(lock, ("download", "embed")),
    }
    if champion is not None:
        tags["infosift.champion_metric"] = champion.metric
    data = download_datasets(dataset)
    logged = log_pipeline(
        run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        params={
            k: all_params[k]
            for k in ("model", "download", "embed", "select", "finetune", "evaluate")
            if k in all_params
        },
        tags=tags,
        variants=mlflow_variants(rows, all_params, lock, cfg.get("log_models", True), champion, data),
        artifacts={"compare": str(out), "data_manifest": "data/download/manifest.json"},
        experiment=cfg.get("experiment", "infosift"),
        metrics=parent_metrics,
        datasets=list(data.values()),
        uri=cfg.get("tracking_uri"),
        champion=champion,
        trust_remote_code=bool(all_params["model"].get("trust_remote_code", False)),
    )
    lines = [f"compare: MLflow parent run {logged.run_id}; browse: {logged.url}"]
    if logged.champion_version:
        lines.append(
            f"compare: {champion.variant} ({champion.metric} {champion.value:.4g}) is version "
            f"{logged.champion_version} of {champion.registered_name}, alias champion"
        )
    return lines


def mlflow_variants(
    rows: list[dict],
    all_params: dict,
    lock: dict,
    log_models: bool | str,
    champion: Champion | None = None,
    data: dict | None = None,
) -> list[VariantRun]:
    """One nested MLflow run per compare row: the base model, then each fine-tuned variant with its lineage.

    ``log_models``: true logs every fine-tuned model, "champion" only the one to register, false none.
    """
    finetune = all_params["finetune"].get("train", {})
    data = data or {}
    test = [data["test"]] if "test" in data else []
    pool = [data["pool"]] if "pool" in data else []
    runs = []
    for row in rows:
        if row["variant"] == "base":
            runs.append(base_run(all_params["model"], row, datasets=test))
            continue
        is_champion = champion is not None and champion.variant == row["variant"]
        log = log_models is True or (log_models == "champion" and is_champion)
        name = variant_name(row["selector"], row["budget"])
        runs.append(variant_run(row, name, lock, finetune, log, datasets=pool + test))
    return runs


if __name__ == "__main__":
    run(main)
