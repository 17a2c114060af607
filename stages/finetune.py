"""finetune@<variant>-<budget>-s<seed>-<loss>: SFT of the base model on one selection, saved as an HF dir.

The seed is the selection's seed (random picks per seed) and the fine-tune's (data order, init of
LoRA, dropout), so repeating a variant over seeds measures both sources of noise.
With compare.mlflow on, the loss goes to an MLflow run step by step while training runs; nothing about that
run is written to this stage's outputs (they stay the same run to run, as DVC's cache needs).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from infosift.data import read_examples
from infosift.errors import ClusterError, InfosiftError
from infosift.losses import available_losses
from infosift.manifest import content_hash, read_manifest
from infosift.models import load_model_and_tokenizer, model_fingerprint
from infosift.names import check_name
from infosift.steps import check_step_floor
from infosift.tracking_live import DEFAULT_EXPERIMENT, tracking_uri, training_run
from infosift.train import DEFAULT_ARGS, SAVE_MODES, TrainConfig, finetune
from stages._common import (
    StageError,
    atomic_output,
    check_items,
    check_keys,
    check_param,
    params,
    run,
    variant_name,
    whole_number,
)
from stages.model import base_model_dir, model_options, model_params

LOSSES = tuple(available_losses())


def chosen_records(manifest: dict, pool: list[dict]) -> list[dict]:
    """The selected records, in selection order, looked up by stable id (not by position)."""
    by_id = {r["id"]: r for r in pool}
    missing = [i for i in manifest["ids"] if i not in by_id]
    if missing:
        raise StageError(f"{len(missing)} selected ids are not in the pool (first: {missing[0]}); rerun select")
    return [by_id[i] for i in manifest["ids"]]


FINETUNE_KEYS = {"losses", "train", "max_length", "infosft_p", "lora", "save", "processes", "engine", "ray",
                 "step_floor"}  # fmt: skip
RAY_KEYS = {"address", "num_workers", "use_gpu"}
CHECKPOINTS = Path(".cache/checkpoints")  # outside every DVC out; a run's dir is removed when it succeeds


def checked_finetune_params(ft: dict) -> dict:
    """params.yaml finetune, checked before a model is loaded: infosift's own keys here, the trainer's arguments
    (finetune.train, TrainingArguments by their own names) by TrainConfig."""
    check_keys(ft, "finetune", FINETUNE_KEYS)
    if "losses" in ft:
        check_items(ft["losses"], "finetune.losses", str, choices=LOSSES)
    check_param(ft.get("train") or {}, "finetune.train", dict)
    check_report_to((ft.get("train") or {}).get("report_to"))
    check_param(ft.get("max_length", 512), "finetune.max_length", int, low=8)
    check_param(ft.get("infosft_p", 0.93), "finetune.infosft_p", float, low=0.0, high=1.0)
    check_param(ft.get("lora"), "finetune.lora", dict, allow_none=True)
    check_param(ft.get("save", "adapter"), "finetune.save", str, choices=SAVE_MODES)
    check_param(ft.get("processes", 1), "finetune.processes", int, low=1)
    check_param(ft.get("step_floor", 0), "finetune.step_floor", int, low=0)
    engine = check_param(ft.get("engine", "local"), "finetune.engine", str, choices=("local", "ray"))
    ray = check_param(ft.get("ray") or {}, "finetune.ray", dict)
    check_keys(ray, "finetune.ray", RAY_KEYS)
    check_param(ray.get("address"), "finetune.ray.address", str, allow_none=True)
    check_param(ray.get("num_workers", 2), "finetune.ray.num_workers", int, low=1)
    check_param(ray.get("use_gpu", False), "finetune.ray.use_gpu", bool)
    if engine == "ray" and ft.get("processes", 1) > 1:
        raise StageError("params.yaml finetune.processes: with engine ray, set finetune.ray.num_workers instead")
    return ft


def check_report_to(value: object) -> None:
    """finetune.train.report_to may name other trackers, not MLflow: infosift logs each fine-tune to its own MLflow
    run (live_loss), which compare takes in; the trainer's MLflow callback would open a second run per variant."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if {"mlflow", "all"} & {n for n in names if isinstance(n, str)}:
        raise StageError(
            f"params.yaml finetune.train.report_to: {value!r} would open a second MLflow run per variant; infosift "
            "logs each fine-tune to MLflow itself (compare.mlflow), so leave mlflow and all out"
        )


def train_config(ft: dict, loss: str, seed: int) -> TrainConfig:
    """The TrainConfig of one item; its own checks (unknown trainer argument, LoRA keys, P) named by param."""
    try:
        return TrainConfig(
            loss_type=loss,
            infosft_p=ft.get("infosft_p", 0.93),
            max_length=ft.get("max_length", 512),
            seed=seed,
            lora=ft.get("lora"),
            save=ft.get("save", "adapter"),
            args=ft.get("train") or {},
        )
    except InfosiftError as e:
        raise StageError(f"params.yaml finetune: {e}") from None


def check_processes(n: int, cfg: TrainConfig, model: dict) -> None:
    """finetune.processes against what this machine has: one process per GPU on CUDA, per core on CPU; QLoRA and
    bf16 only where the device can run them (one error line now, not a trace from inside bitsandbytes)."""
    import os

    import torch

    cuda = torch.cuda.is_available() and not cfg.args.get("use_cpu", False)
    have = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    if n > have:
        where = f"{have} CUDA devices" if cuda else f"{have} CPU cores and no CUDA device"
        raise StageError(f"params.yaml finetune.processes: {n} processes, but this machine has {where}")
    if model.get("quantization") and not cuda:
        raise StageError("params.yaml model.quantization: 4bit (QLoRA) needs a CUDA device; none is here")
    if model.get("quantization") and not cfg.lora:
        raise StageError("params.yaml model.quantization: 4-bit weights cannot be trained; set finetune.lora (QLoRA)")
    if cfg.args.get("bf16") and not cuda and not cpu_has_bf16():
        raise StageError("params.yaml finetune.train.bf16: this CPU has no bf16 arithmetic (no avx512_bf16/amx)")
    if cfg.args.get("fp16") and not cuda:
        raise StageError("params.yaml finetune.train.fp16: fp16 training needs a CUDA device")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Linux flags); elsewhere assume not."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
        params={f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
        required=mode == "required",  # a tracking failure mid-training fails the stage, not a partial curve
    )


def check_ray_address(address: str | None) -> None:
    """finetune.ray.address answers (infosift.scale.cluster's probe, no Ray import): one line at once, not minutes
    of Ray's retries after the stage has begun its outputs."""
    from infosift.scale.cluster import check_address

    try:
        check_address(address)
    except ClusterError as e:
        raise StageError(f"params.yaml finetune.ray.address: {e}") from None


def rank() -> int:
    """This process's rank under torchrun or Ray Train (0 when alone): only rank 0 writes and logs."""
    import os

    return int(os.environ.get("RANK", "0"))


def launch_processes(n: int, argv: list[str]) -> None:
    """Run this stage again as ``n`` processes under torchrun (DDP/FSDP through accelerate; gloo on CPU). The
    launcher only waits: rank 0 writes the outputs; a worker's failure is this stage's failure."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "stages.finetune", *argv]  # fmt: skip
    code = subprocess.call(cmd)
    if code:
        raise StageError(f"finetune: {n} training processes failed (exit {code}); see the lines above")


def main(argv: list[str]) -> None:
    import os

    if len(argv) != 4:
        raise StageError("usage: python -m stages.finetune VARIANT BUDGET SEED LOSS")
    variant, budget, seed, loss = argv[0], whole_number(argv[1], "budget"), whole_number(argv[2], "seed"), argv[3]
    check_name(variant, "finetune VARIANT")  # a path component of models/ and results/finetune/
    if loss not in LOSSES:
        raise StageError(f"unknown loss_type {loss!r}; use one of {', '.join(LOSSES)}")
    ft = checked_finetune_params(params("finetune"))
    if ft.get("engine", "local") == "ray":  # before any output dir or MLflow run: a wrong address leaves nothing
        check_ray_address((ft.get("ray") or {}).get("address"))
    cfg = train_config(ft, loss, seed)
    mp = model_params() if "model" in params() else {}
    n_proc = int(ft.get("processes", 1))
    check_processes(n_proc, cfg, mp)
    manifest_path = Path("results/select") / variant_name(variant, budget) / f"seed-{seed}" / "manifest.json"
    if not manifest_path.exists():
        raise StageError(f"{manifest_path} missing; run select@{variant_name(variant, budget)} with {seed} in seeds")
    manifest = read_manifest(manifest_path)
    records = chosen_records(manifest, read_examples("data/download/pool.jsonl"))
    world = (
        int(ft.get("processes", 1))
        if ft.get("engine", "local") == "local"
        else int((ft.get("ray") or {}).get("num_workers", 2))
    )
    try:  # a budget too small to learn more than the format: one line now, not a fine-tune that measures noise
        check_step_floor(len(records), {**DEFAULT_ARGS, **cfg.args}, int(ft.get("step_floor", 0)), world)
    except InfosiftError as e:
        raise StageError(f"{variant_name(variant, budget)}: {e}") from None
    if n_proc > 1 and "WORLD_SIZE" not in os.environ:
        launch_processes(n_proc, argv)
        return

    base_dir, trust = base_model_dir()
    name = variant_name(variant, budget, seed, loss)
    provenance = {
        "base_model": str(base_dir),
        "base_fingerprint": model_fingerprint(base_dir, mp["cache_dir"]),
        "manifest_hash": manifest["hash"],
        "train_config": dataclasses.asdict(cfg),
        "train_config_hash": content_hash(dataclasses.asdict(cfg)),
        "n_train": len(records),
    }
    key = content_hash(provenance)  # compare recomputes it from models/<name>/infosift.json to find the live run
    checkpoints = CHECKPOINTS / f"{name}-{key[:12]}"  # a changed config never resumes another's run
    engine = ft.get("engine", "local")
    main_rank = rank() == 0
    live = live_loss(name, key, manifest["hash"], cfg) if main_rank else nullcontext(None)
    # loaded before anything is written or an MLflow run opens: a model that cannot load is one line and no trace
    loaded = None if engine == "ray" else load_model_and_tokenizer(base_dir, **model_options(mp, trust))
    with live as on_step:
        with atomic_output(Path("models") / name) if main_rank else scratch_dir() as tmp:
            if loaded is None:
                from infosift.scale.train import ray_finetune

                result = ray_finetune(
                    ft.get("ray") or {}, base_dir, records, tmp, cfg, model_options(mp, trust), checkpoints, on_step
                )
            else:
                model, tokenizer = loaded
                result = finetune(model, tokenizer, records, tmp, cfg, checkpoint_dir=checkpoints, on_step=on_step)
            if main_rank:
                trained = {"n_examples": result.n_examples, "n_truncated": result.n_truncated,
                           "n_empty": result.n_empty, "engine": engine, "processes": n_proc,
                           "steps": result.steps,
                           "learning_rate": {**DEFAULT_ARGS, **cfg.args}["learning_rate"]}  # fmt: skip
                # "trained" is what the run reports; the rest is what made the model (tracking.train_key's hash)
                (tmp / "infosift.json").write_text(json.dumps({**provenance, "trained": trained}, indent=2) + "\n")
    if not main_rank:
        return
    history = result.history
    with atomic_output(Path("results/finetune") / name) as tmp:
        tmp.mkdir()
        with (tmp / "train_loss.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "lr"])
            writer.writeheader()
            writer.writerows(history)
    note = f", {result.n_truncated} cut at max_length" if result.n_truncated else ""
    note += f", {result.n_empty} left out (no assistant token within max_length)" if result.n_empty else ""
    final = f"final loss {history[-1]['loss']:.4f}" if history else "no steps logged"
    if result.resumed_from:
        final += f" (resumed from {result.resumed_from})"
    print(f"finetune: {name} on {result.n_examples} examples{note}, {len(history)} steps, {final}")


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """Where a non-zero rank 'saves': Trainer writes only on rank 0, so this stays empty and is removed."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="infosift-rank-") as d:
        yield Path(d) / "model"


if __name__ == "__main__":
    run(main)
