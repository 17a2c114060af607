"""One fine-tune across Ray Train workers: the same ``train.finetune``, the same model dir, on a cluster.

Ray Train's ``TorchTrainer`` starts ``num_workers`` processes (one per GPU with ``use_gpu``) and sets up the torch
process group between them; transformers' Trainer inside each worker then runs data-parallel as it does under
torchrun. Rank 0 saves the model and hands it back as a Ray Train checkpoint, which the driver copies into the
stage's output dir: on a multi-node cluster nothing has to share a file system but Ray's storage path.
The loss curve reaches the stage's MLflow run when training ends (a worker cannot call into the driver).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from infosift.errors import ClusterError
from infosift.scale.cluster import connect
from infosift.train import TrainConfig, TrainResult

HISTORY = "infosift-train-history.json"


def _worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker: load the base model, train with the shared Trainer setup, report."""
    import ray.train
    from ray.train import Checkpoint

    from infosift.models import load_model_and_tokenizer
    from infosift.train import finetune

    ctx = ray.train.get_context()
    use_gpu = config["use_gpu"]
    model, tok = load_model_and_tokenizer(config["base_dir"], device="cuda" if use_gpu else "cpu", **config["model"])
    with tempfile.TemporaryDirectory(prefix="infosift-ray-train-") as tmp:
        out = Path(tmp) / "model"
        res = finetune(
            model, tok, config["records"], out, config["cfg"], checkpoint_dir=config["checkpoints"],
            progress=ctx.get_world_rank() == 0, use_cpu=not use_gpu,
        )  # fmt: skip
        if ctx.get_world_rank() == 0:
            (out / HISTORY).write_text(json.dumps({**res.__dict__}))
            ray.train.report({"steps": len(res.history)}, checkpoint=Checkpoint.from_directory(out))
        else:
            ray.train.report({"steps": len(res.history)})


def ray_finetune(
    options: dict,
    base_dir: str | Path,
    records: list[dict],
    out_dir: str | Path,
    cfg: TrainConfig,
    model_kwargs: dict,
    checkpoint_dir: str | Path,
    on_step: Callable[[dict], None] | None = None,
    storage: str | Path = ".cache/ray-train",
) -> TrainResult:
    """Train on ``options['num_workers']`` Ray Train workers at ``options['address']`` (None: a local Ray) and write
    the model to ``out_dir``. An address with nothing behind it is a ClusterError at once (scale.cluster)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = connect(options.get("address"))
    try:
        use_gpu = bool(options.get("use_gpu", False))
        kwargs = {k: v for k, v in model_kwargs.items() if k != "device"}
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"base_dir": str(Path(base_dir).resolve()), "records": records, "cfg": cfg,
                               "model": kwargs, "use_gpu": use_gpu,
                               "checkpoints": str(Path(checkpoint_dir).resolve())},  # fmt: skip
            scaling_config=ScalingConfig(num_workers=int(options.get("num_workers", 2)), use_gpu=use_gpu),
            run_config=RunConfig(storage_path=str(Path(storage).resolve()), name=Path(out_dir).name),
        )
        result = trainer.fit()
        if result.error is not None or result.checkpoint is None:
            raise ClusterError(f"Ray Train fine-tune failed: {' '.join(str(result.error).split())[:300]}")
        result.checkpoint.to_directory(str(out_dir))
        shutil.rmtree(Path(result.path), ignore_errors=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    saved = json.loads((Path(out_dir) / HISTORY).read_text())
    (Path(out_dir) / HISTORY).unlink()
    res = TrainResult(**saved)
    for entry in res.history if on_step is not None else ():
        on_step(entry)
    return res
