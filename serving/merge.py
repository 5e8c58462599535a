"""Fold a PEFT LoRA adapter into its base model and write a full Hugging Face folder.

Ollama converts Safetensors adapters only for llama and gemma2 bases; for the others (Gemma 3,
Qwen2) the trained version is published as a whole model: base + adapter merged with
`merge_and_unload`, saved as 16-bit safetensors with the tokenizer, ready to upload as `files`.
The merge runs on CPU in float32 (exact), then casts: bf16 for Gemma (fp16 overflows its
activations) and for bases stored in bf16, fp16 otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"


def read_base_config(base_model: str | Path) -> dict:
    """The base model's config.json as a dict (a local folder, or a cached hub id offline)."""
    path = Path(base_model)
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(base_model)).to_dict()
    except OSError as e:
        raise FileNotFoundError(
            f"base model {base_model!r} is neither a folder with config.json nor a cached model id: {e}"
        ) from None


def serving_dtype(base_config: dict) -> torch.dtype:
    stored = str(base_config.get("dtype") or base_config.get("torch_dtype") or "")
    if "bfloat16" in stored or str(base_config.get("model_type", "")).startswith("gemma"):
        return torch.bfloat16
    return torch.float16


def merge_adapter(
    adapter_dir: str | Path, base_model: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write base+adapter to `out_dir` (config, safetensors weights, tokenizer); returns out_dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(
            f"{adapter_dir} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing "
            f"(point the version's adapter_path at the folder save_pretrained wrote)."
        )
    dtype = dtype or serving_dtype(read_base_config(base_model))
    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32, device_map="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    # The adapter folder's tokenizer wins: it carries the chat template training used.
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_model
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(out_dir))
    return out_dir
