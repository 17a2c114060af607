"""Quality scores (pmi, eos) against a hand computation: one unbatched forward pass per example, full logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infosift.chat import encode_pair
from infosift.errors import DataError, FeaturesError
from infosift.models import load_model_and_tokenizer
from infosift.quality import load_quality, partner_prompts, quality_scores, save_quality


def by_hand(model, tok, prompt: str, response: str) -> tuple[float, float]:
    """(sum of log p over the response tokens, p(EOS) at the first EOS of the response span), unbatched."""
    enc = encode_pair(tok, prompt, response)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(logp[t - 1, enc.input_ids[t]].item() for t in range(1, len(enc.input_ids)) if enc.response_mask[t])
    end = next(t for t in range(1, len(enc.input_ids)) if enc.response_mask[t] and enc.input_ids[t] == tok.eos_token_id)
    return total, float(torch.softmax(logits[end - 1], dim=-1)[tok.eos_token_id])


def test_partner_prompts_are_a_seeded_derangement():
    for n in (2, 3, 17):
        for seed in range(4):
            p = partner_prompts(n, seed)
            assert sorted(p.tolist()) == list(range(n))  # every prompt is someone's q' exactly once
            assert np.all(p != np.arange(n))  # never its own prompt
            np.testing.assert_array_equal(p, partner_prompts(n, seed))
    assert len({tuple(partner_prompts(17, s)) for s in range(5)}) == 5
    with pytest.raises(DataError, match="at least two examples"):
        partner_prompts(1, 0)


def test_pmi_and_eos_equal_a_hand_computation(tiny_model_dir, gsm_records):
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    records = gsm_records[:7]
    got = quality_scores(model, tok, records, seed=3, batch_tokens=90)  # several padded batches
    for i, r in enumerate(records):
        own, eos = by_hand(model, tok, r["prompt"], r["response"])
        other, _ = by_hand(model, tok, records[got["partner"][i]]["prompt"], r["response"])
        assert got["partner"][i] != i
        assert got["logp"][i] == pytest.approx(own, rel=1e-4, abs=1e-4)
        assert got["pmi"][i] == pytest.approx(own - other, rel=1e-4, abs=1e-3)
        assert got["eos"][i] == pytest.approx(eos, rel=1e-4, abs=1e-7)
        assert 0.0 < got["eos"][i] < 1.0
    assert np.ptp(got["pmi"]) > 0  # different examples, different scores


def test_embed_token_stats_stand_in_for_the_own_prompt_pass(tiny_model_dir, gsm_records):
    """With embed's p_next of the response rows, log p(r|q) and eos are read off them; where the rows do not
    cover the response (truncated at embed), the model scores it."""
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    records = gsm_records[:5]
    plain = quality_scores(model, tok, records, seed=1)
    rows = []
    for r in records:
        enc = encode_pair(tok, r["prompt"], r["response"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits[0].double(), dim=-1)
        ts = [t for t in range(1, len(enc.input_ids)) if enc.response_mask[t]]
        rows.append(np.array([logp[t - 1, enc.input_ids[t]].exp().item() for t in ts], dtype=np.float32))
    reused = quality_scores(model, tok, records, seed=1, response_p_next=rows)
    for k in ("pmi", "eos", "logp", "logp_other"):
        np.testing.assert_allclose(reused[k], plain[k], rtol=1e-4, atol=1e-5)
    halved = [r * 0.5 for r in rows]  # the stats are what is read: halving each p lowers log p by n log 2
    halved[2] = halved[2][:-3]  # truncated at embed: the model scores this one
    got = quality_scores(model, tok, records, seed=1, response_p_next=halved)
    n = np.array([len(r) for r in rows])
    want = plain["logp"] - n * np.log(2.0)
    want[2] = plain["logp"][2]
    np.testing.assert_allclose(got["logp"], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["eos"][[0, 1, 3, 4]], plain["eos"][[0, 1, 3, 4]] / 2, rtol=1e-4)
    assert got["eos"][2] == pytest.approx(plain["eos"][2], rel=1e-4)


def test_quality_file_round_trips_and_refuses_other_ids(tmp_path):
    scores = {k: np.arange(3.0) + j for j, k in enumerate(("pmi", "eos", "partner", "logp", "logp_other"))}
    path = tmp_path / "quality.npz"
    save_quality(path, ["a", "b", "c"], scores)
    back = load_quality(path, ["a", "b", "c"])
    for k, v in scores.items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(FeaturesError, match="other examples"):
        load_quality(path, ["a", "c", "b"])
    with pytest.raises(FeaturesError, match="missing; rerun embed"):
        load_quality(tmp_path / "none.npz", ["a"])
    path.write_bytes(b"not a zip")
    with pytest.raises(FeaturesError, match="unreadable"):
        load_quality(path, ["a", "b", "c"])


def test_embed_stage_writes_the_pools_quality_scores(tiny_model_dir, tmp_path):
    """The stage's scores (p_next reused where it covers the response) equal a direct call's."""
    from tests.test_scale_embed import _records, _stage, _workspace

    cwd = _workspace(tmp_path, tiny_model_dir, {"shard_size": 16, "batch_tokens": 400, "quality_seed": 4})
    proc = _stage(cwd)
    assert proc.returncode == 0, proc.stderr
    records = _records()
    got = load_quality(cwd / "data/features/quality.npz", [r["id"] for r in records])
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    want = quality_scores(model, tok, records, seed=4)
    np.testing.assert_array_equal(got["partner"], want["partner"])
    for k in ("pmi", "eos", "logp"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-3)
    assert "embed: quality:" in proc.stdout


def hand_tokens(model, enc) -> np.ndarray:
    """log p of each response token of ``enc``, one unbatched forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits[0].double(), dim=-1)
    ts = [t for t in range(1, len(enc.input_ids)) if enc.response_mask[t]]
    return np.array([logp[t - 1, enc.input_ids[t]].item() for t in ts])


def test_a_huge_response_is_cut_before_tokenizing_and_scored_on_what_both_encodings_kept(tiny_model_dir, gsm_records):
    """At embed's max_length a 2 MB response is tokenized as max_length tokens; pmi sums the response tokens both
    its own and its partner's encoding kept, and eos is 0 (the turn's end lies past the cut)."""
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    records = [dict(r) for r in gsm_records[:4]]
    records[1]["response"] = "tom has 5 apples and 3 boxes . " * 70_000  # ~2 MB
    records[2]["prompt"] = records[2]["prompt"] + " and then some more words" * 6  # a longer partner prompt
    seen = {"chars": 0}
    call = type(tok).__call__

    def spy(self, text, *args, **kwargs):
        seen["chars"] = max(seen["chars"], len(text) if isinstance(text, str) else max(map(len, text)))
        return call(self, text, *args, **kwargs)

    L = 96
    type(tok).__call__ = spy
    try:
        got = quality_scores(model, tok, records, seed=2, max_length=L)
    finally:
        type(tok).__call__ = call
    assert seen["chars"] < 100_000, seen  # never the 2 MB
    for i, r in enumerate(records):
        own = encode_pair(tok, r["prompt"], r["response"], L)
        other = encode_pair(tok, records[got["partner"][i]]["prompt"], r["response"], L)
        a, b = hand_tokens(model, own), hand_tokens(model, other)
        k = min(len(a), len(b))
        assert got["logp"][i] == pytest.approx(a[:k].sum(), rel=1e-4, abs=1e-3)
        assert got["pmi"][i] == pytest.approx(a[:k].sum() - b[:k].sum(), rel=1e-4, abs=1e-3)
        if own.truncated:
            assert got["eos"][i] == 0.0
        else:
            assert got["eos"][i] > 0.0
    assert encode_pair(tok, records[1]["prompt"], records[1]["response"], L).truncated
    short = quality_scores(model, tok, [records[0], records[3]], seed=2, max_length=L)
    whole = quality_scores(model, tok, [records[0], records[3]], seed=2)
    for key in ("pmi", "eos", "logp"):  # a conversation that fits is scored as if never cut
        np.testing.assert_allclose(short[key], whole[key], rtol=1e-6)
