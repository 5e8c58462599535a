"""The training plan: every machine-dependent choice of a run, made in one place from one memory estimate.

`plan(cfg, model_config, machine)` reads the run's `TrainConfig` (plain data), the base model's
config and what the machine has (`Machine.detect()`, or a `Machine` a test writes down) and decides:
- device and dtype: CUDA when there (unless `device="cpu"`), bf16 where the GPU supports it, fp32
  otherwise (fp16 is never used: Gemma 3 overflows in it);
- the data layout: on CUDA with bf16, conversations are packed into fixed rows of `row_len` tokens
  (the step's token budget: batch x mean length, rounded up to 64, at least `max_length`) with
  per-conversation attention (trainer/packing.py): no padding work, one static shape;
- QLoRA (`qlora="auto"`): only when even with gradient checkpointing the bf16 LoRA run does not fit
  the GPU (`FIT_FRACTION` of it) and bitsandbytes is installed;
- gradient checkpointing: only when the estimated peak without it exceeds the budget; when the
  budget leaves room for some layers' activations, only the other layers recompute theirs
  ("partial" checkpointing);
- the optimizer: paged 8-bit AdamW with QLoRA (memory is the point), fused AdamW on CUDA, AdamW on CPU;
- torch.compile of each decoder block for packed runs long enough to earn the compile back;
- Liger's fused kernels only with `liger="on"`: they measured slower here.
The checkpointing budget is 85 % of the GPU, or 95 % of `memory_cap_gib` (the cap bounds what
torch allocates). Every estimate is trainer/estimate.py's. The defaults follow the H100 measurements in
bench/RESULTS.md. On the CPU nothing memory-related is decided (memory is not the constraint).

trainer/speed.py turns the plan into SFTConfig arguments and installs what needs the built trainer.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from trainer.estimate import (GiB, activation_bytes_per_token_layer, checkpointed_bytes_per_token_layer,
                              estimate_for_shape, model_shape, per_gpu_bytes)
from trainer.packing import ATTN_IMPLEMENTATION, static_row_len

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.estimate import ModelShape

#: A run fits a GPU when its estimate (with checkpointing) is within this share of the GPU's memory (or of
#: `memory_cap_gib`): below it QLoRA stays off, and trainer/launch.py picks the multi-GPU strategy by it.
FIT_FRACTION = 0.9
#: Share of the GPU's memory the estimate may use before checkpointing turns on (allocator fragmentation,
#: CUDA context, workspaces): tighter than FIT_FRACTION, as checkpointing costs less than a 4-bit base.
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
class Machine:
    """What the machine offers a run: the only input of `plan` that is not written in a file."""

    cuda: bool
    bf16_supported: bool = False
    #: Memory of one GPU (bytes); None without CUDA.
    gpu_total_bytes: int | None = None
    bitsandbytes: bool = False
    liger: bool = False
    #: GPUs the base's weights are split over (FSDP); 1 when every GPU holds the whole base.
    weight_shards: int = 1

    @classmethod
    def detect(cls, weight_shards: int = 1) -> "Machine":
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported(),
                   gpu_total_bytes=torch.cuda.get_device_properties(0).total_memory if cuda else None,
                   bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
                   liger=importlib.util.find_spec("liger_kernel") is not None, weight_shards=weight_shards)


@dataclass(frozen=True)
class Plan:
    """What `plan` chose for this machine, with the reasons in words (for the run's log and its tests)."""

    device: str
    bf16: bool
    qlora: bool
    gradient_checkpointing: bool
    optim: str
    attn_implementation: str
    reasons: list[str]
    packing: bool = False
    #: Tokens of one packed row (None without packing).
    row_len: int | None = None
    #: With checkpointing on: how many of the first layers keep their activations (0 = all recompute).
    layers_without_checkpointing: int = 0
    use_liger: bool = False
    #: torch.compile each decoder block (static packed rows: one shape).
    compile: bool = False
    #: The GPU memory the run may fill (GiB; the GPU or `memory_cap_gib`); None on the CPU.
    budget_gib: float | None = None
    estimate_gib: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_budget_gib(gpu_total_bytes: float, memory_cap_gib: float | None) -> float:
    """The GPU memory a run may fill (GiB): the GPU's, or `memory_cap_gib` when that is smaller."""
    gib = gpu_total_bytes / GiB
    return gib if memory_cap_gib is None else min(gib, memory_cap_gib)


def usable_gib(capacity_gib: float, memory_cap_gib: float | None = None) -> float:
    """The memory an estimate may fill before checkpointing turns on (see BUDGET_FRACTION / CAP_FRACTION)."""
    if memory_cap_gib is not None and memory_cap_gib <= capacity_gib:
        return CAP_FRACTION * memory_cap_gib
    return BUDGET_FRACTION * capacity_gib


def plan(cfg: "TrainConfig", model_config, machine: Machine, *, lengths: Sequence[int] | None = None,
         total_steps: int | None = None) -> Plan:
    """Decide device, dtype, layout, QLoRA, checkpointing, optimizer and kernels for this run, per GPU:
    `cfg.per_device_batch_size` is one GPU's share. `lengths` (token lengths of some training
    conversations) size the packed rows; `total_steps` decides whether compiling pays."""
    reasons: list[str] = []
    model_type = getattr(model_config, "model_type", "") or ""
    device, bf16 = _device_and_dtype(cfg, machine)
    reasons.append(f"{'bf16' if bf16 else 'fp32'} on {device}")
    attn = cfg.attn_implementation or ("eager" if model_type.startswith("gemma") else "sdpa")
    budget_gib = gpu_budget_gib(machine.gpu_total_bytes, cfg.memory_cap_gib) if device == "cuda" else None
    memory = _Memory(cfg, model_config, machine, attn, budget_gib) if device == "cuda" else None

    # QLoRA is judged on the layout of the run without it; a 4-bit base counts as half precision (bf16 where
    # the GPU has it) and so may pack where the run without it did not: the layout is decided again after it.
    qlora = _qlora(cfg, machine, device, memory, _layout(cfg, _packs(cfg, device, bf16), lengths), reasons)
    if qlora and not bf16 and device == "cuda":
        bf16 = machine.bf16_supported
    packing = _packs(cfg, device, bf16 or qlora)
    layout = _layout(cfg, packing, lengths)
    if packing:
        reasons.append(f"packing into fixed rows of {layout.row_len} tokens ({cfg.per_device_batch_size} x mean "
                       f"length {layout.mean_len:.0f}, at least max_length) with per-conversation attention")
        attn = ATTN_IMPLEMENTATION
    checkpointing, kept, est = _checkpointing(cfg, memory, layout, qlora, reasons)
    compile_blocks = _compiles(cfg, device, packing, total_steps, reasons)
    use_liger = bool(device == "cuda" and machine.liger and model_type in LIGER_FAMILIES and not compile_blocks
                     and (cfg.liger == "on" or (cfg.liger == "auto" and LIGER_BY_DEFAULT)))
    if use_liger:
        reasons.append("liger kernels (RMSNorm, SwiGLU, RoPE)")
    return Plan(device=device, bf16=bf16, qlora=qlora, gradient_checkpointing=checkpointing,
                optim=_optimizer(cfg, device, qlora), attn_implementation=attn, reasons=reasons, packing=packing,
                row_len=layout.row_len, layers_without_checkpointing=kept, use_liger=use_liger,
                compile=compile_blocks, budget_gib=budget_gib, estimate_gib={k: round(v, 3) for k, v in est.items()})


def _qlora(cfg: "TrainConfig", machine: Machine, device: str, memory: "_Memory | None", layout: "_Layout",
           reasons: list[str]) -> bool:
    """A 4-bit base: when configured, or ('auto') when even a checkpointed bf16 run does not fit the GPU."""
    if cfg.qlora == "on":
        if device != "cuda":
            raise RuntimeError("QLoRA (GUILDTUNE_QLORA=on) needs a CUDA GPU; set it to auto or off on a CPU.")
        if not machine.bitsandbytes:
            raise RuntimeError("QLoRA needs bitsandbytes: pip install 'guildtune[gpu]' (or bitsandbytes).")
        reasons.append("QLoRA on (configured)")
        return True
    if cfg.qlora != "auto" or memory is None or not machine.bitsandbytes:
        return False
    needed = memory.gib(layout, qlora=False, checkpointing=True)
    if needed <= FIT_FRACTION * memory.budget_gib:
        return False
    reasons.append(f"QLoRA on: bf16 LoRA needs ~{needed:.1f} GiB > {FIT_FRACTION:.0%} of {memory.budget_gib:.1f} GiB")
    return True


def _checkpointing(cfg: "TrainConfig", memory: "_Memory | None", layout: "_Layout", qlora: bool,
                   reasons: list[str]) -> tuple[bool, int, dict[str, float]]:
    """(checkpointing, layers that keep their activations, the estimates in GiB): 'auto' checkpoints only
    when the run without it exceeds the budget, and then lets the first layers that still fit keep theirs."""
    if memory is None:  # on the CPU memory is not the constraint
        on = cfg.gradient_checkpointing == "on"
        if on:
            reasons.append("gradient checkpointing on (configured)")
        return on, 0, {}
    est = {"no_checkpointing": memory.gib(layout, qlora=qlora, checkpointing=False),
           "checkpointing": memory.gib(layout, qlora=qlora, checkpointing=True)}
    kept = 0
    if cfg.gradient_checkpointing == "on":
        checkpointing = True
        reasons.append("gradient checkpointing on (configured)")
    elif cfg.gradient_checkpointing == "off":
        checkpointing = False
    else:
        usable, budget = memory.usable_gib, memory.budget_gib
        checkpointing = est["no_checkpointing"] > usable
        if checkpointing:
            per_layer = memory.layer_gib(layout)
            kept = max(0, min(memory.shape.layers - 1, int((usable - est["checkpointing"]) // per_layer)))
            reasons.append(f"gradient checkpointing on: ~{est['no_checkpointing']:.1f} GiB without it > "
                           f"{usable:.1f} GiB usable of {budget:.1f}"
                           + (f"; the first {kept} layers keep their activations" if kept else ""))
        else:
            reasons.append(f"no gradient checkpointing: ~{est['no_checkpointing']:.1f} GiB fits "
                           f"{usable:.1f} GiB usable of {budget:.1f}")
    if checkpointing:
        est["chosen"] = memory.gib(layout, qlora=qlora, checkpointing=True, kept=kept)
    return checkpointing, kept, est


def _optimizer(cfg: "TrainConfig", device: str, qlora: bool) -> str:
    if cfg.optim != "auto":
        return cfg.optim
    if qlora:
        return "paged_adamw_8bit"  # memory is the point of QLoRA
    return "adamw_torch_fused" if device == "cuda" else "adamw_torch"


def _compiles(cfg: "TrainConfig", device: str, packing: bool, total_steps: int | None, reasons: list[str]) -> bool:
    """torch.compile the blocks: packed CUDA runs (one static shape), in 'auto' only those long enough to pay."""
    if device != "cuda" or not packing:
        return False
    long_run = total_steps is None or total_steps >= COMPILE_MIN_STEPS
    if cfg.compile == "on" or (cfg.compile == "auto" and COMPILE_BY_DEFAULT and long_run):
        reasons.append("torch.compile on each decoder block (fixed packed rows: compiled once)")
        return True
    if cfg.compile == "auto" and not long_run:
        reasons.append(f"no torch.compile: {total_steps} steps are too few to earn the compile time back")
    return False


def _device_and_dtype(cfg: "TrainConfig", machine: Machine) -> tuple[str, bool]:
    if cfg.device == "cuda" and not machine.cuda:
        raise RuntimeError("GUILDTUNE_DEVICE=cuda but no CUDA GPU is visible to torch; set it to auto or cpu.")
    device = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and machine.cuda)) else "cpu"
    if cfg.precision == "bf16" and device == "cuda" and not machine.bf16_supported:
        raise RuntimeError("precision=bf16 but this GPU does not support bf16; use precision=auto or fp32.")
    if cfg.precision == "auto":
        return device, device == "cuda" and machine.bf16_supported
    return device, cfg.precision == "bf16"


def _packs(cfg: "TrainConfig", device: str, half_precision: bool) -> bool:
    return cfg.packing == "on" or (cfg.packing == "auto" and device == "cuda" and half_precision)


@dataclass(frozen=True)
class _Layout:
    """The tokens of one forward pass: `batch` rows of `seq_len` (a packed run: one row of `row_len`)."""

    seq_len: int
    batch: int
    row_len: int | None = None
    mean_len: float = 0.0


def _layout(cfg: "TrainConfig", packing: bool, lengths: Sequence[int] | None) -> _Layout:
    if not packing:
        return _Layout(seq_len=cfg.max_length, batch=cfg.per_device_batch_size)
    mean_len = (sum(min(n, cfg.max_length) for n in lengths) / len(lengths)) if lengths else cfg.max_length / 2
    row_len = max(static_row_len(mean_len, cfg.per_device_batch_size), cfg.max_length)
    row_len = int(math.ceil(row_len / 64) * 64)
    return _Layout(seq_len=row_len, batch=1, row_len=row_len, mean_len=mean_len)


class _Memory:
    """One GPU's budget, and its estimated peak for the run's variants (trainer/estimate.py), the model counted once."""

    def __init__(self, cfg: "TrainConfig", model_config, machine: Machine, attn: str, budget_gib: float):
        self.cfg, self.machine, self.attn = cfg, machine, attn
        self.budget_gib = budget_gib
        self.usable_gib = usable_gib(budget_gib, cfg.memory_cap_gib)
        self.shape: ModelShape = model_shape(model_config)
        self.label = f"config:{getattr(model_config, 'model_type', '')}"

    def gib(self, layout: _Layout, *, qlora: bool, checkpointing: bool, kept: int = 0) -> float:
        est = estimate_for_shape(self.shape, "qlora" if qlora else "lora", label=self.label,
                                 seq_len=layout.seq_len, batch_size=layout.batch, lora_r=self.cfg.lora_r,
                                 gradient_checkpointing=checkpointing, layers_without_checkpointing=kept,
                                 eager_attention=layout.row_len is None and self.attn == "eager")
        return per_gpu_bytes(est, self.machine.weight_shards) / GiB

    def layer_gib(self, layout: _Layout) -> float:
        """What keeping one more layer's activations costs over checkpointing it."""
        tokens = layout.seq_len * layout.batch
        return (activation_bytes_per_token_layer(self.shape)
                - checkpointed_bytes_per_token_layer(self.shape)) * tokens / GiB
