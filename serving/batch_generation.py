"""Several answers decoded by one `generate` call, each streamed to its own asker.

transformers' `generate` already decodes a batch; what it lacks for serving is a way to hand
each row's tokens to a different consumer and to end one row without ending the others. Both
plug into its public hooks: `RowStreams` (a `BaseStreamer` that fans the batch's tokens out to
one `PieceStreamer` per row) and `RowLimits` (a `StoppingCriteria` that finishes a row at its own
`max_tokens` or as soon as its asker leaves). Rows are left-padded, so `generate` derives each
row's positions from the attention mask and a greedy row decodes exactly as it would alone.

PEFT's mixed-adapter batches ride on the same call: `adapter_names=[...]` (one name per row,
`"__base__"` for the base model) is passed through `PeftModel.generate` to every LoRA layer,
which applies each adapter to its own sub-batch. Its limits (peft 0.17-0.21, checked in
`peft/tuners/lora/layer.py`): inference only, no merged adapters, no DoRA, and every distinct
adapter costs one more small matmul per LoRA layer, so a batch of many different adapters is
slower per row than one of a single adapter.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

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
    goes to its own `emit`. `adapter_names` (one per row) needs a PeftModel holding those adapters."""
    if not rows:
        raise ValueError("generate_rows needs at least one row")
    if adapter_names is not None and len(adapter_names) != len(rows):
        raise ValueError("adapter_names needs one name per row")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = rows[0].input_ids.device
    width = max(row.input_ids.shape[0] for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for index, row in enumerate(rows):  # left padding: every row's last prompt token is aligned
        length = row.input_ids.shape[0]
        input_ids[index, width - length:] = row.input_ids
        attention_mask[index, width - length:] = 1
    stops = generation.stop_token_ids(tokenizer, model)
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    if options.seed is not None and len(rows) == 1:
        torch.manual_seed(options.seed)
    with torch.inference_mode():
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

