"""MLflow lineage: one parent run per pipeline run, one nested run per selector variant.

Logging happens once, at the end of the pipeline (the compare stage), from files DVC already
tracks. That keeps it idempotent and honest about DVC's run-cache: a stage DVC restored without
running still gets its metrics, manifest and model logged, with the md5 DVC recorded for them.
"""

from __future__ import annotations

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
