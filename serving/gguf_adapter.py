"""Write a PEFT LoRA adapter as a GGUF adapter file, the form llama.cpp (and so Ollama's `ADAPTER`)
loads for any architecture it runs, instead of merging and publishing a whole model per version.

The layout is llama.cpp's (`convert_lora_to_gguf.py` writes it, `llama-adapter.cpp` reads it):
metadata `general.architecture` (the base's GGUF architecture: the loader refuses a mismatch),
`general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (float32); per adapted
weight two tensors named after the base tensor in GGUF naming, `blk.0.attn_q.weight.lora_a` and
`.lora_b`. llama.cpp applies `scale = alpha / rank` with rank = lora_b's first dimension, and
requires lora_a's dims (ne) to be [n_in, rank] and lora_b's [rank, n_out]: exactly PEFT's
`lora_A` (rank x in) and `lora_B` (out x rank) in numpy's row-major order, so no transpose.

Only architectures whose Hugging Face -> GGUF conversion renames linear weights without changing
them get an adapter here (Gemma 3, Qwen 2/2.5); Llama's q/k are permuted on conversion, and Llama
already goes through Ollama's safetensors adapter import. PEFT's per-module scale (rsLoRA's
alpha/sqrt(r), rank_pattern, alpha_pattern) is folded into lora_b so llama.cpp's alpha/rank gives
the same update. Anything llama.cpp cannot express (DoRA, whole saved modules, embeddings or the
output head) raises `GgufAdapterUnsupported` so the caller can publish a merged model instead.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: HF `model_type` -> GGUF architecture, for bases whose linear weights convert by renaming only.
GGUF_ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
}
#: PEFT modules adapter files do not map (llama.cpp and Ollama's converter alike): merged instead.
UNSUPPORTED_TARGETS = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")
# Prefixes PEFT and multimodal wrappers put before the text model's own tensor names.
_PREFIXES = (("base_model.model.", ""), ("model.language_model.", "model."), ("language_model.model.", "model."))
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


class GgufAdapterUnsupported(ValueError):
    """This adapter or base cannot be written as a llama.cpp LoRA: the message says why."""


def gguf_architecture(base_config: dict[str, Any]) -> gguf.MODEL_ARCH | None:
    return GGUF_ARCHITECTURES.get(str(base_config.get("model_type", "")))


def why_not_gguf(base_config: dict[str, Any], adapter_config: dict[str, Any]) -> str | None:
    """None when `write_gguf_adapter` can write this adapter for this base; else the reason."""
    model_type = str(base_config.get("model_type", ""))
    if gguf_architecture(base_config) is None:
        return f"no GGUF adapter layout is known here for {model_type!r} bases (only {sorted(GGUF_ARCHITECTURES)})"
    return adapter_problem(adapter_config)


def adapter_problem(adapter_config: dict[str, Any]) -> str | None:
    """None for a plain LoRA on linear layers, the only kind an adapter file can carry (a GGUF LoRA
    here, Ollama's safetensors import too); else what makes it need merging."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        return f"only LoRA adapters load as adapter files, not {adapter_config.get('peft_type')}"
    if adapter_config.get("use_dora"):
        return "the adapter is DoRA (magnitude vectors), which a LoRA adapter file cannot carry"
    if adapter_config.get("modules_to_save"):
        return "the adapter saves whole modules (modules_to_save), which a LoRA adapter file cannot carry"
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if any(module in str(t) for t in targets for module in UNSUPPORTED_TARGETS):
        return "the adapter targets embeddings or the output head, which adapter files do not map"
    return None


def write_gguf_adapter(adapter_dir: str | Path, base_config: dict[str, Any], out_path: str | Path) -> Path:
    """Write `adapter_dir`'s LoRA as a GGUF adapter at `out_path` (float16 tensors); returns the path.

    base_config: the base model's config.json (its model_type picks the GGUF architecture and its
    layer count the tensor name table). Raises GgufAdapterUnsupported when it cannot be expressed.
    """
    from safetensors.torch import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    reason = why_not_gguf(base_config, config)
    if reason:
        raise GgufAdapterUnsupported(reason)
    weights_file = adapter_dir / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {ADAPTER_WEIGHTS} (the trainer saves it; retrain).")
    arch = gguf_architecture(base_config)
    text_config = base_config.get("text_config") or base_config
    names = gguf.get_tensor_name_map(arch, int(text_config["num_hidden_layers"]))

    pairs = _lora_pairs(load_file(str(weights_file)))
    alpha = float(config.get("lora_alpha") or config.get("r") or 1)
    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for module, (lora_a, lora_b) in sorted(pairs.items()):
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise GgufAdapterUnsupported(f"llama.cpp has no {gguf.MODEL_ARCH_NAMES[arch]} tensor for {module}")
        rank = lora_a.shape[0]
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_b.shape[1] != rank:
            raise GgufAdapterUnsupported(f"{module}: lora_A {tuple(lora_a.shape)} and lora_B "
                                         f"{tuple(lora_b.shape)} are not a rank-{rank} pair")
        factor = _peft_scale(config, module, rank) / (alpha / rank)
        a = lora_a.float().numpy()
        b = lora_b.float().numpy() * factor if not math.isclose(factor, 1.0) else lora_b.float().numpy()
        writer.add_tensor(f"{target}.lora_a", a.astype(np.float16))
        writer.add_tensor(f"{target}.lora_b", b.astype(np.float16))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _lora_pairs(tensors: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """HF module name (`model.layers.0.self_attn.q_proj`) -> (lora_A, lora_B)."""
    found: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name = key
        for prefix, replacement in _PREFIXES:
            if name.startswith(prefix):
                name = replacement + name[len(prefix):]
        match = _LORA_KEY.match(name)
        if match is None:
            raise GgufAdapterUnsupported(f"tensor {key!r} is not a LoRA A/B weight (llama.cpp loads only those)")
        found.setdefault(match.group("module"), {})[match.group("which")] = tensor
    missing = sorted(m for m, ab in found.items() if len(ab) != 2)
    if missing:
        raise GgufAdapterUnsupported(f"LoRA pairs without their A or B half: {', '.join(missing[:3])}")
    if not found:
        raise GgufAdapterUnsupported("the adapter holds no LoRA tensors")
    return {module: (ab["A"], ab["B"]) for module, ab in found.items()}


def _peft_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """The factor PEFT multiplies B·A by for `module` (rsLoRA, rank and alpha patterns included)."""
    alpha = float(config.get("lora_alpha") or rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):  # PEFT's own matching rule
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
