"""Shared fixtures: a tiny random Llama saved to disk once per session, and GSM-style records."""

from __future__ import annotations

import os

import pytest

from tests.tiny import gsm_rows, save_tiny_model

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
