"""The base model every stage starts from, resolved once per process from params.yaml `model`."""

from __future__ import annotations

from pathlib import Path

from infosift.models import (
    ATTN_IMPLEMENTATIONS,
    DTYPES,
    QUANTIZATIONS,
    ModelResolutionError,
    resolve_base_model,
    with_chat_template,
)
from stages._common import StageError, check_keys, check_param, params

KEYS = {"base_model", "cache_dir", "trust_remote_code", "torch_dtype", "attn_implementation", "quantization",
        "chat_template"}  # fmt: skip


def model_params() -> dict:
    """params.yaml `model`, checked: base_model a non-empty string, cache_dir a string, trust_remote_code a bool."""
    p = params("model")
    check_keys(p, "model", KEYS)
    spec = check_param(p.get("base_model"), "model.base_model", str)
    if not spec.strip():
        raise StageError("params.yaml model.base_model: empty; give a bundled: name, a local HF dir or a hub id")
    check_param(p.get("cache_dir", ".cache/models"), "model.cache_dir", str)
    check_param(p.get("trust_remote_code", False), "model.trust_remote_code", bool)
    check_param(p.get("torch_dtype", "auto"), "model.torch_dtype", str, choices=DTYPES)
    check_param(p.get("attn_implementation"), "model.attn_implementation", str, allow_none=True,
                choices=ATTN_IMPLEMENTATIONS)  # fmt: skip
    check_param(p.get("quantization"), "model.quantization", str, allow_none=True, choices=QUANTIZATIONS)
    template = check_param(p.get("chat_template"), "model.chat_template", str, allow_none=True)
    if template is not None and not Path(template).is_file():
        raise StageError(f"params.yaml model.chat_template: {template} is not a file (a Jinja chat template)")
    defaults = {"cache_dir": ".cache/models", "trust_remote_code": False, "torch_dtype": "auto",
                "attn_implementation": None, "quantization": None, "chat_template": None}  # fmt: skip
    return {**defaults, **p}


def trust_remote_code() -> bool:
    """params.yaml model.trust_remote_code: consent to run the model's own code, for every stage that loads it
    (the base model, and the fine-tunes made from it); off when params.yaml says nothing of it."""
    if "model" not in params():
        return False
    return bool(model_params()["trust_remote_code"])


def base_model_dir() -> tuple[Path, bool]:
    """(HF dir of model.base_model, trust_remote_code); a model that cannot be had is a StageError."""
    p = model_params()
    trust = bool(p["trust_remote_code"])
    try:
        base = resolve_base_model(p["base_model"], p["cache_dir"], trust)
        if p.get("chat_template"):  # a model without a template, or one the user replaces
            base = with_chat_template(base, p["chat_template"], p["cache_dir"])
        return base, trust
    except ModelResolutionError as e:
        raise StageError(str(e)) from None


def load_options(mp: dict) -> dict:
    """How every stage that loads the model loads it (embed, finetune, sweep, evaluate, sketch), so that they all
    see the same weights: load_model_and_tokenizer's dtype and attn_implementation from params.yaml model (``mp``:
    model_params(), or {} for the defaults)."""
    return {"dtype": mp.get("torch_dtype", "auto"), "attn_implementation": mp.get("attn_implementation")}


def model_options(mp: dict, trust: bool) -> dict:
    """load_model_and_tokenizer's keyword arguments for a fine-tune: load_options, QLoRA's 4-bit base (a training
    choice: embed and evaluate read the weights at torch_dtype), and each rank onto its own GPU (not all onto cuda:0
    before the trainer moves them)."""
    import os

    import torch

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return {"device": device, **load_options(mp), "quantization": mp.get("quantization"), "trust_remote_code": trust}
