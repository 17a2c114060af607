"""embed_records against brute-force unbatched forward passes, and byte-identical resume after a kill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import infosift.embed as embed
from infosift.chat import encode_pair
from infosift.embed import embed_records, feature_positions, length_batches
from infosift.models import load_model_and_tokenizer

SMALL = dict(shard_size=16, batch_tokens=160, progress=False, device="cpu")  # several shards and batches


def _direct(model_dir, records, part):
    """Per record, unbatched: hidden states at kept positions and the mean response log-prob."""
    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    feats, scores, encs = [], [], []
    for r in records:
        enc = encode_pair(tok, r["prompt"], r["response"], 512)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
            logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        keep = [
            t - 1 for t in range(1, len(enc.input_ids)) if part == "all" or enc.response_mask[t] == (part == "response")
        ]
        resp = [t for t in range(1, len(enc.input_ids)) if enc.response_mask[t]]
        feats.append(hidden[keep].numpy())
        scores.append(np.mean([logp[t - 1, enc.input_ids[t]].item() for t in resp]))
        encs.append(enc)
    return feats, np.array(scores), encs


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_response_features_match_unbatched_forward(tiny_model_dir, gsm_records, tmp_path):
    out = tmp_path / "feats"
    feats = embed_records(tiny_model_dir, gsm_records, out, **SMALL)
    want, want_scores, encs = _direct(tiny_model_dir, gsm_records, "response")
    assert feats.ids == [r["id"] for r in gsm_records]
    assert feats.values.dtype == np.float16
    np.testing.assert_array_equal(feats.lengths, [e.n_response for e in encs])
    for i, w in enumerate(want):
        np.testing.assert_allclose(feats.sentence(i).astype(np.float32), w, rtol=2e-3, atol=2e-3)
    scores = np.load(out / "self_scores.npy")
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["n"], meta["d"], meta["total_tokens"], meta["part"]) == (40, 32, int(feats.lengths.sum()), "response")
    assert not (tmp_path / "feats.partial").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["feats"]  # no temp dirs left behind


def test_meta_counts_the_conversations_max_length_cut(tiny_model_dir, gsm_records, tmp_path):
    """n_truncated and n_emptied, summed over shards, as held-out NLL and finetune count them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = gsm_records[:12]
    whole = [len(encode_pair(tok, r["prompt"], r["response"]).input_ids) for r in records]
    max_length = min(whole)  # the longer ones lose their tail
    long = {**records[0], "id": "long", "prompt": " ".join([records[0]["prompt"]] * 6)}  # its question fills it
    assert len(encode_pair(tok, long["prompt"], "").input_ids) > max_length
    embed_records(
        tiny_model_dir, [*records, long], tmp_path / "f", **{**SMALL, "shard_size": 4, "max_length": max_length}
    )
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["n_truncated"] == sum(n > max_length for n in whole) + 1 and meta["n_truncated"] > 2
    assert meta["n_emptied"] == 1


@pytest.mark.parametrize("part", ["prompt", "all"])
def test_prompt_and_all_parts(tiny_model_dir, gsm_records, tmp_path, part):
    records = gsm_records[:12]
    feats = embed_records(tiny_model_dir, records, tmp_path / part, part=part, **SMALL)
    want, _, encs = _direct(tiny_model_dir, records, part)
    n_prompt = [len(e.input_ids) - e.n_response for e in encs]
    expect = [p - 1 for p in n_prompt] if part == "prompt" else [len(e.input_ids) - 1 for e in encs]
    np.testing.assert_array_equal(feats.lengths, expect)
    for i, w in enumerate(want):
        np.testing.assert_allclose(feats.sentence(i).astype(np.float32), w, rtol=2e-3, atol=2e-3)


def test_killed_run_resumes_to_identical_bytes(tiny_model_dir, gsm_records, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    embed_records(tiny_model_dir, gsm_records, ref, **{**SMALL, "shard_size": 8})
    real, calls = embed._embed_shard, []

    def dies_at_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(embed, "_embed_shard", dies_at_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_records(tiny_model_dir, gsm_records, out, **{**SMALL, "shard_size": 8})
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "run.partial").iterdir()) == ["shard-00000", "shard-00001"]

    calls.clear()
    monkeypatch.setattr(embed, "_embed_shard", lambda *a, **k: calls.append(1) or real(*a, **k))
    embed_records(tiny_model_dir, gsm_records, out, **{**SMALL, "shard_size": 8})
    assert len(calls) == 5 - 2  # only the unfinished shards were computed
    assert _files(out) == _files(ref)
    assert not (tmp_path / "run.partial").exists()


def test_stale_shards_are_recomputed(tiny_model_dir, gsm_records, tmp_path, monkeypatch):
    """Shards left by a killed run with other settings must be redone, not reused."""
    records = gsm_records[:16]
    ref = tmp_path / "ref"
    embed_records(tiny_model_dir, records, ref, part="prompt", **SMALL)
    real, calls = embed._embed_shard, []

    def dies_at_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(embed, "_embed_shard", dies_at_second_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_records(tiny_model_dir, records, out, part="response", **{**SMALL, "shard_size": 8})
    assert (tmp_path / "run.partial" / "shard-00000" / "shard.json").exists()
    calls.clear()
    monkeypatch.setattr(embed, "_embed_shard", lambda *a, **k: calls.append(1) or real(*a, **k))
    embed_records(tiny_model_dir, records, out, part="prompt", **{**SMALL, "shard_size": 8})
    assert len(calls) == 2  # the response-part shard 0 was not reused
    ref8 = tmp_path / "ref8"
    embed_records(tiny_model_dir, records, ref8, part="prompt", **{**SMALL, "shard_size": 8})
    assert _files(out) == _files(ref8)
    np.testing.assert_allclose(np.load(out / "values.npy"), np.load(ref / "values.npy"), rtol=2e-3, atol=2e-3)


def test_length_batches_respect_token_budget():
    lengths = [5, 30, 12, 12, 7, 50, 3, 12]
    batches = length_batches(lengths, batch_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40
        assert lengths[b[0]] == max(lengths[i] for i in b)
    assert batches == length_batches(lengths, batch_tokens=40)  # deterministic


def test_feature_positions_next_token_convention():
    from infosift.chat import Encoded

    enc = Encoded([10, 11, 12, 13, 14], [False, False, False, True, True])
    assert feature_positions(enc, "response").tolist() == [2, 3]
    assert feature_positions(enc, "prompt").tolist() == [0, 1]
    assert feature_positions(enc, "all").tolist() == [0, 1, 2, 3]


def test_bad_arguments(tiny_model_dir, gsm_records, tmp_path):
    with pytest.raises(ValueError, match="part"):
        embed_records(tiny_model_dir, gsm_records, tmp_path / "x", part="tokens", progress=False)
    dup = [gsm_records[0], gsm_records[0]]
    with pytest.raises(ValueError, match="unique"):
        embed_records(tiny_model_dir, dup, tmp_path / "x", progress=False)


def test_shards_in_any_order_assemble_to_the_engine_bytes(tiny_model_dir, gsm_records, tmp_path):
    """The per-shard pieces both engines share: shards written out of order (as Ray actors write them)
    by ShardEmbedder, then assembled, equal embed_records' output byte for byte."""
    ref = embed_records(tiny_model_dir, gsm_records, tmp_path / "ref", **{**SMALL, "shard_size": 8})
    embedder = embed.ShardEmbedder(tiny_model_dir, max_length=512, batch_tokens=160, device="cpu")
    partial = embed.partial_dir(tmp_path / "pieces")
    for index in (4, 1, 3, 0, 2):
        assert embedder.run(partial, index, gsm_records[8 * index : 8 * index + 8]) > 0
    assert embedder.run(partial, 2, gsm_records[16:24]) == 0  # finished: reused, not recomputed
    pieces = embed.assemble(tmp_path / "pieces", 5, embedder.settings)
    assert _files(tmp_path / "pieces") == _files(tmp_path / "ref")
    assert pieces.ids == ref.ids
    assert "projection" not in json.loads((tmp_path / "ref" / "meta.json").read_text())


def test_projection_matrix_is_seeded_and_keeps_norms():
    r = embed.projection_matrix(32, 4000, seed=3)
    assert r.shape == (32, 4000) and r.dtype == np.float32
    np.testing.assert_array_equal(r, embed.projection_matrix(32, 4000, seed=3))
    assert not np.array_equal(r, embed.projection_matrix(32, 4000, seed=4))
    # E[R R^T] = I: squared norms and inner products survive up to ~ 1/sqrt(k)
    np.testing.assert_allclose(r.astype(np.float64) @ r.T, np.eye(32), atol=0.1)


def test_project_dim_stores_projected_rows_and_keeps_the_rest(tiny_model_dir, gsm_records, tmp_path):
    records = gsm_records[:16]
    full = embed_records(tiny_model_dir, records, tmp_path / "full", dtype="float32", **SMALL)
    proj = embed_records(tiny_model_dir, records, tmp_path / "proj", project_dim=8, project_seed=5, **SMALL)
    r = embed.projection_matrix(full.dim, 8, seed=5)
    assert proj.values.shape == (len(full.values), 8) and proj.values.dtype == np.float16
    np.testing.assert_allclose(proj.values.astype(np.float32), full.values @ r, rtol=2e-3, atol=2e-3)
    for name in ("offsets.npy", "costs.npy", "p_next.npy", "p_sqnorm.npy", "self_scores.npy", "ids.json"):
        assert (tmp_path / "proj" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    meta = json.loads((tmp_path / "proj" / "meta.json").read_text())
    assert meta["d"] == 8 and meta["projection"] == {"kind": "gaussian/sqrt(k)", "d": full.dim, "k": 8, "seed": 5}
    again = embed_records(tiny_model_dir, records, tmp_path / "again", project_dim=8, project_seed=5, **SMALL)
    np.testing.assert_array_equal(again.values, proj.values)


def test_projection_is_part_of_the_shard_key(tiny_model_dir, gsm_records, tmp_path):
    """Shards projected with another seed (or not at all) are recomputed, never mixed in."""
    partial = embed.partial_dir(tmp_path / "out")
    a = embed.ShardEmbedder(tiny_model_dir, device="cpu", project_dim=8, project_seed=0)
    b = embed.ShardEmbedder(tiny_model_dir, device="cpu", project_dim=8, project_seed=1)
    c = embed.ShardEmbedder(tiny_model_dir, device="cpu")
    chunk = gsm_records[:4]
    assert a.run(partial, 0, chunk) > 0 and a.run(partial, 0, chunk) == 0
    assert b.run(partial, 0, chunk) > 0
    assert c.run(partial, 0, chunk) > 0


def test_bad_project_dim(tiny_model_dir, gsm_records, tmp_path):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="project_dim"):
            embed_records(tiny_model_dir, gsm_records, tmp_path / "x", project_dim=bad, progress=False)
    with pytest.raises(ValueError, match="below the model's hidden size 32"):
        embed_records(tiny_model_dir, gsm_records, tmp_path / "x", project_dim=32, progress=False, device="cpu")
