"""Padding-free packing that keeps packed conversations apart, with fixed-size rows.

Why: a batch of 8 conversations padded to the longest wastes over half of the GPU's work on our
length distribution (lognormal, median 250, max 1024). Packing several conversations into one row
removes the padding, but only stays correct if no token can attend to a token of another
conversation ("cross-contamination") and positions restart at 0 for each conversation.

How:
- TRL packs (`packing=True`, strategy `bfd`) and its collator emits one flattened row with
  `position_ids` that restart per conversation, labels with the first token of each conversation
  masked, and `cu_seq_lens_*` (the conversation boundaries).
- `StaticRowCollator` wraps that collator and pads the row to a fixed length (`row_len`) as one
  extra, label-free segment, so every step has the same shape (no recompiles, no allocator churn).
- `varlen_attention` (registered in transformers as ATTN_IMPLEMENTATION) reads `cu_seq_lens_q/k`
  and runs one attention per segment: on CUDA with bf16/fp16 through PyTorch's own flash-attention
  varlen kernel (`aten._flash_attention_forward`, no extra package), elsewhere through a masked
  reference (block-diagonal causal mask) that computes the same function. Either way, a token
  only sees earlier tokens of its own conversation. tests/test_packing.py proves it on CPU:
  per-example losses of a packed row equal those of the examples run one by one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

#: Name under which `varlen_attention` is registered in transformers' attention registry.
ATTN_IMPLEMENTATION = "guildtune_varlen"

_REGISTERED = False


# ---------------------------------------------------------------------------------------------
# Segment bookkeeping
# ---------------------------------------------------------------------------------------------
def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Boundaries (int32, [n_segments + 1]) of a flattened row whose positions restart at 0 per segment."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    end = torch.tensor([flat.numel()], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Segment index of each of `total` tokens, given boundaries `cu_seqlens`."""
    tokens = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64).contiguous(), tokens, right=True)


def static_row_len(mean_len: float, per_step: int, multiple: int = 64) -> int:
    """Tokens per packed row: `per_step` conversations of mean length, rounded up to `multiple`."""
    return int(math.ceil(per_step * mean_len / multiple) * multiple)


# ---------------------------------------------------------------------------------------------
# Collator: fixed-length rows
# ---------------------------------------------------------------------------------------------
@dataclass
class StaticRowCollator:
    """Wrap TRL's padding-free collator so every packed row has exactly `row_len` tokens.

    The tail padding becomes one more segment (positions 0..k-1, labels -100), so it attends only
    to itself and never to a real conversation; `cu_seq_lens_*` include it. `max_length_*` is the
    longest real segment (the kernel's tile count). Rows longer than `row_len` are refused: the
    packer was given a larger budget than the collator, which is a configuration bug.
    """

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]
    row_len: int
    pad_token_id: int
    #: For compiled blocks: report max_length = row_len (a constant) and pad the boundary list with
    #: empty segments to this many segments (a multiple of it for a rare longer row), so shapes and
    #: constants repeat from step to step and nothing recompiles.
    static_segments: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner(examples)
        ids = out["input_ids"]
        if ids.dim() != 2 or ids.size(0) != 1 or "position_ids" not in out:
            raise ValueError("StaticRowCollator expects TRL's padding-free output (one flattened row with "
                             "position_ids); enable packing/padding_free in the SFT config")
        n = ids.size(1)
        if n > self.row_len:
            raise ValueError(f"packed row has {n} tokens but row_len is {self.row_len}: set the packing "
                             "budget (max_length) to the same row length")
        pad = self.row_len - n
        if pad:
            out["input_ids"] = torch.cat([ids, ids.new_full((1, pad), self.pad_token_id)], dim=1)
            out["labels"] = torch.cat([out["labels"], out["labels"].new_full((1, pad), -100)], dim=1)
            pos = out["position_ids"]
            out["position_ids"] = torch.cat([pos, torch.arange(pad, dtype=pos.dtype)[None]], dim=1)
        # The first token of each conversation has no in-conversation predecessor: never a target.
        out["labels"][out["position_ids"] == 0] = -100
        cu = cu_seqlens_from_position_ids(out["position_ids"])
        longest = int(cu.diff().max())
        if self.static_segments:
            n_seg = cu.numel() - 1
            target = max(1, -(-n_seg // self.static_segments)) * self.static_segments
            cu = torch.cat([cu, cu[-1:].expand(target - n_seg)])  # empty segments attend to nothing
            longest = self.row_len
        out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = cu
        out["max_length_q"] = out["max_length_k"] = longest
        if "seq_idx" in out:  # only linear-attention layers read it; keep it consistent with the padding
            out["seq_idx"] = segment_ids(cu, self.row_len).to(torch.int32)[None]
        out.pop("attention_mask", None)
        return out


# ---------------------------------------------------------------------------------------------
# Attention: flash varlen on CUDA, masked reference elsewhere
# ---------------------------------------------------------------------------------------------
class _FlashVarlen(torch.autograd.Function):
    """PyTorch's bundled flash-attention (varlen) forward and backward, GQA included.

    q: [T, Hq, D], k/v: [T, Hkv, D]; cu: int32 [N+1] on the same device.
    """

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len, scale, window_left):
        out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
            scale=scale, window_size_left=window_left, window_size_right=0 if window_left >= 0 else -1)
        ctx.save_for_backward(q, k, v, out, lse, cu, seed, offset)
        ctx.max_len, ctx.scale, ctx.window_left = max_len, scale, window_left
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu, seed, offset = ctx.saved_tensors
        wl = ctx.window_left
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, seed, offset,
            scale=ctx.scale, window_size_left=wl, window_size_right=0 if wl >= 0 else -1)
        return dq, dk, dv, None, None, None, None


def flash_varlen_supported(q: torch.Tensor) -> bool:
    """Whether the bundled flash kernel can run these queries (CUDA, half precision, head dim <= 256)."""
    return (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256
            and q.shape[-1] % 8 == 0 and hasattr(torch.ops.aten, "_flash_attention_forward"))


def reference_varlen(q, k, v, cu, scale, sliding_window=None, softcap=None):
    """Same function as the flash kernel, as dense masked attention (CPU, fp32, tests, fallbacks).

    q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D].
    """
    total, hq, _ = q.shape
    hkv = k.shape[1]
    seg = segment_ids(cu.to(q.device), total)
    idx = torch.arange(total, device=q.device)
    allowed = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    if sliding_window is not None:
        allowed &= idx[None, :] > idx[:, None] - sliding_window
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, T, D]
    if hkv != hq:
        kh = kh.repeat_interleave(hq // hkv, dim=0)
        vh = vh.repeat_interleave(hq // hkv, dim=0)
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=scale)
    else:
        scores = (qh @ kh.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(vh.dtype) @ vh
    return out.transpose(0, 1)


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, softcap: float | None = None, **kwargs: Any):
    """transformers attention function: [B, H, S, D] in, ([B, S, H, D], None) out.

    One flattened row with `cu_seq_lens_q` (or restarting `position_ids`): attention per segment.
    Anything else (ordinary padded batches, e.g. evaluation) goes to transformers' SDPA path.
    """
    if dropout:
        raise ValueError(f"{ATTN_IMPLEMENTATION} has no attention dropout; set the model's attention_dropout to 0")
    cu = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    if (cu is None and query.shape[0] == 1 and attention_mask is None and position_ids is not None
            and key.shape[2] == query.shape[2] and position_ids.shape[-1] == query.shape[2]):
        cu = cu_seqlens_from_position_ids(position_ids)
    if cu is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, softcap=softcap, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    if flash_varlen_supported(q) and softcap is None:
        cu = cu.to(device=q.device, dtype=torch.int32)
        max_len = kwargs.get("max_length_q") or int(cu.diff().max())
        window_left = (sliding_window - 1) if sliding_window else -1
        out = _FlashVarlen.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu, int(max_len), float(scale),
                                 int(window_left))
    else:
        out = reference_varlen(q, k, v, cu, scale, sliding_window=sliding_window, softcap=softcap)
    return out[None], None


def register_varlen_attention() -> str:
    """Register `varlen_attention` with transformers (idempotent) and return its name.

    Its mask function builds no mask for a single unpadded row (a packed row carries its
    boundaries instead) and SDPA's mask for anything else, which `varlen_attention` hands to SDPA.
    """
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _packed_or_sdpa_mask(sdpa_mask))
        _REGISTERED = True
    return ATTN_IMPLEMENTATION


def _packed_or_sdpa_mask(sdpa_mask: Callable) -> Callable:
    def mask(*args, **kwargs):
        if kwargs.get("attention_mask") is None and kwargs.get("batch_size") == 1:
            return None  # one unpadded row: boundaries travel as cu_seq_lens / position_ids, no dense mask
        return sdpa_mask(*args, **kwargs)

    return mask
