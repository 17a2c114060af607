"""embed: pre-logit token features of the pool and of the GIP target slice under the base model.

Resumable: finished shards wait in data/features/<name>.partial/ (not a DVC output, so DVC does
not delete it before a rerun) and a rerun continues from the last one, ending byte-identical.
``embed.engine: ray`` runs the shards in actors on the Ray cluster at ``embed.ray.address``
(infosift/scale/embed.py, imported only then); the output is the local engine's, byte for byte.
"""

from __future__ import annotations

import numpy as np

from infosift.data import read_examples
from infosift.embed import embed_records
from infosift.errors import ClusterError
from infosift.features import TokenFeatures
from infosift.models import load_model_and_tokenizer
from infosift.quality import quality_scores, save_quality
from stages._common import StageError, atomic_output, check_device, check_keys, check_param, params, run
from stages.model import base_model_dir, load_options, model_params

ENGINES = ("local", "ray")
KNOWN = set("part max_length batch_tokens shard_size dtype device engine ray project_dim project_seed".split())
KNOWN.add("quality_seed")
RAY_KNOWN = {"address", "actors", "num_gpus_per_actor"}


def checked_params() -> dict:
    """params.yaml `embed`, each value checked before any record is read or a model loaded."""
    p = params("embed")
    check_keys(p, "embed", KNOWN)
    check_param(p.get("part", "response"), "embed.part", str, choices=("response", "prompt", "all"))
    check_param(p.get("max_length", 512), "embed.max_length", int, low=8)
    check_param(p.get("batch_tokens", 8192), "embed.batch_tokens", int, low=1)
    check_param(p.get("shard_size", 256), "embed.shard_size", int, low=1)
    check_param(p.get("dtype", "float16"), "embed.dtype", str, choices=("float16", "float32"))
    check_param(p.get("project_dim"), "embed.project_dim", int, low=1, allow_none=True)
    check_param(p.get("project_seed", 0), "embed.project_seed", int, low=0)
    check_param(p.get("quality_seed", 0), "embed.quality_seed", int, low=0)
    check_param(p.get("engine", "local"), "embed.engine", str, choices=ENGINES)
    check_device(p.get("device"), "embed.device")
    ray_params(p.get("ray") or {})
    return p


def main(argv: list[str]) -> None:
    p = checked_params()
    engine, device, ray_opts = p.get("engine", "local"), p.get("device"), ray_params(p.get("ray") or {})
    quality_seed = p.get("quality_seed", 0)
    # both inputs checked before anything is embedded: a bad target record must not come after a written pool
    inputs = {
        "pool": read_examples("data/download/pool.jsonl"),
        "target": read_examples("data/download/target.jsonl", allow_empty=True),  # empty: no target slice asked for
    }
    if engine == "ray":
        connect_ray(ray_opts["address"])
    model_dir, trust = base_model_dir()
    load = load_options(model_params())  # model.torch_dtype and attn_implementation, as every stage loads the model
    common = dict(
        part=p.get("part", "response"),
        max_length=int(p.get("max_length", 512)),
        batch_tokens=int(p.get("batch_tokens", 8192)),
        shard_size=int(p.get("shard_size", 256)),
        dtype=p.get("dtype", "float16"),
        trust_remote_code=trust,
        project_dim=p.get("project_dim"),
        project_seed=int(p.get("project_seed", 0)),
        model_kwargs=load,
    )
    dim = None
    for name, records in inputs.items():
        out = f"data/features/{name}"
        if not records:  # no target slice asked for: an empty feature set keeps the outputs uniform
            with atomic_output(out) as tmp:
                TokenFeatures(np.zeros((0, dim or 1), np.float16), np.zeros(1, np.int64), []).save(tmp)
            print(f"embed: no {name} records")
            continue
        if engine == "ray":
            from infosift.scale.embed import embed_records_ray

            try:
                feats, report = embed_records_ray(model_dir, records, out, **common, **ray_opts["engine"])
            except ClusterError as e:  # an actor lost beyond its retries: say which output, keep the shards
                raise StageError(f"{out}: {e}") from None
            print(
                f"embed: {name}: ray: computed {len(report.computed)} shards, reused {len(report.reused)}, "
                f"on {len(report.nodes)} node(s)"
            )
        else:
            feats = embed_records(model_dir, records, out, device=device, **common)
        dim = feats.dim
        print(f"embed: {name}: {len(feats)} examples, {len(feats.values)} tokens, d={feats.dim}")
    # quality scores of the pool (infosift/quality.py): what a variant's filter drops by
    model, tokenizer = load_model_and_tokenizer(model_dir, device=device, trust_remote_code=trust, **load)
    pool = TokenFeatures.load("data/features/pool", mmap=True)  # its p_next gives log p(r|q) and eos for free
    stats = [pool.p_next[a:b] for a, b in zip(pool.offsets[:-1], pool.offsets[1:], strict=True)]
    reuse = stats if common["part"] == "response" and pool.p_next is not None else None
    scores = quality_scores(
        model, tokenizer, inputs["pool"], quality_seed, common["batch_tokens"], reuse, common["max_length"]
    )
    save_quality("data/features/quality.npz", [str(r["id"]) for r in inputs["pool"]], scores)
    print(f"embed: quality: pmi median {np.median(scores['pmi']):.2f}, eos median {np.median(scores['eos']):.3f}")


def ray_params(section: dict) -> dict:
    """embed.ray, checked whatever the engine (a typo should not wait for the day Ray is switched on)."""
    check_keys(section, "embed.ray", RAY_KNOWN)
    address = check_param(section.get("address"), "embed.ray.address", str, allow_none=True)
    actors = check_param(section.get("actors", 2), "embed.ray.actors", int, low=1)
    gpus = check_param(section.get("num_gpus_per_actor", 0), "embed.ray.num_gpus_per_actor", float, low=0)
    return {"address": address, "engine": {"actors": actors, "num_gpus_per_actor": gpus}}


def connect_ray(address: str | None) -> None:
    """Join the cluster before any work, so a wrong address costs one line, not a model load."""
    from infosift.scale.cluster import connect

    try:
        connect(address)
    except ImportError as e:  # connect imports ray only now
        raise StageError(f"params.yaml embed.engine: ray needs the ray extra (pip install -e '.[ray]'): {e}") from None
    except ClusterError as e:
        raise StageError(f"embed.ray.address: {e}") from None


if __name__ == "__main__":
    run(main)
