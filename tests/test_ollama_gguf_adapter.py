"""The GGUF adapter writer, read back with gguf.GGUFReader and checked against llama.cpp's layout
(llama-adapter.cpp's checks: general.type, general.architecture, adapter.type, adapter.lora.alpha,
`<base tensor>.lora_a` with dims [n_in, rank] and `.lora_b` with dims [rank, n_out]) for the tiny
Gemma 3 and a tiny Qwen 2, and the update llama.cpp computes (alpha/rank · B·A) equal to PEFT's."""
from __future__ import annotations

import json

import gguf
import pytest
import torch
from safetensors.torch import load_file

from serving.gguf_adapter import GgufAdapterUnsupported, why_not_gguf, write_gguf_adapter
from serving.merge import read_base_config
from tiny_model import make_tiny_qwen2_dir

# llama.cpp's GGUF names of the HF linear layers (gguf-py tensor_mapping.py), written out by hand.
LLAMA_CPP_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def make_adapter(base_dir, out, *, r=4, alpha=8, rslora=False, targets="all-linear"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                  use_rslora=rslora, init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen2_base(tmp_path_factory):
    return make_tiny_qwen2_dir(tmp_path_factory.mktemp("tiny-qwen2"))


def read_back(path):
    reader = gguf.GGUFReader(path)
    fields = {}
    for key in ("general.architecture", "general.type", "adapter.type"):
        field = reader.get_field(key)
        fields[key] = bytes(field.parts[field.data[0]]).decode()
    alpha = reader.get_field("adapter.lora.alpha")
    fields["adapter.lora.alpha"] = float(alpha.parts[alpha.data[0]][0])
    fields["alpha_type"] = alpha.types[0]
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def expected_layout(base_config, r):
    """{gguf name: dims} for an all-linear LoRA of rank r, from the base's sizes."""
    hidden, inter = base_config["hidden_size"], base_config["intermediate_size"]
    q = base_config["num_attention_heads"] * base_config.get("head_dim", hidden // base_config["num_attention_heads"])
    kv = base_config["num_key_value_heads"] * base_config.get("head_dim", hidden // base_config["num_attention_heads"])
    in_out = {"attn_q": (hidden, q), "attn_k": (hidden, kv), "attn_v": (hidden, kv), "attn_output": (q, hidden),
              "ffn_gate": (hidden, inter), "ffn_up": (hidden, inter), "ffn_down": (inter, hidden)}
    layout = {}
    for block in range(base_config["num_hidden_layers"]):
        for name, (n_in, n_out) in in_out.items():
            layout[f"blk.{block}.{name}.weight.lora_a"] = [n_in, r]
            layout[f"blk.{block}.{name}.weight.lora_b"] = [r, n_out]
    return layout


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_written_gguf_has_llama_cpps_metadata_names_and_shapes(arch, tiny_model_dir, qwen2_base, tmp_path):
    base = tiny_model_dir if arch == "gemma3" else qwen2_base
    adapter = make_adapter(base, tmp_path / "adapter", r=4, alpha=8)
    out = write_gguf_adapter(adapter, read_base_config(base), tmp_path / "adapter.gguf")
    fields, tensors = read_back(out)
    assert fields["general.architecture"] == arch
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0 and fields["alpha_type"] == gguf.GGUFValueType.FLOAT32
    base_config = json.loads((base / "config.json").read_text())
    assert {name: [int(d) for d in t.shape] for name, t in tensors.items()} == expected_layout(base_config, 4)
    assert {t.tensor_type for t in tensors.values()} == {gguf.GGMLQuantizationType.F16}


@pytest.mark.parametrize("rslora", [False, True])
def test_llama_cpps_update_equals_peft_update(rslora, qwen2_base, tmp_path):
    r, alpha = 4, 8
    adapter = make_adapter(qwen2_base, tmp_path / "adapter", r=r, alpha=alpha, rslora=rslora,
                           targets=["q_proj", "down_proj"])
    out = write_gguf_adapter(adapter, read_base_config(qwen2_base), tmp_path / "adapter.gguf")
    fields, tensors = read_back(out)
    assert set(tensors) == {f"blk.{b}.{n}.weight.lora_{x}" for b in (0, 1) for n in ("attn_q", "ffn_down")
                            for x in "ab"}
    lora = load_file(adapter / "adapter_model.safetensors")
    for hf, gg in (("self_attn.q_proj", "attn_q"), ("mlp.down_proj", "ffn_down")):
        a = lora[f"base_model.model.model.layers.1.{hf}.lora_A.weight"]
        b = lora[f"base_model.model.model.layers.1.{hf}.lora_B.weight"]
        peft_scale = alpha / (r ** 0.5 if rslora else r)
        peft_delta = peft_scale * (b @ a)
        ga = torch.from_numpy(tensors[f"blk.1.{gg}.weight.lora_a"].data.astype("float32"))
        gb = torch.from_numpy(tensors[f"blk.1.{gg}.weight.lora_b"].data.astype("float32"))
        llama_cpp_delta = fields["adapter.lora.alpha"] / gb.shape[1] * (gb @ ga)  # rank = lora_b's ne[0]
        assert torch.allclose(llama_cpp_delta, peft_delta, rtol=2e-3, atol=2e-4)
        assert not torch.allclose(peft_delta, torch.zeros_like(peft_delta))


def test_what_llama_cpp_cannot_load_is_refused_with_the_reason(tiny_model_dir, tiny_llama_dir, tmp_path):
    gemma = read_base_config(tiny_model_dir)
    assert why_not_gguf(gemma, {"peft_type": "LORA", "target_modules": ["q_proj"]}) is None
    assert "DoRA" in why_not_gguf(gemma, {"peft_type": "LORA", "use_dora": True})
    assert "modules_to_save" in why_not_gguf(gemma, {"peft_type": "LORA", "modules_to_save": ["lm_head"]})
    assert "embeddings or the output head" in why_not_gguf(gemma, {"peft_type": "LORA", "target_modules": ["q_proj", "embed_tokens"]})
    assert "'llama'" in why_not_gguf(read_base_config(tiny_llama_dir), {"peft_type": "LORA"})
    adapter = make_adapter(tiny_model_dir, tmp_path / "a", targets=["q_proj", "embed_tokens"])
    with pytest.raises(GgufAdapterUnsupported, match="embeddings"):
        write_gguf_adapter(adapter, gemma, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
