"""compare: the evidence that a selection beat random, one table and plot per metric, then MLflow lineage.

Reads only what the earlier stages wrote (manifests, per-example NLL, metrics, loss curves, models)
and the md5s DVC recorded for them in dvc.lock, so the MLflow runs point at exactly what DVC caches.
Evidence (infosift/evidence_report.py): every selector against random at the same budget, paired by seed and
by test example, with a bootstrap interval, the share of seeds won, the random-equivalent budget and a
verdict; plus, when download made a contaminated pool, the share of bad examples each selector picked.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from itertools import product
from pathlib import Path

from infosift.compare import results_table, to_markdown
from infosift.data import dataset_name
from infosift.data_manifest import contaminated_ids
from infosift.errors import TrackingError
from infosift.evaluate_results import model_rows
from infosift.evidence_report import write_evidence
from infosift.names import check_params_names
from infosift.plots import not_computed, plot_metric
from infosift.tracking import log_compare, pick_champion
from infosift.tracking_live import check_server, tracking_uri
from stages._common import StageError, atomic_output, check_items, check_keys, check_param, params, run, variant_name

OUT = Path("results/compare")
TRACKING = ("required", "optional")  # compare.tracking: may a tracking failure mid-run fail the stage (finetune too)
METRICS = {  # metric -> lower is better
    "nll_per_token": True,
    "gsm8k_exact_match_strict": False,
    "gsm8k_exact_match_flexible": False,
    "mt_bench_score": False,
}  # also the choices of compare.champion_metric: the registry's champion is best by one of them
LOGGED = ("model", "download", "embed", "select", "finetune", "evaluate")  # the params on the MLflow parent run


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
    items = product(sel["run"], sel["budgets"], sel.get("seeds", [0]), all_params["finetune"]["losses"])
    rows = model_rows(items, variant_name, contaminated_ids())
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
        parent_metrics = write_evidence(
            tmp, rows, run=sel["run"], variants=sel.get("variants") or {}, seeds=sel.get("seeds", [0]),
            losses=all_params["finetune"]["losses"], n_boot=int(cfg.get("bootstrap", 2000)), unit=unit,
        )  # fmt: skip
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        # logged before the outputs are committed: a tracking failure leaves neither (log_pipeline undoes its part),
        # so the retry DVC makes finds the store and the workspace as they were
        logged = tracked(
            lambda: log_compare(
                rows, {k: all_params[k] for k in LOGGED if k in all_params}, out=tmp,
                dataset=dataset_name(all_params["download"]["dataset"]),  # a file's stem: gsm8k stays gsm8k
                metrics=parent_metrics, champion=champion, log_models=cfg.get("log_models", True),
                select_name=variant_name, experiment=cfg.get("experiment", "infosift"),
                uri=cfg.get("tracking_uri"), flow_run=os.environ.get("INFOSIFT_PIPELINE_RUN", ""),
            ),
            cfg,
        )  # fmt: skip
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


if __name__ == "__main__":
    run(main)
