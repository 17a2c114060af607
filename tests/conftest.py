"""Shared fixtures: a tiny random Llama saved to disk once per session, GSM-style records, MT-Bench-shaped files."""

from __future__ import annotations

import os

import pytest

from tests.tiny import gsm_rows, save_tiny_model, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of an HF directory with a random 2-layer Llama and a WordLevel chat tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def gsm_records():
    """40 normalized records {id, prompt, response, source}."""
    return [
        {"id": f"r{i}", "prompt": r["question"], "response": r["answer"], "source": "synthetic"}
        for i, r in enumerate(gsm_rows(40, seed=1))
    ]


@pytest.fixture
def mt_files(tmp_path):
    """Three MT-Bench-shaped questions (one with a reference) and the two judge prompts, in mirror_dir layout."""
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
    root = tmp_path / "mirror" / "mt_bench"
    write_jsonl(root / "question.jsonl", q)
    write_jsonl(root / "reference_answer_gpt-4.jsonl", refs)
    write_jsonl(root / "judge_prompts.jsonl", prompts)
    return {"q": str(root / "question.jsonl"), "r": str(root / "reference_answer_gpt-4.jsonl"),
            "p": str(root / "judge_prompts.jsonl"), "mirror": str(tmp_path / "mirror")}  # fmt: skip
