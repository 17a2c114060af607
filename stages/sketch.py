"""DVC stage `sketch`: rank candidate source pools for a target dataset by FisherSketch alignment.

params.yaml `sketch`: target (normalized JSONL), sources {name: JSONL or mt_bench}, m, seed, batch_size,
max_length, max_records (seeded subsample per corpus: a CPU sketches ~250 tokens/s at K=49,152).
Writes results/sketch/ranking.json (best source first) and results/sketch/alignment.png.
Run: python -m stages.sketch
"""

from __future__ import annotations

import json
from pathlib import Path

from infosift.data import load_mt_bench, read_examples, subsample
from infosift.errors import DataError, SketchError
from infosift.models import load_model_and_tokenizer
from infosift.plots import alignment_heatmap
from infosift.sketch import alignment_matrix, rank_sources, sketch_corpus
from stages._common import StageError, atomic_output, check_keys, check_param, params, run
from stages.model import base_model_dir, load_options, model_params

OUT = Path("results/sketch")
MT_BENCH = Path("data/mt_bench/sketch")  # fetch_mt_bench@sketch's copy


M_MAX = 1 << 20  # sketch width: 2^20 features is 4 MB per signature and far past where alignment estimates settle


def _records(path: str, max_records: int | None, seed: int) -> list[dict]:
    """A normalized JSONL file, or `mt_bench` (data/mt_bench/sketch: fetch_mt_bench's copy of evaluate.mt_bench.dir)."""
    if path == "mt_bench":
        try:
            return subsample(load_mt_bench(MT_BENCH), max_records, seed)
        except DataError as e:
            raise StageError(f"sketch.sources mt_bench: {e}") from None
    if not Path(path).exists():
        raise StageError(f"sketch corpus {path} not found")
    records = subsample(read_examples(path), max_records, seed)
    if not records:
        raise StageError(f"sketch corpus {path} holds no records")
    return records


def checked_params() -> dict:
    """The sketch section, each value checked before any corpus is read or the model is loaded."""
    p = params("sketch")
    check_keys(p, "sketch", {"target", "sources", "m", "seed", "batch_size", "max_length", "max_records"})
    check_param(p.get("target"), "sketch.target", str)
    check_param(p.get("sources"), "sketch.sources", dict)
    check_param(p.get("m", 4096), "sketch.m", int, low=1, high=M_MAX)
    check_param(p.get("seed", 0), "sketch.seed", int, low=0)
    check_param(p.get("batch_size", 8), "sketch.batch_size", int, low=1)
    check_param(p.get("max_length", 384), "sketch.max_length", int, low=8)
    check_param(p.get("max_records"), "sketch.max_records", int, low=1, allow_none=True)
    sources = p.get("sources") or {}
    if not p.get("target") or not sources:
        raise StageError("params.yaml sketch needs a target file and at least one source in sources")
    for name, path in sources.items():
        check_param(path, f"sketch.sources.{name}", str)
        if not path.strip():
            raise StageError(f"params.yaml sketch.sources.{name}: empty; give a JSONL file or mt_bench")
    if "target" in sources:
        raise StageError("params.yaml sketch.sources.target: 'target' names the target set; call this source otherwise")
    return p


def main(argv: list[str]) -> None:
    p = checked_params()
    seed, max_records = int(p.get("seed", 0)), p.get("max_records")
    corpora = {"target": p["target"], **p["sources"]}
    records = {name: _records(path, max_records, seed) for name, path in corpora.items()}  # all read: then the model
    model_dir, trust = base_model_dir()
    model, tok = load_model_and_tokenizer(model_dir, trust_remote_code=trust, **load_options(model_params()))
    sigs = {}
    for name, recs in records.items():
        try:
            sigs[name] = sketch_corpus(
                model,
                tok,
                recs,
                m=int(p.get("m", 4096)),
                seed=seed,
                batch_size=int(p.get("batch_size", 8)),
                max_length=int(p.get("max_length", 384)),
            )
        except SketchError as e:
            raise StageError(f"sketch corpus {name}: {e}; are its responses cut off by sketch.max_length?") from None
    target = sigs.pop("target")
    names, mat = alignment_matrix({"target": target, **sigs})
    result = {"target": p["target"], "ranking": rank_sources(target, sigs), "names": names, "pairwise": mat.tolist()}
    with atomic_output(OUT) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "ranking.json").write_text(json.dumps(result, indent=2))
        alignment_heatmap(names, mat, tmp / "alignment.png")
    best = result["ranking"][0]
    print(f"sketch: best source {best['source']} (alignment {best['alignment']:.3f}) -> {OUT}/ranking.json")


if __name__ == "__main__":
    run(main)
