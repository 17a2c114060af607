"""Evaluation tests: NLL against a hand computation (pooled and per example, float32 even where bf16 would
hide a fine-tune), the evaluate stage's per_example.jsonl, lm-eval GSM8K end to end and with a scripted
model (right answer scores 1, wrong 0), and the MT-Bench-style suite with a fake judge."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from infosift.chat import encode_pair
from infosift.evaluate import gsm8k_lm_eval, heldout_nll, mt_bench_judged, overlap_rating, parse_rating
from infosift.evaluate.gsm8k import (
    TASK_NAME,
    run_gsm8k_task,
    summarize,
    task_config,
    write_samples,
    write_task_file,
)
from infosift.evaluate.judge import token_f1
from infosift.evaluate.nll import fp32_matmuls
from tests.tiny import build_tokenizer, gsm_rows, save_tiny_model, write_jsonl

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- held-out NLL


def _hand_nll_rows(model_dir, records, response_only=True):
    """Token by token, one example at a time: per example, sum of -log p(x_t | x_<t) over (response) tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for r in records:
        enc = encode_pair(tok, r["prompt"], r["response"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([enc.input_ids])).logits[0].double(), dim=-1)
        total, n = 0.0, 0
        for t in range(1, len(enc.input_ids)):
            if enc.response_mask[t] or not response_only:
                total -= float(logp[t - 1, enc.input_ids[t]])
                n += 1
        rows.append((total, n))
    return rows


def _hand_nll(model_dir, records, response_only=True):
    rows = _hand_nll_rows(model_dir, records, response_only)
    n = sum(k for _, k in rows)
    return sum(s for s, _ in rows) / n, n


@pytest.fixture
def nudged_model_dirs(tmp_path, gsm_records):
    """(base, nudged): a tiny model whose weights are exact bf16 values, and a copy one step downhill.

    The step moves every weight by a relative 1e-4 against the sign of its gradient on gsm_records[:4]
    (what Adam's first step at lr 2e-5 does to weights of ~0.2): a real change in NLL, yet well under half
    of bf16's relative spacing (>= 2**-9), so loading or autocasting the copy in bf16 gives back the base.
    """
    from transformers import AutoModelForCausalLM

    from infosift.chat import collate
    from infosift.losses import weighted_token_loss

    base = save_tiny_model(tmp_path / "base")
    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    model.save_pretrained(base)  # the base, now bf16-representable (still saved as fp32)
    batch = collate([encode_pair(tok, r["prompt"], r["response"]) for r in gsm_records[:4]], tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weighted_token_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["response_mask"][:, 1:]).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 - 1e-4 * torch.sign(p.grad) * torch.sign(p))
    nudged = tmp_path / "nudged"
    model.save_pretrained(nudged)
    tok.save_pretrained(nudged)
    return base, nudged


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


def test_heldout_nll_per_example_aligned_and_adds_up(tiny_model_dir, gsm_records):
    records = gsm_records[:7]
    records = [records[i] for i in (3, 0, 6, 1, 5, 2, 4)]  # input order unrelated to length order
    assert len({len(r["prompt"] + r["response"]) for r in records}) > 1
    out = heldout_nll(str(tiny_model_dir), records, batch_size=3, device="cpu")  # sorted, padded, ragged last batch
    per = out["per_example"]
    assert [p["id"] for p in per] == [r["id"] for r in records]
    assert all(isinstance(p["nll_sum"], float) and isinstance(p["n_tokens"], int) for p in per)
    assert sum(p["n_tokens"] for p in per) == out["n_tokens"]
    assert sum(p["nll_sum"] for p in per) / out["n_tokens"] == pytest.approx(out["nll_per_token"], rel=1e-12)
    for p, r, (s, n) in zip(per, records, _hand_nll_rows(tiny_model_dir, records), strict=True):
        one = heldout_nll(str(tiny_model_dir), [r], device="cpu")["per_example"][0]
        assert p["n_tokens"] == one["n_tokens"] == n
        assert p["nll_sum"] == pytest.approx(one["nll_sum"], rel=1e-5)
        assert p["nll_sum"] == pytest.approx(s, rel=1e-5)
    # examples differ, so a shuffle of the rows would show
    assert len({round(p["nll_sum"] / p["n_tokens"], 6) for p in per}) == len(per)


def test_heldout_nll_tells_apart_a_fine_tune_that_bf16_would_hide(nudged_model_dirs, gsm_records):
    base, nudged = (str(d) for d in nudged_model_dirs)
    records = gsm_records[:4]
    a = heldout_nll(base, records, batch_size=2, device="cpu")
    b = heldout_nll(nudged, records, batch_size=2, device="cpu")
    for pa, pb in zip(a["per_example"], b["per_example"], strict=True):
        assert pa["n_tokens"] == pb["n_tokens"]
        assert abs(pa["nll_sum"] - pb["nll_sum"]) > 5e-4  # fp32: ~2e-3; bf16 weights: 0; bf16 autocast: <4e-4
    assert b["nll_per_token"] < a["nll_per_token"]  # one step downhill
    # the premise: in bf16 the two models are one and the same, so a bf16 scoring path would fail above
    from transformers import AutoModelForCausalLM

    wa, wb = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).state_dict() for d in (base, nudged))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fp32_matmuls_turns_tf32_off_and_restores():
    knob = torch.backends.cuda.matmul
    if hasattr(knob, "fp32_precision"):
        name, on, off = "fp32_precision", "tf32", "ieee"
    else:
        name, on, off = "allow_tf32", True, False
    before = getattr(knob, name)
    try:
        setattr(knob, name, on)
        with fp32_matmuls():
            assert getattr(knob, name) == off
        assert getattr(knob, name) == on
        with pytest.raises(RuntimeError), fp32_matmuls():
            raise RuntimeError("boom")
        assert getattr(knob, name) == on
    finally:
        setattr(knob, name, before)


def test_evaluate_stage_writes_per_example(tiny_model_dir, gsm_records, tmp_path):
    """The stage as DVC runs it: per_example.jsonl has one line per scored test record; metrics.json stays small."""
    import shutil

    name = "random-4-s0-nll"
    shutil.copytree(tiny_model_dir, tmp_path / "models" / name)
    test = gsm_records[:6]
    write_jsonl(tmp_path / "data/download/test.jsonl", test)
    evaluate = {"n_test": 5, "max_length": 128, "batch_size": 2, "device": "cpu", "gsm8k": {"limit": 0},
                "mt_bench": {"limit": 0}}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": evaluate}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", name], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results/evaluate" / name
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in test[:5]]
    assert all(set(r) == {"id", "nll_sum", "n_tokens"} for r in rows)
    assert "per_example" not in metrics and metrics["n_examples"] == 5
    assert sum(r["n_tokens"] for r in rows) == metrics["n_tokens"]
    assert sum(r["nll_sum"] for r in rows) / metrics["n_tokens"] == pytest.approx(metrics["nll_per_token"])


# ---------------------------------------------------------------- GSM8K through lm-eval


def test_write_task_file_renames_fields_for_lm_eval(gsm_records, tmp_path):
    """lm-eval's GSM8K task reads {question, answer}; records carry {prompt, response}."""
    path = write_task_file(gsm_records[:3] + [{"prompt": "Ünïcode?", "response": "#### 1"}], tmp_path / "t.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[:3] == [{"question": r["prompt"], "answer": r["response"]} for r in gsm_records[:3]]
    assert rows[3] == {"question": "Ünïcode?", "answer": "#### 1"}


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


def test_evaluation_loads_through_models_and_honours_trust_remote_code(
    tiny_model_dir, gsm_records, mt_files, monkeypatch
):
    """A model finetune may load with trust_remote_code must be loadable by every evaluation too."""
    import infosift.models as models

    seen, real = [], models.load_model_and_tokenizer

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model_and_tokenizer", spy)
    heldout_nll(str(tiny_model_dir), gsm_records[:2], device="cpu", trust_remote_code=True)
    assert seen[0]["trust_remote_code"] is True and seen[0]["dtype"] == torch.float32  # scoring stays fp32
    mt_bench_judged(str(tiny_model_dir), mt_files["q"], mt_files["r"], mt_files["p"], judge="local",
                    judge_model_dir=str(tiny_model_dir), limit=1, max_new_tokens=2, judge_max_new_tokens=2,
                    device="cpu", trust_remote_code=True)  # fmt: skip
    assert len(seen) == 3 and all(kw["trust_remote_code"] is True for kw in seen)  # answering model and judge


def test_gsm8k_hands_trust_remote_code_to_lm_eval(monkeypatch, tmp_path):
    import infosift.evaluate.gsm8k as gsm8k

    seen = {}

    def fake_task(model, config, limit, model_args=None, **kw):
        seen.update(model_args=model_args, device=kw["device"])
        raise RuntimeError("stop")

    monkeypatch.setattr(gsm8k, "run_gsm8k_task", fake_task)
    with pytest.raises(RuntimeError, match="stop"):
        gsm8k_lm_eval("some/model", str(tmp_path / "t.jsonl"), limit=1, device="cpu", trust_remote_code=True)
    assert seen == {"model_args": {"pretrained": "some/model", "dtype": "float32", "trust_remote_code": True},
                    "device": "cpu"}  # fmt: skip
