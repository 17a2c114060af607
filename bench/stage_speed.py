"""Embedding and fine-tuning throughput per device, CPU as the reference measured in the same run; and the
Trainer against the hand-written loop it replaced, with and without gradient checkpointing.

Speed depends on the architecture and the token counts, not on the weight values, so where the real
weights cannot be had (a GPU box without the bundled GGUF) the model is built from its config.json with
random weights: same layers, same width, same tokenizer, same sequences.

    python bench/stage_speed.py --model-dir .cache/models/bundled-smollm2-135m-instruct-<hash>
    python bench/stage_speed.py --config-dir DIR    # DIR: config.json + tokenizer files, random weights
    python bench/stage_speed.py --model-dir DIR --trainer-vs-loop   # loop | Trainer | Trainer + checkpointing

Each fine-tune of --trainer-vs-loop runs in a process of its own, so that its peak memory (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on CUDA) is its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from record import record_to  # bench/ is on sys.path when run as a script

from infosift.chat import encode_record
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
    return sum(len(encode_record(tok, r, max_length).input_ids) for r in records)


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


MODES = ("loop", "trainer", "trainer+gc")


def train_speed(
    model_dir: Path, records: list[dict], device: str, batch_size: int, max_length: int, mode: str = "trainer"
) -> float:
    """Training tokens/s of one epoch (AdamW, cosine, lr 2e-5) in ``mode``: the reference loop, the Trainer, or
    the Trainer with gradient checkpointing. bf16 on CUDA (autocast in the loop, bf16=True in the Trainer)."""
    from reference_loop import reference_finetune  # bench/, beside this file

    model, tok = load_model_and_tokenizer(model_dir, device=device, dtype="float32")
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if mode == "loop":
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
                reference_finetune(model, tok, records, batch_size=batch_size, max_length=max_length)
        else:
            args = {"per_device_train_batch_size": batch_size, "lr_scheduler_type": "cosine", "warmup_steps": 0.1,
                    "use_cpu": not cuda, "bf16": cuda, "gradient_checkpointing": mode == "trainer+gc",
                    "save_strategy": "no", "optim": "adamw_torch"}  # fmt: skip
            finetune(model, tok, records, Path(tmp) / "m", TrainConfig(max_length=max_length, args=args),
                     checkpoint_dir=Path(tmp) / "ck", progress=False)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return n_tokens(model_dir, records, max_length) / seconds


def peak_memory_mb(device: str) -> float:
    """This process's peak: CUDA allocator high-water mark, else the resident set's (ru_maxrss, KiB on Linux)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_vs_loop(args, model_dir: Path) -> None:
    """Each mode in its own process (python bench/stage_speed.py --worker MODE ...), then the ratios."""
    import json
    import subprocess
    import sys

    rows = {}
    for device in args.devices:
        for mode in MODES:
            cmd = [sys.executable, __file__, "--model-dir", str(model_dir), "--data", str(args.data),
                   "--worker", mode, "--devices", device, "--n-train", str(args.n_train[0]),
                   "--max-length", str(args.max_length)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows[device, mode] = json.loads(out)
            print(f"{device} {mode}: {rows[device, mode]}", flush=True)
    print(f"{'device':<7} {'mode':<11} {'train tok/s':>11} {'x loop':>7} {'peak MiB':>9}")
    for (device, mode), r in rows.items():
        ratio = r["tok_s"] / rows[device, "loop"]["tok_s"]
        print(f"{device:<7} {mode:<11} {r['tok_s']:>11.1f} {ratio:>7.3f} {r['peak_mb']:>9.0f}")
    print(f"({args.n_train[0]} GSM8K train records, max_length {args.max_length}, batch 4 (CPU) / 16 (CUDA), "
          f"one epoch, AdamW, full SFT; {torch.get_num_threads()} CPU threads)")  # fmt: skip


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
    ap.add_argument("--trainer-vs-loop", action="store_true", help="time loop, Trainer, Trainer + checkpointing")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="also write the report to this file (results/bench/)")
    args = ap.parse_args()
    record_to(None if args.worker else args.out)  # a child's output is its parent's to report
    if args.worker:
        import json

        device = args.devices[0]
        records = gsm8k_records(args.data, args.n_train[0])
        bs = 16 if device.startswith("cuda") else 4
        tok_s = train_speed(args.model_dir, records, device, bs, args.max_length, args.worker)
        print(json.dumps({"tok_s": tok_s, "peak_mb": peak_memory_mb(device)}))
        return
    if args.trainer_vs_loop:
        with tempfile.TemporaryDirectory() as tmp:
            trainer_vs_loop(args, args.model_dir or random_weights_dir(args.config_dir, Path(tmp) / "model"))
        return
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
