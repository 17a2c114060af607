"""Embed on Ray: the local engine's ShardEmbedder in Ray Data actors, writing the local engine's shards.

What runs where. The driver (the embed stage) checks the request and cuts the records into shards of
``shard_size`` in input order, exactly as infosift/embed.py does, and hands Ray Data one row per shard
(its index and its records). ``map_batches`` passes each row to one of ``actors`` EmbedActor actors, a
callable class that loads the model once (on a GPU when ``num_gpus_per_actor`` > 0, else on one CPU).
The actor tokenizes the shard, reuses a finished shard with the same key, or embeds it and writes it
atomically into ``<out_dir>.partial/shard-NNNNN/``; it sends back only the index and counts. The driver
then assembles the shards with infosift.embed.assemble, as the local engine does: same bytes, and either
engine resumes the other's shards. ``out_dir`` must be on a filesystem every node sees at the same path
(one machine, NFS, a mounted bucket); the driver checks that each shard an actor reports is there.

Faults. A shard appears by rename, so an actor killed mid-shard leaves nothing that looks finished (a
``.tmp-*`` sibling, removed with the partial directory). Ray restarts a dead actor (``max_restarts``)
and retries its batch (``max_task_retries``), so the shard is redone; after RETRIES deaths the run
stops with a ClusterError and the finished shards stay for a rerun, which computes only the missing.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infosift.embed import ShardEmbedder, assemble, check_request, partial_dir, shard_name
from infosift.errors import ClusterError, InfosiftError
from infosift.features import TokenFeatures
from infosift.models import model_fingerprint

RETRIES = 3  # restarts of a dead actor, and retries of the batch it held, before the run gives up


class EmbedActor:
    """Ray Data callable class: one ShardEmbedder per actor process, one shard per batch row."""

    def __init__(self, partial: str, embedder: dict) -> None:
        self.partial = Path(partial)
        self.embedder = ShardEmbedder(**embedder)
        self.node = socket.gethostname()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"shard": [], "tokens": [], "settings": [], "node": []}
        for index, records in zip(batch["shard"], batch["records"], strict=True):
            out["shard"].append(int(index))
            out["tokens"].append(self.embedder.run(self.partial, int(index), json.loads(records)))
            out["settings"].append(json.dumps(self.embedder.settings, sort_keys=True))
            out["node"].append(self.node)
        return {k: np.asarray(v) for k, v in out.items()}


@dataclass
class ShardReport:
    """What a Ray run did: the shards it computed and reused, the nodes it ran on, the shards' settings."""

    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    settings: dict = field(default_factory=dict)


def embed_shards_ray(
    model_dir: str | os.PathLike,
    records: list[dict],
    out_dir: str | os.PathLike,
    part: str = "response",
    max_length: int = 512,
    batch_tokens: int = 8192,
    shard_size: int = 256,
    dtype: str = "float16",
    trust_remote_code: bool = False,
    project_dim: int | None = None,
    project_seed: int = 0,
    model_kwargs: dict | None = None,
    actors: int = 2,
    num_gpus_per_actor: float = 0,
    progress: bool = True,
    retries: int = RETRIES,
    actor_cls: type = EmbedActor,
) -> ShardReport:
    """Write every finished shard of ``records`` into ``<out_dir>.partial/`` with Ray actors (see module doc).

    Uses the Ray connection of this process (infosift.scale.cluster.connect; ray.init starts a local one
    otherwise). ``retries``: restarts of a dead actor and retries of its batch (0: the first death ends the
    run). ``actor_cls``: EmbedActor or a subclass (tests inject a dying actor).
    """
    import ray
    from tqdm.auto import tqdm

    check_request(records, part, dtype, project_dim)
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if num_gpus_per_actor < 0:
        raise ValueError(f"num_gpus_per_actor must be >= 0, got {num_gpus_per_actor}")
    if project_dim is not None:  # here, in one line, rather than as a traceback from every actor's __init__
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code).get_text_config()
        d = getattr(config, "hidden_size", None)
        if d is not None and project_dim >= d:
            raise ValueError(f"project_dim must be below the model's hidden size {d}, got {project_dim}")
    partial = partial_dir(out_dir).resolve()
    partial.mkdir(parents=True, exist_ok=True)
    embedder = {
        "model_dir": str(Path(model_dir).resolve()),
        "part": part,
        "max_length": max_length,
        "batch_tokens": batch_tokens,
        "dtype": dtype,
        "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
        "trust_remote_code": trust_remote_code,
        "project_dim": project_dim,
        "project_seed": project_seed,
        "fingerprint": model_fingerprint(model_dir),  # hashed once here, not once per actor
        "model_kwargs": model_kwargs,
    }
    keep = ("id", "prompt", "response")
    rows = [
        {"shard": k, "records": json.dumps([{f: r[f] for f in keep} for r in records[s : s + shard_size]])}
        for k, s in enumerate(range(0, len(records), shard_size))
    ]
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar below, in shards
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts yet
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            actor_cls,
            fn_constructor_kwargs={"partial": str(partial), "embedder": embedder},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=num_gpus_per_actor or None,
            max_restarts=retries,
            max_task_retries=retries,
        )
    report, settings = ShardReport(), set()
    try:
        with tqdm(total=len(rows), unit="shard", desc="embed (ray)", disable=not progress) as bar:
            for row in ds.iter_rows():
                index = int(row["shard"])
                if index in report.computed or index in report.reused:
                    continue  # a batch Ray ran twice (a retry after the first result was sent) counts once
                (report.computed if row["tokens"] else report.reused).append(index)
                report.nodes.add(str(row["node"]))
                settings.add(str(row["settings"]))
                if not (partial / shard_name(index)).is_dir():
                    raise ClusterError(
                        f"shard {index} written on node {row['node']} is not visible at {partial}: the features "
                        "directory must be on a filesystem every Ray node shares"
                    )
                bar.update(1)
    except Exception as e:
        raise _one_line(e, partial) from None
    missing = sorted(set(range(len(rows))) - set(report.computed) - set(report.reused))
    if missing:
        raise ClusterError(f"Ray returned no result for shards {missing[:5]}; rerun to compute them")
    report.computed.sort()
    report.reused.sort()
    report.settings = _merged(settings)
    return report


def embed_records_ray(model_dir: str | os.PathLike, records: list[dict], out_dir: str | os.PathLike, **kwargs):
    """``embed_records`` on Ray: the same arguments (plus actors, num_gpus_per_actor), the same output bytes.

    Returns (TokenFeatures memory-mapped from ``out_dir``, ShardReport).
    """
    report = embed_shards_ray(model_dir, records, out_dir, **kwargs)
    n_shards = len(report.computed) + len(report.reused)
    features: TokenFeatures = assemble(out_dir, n_shards, report.settings)
    return features, report


def _merged(settings: set[str]) -> dict:
    """The settings every shard was written with; actors on different GPU kinds differ only in 'compute'."""
    parsed = [json.loads(s) for s in sorted(settings)]
    merged = dict(parsed[0])
    if len(parsed) > 1:
        merged["compute"] = ",".join(sorted({p["compute"] for p in parsed}))
    return merged


def _one_line(e: BaseException, partial: Path) -> InfosiftError:
    """The user-facing error behind a Ray failure: a bad-input error raised in an actor keeps its message;
    a lost actor or task becomes a ClusterError saying the finished shards are kept."""
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ValueError):  # InfosiftError and the library's argument checks
            return cause if isinstance(cause, InfosiftError) else InfosiftError(" ".join(str(cause).split()))
        cause = getattr(cause, "cause", None) or cause.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__  # Ray puts the reason (an exit detail, an error) last
    return ClusterError(
        f"embedding on Ray failed ({type(e).__name__}: {last}); finished shards are kept in {partial}: rerun to resume"
    )
