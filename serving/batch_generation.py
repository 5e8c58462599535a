"""Several answers decoded by one `generate` call, each streamed to its own asker.

transformers' `generate` already decodes a batch; what it lacks for serving is a way to hand
each row's tokens to a different consumer and to end one row without ending the others. Both
plug into its public hooks: `RowStreams` (a `BaseStreamer` that fans the batch's tokens out to
one `PieceStreamer` per row) and `RowLimits` (a `StoppingCriteria` that finishes a row at its own
`max_tokens` or as soon as its asker leaves). Rows are left-padded, so `generate` derives each
row's positions from the attention mask and a greedy row decodes exactly as it would alone.

Rows with different adapters (guilds) decode in the same call through `mixed_adapters`: for
the round, each LoRA layer gets the round's adapters side by side (their A matrices stacked into
one, their B matrices likewise) and a per-row mask that keeps each row's own adapter and its
scaling, so a layer costs three kernels (x @ A, mask, out += h @ B) whatever the number of
adapters. PEFT's own mixed batches (`adapter_names=[...]`, one name per row) are the fallback for
adapters this does not cover (DoRA and other variants, embedding or bias LoRA, extra trained
modules): for every LoRA layer at every step they rebuild each adapter's row list in Python and
index with it, about ten kernels and three host-to-device copies per adapter, each copy waiting
for the GPU to drain (peft 0.17-0.21, `LoraLayer._mixed_batch_forward`). On the H200 that made a
step of 4 rows from 4 guilds slower than 4 answers one after another (bench/RESULTS.md).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from serving import generation
from serving.protocol import GenerationOptions


@dataclass
class Row:
    """One answer in a batch: its prompt, its limits and where its text goes."""

    input_ids: torch.Tensor  # 1-D prompt token ids
    max_tokens: int
    stop: threading.Event  # set when the asker left or timed out
    emit: Callable[[str], None]  # each new piece of text ("" proves progress)
    finish: Callable[[], None]  # the answer is complete (called once, as soon as the row ends)


def prompt_ids(model: Any, tokenizer: Any, device: str, messages: list[dict[str, str]],
               options: GenerationOptions) -> torch.Tensor:
    """The prompt of one question as 1-D token ids; refuses a conversation the model cannot hold."""
    inputs = generation.render_prompt(tokenizer, messages, device)
    generation.check_fits(model, inputs["input_ids"].shape[1], options.max_tokens)
    return inputs["input_ids"][0]


def sampling_key(options: GenerationOptions) -> tuple | None:
    """Rows decode in one call only if they sample the same way; None: this row must run alone.

    Greedy rows all share a key (top_k/top_p do not matter). A seeded sampled answer runs alone,
    because in a batch the random stream would be shared and its answer would depend on its
    neighbours.
    """
    if options.temperature <= 0:
        return ("greedy",)
    if options.seed is not None:
        return None
    return ("sample", float(options.temperature), int(options.top_k), float(options.top_p))


class RowLimits(StoppingCriteria):
    """Per-row end: the row's own token budget, or its asker went away.

    Decided on the host from plain numbers; the steps where no row ends (nearly all of them) answer
    with one all-false tensor made once on the model's device, so a step copies nothing to the GPU.
    """

    def __init__(self, rows: list[Row], prompt_length: int):
        self.rows = rows
        self.prompt_length = prompt_length
        self._none_done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_length
        done = [produced >= row.max_tokens or row.stop.is_set() for row in self.rows]
        if any(done):
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
        if self._none_done is None:
            self._none_done = torch.zeros(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return self._none_done


class RowStreams(BaseStreamer):
    """Fans each step's tokens (one per row) out to the rows' own `PieceStreamer`s.

    A row ends at a stop token, at its `max_tokens` or when its asker left; its `finish` is called
    right then, so a short answer completes while longer neighbours are still decoding. The pad
    tokens `generate` keeps producing for a finished row are ignored.
    """

    def __init__(self, tokenizer: Any, rows: list[Row], stop_ids: list[int]):
        self.rows = rows
        self.stop_ids = set(stop_ids)
        self.pieces = [generation.PieceStreamer(tokenizer, row.emit) for row in rows]
        self.produced = [0] * len(rows)
        self.ended = [False] * len(rows)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompts themselves
            self.prompt_seen = True
            for index, piece in enumerate(self.pieces):
                piece.put(value[index])
            return
        for index, token in enumerate(value.reshape(-1).tolist()):
            if self.ended[index]:
                continue
            row = self.rows[index]
            if row.stop.is_set():
                self.ended[index] = True  # nobody is listening: no more text, no finish
                continue
            if token in self.stop_ids:
                self._end(index)
                continue
            self.pieces[index].add([token])
            self.produced[index] += 1
            if self.produced[index] >= row.max_tokens:
                self._end(index)

    def end(self) -> None:
        for index in range(len(self.rows)):
            if not self.ended[index] and not self.rows[index].stop.is_set():
                self._end(index)

    def _end(self, index: int) -> None:
        self.ended[index] = True
        self.pieces[index].end()
        self.rows[index].finish()


def generate_rows(model: Any, tokenizer: Any, rows: list[Row], options: GenerationOptions,
                  adapter_names: list[str] | None = None) -> None:
    """Decode `rows` together (sampling knobs from `options`, shared by all rows); each row's text
    goes to its own `emit`. `adapter_names` (one per row, "__base__" for the base model) needs a
    PeftModel holding those adapters."""
    if not rows:
        raise ValueError("generate_rows needs at least one row")
    if adapter_names is not None and len(adapter_names) != len(rows):
        raise ValueError("adapter_names needs one name per row")
    pad = generation.pad_token_id(tokenizer)
    device = rows[0].input_ids.device
    width = max(row.input_ids.shape[0] for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for index, row in enumerate(rows):  # left padding: every row's last prompt token is aligned
        length = row.input_ids.shape[0]
        input_ids[index, width - length:] = row.input_ids
        attention_mask[index, width - length:] = 1
    stops = generation.stop_token_ids(tokenizer, model)
    if options.seed is not None and len(rows) == 1:
        torch.manual_seed(options.seed)
    mixing = mixed_adapters(model, adapter_names) if adapter_names is not None else contextlib.nullcontext({})
    with torch.inference_mode(), generation.decoding_attention(str(device)), mixing as extra:
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max(row.max_tokens for row in rows),
            eos_token_id=stops,
            pad_token_id=pad,
            streamer=RowStreams(tokenizer, rows, stops),
            stopping_criteria=StoppingCriteriaList([RowLimits(rows, width)]),
            **generation.sampling_kwargs(options),
            **extra,
        )


@contextlib.contextmanager
def mixed_adapters(model: Any, adapter_names: list[str]) -> Iterator[dict[str, Any]]:
    """Within it, `model.generate(**extra)` (extra: what it yields) applies row i's adapter
    `adapter_names[i]` to row i. Stacked LoRA (see the module doc) when every LoRA layer is plain;
    otherwise PEFT's `adapter_names` path, which handles every kind of adapter, slowly."""
    found = stacked_lora_plan(model, adapter_names)
    if found is None:
        yield {"adapter_names": list(adapter_names)}
        return
    plan, layers = found
    # Every LoRA layer computes only its base layer for the round; the hooks add each row's adapter.
    # Layer by layer rather than PeftModel.disable_adapter(), which first walks the whole model for
    # its status report (~30 ms for Gemma 3 270M with 4 adapters, before every round's first token).
    switched = [layer for layer in layers if not layer.disable_adapters]
    handles = []
    try:
        for layer in switched:
            layer.enable_adapters(False)
        for layer, a_stack, b_stack, mask in plan:
            handles.append(layer.register_forward_hook(functools.partial(_add_stacked_lora, a_stack, b_stack, mask)))
        yield {}
    finally:
        for handle in handles:
            handle.remove()
        for layer in switched:
            layer.enable_adapters(True)


def stacked_lora_plan(model: Any, adapter_names: list[str]) -> tuple[list, list] | None:
    """(plan, every LoRA layer of the model), or None when an adapter of the round is not plain LoRA
    on a linear layer, so the caller uses PEFT's own path. The plan has, per LoRA layer holding any
    of the round's adapters: (layer, stacked A (R, in), stacked B (out, R), mask (rows, 1, R) holding
    each row's scaling on its adapter's columns).

    Built once per round (two concatenations per layer), so no step indexes, copies or syncs."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    wanted = [name for name in dict.fromkeys(adapter_names) if name != "__base__"]
    plan, layers = [], []
    masks: dict[tuple, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            return None  # modules_to_save / trainable tokens: only PEFT knows how to mix them
        if not isinstance(module, LoraLayer):
            continue
        layers.append(module)
        present = [name for name in wanted if name in module.lora_A or name in module.lora_embedding_A]
        if not present:
            continue
        if type(module) is not LoraLinear or module.merged:
            return None
        base = module.get_base_layer()
        if not isinstance(base, torch.nn.Linear):
            return None
        a_parts, b_parts, layout = [], [], []
        for name in present:
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            if name in module.lora_variant or not isinstance(lora_a, torch.nn.Linear) \
                    or not isinstance(lora_b, torch.nn.Linear) or lora_b.bias is not None \
                    or lora_a.weight.dtype != base.weight.dtype or lora_b.weight.dtype != base.weight.dtype:
                return None
            a_parts.append(lora_a.weight)
            b_parts.append(lora_b.weight)
            layout.append((name, lora_a.weight.shape[0], float(module.scaling[name])))
        key = (tuple(layout), base.weight.device, base.weight.dtype)
        mask = masks.get(key)
        if mask is None:
            mask = masks[key] = _row_mask(adapter_names, layout).to(base.weight.device, base.weight.dtype)
        a_stack = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, dim=0)
        b_stack = b_parts[0] if len(b_parts) == 1 else torch.cat(b_parts, dim=1)
        plan.append((module, a_stack, b_stack, mask))
    return plan, layers


def _row_mask(adapter_names: list[str], layout: list[tuple[str, int, float]]) -> torch.Tensor:
    """(rows, 1, R): row i's scaling on the columns of its adapter, zero elsewhere (a "__base__" row,
    or an adapter that does not target this layer, is all zeros)."""
    columns: dict[str, tuple[int, int, float]] = {}
    start = 0
    for name, rank, scaling in layout:
        columns[name] = (start, start + rank, scaling)
        start += rank
    mask = torch.zeros(len(adapter_names), 1, start)
    for row, name in enumerate(adapter_names):
        if name in columns:
            first, last, scaling = columns[name]
            mask[row, 0, first:last] = scaling
    return mask


def _add_stacked_lora(a_stack: torch.Tensor, b_stack: torch.Tensor, mask: torch.Tensor,
                      module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of one LoRA layer: output += ((x @ A.T) * mask) @ B.T, every row its own adapter."""
    x = args[0]
    h = torch.nn.functional.linear(x, a_stack)
    h.mul_(mask)  # (rows, tokens, R) * (rows, 1, R)
    flat = output.view(-1, output.shape[-1])
    flat.addmm_(h.view(-1, h.shape[-1]), b_stack.t())
    return output


def warm_up(model: Any, tokenizer: Any, device: str) -> None:
    """Decode two short left-padded rows once, so the first real round does not pay the GPU's
    first-use costs (kernels loaded on first call, cuBLAS handles, the masked attention path).
    Called when the base model loads on a GPU (LocalServer), so `preload` at start absorbs them."""
    from serving.protocol import GenerationOptions

    options = GenerationOptions(temperature=0, max_tokens=2, timeout_s=60)
    rows = [Row(prompt_ids(model, tokenizer, device, [{"role": "user", "content": text}], options), 2,
                threading.Event(), lambda _: None, lambda: None)
            for text in ("Hello", "Hello, what is the plan for tonight?")]
    generate_rows(model, tokenizer, rows, options)
