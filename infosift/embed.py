"""Pre-logit token embeddings of a record pool, in shards that survive a killed run.

Feature of position t = the model's last hidden state at t after the final norm (the vector the LM head
turns into next-token logits), taken under the chat template of infosift.chat.encode_record (the whole
conversation). Next-token convention: a position is kept when its NEXT token belongs to the chosen part
(``response``: every assistant turn), so the rows of sentence i are exactly the pre-logit vectors x_ij that
predict its tokens y_ij (FisherSFT's design points).

Records are processed in fixed shards of ``shard_size`` in input order. Each finished shard is written
atomically to ``<out_dir>.partial/shard-NNNNN/`` with a key (ids, token hash, model fingerprint,
settings); a rerun reuses shards whose key matches and redoes the others. Within a shard, examples are
sorted by length and packed into right-padded batches of at most ``batch_tokens`` padded tokens; the
batching depends only on the shard's contents, so a resumed run writes byte-identical output.

meta.json also counts what max_length did (chat.truncation_report, the names evaluate's metrics use):
``n_truncated`` conversations lost their tail, ``n_emptied`` of them every assistant token.

Alongside the features, from the logits the head already computes: ``costs`` (every token of each
conversation under the chat template, up to max_length: what a fine-tune pays for it) and, per feature row, ``p_next``
(the model's probability of the actual next token) and ``p_sqnorm`` (sum_k p_k^2 of its next-token
distribution), FisherSFT's information weights (select/fishersft.py).

Optional ``project_dim`` k: each feature row x (width d) is stored as x R, R a seeded (d, k) Gaussian
matrix scaled by 1/sqrt(k) (``projection_matrix``), so that E||x R||^2 = ||x||^2 and inner products are
kept up to a Johnson-Lindenstrauss error; storage drops by d/k. p_next, p_sqnorm and self-scores come
from the unprojected rows. The projection (k, seed) is part of every shard key and of meta.json.

Engines: ``embed_records`` runs the shards one after another in this process; infosift/scale/embed.py
runs the same ``ShardEmbedder`` in Ray actors. Both write the same shards and assemble them with
``assemble``, so their outputs are byte-identical and either one resumes the other's shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from infosift.atomic import atomic_output
from infosift.chat import Encoded, collate, encode_record, truncation_report
from infosift.features import COSTS, IDS, OFFSETS, P_NEXT, P_SQNORM, VALUES, TokenFeatures
from infosift.models import autocast, load_model_and_tokenizer, model_fingerprint

PARTS = ("response", "prompt", "all")
SELF_SCORES, META, SHARD_KEY, CUT = "self_scores.npy", "meta.json", "shard.json", "truncation.json"
FORMAT = 3  # shard layout version: 2 added costs, p_next and p_sqnorm; 3 each shard's truncation counts
log = logging.getLogger(__name__)


# -- which positions ---------------------------------------------------------------------------
def feature_positions(enc: Encoded, part: str) -> np.ndarray:
    """Positions t (0..T-2) whose next token t+1 is in ``part``: response (assistant turns), prompt (the rest) or all.

    The first token of a sequence is never predicted, so part="prompt" yields (tokens not in an assistant turn) - 1
    rows and part="response" yields n_response rows (the first of each turn is the position before it).
    """
    nxt_is_response = np.asarray(enc.response_mask[1:], dtype=bool)
    if part == "response":
        return np.flatnonzero(nxt_is_response)
    if part == "prompt":
        return np.flatnonzero(~nxt_is_response)
    return np.arange(len(nxt_is_response))


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted longest first (stable), packed so that len(batch) * longest <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def projection_matrix(d: int, k: int, seed: int) -> np.ndarray:
    """(d, k) float32 R with entries N(0, 1) / sqrt(k), from ``seed`` alone: E||x R||^2 = ||x||^2.

    Drawn in float64 by numpy's PCG64 and rounded once, so every engine and machine builds the same R.
    """
    if k < 1:
        raise ValueError(f"project_dim must be >= 1, got {k}")
    return (np.random.default_rng(seed).standard_normal((d, k)) / np.sqrt(k)).astype(np.float32)


# -- one shard ---------------------------------------------------------------------------------
def _embed_shard(
    model, encs: list[Encoded], part: str, batch_tokens: int, pad_id: int, out_dtype, projection=None
) -> TokenFeatures:
    """Features, costs and token stats of one shard, plus self-scores (mean response log-prob) in ``scores``.

    ``projection``: None, or a (d, k) float32 matrix the feature rows are multiplied by (on the model's
    device, in float32) before they are rounded to ``out_dtype``; the token stats use the full rows.
    Returns (TokenFeatures without ids filled in, (N,) float32 self-scores).
    """
    import torch

    device = next(model.parameters()).device
    mixed = autocast(device)[0]
    head = model.get_output_embeddings()
    proj = None if projection is None else torch.as_tensor(projection, device=device)
    n = len(encs)
    feats: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    p_next: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    p_sqnorm: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    scores = np.full(n, np.nan, dtype=np.float32)
    for batch in length_batches([len(e.input_ids) for e in encs], batch_tokens):
        padded = collate([encs[i] for i in batch], pad_id)
        ids, attn = padded["input_ids"], padded["attention_mask"]
        with torch.inference_mode(), mixed:
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
            hidden = hidden.last_hidden_state  # (B, width, d), after the final norm
            for row, i in enumerate(batch):
                pos = feature_positions(encs[i], part)
                rows = hidden[row, torch.as_tensor(pos, device=device)]
                if proj is None:
                    kept = rows.float()
                else:  # in float32 even under autocast: the projection is part of the stored values
                    with torch.autocast(device.type, enabled=False):
                        kept = rows.float() @ proj
                feats[i] = kept.cpu().numpy().astype(out_dtype)
                # next-token distribution at each feature row: p_next = p[y], p_sqnorm = sum_k p_k^2
                logp = torch.log_softmax(head(rows).float(), dim=-1)
                lp_next = logp.gather(1, ids[row, torch.as_tensor(pos) + 1].to(device)[:, None])[:, 0]
                p_next[i] = lp_next.exp().cpu().numpy().astype(np.float32)
                p_sqnorm[i] = torch.exp(2.0 * logp).sum(-1).cpu().numpy().astype(np.float32)
                resp = feature_positions(encs[i], "response")
                if len(resp) and part != "response":
                    logp = torch.log_softmax(head(hidden[row, torch.as_tensor(resp, device=device)]).float(), dim=-1)
                    lp_next = logp.gather(1, ids[row, torch.as_tensor(resp) + 1].to(device)[:, None])[:, 0]
                if len(resp):
                    scores[i] = lp_next.mean().item()
    features = TokenFeatures.from_list(feats, ids=[str(i) for i in range(n)])
    features.costs = np.asarray([max(len(e.input_ids), 1) for e in encs], dtype=np.int64)
    features.p_next = np.concatenate(p_next) if n else np.zeros(0, np.float32)
    features.p_sqnorm = np.concatenate(p_sqnorm) if n else np.zeros(0, np.float32)
    return features, scores


def _shard_key(ids: list[str], encs: list[Encoded], settings: dict) -> dict:
    """What a finished shard must match to be reused: its ids, its exact tokens, and the settings."""
    tokens = json.dumps([[e.input_ids, e.response_mask] for e in encs]).encode()
    return {"ids": ids, "inputs_sha256": hashlib.sha256(tokens).hexdigest(), **settings}


def _write_shard(partial: Path, name: str, key: dict, feats: TokenFeatures, scores: np.ndarray, cut: dict) -> None:
    """A finished shard appears whole under its name or not at all: a resumed run trusts what it finds."""
    feats.ids = list(key["ids"])
    with atomic_output(partial / name) as tmp:
        feats.save(tmp)
        np.save(tmp / SELF_SCORES, scores, allow_pickle=False)
        (tmp / CUT).write_text(json.dumps({"n_truncated": cut["truncated"], "n_emptied": cut["emptied"]}))
        (tmp / SHARD_KEY).write_text(json.dumps(key, sort_keys=True))


def _finished(shard: Path, key: dict) -> bool:
    """True when ``shard`` was written by a run with the same inputs; a stale shard is removed."""
    if not shard.is_dir():
        return False
    try:
        if json.loads((shard / SHARD_KEY).read_text()) == json.loads(json.dumps(key, sort_keys=True)):
            return True
    except (OSError, ValueError):
        pass
    log.warning("%s was written for other inputs or settings; recomputing it", shard)
    shutil.rmtree(shard)
    return False


# -- assembly ----------------------------------------------------------------------------------
def _concat_shards(shards: list[Path], out: Path, meta: dict) -> None:
    """Concatenate shard dirs into TokenFeatures layout in ``out``, streaming values through a memmap."""
    offsets = [np.load(s / OFFSETS) for s in shards]
    lengths = np.concatenate([np.diff(o) for o in offsets])
    first = np.load(shards[0] / VALUES, mmap_mode="r")
    total = int(lengths.sum())
    values = np.lib.format.open_memmap(out / VALUES, mode="w+", dtype=first.dtype, shape=(total, first.shape[1]))
    row = 0
    for s in shards:
        part = np.load(s / VALUES, mmap_mode="r")
        values[row : row + len(part)] = part
        row += len(part)
    values.flush()
    del values
    np.save(out / OFFSETS, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), allow_pickle=False)
    ids = [i for s in shards for i in json.loads((s / IDS).read_text())]
    (out / IDS).write_text(json.dumps(ids))
    for name in (SELF_SCORES, COSTS, P_NEXT, P_SQNORM):
        np.save(out / name, np.concatenate([np.load(s / name) for s in shards]), allow_pickle=False)
    meta = {**meta, "n": len(ids), "d": int(first.shape[1]), "total_tokens": total}
    meta["empty_sentences"] = int((lengths == 0).sum())
    cuts = [json.loads((s / CUT).read_text()) for s in shards]
    meta.update({k: sum(c[k] for c in cuts) for k in ("n_truncated", "n_emptied")})
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


# -- the engine-independent pieces -------------------------------------------------------------
def check_request(records: list[dict], part: str, dtype: str, project_dim: int | None) -> list[str]:
    """The record ids, once the request is known to be valid (ValueError naming what is not)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if project_dim is not None and (isinstance(project_dim, bool) or not isinstance(project_dim, int)):
        raise ValueError(f"project_dim must be a whole number or None, got {project_dim!r}")
    if project_dim is not None and project_dim < 1:
        raise ValueError(f"project_dim must be >= 1, got {project_dim}")
    if not records:
        raise ValueError("no records to embed")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("record ids are not unique")
    return ids


def partial_dir(out_dir: str | os.PathLike) -> Path:
    """Where finished shards of ``out_dir`` wait until assembly (beside it, so a rerun finds them)."""
    return Path(f"{out_dir}.partial")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardEmbedder:
    """A model loaded once that turns shards of records into finished shard directories.

    The one per-shard code path of both engines: the local loop calls it in this process, each Ray actor
    (infosift/scale/embed.py) holds one. ``settings`` is what every shard key and meta.json record.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        part: str = "response",
        max_length: int = 512,
        batch_tokens: int = 8192,
        dtype: str = "float16",
        device=None,
        trust_remote_code: bool = False,
        project_dim: int | None = None,
        project_seed: int = 0,
        fingerprint: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        """``fingerprint``: model_fingerprint(model_dir) when the caller has it (hashing a large model's
        weights once per Ray actor would cost more than the shards). ``model_kwargs``: how the model loads (dtype,
        attn_implementation: stages.model.load_options); ``dtype`` is what the features are stored in, whatever
        the model computes in."""
        opts = model_kwargs or {}
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_dir, device=device, trust_remote_code=trust_remote_code, **opts
        )
        self.part, self.max_length, self.batch_tokens, self.dtype = part, max_length, batch_tokens, np.dtype(dtype)
        param = next(self.model.parameters())
        dev, weights = param.device, str(param.dtype).removeprefix("torch.")
        compute = autocast(dev)[1] if dev.type == "cuda" else weights  # autocast's on CUDA, else the weights'
        self.settings = {
            "model_fingerprint": fingerprint or model_fingerprint(model_dir),
            "part": part,
            "max_length": max_length,
            "batch_tokens": batch_tokens,
            "dtype": dtype,
            "compute": f"{dev.type}/{compute}",
            "format": FORMAT,
        }
        # only when set: float32 weights and transformers' attention keep the meta.json they always had
        if weights != "float32":
            self.settings["weights"] = weights
        if opts.get("attn_implementation"):
            self.settings["attn_implementation"] = opts["attn_implementation"]
        self.projection = None
        if project_dim is not None:  # only then: unprojected features keep the meta.json they always had
            d = int(self.model.get_output_embeddings().weight.shape[1])
            if project_dim >= d:
                raise ValueError(f"project_dim must be below the model's hidden size {d}, got {project_dim}")
            self.projection = projection_matrix(d, project_dim, project_seed)
            self.settings["projection"] = {"kind": "gaussian/sqrt(k)", "d": d, "k": project_dim, "seed": project_seed}

    def run(self, partial: Path, index: int, records: list[dict]) -> int:
        """Write shard ``index`` of ``records`` under ``partial`` unless a finished one with the same key is
        there. Returns the tokens it ran through the model (0 when the shard was reused)."""
        encs = [encode_record(self.tokenizer, r, self.max_length) for r in records]
        ids = [str(r["id"]) for r in records]
        key = _shard_key(ids, encs, self.settings)
        if _finished(partial / shard_name(index), key):
            return 0
        pad = self.tokenizer.pad_token_id
        feats, scores = _embed_shard(self.model, encs, self.part, self.batch_tokens, pad, self.dtype, self.projection)
        feats.check_finite()
        _write_shard(partial, shard_name(index), key, feats, scores, truncation_report(encs, ids))
        return sum(len(e.input_ids) for e in encs)


def assemble(out_dir: str | os.PathLike, n_shards: int, settings: dict) -> TokenFeatures:
    """Concatenate the finished shards 0..n_shards-1 into ``out_dir`` (atomically), drop them, map the result."""
    out, partial = Path(out_dir), partial_dir(out_dir)
    with atomic_output(out) as tmp:
        tmp.mkdir()
        _concat_shards([partial / shard_name(k) for k in range(n_shards)], tmp, settings)
    shutil.rmtree(partial)
    return TokenFeatures.load(out, mmap=True)


# -- entry point (the local engine) ------------------------------------------------------------
def embed_records(
    model_dir: str | os.PathLike,
    records: list[dict],
    out_dir: str | os.PathLike,
    part: str = "response",
    max_length: int = 512,
    batch_tokens: int = 8192,
    shard_size: int = 256,
    device=None,
    dtype: str = "float16",
    progress: bool = True,
    trust_remote_code: bool = False,
    project_dim: int | None = None,
    project_seed: int = 0,
    model_kwargs: dict | None = None,
) -> TokenFeatures:
    """Embed ``records`` (infosift.data records: whole conversations) into ``out_dir``; return it memory-mapped.

    out_dir holds values.npy ((total_tokens, d) in ``dtype``, or (total_tokens, project_dim)),
    offsets.npy, ids.json (record order), costs.npy ((N,) int64 chat-template tokens), p_next.npy and
    p_sqnorm.npy ((total_tokens,) float32), self_scores.npy ((N,) float32 mean log-prob of each record's
    assistant tokens under the model, NaN when truncation left none) and meta.json. Position rules: see
    ``feature_positions``; projection: see the module docstring. ``model_kwargs``: see ShardEmbedder.
    """
    from tqdm.auto import tqdm

    check_request(records, part, dtype, project_dim)
    embedder = ShardEmbedder(
        model_dir, part, max_length, batch_tokens, dtype, device, trust_remote_code, project_dim, project_seed,
        model_kwargs=model_kwargs,
    )  # fmt: skip
    partial = partial_dir(out_dir)
    partial.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(records), shard_size)
    done_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(records), unit="ex", desc="embed", disable=not progress)
    for index, start in enumerate(starts):
        chunk = records[start : start + shard_size]
        done_tokens += embedder.run(partial, index, chunk)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{done_tokens / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    return assemble(out_dir, len(starts), embedder.settings)
