"""The base model every stage starts from, resolved once per process from params.yaml `model`."""

from __future__ import annotations

from pathlib import Path

from infosift.models import ModelResolutionError, resolve_base_model
from stages._common import StageError, params


def trust_remote_code() -> bool:
    """params.yaml model.trust_remote_code: consent to run the model's own code, for every stage that loads it
    (the base model, and the fine-tunes made from it); off when params.yaml says nothing of it."""
    return bool((params().get("model") or {}).get("trust_remote_code", False))


def base_model_dir() -> tuple[Path, bool]:
    """(HF dir of model.base_model, trust_remote_code); a model that cannot be had is a StageError."""
    p = params("model")
    trust = trust_remote_code()
    try:
        return resolve_base_model(str(p["base_model"]), p.get("cache_dir", ".cache/models"), trust), trust
    except ModelResolutionError as e:
        raise StageError(str(e)) from None
