"""embed: pre-logit token features of the pool and of the GIP target slice under the base model.

Resumable: finished shards wait in data/features/<name>.partial/ (not a DVC output, so DVC does
not delete it before a rerun) and a rerun continues from the last one, ending byte-identical.
"""

from __future__ import annotations

import numpy as np

from infosift.data import read_records
from infosift.embed import embed_records
from infosift.features import TokenFeatures
from stages._common import atomic_output, check_keys, check_param, params, run
from stages.model import base_model_dir


def main(argv: list[str]) -> None:
    p = params("embed")
    check_keys(p, "embed", {"part", "max_length", "batch_tokens", "shard_size", "dtype", "device"})
    check_param(p.get("part", "response"), "embed.part", str, choices=("response", "prompt", "all"))
    check_param(p.get("max_length", 512), "embed.max_length", int, low=8)
    check_param(p.get("batch_tokens", 8192), "embed.batch_tokens", int, low=1)
    check_param(p.get("shard_size", 256), "embed.shard_size", int, low=1)
    check_param(p.get("dtype", "float16"), "embed.dtype", str, choices=("float16", "float32"))
    model_dir, trust = base_model_dir()
    dim = None
    for name in ("pool", "target"):
        out = f"data/features/{name}"
        records = read_records(f"data/download/{name}.jsonl") if name == "pool" else _optional(name)
        if not records:  # no target slice asked for: an empty feature set keeps the outputs uniform
            with atomic_output(out) as tmp:
                TokenFeatures(np.zeros((0, dim or 1), np.float16), np.zeros(1, np.int64), []).save(tmp)
            print(f"embed: no {name} records")
            continue
        feats = embed_records(
            model_dir,
            records,
            out,
            part=p.get("part", "response"),
            max_length=int(p.get("max_length", 512)),
            batch_tokens=int(p.get("batch_tokens", 8192)),
            shard_size=int(p.get("shard_size", 256)),
            dtype=p.get("dtype", "float16"),
            device=p.get("device"),
            trust_remote_code=trust,
        )
        dim = feats.dim
        print(f"embed: {name}: {len(feats)} examples, {len(feats.values)} tokens, d={feats.dim}")


def _optional(name: str) -> list[dict]:
    from pathlib import Path

    path = Path(f"data/download/{name}.jsonl")
    return read_records(path) if path.stat().st_size else []


if __name__ == "__main__":
    run(main)
