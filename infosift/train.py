"""Supervised fine-tuning on chosen records: transformers' Trainer with infosift's token-weighted loss.

Why ``transformers.Trainer`` and not TRL's ``SFTTrainer``: infosift encodes every conversation itself
(``chat.encode_record``: the same tokens and assistant mask that embed and held-out NLL use), and SFTTrainer's
own value is that dataset preparation (templating, packing, assistant masks from ``{% generation %}`` tags that
most chat templates lack). Given encoded data, what SFTTrainer runs is Trainer. Trainer brings what infosift should
not write again: bf16/fp16, gradient checkpointing, schedulers, checkpoints and resume, DDP/FSDP/DeepSpeed through
accelerate. infosift adds one thing, the loss (``token_loss``): ``losses.weighted_token_loss`` over the assistant
tokens, normalised by the assistant tokens of the whole optimizer step (Trainer's ``num_items_in_batch``, summed
over accumulation steps and processes), so accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infosift.chat import Encoded, collate, encode_record, pad_id_of
from infosift.errors import InfosiftError
from infosift.losses import available_losses, get_loss, weighted_token_loss

IGNORE = -100  # the label of a token that carries no loss (prompt, system turn, padding)
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}
SAVE_MODES = ("adapter", "merged")
# TrainingArguments that infosift sets itself: where checkpoints go, the seed (the selection's), logging
OWNED_ARGS = {"output_dir", "seed", "data_seed", "logging_steps", "logging_strategy", "remove_unused_columns"}
# Names other trainers' configs still carry, as transformers 5 spells them
ALIASES = {"warmup_ratio": "warmup_steps"}  # transformers 5: warmup_steps < 1 is a ratio of the total steps
# infosift's former names of its own loop, and what they are called now
RENAMED = {"lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
           "grad_accum": "gradient_accumulation_steps"}  # fmt: skip
# infosift's defaults where Trainer's differ from what a small-budget SFT wants
DEFAULT_ARGS = {
    "learning_rate": 2e-5,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 1,
    "report_to": "none",  # live loss goes to infosift's own MLflow run (one run per variant, not two)
    "dataloader_pin_memory": False,
}


def trainer_arg_defaults() -> dict[str, object]:
    """TrainingArguments' init fields and their defaults (the type a value must have where the default says it)."""
    from transformers import TrainingArguments

    return {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.init}


def check_arg_type(name: str, value: object, default: object) -> None:
    """TrainingArguments takes any value and fails (or not) much later: a number where the default is a number,
    a bool where it is a bool, checked now."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    else:
        return
    if not ok:
        raise InfosiftError(f"trainer argument {name}: must be a {type(default).__name__}, got {value!r}")


@dataclass
class TrainConfig:
    """One fine-tune, checked when it is built (so a typo fails before a model loads).

    ``args`` are transformers ``TrainingArguments`` by their own names (``learning_rate``, ``num_train_epochs``,
    ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``bf16``, ``gradient_checkpointing``,
    ``fsdp``, ...); an unknown name is an InfosiftError naming it. The rest is infosift's own: which loss weights
    the tokens, how long an encoded conversation may be, LoRA, and what a LoRA run saves.
    """

    loss_type: str = "nll"  # nll | dft | infosift
    infosft_p: float = 0.93
    max_length: int = 512
    seed: int = 0
    lora: dict | None = None  # {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    save: str = "adapter"  # LoRA: adapter (the adapter alone, loaded on its base) | merged (a plain HF dir)
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss_type not in available_losses():
            raise InfosiftError(f"unknown loss_type {self.loss_type!r}; use one of {', '.join(available_losses())}")
        try:
            get_loss(self.loss_type)(torch.full((1,), 0.5), float(self.infosft_p))
        except ValueError as e:
            raise InfosiftError(f"infosft_p: {e}") from None
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise InfosiftError(f"max_length: must be an integer >= 8, got {self.max_length!r}")
        if self.save not in SAVE_MODES:
            raise InfosiftError(f"save: must be one of {', '.join(SAVE_MODES)}, got {self.save!r}")
        if self.lora is not None:
            check_lora(self.lora)
        self.args = normalize_args(self.args)
        self.training_arguments(Path(tempfile.gettempdir()) / "infosift-args-check", progress=False)  # values too

    def training_arguments(self, output_dir: str | Path, progress: bool = True, use_cpu: bool | None = None):
        """The TrainingArguments of this fine-tune: infosift's defaults, then the user's ``args``, then what
        infosift owns (checkpoint dir, seed, per-step logging)."""
        from transformers import TrainingArguments

        args = {**DEFAULT_ARGS, **self.args}
        if "use_cpu" not in self.args:  # the CPU where no GPU is, as transformers would not assume for bf16
            args["use_cpu"] = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
        args.setdefault("disable_tqdm", not progress)
        for name in ("activation_checkpointing", "gradient_checkpointing"):  # transformers 5 takes both names
            if args.get(name):  # a frozen LoRA base gives no input grads, which the reentrant form needs
                args.setdefault(f"{name}_kwargs", {"use_reentrant": False})
        owned = {
            "output_dir": str(output_dir),
            "seed": self.seed,
            "data_seed": self.seed,
            "logging_steps": 1,
            "logging_strategy": "steps",
            "remove_unused_columns": False,
        }
        try:
            return TrainingArguments(**args, **owned)
        except (ValueError, TypeError, ImportError) as e:
            raise InfosiftError(f"trainer arguments: {' '.join(str(e).split())[:400]}") from None


def normalize_args(args: dict | None) -> dict:
    """User TrainingArguments, names checked: unknown -> an error naming it; aliases -> transformers 5's names."""
    args = dict(args or {})
    for old, new in ALIASES.items():
        if old in args:
            if new in args:
                raise InfosiftError(f"give {new} or {old}, not both")
            args[new] = args.pop(old)
    known = trainer_arg_defaults()
    for name in args:
        if name in OWNED_ARGS:
            raise InfosiftError(f"trainer argument {name!r} is set by infosift (checkpoints, seed, logging)")
        if name not in known:
            close = [RENAMED[name]] if name in RENAMED else sorted(k for k in known if k.startswith(name[:4]))[:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InfosiftError(f"unknown trainer argument {name!r}{hint}: finetune.train takes TrainingArguments")
        check_arg_type(name, args[name], known[name])
    return args


def check_lora(lora: dict) -> None:
    """LoRA settings as wrap_lora reads them, checked before a model loads (a misspelt ``rank`` would otherwise
    train silently with the default r)."""
    if not isinstance(lora, dict):
        raise InfosiftError(f"lora: must be a mapping, got {type(lora).__name__}")
    unknown = sorted(set(lora) - LORA_KEYS)
    if unknown:
        raise InfosiftError(f"lora: unknown key {unknown[0]!r}; known: {', '.join(sorted(LORA_KEYS))}")
    for key, default in (("r", 16), ("alpha", 32)):
        v = lora.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InfosiftError(f"lora.{key}: must be an integer >= 1, got {v!r}")
    d = lora.get("dropout", 0.05)
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise InfosiftError(f"lora.dropout: must be in [0, 1), got {d!r}")
    t = lora.get("target_modules", "all-linear")
    ok = (isinstance(t, str) and t.strip()) or (isinstance(t, list) and t and all(isinstance(x, str) for x in t))
    if not ok:
        raise InfosiftError(f"lora.target_modules: a module name (pattern), all-linear or a list of names, got {t!r}")


def wrap_lora(model, lora: dict):
    """Adapters from peft; only they train, the base weights stay frozen.

    Which modules ``target_modules`` names is known only once the model is here: peft's refusal (no module
    matches) becomes one InfosiftError naming the LoRA settings, not a bare peft message.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is one
        raise InfosiftError(f"lora {lora!r}: {' '.join(str(e).split())}") from None


# -- the loss --------------------------------------------------------------------------------------
def labels_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """input_ids where a token is an assistant token, IGNORE elsewhere: what Trainer counts and the loss reads."""
    return torch.where(batch["response_mask"], batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE))


def token_loss(loss_type: str, P: float) -> Callable:
    """Trainer's ``compute_loss_func``: Σ_t sg[w(q_t)]·(−log q_t) over assistant tokens, divided by the assistant
    tokens of the whole optimizer step (all accumulation steps, all processes), not of this micro-batch.

    Shifted by one: logits at t predict token t+1. Without ``num_items_in_batch`` (evaluation) it is the mean
    over this batch's assistant tokens.
    """

    def compute(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        target = labels[:, 1:]
        mask = target != IGNORE
        return weighted_token_loss(
            outputs.logits[:, :-1], target, mask, loss_type=loss_type, P=P, normalizer=num_items_in_batch
        )

    return compute


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, encoded: list[Encoded]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> Encoded:
        return self.encoded[i]


class Collator:
    """Right-pad a batch (chat.collate, the library's one padding) and add the labels Trainer counts."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        out = collate(batch, self.pad_id)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": labels_of(out)}


# -- checkpoints -------------------------------------------------------------------------------------
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir`` (Trainer writes trainer_state.json last, so a dir without it
    was cut short by a kill and is passed over), or None."""
    root = Path(run_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if CHECKPOINT.fullmatch(p.name) and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(CHECKPOINT.fullmatch(p.name).group(1)), default=None)


# -- training ------------------------------------------------------------------------------------------
class StepLog:
    """A TrainerCallback-shaped object: each optimizer step's loss and learning rate, to a list and to ``on_step``."""

    def __init__(self, on_step: Callable[[dict], None] | None):
        self.history: list[dict] = []
        self.on_step = on_step

    def callback(self):
        from transformers import TrainerCallback

        log = self

        class _Log(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs and state.is_world_process_zero:
                    entry = {
                        "step": state.global_step,
                        "epoch": math.floor(logs.get("epoch", state.epoch or 0)),
                        "loss": float(logs["loss"]),
                        "lr": float(logs.get("learning_rate", 0.0)),
                    }
                    if log.history and log.history[-1]["step"] == entry["step"]:
                        return
                    log.history.append(entry)
                    if log.on_step is not None:
                        log.on_step(entry)

        return _Log()


@dataclass
class TrainResult:
    history: list[dict]
    n_examples: int  # examples trained on
    n_truncated: int  # cut at max_length, trained on what was left
    n_empty: int  # no assistant token left after the cut: reported, not trained on
    resumed_from: str | None
    steps: int = 0  # optimizer steps taken (Trainer's global_step), resumed ones included


def encode_all(tokenizer, records: list[dict], max_length: int) -> tuple[list[Encoded], int, int]:
    """Encode each record; (kept, truncated, emptied). An example that loses every assistant token to the cut is
    counted and left out: it would add no loss."""
    encoded = [encode_record(tokenizer, r, max_length) for r in records]
    n_trunc = sum(e.truncated for e in encoded)
    kept = [e for e in encoded if e.n_response > 0]
    return kept, n_trunc, len(encoded) - len(kept)


def finetune(
    model,
    tokenizer,
    records: list[dict],
    out_dir: str | Path,
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    use_cpu: bool | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train ``model`` on ``records`` and save it to ``out_dir`` (on the main process).

    Full SFT saves an HF dir; LoRA saves the adapter (``cfg.save == "adapter"``) or the merged model. Checkpoints go
    to ``checkpoint_dir`` (a temporary dir when None); a run finding a complete checkpoint there resumes from it,
    and the dir is removed once the model is saved. ``on_step`` gets each step's {step, epoch, loss, lr} as soon as
    it is logged (the stage passes an MLflow logger; the library knows nothing of it).
    """
    from transformers import Trainer, set_seed

    if not records:
        raise InfosiftError("no training records")
    encoded, n_trunc, n_empty = encode_all(tokenizer, records, cfg.max_length)
    if not encoded:
        raise InfosiftError(f"all {len(records)} examples lose every assistant token at max_length {cfg.max_length}")
    own_tmp = checkpoint_dir is None
    ckpt = Path(tempfile.mkdtemp(prefix="infosift-ckpt-")) if own_tmp else Path(checkpoint_dir)
    args = cfg.training_arguments(ckpt, progress=progress, use_cpu=use_cpu)
    set_seed(cfg.seed)  # LoRA's init and dropout draw from it before Trainer seeds again
    if cfg.lora:
        model = wrap_lora(model, cfg.lora)
    if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False):
        model.config.use_cache = False
    log = StepLog(on_step)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(encoded),
        data_collator=Collator(pad_id_of(tokenizer)),
        compute_loss_func=token_loss(cfg.loss_type, cfg.infosft_p),
        callbacks=[log.callback(), *(callbacks or [])],
    )
    if not progress:  # Trainer prints each log dict when its progress bar is off
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(ckpt)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_model(trainer, tokenizer, out_dir, cfg)
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(log.history, len(encoded), n_trunc, n_empty, resume.name if resume else None,
                       trainer.state.global_step)  # fmt: skip


def save_model(trainer, tokenizer, out_dir: str | Path, cfg: TrainConfig) -> None:
    """The trained model as an HF dir: Trainer's save (it gathers FSDP/DeepSpeed shards; a peft model saves its
    adapter), or LoRA merged into the base. Trainer's pickled training_args.bin is not kept: infosift records the
    arguments as JSON beside the model."""
    out = Path(out_dir)
    if cfg.lora and cfg.save == "merged":
        if trainer.args.should_save:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            out.mkdir(parents=True, exist_ok=True)
            merged.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.args.should_save:
        tokenizer.save_pretrained(out)
        (out / "training_args.bin").unlink(missing_ok=True)
