"""What the in-process server adds around the model's own decoding, per answer and per token.

On a GPU a small model's decoding step is a few milliseconds of kernels, so anything the server does
on the host per token, or before the first one, shows directly in tokens/s and time to first token.
These tests pin the structure (what is computed, how often, where the weights sit), not timings.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from serving import batch_generation, generation
from serving.local_server import LocalServer
from test_local_server import QUESTION, answer, world  # noqa: F401  (fixture)
from test_batched_serving import GREEDY, refs  # noqa: F401  (fixture)
from tiny_model import tiny_tokenizer


class CountingTokenizer:
    """A tokenizer that counts the token ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded = 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


def test_streamed_text_equals_the_whole_decode_and_each_token_decodes_a_bounded_window():
    tok = tiny_tokenizer("gemma3")
    text = "Raid at nine: bring potions 🧪, snacks é ü 日本語 and  double  spaces.\n\nOk? "
    ids = tok(text * 12, add_special_tokens=False)["input_ids"]
    ids = ids[:200] + [tok.eos_token_id] + ids[200:]
    counting = CountingTokenizer(tok)
    pieces: list[str] = []
    streamer = generation.PieceStreamer(counting, pieces.append)
    streamer.put(torch.tensor([[7, 8, 9]]))  # the prompt, which generate() passes first
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()

    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert len(pieces) >= len(ids)  # a piece (maybe "") per token: progress the timeout can see
    # Two short decodes per token (the window is the last piece's tokens plus the new one), instead
    # of the whole answer so far (~len(ids)**2 / 2 = 140k ids for these 530 tokens).
    assert counting.decoded <= 12 * len(ids), counting.decoded


def test_stop_tokens_are_looked_up_without_building_the_vocabulary():
    tok = tiny_tokenizer("gemma3")

    def no_get_vocab():
        raise AssertionError("get_vocab() builds the whole vocabulary (262k entries for Gemma 3) per answer")

    tok.get_vocab = no_get_vocab

    def model(eos: int):
        return type("Model", (), {"generation_config": type("Config", (), {"eos_token_id": [eos]})()})()

    stops = generation.stop_token_ids(tok, model(tok.eos_token_id))
    assert stops == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    # a tokenizer without Gemma's names gets only its own EOS, not its unknown-token id
    chatml = tiny_tokenizer("chatml")
    assert generation.stop_token_ids(chatml, model(chatml.eos_token_id)) == [chatml.eos_token_id]


def test_a_step_where_no_row_ends_copies_nothing_to_the_device():
    rows = [batch_generation.Row(torch.tensor([1, 2]), max_tokens, threading.Event(), lambda _: None, lambda: None)
            for max_tokens in (3, 5)]
    limits = batch_generation.RowLimits(rows, prompt_length=2)
    first, second = limits(torch.zeros((2, 3), dtype=torch.long), None), limits(torch.zeros((2, 4)), None)
    assert first is second and not first.any()  # one tensor made once, no host-to-device copy per step
    assert limits(torch.zeros((2, 5)), None).tolist() == [True, False]
    rows[1].stop.set()
    assert limits(torch.zeros((2, 3)), None).tolist() == [False, True]


async def test_sequential_mode_encodes_each_prompt_once_and_answers_as_each_version(world, refs, monkeypatch):
    encodes: list[int] = []
    real = generation.encode_chat
    monkeypatch.setattr(generation, "encode_chat", lambda *a, **k: encodes.append(1) or real(*a, **k))
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", batching="off")
    try:
        for number in (1, 2):
            await srv.publish(v[number])
        for number in (None, 1, 2):
            encodes.clear()
            assert await answer(srv, v[number] if number else None, GREEDY, QUESTION) == refs[number, 0]
            assert len(encodes) == 1
    finally:
        await srv.close()


async def test_model_and_every_adapter_sit_on_the_server_device_in_the_base_dtype(world, monkeypatch):
    """bf16 stands for the GPU's half precision here: PEFT's default would hold these adapters in
    float32 and cast every LoRA layer's input and output at every token."""
    monkeypatch.setattr(generation, "serving_dtype", lambda device: torch.bfloat16)
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=3)
    try:
        for number in (1, 2, 3):
            await srv.publish(v[number])
        model = srv._peft
        lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
        assert {name.split(".")[-2] for name in lora} == {"v101", "v102", "v103"}
        placed = {(p.device.type, p.dtype) for p in model.parameters()}
        assert placed == {(torch.device(srv._device).type, torch.bfloat16)}, placed
        assert (await answer(srv, v[2], GREEDY, QUESTION)).strip()  # and it decodes in that dtype
    finally:
        await srv.close()


async def test_answers_of_the_same_version_switch_the_adapter_once(world, refs):
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", batching="off")
    try:
        for number in (1, 2):
            await srv.publish(v[number])
        switches: list[str] = []
        real = srv._peft.set_adapter
        srv._peft.set_adapter = lambda name, **kw: switches.append(name) or real(name, **kw)
        for number in (1, 1, 1, 2, 2, 1):
            assert await answer(srv, v[number], GREEDY, QUESTION) == refs[number, 0]
        assert switches == ["v102", "v101"]  # v1 is active from its load on
    finally:
        await srv.close()
