"""MLflow lineage: one parent run per pipeline run, one nested run per selector variant, datasets, models, registry.

Logging happens once, at the end of the pipeline (the compare stage), from files DVC already
tracks. That keeps it idempotent and honest about DVC's run-cache: a stage DVC restored without
running still gets its metrics, manifest and model logged, with the md5 DVC recorded for them.
The one exception is the loss curve, which finetune logs live (tracking_live.training_run); compare
then takes that run in as the variant's nested run instead of logging the curve again.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from infosift.data import read_records
from infosift.data_manifest import DATA_MANIFEST, split_digests
from infosift.errors import DataError, TrackingError
from infosift.hashing import file_sha256
from infosift.manifest import content_hash
from infosift.tracking_live import (
    DEFAULT_EXPERIMENT,
    PARENT_TAG,
    TRAIN_KEY_TAG,
    _reason,
    connect,
    find_training_run,
    redacted,
    tracking_uri,
    ui_url,
)

__all__ = ["DEFAULT_EXPERIMENT", "tracking_uri"]  # re-exported: their home is tracking_live

CHAMPION_ALIAS = "champion"
DIGEST_LEN = 32  # MLflow caps a dataset digest at 36 characters: the first 128 bits of the content sha256


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


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a run used, named by its content: MLflow lists it beside the run, ``sha256`` ties it to the bytes.

    ``path`` is repo-relative (what `dvc pull` brings back at the run's git commit); ``kind`` says how to read it:
    "records" (a JSONL of examples) or "selection" (a selection manifest: the chosen ids in order, with gains).
    """

    name: str
    path: str
    sha256: str
    context: str  # pool | train | eval
    kind: str = "records"

    @property
    def digest(self) -> str:
        return self.sha256[:DIGEST_LEN]


def download_datasets(dataset: str, root: str | Path = ".") -> dict[str, DatasetRef]:
    """The pool and the test set download wrote, by the sha256 its manifest records (hashed here if it has none)."""
    root = Path(root)
    recorded = split_digests(root / DATA_MANIFEST)
    refs = {}
    for part, context in (("pool", "pool"), ("test", "eval")):
        path = f"data/download/{part}.jsonl"
        if part in recorded or (root / path).exists():
            sha = recorded.get(part) or file_sha256(root / path)
            refs[part] = DatasetRef(f"{dataset}-{part}", path, sha, context)
    return refs


@dataclass
class VariantRun:
    """What one nested run holds."""

    name: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # artifact folder -> local file or dir
    step_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    datasets: list[DatasetRef] = field(default_factory=list)
    model_dir: str | None = None  # an HF dir, logged with the mlflow.transformers flavor


def lineage_tags(lock: dict[str, dict[str, str]], stages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """{"dvc.md5.<path>": md5} for every dep and out dvc.lock records for ``stages`` (absent stages add nothing)."""
    return {f"dvc.md5.{path}": md5 for stage in stages for path, md5 in lock.get(stage, {}).items()}


def numeric(metrics: dict) -> dict:
    """The int and float values of ``metrics`` (bools and strings left out): what MLflow can log as metrics."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def train_key(model_dir: str | Path) -> str | None:
    """The content hash of what made a fine-tuned model (its infosift.json less ``trained``, what the run reported
    once it ended): the tag finetune's live run carries from its start."""
    path = Path(model_dir) / "infosift.json"
    if not path.exists():
        return None
    made = json.loads(path.read_text())
    made.pop("trained", None)
    return content_hash(made)


def base_run(model: object, metrics: dict, root: str | Path = ".", datasets: list[DatasetRef] = ()) -> VariantRun:
    """The nested run of the un-tuned base model: its ``model`` params and evaluate metrics."""
    return VariantRun(
        name="base",
        params={"model": model},
        metrics=numeric(metrics),
        tags={"infosift.variant": "base"},
        artifacts={"metrics": str(Path(root) / "results/evaluate/base/metrics.json")},
        datasets=list(datasets),
    )


def variant_run(
    row: dict,
    select_name: str,
    lock: dict[str, dict[str, str]],
    finetune: dict,
    log_models: bool = True,
    root: str | Path = ".",
    datasets: list[DatasetRef] = (),
) -> VariantRun:
    """The nested run of one fine-tuned model, from what select, finetune and evaluate wrote under ``root``.

    ``row`` is the model's compare row ("variant" = its name, "budget", "seed", "loss", and numeric metrics),
    ``select_name`` its selection (results/select/<select_name>); ``lock`` is dvc_lock_hashes(), whose md5s of the
    select and finetune stages become dvc.md5.* tags; ``finetune`` is the training config, logged as params;
    ``datasets`` (pool, test set) come before the selection this model trained on.
    """
    root, name, seed, loss = Path(root), row["variant"], row["seed"], row["loss"]
    manifest_rel = f"results/select/{select_name}/seed-{seed}/manifest.json"
    manifest_path = root / manifest_rel
    manifest = json.loads(manifest_path.read_text())
    # DVC names a matrix item by its values joined with '-': finetune@<variant>-<budget>-<seed>-<loss>
    lineage = lineage_tags(lock, (f"select@{select_name}", f"finetune@{select_name}-{seed}-{loss}"))
    loss_csv = root / "results/finetune" / name / "train_loss.csv"
    with loss_csv.open() as f:
        try:
            curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
        except (KeyError, TypeError, ValueError) as e:  # a column missing, a short row, a word for a number
            raise DataError(f"{loss_csv}: not a loss curve with step and loss columns ({e!r}); rerun finetune") from e
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
    model_dir = root / "models" / name
    key = train_key(model_dir)
    selection = DatasetRef(f"{select_name}-s{seed}", manifest_rel, manifest["hash"], "train", kind="selection")
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
            **({TRAIN_KEY_TAG: key} if key else {}),
            **base_tags(model_dir),
            **lineage,
        },
        artifacts=artifacts,
        step_metrics={"train_loss": curve},
        datasets=[*datasets, selection],
        model_dir=str(model_dir) if log_models else None,
    )


def base_tags(model_dir: Path) -> dict[str, str]:
    """Lineage of the base a model was trained from (its fingerprint and dir, from infosift.json); a LoRA adapter's
    own content hash is the dvc.md5 of models/<name>, so both hashes are on the run."""
    try:
        prov = json.loads((Path(model_dir) / "infosift.json").read_text())
    except (OSError, ValueError):
        return {}
    tags = {"infosift.base_fingerprint": prov.get("base_fingerprint"), "infosift.base_model": prov.get("base_model")}
    return {k: str(v) for k, v in tags.items() if v}


@dataclass(frozen=True)
class Champion:
    """The variant to register: best by ``metric`` in this pipeline run, under one registered model per dataset."""

    variant: str
    registered_name: str
    metric: str
    value: float


def registered_model_name(dataset: str) -> str:
    """One registered model per dataset: 'infosift-<dataset>' in the characters every registry accepts."""
    return "infosift-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-") or "dataset")


def pick_champion(rows: list[dict], metric: str, lower_is_better: bool, dataset: str) -> Champion | None:
    """The fine-tuned row best by ``metric`` (first in row order on a tie); None when no fine-tuned row has it."""
    scored = [
        r
        for r in rows
        if r.get("selector") != "base" and isinstance(r.get(metric), int | float) and r[metric] == r[metric]
    ]
    if not scored:
        return None
    best = (min if lower_is_better else max)(scored, key=lambda r: r[metric])
    return Champion(best["variant"], registered_model_name(dataset), metric, float(best[metric]))


def variant_runs(
    rows: list[dict],
    model: object,
    finetune: dict,
    lock: dict,
    log_models: bool | str,
    select_name: Callable[[str, int], str],
    champion: Champion | None = None,
    data: dict | None = None,
) -> list[VariantRun]:
    """One nested MLflow run per compare row: the base model, then each fine-tuned variant with its lineage.

    ``model``: the base model's params; ``finetune``: the training config; ``select_name(selector, budget)``: the
    selection a row trained on; ``data``: download_datasets(). ``log_models``: true logs every fine-tuned model,
    "champion" only the one to register, false none.
    """
    data = data or {}
    test = [data["test"]] if "test" in data else []
    pool = [data["pool"]] if "pool" in data else []
    runs = []
    for row in rows:
        if row["variant"] == "base":
            runs.append(base_run(model, row, datasets=test))
            continue
        is_champion = champion is not None and champion.variant == row["variant"]
        log = log_models is True or (log_models == "champion" and is_champion)
        name = select_name(row["selector"], row["budget"])
        runs.append(variant_run(row, name, lock, finetune, log, datasets=pool + test))
    return runs


@dataclass(frozen=True)
class Logged:
    """Where a pipeline run landed: ids to print and to test against."""

    run_id: str
    experiment_id: str
    url: str
    models: dict[str, str]  # variant -> model uri (models:/<model id>)
    champion_version: str | None = None


def log_compare(
    rows: list[dict],
    params: dict,
    *,
    dataset: str,
    out: str | Path,
    metrics: dict[str, float],
    champion: Champion | None,
    log_models: bool | str,
    select_name: Callable[[str, int], str],
    experiment: str = DEFAULT_EXPERIMENT,
    uri: str | None = None,
    flow_run: str = "",
) -> list[str]:
    """compare's pipeline run: one parent run, a nested run per row (variant_runs), datasets, models and the
    champion's version; ``out`` holds compare's results (logged as artifacts). Returns the lines to print once the
    results are in place.

    ``params``: the pipeline's params by stage, logged on the parent run (its ``model`` and ``finetune.train`` go to
    the nested runs too); ``dataset``: download's dataset name; ``flow_run``: the Prefect flow run that ran compare.
    """
    lock = dvc_lock_hashes()
    tags = {
        "git_commit": git_commit(),
        "infosift.dataset": dataset,
        "prefect.flow_run_id": flow_run,
        **lineage_tags(lock, ("download", "embed")),
    }
    if champion is not None:
        tags["infosift.champion_metric"] = champion.metric
    data = download_datasets(dataset)
    finetune = params["finetune"].get("train", {})
    logged = log_pipeline(
        run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        params=params,
        tags=tags,
        variants=variant_runs(rows, params["model"], finetune, lock, log_models, select_name, champion, data),
        artifacts={"compare": str(out), "data_manifest": str(DATA_MANIFEST)},
        experiment=experiment,
        metrics=metrics,
        datasets=list(data.values()),
        uri=uri,
        champion=champion,
        trust_remote_code=bool(params["model"].get("trust_remote_code", False)),
    )
    lines = [f"compare: MLflow parent run {logged.run_id}; browse: {logged.url}"]
    if logged.champion_version:
        lines.append(
            f"compare: {champion.variant} ({champion.metric} {champion.value:.4g}) is version "
            f"{logged.champion_version} of {champion.registered_name}, alias champion"
        )
    return lines


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
    datasets: list[DatasetRef] = (),
    uri: str | None = None,
    champion: Champion | None = None,
    trust_remote_code: bool = False,
) -> Logged:
    """Log the parent run (run-level ``metrics``, e.g. the evidence; ``datasets``) and its nested variant runs;
    register ``champion``'s model, when it was logged, as a new version carrying the alias 'champion'.

    A variant whose fine-tune logged its loss live (same train key, not yet taken in) reuses that run.

    All or nothing: when any call fails, what this call did is undone (its runs deleted, the training runs it
    took in handed back untagged and FINISHED, a registered version removed, the alias put back), so a retry
    finds the store as before; an MLflow or HTTP failure is then one TrackingError naming the server.
    """
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(root, uri)
    client, exp_id = connect(uri, experiment, root)
    mlflow.set_tracking_uri(uri)
    undo: list[tuple[str, Callable[[], object]]] = []
    try:
        return _log_pipeline(
            client, exp_id, uri, undo, run_name, params, tags, variants, artifacts, root, metrics, datasets, champion,
            trust_remote_code,
        )  # fmt: skip
    except BaseException as e:
        left = _roll_back(undo)
        if isinstance(e, MlflowException | requests.RequestException):
            undone = f"; could not undo: {', '.join(left)}" if left else "; nothing of this run was kept"
            raise TrackingError(f"MLflow at {redacted(uri)}: {_reason(e, uri)}{undone}") from None
        raise


def _roll_back(undo: list[tuple[str, Callable[[], object]]]) -> list[str]:
    """Run the undo steps, newest first, each on its own (one that fails does not stop the rest); the failed ones'
    descriptions are returned."""
    left = []
    for what, step in reversed(undo):
        try:
            step()
        except Exception:  # the server that failed the logging may refuse this too: say so, keep going
            left.append(what)
    return left


def _log_pipeline(
    client, exp_id, uri, undo, run_name, params, tags, variants, artifacts, root, metrics, datasets, champion,
    trust_remote_code,
) -> Logged:  # fmt: skip
    """log_pipeline's work; each change it makes to the store is paired with its undo in ``undo`` first."""
    import mlflow

    read: dict[DatasetRef, object] = {}
    models: dict[str, str] = {}
    with mlflow.start_run(run_name=run_name, experiment_id=exp_id) as parent:
        parent_id = parent.info.run_id
        undo.append((f"delete run {parent_id}", lambda: client.delete_run(parent_id)))
        mlflow.log_params({k: str(v)[:6000] for k, v in _flat(params).items()})
        mlflow.set_tags(tags | ({"infosift.champion": champion.variant} if champion else {}))
        if metrics:
            mlflow.log_metrics({k: float(x) for k, x in metrics.items() if x is not None and x == x})
        _log_artifacts(artifacts)
        _log_datasets(datasets, read, root)
        for v in variants:
            key = v.tags.get(TRAIN_KEY_TAG)
            live = find_training_run(client, exp_id, key) if key else None
            if live is not None:
                start = {"run_id": live.info.run_id, "tags": {PARENT_TAG: parent_id}}
                undo.append((f"untag run {live.info.run_id}", _hand_back(client, live.info.run_id)))
            else:
                start = {"run_name": v.name, "experiment_id": exp_id}
            with mlflow.start_run(nested=True, **start) as nested:
                if live is None:
                    rid = nested.info.run_id
                    undo.append((f"delete run {rid}", lambda rid=rid: client.delete_run(rid)))
                mlflow.log_params({k: str(x)[:6000] for k, x in _flat(v.params).items()})
                mlflow.set_tags({**tags, **v.tags})
                mlflow.log_metrics({k: float(x) for k, x in v.metrics.items() if isinstance(x, int | float)})
                for metric, series in v.step_metrics.items():
                    if live is None:  # else the fine-tune logged it step by step already
                        for step, value in series:
                            mlflow.log_metric(metric, float(value), step=int(step))
                _log_artifacts(v.artifacts)
                _log_datasets(v.datasets, read, root)
                if v.model_dir:
                    models[v.name] = _log_transformers(v, trust_remote_code)
        version = None
        if champion is not None and champion.variant in models:
            key = next((v.tags.get(TRAIN_KEY_TAG) for v in variants if v.name == champion.variant), None)
            dataset = tags.get("infosift.dataset", "")
            version = _register(client, champion, models[champion.variant], key, parent_id, dataset, undo)
            mlflow.set_tag("infosift.champion_version", version)
    return Logged(parent_id, exp_id, ui_url(uri, exp_id), models, version)


def _hand_back(client, run_id: str) -> Callable[[], None]:
    """Undo taking a live training run in: no parent tag, FINISHED again (the failed nested block marked it
    FAILED), so the next compare finds it as find_training_run looks for it."""

    def step() -> None:
        client.delete_tag(run_id, PARENT_TAG)
        client.set_terminated(run_id, "FINISHED")

    return step


def _log_artifacts(artifacts: dict[str, str]) -> None:
    import mlflow

    for folder, local in artifacts.items():
        p = Path(local)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=folder)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path=folder)


def _log_datasets(refs: list[DatasetRef], read: dict, root: str | Path) -> None:
    """log_input each dataset; its digest is the content hash, the full sha256 rides along as an input tag.

    MLflow stores a dataset's name, digest, source, schema and row count, never its rows: reading the file
    here only gives the schema (each file read once per pipeline run, kept in ``read``).
    """
    import mlflow
    import pandas as pd

    for ref in refs:
        if ref not in read:
            path = Path(root) / ref.path
            if ref.kind == "selection":
                m = json.loads(path.read_text())
                gains = m.get("gains") or [None] * len(m["ids"])
                df = pd.DataFrame({"rank": range(len(m["ids"])), "id": m["ids"], "index": m["indices"], "gain": gains})
            else:
                df = pd.DataFrame(read_records(path))
            with warnings.catch_warnings():  # MLflow's notes on its own choices (two local-file source classes; ints)
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
                read[ref] = mlflow.data.from_pandas(df, source=ref.path, name=ref.name, digest=ref.digest)
        mlflow.log_input(read[ref], context=ref.context, tags={"sha256": ref.sha256})


def _requirement(package: str) -> str:
    try:
        return f"{package}=={version(package).split('+')[0]}"
    except PackageNotFoundError:
        return package


def _log_transformers(v: VariantRun, trust_remote_code: bool) -> str:
    """Log the model as an mlflow.transformers text-generation model (loadable with mlflow.transformers.load_model);
    returns its models:/ uri. Requirements are pinned here: MLflow's own guess imports torchvision, which the
    project does not need."""
    import mlflow
    from huggingface_hub import ModelCard

    from infosift.models import load_model_and_tokenizer

    provenance_path = Path(v.model_dir) / "infosift.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.exists() else {}
    card = ModelCard(
        "---\nlibrary_name: transformers\ntags: [infosift]\n---\n"
        f"# {v.name}\n\nFine-tuned by infosift from `{provenance.get('base_model', '?')}` on selection "
        f"`{v.tags.get('infosift.manifest_hash', '?')}` ({provenance.get('n_train', '?')} examples, "
        f"loss {v.params.get('loss_type', '?')}).\n"
    )
    # a LoRA adapter dir is loaded on its base and merged: the registered model is one that serves on its own
    model, tokenizer = load_model_and_tokenizer(v.model_dir, device="cpu", trust_remote_code=trust_remote_code)
    components = {"model": model, "tokenizer": tokenizer}
    info = mlflow.transformers.log_model(
        components,
        name="model",
        task="text-generation",
        model_card=card,
        pip_requirements=[_requirement(p) for p in ("transformers", "torch", "tokenizers")],
        tags={"infosift.variant": v.name},
    )
    return info.model_uri


def _register(
    client,
    champion: Champion,
    model_uri: str,
    key: str | None,
    parent_id: str,
    dataset: str,
    undo: list | None = None,
) -> str:
    """A new version of the dataset's registered model; the 'champion' alias moves to it, older versions stay.

    When the current champion is the same fine-tune (same train key: a compare rerun for another reason),
    its version stays the champion and no duplicate version is made. ``undo`` gets the steps that take the
    new version out and put the alias back.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(champion.registered_name, CHAMPION_ALIAS)
    except MlflowException:  # no such registered model or alias yet
        current = None
    if current is not None and key and current.tags.get(TRAIN_KEY_TAG) == key:
        return str(current.version)
    mv = mlflow.register_model(
        model_uri,
        champion.registered_name,
        tags={
            "infosift.variant": champion.variant,
            "infosift.champion_metric": champion.metric,
            "infosift.champion_value": str(champion.value),
            "infosift.pipeline_run": parent_id,
            **({TRAIN_KEY_TAG: key} if key else {}),
        },
    )
    name, undo = champion.registered_name, undo if undo is not None else []
    undo.append((f"delete version {mv.version} of {name}", lambda: client.delete_model_version(name, mv.version)))
    if current is not None:
        back = current.version
        undo.append(
            (f"alias champion of {name}", lambda: client.set_registered_model_alias(name, CHAMPION_ALIAS, back))
        )
    client.set_registered_model_alias(champion.registered_name, CHAMPION_ALIAS, mv.version)
    client.set_registered_model_tag(champion.registered_name, "infosift.dataset", dataset)
    return str(mv.version)
