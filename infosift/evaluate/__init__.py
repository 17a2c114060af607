"""Evaluation: held-out NLL, GSM8K through lm-eval on local data, an MT-Bench-style judged suite."""

from infosift.evaluate.gsm8k import gsm8k_lm_eval
from infosift.evaluate.judge import LocalJudge, mt_bench_judged, overlap_rating, parse_rating
from infosift.evaluate.nll import heldout_nll

__all__ = ["LocalJudge", "gsm8k_lm_eval", "heldout_nll", "mt_bench_judged", "overlap_rating", "parse_rating"]
