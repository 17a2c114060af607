"""The MLflow pieces finetune and compare share: where the server is, whether it answers, the experiment, and a
training run whose loss the UI shows while the model trains.

Kept apart from tracking.py on purpose: finetune lists this file as a DVC dep, so a change to how compare logs
does not invalidate every cached fine-tune. mlflow is imported inside the functions: a pipeline with MLflow off
never loads it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from infosift.errors import TrackingError

DEFAULT_EXPERIMENT = "infosift"
# The MLflow 3 UI's experiment type, as its own type picker writes it for a classic training experiment. (MLflow
# 3.17's UI takes the view from its sidebar switch, so links also carry ?workflowType=machine_learning.)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TRAIN_KEY_TAG = "infosift.train_key"
RUN_KIND_TAG = "infosift.run_kind"
PARENT_TAG = "mlflow.parentRunId"
PREFLIGHT_TIMEOUT_S = 10  # connect or read; a server answers in well under a second once up


def tracking_uri(root: str | Path = ".", uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI if set (this shell's choice), else ``uri`` (the project's: params.yaml
    compare.tracking_uri), else a SQLite file in the repo root (MLflow 3's default backend)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or uri or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def redacted(uri: str) -> str:
    """``uri`` without a user:password@ part, for messages and logs."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


def check_shared_store(uri: str) -> None:
    """A store that work spread over a cluster can share: a server. A SQLite file is one machine's (workers on
    other hosts would each write their own, or break SQLite's locks on a network file system)."""
    if not is_remote(uri):
        raise TrackingError(
            f"MLflow store {redacted(uri)}: with a Ray address, fine-tunes and evaluations run on other hosts, which "
            "cannot share a local store; set compare.tracking_uri (or MLFLOW_TRACKING_URI) to an MLflow server, "
            "or compare.mlflow: false"
        )


TRACKING_ENV = (  # what a worker needs to reach the driver's store as the driver does
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "INFOSIFT_MLFLOW_ARTIFACTS",
)


def worker_env(uri: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The driver's tracking variables (``uri`` as MLFLOW_TRACKING_URI) and ``extra`` ones (the judge key's), for
    workers that do not share the driver's shell."""
    env = {k: os.environ[k] for k in (*TRACKING_ENV, *extra) if os.environ.get(k)}
    return env | {"MLFLOW_TRACKING_URI": uri}


def ui_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs page on a server (opened in the model-training view), or how to browse a local store."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if is_remote(uri):
        return f"{redacted(uri).rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (MLflow reads its HTTP retry settings at each request)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reason(e: BaseException, uri: str) -> str:
    """Why a request failed, in a few words: the innermost cause of a connection failure, else MLflow's message."""
    import requests

    chain, c = [], e
    while c is not None and len(chain) < 20:
        chain.append(c)
        c = c.__cause__ or c.__context__
    if any(isinstance(x, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError) for x in chain):
        inner = str(chain[-1]).split(": ")[-1].strip(" '\")") or type(chain[-1]).__name__
        return f"cannot reach the tracking server ({inner})"
    text = " ".join(str(e).split()).replace(uri, redacted(uri))
    for secret in (os.environ.get("MLFLOW_TRACKING_PASSWORD"), os.environ.get("MLFLOW_TRACKING_TOKEN")):
        if secret:  # should a server or a proxy echo it
            text = text.replace(secret, "***")
    if "error code 401" in text:  # MLflow's basic-auth app (mlflow server --app-name basic-auth)
        return (
            "the tracking server did not accept the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of the server"
        )
    if "error code 403" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no MLFLOW_TRACKING_USERNAME)"
        return f"user {user} may not do this on the tracking server (HTTP 403); ask its admin for EDIT permission"
    return f"the tracking server refused the request ({text[:300]})"


def check_server(uri: str, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """One quick request without retries, so an unreachable server is an error in seconds rather than after
    MLflow's default retry loop (minutes). Local stores (sqlite, file) need no check."""
    if not is_remote(uri):
        return
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(timeout))):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except (MlflowException, requests.RequestException, OSError) as e:
            raise TrackingError(f"MLflow at {redacted(uri)}: {_reason(e, uri)}") from None


def experiment_id(client, name: str, uri: str, root: str | Path = ".") -> str:
    """The id of experiment ``name``, created if missing, tagged as a model-training experiment.

    A local store keeps artifacts in <root>/mlartifacts; a server keeps them where its --artifacts-destination
    says (proxied, so colleagues need no storage credentials). INFOSIFT_MLFLOW_ARTIFACTS overrides both.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = os.environ.get("INFOSIFT_MLFLOW_ARTIFACTS") or (
            None if is_remote(uri) else str(Path(root) / "mlartifacts")
        )
        if location and "://" not in location:
            location = Path(location).resolve().as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as e:  # another client (a fine-tune on another host) created it just now
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or (exp := client.get_experiment_by_name(name)) is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow at {redacted(uri)}: experiment {name!r} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set another compare.experiment"
        )
    if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made before this tag: set it, never override a choice
        try:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except MlflowException:  # a user who may log runs but not edit the experiment: the tag only picks a view
            pass
    return exp.experiment_id


def connect(uri: str, experiment: str, root: str | Path = ".") -> tuple:
    """(MlflowClient, experiment id) after the reachability check.

    Two fine-tunes starting at once against a fresh SQLite file would both run MLflow's schema migrations
    ("duplicate column name") and both create the experiment; a lock file serializes that first part.
    """
    from mlflow import MlflowClient

    check_server(uri)
    with _store_lock(uri), refused_as_tracking_error(uri):
        client = MlflowClient(uri)
        return client, experiment_id(client, experiment, uri, root)


@contextmanager
def refused_as_tracking_error(uri: str) -> Iterator[None]:
    """An MLflow or HTTP failure inside becomes one TrackingError naming the server (a 403 names the user, never a
    password), not a traceback."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as e:
        raise TrackingError(f"MLflow at {redacted(uri)}: {_reason(e, uri)}") from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock per SQLite file (in the temp dir, keyed by its path) while a client sets the store up;
    nothing for a server, which serializes its own requests, or where fcntl is missing."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first use of one store stays the user's care
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").partition("?")[0]).resolve()
    lock = Path(tempfile.gettempdir()) / f"infosift-mlflow-{hashlib.sha256(str(db).encode()).hexdigest()[:16]}.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_training_run(client, experiment: str, key: str):
    """The newest finished training run of ``key`` that no finished pipeline run has taken in, or None.

    A parent that did not finish (a compare that failed, was killed, or was rolled back and deleted) does not
    hold the run: the retry takes it in, so no training run is left hanging under a broken parent.
    """
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{TRAIN_KEY_TAG}` = '{key}' and tags.`{RUN_KIND_TAG}` = 'training'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for r in runs:
        parent = r.data.tags.get(PARENT_TAG)
        if r.info.status == "FINISHED" and (parent is None or not _finished(client, parent)):
            return r
    return None


def _finished(client, run_id: str) -> bool:
    """Whether run ``run_id`` exists, is not deleted and ended FINISHED."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:  # gone for good
        return False
    return run.info.lifecycle_stage == "active" and run.info.status == "FINISHED"


@contextmanager
def training_run(
    uri: str,
    experiment: str,
    name: str,
    key: str,
    tags: dict[str, str] | None = None,
    params: dict | None = None,
    root: str | Path = ".",
    required: bool = True,
) -> Iterator[Callable[[dict], None]]:
    """An MLflow run that shows a fine-tune's loss step by step while it trains; yields the per-step callback
    (it takes the history entries train.finetune makes: step, loss, lr).

    Tagged with ``key``, the content hash of what is trained (base model, selection, config), so that compare can
    find this run and make it the variant's run rather than log the curve again. Ends FINISHED, or FAILED when the
    block raises. ``required``: a store that stops answering mid-training stops the fine-tune with one
    TrackingError (after MLflow's own retries), rather than let it finish with a partial curve; when not required
    it costs a warning, never the fine-tune.
    """
    from mlflow.entities import Metric, Param

    client, exp = connect(uri, experiment, root)
    with refused_as_tracking_error(uri):
        run = client.create_run(exp, run_name=name, tags={**(tags or {}), TRAIN_KEY_TAG: key, RUN_KIND_TAG: "training"})
        rid = run.info.run_id
        if params:
            client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    failed: list[str] = []

    def log(call: Callable[[], object], may_raise: bool = True) -> None:
        if failed:
            return
        try:
            with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="3" if required else "1", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
                call()
        except Exception as e:
            failed.append(_reason(e, uri))
            if required and may_raise:
                raise TrackingError(
                    f"MLflow at {redacted(uri)}: {failed[0]}; the fine-tune stops rather than finish with a partial "
                    "loss curve (compare.tracking: optional trains on without it)"
                ) from None
            print(
                f"warning: MLflow at {redacted(uri)}: stopped logging the training loss ({failed[0]})", file=sys.stderr
            )

    def on_step(entry: dict) -> None:
        ts, step = int(time.time() * 1000), int(entry["step"])
        metrics = [
            Metric(key, float(entry[k]), ts, step) for key, k in (("train_loss", "loss"), ("lr", "lr")) if k in entry
        ]
        log(lambda: client.log_batch(rid, metrics=metrics))

    try:
        yield on_step
    except BaseException:
        log(lambda: client.set_terminated(rid, "FAILED"), may_raise=False)  # the failure that got here says more
        raise
    log(lambda: client.set_terminated(rid, "FINISHED"))
