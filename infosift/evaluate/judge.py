"""MT-Bench-style judged suite: first-turn answers scored 1..10 by a pluggable judge.

Not MT-Bench: first turns only, and the judge is rarely GPT-4, so scores are only
comparable between runs that share judge, questions and limit. Judges by name (JUDGES, lm-eval style),
each turning a batch of Items into ratings (None when unparseable):
- "overlap": token-F1 against the GPT-4 reference, 1 + 9*F1, where a reference exists;
- "local": LocalJudge, a local HF chat model given MT-Bench's own single-answer judge prompt;
- "api": ApiJudge (judge_api.py), an OpenAI-compatible server given the same prompt, as FastChat asks GPT-4;
and any callable judge prompt -> rating (tests, or a judge of your own).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from infosift.atomic import atomic_write_text
from infosift.data import MTBenchFiles, read_mt_bench
from infosift.evaluate.hf import greedy_chat, load_causal_lm
from infosift.evaluate.judge_api import ApiJudge
from infosift.evaluate.rating import parse_rating

LABEL = "MT-Bench-style (first turn, own judge), not comparable to published MT-Bench"
NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # MT-Bench judges these against a reference

Judge = Callable[[str], float | None]  # judge prompt -> rating, or None when unparseable

_WORD = re.compile(r"\w+")


def spread_over_categories(questions: list[dict], limit: int | None) -> list[dict]:
    """First `limit` questions taken round-robin over categories (the file is sorted by category,
    so a plain head would be all 'writing')."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for q in questions:
        by_cat[q["category"]].append(q)
    rounds = max((len(v) for v in by_cat.values()), default=0)
    mixed = [v[i] for i in range(rounds) for v in by_cat.values() if i < len(v)]
    return mixed[:limit]


def judge_prompt(templates: dict[str, str], question: dict, answer: str, reference: str | None) -> str:
    """MT-Bench single-answer judge prompt; the reference-guided one for math/reasoning/coding.

    ``templates``: name -> prompt template, as infosift.data.read_mt_bench checked them.
    """
    if question["category"] in NEED_REF_CATEGORIES and reference is not None:
        return templates["single-math-v1"].format(question=question["turns"][0], ref_answer_1=reference, answer=answer)
    return templates["single-v1"].format(question=question["turns"][0], answer=answer)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 on lower-cased word tokens."""
    a, r = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def overlap_rating(answer: str, reference: str) -> float:
    """Model-free fallback on the judge's 1..10 scale: 1 + 9 * token-F1 against the reference."""
    return 1.0 + 9.0 * token_f1(answer, reference)


class LocalJudge:
    """A local HF chat model as judge: MT-Bench judge prompt in, '[[rating]]' parsed out."""

    def __init__(
        self,
        model_dir: str,
        max_new_tokens: int = 256,
        batch_size: int = 4,
        device: str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
    ):
        self.model, self.tokenizer = load_causal_lm(
            model_dir, device, trust_remote_code=trust_remote_code, **(model_kwargs or {})
        )
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.replies: list[str] = []  # kept so a person can read why a score came out as it did

    def judge_many(self, prompts: list[str]) -> list[float | None]:
        self.replies = greedy_chat(
            self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, desc="judge"
        )
        return [parse_rating(r) for r in self.replies]

    def __call__(self, prompt: str) -> float | None:
        return self.judge_many([prompt])[0]


class Item(NamedTuple):
    """What a judge may read of one answer: MT-Bench's judge prompt, the answer, the GPT-4 reference if any."""

    prompt: str
    answer: str
    reference: str | None


@dataclass(frozen=True)
class JudgeSettings:
    """What mt_bench_judged knows that any judge may use; a judge's own options come as keywords."""

    model_dir: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 4
    device: str | None = None
    trust_remote_code: bool = False
    model_kwargs: dict | None = None  # how models load (dtype, attn_implementation), for a local judge too


class BatchJudge:
    """A judge as mt_bench_judged runs it: a name for the metrics, one batch verb, the raw replies if any."""

    def __init__(self, name: str, score: Callable[[list[Item]], tuple[list[float | None], list[str] | None]]):
        self.name, self._score = name, score
        self.replies: list[str] | None = None

    def judge_many(self, items: list[Item]) -> list[float | None]:
        scores, self.replies = self._score(items)
        return scores


JUDGES: dict[str, Callable[..., BatchJudge]] = {}


def register_judge(name: str) -> Callable:
    """Decorator: a factory (settings: JudgeSettings, **options) -> BatchJudge, looked up by name."""

    def add(factory: Callable[..., BatchJudge]) -> Callable[..., BatchJudge]:
        JUDGES[name] = factory
        return factory

    return add


def get_judge(judge: Judge | str, settings: JudgeSettings | None = None, **options) -> BatchJudge:
    """The named judge built from settings and its own options, or a callable on judge prompts.

    Built before any answer is generated, so a misconfigured judge fails before the expensive part.
    """
    if callable(judge):
        name = getattr(judge, "__name__", type(judge).__name__)
        return BatchJudge(name, lambda items: ([judge(i.prompt) for i in items], None))
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}: use one of {', '.join(sorted(JUDGES))} or a callable")
    return JUDGES[judge](settings or JudgeSettings(), **options)


@register_judge("overlap")
def overlap_judge(settings: JudgeSettings) -> BatchJudge:
    """Model-free: 1 + 9 * token-F1 against the GPT-4 reference; unscored where there is none."""

    def score(items: list[Item]) -> tuple[list[float | None], None]:
        return [overlap_rating(i.answer, i.reference) if i.reference is not None else None for i in items], None

    return BatchJudge("overlap", score)


@register_judge("local")
def local_judge(settings: JudgeSettings) -> BatchJudge:
    """LocalJudge on settings.model_dir, loaded only when judging starts (the answering model is gone by then)."""
    if settings.model_dir is None:
        raise ValueError("judge='local' needs judge_model_dir (a local HF chat model)")

    def score(items: list[Item]) -> tuple[list[float | None], list[str]]:
        s = settings
        judge = LocalJudge(s.model_dir, s.max_new_tokens, s.batch_size, s.device, s.trust_remote_code, s.model_kwargs)
        return judge.judge_many([i.prompt for i in items]), judge.replies

    return BatchJudge(f"local:{settings.model_dir}", score)


@register_judge("api")
def api_judge(
    settings: JudgeSettings,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir: str | None = None,
    **client: object,
) -> BatchJudge:
    """ApiJudge on an OpenAI-compatible server; the key is read from $api_key_env, never passed around.

    ``client``: further ApiJudge arguments (max_tokens, timeout, delays, sleep).
    """
    if base_url is None or model is None:
        raise ValueError("judge='api' needs judge_options base_url and model")
    judge = ApiJudge(base_url, model, api_key_env, cache_dir, **client)

    def score(items: list[Item]) -> tuple[list[float | None], list[str]]:
        return judge.judge_many([i.prompt for i in items]), judge.replies

    return BatchJudge(judge.name, score)


def _means(scores: list[float | None], categories: list[str]) -> tuple[float | None, dict[str, float]]:
    """Overall and per-category means over the scored (non-None) items."""
    by_cat: dict[str, list[float]] = defaultdict(list)
    for s, c in zip(scores, categories, strict=True):
        if s is not None:
            by_cat[c].append(s)
    valid = [s for s in scores if s is not None]
    overall = sum(valid) / len(valid) if valid else None
    return overall, {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}


def mt_bench_judged(
    model_dir: str,
    questions_path: str,
    reference_path: str,
    judge_prompts_path: str,
    judge: Judge | str = "local",
    judge_model_dir: str | None = None,
    judge_options: dict | None = None,
    limit: int | None = None,
    max_new_tokens: int = 256,
    judge_max_new_tokens: int = 256,
    batch_size: int = 4,
    device: str | None = None,
    out_dir: str | None = None,
    trust_remote_code: bool = False,
    model_kwargs: dict | None = None,
    base_dir: str | None = None,
) -> dict:
    """Answer `limit` MT-Bench first turns (spread over categories) with model_dir, then score every answer.

    judge: a name in JUDGES ("local": LocalJudge on judge_model_dir; "overlap": reference F1 only; "api": an
    OpenAI-compatible server, judge_options base_url, model, api_key_env, cache_dir) or a callable.
    The overlap score is always reported too, on the questions that have a GPT-4 reference.
    The three paths are infosift.data.mt_bench_files(mirror_dir); ``trust_remote_code`` covers both the
    answering model and a local judge, and so do ``model_kwargs`` (dtype, attn_implementation:
    stages.model.load_options); ``base_dir`` is the answering adapter's checked base (load_model_and_tokenizer).
    """
    settings = JudgeSettings(judge_model_dir, judge_max_new_tokens, batch_size, device, trust_remote_code, model_kwargs)
    batch_judge = get_judge(judge, settings, **(judge_options or {}))
    bench = read_mt_bench(MTBenchFiles(Path(questions_path), Path(reference_path), Path(judge_prompts_path)))
    questions, refs, templates = spread_over_categories(bench.questions, limit), bench.references, bench.templates

    load = {**(model_kwargs or {}), "base_dir": base_dir}
    model, tokenizer = load_causal_lm(model_dir, device, trust_remote_code=trust_remote_code, **load)
    answers = greedy_chat(model, tokenizer, [q["turns"][0] for q in questions], max_new_tokens, batch_size, "answer")
    del model

    items = [
        Item(judge_prompt(templates, q, a, refs.get(q["question_id"])), a, refs.get(q["question_id"]))
        for q, a in zip(questions, answers, strict=True)
    ]
    prompts = [i.prompt for i in items]
    overlap = JUDGES["overlap"](settings).judge_many(items)
    scores, judge_replies = batch_judge.judge_many(items), batch_judge.replies

    categories = [q["category"] for q in questions]
    overall, per_category = _means(scores, categories)
    overlap_overall, overlap_per_category = _means(overlap, categories)
    if out_dir is not None:
        _write_log(out_dir, questions, answers, prompts, scores, overlap, judge_replies)
    return {
        "label": LABEL,
        "judge": batch_judge.name,
        "n": len(questions),
        "n_scored": sum(s is not None for s in scores),
        "overall": overall,
        "per_category": per_category,
        "overlap_overall": overlap_overall,
        "overlap_per_category": overlap_per_category,
        "n_overlap": sum(s is not None for s in overlap),
    }


def _write_log(out_dir, questions, answers, prompts, scores, overlap, judge_replies) -> Path:
    """One JSON line per question, so a person can read the answer, the judge's reasoning and the scores."""
    path = Path(out_dir) / "mt_bench_judged.jsonl"
    lines = []
    for i, q in enumerate(questions):
        row = {
            "question_id": q["question_id"],
            "category": q["category"],
            "question": q["turns"][0],
            "answer": answers[i],
            "score": scores[i],
            "overlap_score": overlap[i],
            "judge_prompt": prompts[i],
            "judge_reply": judge_replies[i] if judge_replies is not None else None,
        }
        lines.append(json.dumps(row) + "\n")
    atomic_write_text(path, "".join(lines))
    return path
