"""The plan's speed choices applied to TRL's SFTTrainer (trainer/plan.py decides them; issue 7).

`sft_overrides(plan)` turns the plan into SFTConfig keyword arguments (packing into fixed rows,
checkpointing under the name this transformers knows, the optimizer, Liger) and `install(trainer,
plan, pad_id)` applies the parts that need the built trainer (fixed-row collator, compiled blocks,
partial checkpointing). The loss is TRL's fused, chunked LM head (`trl>=1.16` always; never the
full logits), made to score only the labelled positions on every device. bench/RESULTS.md measures
each choice on an H100.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.packing import StaticRowCollator

if TYPE_CHECKING:
    from trainer.plan import Plan


def sample_lengths(train_ds, tokenizer, max_rows: int = 512) -> list[int]:
    """Token lengths of up to `max_rows` evenly spread training conversations (sizes the packed rows)."""
    n = len(train_ds)
    idx = sorted({int(i * n / max_rows) for i in range(min(n, max_rows))})
    sample = train_ds.select(idx)
    if "input_ids" in sample.column_names:
        return [len(ids) for ids in sample["input_ids"]]
    return [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
            for m in sample["messages"]]


def sft_overrides(plan: "Plan") -> dict[str, Any]:
    """SFTConfig keyword arguments for the plan's checkpointing, optimizer, kernels and packing."""
    flag, flag_kwargs = checkpointing_arg_names()
    kw: dict[str, Any] = {flag: plan.gradient_checkpointing, "optim": plan.optim,
                          "use_liger_kernel": plan.use_liger}
    if plan.gradient_checkpointing:
        kw[flag_kwargs] = {"use_reentrant": False}
    if plan.packing:
        kw.update(packing=True, packing_strategy="bfd", padding_free=True, max_length=plan.row_len,
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


def install(trainer, plan: "Plan", pad_token_id: int) -> None:
    """Apply what needs the built trainer: fixed-length packed rows, compiled blocks and partial
    checkpointing (and TRL's loss scoring only labelled positions, `score_labelled_positions_only`)."""
    score_labelled_positions_only()
    if plan.packing:
        segments = None
        if plan.compile:  # one boundary-list length for the whole run: the most any packed row has, + padding
            seq_lengths = trainer.train_dataset["seq_lengths"] if "seq_lengths" in trainer.train_dataset.column_names \
                else [[0] * 15]
            segments = max(len(s) for s in seq_lengths) + 1
        trainer.data_collator = StaticRowCollator(trainer.data_collator, row_len=plan.row_len,
                                                  pad_token_id=pad_token_id, static_segments=segments)
    if plan.compile:
        compile_blocks(trainer.model)
    if plan.gradient_checkpointing and plan.layers_without_checkpointing:
        trainer.add_callback(_PartialCheckpointing(plan.layers_without_checkpointing))


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
