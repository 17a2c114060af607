"""GSM8K through lm-evaluation-harness, on a local JSONL split, fully offline.

lm-eval owns prompting, batching, stop sequences, answer filters and exact_match; we only
write a task YAML that points it at local files. Two details matter:
- `dataset_kwargs.data_files` must be a dict of splits: a single path silently becomes 'train'.
- the filters and metric mirror lm-eval's own gsm8k.yaml, so scores read the same way:
  strict-match takes the number after '#### ', flexible-extract the last number in the reply.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from infosift.atomic import atomic_write_text
from infosift.data import write_jsonl
from infosift.device import pick_device
from infosift.models import adapter_base, resolve_dtype

TASK_NAME = "infosift_gsm8k_local"

# Zero-shot chat prompt: the model is told the answer format strict-match expects.
DEFAULT_DOC_TO_TEXT = (
    "{{question}}\nSolve the problem step by step, then write the final answer on the last line as '#### <number>'."
)


def task_config(
    test_path: str,
    train_path: str,
    max_gen_toks: int = 256,
    num_fewshot: int = 0,
    doc_to_text: str = DEFAULT_DOC_TO_TEXT,
) -> dict:
    """The lm-eval task config (what goes in the YAML) for GSM8K-format JSONL files."""
    return {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(Path(test_path).resolve()), "train": str(Path(train_path).resolve())}
        },
        "output_type": "generate_until",
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "test",
        "doc_to_text": doc_to_text,
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "num_fewshot": num_fewshot,
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                # the target '... #### 18' reduces to '18'; '$18.' or '1,800' in replies match too
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
        "generation_kwargs": {
            "until": ["Question:", "</s>", "<|im_end|>"],
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": max_gen_toks,
        },
        "repeats": 1,
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"},
                ],
            },
        ],
        "metadata": {"version": 1.0},
    }


def write_task_file(records: list[dict], path: str | Path) -> Path:
    """Records ({prompt, response}) as the JSONL lm-eval's GSM8K task reads: its own fields {question, answer}."""
    write_jsonl(path, [{"question": r["prompt"], "answer": r["response"]} for r in records])
    return Path(path)


def run_gsm8k_task(
    model,
    config: dict,
    limit: int | None,
    model_args: dict | None = None,
    batch_size: int = 8,
    device: str | None = None,
    apply_chat_template: bool = True,
) -> dict:
    """Run the task through lm_eval.simple_evaluate. `model` is "hf" or an lm_eval LM instance."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="infosift_lmeval_") as tmp:
        (Path(tmp) / f"{TASK_NAME}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return lm_eval.simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=[TASK_NAME],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            limit=limit,
            batch_size=batch_size,
            device=device,
            apply_chat_template=apply_chat_template,
            log_samples=True,
            bootstrap_iters=1000,  # exact_match is a mean: its stderr is closed form anyway
        )


def summarize(results: dict) -> dict:
    """Flat metrics from lm-eval's nested results dict."""
    r = results["results"][TASK_NAME]
    n = results["n-samples"][TASK_NAME]["effective"]
    return {
        "exact_match_strict": float(r["exact_match,strict-match"]),
        "exact_match_flexible": float(r["exact_match,flexible-extract"]),
        "stderr_strict": _float_or_none(r.get("exact_match_stderr,strict-match")),
        "stderr_flexible": _float_or_none(r.get("exact_match_stderr,flexible-extract")),
        "n": int(n),
    }


def _float_or_none(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when there is no stderr (n=1)
        return None


def write_samples(results: dict, out_dir: str) -> Path:
    """One JSON line per question: prompt, gold answer, raw reply, and per filter the extraction and score."""
    from lm_eval.utils import handle_non_serializable

    rows: dict[int, dict] = {}
    for s in results["samples"][TASK_NAME]:  # lm-eval logs each question once per filter
        row = rows.setdefault(
            s["doc_id"],
            {
                "doc_id": s["doc_id"],
                "question": s["doc"]["question"],
                "target": s["target"],
                "prompt": s["arguments"][0][0] if s.get("arguments") else None,
                "response": s["resps"][0][0],
                "extracted": {},
                "exact_match": {},
            },
        )
        row["extracted"][s["filter"]] = s["filtered_resps"][0]
        row["exact_match"][s["filter"]] = s.get("exact_match")
    path = Path(out_dir) / "gsm8k_samples.jsonl"
    atomic_write_text(
        path, "".join(json.dumps(r, default=handle_non_serializable) + "\n" for _, r in sorted(rows.items()))
    )
    return path


def gsm8k_lm_eval(
    model_dir: str,
    test_path: str,
    limit: int | None,
    out_dir: str | None = None,
    batch_size: int = 8,
    max_gen_toks: int = 256,
    device: str | None = None,
    num_fewshot: int = 0,
    apply_chat_template: bool = True,
    train_path: str | None = None,
    trust_remote_code: bool = False,
    model_kwargs: dict | None = None,
    base_dir: str | None = None,
) -> dict:
    """GSM8K exact_match (strict and flexible) of the HF model in model_dir, greedy decoding.

    train_path only feeds few-shot examples; without it the test file stands in, which is
    only allowed zero-shot (few-shot from the test split would leak answers).
    ``trust_remote_code`` is handed to lm-eval's HF loader (a model with custom code needs it), and so are
    ``model_kwargs`` (dtype, attn_implementation: stages.model.load_options; the dtype as resolve_dtype reads it,
    so ``auto`` is float32 on CPU and bf16 on CUDA, as for every other load) and an adapter's checked ``base_dir``.
    """
    if num_fewshot > 0 and train_path is None:
        raise ValueError("num_fewshot > 0 needs train_path (few-shot examples must not come from the test split)")
    config = task_config(test_path, train_path or test_path, max_gen_toks, num_fewshot)
    device = pick_device(device)
    base = adapter_base(model_dir)  # a LoRA adapter dir: lm-eval loads its base and puts the adapter on top
    if base is not None and base_dir is not None:
        base = Path(base_dir)
    opts = model_kwargs or {}
    model_args = {
        "pretrained": str(base or model_dir),
        "dtype": str(resolve_dtype(opts.get("dtype") or "auto", device)).removeprefix("torch."),
        "trust_remote_code": trust_remote_code,
    }
    if opts.get("attn_implementation"):
        model_args["attn_implementation"] = opts["attn_implementation"]
    if base is not None:
        model_args.update(peft=str(model_dir), tokenizer=str(model_dir))
    results = run_gsm8k_task(
        "hf",
        config,
        limit,
        model_args=model_args,
        batch_size=batch_size,
        device=device,
        apply_chat_template=apply_chat_template,
    )
    if out_dir is not None:
        write_samples(results, out_dir)
    return summarize(results)
