"""embed's costs, p_next and p_sqnorm against a direct forward pass, and their round trip through TokenFeatures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infosift.chat import encode_pair
from infosift.embed import embed_records, feature_positions
from infosift.features import TokenFeatures
from infosift.models import load_model_and_tokenizer
from tests.tiny import build_model, build_tokenizer

SMALL = dict(shard_size=16, batch_tokens=160, progress=False, device="cpu")  # several shards and batches


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory):
    """The tiny random Llama with its final norm scaled up, so next-token distributions are far from uniform.

    (A freshly initialised head gives p close to 1/V everywhere, where p_next could not be told from the
    probability of some other token.)
    """
    path = tmp_path_factory.mktemp("sharp_model")
    tok = build_tokenizer()
    model = build_model(len(tok), seed=3)
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def direct_stats(model_dir, records, part: str, max_length: int):
    """Per record, unbatched full forward: (input_ids lengths, p_next rows, p_sqnorm rows)."""
    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    lengths, p_next, p_sqnorm = [], [], []
    for r in records:
        enc = encode_pair(tok, r["prompt"], r["response"], max_length)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0].double(), dim=-1).numpy()
        pos = feature_positions(enc, part)
        nxt = np.asarray(enc.input_ids)[pos + 1]
        lengths.append(len(enc.input_ids))
        p_next.append(p[pos, nxt])
        p_sqnorm.append((p[pos] ** 2).sum(-1))
    return np.asarray(lengths), p_next, p_sqnorm


@pytest.mark.parametrize("part,max_length", [("response", 512), ("all", 512), ("prompt", 512), ("response", 24)])
def test_costs_and_token_stats_match_a_direct_forward_pass(sharp_model_dir, gsm_records, tmp_path, part, max_length):
    records = gsm_records if part == "response" and max_length == 512 else gsm_records[:20]
    out = tmp_path / "feats"
    feats = embed_records(sharp_model_dir, records, out, part=part, max_length=max_length, **SMALL)
    lengths, want_next, want_sq = direct_stats(sharp_model_dir, records, part, max_length)

    costs = np.load(out / "costs.npy")
    assert costs.dtype == np.int64
    np.testing.assert_array_equal(costs, lengths)  # prompt + response tokens under the chat template
    np.testing.assert_array_equal(feats.token_costs, lengths)
    if max_length == 24:
        assert costs.max() == 24 and (costs < 24).sum() < len(costs)  # truncation is what a fine-tune pays

    p_next, p_sqnorm = np.load(out / "p_next.npy"), np.load(out / "p_sqnorm.npy")
    total = int(feats.offsets[-1])
    assert p_next.shape == p_sqnorm.shape == (total,) == (len(feats.values),)
    assert p_next.dtype == p_sqnorm.dtype == np.float32
    assert np.all(p_next > 0) and np.all(p_next <= 1)
    assert np.all(p_sqnorm > 0) and np.all(p_sqnorm <= 1)
    assert np.all(p_sqnorm >= p_next.astype(np.float64) ** 2 * (1 - 1e-5))  # sum_k p_k^2 >= p_y^2
    assert p_sqnorm.max() > 0.2 and p_sqnorm.min() < 0.1  # far from uniform (1/V ~ 0.004): the check has teeth
    for i in range(len(records)):
        rows = slice(int(feats.offsets[i]), int(feats.offsets[i + 1]))
        np.testing.assert_allclose(p_next[rows], want_next[i], rtol=1e-4, atol=1e-6, err_msg=f"p_next of {i}")
        np.testing.assert_allclose(p_sqnorm[rows], want_sq[i], rtol=1e-4, atol=1e-6, err_msg=f"p_sqnorm of {i}")
    np.testing.assert_array_equal(np.asarray(feats.p_next), p_next)  # the returned features carry the same
    np.testing.assert_array_equal(np.asarray(feats.p_sqnorm), p_sqnorm)


def test_load_round_trips_and_subset_keeps_stats_aligned(sharp_model_dir, gsm_records, tmp_path):
    out = tmp_path / "feats"
    embed_records(sharp_model_dir, gsm_records, out, **SMALL)
    on_disk = {name: np.load(out / f"{name}.npy") for name in ("costs", "p_next", "p_sqnorm", "values", "offsets")}
    for mmap in (False, True):
        f = TokenFeatures.load(out, mmap=mmap)
        for name, arr in on_disk.items():
            np.testing.assert_array_equal(np.asarray(getattr(f, name)), arr, err_msg=name)
    f = TokenFeatures.load(out)
    f.save(tmp_path / "copy")
    again = TokenFeatures.load(tmp_path / "copy")
    for name in ("costs", "p_next", "p_sqnorm", "values", "offsets"):
        np.testing.assert_array_equal(getattr(again, name), getattr(f, name), err_msg=name)
    assert again.ids == f.ids

    keep = [17, 3, 39, 0, 22, 3]  # out of order, across shards, with a repeat
    sub = TokenFeatures.load(out, mmap=True).subset(keep)
    assert sub.ids == [f.ids[i] for i in keep]
    np.testing.assert_array_equal(sub.costs, f.costs[keep])
    np.testing.assert_array_equal(sub.lengths, f.lengths[keep])
    for j, i in enumerate(keep):
        rows = slice(int(f.offsets[i]), int(f.offsets[i + 1]))
        np.testing.assert_array_equal(sub.sentence(j), f.sentence(i))
        np.testing.assert_array_equal(sub.p_next[sub.offsets[j] : sub.offsets[j + 1]], f.p_next[rows])
        np.testing.assert_array_equal(sub.p_sqnorm[sub.offsets[j] : sub.offsets[j + 1]], f.p_sqnorm[rows])
    reweighted = f.with_values(np.asarray(f.values, dtype=np.float32) * 2.0)
    np.testing.assert_array_equal(reweighted.p_next, f.p_next)
    np.testing.assert_array_equal(reweighted.costs, f.costs)


def test_features_without_stats_load_and_default_costs(tmp_path):
    """Older feature dirs have no costs / p files: they load with None, and token costs fall back to lengths."""
    f = TokenFeatures.from_list([np.ones((3, 2)), np.ones((1, 2)), np.zeros((0, 2))])
    f.save(tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["ids.json", "offsets.npy", "values.npy"]
    g = TokenFeatures.load(tmp_path / "old")
    assert g.costs is None and g.p_next is None and g.p_sqnorm is None
    assert g.token_costs.tolist() == [3, 1, 1]
    sub = g.subset([2, 0])
    assert sub.p_next is None and sub.token_costs.tolist() == [1, 3]


def test_misaligned_stats_are_rejected():
    values, offsets = np.zeros((5, 2)), [0, 2, 5]
    with pytest.raises(ValueError, match="p_next must have one entry per token row"):
        TokenFeatures(values, offsets, ["a", "b"], p_next=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="p_sqnorm"):
        TokenFeatures(values, offsets, ["a", "b"], p_sqnorm=np.ones(6, np.float32))
    with pytest.raises(ValueError, match="costs must have shape"):
        TokenFeatures(values, offsets, ["a", "b"], costs=[3])
    with pytest.raises(ValueError, match="costs must be >= 1"):
        TokenFeatures(values, offsets, ["a", "b"], costs=[3, 0])
