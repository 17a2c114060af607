"""model.chat_template: a model without a chat template gets one from a Jinja file, seen by every stage through
the base model dir; no template at all, or one that does not render, is one error line."""

from __future__ import annotations

import json

from tests.test_stage_errors import in_workspace, one_error_line
from tests.tiny import CHAT_TEMPLATE, save_tiny_model


def bare_model(tmp_path):
    """The tiny model with its chat template taken out of the tokenizer files."""
    d = save_tiny_model(tmp_path / "bare")
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_a_template_file_gives_the_base_model_one(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from infosift.models import model_fingerprint
    from stages.model import base_model_dir

    bare = bare_model(tmp_path)
    assert not AutoTokenizer.from_pretrained(bare).chat_template
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "chat.jinja").write_text(CHAT_TEMPLATE)
    in_workspace(monkeypatch, tmp_path / "ws", {"model": {"base_model": str(bare), "chat_template": "chat.jinja"}})
    base, _ = base_model_dir()
    assert AutoTokenizer.from_pretrained(base).chat_template == CHAT_TEMPLATE
    assert (base / "model.safetensors").is_symlink()  # the weights are the model's, not a copy
    assert model_fingerprint(base) != model_fingerprint(bare)
    assert base_model_dir()[0] == base  # cached


def test_no_template_or_one_that_does_not_render_is_one_line(tmp_path, monkeypatch, capsys):
    from stages.finetune import main

    bare = bare_model(tmp_path)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "bad.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    for template, words in ((None, "no chat template"), ("bad.jinja", "bad.jinja")):
        cwd = in_workspace(monkeypatch, tmp_path / "ws", {"model": {"base_model": str(bare), "chat_template": template},
                                                          "finetune": {}, "compare": {"mlflow": False}})  # fmt: skip
        sel = cwd / "results/select/random-5/seed-0/manifest.json"
        sel.parent.mkdir(parents=True, exist_ok=True)
        from infosift.manifest import content_hash

        body = {"ids": ["a"]}
        sel.write_text(json.dumps({**body, "hash": content_hash(body)}))
        (cwd / "data/download").mkdir(parents=True, exist_ok=True)
        (cwd / "data/download/pool.jsonl").write_text(json.dumps({"id": "a", "prompt": "q", "response": "r"}) + "\n")
        capsys.readouterr()
        line = one_error_line(monkeypatch, capsys, main, ["random", "5", "0", "nll"])
        assert words in line, line
        assert not (cwd / "models").exists()
