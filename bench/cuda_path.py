"""Fine-tune throughput and MFU of infosift's Trainer path per mode: the CPU's fp32 (with and without gradient
checkpointing) as the reference, and on CUDA bf16, bf16 + gradient checkpointing, QLoRA and 2 processes (DDP).

    PYTHONPATH=. python bench/cuda_path.py --config-dir DIR --data TRAIN.jsonl [--out results/bench/cuda-path.txt]

DIR holds config.json + tokenizer files (random weights, as bench/stage_speed.py --config-dir), or give
--model-dir. bench/device_stage_speed.sh prepares and runs this on a lent GPU machine. Each mode runs in a process
of its own (its peak memory is its own); a mode this machine cannot run is a "skipped: why" row, a mode that
fails or outlasts --worker-timeout a "failed: why" row, so one mode never costs the others' lease time.

tokens/s: prompt + response tokens (no padding; Trainer's num_input_tokens_seen, summed over processes) over the
optimizer steps after the first --warmup-steps, timed from a Trainer callback: loading, the warm-up steps and the
save are not counted.
MFU = 6 * N * tokens/s / (processes * peak FLOP/s): 2N FLOPs per token forward, 4N backward, attention's own
FLOPs left out. LoRA/QLoRA compute no weight gradients for the frozen base (nearer 4N), but are counted at 6N too,
the usual approximation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from record import record_to  # bench/ is on sys.path when run as a script
from stage_speed import gsm8k_records, peak_memory_mb, random_weights_dir

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    device: str  # cpu | cuda
    args: dict = field(default_factory=dict)  # TrainingArguments it adds
    qlora: bool = False  # LoRA on a 4-bit NF4 base (bitsandbytes)
    processes: int = 1  # > 1: torchrun, DDP


MODES = {
    "fp32": Mode("cpu"),
    "fp32+gc": Mode("cpu", {"gradient_checkpointing": True}),
    "bf16": Mode("cuda", {"bf16": True}),
    "bf16+gc": Mode("cuda", {"bf16": True, "gradient_checkpointing": True}),
    "qlora": Mode("cuda", {"bf16": True}, qlora=True),
    "2proc bf16": Mode("cuda", {"bf16": True}, processes=2),
}
REFERENCE = "fp32"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
# peak dense bf16 FLOP/s by device name, first match wins (NVIDIA data sheets, without sparsity)
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12))


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """One device's peak FLOP/s: --peak-tflops when given, else PEAK_BF16's first name in ``device_name``, else
    None (MFU is then printed as '-')."""
    if override_tflops is not None:
        return override_tflops * 1e12
    return next((flops for name, flops in PEAK_BF16 if name in device_name), None)


def mfu(tok_s: float, n_params: int, peak: float | None, processes: int = 1) -> float | None:
    """Achieved 6 * N * tokens/s over the peak of all the devices that trained; None without a peak."""
    return None if peak is None else 6 * n_params * tok_s / (processes * peak)


def skip_reason(mode: str, n_gpus: int, has_bitsandbytes: bool) -> str | None:
    """Why this machine cannot run ``mode`` ('skipped: ...'), or None."""
    m = MODES[mode]
    if m.device == "cuda" and n_gpus == 0:
        return "skipped: no CUDA device"
    if m.processes > n_gpus and m.device == "cuda":
        return f"skipped: {n_gpus} GPU"
    if m.qlora and not has_bitsandbytes:
        return "skipped: bitsandbytes not installed"
    return None


def rate(marks: list[tuple[float, int]], warmup: int) -> tuple[int, float]:
    """(tokens, seconds) after the first ``warmup`` optimizer steps, from each step's (end time, tokens seen)."""
    if warmup < 1 or len(marks) <= warmup:
        raise SystemExit(f"{len(marks)} optimizer steps: need more than --warmup-steps {warmup} (>= 1)")
    (t0, n0), (t1, n1) = marks[warmup - 1], marks[-1]
    return n1 - n0, t1 - t0


def count_params(model_dir: Path) -> int:
    """N: the model's parameters, a tied embedding once (built on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def clock(marks: list[tuple[float, int]]):
    """A TrainerCallback appending (time, tokens seen) at the end of each optimizer step, the GPU drained first."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    return Clock()


def worker(mode: str, model_dir: Path, records: list[dict], batch: int, max_length: int, warmup: int,
           epochs: float) -> dict:  # fmt: skip
    """One fine-tune in ``mode`` (this process, or one rank of torchrun): its tokens/s and peak memory."""
    from infosift.models import load_model_and_tokenizer
    from infosift.train import TrainConfig, finetune

    m = MODES[mode]
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if m.device == "cuda" else "cpu"
    # full SFT: fp32 master weights, bf16 autocast on CUDA (Trainer bf16=True); QLoRA: NF4 base, the rest bf16
    model, tok = load_model_and_tokenizer(model_dir, device=device, dtype="auto" if m.qlora else "float32",
                                          quantization="4bit" if m.qlora else None)  # fmt: skip
    args = {"per_device_train_batch_size": batch, "num_train_epochs": epochs, "lr_scheduler_type": "cosine",
            "warmup_steps": 0.1, "use_cpu": m.device == "cpu", "save_strategy": "no", "optim": "adamw_torch",
            "include_num_input_tokens_seen": "non_padding", **m.args}  # fmt: skip
    cfg = TrainConfig(max_length=max_length, lora=LORA if m.qlora else None, args=args)
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        result = finetune(model, tok, records, Path(tmp) / "m", cfg, checkpoint_dir=Path(tmp) / "ck",
                          progress=False, callbacks=[clock(marks)])  # fmt: skip
    tokens, seconds = rate(marks, warmup)
    return {"tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "steps": result.steps,
            "tokens_seen": marks[-1][1], "peak_mb": peak_memory_mb(device)}  # fmt: skip


def run_mode(mode: str, args, model_dir: Path) -> dict:
    """``mode`` in a process of its own (torchrun for several); its JSON line, or {'failed': why}."""
    m = MODES[mode]
    cpu = m.device == "cpu"
    cmd = [str(Path(__file__).resolve()), "--worker", mode, "--model-dir", str(model_dir), "--data", str(args.data),
           "--n-cpu" if cpu else "--n-cuda", str(args.n_cpu if cpu else args.n_cuda), "--max-length",
           str(args.max_length), "--warmup-steps", str(args.warmup_steps), "--epochs", str(args.epochs),
           "--cpu-batch", str(args.cpu_batch), "--cuda-batch", str(args.cuda_batch)]  # fmt: skip
    if m.processes > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={m.processes}", *cmd]
    try:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"failed: over --worker-timeout {args.worker_timeout} s"}
    lines = [ln[ln.index('{"tok_s"') :] for ln in proc.stdout.splitlines() if '{"tok_s"' in ln]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr, flush=True)
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"failed": f"failed: {last[:90]}"}
    return json.loads(lines[-1])


def progress(r: dict) -> str:
    if "tok_s" not in r:
        return r.get("skipped") or r["failed"]
    return (f"{r['tok_s']:.1f} tok/s: {r['tokens']} tokens in {r['seconds']:.2f} s after the warm-up "
            f"({r['tokens_seen']} tokens, {r['steps']} steps in all), peak {r['peak_mb']:.0f} MiB")  # fmt: skip


def table(rows: list[tuple[str, dict]], n_params: int, peaks: dict[str, float | None]) -> list[str]:
    """The report's rows: device, mode, tokens/s, x the CPU fp32 row, peak MiB, MFU (or why the row is empty)."""
    ref = dict(rows).get(REFERENCE, {}).get("tok_s")
    out = [f"{'device':<7} {'mode':<11} {'train tok/s':>11} {'x cpu fp32':>11} {'peak MiB':>9} {'MFU':>7}"]
    for mode, r in rows:
        m = MODES[mode]
        head = f"{m.device:<7} {mode:<11}"
        if "tok_s" not in r:
            out.append(f"{head} {r.get('skipped') or r['failed']}")
            continue
        x = f"{r['tok_s'] / ref:.2f}" if ref else "-"
        u = mfu(r["tok_s"], n_params, peaks[m.device], m.processes)
        u_s = "-" if u is None else f"{100 * u:.2f}%"
        out.append(f"{head} {r['tok_s']:>11.1f} {x:>11} {r['peak_mb']:>9.0f} {u_s:>7}")
    return out


def versions() -> str:
    names = ("torch", "transformers", "peft", "bitsandbytes")
    return ", ".join(f"{n} {__import__(n).__version__}" for n in names if importlib.util.find_spec(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path)
    src.add_argument("--config-dir", type=Path, help="config.json + tokenizer files: random weights")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gsm8k/train.jsonl"))
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--n-cpu", type=int, default=32, help="GSM8K train records a CPU mode trains on")
    ap.add_argument("--n-cuda", type=int, default=512, help="records a CUDA mode trains on (the same, more of them)")
    ap.add_argument("--cpu-batch", type=int, default=4)
    ap.add_argument("--cuda-batch", type=int, default=16, help="per process")
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps left out of the timing")
    ap.add_argument("--peak-tflops", type=float, help="one GPU's peak bf16 TFLOP/s (overrides the table)")
    ap.add_argument("--peak-tflops-cpu", type=float, help="the CPU's peak fp32 TFLOP/s (else MFU '-' on CPU)")
    ap.add_argument("--worker-timeout", type=int, default=240, help="seconds one mode may take")
    ap.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="also write the report to this file (results/bench/)")
    args = ap.parse_args()
    record_to(None if args.worker else args.out)  # a worker's output is its parent's to report
    if args.worker:
        cpu = MODES[args.worker].device == "cpu"
        records = gsm8k_records(args.data, args.n_cpu if cpu else args.n_cuda)
        r = worker(args.worker, args.model_dir, records, args.cpu_batch if cpu else args.cuda_batch,
                   args.max_length, args.warmup_steps, args.epochs)  # fmt: skip
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(r), flush=True)
        return
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = torch.cuda.get_device_name() if n_gpus else "no GPU"
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    peaks = {"cuda": peak_flops(gpu, args.peak_tflops) if n_gpus else None,
             "cpu": args.peak_tflops_cpu * 1e12 if args.peak_tflops_cpu else None}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or random_weights_dir(args.config_dir, Path(tmp) / "model")
        n_params = count_params(model_dir)
        rows = []
        for mode in args.modes:
            why = skip_reason(mode, n_gpus, has_bnb)
            r = {"skipped": why} if why else run_mode(mode, args, model_dir)
            rows.append((mode, r))
            print(f"{MODES[mode].device} {mode}: {progress(r)}", flush=True)
    print("\n".join(table(rows, n_params, peaks)))
    gpu_peak = "no GPU peak known" if peaks["cuda"] is None else f"peak {peaks['cuda'] / 1e12:.0f} TFLOP/s per GPU"
    cpu_peak = "" if peaks["cpu"] is None else f", CPU peak {peaks['cpu'] / 1e12:g} TFLOP/s"
    print(f"MFU = 6 * N * tok/s / (processes * peak), N = {n_params:,} (tied embedding once), {gpu_peak} (bf16 "
          f"dense){cpu_peak}; qlora counted at 6N too, though its frozen base needs no weight gradients (nearer "
          f"4N): the usual approximation.")  # fmt: skip
    print(f"tok/s: prompt+response tokens after the first {args.warmup_steps} optimizer step(s), load and save not "
          f"timed; peak: CUDA allocator high-water (rank 0 for 2proc), CPU resident set. qlora: LoRA r16 all-linear "
          f"on an NF4 base; peft's k-bit preparation turns gradient checkpointing on.")  # fmt: skip
    print(f"({args.n_cpu} CPU / {args.n_cuda} CUDA GSM8K train records, max_length {args.max_length}, batch "
          f"{args.cpu_batch} CPU / {args.cuda_batch} CUDA per process, {args.epochs:g} epoch, AdamW; "
          f"{torch.get_num_threads()} CPU threads, {gpu}; {versions()})")  # fmt: skip


if __name__ == "__main__":
    main()
