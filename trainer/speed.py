"""The fast training configuration for this machine, chosen by the GPU's memory (issue 7).

`choose_speed(cfg, plan, model_config, lengths)` decides, on top of `TrainConfig.plan` (device,
dtype, QLoRA, optimizer):
- packing: on CUDA with bf16/fp16, conversations are packed into fixed rows of `row_len` tokens
  (the step's token budget: batch x mean length, rounded up to 64) with per-conversation
  attention (trainer/packing.py) instead of padded batches: no padding work, one static shape;
- gradient checkpointing: only when the estimated peak without it exceeds the memory budget
  (the GPU's memory, or `memory_cap_gib`); when the cap leaves room for some layers' activations,
  only the other layers recompute theirs ("partial" checkpointing);
- torch.compile of each decoder block (packed rows have one static shape: it compiles once);
- fused AdamW on CUDA (the plan's `paged_adamw_8bit` stays with QLoRA, where memory is the point);
- Liger's fused RMSNorm/SwiGLU/RoPE kernels only with `liger="on"`: they measured slower here;
- the loss: TRL's fused, chunked LM head (`trl>=1.16` always; never the full logits).
The defaults follow the H100 measurements in bench/RESULTS.md.
On the CPU nothing changes unless `packing="on"` (then the masked reference attention runs).

`sft_overrides(choice)` turns the choice into SFTConfig keyword arguments and `install(trainer,
choice, pad_id)` applies the parts that need the built trainer (fixed-row collator, partial
checkpointing). The estimates are first-order (bytes per token per layer from the layer shapes);
bench/RESULTS.md compares them with measured peaks.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from trainer.packing import ATTN_IMPLEMENTATION, StaticRowCollator, register_varlen_attention, static_row_len

if TYPE_CHECKING:
    from trainer.config import Plan, TrainConfig

GIB = 2**30
#: Share of the GPU's memory the estimate may use (allocator fragmentation, CUDA context, workspaces).
BUDGET_FRACTION = 0.85
#: Share of an explicit `memory_cap_gib` the estimate may use: the cap bounds what torch allocates.
CAP_FRACTION = 0.95
#: Measured on an H100 (bench/RESULTS.md): with packed varlen rows and no checkpointing, liger's
#: RMSNorm/SwiGLU/RoPE kernels were slower than PyTorch's (median 13.8k vs 15.6k tok/s), so 'auto' leaves them off.
LIGER_BY_DEFAULT = False
#: Whether 'auto' compiles the decoder blocks on CUDA with packing. Measured on an H100 (bench/RESULTS.md):
#: median step 0.123 s vs 0.189 s eager (21.8k vs 14.2k tok/s), QLoRA 9.3k vs 6.3k.
COMPILE_BY_DEFAULT = True
#: ... but only for runs long enough to earn the compile back. Measured on an H100 (bench/time_to_learn.py,
#: Gemma 3 270M shape, 112 steps): first step 23.9 s compiled vs 3.1 s eager, then 0.10 vs 0.19 s a step,
#: so compiling pays from about 230 steps on.
COMPILE_MIN_STEPS = 250
#: Families whose layer kernels liger-kernel patches (see liger_kernel.transformers.monkey_patch).
LIGER_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3"}


@dataclass(frozen=True)
class SpeedChoice:
    """What `choose_speed` decided, with the reasons in words (for the run's log and tests)."""

    packing: bool
    row_len: int | None
    attn_implementation: str
    gradient_checkpointing: bool
    #: With checkpointing on: how many of the first layers keep their activations (0 = all recompute).
    layers_without_checkpointing: int
    optim: str
    use_liger: bool
    #: torch.compile each decoder block (static packed rows: one shape).
    compile: bool
    budget_gib: float | None
    estimate_gib: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Memory estimate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only model that set training memory."""

    n_params: int
    n_embed_params: int
    layers: int
    hidden: int
    intermediate: int
    q_dim: int
    kv_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> "Shape":
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        h, inter, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or h // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        per_layer = h * (q_dim + 2 * kv_dim) + q_dim * h + 3 * h * inter + 2 * h
        embed = c.vocab_size * h
        tied = getattr(c, "tie_word_embeddings", True)
        n = layers * per_layer + embed * (1 if tied else 2) + h
        return cls(n, embed * (1 if tied else 2), layers, h, inter, q_dim, kv_dim, c.vocab_size)

    def lora_params(self, r: int) -> int:
        """LoRA parameters on every linear layer of every block (q, k, v, o, gate, up, down)."""
        h, i = self.hidden, self.intermediate
        per_layer = r * ((h + self.q_dim) + 2 * (h + self.kv_dim) + (self.q_dim + h) + 2 * (h + i) + (i + h))
        return self.layers * per_layer

    def activation_bytes_per_token_layer(self) -> int:
        """Bytes one block keeps for its backward: norms' in/outs, q/k/v/attn out, MLP's 3 wide ones (bf16),
        x 1.28 for PEFT's dtype casts around the adapters (fitted to the H100 peak without checkpointing,
        7.41 GiB measured vs 6.3 from the shapes alone; bench/RESULTS.md)."""
        return int(1.28 * 2 * (4 * self.hidden + 2 * (self.q_dim + 2 * self.kv_dim) + 4 * self.intermediate))


def estimate_peak_bytes(shape: Shape, tokens: int, *, lora_r: int, checkpointing: bool, qlora: bool,
                        layers_without_checkpointing: int = 0, weight_shards: int = 1) -> int:
    """Peak training memory of one GPU (weights, LoRA state, activations, loss chunk) for `tokens` per step;
    under FSDP the weights and the LoRA state are split over `weight_shards` GPUs, activations are not."""
    linear = shape.n_params - shape.n_embed_params
    weights = (2 * shape.n_embed_params + (int(0.53 * linear) if qlora else 2 * linear)) // weight_shards
    lora = 16 * shape.lora_params(lora_r) // weight_shards  # fp32 weight, grad, two Adam moments
    act = shape.activation_bytes_per_token_layer() * tokens
    ckpt = 2 * shape.hidden * tokens
    if checkpointing:
        kept = min(layers_without_checkpointing, shape.layers)
        activations = kept * act + (shape.layers - kept) * ckpt + act  # + the layer being recomputed
    else:
        activations = shape.layers * act
    loss_chunk = 4 * min(tokens, 4096) * 4096 + 2 * tokens * shape.hidden * 2  # chunked LM head
    return int(weights + lora + activations + loss_chunk)


# ---------------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------------
def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def choose_speed(cfg: "TrainConfig", plan: "Plan", model_config, lengths: Sequence[int] | None = None, *,
                 gpu_total_bytes: int | None = None, total_steps: int | None = None,
                 weight_shards: int = 1) -> SpeedChoice:
    """Decide packing, attention, checkpointing, optimizer and kernels for this run (see module doc), per GPU:
    `cfg.per_device_batch_size` is one GPU's share; `weight_shards` > 1 under FSDP."""
    reasons: list[str] = []
    model_type = getattr(model_config, "model_type", "") or ""
    shape = Shape.from_config(model_config)
    cuda = plan.device == "cuda"

    packing = wants_lengths(cfg, plan)
    row_len = None
    per_step = cfg.per_device_batch_size
    if packing:
        mean_len = (sum(min(n, cfg.max_length) for n in lengths) / len(lengths)) if lengths else cfg.max_length / 2
        row_len = max(static_row_len(mean_len, per_step), cfg.max_length)
        row_len = int(math.ceil(row_len / 64) * 64)
        reasons.append(f"packing into fixed rows of {row_len} tokens ({per_step} x mean length {mean_len:.0f}, "
                       f"at least max_length) with per-conversation attention")
        attn = register_varlen_attention()
        tokens = row_len
    else:
        attn = plan.attn_implementation
        tokens = per_step * cfg.max_length

    budget_gib = None
    if cuda:
        total = gpu_total_bytes
        if total is None:
            import torch

            total = torch.cuda.get_device_properties(0).total_memory
        budget_gib = total / GIB
        if cfg.memory_cap_gib is not None:
            budget_gib = min(budget_gib, cfg.memory_cap_gib)
    est = {
        "no_checkpointing": estimate_peak_bytes(shape, tokens, lora_r=cfg.lora_r, checkpointing=False,
                                                qlora=plan.qlora, weight_shards=weight_shards) / GIB,
        "checkpointing": estimate_peak_bytes(shape, tokens, lora_r=cfg.lora_r, checkpointing=True,
                                             qlora=plan.qlora, weight_shards=weight_shards) / GIB,
    }
    kept = 0
    if cfg.gradient_checkpointing == "on":
        checkpointing = True
        reasons.append("gradient checkpointing on (configured)")
    elif cfg.gradient_checkpointing == "off":
        checkpointing = False
    elif budget_gib is None:
        checkpointing = False  # CPU: memory is not the constraint here
    else:
        usable = (CAP_FRACTION if cfg.memory_cap_gib is not None and cfg.memory_cap_gib <= budget_gib
                  else BUDGET_FRACTION) * budget_gib
        checkpointing = est["no_checkpointing"] > usable
        if checkpointing:
            per_layer = (shape.activation_bytes_per_token_layer() - 2 * shape.hidden) * tokens / GIB
            kept = max(0, min(shape.layers - 1, int((usable - est["checkpointing"]) // per_layer)))
            reasons.append(f"gradient checkpointing on: ~{est['no_checkpointing']:.1f} GiB without it > "
                           f"{usable:.1f} GiB usable of {budget_gib:.1f}"
                           + (f"; the first {kept} layers keep their activations" if kept else ""))
        else:
            reasons.append(f"no gradient checkpointing: ~{est['no_checkpointing']:.1f} GiB fits "
                           f"{usable:.1f} GiB usable of {budget_gib:.1f}")
    if checkpointing:
        est["chosen"] = estimate_peak_bytes(shape, tokens, lora_r=cfg.lora_r, checkpointing=True, qlora=plan.qlora,
                                            layers_without_checkpointing=kept, weight_shards=weight_shards) / GIB

    optim = plan.optim
    if cuda and cfg.optim == "auto" and not plan.qlora:
        optim = "adamw_torch_fused"
    compile_mode = getattr(cfg, "compile", "auto")
    long_run = total_steps is None or total_steps >= COMPILE_MIN_STEPS
    compile_blocks = cuda and packing and (compile_mode == "on" or (compile_mode == "auto" and COMPILE_BY_DEFAULT
                                                                   and long_run))
    if compile_blocks:
        reasons.append("torch.compile on each decoder block (fixed packed rows: compiled once)")
    elif cuda and packing and compile_mode == "auto" and not long_run:
        reasons.append(f"no torch.compile: {total_steps} steps are too few to earn the compile time back")
    liger_mode = getattr(cfg, "liger", "auto")
    use_liger = bool(cuda and liger_available() and model_type in LIGER_FAMILIES and not compile_blocks
                     and (liger_mode == "on" or (liger_mode == "auto" and LIGER_BY_DEFAULT)))
    if use_liger:
        reasons.append("liger kernels (RMSNorm, SwiGLU, RoPE)")
    return SpeedChoice(packing=packing, row_len=row_len, attn_implementation=attn,
                       gradient_checkpointing=checkpointing, layers_without_checkpointing=kept, optim=optim,
                       use_liger=use_liger, compile=compile_blocks, budget_gib=budget_gib, estimate_gib={k: round(v, 3) for k, v in est.items()},
                       reasons=reasons)


def wants_lengths(cfg: "TrainConfig", plan: "Plan") -> bool:
    """Whether `choose_speed` will pack (and so needs the conversations' token lengths)."""
    mode = {True: "on", False: "off"}.get(cfg.packing, cfg.packing)
    return mode == "on" or (mode == "auto" and plan.device == "cuda" and (plan.bf16 or plan.qlora))


def sample_lengths(train_ds, tokenizer, max_rows: int = 512) -> list[int]:
    """Token lengths of up to `max_rows` evenly spread training conversations (sizes the packed rows)."""
    n = len(train_ds)
    idx = sorted({int(i * n / max_rows) for i in range(min(n, max_rows))})
    sample = train_ds.select(idx)
    if "input_ids" in sample.column_names:
        return [len(ids) for ids in sample["input_ids"]]
    return [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
            for m in sample["messages"]]


def sft_overrides(choice: SpeedChoice) -> dict[str, Any]:
    """SFTConfig keyword arguments for the choice (they replace the plain plan's)."""
    flag, flag_kwargs = checkpointing_arg_names()
    kw: dict[str, Any] = {flag: choice.gradient_checkpointing, "optim": choice.optim,
                          "use_liger_kernel": choice.use_liger}
    if choice.gradient_checkpointing:
        kw[flag_kwargs] = {"use_reentrant": False}
    if choice.packing:
        kw.update(packing=True, packing_strategy="bfd", padding_free=True, max_length=choice.row_len,
                  per_device_train_batch_size=1, pad_to_multiple_of=None)
    return kw


def checkpointing_arg_names() -> tuple[str, str]:
    """TrainingArguments' names for checkpointing: transformers >= 5.2x says `activation_checkpointing`
    (the old name is a deprecated alias), earlier 5.x only knows `gradient_checkpointing`."""
    from trl import SFTConfig

    fields = SFTConfig.__dataclass_fields__
    if "activation_checkpointing" in fields:
        return "activation_checkpointing", ("activation_checkpointing_kwargs"
                                            if "activation_checkpointing_kwargs" in fields
                                            else "gradient_checkpointing_kwargs")
    return "gradient_checkpointing", "gradient_checkpointing_kwargs"


def score_labelled_positions_only() -> bool:
    """Make TRL's fused LM head project only the positions that have a label on every device.

    TRL scores only labelled positions on Triton devices and every position elsewhere (static tile
    shapes for compiled back-ends). On the CPU the LM head is most of a step for large vocabularies
    (Gemma's 262k tokens: 168M of the 270M model's weights) while only the answers carry labels, so
    scoring them alone gives the same loss and gradients for a fraction of the work (bench/cpu_step.py).
    Returns whether TRL has the hook this relies on (if not, training is unchanged, only slower)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if not hasattr(original, "trl_original"):
        def compact(device) -> bool:
            return device.type == "cpu" or original(device)

        compact.trl_original = original
        trl_utils._use_triton = compact
    return True


def install(trainer, choice: SpeedChoice, pad_token_id: int) -> None:
    """Apply what needs the built trainer: fixed-length packed rows and partial checkpointing."""
    score_labelled_positions_only()
    if choice.packing:
        segments = None
        if choice.compile:  # one boundary-list length for the whole run: the most any packed row has, + padding
            seq_lengths = trainer.train_dataset["seq_lengths"] if "seq_lengths" in trainer.train_dataset.column_names \
                else [[0] * 15]
            segments = max(len(s) for s in seq_lengths) + 1
        trainer.data_collator = StaticRowCollator(trainer.data_collator, row_len=choice.row_len,
                                                  pad_token_id=pad_token_id, static_segments=segments)
    if choice.compile:
        compile_blocks(trainer.model)
    if choice.gradient_checkpointing and choice.layers_without_checkpointing:
        trainer.add_callback(_PartialCheckpointing(choice.layers_without_checkpointing))


def compile_blocks(model) -> int:
    """torch.compile every decoder block in place ("regional" compilation: the blocks share one graph)."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(blocks) + 8)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 16 * len(blocks) + 64)
    for block in blocks:
        block.compile()
    return len(blocks)


def _PartialCheckpointing(n_free: int):
    from transformers import TrainerCallback

    class PartialCheckpointing(TrainerCallback):
        """After the Trainer turns checkpointing on everywhere, let the first `n_free` blocks keep activations."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from transformers.modeling_layers import GradientCheckpointingLayer

            blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
            for block in blocks[:n_free]:
                block.gradient_checkpointing = False

    return PartialCheckpointing()


__all__ = ["ATTN_IMPLEMENTATION", "SpeedChoice", "Shape", "choose_speed", "estimate_peak_bytes", "install",
           "sample_lengths", "sft_overrides", "wants_lengths"]
