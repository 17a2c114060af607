"""What a decoder-only model needs in GPU memory to be fine-tuned: full SFT, FSDP, LoRA and QLoRA.

The answer is derived from the model's config (a transformers ``config.json``), not from a table of known
models: parameters are counted exactly from the architecture, and memory is the sum of terms whose accounting
is written below, so a user can check each number by hand.

Parameters (Llama / Qwen2 / Mistral decoder): token embeddings ``V*h``; per layer q, k, v, o projections with
grouped-query attention (k and v have ``kv_heads*head_dim`` outputs), biases on q/k/v for Qwen2 and on all four
when a Llama config sets ``attention_bias``; the SwiGLU MLP gate, up, down (``3*h*i``, biases when ``mlp_bias``);
two RMSNorm weights per layer and one at the end; ``lm_head`` (``h*V``) unless the embeddings are tied.

Memory per GPU, in bytes (P = parameters):
- Full SFT: 16 P. The fp32 weights are the master copy and ``bf16: true`` runs the compute in bf16 (autocast):
  fp32 weights 4 + fp32 grads 4 + AdamW m and v 8. This equals the mixed-precision accounting of ZeRO
  (Rajbhandari et al. 2020, arXiv 1910.02054, sec. 3.1: 2 + 2 bytes of 16-bit weights and grads plus 12 bytes
  of fp32 master copy, m and v). Loading bf16 weights instead halves it, but keeps AdamW's state in bf16.
- FSDP full shard over N GPUs: 16 P / N for the sharded states, plus the units gathered at once in bf16: the
  root unit (embeddings, final norm, lm_head), which stays gathered through forward and backward, and two
  decoder layers (the one computing and the one prefetched); their unsharded bf16 grads (root and one layer)
  wait for the reduce-scatter.
- LoRA: frozen bf16 base 2 P; the adapters (rank r on every linear layer of the decoder, as PEFT's
  ``all-linear``: ``r*(in+out)`` each) are kept in fp32 by PEFT and trained with AdamW: 16 bytes each.
- QLoRA: the decoder's linear weights in 4-bit NF4, 0.5 byte each, plus one fp32 absmax per block of 64
  (0.0625 byte per weight, bitsandbytes without double quantisation; Dettmers et al. 2023, arXiv 2305.14314,
  sec. 3); embeddings, norms, biases and lm_head stay bf16; the largest linear is dequantised to bf16 while it
  computes; adapters as under LoRA.
- Activations for a micro-batch of b sequences of s tokens (Korthikanti et al. 2022, arXiv 2205.05198, sec. 4.1):
  one layer keeps ``s*b*h*(34 + 5*a*s/h)`` bytes of 16-bit activations, where ``5*a*s/h`` is the attention
  score matrix that eager attention stores and memory-efficient attention (SDPA / FlashAttention, Dao et al.
  2022, arXiv 2205.14135) does not. The formula is for a GPT block (4h MLP, dropout); for SwiGLU and GQA
  blocks it is an approximation. With full gradient checkpointing a layer keeps only its 16-bit input,
  ``2*s*b*h``, and one layer's full activations live again while it is recomputed in backward. The loss adds
  ``10*s*b*V``: bf16 logits, their fp32 copy and fp32 log-probabilities, alive together.
A plan fits a GPU when its estimate is at most 90 % of the GPU's memory: the rest is left to the CUDA context,
allocator fragmentation and communication buffers, which these terms do not count.

Run ``python -m infosift.memory_plan CONFIG`` (a config.json, an HF model dir or a preset) for the table and
the ``params.yaml`` blocks of each plan.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from infosift.errors import InfosiftError, ModelResolutionError

GIB = 2**30
USABLE_SHARE = 0.9  # of a GPU's memory a plan may fill; see the module docstring
GPUS_PER_NODE = 8  # beyond this an FSDP plan spans machines and runs on Ray workers
MAX_GPUS = 1024
FULL_STATE_BYTES = 16  # fp32 weights 4 + fp32 grads 4 + AdamW m, v 8
ADAPTER_STATE_BYTES = 16  # fp32 adapter weights, grads, m, v
BF16 = 2
NF4_BYTES = 0.5
NF4_BLOCK = 64
ABSMAX_BYTES = 4  # one fp32 absmax per NF4 block
LOGIT_BYTES = 2 + 4 + 4  # bf16 logits, fp32 copy, fp32 log-probabilities
LORA_ALPHA_PER_R = 2
LORA_DROPOUT = 0.05

# Architecture numbers from each model's public config.json on the Hugging Face hub.
PRESETS: dict[str, dict] = {
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M(-Instruct)
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {  # Qwen/Qwen2.5-1.5B(-Instruct)
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {  # meta-llama/Llama-3.1-8B(-Instruct)
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    },
}

# model_type -> (decoder layer class, biases on q/k/v always)
MODEL_TYPES = {
    "llama": ("LlamaDecoderLayer", False),
    "mistral": ("MistralDecoderLayer", False),
    "qwen2": ("Qwen2DecoderLayer", True),
}
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Architecture:
    """The numbers of a Llama-style decoder that its parameter count and memory depend on."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def decoder_layer_class(self) -> str:
        """The class FSDP wraps as one unit (``fsdp_config.transformer_layer_cls_to_wrap``)."""
        return MODEL_TYPES[self.model_type][0]

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, in, out, has bias) of each linear layer in one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            ("q_proj", h, q, self.qkv_bias),
            ("k_proj", h, kv, self.qkv_bias),
            ("v_proj", h, kv, self.qkv_bias),
            ("o_proj", q, h, self.o_bias),
            ("gate_proj", h, i, self.mlp_bias),
            ("up_proj", h, i, self.mlp_bias),
            ("down_proj", i, h, self.mlp_bias),
        ]


def architecture(config: dict, where: str = "config") -> Architecture:
    """Read the architecture from a transformers config dict; a config this cannot count is one clear error."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ModelResolutionError(f"{where}: missing {', '.join(missing)}")
    model_type = config.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
        raise ModelResolutionError(
            f"{where}: model_type {model_type!r} is not a Llama-style decoder this counts; known: "
            + ", ".join(MODEL_TYPES)
        )
    ints = {k: config[k] for k in REQUIRED}
    ints["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelResolutionError(f"{where}: {key} must be a positive whole number, got {value!r}")
    heads, kv_heads, hidden = ints["num_attention_heads"], ints["num_key_value_heads"], ints["hidden_size"]
    if heads % kv_heads:
        raise ModelResolutionError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    head_dim = config.get("head_dim") or hidden // heads
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ModelResolutionError(f"{where}: head_dim must be a positive whole number, got {head_dim!r}")
    qwen_bias = MODEL_TYPES[model_type][1]
    attention_bias = bool(config.get("attention_bias", False)) and model_type == "llama"
    return Architecture(
        model_type=model_type,
        hidden=hidden,
        intermediate=ints["intermediate_size"],
        layers=ints["num_hidden_layers"],
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=ints["vocab_size"],
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=qwen_bias or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)) and model_type == "llama",
    )


@dataclass(frozen=True)
class ParamCount:
    """Parameters by where they live; ``total`` equals ``sum(p.numel() for p in model.parameters())``."""

    embedding: int
    layer: int  # one decoder layer
    layers: int  # number of decoder layers
    final_norm: int
    lm_head: int  # 0 when tied to the embeddings
    linear_weights: int  # weights of the decoder's linear layers (what 4-bit quantisation stores in NF4)
    largest_linear: int  # weights of the largest one (dequantised while it computes)

    @property
    def total(self) -> int:
        return self.embedding + self.layer * self.layers + self.final_norm + self.lm_head

    @property
    def root(self) -> int:
        """The FSDP root unit: everything outside the decoder layers."""
        return self.embedding + self.final_norm + self.lm_head


def count_params(arch: Architecture) -> ParamCount:
    """Exact parameter count of the architecture (rotary frequencies are buffers, not parameters)."""
    linears = arch.linears()
    weights = sum(n_in * n_out for _, n_in, n_out, _ in linears)
    biases = sum(n_out for _, _, n_out, bias in linears if bias)
    norms = 2 * arch.hidden
    return ParamCount(
        embedding=arch.vocab * arch.hidden,
        layer=weights + biases + norms,
        layers=arch.layers,
        final_norm=arch.hidden,
        lm_head=0 if arch.tied else arch.hidden * arch.vocab,
        linear_weights=weights * arch.layers,
        largest_linear=max(n_in * n_out for _, n_in, n_out, _ in linears),
    )


def lora_params(arch: Architecture, r: int) -> int:
    """Adapter parameters of rank ``r`` on every linear layer of the decoder (PEFT ``all-linear``: not lm_head)."""
    return arch.layers * sum(r * (n_in + n_out) for _, n_in, n_out, _ in arch.linears())


def activation_bytes(arch: Architecture, seq: int, batch: int, checkpointing: bool, attention: str = "sdpa") -> int:
    """Activation memory of one micro-batch (Korthikanti et al. 2022; see the module docstring)."""
    sbh = seq * batch * arch.hidden
    scores = 5 * arch.heads * seq * seq * batch if attention == "eager" else 0
    layer = 34 * sbh + scores
    logits = LOGIT_BYTES * seq * batch * arch.vocab
    if checkpointing:
        return arch.layers * 2 * sbh + layer + logits
    return arch.layers * layer + logits


def fsdp_bytes(n: ParamCount, gpus: int) -> tuple[float, float]:
    """(weights, grads + optimizer) per GPU under FSDP full shard: a 1/gpus shard plus the units gathered in bf16."""
    p = n.total
    weights = 4 * p / gpus + BF16 * (n.root + 2 * n.layer)
    return weights, 12 * p / gpus + BF16 * (n.root + n.layer)


@dataclass(frozen=True)
class Plan:
    """One way to fine-tune the model: its GPUs, its memory per GPU and the params that ask for it."""

    name: str
    gpus: int | None  # None: no number of GPUs up to MAX_GPUS fits
    weights: float  # bytes per GPU
    grads_optimizer: float
    activations: float
    checkpointing: bool
    trainable: int
    params: dict

    @property
    def per_gpu(self) -> float:
        return self.weights + self.grads_optimizer + self.activations


def plans(
    arch: Architecture,
    gpu_gb: float = 80,
    seq: int = 2048,
    batch: int = 1,
    lora_r: int = 16,
    attention: str = "sdpa",
) -> list[Plan]:
    """Full SFT, FSDP, LoRA and QLoRA on GPUs of ``gpu_gb`` GiB, each with the fewest GPUs it fits.

    Gradient checkpointing recomputes activations (about a third more compute), so a plan turns it on only
    when that saves GPUs or is the only way to fit.
    """
    n = count_params(arch)
    p, usable = n.total, USABLE_SHARE * gpu_gb * GIB
    acts = {ckpt: activation_bytes(arch, seq, batch, ckpt, attention) for ckpt in (False, True)}
    adapters = lora_params(arch, lora_r)
    train = {"bf16": True, "per_device_train_batch_size": batch}
    lora = {"r": lora_r, "alpha": LORA_ALPHA_PER_R * lora_r, "dropout": LORA_DROPOUT, "target_modules": "all-linear"}

    def single(name: str, weights: float, state: float, trainable: int, model: dict, extra: dict) -> Plan:
        ckpt = weights + state + acts[False] > usable
        fits = weights + state + acts[ckpt] <= usable
        block = {"model": model, "finetune": {"processes": 1, "max_length": seq,
                                              "train": {**train, "gradient_checkpointing": ckpt}}}  # fmt: skip
        block["finetune"].update(extra)
        return Plan(name, 1 if fits else None, weights, state, acts[ckpt], ckpt, trainable, block)

    full = single("full SFT", 4 * p, 12 * p, p, {"torch_dtype": "float32"}, {})

    best: tuple[int, bool] | None = None
    for ckpt in (False, True):
        gpus = next((g for g in range(2, MAX_GPUS + 1) if sum(fsdp_bytes(n, g)) + acts[ckpt] <= usable), None)
        if gpus is not None and (best is None or gpus < best[0]):
            best = (gpus, ckpt)
    gpus, ckpt = best if best else (None, True)
    weights, state = fsdp_bytes(n, gpus or MAX_GPUS)
    fsdp_train = {
        **train,
        "gradient_checkpointing": False,  # under FSDP, fsdp_config.activation_checkpointing does it without
        "fsdp": "full_shard auto_wrap",  # the extra all-gather that gradient_checkpointing costs
        "fsdp_config": {"transformer_layer_cls_to_wrap": [arch.decoder_layer_class], "activation_checkpointing": ckpt},
    }
    launch: dict = {"processes": gpus or MAX_GPUS, "max_length": seq}
    if gpus and gpus > GPUS_PER_NODE:
        launch = {"engine": "ray", "ray": {"address": "auto", "num_workers": gpus, "use_gpu": True}, "max_length": seq}
    fsdp = Plan(
        "FSDP full shard",
        gpus,
        weights,
        state,
        acts[ckpt],
        ckpt,
        p,
        {"model": {"torch_dtype": "float32"}, "finetune": {**launch, "train": fsdp_train}},
    )

    adapter = {"lora": lora, "save": "adapter"}
    lora_plan = single("LoRA", BF16 * p, ADAPTER_STATE_BYTES * adapters, adapters, {"torch_dtype": "bfloat16"}, adapter)
    quantised = n.linear_weights * (NF4_BYTES + ABSMAX_BYTES / NF4_BLOCK)
    qweights = quantised + BF16 * (p - n.linear_weights) + BF16 * n.largest_linear
    qlora = single(
        "QLoRA",
        qweights,
        ADAPTER_STATE_BYTES * adapters,
        adapters,
        {"torch_dtype": "bfloat16", "quantization": "4bit"},
        adapter,
    )
    return [full, fsdp, lora_plan, qlora]


def load_config(spec: str) -> tuple[str, dict]:
    """A preset name, a config.json or an HF model dir -> (its name for the report, the config dict)."""
    if spec in PRESETS:
        return spec, PRESETS[spec]
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise ModelResolutionError(f"{spec}: a directory without a config.json")
    if not path.exists():
        raise ModelResolutionError(f"{spec}: no such config file or model dir, and not a preset ({', '.join(PRESETS)})")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelResolutionError(f"{path}: not a JSON config ({e})") from None
    if not isinstance(config, dict):
        raise ModelResolutionError(f"{path}: not a JSON object")
    return str(path), config


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def report(name: str, arch: Architecture, gpu_gb: float, seq: int, batch: int, lora_r: int, attention: str) -> str:
    """The markdown the command prints: a header, the table and the params block of each plan."""
    n = count_params(arch)
    rows = plans(arch, gpu_gb, seq, batch, lora_r, attention)
    tied = "tied" if arch.tied else "untied"
    lines = [
        f"**{name}**: {n.total:,} parameters ({arch.model_type}, {arch.layers} layers, hidden {arch.hidden}, "
        f"{arch.heads} query / {arch.kv_heads} key-value heads, vocab {arch.vocab}, {tied} embeddings).",
        f"Micro-batch {batch} x {seq} tokens, {attention} attention, LoRA rank {lora_r} on all linear layers "
        f"({lora_params(arch, lora_r):,} adapter parameters); GPUs of {gpu_gb:g} GiB, a plan fits under "
        f"{USABLE_SHARE * gpu_gb:.1f} GiB. Memory in GiB per GPU:",
        "",
        "| plan | GPUs | per GPU | weights | grads + optimizer | activations | checkpointing | trained parameters |",
        "|---|--:|--:|--:|--:|--:|---|--:|",
    ]
    for plan in rows:
        gpus = str(plan.gpus) if plan.gpus else f"> {MAX_GPUS}" if plan.name.startswith("FSDP") else "does not fit"
        lines.append(
            f"| {plan.name} | {gpus} | {_gib(plan.per_gpu)} | {_gib(plan.weights)} | {_gib(plan.grads_optimizer)} "
            f"| {_gib(plan.activations)} | {'on' if plan.checkpointing else 'off'} | {plan.trainable:,} |"
        )
    off, on = (activation_bytes(arch, seq, batch, ckpt, attention) for ckpt in (False, True))
    lines += ["", f"Activations per micro-batch: {_gib(off)} GiB without gradient checkpointing, {_gib(on)} GiB with."]
    for plan in rows:
        body = yaml.safe_dump(plan.params, sort_keys=False, default_flow_style=False).rstrip()
        fits = "" if plan.gpus else f", needs more than {gpu_gb:g} GiB per GPU"
        lines += ["", f"{plan.name} (`params.yaml`{fits}):", "", "```yaml", body, "```"]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so bad arguments are one ``error:`` line too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InfosiftError(f"memory_plan: {message}")


def _positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> str:
    """Parse the command line, print the report and return it."""
    ap = _Parser(prog="python -m infosift.memory_plan", description=__doc__.splitlines()[0])
    ap.add_argument("config", help=f"a config.json, an HF model dir, or a preset: {', '.join(PRESETS)}")
    ap.add_argument("--gpu-gb", type=_positive(float), default=80.0, help="memory of one GPU in GiB")
    ap.add_argument("--seq", type=_positive(int), default=2048, help="tokens per sequence")
    ap.add_argument("--batch", type=_positive(int), default=1, help="sequences per micro-batch")
    ap.add_argument("--lora-r", type=_positive(int), default=16, help="LoRA rank")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation")
    args = ap.parse_args(argv)
    name, config = load_config(args.config)
    text = report(name, architecture(config, name), args.gpu_gb, args.seq, args.batch, args.lora_r, args.attn)
    sys.stdout.write(text)
    return text


def cli(argv: list[str] | None = None) -> int:
    """The command: bad input (a missing file, a config it cannot count, a bad flag) is one ``error:`` line, exit 1."""
    try:
        main(argv)
    except (InfosiftError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
