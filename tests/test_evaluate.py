"""Evaluation tests: NLL against a hand computation, lm-eval GSM8K end to end and with a scripted
model (right answer scores 1, wrong 0), and the MT-Bench-style suite with a fake judge."""

from __future__ import annotations

import json
import math

import pytest
import torch

from infosift.chat import encode_pair
from infosift.evaluate import gsm8k_lm_eval, heldout_nll, mt_bench_judged, overlap_rating, parse_rating
from infosift.evaluate.gsm8k import TASK_NAME, run_gsm8k_task, summarize, task_config, write_samples
from infosift.evaluate.judge import token_f1
from tests.tiny import gsm_rows, write_jsonl

# ---------------------------------------------------------------- held-out NLL


def _hand_nll(model_dir, records, response_only=True):
    """Token by token, one example at a time: sum of -log p(x_t | x_<t) over (response) tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, n = 0.0, 0
    for r in records:
        enc = encode_pair(tok, r["prompt"], r["response"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([enc.input_ids])).logits[0].double(), dim=-1)
        for t in range(1, len(enc.input_ids)):
            if enc.response_mask[t] or not response_only:
                total -= float(logp[t - 1, enc.input_ids[t]])
                n += 1
    return total / n, n


def test_heldout_nll_matches_hand_computation(tiny_model_dir, gsm_records):
    records = gsm_records[:2]
    expected, n_expected = _hand_nll(tiny_model_dir, records)
    out = heldout_nll(str(tiny_model_dir), records, batch_size=2, device="cpu")  # batched, padded
    assert out["n_examples"] == 2
    assert out["n_tokens"] == n_expected
    assert out["nll_per_token"] == pytest.approx(expected, rel=1e-5)
    # prompt tokens must not count: the all-token NLL is a different number
    all_tokens, n_all = _hand_nll(tiny_model_dir, records, response_only=False)
    assert n_all > n_expected
    assert not math.isclose(out["nll_per_token"], all_tokens, rel_tol=1e-4)


def test_heldout_nll_batch_size_invariant(tiny_model_dir, gsm_records):
    a = heldout_nll(str(tiny_model_dir), gsm_records[:5], batch_size=1, device="cpu")
    b = heldout_nll(str(tiny_model_dir), gsm_records[:5], batch_size=4, device="cpu")
    assert a["n_tokens"] == b["n_tokens"]
    assert a["nll_per_token"] == pytest.approx(b["nll_per_token"], rel=1e-5)
    # a random model over a ~250-word vocabulary sits near log(V)
    assert 0.5 * math.log(250) < a["nll_per_token"] < 2 * math.log(250)


def test_heldout_nll_rejects_empty(tiny_model_dir):
    with pytest.raises(ValueError):
        heldout_nll(str(tiny_model_dir), [], device="cpu")


# ---------------------------------------------------------------- GSM8K through lm-eval


def test_task_config_uses_split_dict(tmp_path):
    cfg = task_config(str(tmp_path / "t.jsonl"), str(tmp_path / "tr.jsonl"))
    files = cfg["dataset_kwargs"]["data_files"]
    assert set(files) == {"test", "train"} and files["test"].endswith("t.jsonl")
    assert [f["name"] for f in cfg["filter_list"]] == ["strict-match", "flexible-extract"]


def test_gsm8k_lm_eval_end_to_end_tiny(tiny_model_dir, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", gsm_rows(4, seed=3))
    out = gsm8k_lm_eval(str(tiny_model_dir), str(test), limit=2, out_dir=str(tmp_path / "o"), max_gen_toks=4,
                        batch_size=2, device="cpu")  # fmt: skip
    assert out["n"] == 2
    for k in ("exact_match_strict", "exact_match_flexible"):
        assert 0.0 <= out[k] <= 1.0
    log = [json.loads(x) for x in (tmp_path / "o" / "gsm8k_samples.jsonl").read_text().splitlines()]
    assert len(log) == 2 and set(log[0]["exact_match"]) == {"strict-match", "flexible-extract"}


def test_gsm8k_fewshot_needs_train_split(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="train_path"):
        gsm8k_lm_eval(str(tiny_model_dir), str(tmp_path / "x.jsonl"), limit=1, num_fewshot=2)


def _scripted_lm(replies: dict[str, str]):
    """An lm-eval LM that answers each question with a fixed reply (looked up by question text)."""
    from lm_eval.api.model import LM

    class Scripted(LM):
        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for req in requests:
                context = req.args[0]
                out.append(next(r for q, r in replies.items() if q in context))
            return out

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return Scripted()


def test_gsm8k_metrics_score_right_one_wrong_zero(tmp_path):
    rows = gsm_rows(4, seed=5)
    gold = [r["answer"].split("#### ")[-1] for r in rows]
    replies = {
        rows[0]["question"]: f"some steps . #### {gold[0]}",  # right, strict format
        rows[1]["question"]: f"some steps . #### {int(gold[1]) + 1}",  # wrong
        rows[2]["question"]: f"so the answer is {gold[2]}",  # right number, no '####'
        rows[3]["question"]: f"#### {int(gold[3]):,}.00" if int(gold[3]) > 999 else f"#### ${gold[3]}",  # '$' ignored
    }
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    results = run_gsm8k_task(_scripted_lm(replies), task_config(str(test), str(test)), limit=None,
                             apply_chat_template=False)  # fmt: skip
    per_doc = {}
    for s in results["samples"][TASK_NAME]:
        per_doc.setdefault(s["doc_id"], {})[s["filter"]] = s["exact_match"]
    assert per_doc[0] == {"strict-match": 1.0, "flexible-extract": 1.0}
    assert per_doc[1] == {"strict-match": 0.0, "flexible-extract": 0.0}
    assert per_doc[2] == {"strict-match": 0.0, "flexible-extract": 1.0}
    assert per_doc[3]["strict-match"] == 0.0  # strict regex does not admit '$'
    m = summarize(results)
    assert m["n"] == 4
    assert m["exact_match_strict"] == pytest.approx(1 / 4)
    assert m["exact_match_flexible"] == pytest.approx(per_doc[3]["flexible-extract"] / 4 + 2 / 4)
    path = write_samples(results, str(tmp_path / "log"))
    first = json.loads(path.read_text().splitlines()[0])
    assert first["response"] == replies[rows[0]["question"]] and first["extracted"]["strict-match"] == gold[0]


# ---------------------------------------------------------------- MT-Bench-style


def test_parse_rating():
    assert parse_rating("Good answer. Rating: [[7]]") == 7.0
    assert parse_rating("[[ 8.5 ]]") == 8.5
    assert parse_rating("format: [[5]] ... my rating: [[3]]") == 3.0  # the verdict comes last
    assert parse_rating("Rating: [[11]]") is None
    assert parse_rating("Rating: 7/10") is None


def test_spread_over_categories():
    from infosift.evaluate.judge import spread_over_categories

    qs = [{"question_id": i, "category": c} for i, c in enumerate("aaabbc")]
    assert [q["question_id"] for q in spread_over_categories(qs, 4)] == [0, 3, 5, 1]
    assert len(spread_over_categories(qs, None)) == 6


def test_overlap_rating():
    assert overlap_rating("the answer is 42", "the answer is 42") == pytest.approx(10.0)
    assert overlap_rating("completely unrelated", "the answer is 42") == pytest.approx(1.0)
    # precision 2/3, recall 2/4 -> F1 = 4/7
    assert token_f1("answer is 42", "The answer is 41") == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))


@pytest.fixture
def mt_files(tmp_path):
    """Two MT-Bench-shaped questions (one with a reference) and the two single-answer judge prompts."""
    q = [
        {"question_id": 1, "category": "writing", "turns": ["what is the answer ?", "more ?"]},
        {"question_id": 2, "category": "math", "turns": ["how many apples does tom have ?", "more ?"]},
        {"question_id": 3, "category": "math", "turns": ["what is 3 plus 4 ?", "more ?"]},
    ]
    refs = [{"question_id": 2, "choices": [{"turns": ["tom has 5 apples", "x"]}]}]
    prompts = [
        {"name": "single-v1", "prompt_template": "[Q]{question}[A]{answer}"},
        {"name": "single-math-v1", "prompt_template": "[Q]{question}[R]{ref_answer_1}[A]{answer}"},
    ]
    paths = {}
    for name, rows in (("q", q), ("r", refs), ("p", prompts)):
        paths[name] = str(write_jsonl(tmp_path / f"{name}.jsonl", rows))
    return paths


def test_mt_bench_judged_with_fake_judge(tiny_model_dir, mt_files, tmp_path):
    seen = []

    def fake_judge(prompt: str) -> float | None:
        seen.append(prompt)
        return 8.0 if "[R]" in prompt else 4.0  # reference-guided prompt for math with a reference

    out = mt_bench_judged(str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"], judge=fake_judge,
                          limit=2, max_new_tokens=4, device="cpu", out_dir=str(tmp_path / "o"))  # fmt: skip
    assert "not comparable" in out["label"]
    assert out["n"] == 2 and out["n_scored"] == 2 and len(seen) == 2
    assert out["per_category"] == {"writing": 4.0, "math": 8.0}
    assert out["overall"] == pytest.approx(6.0)
    assert out["n_overlap"] == 1 and 1.0 <= out["overlap_overall"] <= 10.0
    assert "[R]tom has 5 apples[A]" in seen[1]
    log = [json.loads(x) for x in (tmp_path / "o" / "mt_bench_judged.jsonl").read_text().splitlines()]
    assert [r["score"] for r in log] == [4.0, 8.0]


def test_mt_bench_unparseable_and_local_judge(tiny_model_dir, mt_files):
    out = mt_bench_judged(str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"], judge=lambda p: None,
                          max_new_tokens=2, device="cpu")  # fmt: skip
    assert out["n"] == 3 and out["n_scored"] == 0 and out["overall"] is None
    # the default local-model judge runs end to end (a random model rarely emits '[[x]]')
    out = mt_bench_judged(str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"], judge="local",
                          judge_model_dir=str(tiny_model_dir), limit=1, max_new_tokens=2, judge_max_new_tokens=3,
                          device="cpu")  # fmt: skip
    assert out["n"] == 1 and out["judge"].startswith("local:")
    with pytest.raises(ValueError, match="judge_model_dir"):
        mt_bench_judged(str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"], judge="local", limit=1,
                        max_new_tokens=1, device="cpu")  # fmt: skip
