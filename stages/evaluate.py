"""evaluate@<name>: held-out NLL, lm-eval GSM8K and the MT-Bench-style judged suite of one model.

Writes results/evaluate/<name>/metrics.json (pooled numbers) and per_example.jsonl (one held-out NLL
line per scored test record: {"id", "nll_sum", "n_tokens"}).

'base' is the un-tuned reference. The judged suite reads MT-Bench from data/mt_bench (the fetch_mt_bench stage's
copy of evaluate.mt_bench.dir); with
judge: api it asks an OpenAI-compatible server and caches the replies in .cache/judge/ (the key stays in
the environment variable judge_api_key_env names).
"""

from __future__ import annotations

import json
from pathlib import Path

from infosift.data import MTBenchFiles, mt_bench_folder_files, read_examples, read_mt_bench
from infosift.errors import DataError, JudgeError, ModelResolutionError
from infosift.evaluate import JUDGES, gsm8k_lm_eval, heldout_nll, mt_bench_judged
from infosift.evaluate.answer_span import compile_pattern
from infosift.evaluate.gsm8k import write_task_file
from infosift.evaluate.judge_api import check_url
from infosift.models import ADAPTER_CONFIG, adapter_base, check_model_dir, model_fingerprint
from infosift.names import check_name
from stages._common import StageError, atomic_output, check_device, check_keys, check_param, params, run
from stages.model import base_model_dir, load_options, model_params, trust_remote_code

# dir: where fetch_mt_bench copies MT-Bench from (stages/fetch.py); this stage reads the copy in MT_BENCH
MT_BENCH = Path("data/mt_bench/evaluate")  # fetch_mt_bench@evaluate's copy
MT_BENCH_KEYS = {
    "limit",
    "dir",
    "judge",
    "judge_model",
    "judge_base_url",
    "judge_api_key_env",
    "max_new_tokens",
    "batch_size",
}
GSM8K_KEYS = {"limit", "max_gen_toks", "batch_size"}
JUDGE_CACHE = ".cache/judge"  # API judge replies by request hash: a rerun pays nothing (not a DVC output)


def checked_params() -> dict:
    """params.yaml `evaluate`, each value checked (suites, judge, device) before any model or file is read."""
    p = params("evaluate")
    check_keys(p, "evaluate", {"n_test", "max_length", "batch_size", "gsm8k", "mt_bench", "device", "answer_pattern"})
    pattern = check_param(p.get("answer_pattern"), "evaluate.answer_pattern", str, allow_none=True)
    if pattern is not None:
        try:
            compile_pattern(pattern)
        except DataError as e:
            raise StageError(f"params.yaml evaluate.answer_pattern: {e}") from None
    check_param(p.get("n_test"), "evaluate.n_test", int, low=1, allow_none=True)
    check_param(p.get("max_length", 512), "evaluate.max_length", int, low=8)
    check_param(p.get("batch_size", 8), "evaluate.batch_size", int, low=1)
    check_device(p.get("device"), "evaluate.device")
    for suite in ("gsm8k", "mt_bench"):
        cfg = check_param(p.get(suite) or {}, f"evaluate.{suite}", dict)
        check_param(cfg.get("limit", 0), f"evaluate.{suite}.limit", int, low=0)
    check_gsm8k(p.get("gsm8k") or {})
    check_mt_bench(p.get("mt_bench") or {})
    return p


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise StageError("usage: python -m stages.evaluate NAME   (NAME = base or <variant>-<budget>-<loss>)")
    name = check_name(argv[0], "evaluate NAME")  # a path component of models/ and results/evaluate/
    p = checked_params()
    mt = p.get("mt_bench") or {}
    trust = trust_remote_code()
    model_dir = base_model_dir()[0] if name == "base" else Path("models") / name
    if not any((Path(model_dir) / f).exists() for f in ("config.json", ADAPTER_CONFIG)):
        raise StageError(f"no model at {model_dir}; run its finetune stage first")
    # an adapter goes on model.base_model once that is checked to be its base, wherever the base was at training time
    base = str(check_adapter_base(Path(model_dir))) if adapter_base(model_dir) is not None else None
    check_model_dir(model_dir, trust, base)  # a dir with config.json but no weights, or a broken config
    load = load_options(model_params() if "model" in params() else {})
    test = read_examples("data/download/test.jsonl")
    if mt.get("limit", 0):  # the judged suite's files and judge model, before any model runs
        read_mt_bench(mt_bench_files_of_params(), templates=True)
        if mt.get("judge", "overlap") == "local" and mt.get("judge_model", "base") != "base":
            try:
                check_model_dir(mt["judge_model"], trust)
            except ModelResolutionError as e:
                raise StageError(f"params.yaml evaluate.mt_bench.judge_model: {e}") from None
    n_test = p.get("n_test")
    metrics: dict = {"model": name}
    with atomic_output(Path("results/evaluate") / name) as tmp:
        tmp.mkdir()
        nll = heldout_nll(
            str(model_dir),
            test[: n_test or None],
            max_length=int(p.get("max_length", 512)),
            batch_size=int(p.get("batch_size", 8)),
            device=p.get("device"),
            trust_remote_code=trust,
            answer_pattern=p.get("answer_pattern"),
            model_kwargs=load,
            base_dir=base,
        )
        write_per_example(tmp / "per_example.jsonl", nll.pop("per_example"))
        metrics.update(nll)
        gsm = p.get("gsm8k") or {}
        if gsm.get("limit", 0):
            gsm_path = write_task_file(test, tmp / "gsm8k_test.jsonl")
            res = gsm8k_lm_eval(
                str(model_dir),
                str(gsm_path.resolve()),
                limit=int(gsm["limit"]),
                out_dir=str(tmp / "gsm8k_samples"),
                batch_size=int(gsm.get("batch_size", 8)),
                max_gen_toks=int(gsm.get("max_gen_toks", 256)),
                device=p.get("device"),
                trust_remote_code=trust,
                model_kwargs=load,
                base_dir=base,
            )
            gsm_path.unlink()
            metrics.update({f"gsm8k_{k}": v for k, v in res.items()})
        mt = p.get("mt_bench") or {}
        if mt.get("limit", 0):
            metrics.update(judged(str(model_dir), mt, tmp / "mt_bench", p.get("device"), trust, load, base))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("evaluate: " + json.dumps(metrics))


def check_adapter_base(model_dir: Path) -> Path:
    """model.base_model's dir, checked to be the base the LoRA adapter was trained on: its infosift.json records that
    base's fingerprint, which must be model.base_model's now (else the numbers would belong to neither model)."""
    base_dir = base_model_dir()[0]
    try:
        trained_on = json.loads((model_dir / "infosift.json").read_text())["base_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{model_dir}/infosift.json: no base_fingerprint; rerun its finetune stage") from None
    if trained_on != model_fingerprint(base_dir, model_params()["cache_dir"]):
        raise StageError(
            f"{model_dir} is a LoRA adapter trained on another base than model.base_model ({base_dir}); "
            "rerun its finetune stage or set model.base_model to the base it was trained on"
        )
    return base_dir


PER_EXAMPLE = ("id", "nll_sum", "n_tokens", "answer_nll_sum", "answer_n_tokens")


def write_per_example(path: Path, rows: list[dict]) -> None:
    """One {id, nll_sum, n_tokens[, answer_nll_sum, answer_n_tokens]} per scored test record, for compare's paired
    intervals; metrics.json stays small."""
    path.write_text("".join(json.dumps({k: r[k] for k in PER_EXAMPLE if k in r}) + "\n" for r in rows))


def check_gsm8k(gsm: dict) -> None:
    """lm-eval GSM8K settings: known keys, positive generation length and batch size."""
    check_keys(gsm, "evaluate.gsm8k", GSM8K_KEYS)
    check_param(gsm.get("max_gen_toks", 256), "evaluate.gsm8k.max_gen_toks", int, low=1)
    check_param(gsm.get("batch_size", 8), "evaluate.gsm8k.batch_size", int, low=1)


def check_mt_bench(mt: dict) -> None:
    """The judge settings, checked before any model runs; an API judge needs a URL and a model name."""
    check_keys(mt, "evaluate.mt_bench", MT_BENCH_KEYS)
    check_param(mt.get("max_new_tokens", 256), "evaluate.mt_bench.max_new_tokens", int, low=1)
    check_param(mt.get("batch_size", 4), "evaluate.mt_bench.batch_size", int, low=1)
    check_param(mt.get("judge_model", "base"), "evaluate.mt_bench.judge_model", str)
    check_param(mt.get("dir", ""), "evaluate.mt_bench.dir", str)
    judge = check_param(mt.get("judge", "overlap"), "evaluate.mt_bench.judge", str, choices=tuple(JUDGES))
    if judge == "api":
        url = check_param(mt.get("judge_base_url"), "evaluate.mt_bench.judge_base_url", str)
        try:  # now, not after held-out NLL and GSM8K have run
            check_url(url)
        except JudgeError as e:
            raise StageError(f"params.yaml evaluate.mt_bench.{e}") from None
        model = check_param(mt.get("judge_model"), "evaluate.mt_bench.judge_model", str)
        if model == "base":
            raise StageError("params.yaml evaluate.mt_bench.judge_model: judge=api needs the server's model name")
        check_param(mt.get("judge_api_key_env", "OPENAI_API_KEY"), "evaluate.mt_bench.judge_api_key_env", str)


def mt_bench_files_of_params() -> MTBenchFiles:
    """MT-Bench's files as the fetch_mt_bench stage copied them for this stage; missing ones are an error naming
    evaluate.mt_bench (its dir, when the fetch could not bring them)."""
    try:
        return mt_bench_folder_files(MT_BENCH)
    except DataError as e:
        raise StageError(f"evaluate.mt_bench: {e}") from None


def judged(
    model_dir: str, mt: dict, out_dir: Path, device: str | None, trust: bool, load: dict, base: str | None
) -> dict:
    """MT-Bench first turns scored by the configured judge; 'base' as judge model = the base model. ``load``: how
    both models load (load_options); ``base``: the answering adapter's checked base."""
    files = mt_bench_files_of_params()
    judge, judge_model = mt.get("judge", "overlap"), mt.get("judge_model", "base")
    if judge == "local" and judge_model == "base":
        judge_model = str(base_model_dir()[0])  # resolved only when a local judge needs it
    options = {}
    if judge == "api":  # the key itself is read from the environment by the judge, never from here
        options = {"base_url": mt["judge_base_url"], "model": judge_model, "cache_dir": JUDGE_CACHE,
                   "api_key_env": mt.get("judge_api_key_env", "OPENAI_API_KEY")}  # fmt: skip
    res = mt_bench_judged(
        model_dir,
        str(files.questions),
        str(files.references),
        str(files.judge_prompts),
        judge=judge,
        judge_model_dir=judge_model if judge == "local" else None,
        judge_options=options,
        limit=int(mt["limit"]),
        max_new_tokens=int(mt.get("max_new_tokens", 256)),
        batch_size=int(mt.get("batch_size", 4)),
        device=device,
        out_dir=str(out_dir),
        trust_remote_code=trust,
        model_kwargs=load,
        base_dir=base,
    )
    return {
        "mt_bench_score": res["overall"],
        "mt_bench_overlap": res["overlap_overall"],
        "mt_bench_n": res["n"],
        "mt_bench_judge": res["judge"],
    }


if __name__ == "__main__":
    run(main)
