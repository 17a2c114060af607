"""Evaluation: held-out NLL, GSM8K through lm-eval on local data, an MT-Bench-style judged suite."""

from infosift.evaluate.gsm8k import gsm8k_lm_eval
from infosift.evaluate.judge import JUDGES, LocalJudge, get_judge, mt_bench_judged, overlap_rating, parse_rating
from infosift.evaluate.judge_api import ApiJudge
from infosift.evaluate.nll import heldout_nll

__all__ = [
    "JUDGES",
    "ApiJudge",
    "LocalJudge",
    "get_judge",
    "gsm8k_lm_eval",
    "heldout_nll",
    "mt_bench_judged",
    "overlap_rating",
    "parse_rating",
]
