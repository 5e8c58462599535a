"""trainer/speed.py: what it picks for a machine, how close its memory estimate is, and the packed path on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_model import make_tiny_model_dir
from trainer.config import Plan, TrainConfig
from trainer.speed import Shape, choose_speed, estimate_peak_bytes, sft_overrides

RAW = Path(__file__).resolve().parents[1] / "bench" / "results" / "raw"
GIB = 2**30
# Llama-3.2-1B's shape (the anchors' model), config only.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)


def _llama_1b():
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_1B)


def _plan(device="cuda", qlora=False):
    return Plan(device=device, bf16=device == "cuda", qlora=qlora, gradient_checkpointing=False,
                optim="paged_adamw_8bit" if qlora else ("adamw_torch_fused" if device == "cuda" else "adamw_torch"),
                attn_implementation="sdpa", reasons=[])


def test_cpu_path_is_left_as_configured():
    choice = choose_speed(TrainConfig(), _plan("cpu"), _llama_1b(), [300] * 10)
    assert not choice.packing and not choice.compile and not choice.use_liger
    assert not choice.gradient_checkpointing and choice.attn_implementation == "sdpa"
    assert choice.optim == "adamw_torch"


def test_big_gpu_packs_compiles_and_skips_checkpointing():
    choice = choose_speed(TrainConfig(), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB)
    assert choice.packing and choice.row_len == 2688 and choice.compile
    assert choice.attn_implementation == "guildtune_varlen"
    assert not choice.gradient_checkpointing and choice.optim == "adamw_torch_fused"
    assert any("no gradient checkpointing" in r for r in choice.reasons)


def test_memory_cap_turns_checkpointing_on_and_keeps_what_fits():
    capped = choose_speed(TrainConfig(memory_cap_gib=3.6), _plan(), _llama_1b(), [330] * 10,
                          gpu_total_bytes=80 * GIB)
    assert capped.gradient_checkpointing and capped.budget_gib == 3.6
    assert 0 < capped.layers_without_checkpointing < 16
    assert capped.estimate_gib["chosen"] <= 0.95 * 3.6
    tight = choose_speed(TrainConfig(memory_cap_gib=2.0), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB)
    assert tight.gradient_checkpointing and tight.layers_without_checkpointing == 0
    small_card = choose_speed(TrainConfig(), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=6 * GIB)
    assert small_card.gradient_checkpointing  # 7.4 GiB without it does not fit 85% of 6 GiB
    forced = choose_speed(TrainConfig(gradient_checkpointing="off", memory_cap_gib=2.0), _plan(), _llama_1b(),
                          [330] * 10, gpu_total_bytes=80 * GIB)
    assert not forced.gradient_checkpointing


def test_switches_are_honoured():
    off = choose_speed(TrainConfig(packing="off", compile="off"), _plan(), _llama_1b(), None, gpu_total_bytes=80 * GIB)
    assert not off.packing and not off.compile and off.attn_implementation == "sdpa"
    from dataclasses import replace

    explicit = replace(_plan(), optim="adamw_torch")  # what TrainConfig.plan says for optim="adamw_torch"
    assert choose_speed(TrainConfig(optim="adamw_torch"), explicit, _llama_1b(), [330],
                        gpu_total_bytes=80 * GIB).optim == "adamw_torch"
    assert TrainConfig(packing=True).packing == "on" and TrainConfig(packing=False).packing == "off"
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


@pytest.mark.parametrize("run,checkpointing,kept,qlora", [
    ("call3_project.json", False, 0, False),            # eager, no checkpointing: 7.41 GiB measured
    ("call2_project_capped.json", True, 0, False),      # full checkpointing: 3.05 GiB
    ("call4_project_capped.json", True, 1, False),      # cap 3.6: one block keeps its activations
    ("call4_project_qlora.json", True, 0, True),        # nf4 base, checkpointing: 1.65 GiB
])
def test_estimate_is_within_ten_percent_of_measured_h100_peaks(run, checkpointing, kept, qlora):
    measured = json.loads((RAW / run).read_text())
    assert measured["status"] == "ok"
    est = estimate_peak_bytes(Shape.from_config(_llama_1b()), 2688, lora_r=16, checkpointing=checkpointing,
                              qlora=qlora, layers_without_checkpointing=kept) / GIB
    peak = measured["memory"]["peak_alloc_gib"]
    assert abs(est - peak) / peak < 0.10, (est, peak)


def test_overrides_are_valid_sft_config_arguments():
    from trl import SFTConfig

    choice = choose_speed(TrainConfig(memory_cap_gib=3.6), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB)
    kw = sft_overrides(choice)
    assert kw["packing"] and kw["max_length"] == 2688 and kw["per_device_train_batch_size"] == 1
    args = SFTConfig(output_dir="/tmp/unused", use_cpu=True, **{**kw, "optim": "adamw_torch"})
    assert args.packing and args.padding_free
    assert getattr(args, "activation_checkpointing", args.gradient_checkpointing)


@pytest.mark.parametrize("pretokenized", [True, False])
def test_packed_training_on_cpu_runs_through_the_project_trainer(tmp_path, pretokenized):
    """packing="on" on CPU: fixed rows, per-conversation attention (reference kernel), loss falls."""
    from datasets import Dataset

    from trainer.sft import prepare_trainer

    model_dir = make_tiny_model_dir(tmp_path / "tiny", "llama")
    cfg = TrainConfig(packing="on", per_device_batch_size=4, max_length=64, max_steps=12, learning_rate=3e-3,
                      lora_r=8, device="cpu", logging_steps=1)
    if pretokenized:
        g = torch.Generator().manual_seed(0)
        rows = [torch.randint(10, 300, (int(n),), generator=g).tolist() for n in torch.randint(8, 40, (24,), generator=g)]
        ds = Dataset.from_dict({"input_ids": rows})
    else:
        ds = Dataset.from_dict({"messages": [[{"role": "user", "content": f"What is {i} plus one?"},
                                              {"role": "assistant", "content": f"It is {i + 1}."}]
                                             for i in range(24)]})
    prepared = prepare_trainer(model_dir, ds, cfg, tmp_path / "work")
    trainer = prepared.trainer
    assert type(trainer.data_collator).__name__ == "StaticRowCollator"
    assert trainer.model.config._attn_implementation == "guildtune_varlen"
    batch = next(iter(trainer.get_train_dataloader()))
    row_len = prepared.speed["row_len"]
    assert batch["input_ids"].shape == (1, row_len) and batch["cu_seq_lens_q"][-1] == row_len
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])


def test_auto_compiles_only_runs_long_enough_to_earn_it_back():
    from trainer.speed import COMPILE_MIN_STEPS

    short = choose_speed(TrainConfig(), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB,
                         total_steps=COMPILE_MIN_STEPS - 1)
    long = choose_speed(TrainConfig(), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB,
                        total_steps=COMPILE_MIN_STEPS)
    forced = choose_speed(TrainConfig(compile="on"), _plan(), _llama_1b(), [330] * 10, gpu_total_bytes=80 * GIB,
                          total_steps=10)
    assert not short.compile and any("too few to earn" in r for r in short.reasons)
    assert long.compile and forced.compile
