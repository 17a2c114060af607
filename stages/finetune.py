"""finetune@<variant>-<budget>-s<seed>-<loss>: SFT of the base model on one selection, saved as an HF dir.

The seed is the selection's seed (random picks per seed) and the fine-tune's (data order, init of
LoRA, dropout), so repeating a variant over seeds measures both sources of noise.
With compare.mlflow on, the loss goes to an MLflow run step by step while training runs; nothing about that
run is written to this stage's outputs (they stay the same run to run, as DVC's cache needs).
"""

from __future__ import annotations

import csv
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields
from pathlib import Path

from infosift.data import read_examples
from infosift.losses import available_losses, get_loss
from infosift.manifest import content_hash, read_manifest
from infosift.models import load_model_and_tokenizer, model_fingerprint
from infosift.names import check_name
from infosift.tracking_live import DEFAULT_EXPERIMENT, tracking_uri, training_run
from infosift.train import TrainConfig, finetune
from stages._common import (
    StageError,
    atomic_output,
    check_device,
    check_items,
    check_keys,
    check_param,
    params,
    run,
    variant_name,
    whole_number,
)
from stages.model import base_model_dir

LOSSES = tuple(available_losses())


def chosen_records(manifest: dict, pool: list[dict]) -> list[dict]:
    """The selected records, in selection order, looked up by stable id (not by position)."""
    by_id = {r["id"]: r for r in pool}
    missing = [i for i in manifest["ids"] if i not in by_id]
    if missing:
        raise StageError(f"{len(missing)} selected ids are not in the pool (first: {missing[0]}); rerun select")
    return [by_id[i] for i in manifest["ids"]]


def checked_train_params(ft: dict) -> dict:
    """finetune.train, each value checked (type, range, known name) before a model is loaded."""
    check_keys(ft, "finetune", {"losses", "train"})
    if "losses" in ft:
        check_items(ft["losses"], "finetune.losses", str, choices=LOSSES)
    train = ft.get("train") or {}
    known = {f.name for f in fields(TrainConfig)} - {"loss_type", "seed"} | {"device"}
    check_keys(train, "finetune.train", known)
    for key, kind, low, high in (
        ("lr", float, 0.0, None),
        ("epochs", int, 1, None),
        ("batch_size", int, 1, None),
        ("grad_accum", int, 1, None),
        ("max_length", int, 8, None),
        ("warmup_ratio", float, 0.0, 1.0),
        ("weight_decay", float, 0.0, None),
        ("infosft_p", float, 0.0, 1.0),
        ("max_grad_norm", float, 0.0, None),
    ):
        if key in train:
            train[key] = check_param(train[key], f"finetune.train.{key}", kind, low=low, high=high)
    if train.get("lr", 1.0) == 0:
        raise StageError("params.yaml finetune.train.lr: must be > 0, got 0")
    lora = check_param(train.get("lora"), "finetune.train.lora", dict, allow_none=True)
    if lora:
        check_lora(lora)
    check_device(train.get("device"), "finetune.train.device")
    return dict(train)


def check_lora(lora: dict) -> None:
    """finetune.train.lora as wrap_lora reads it, checked now: peft would refuse it only after the model loads,
    in its own words (or not at all: a misspelt ``rank`` would silently train with the default r)."""
    check_keys(lora, "finetune.train.lora", {"r", "alpha", "dropout", "target_modules"})
    check_param(lora.get("r", 16), "finetune.train.lora.r", int, low=1)
    check_param(lora.get("alpha", 32), "finetune.train.lora.alpha", int, low=1)
    dropout = check_param(lora.get("dropout", 0.05), "finetune.train.lora.dropout", float, low=0.0)
    if dropout >= 1:
        raise StageError(f"params.yaml finetune.train.lora.dropout: must be < 1, got {dropout!r}")
    targets = lora.get("target_modules", "all-linear")
    if isinstance(targets, list):
        check_items(targets, "finetune.train.lora.target_modules", str)
    elif not isinstance(targets, str) or not targets.strip():
        raise StageError(
            "params.yaml finetune.train.lora.target_modules: must be a module name (pattern), all-linear, "
            f"or a list of module names, got {targets!r}"
        )


def check_loss_p(loss: str, P: float) -> None:
    """The loss's own requirement on infosft_p (infosift: 0.5 < P < 1), tried on one token now: training
    would meet it only after the model loads, in a message without the parameter's name."""
    import torch

    try:
        get_loss(loss)(torch.full((1,), 0.5), float(P))
    except ValueError as e:
        raise StageError(f"params.yaml finetune.train.infosft_p: {e}") from None


def live_loss(name: str, key: str, manifest_hash: str, cfg: TrainConfig) -> AbstractContextManager:
    """A context giving the step callback that shows this fine-tune's loss in MLflow while it trains (None when
    compare.mlflow is off). compare later takes the run in as the variant's run, found by ``key``.

    Reads compare's MLflow settings without listing them as DVC params: where the curve goes changes nothing
    this stage writes, so toggling MLflow must not rerun fine-tunes.
    """
    cmp = params().get("compare") or {}
    if not check_param(cmp.get("mlflow", True), "compare.mlflow", bool):
        return nullcontext(None)
    experiment = check_param(cmp.get("experiment", DEFAULT_EXPERIMENT), "compare.experiment", str)
    uri = check_param(cmp.get("tracking_uri"), "compare.tracking_uri", str, allow_none=True)
    mode = check_param(cmp.get("tracking", "required"), "compare.tracking", str, choices=("required", "optional"))
    return training_run(
        tracking_uri(".", uri),
        experiment,
        name,
        key,
        tags={"infosift.variant": name, "infosift.manifest_hash": manifest_hash},
        params={f"train.{k}": v for k, v in cfg.__dict__.items()},
        required=mode == "required",  # a tracking failure mid-training fails the stage, not a partial curve
    )


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise StageError("usage: python -m stages.finetune VARIANT BUDGET SEED LOSS")
    variant, budget, seed, loss = argv[0], whole_number(argv[1], "budget"), whole_number(argv[2], "seed"), argv[3]
    check_name(variant, "finetune VARIANT")  # a path component of models/ and results/finetune/
    if loss not in LOSSES:
        raise StageError(f"unknown loss_type {loss!r}; use one of {', '.join(LOSSES)}")
    p = checked_train_params(params("finetune"))
    check_loss_p(loss, p.get("infosft_p", TrainConfig.infosft_p))
    p["seed"] = seed
    manifest_path = Path("results/select") / variant_name(variant, budget) / f"seed-{seed}" / "manifest.json"
    if not manifest_path.exists():
        raise StageError(f"{manifest_path} missing; run select@{variant_name(variant, budget)} with {seed} in seeds")
    manifest = read_manifest(manifest_path)
    records = chosen_records(manifest, read_examples("data/download/pool.jsonl"))

    base_dir, trust = base_model_dir()
    device = p.pop("device", None)
    cfg = TrainConfig(loss_type=loss, **p)
    name = variant_name(variant, budget, seed, loss)
    provenance = {
        "base_model": str(base_dir),
        "base_fingerprint": model_fingerprint(base_dir),
        "manifest_hash": manifest["hash"],
        "train_config": cfg.__dict__,
        "train_config_hash": content_hash(cfg.__dict__),
        "n_train": len(records),
    }
    # the key of what is trained: compare recomputes it from models/<name>/infosift.json to find the live run
    with live_loss(name, content_hash(provenance), manifest["hash"], cfg) as on_step:
        model, tokenizer = load_model_and_tokenizer(base_dir, device=device, trust_remote_code=trust)
        with atomic_output(Path("models") / name) as tmp:
            history = finetune(model, tokenizer, records, tmp, cfg, device=str(model.device), on_step=on_step)
            (tmp / "infosift.json").write_text(json.dumps(provenance, indent=2) + "\n")
    with atomic_output(Path("results/finetune") / name) as tmp:
        tmp.mkdir()
        with (tmp / "train_loss.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "lr"])
            writer.writeheader()
            writer.writerows(history)
    print(f"finetune: {name} on {len(records)} examples, {len(history)} steps, final loss {history[-1]['loss']:.4f}")


if __name__ == "__main__":
    run(main)
