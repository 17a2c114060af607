"""Held-out NLL on the answer alone: the answer tokens' -log p, from the same forward pass as the whole response."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosift.chat import encode_record
from infosift.errors import DataError
from infosift.evaluate import heldout_nll


def test_answer_nll_is_the_answer_tokens_share_of_the_response(tiny_model_dir, gsm_records):
    recs = gsm_records[:3]
    res = heldout_nll(str(tiny_model_dir), recs, max_length=64, device="cpu", answer_pattern="#### (.*)")
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    for rec, row in zip(recs, res["per_example"], strict=True):
        enc = encode_record(tok, rec, 64)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
        answer = rec["response"].rsplit("#### ", 1)[1]
        n_answer = len(tok(answer, add_special_tokens=False)["input_ids"])
        # the answer is the response's last content tokens, before the template's end-of-turn
        resp_pos = [t - 1 for t, m in enumerate(enc.response_mask) if m]
        want = nll[resp_pos[-1 - n_answer : -1]].sum()
        assert row["answer_n_tokens"] == n_answer
        assert row["answer_nll_sum"] == pytest.approx(float(want), rel=1e-4)
        assert row["answer_nll_sum"] < row["nll_sum"]
    assert res["answer_nll_per_token"] == pytest.approx(
        sum(r["answer_nll_sum"] for r in res["per_example"]) / sum(r["answer_n_tokens"] for r in res["per_example"])
    )


def test_a_pattern_that_matches_no_response_is_one_error(tiny_model_dir, gsm_records):
    with pytest.raises(DataError, match="finds no answer token"):
        heldout_nll(str(tiny_model_dir), gsm_records[:2], max_length=64, device="cpu", answer_pattern="ANSWER: (.*)")
