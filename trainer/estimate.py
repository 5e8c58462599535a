"""Peak GPU memory of a training run, estimated from the model's config (no weights are loaded).

Parameters are counted on the meta device, so a 70B config costs nothing to inspect. Formulas
(bytes; N = all parameters, N_lin = parameters of the decoder's linear layers, N_lora = adapter
parameters; see ../shared/notes/training.md):

- full  (AdamW, bf16 autocast over fp32 weights): weights 4N, gradients 4N, optimizer 8N  → 16N
- lora  (bf16 base, fp32 adapter, AdamW):          weights 2N + 4N_lora, gradients 4N_lora, optimizer 8N_lora
- qlora (nf4 + double quant linear layers, bf16 rest, paged 8-bit AdamW):
        weights 0.516·N_lin + 2·(N − N_lin) + 4N_lora, gradients 4N_lora, optimizer 2N_lora
  (bitsandbytes leaves embeddings and norms unquantized, which matters for small models: the Gemma
  3 270M is two-thirds embedding, so the notes' flat 0.52·N would be far too low.)
- activations, per layer and token, in the training dtype: what one block keeps for its backward
  (the norms' inputs and outputs 4h, q/k/v and the attention output 2·(q + 2·kv), the MLP's three wide
  tensors and its output 4·I), x 1.28 for PEFT's dtype casts around the adapters (fitted to the H100
  peak of the project's own run without checkpointing, bench/RESULTS.md), plus a·s attention
  probabilities with eager attention. With gradient checkpointing each checkpointed layer keeps only
  its input (h values), plus one layer recomputed in full; `layers_without_checkpointing` of them keep
  everything (partial checkpointing).
- logits: b·s·V·12 when the full logits are materialised — the bf16 logits (2), their fp32 copy
  for the cross-entropy (4), and both gradients (4 + 2); measured on an H100 (bench/vram_estimate.py,
  README) — or 0 when the loss is computed in chunks (TRL's default `nll` loss with a fused LM head),
  whose working set (one chunk's fp32 logits, the hidden states it reads) counts as activations.
- FSDP: `per_gpu_bytes(estimate, shards)` splits weights, gradients and optimizer state over the
  ranks; activations and the loss stay whole on every rank.

This is the one memory model of the project: `guildtune estimate`, the training plan
(trainer/plan.py) and the multi-GPU launch (trainer/launch.py) all read it.

Not counted: the CUDA context (~0.3-0.5 GiB, outside torch's allocator), allocator fragmentation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["full", "lora", "qlora"]
METHODS = ("full", "lora", "qlora")
GiB = 2**30
LOGIT_BYTES_UNCHUNKED = 12  # bf16 logits + fp32 copy for the loss + their gradients
NF4_BYTES_PER_PARAM = 0.516  # 4 bits + fp8 block scales with double quantization (64-value blocks)
PEFT_CAST_FACTOR = 1.28  # activations kept beside PEFT's dtype casts around the adapters (fitted, see above)
LOSS_CHUNK_TOKENS_MAX = 4096  # the chunked loss's fp32 logits: at most this many tokens ...
LOSS_CHUNK_VOCAB = 4096  # ... times this many vocabulary entries at a time

#: The shape of the embedded base model, for estimates before its cache exists (no need to dequantize it).
EMBEDDED_GEMMA_CONFIG: dict[str, Any] = {
    "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144,
    "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 256, "max_position_embeddings": 32768, "sliding_window": 512,
    "query_pre_attn_scalar": 256, "tie_word_embeddings": True,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak training memory, by component, in bytes."""

    model: str
    method: str
    seq_len: int
    batch: int
    checkpointing: bool
    n_params: int
    n_trainable: int
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    logits_bytes: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.logits_bytes)

    def rows(self) -> list[tuple[str, float]]:
        """(component, GiB) rows for a table, ending with the total."""
        return [("weights", self.weights_bytes / GiB), ("gradients", self.gradients_bytes / GiB),
                ("optimizer", self.optimizer_bytes / GiB), ("activations", self.activations_bytes / GiB),
                ("logits", self.logits_bytes / GiB), ("total", self.total_bytes / GiB)]


@dataclass(frozen=True)
class ModelShape:
    n_params: int
    n_linear: int  # parameters in the decoder's linear layers (what LoRA targets and nf4 quantizes)
    lora_dims: list[tuple[int, int]]  # (in, out) of every linear layer "all-linear" adapts
    layers: int
    hidden: int
    q_dim: int
    kv_dim: int
    intermediate: int
    heads: int
    vocab: int


def load_config(model: str | Path | Any, models_dir: str | Path | None = None):
    """A transformers config from a config object, a dict, a folder, a cached hub id or the embedded model."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, dict):
        data = dict(model)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    spec = str(model)
    if spec.startswith("embedded:"):
        from trainer.base_model import EMBEDDED_GEMMA, embedded_gemma_dir, is_complete

        if spec != EMBEDDED_GEMMA:
            raise ValueError(f"unknown embedded model {spec!r}; the only embedded model is {EMBEDDED_GEMMA}.")
        cached = embedded_gemma_dir(models_dir) if models_dir is not None else None
        return load_config(cached if cached is not None and is_complete(cached) else EMBEDDED_GEMMA_CONFIG)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json; point at a Hugging Face model folder.")
        return AutoConfig.from_pretrained(str(path))
    try:
        return AutoConfig.from_pretrained(spec, local_files_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the config of {spec!r}: not a folder, and not in the local Hugging Face "
                         f"cache (guildtune works offline). Download it first with `huggingface-cli download "
                         f"{spec} config.json`, or pass a folder.") from exc


def model_shape(config) -> ModelShape:
    """Count parameters by building the model on the meta device (no memory is allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    lora_dims, n_linear = [], 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            lora_dims.append((module.in_features, module.out_features))
            n_linear += module.weight.numel()
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(n_params=n_params, n_linear=n_linear, lora_dims=lora_dims, layers=text.num_hidden_layers,
                      hidden=text.hidden_size, q_dim=heads * head_dim, kv_dim=kv_heads * head_dim,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), heads=heads,
                      vocab=text.vocab_size)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def estimate_memory(model: str | Path | Any, method: Method = "lora", *, seq_len: int = 1024, batch_size: int = 8,
                    lora_r: int = 16, gradient_checkpointing: bool = False, eager_attention: bool = False,
                    chunked_loss: bool = True, activation_bytes: int = 2,
                    models_dir: str | Path | None = None) -> MemoryEstimate:
    """Estimate peak training memory for `model` (see the module docstring for the formulas).

    `models_dir` lets `embedded:gemma-3-270m` read its cached folder's config when it exists.
    """
    _check_method(method)  # before the config is read: a wrong method is named before a missing model
    label = str(model) if not hasattr(model, "model_type") else f"config:{model.model_type}"
    return estimate_for_shape(model_shape(load_config(model, models_dir)), method, label=label, seq_len=seq_len,
                              batch_size=batch_size, lora_r=lora_r, gradient_checkpointing=gradient_checkpointing,
                              eager_attention=eager_attention, chunked_loss=chunked_loss,
                              activation_bytes=activation_bytes)


def estimate_for_shape(shape: ModelShape, method: Method, *, label: str, seq_len: int, batch_size: int,
                       lora_r: int, gradient_checkpointing: bool = False, layers_without_checkpointing: int = 0,
                       eager_attention: bool = False, chunked_loss: bool = True,
                       activation_bytes: int = 2) -> MemoryEstimate:
    """`estimate_memory` for a shape already counted (the planner asks several questions of one model).

    `layers_without_checkpointing`: with checkpointing on, how many layers keep their activations."""
    batch, checkpointing = batch_size, gradient_checkpointing
    _check_method(method)
    if seq_len < 1 or batch < 1 or lora_r < 1:
        raise ValueError("seq_len, batch and lora_r must be >= 1")
    n, n_lin = shape.n_params, shape.n_linear
    n_lora = sum(lora_r * (i + o) for i, o in shape.lora_dims)
    notes: list[str] = []
    if method == "full":
        trainable = n
        weights, grads, optim = 4.0 * n, 4.0 * n, 8.0 * n
    elif method == "lora":
        trainable = n_lora
        weights, grads, optim = 2.0 * n + 4.0 * n_lora, 4.0 * n_lora, 8.0 * n_lora
    else:
        trainable = n_lora
        weights = NF4_BYTES_PER_PARAM * n_lin + 2.0 * (n - n_lin) + 4.0 * n_lora
        grads, optim = 4.0 * n_lora, 2.0 * n_lora
        notes.append(f"{(n - n_lin) / n:.0%} of the parameters (embeddings, norms) stay in bf16 under nf4")

    tokens = seq_len * batch
    full_layer = tokens * activation_bytes_per_token_layer(shape, activation_bytes)
    if eager_attention:
        full_layer += batch * shape.heads * seq_len * seq_len * activation_bytes
    if checkpointing:
        kept = min(layers_without_checkpointing, shape.layers)
        activations = (kept * full_layer
                       + (shape.layers - kept) * tokens * checkpointed_bytes_per_token_layer(shape, activation_bytes)
                       + full_layer)  # + the layer being recomputed
    else:
        activations = shape.layers * full_layer
    if chunked_loss:
        activations += (4 * min(tokens, LOSS_CHUNK_TOKENS_MAX) * LOSS_CHUNK_VOCAB
                        + 2 * tokens * shape.hidden * activation_bytes)
        logits = 0.0
        notes.append("loss computed in chunks: full logits never materialised")
    else:
        logits = float(tokens) * shape.vocab * LOGIT_BYTES_UNCHUNKED
    return MemoryEstimate(model=label, method=method, seq_len=seq_len, batch=batch, checkpointing=checkpointing,
                          n_params=n, n_trainable=trainable, weights_bytes=weights, gradients_bytes=grads,
                          optimizer_bytes=optim, activations_bytes=float(activations), logits_bytes=logits,
                          notes=notes)


def activation_bytes_per_token_layer(shape: ModelShape, activation_bytes: int = 2) -> int:
    """Bytes one block keeps per token for its backward (see the module docstring: x 1.28 for PEFT's casts,
    fitted to the H100 peak without checkpointing, 7.41 GiB measured vs 6.3 from the shapes alone)."""
    return int(PEFT_CAST_FACTOR * activation_bytes
               * (4 * shape.hidden + 2 * (shape.q_dim + 2 * shape.kv_dim) + 4 * shape.intermediate))


def checkpointed_bytes_per_token_layer(shape: ModelShape, activation_bytes: int = 2) -> int:
    """Bytes a checkpointed block keeps per token: only its input (h values); the rest is recomputed."""
    return shape.hidden * activation_bytes


def per_gpu_bytes(est: MemoryEstimate, shards: int) -> float:
    """Peak bytes on each GPU when weights, gradients and optimizer state are split over `shards` ranks
    (FSDP); activations and the loss's logits stay whole on every rank (each trains its own rows)."""
    state = est.weights_bytes + est.gradients_bytes + est.optimizer_bytes
    return state / shards + est.activations_bytes + est.logits_bytes
