"""trainer/plan.py: what the one planner picks for a machine, and how close its memory estimate is to measured peaks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.estimate import model_shape
from trainer.plan import COMPILE_MIN_STEPS, Machine, plan

RAW = Path(__file__).resolve().parents[1] / "bench" / "results" / "raw"
GIB = 2**30
# Llama-3.2-1B's shape (the anchors' model), config only.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)


def _llama_1b():
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_1B)


def _gpu(total_gib: float = 80, bitsandbytes: bool = False) -> Machine:
    return Machine(cuda=True, bf16_supported=True, gpu_total_bytes=int(total_gib * GIB), bitsandbytes=bitsandbytes)


CPU = Machine(cuda=False)


def test_cpu_path_is_left_as_configured():
    choice = plan(TrainConfig(), _llama_1b(), CPU, lengths=[300] * 10)
    assert not choice.packing and not choice.compile and not choice.use_liger
    assert not choice.gradient_checkpointing and choice.attn_implementation == "sdpa"
    assert choice.optim == "adamw_torch"


def test_big_gpu_packs_compiles_and_skips_checkpointing():
    choice = plan(TrainConfig(), _llama_1b(), _gpu(80), lengths=[330] * 10)
    assert choice.packing and choice.row_len == 2688 and choice.compile
    assert choice.attn_implementation == "guildtune_varlen"
    assert not choice.gradient_checkpointing and choice.optim == "adamw_torch_fused"
    assert any("no gradient checkpointing" in r for r in choice.reasons)


def test_memory_cap_turns_checkpointing_on_and_keeps_what_fits():
    capped = plan(TrainConfig(memory_cap_gib=3.6), _llama_1b(), _gpu(80), lengths=[330] * 10)
    assert capped.gradient_checkpointing and capped.budget_gib == 3.6
    assert 0 < capped.layers_without_checkpointing < 16
    assert capped.estimate_gib["chosen"] <= 0.95 * 3.6
    tight = plan(TrainConfig(memory_cap_gib=2.0), _llama_1b(), _gpu(80), lengths=[330] * 10)
    assert tight.gradient_checkpointing and tight.layers_without_checkpointing == 0
    small_card = plan(TrainConfig(), _llama_1b(), _gpu(6), lengths=[330] * 10)
    assert small_card.gradient_checkpointing  # 7.4 GiB without it does not fit 85% of 6 GiB
    forced = plan(TrainConfig(gradient_checkpointing="off", memory_cap_gib=2.0), _llama_1b(), _gpu(80),
                  lengths=[330] * 10)
    assert not forced.gradient_checkpointing


def test_qlora_only_when_even_checkpointing_does_not_fit_and_bitsandbytes_is_there():
    # a 2.1 GiB cap: bf16 Llama-1B weights alone are 2.3 GiB
    cfg = TrainConfig(memory_cap_gib=2.1)
    quantized = plan(cfg, _llama_1b(), _gpu(80, bitsandbytes=True), lengths=[330] * 10)
    assert quantized.qlora and quantized.optim == "paged_adamw_8bit" and quantized.bf16
    assert any(r.startswith("QLoRA on: bf16 LoRA needs") for r in quantized.reasons)
    assert not plan(cfg, _llama_1b(), _gpu(80), lengths=[330] * 10).qlora  # no bitsandbytes: no QLoRA
    assert not plan(TrainConfig(), _llama_1b(), _gpu(80, bitsandbytes=True), lengths=[330] * 10).qlora


def test_switches_are_honoured():
    off = plan(TrainConfig(packing="off", compile="off"), _llama_1b(), _gpu(80))
    assert not off.packing and not off.compile and off.attn_implementation == "sdpa"
    assert plan(TrainConfig(optim="adamw_torch"), _llama_1b(), _gpu(80), lengths=[330]).optim == "adamw_torch"
    assert TrainConfig(packing=True).packing == "on" and TrainConfig(packing=False).packing == "off"
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")


def test_cpu_plan_is_fp32_eager_for_gemma_and_refuses_qlora():
    from trainer.estimate import EMBEDDED_GEMMA_CONFIG, load_config

    gemma = load_config(EMBEDDED_GEMMA_CONFIG)
    choice = plan(TrainConfig(), gemma, CPU)
    assert (choice.device, choice.bf16, choice.qlora, choice.optim, choice.attn_implementation) == (
        "cpu", False, False, "adamw_torch", "eager")
    assert plan(TrainConfig(), _llama_1b(), CPU).attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="QLoRA.*needs a CUDA GPU"):
        plan(TrainConfig(qlora="on"), _llama_1b(), CPU)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        plan(TrainConfig(device="cuda"), _llama_1b(), CPU)
    assert plan(TrainConfig(device="cpu"), _llama_1b(), _gpu(80)).device == "cpu"


@pytest.mark.parametrize("run,checkpointing,kept,qlora", [
    ("call3_project.json", False, 0, False),            # eager, no checkpointing: 7.41 GiB measured
    ("call2_project_capped.json", True, 0, False),      # full checkpointing: 3.05 GiB
    ("call4_project_capped.json", True, 1, False),      # cap 3.6: one block keeps its activations
    ("call4_project_qlora.json", True, 0, True),        # nf4 base, checkpointing: 1.65 GiB
])
def test_estimate_is_within_ten_percent_of_measured_h100_peaks(run, checkpointing, kept, qlora):
    from trainer.estimate import estimate_for_shape

    measured = json.loads((RAW / run).read_text())
    assert measured["status"] == "ok"
    est = estimate_for_shape(model_shape(_llama_1b()), "qlora" if qlora else "lora", label="llama-1b", seq_len=2688,
                             batch_size=1, lora_r=16, gradient_checkpointing=checkpointing,
                             layers_without_checkpointing=kept).total_bytes / GIB
    peak = measured["memory"]["peak_alloc_gib"]
    assert abs(est - peak) / peak < 0.10, (est, peak)


@pytest.mark.parametrize("run", ["call3_project.json", "call4_project_capped.json", "call4_project_qlora.json"])
def test_plans_for_the_measured_runs_settings_are_what_ran(run):
    """The planner, given each measured run's settings, makes the choices that run made."""
    measured = json.loads((RAW / run).read_text())
    settings = {k: measured["config"][k] for k in ("memory_cap_gib", "qlora", "gradient_checkpointing")}
    choice = plan(TrainConfig(**settings), _llama_1b(), _gpu(80, bitsandbytes=True), lengths=[330] * 10)
    ran = measured["plan"]
    assert (choice.qlora, choice.gradient_checkpointing, choice.optim, choice.attn_implementation) == (
        ran["qlora"], ran["gradient_checkpointing"], ran["optim"], ran["attn_implementation"])
    assert choice.row_len == measured["speed"]["row_len"]
    assert choice.layers_without_checkpointing == measured["speed"]["layers_without_checkpointing"]


def test_capped_plan_keeps_one_block_as_measured():
    assert plan(TrainConfig(memory_cap_gib=3.6), _llama_1b(), _gpu(80),
                lengths=[330] * 10).layers_without_checkpointing == 1  # call4_project_capped.json


def test_auto_compiles_only_runs_long_enough_to_earn_it_back():
    short = plan(TrainConfig(), _llama_1b(), _gpu(80), lengths=[330] * 10, total_steps=COMPILE_MIN_STEPS - 1)
    long = plan(TrainConfig(), _llama_1b(), _gpu(80), lengths=[330] * 10, total_steps=COMPILE_MIN_STEPS)
    forced = plan(TrainConfig(compile="on"), _llama_1b(), _gpu(80), lengths=[330] * 10, total_steps=10)
    assert not short.compile and any("too few to earn" in r for r in short.reasons)
    assert long.compile and forced.compile
