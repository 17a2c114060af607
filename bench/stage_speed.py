"""Embedding and fine-tuning throughput per device, CPU as the reference measured in the same run.

Speed depends on the architecture and the token counts, not on the weight values, so where the real
weights cannot be had (a GPU box without the bundled GGUF) the model is built from its config.json with
random weights: same layers, same width, same tokenizer, same sequences.

    python bench/stage_speed.py --model-dir .cache/models/bundled-smollm2-135m-instruct-<hash>
    python bench/stage_speed.py --config-dir DIR    # DIR: config.json + tokenizer files, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from infosift.chat import encode_pair
from infosift.data import read_records
from infosift.embed import embed_records
from infosift.models import load_model_and_tokenizer
from infosift.train import TrainConfig, finetune


def gsm8k_records(path: Path, n: int) -> list[dict]:
    rows = read_records(path)[:n]
    return [{"id": str(i), "prompt": r["question"], "response": r["answer"]} for i, r in enumerate(rows)]


def random_weights_dir(config_dir: Path, out: Path) -> Path:
    """An HF dir with config_dir's architecture and tokenizer and seeded random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def n_tokens(model_dir: Path, records: list[dict], max_length: int) -> int:
    """Tokens the stage processes: prompt + response under the chat template, cut at max_length."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(encode_pair(tok, r["prompt"], r["response"], max_length).input_ids) for r in records)


def embed_speed(model_dir: Path, records: list[dict], device: str, batch_tokens: int, max_length: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        embed_records(model_dir, records[:8], Path(tmp) / "warm", device=device, progress=False)  # load + kernels
        t0 = time.perf_counter()
        embed_records(
            model_dir,
            records,
            Path(tmp) / "f",
            device=device,
            batch_tokens=batch_tokens,
            max_length=max_length,
            progress=False,
        )
        return n_tokens(model_dir, records, max_length) / (time.perf_counter() - t0)


def train_speed(model_dir: Path, records: list[dict], device: str, batch_size: int, max_length: int) -> float:
    model, tok = load_model_and_tokenizer(model_dir, device=device)
    cfg = TrainConfig(batch_size=batch_size, max_length=max_length)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        finetune(model, tok, records, tmp, cfg, device=device, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return n_tokens(model_dir, records, max_length) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path)
    src.add_argument("--config-dir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gsm8k/train.jsonl"))
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--n-embed", type=int, nargs="+", default=[64, 2048], help="records per device, in order")
    ap.add_argument("--n-train", type=int, nargs="+", default=[32, 1024], help="records per device, in order")
    ap.add_argument("--max-length", type=int, default=384)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or random_weights_dir(args.config_dir, Path(tmp) / "model")
        rows = []
        for k, device in enumerate(args.devices):
            n_e, n_t = args.n_embed[min(k, len(args.n_embed) - 1)], args.n_train[min(k, len(args.n_train) - 1)]
            big = device != "cpu"
            e = embed_speed(model_dir, gsm8k_records(args.data, n_e), device, 16384 if big else 2048, args.max_length)
            t = train_speed(model_dir, gsm8k_records(args.data, n_t), device, 16 if big else 4, args.max_length)
            rows.append((device, n_e, e, n_t, t))
            print(f"{device}: embed {e:.0f} tok/s ({n_e} records), train {t:.0f} tok/s ({n_t} records)", flush=True)
    ref = rows[0]
    print(f"{'device':<8} {'embed tok/s':>12} {'x ' + ref[0]:>8} {'train tok/s':>12} {'x ' + ref[0]:>8}")
    for device, _, e, _, t in rows:
        print(f"{device:<8} {e:>12.0f} {e / ref[2]:>8.1f} {t:>12.0f} {t / ref[4]:>8.1f}")
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"({torch.get_num_threads()} CPU threads, {name}; max_length {args.max_length}; one epoch, AdamW, full SFT)")


if __name__ == "__main__":
    main()
