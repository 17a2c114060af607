"""MLflow lineage: one parent run per pipeline run, one nested run per selector variant.

Logging happens once, at the end of the pipeline (the compare stage), from files DVC already
tracks. That keeps it idempotent and honest about DVC's run-cache: a stage DVC restored without
running still gets its metrics, manifest and model logged, with the md5 DVC recorded for them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_EXPERIMENT = "infosift"


def tracking_uri(root: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the repo root (MLflow 3's default backend)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def git_commit(root: str | Path = ".") -> str:
    """HEAD's sha, suffixed with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def dvc_lock_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, dict[str, str]]:
    """{stage: {path: md5}} for every dep and out that dvc.lock records."""
    path = Path(lock_path)
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    out: dict[str, dict[str, str]] = {}
    for stage, entry in (lock.get("stages") or {}).items():
        files = {}
        for item in (entry.get("deps") or []) + (entry.get("outs") or []):
            if "md5" in item:
                files[item["path"]] = item["md5"]
        out[stage] = files
    return out


@dataclass
class VariantRun:
    """What one nested run holds."""

    name: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact folder -> local file or dir
    step_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def lineage_tags(lock: dict[str, dict[str, str]], stages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """{"dvc.md5.<path>": md5} for every dep and out dvc.lock records for ``stages`` (absent stages add nothing)."""
    return {f"dvc.md5.{path}": md5 for stage in stages for path, md5 in lock.get(stage, {}).items()}


def numeric(metrics: dict) -> dict:
    """The int and float values of ``metrics`` (bools and strings left out): what MLflow can log as metrics."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def base_run(model: object, metrics: dict, root: str | Path = ".") -> VariantRun:
    """The nested run of the un-tuned base model: its ``model`` params and evaluate metrics."""
    return VariantRun(
        name="base",
        params={"model": model},
        metrics=numeric(metrics),
        tags={"infosift.variant": "base"},
        artifacts={"metrics": str(Path(root) / "results/evaluate/base/metrics.json")},
    )


def variant_run(
    row: dict,
    select_name: str,
    lock: dict[str, dict[str, str]],
    finetune: dict,
    log_models: bool = True,
    root: str | Path = ".",
) -> VariantRun:
    """The nested run of one fine-tuned model, from what select, finetune and evaluate wrote under ``root``.

    ``row`` is the model's compare row ("variant" = its name, "budget", "seed", "loss", and numeric metrics),
    ``select_name`` its selection (results/select/<select_name>); ``lock`` is dvc_lock_hashes(), whose md5s of the
    select and finetune stages become dvc.md5.* tags; ``finetune`` is the training config, logged as params.
    """
    root, name, seed, loss = Path(root), row["variant"], row["seed"], row["loss"]
    manifest_path = root / "results/select" / select_name / f"seed-{seed}" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # DVC names a matrix item by its values joined with '-': finetune@<variant>-<budget>-<seed>-<loss>
    lineage = lineage_tags(lock, (f"select@{select_name}", f"finetune@{select_name}-{seed}-{loss}"))
    loss_csv = root / "results/finetune" / name / "train_loss.csv"
    with loss_csv.open() as f:
        curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    evaluated = root / "results/evaluate" / name
    artifacts = {
        "manifest": str(manifest_path),
        "metrics": str(evaluated / "metrics.json"),
        "train_loss": str(loss_csv),
    }
    if (evaluated / "per_example.jsonl").exists():
        artifacts["per_example"] = str(evaluated / "per_example.jsonl")
    if (evaluated / "gsm8k_samples").exists():
        artifacts["gsm8k_samples"] = str(evaluated / "gsm8k_samples")
    if log_models:
        artifacts["model"] = str(root / "models" / name)
    return VariantRun(
        name=name,
        params={
            "selector": manifest["selector"],
            "variant": manifest["variant"],
            "budget": row["budget"],
            "loss_type": loss,
            "selector_params": manifest["params"],
            "seed": manifest["seed"],
            "finetune": finetune,
        },
        metrics=numeric(row) | {"select_seconds": manifest.get("seconds", 0.0)},
        tags={
            "infosift.variant": name,
            "infosift.manifest_hash": manifest["hash"],
            "infosift.features_sha256": manifest["inputs"].get("features", ""),
            **lineage,
        },
        artifacts=artifacts,
        step_metrics={"train_loss": curve},
    )


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def log_pipeline(
    run_name: str,
    params: dict,
    tags: dict,
    variants: list[VariantRun],
    artifacts: dict[str, str],
    experiment: str = DEFAULT_EXPERIMENT,
    root: str | Path = ".",
    metrics: dict[str, float] | None = None,
) -> str:
    """Log the parent run (with run-level ``metrics``, e.g. the evidence) and its nested variant runs."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_root = os.environ.get("INFOSIFT_MLFLOW_ARTIFACTS", str(Path(root).resolve() / "mlartifacts"))
        mlflow.create_experiment(experiment, artifact_location=Path(artifact_root).as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as parent:
        mlflow.log_params({k: str(v)[:6000] for k, v in _flat(params).items()})
        mlflow.set_tags(tags)
        if metrics:
            mlflow.log_metrics({k: float(x) for k, x in metrics.items() if x is not None and x == x})
        _log_artifacts(artifacts)
        for v in variants:
            with mlflow.start_run(run_name=v.name, nested=True):
                mlflow.log_params({k: str(x)[:6000] for k, x in _flat(v.params).items()})
                mlflow.set_tags({**tags, **v.tags})
                numeric = {k: float(x) for k, x in v.metrics.items() if isinstance(x, int | float)}
                mlflow.log_metrics(numeric)
                for key, series in v.step_metrics.items():
                    for step, value in series:
                        mlflow.log_metric(key, float(value), step=int(step))
                _log_artifacts(v.artifacts)
        return parent.info.run_id


def _log_artifacts(artifacts: dict[str, str]) -> None:
    import mlflow

    for folder, local in artifacts.items():
        p = Path(local)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=folder)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path=folder)
