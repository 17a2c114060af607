"""Hermetic test assets: GSM-style data, a WordLevel tokenizer with a chat template, a tiny Llama.

Nothing here touches the network; everything is built in memory from a fixed seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NUMBER_WORDS = [str(i) for i in range(0, 200)]
WORDS = (
    "what is plus minus times how many apples does tom have if he buys more and gives away "
    "the answer so has left total each box holds boxes there are in all of"
).split()
SPECIAL = ["[UNK]", "[PAD]", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "####"]
PUNCT = ["?", ".", ",", "=", "<<", ">>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def gsm_rows(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-shaped rows {question, answer} with 'a op b' word problems and '#### N' answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        if rng.random() < 0.5:
            q = f"tom has {a} apples and buys {b} more . how many apples does tom have ?"
            ans = f"tom has {a} plus {b} = <<{a}+{b}={a + b}>> {a + b} apples . #### {a + b}"
        else:
            big, small = max(a, b), min(a, b)
            q = f"tom has {big} apples and gives away {small} . how many apples are left ?"
            d = big - small
            ans = f"tom has {big} minus {small} = <<{big}-{small}={d}>> {d} left . #### {d}"
        rows.append({"question": q, "answer": ans})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tokenizer():
    """A whitespace WordLevel tokenizer whose vocab covers gsm_rows() and the chat template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = SPECIAL + PUNCT + WORDS + NUMBER_WORDS + ["are", "left", "+", "-"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(pattern=Regex(r"<<|>>|=|\+|-"), behavior="isolated")]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="<|end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden: int = 32):
    """A 2-layer random Llama small enough to train in seconds on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=7,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
