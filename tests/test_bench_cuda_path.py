"""bench/cuda_path.py without a GPU: the MFU arithmetic, which rows a machine skips and why, the timing window, and
one worker's fine-tune of the tiny model (its token count is Trainer's, and equals the records' tokens)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cp(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import cuda_path

    return cuda_path


def test_mfu_is_6n_tokens_per_second_over_the_peak_of_every_process(cp):
    assert cp.mfu(1000, 10**8, 6e12) == pytest.approx(0.1)  # 6 * 1e8 * 1e3 = 6e11 of 6e12
    assert cp.mfu(1000, 10**8, 6e12, processes=2) == pytest.approx(0.05)
    assert cp.mfu(1000, 10**8, None) is None  # no peak known: printed as '-'
    # the 135M model at the H100 row of results/bench/stage-speed-h100.txt: 0.63 %
    assert cp.mfu(7753, 134_515_008, cp.peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.006327, rel=1e-3)


def test_peak_flops_comes_from_the_table_by_device_name_or_from_the_argument(cp):
    assert cp.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert cp.peak_flops("NVIDIA H200") == 989e12
    assert cp.peak_flops("NVIDIA H100 PCIe") == 756e12  # the specific name before the general one
    assert cp.peak_flops("NVIDIA A10G") is None
    assert cp.peak_flops("NVIDIA A10G", 125) == 125e12
    assert cp.peak_flops("NVIDIA H100 80GB HBM3", 500) == 500e12  # the argument overrides the table


def test_each_mode_this_machine_cannot_run_says_why(cp):
    assert {m: cp.skip_reason(m, 0, True) for m in cp.MODES} == {
        "fp32": None, "fp32+gc": None, "bf16": "skipped: no CUDA device", "bf16+gc": "skipped: no CUDA device",
        "qlora": "skipped: no CUDA device", "2proc bf16": "skipped: no CUDA device"}  # fmt: skip
    one = {m: cp.skip_reason(m, 1, False) for m in cp.MODES}
    assert one["bf16"] is None and one["bf16+gc"] is None
    assert one["qlora"] == "skipped: bitsandbytes not installed"
    assert one["2proc bf16"] == "skipped: 1 GPU"
    assert all(cp.skip_reason(m, 2, True) is None for m in cp.MODES)


def test_the_timing_window_starts_after_the_warm_up_steps(cp):
    marks = [(10.0, 100), (11.0, 250), (13.0, 550)]  # (end of step, tokens seen by then)
    assert cp.rate(marks, 1) == (450, 3.0)
    assert cp.rate(marks, 2) == (300, 2.0)
    with pytest.raises(SystemExit, match="need more than --warmup-steps 3"):
        cp.rate(marks, 3)


def test_the_table_prints_skipped_rows_ratios_and_mfu(cp):
    rows = [("fp32", {"tok_s": 100.0, "peak_mb": 3000.0}), ("fp32+gc", {"tok_s": 90.0, "peak_mb": 2000.0}),
            ("bf16", {"tok_s": 2000.0, "peak_mb": 5000.0}),
            ("qlora", {"skipped": "skipped: bitsandbytes not installed"}),
            ("2proc bf16", {"failed": "failed: over --worker-timeout 240 s"})]  # fmt: skip
    lines = cp.table(rows, 10**8, {"cpu": None, "cuda": 6e13})
    assert lines[1].split() == ["cpu", "fp32", "100.0", "1.00", "3000", "-"]  # no CPU peak given: '-'
    assert lines[2].split() == ["cpu", "fp32+gc", "90.0", "0.90", "2000", "-"]
    assert lines[3].split() == ["cuda", "bf16", "2000.0", "20.00", "5000", "2.00%"]  # 6e8 * 2e3 / 6e13
    assert lines[4] == "cuda    qlora       skipped: bitsandbytes not installed"
    assert lines[5] == "cuda    2proc bf16  failed: over --worker-timeout 240 s"
    with_cpu_peak = cp.table(rows[:1], 10**8, {"cpu": 1e12, "cuda": None})
    assert with_cpu_peak[1].split()[-1] == "6.00%"
    assert cp.table(rows[2:3], 10**8, {"cpu": None, "cuda": 6e13})[1].split()[3] == "-"  # no CPU row: no ratio


def test_a_worker_times_the_steps_after_the_warm_up_of_a_real_fine_tune(cp, tiny_model_dir, gsm_records):
    from transformers import AutoTokenizer

    from infosift.chat import encode_record

    r = cp.worker("fp32", tiny_model_dir, gsm_records[:12], batch=4, max_length=64, warmup=1, epochs=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = [encode_record(tok, rec, 64) for rec in gsm_records[:12]]
    assert r["steps"] == math.ceil(len(encoded) / 4) == 3
    assert r["tokens_seen"] == sum(len(e.input_ids) for e in encoded if e.n_response)  # no padding counted
    assert 0 < r["tokens"] < r["tokens_seen"] and r["seconds"] > 0 and r["tok_s"] == r["tokens"] / r["seconds"]
    assert r["peak_mb"] > 0


def test_a_machine_without_cuda_prints_each_cuda_mode_skipped(cp, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    from tests.tiny import gsm_rows, write_jsonl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_jsonl(tmp_path / "train.jsonl", gsm_rows(4))
    argv = ["cuda_path.py", "--model-dir", str(tiny_model_dir), "--data", str(data), "--modes", *list(cp.MODES)[2:]]
    monkeypatch.setattr(sys, "argv", argv)
    cp.main()  # every mode is skipped: no worker starts
    out = capsys.readouterr().out
    for mode in ("bf16", "bf16+gc", "qlora", "2proc bf16"):
        assert f"cuda    {mode:<11} skipped: no CUDA device" in out
    assert "no GPU peak known" in out and "no GPU;" in out
