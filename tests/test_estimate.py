"""VRAM estimate: parameter counts from configs (no weights), and the orderings the formulas must keep."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tiny_model import tiny_llama_dir  # noqa: F401 (fixture)
from trainer.estimate import EMBEDDED_GEMMA_CONFIG, GiB, estimate_memory

LLAMA_1B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "tie_word_embeddings": True}


def test_parameter_counts_match_known_models():
    gemma = estimate_memory("embedded:gemma-3-270m", "lora", seq_len=256, batch_size=1)
    assert 265e6 < gemma.n_params < 270e6  # Gemma 3 "270M": 268,098,176 parameters
    llama = estimate_memory(LLAMA_1B, "full", seq_len=256, batch_size=1)
    assert 1.23e9 < llama.n_params < 1.25e9  # Llama 3.2 1B: 1.236 B
    assert llama.n_trainable == llama.n_params
    # LoRA r=16 on all linear layers of Llama 3.2 1B: 11.27 M trainable parameters
    assert estimate_memory(LLAMA_1B, "lora", lora_r=16).n_trainable == 11_272_192


def test_full_is_16_bytes_per_param_and_methods_are_ordered():
    full, lora, qlora = (estimate_memory(LLAMA_1B, m, seq_len=512, batch_size=4) for m in ("full", "lora", "qlora"))
    n = full.n_params
    assert full.weights_bytes + full.gradients_bytes + full.optimizer_bytes == 16 * n
    assert qlora.total_bytes < lora.total_bytes < full.total_bytes
    assert qlora.weights_bytes < lora.weights_bytes < full.weights_bytes
    assert lora.activations_bytes == full.activations_bytes == qlora.activations_bytes
    assert [name for name, _ in full.rows()] == ["weights", "gradients", "optimizer", "activations", "logits", "total"]
    assert full.rows()[-1][1] == pytest.approx(full.total_bytes / GiB)


def test_monotonic_in_sequence_length_and_batch():
    totals_seq = [estimate_memory(LLAMA_1B, "lora", seq_len=s, batch_size=2).total_bytes for s in (128, 512, 2048)]
    totals_batch = [estimate_memory(LLAMA_1B, "lora", seq_len=512, batch_size=b).total_bytes for b in (1, 4, 16)]
    assert totals_seq == sorted(totals_seq) and len(set(totals_seq)) == 3
    assert totals_batch == sorted(totals_batch) and len(set(totals_batch)) == 3


def test_checkpointing_eager_attention_and_full_logits_change_what_they_should():
    base = estimate_memory(LLAMA_1B, "lora", seq_len=1024, batch_size=8)
    ckpt = estimate_memory(LLAMA_1B, "lora", seq_len=1024, batch_size=8, gradient_checkpointing=True)
    eager = estimate_memory(LLAMA_1B, "lora", seq_len=1024, batch_size=8, eager_attention=True)
    logits = estimate_memory(LLAMA_1B, "lora", seq_len=1024, batch_size=8, chunked_loss=False)
    assert ckpt.activations_bytes < base.activations_bytes / 4
    assert eager.activations_bytes > base.activations_bytes
    assert logits.logits_bytes == 8 * 1024 * 128256 * 12 and base.logits_bytes == 0


def test_qlora_keeps_embeddings_in_bf16_for_small_models():
    q = estimate_memory(EMBEDDED_GEMMA_CONFIG, "qlora", seq_len=128, batch_size=1)
    # two thirds of Gemma 3 270M is its embedding table: nf4 barely halves the weights, not quarters them
    assert q.weights_bytes > 0.6 * q.n_params
    assert any("stay in bf16" in note for note in q.notes)


def test_folder_and_bad_inputs(tiny_llama_dir, tmp_path):
    assert estimate_memory(tiny_llama_dir, "lora").n_params == 139_584
    with pytest.raises(ValueError, match="unknown method"):
        estimate_memory(LLAMA_1B, "dora")
    with pytest.raises(ValueError, match="no config.json"):
        estimate_memory(tmp_path, "lora")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        estimate_memory("acme/never-downloaded-7b", "lora")
    with pytest.raises(ValueError, match="unknown embedded model"):
        estimate_memory("embedded:llama-9000", "lora")
