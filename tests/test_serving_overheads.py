"""What the in-process server adds around the model's own decoding, per answer and per token.

On a GPU a small model's decoding step is a few milliseconds of kernels, so anything the server does
on the host per token, or before the first one, shows directly in tokens/s and time to first token.
These tests pin the structure (what is computed, how often, where the weights sit), not timings.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
import torch

from serving import batch_generation, generation
from serving.local_server import LocalServer
from test_local_server import QUESTION, answer, world  # noqa: F401  (fixture)
from test_batched_serving import GREEDY, ask_together, refs  # noqa: F401  (fixture)
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


def mixed_world(base: Path, root: Path):
    """A PeftModel holding three plain LoRA adapters of different ranks and targets, in eval mode."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    shapes = {"a": (4, ["q_proj", "v_proj", "o_proj"]), "b": (8, "all-linear"), "c": (2, ["q_proj", "down_proj"])}
    for seed, (name, (rank, targets)) in enumerate(shapes.items()):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=rank, lora_alpha=3 * rank + 1, target_modules=targets, init_lora_weights=False))
        model.save_pretrained(root / name)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), root / "a", adapter_name="a")
    for name in ("b", "c"):
        peft.load_adapter(root / name, adapter_name=name)
    return peft.eval()


def test_stacked_lora_gives_each_row_what_peft_gives_it_and_leaves_the_model_as_it_was(world, tmp_path):
    """Ranks, targets and scalings differ per adapter, and a row of the base model sits among them."""
    peft = mixed_world(world["base"], tmp_path)
    names = ["b", "__base__", "a", "c", "a"]
    torch.manual_seed(5)
    ids = torch.randint(5, 200, (len(names), 7))
    with torch.inference_mode():
        single = peft(input_ids=ids).logits
        expected = peft(input_ids=ids, adapter_names=names).logits  # PEFT's own mixed batch
        with batch_generation.mixed_adapters(peft, names) as extra:
            assert extra == {}  # the stacked path, not PEFT's
            stacked = peft(input_ids=ids).logits
        after = peft(input_ids=ids).logits
    assert torch.allclose(stacked, expected, atol=1e-5), (stacked - expected).abs().max()
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the adapters really change the rows
    assert torch.equal(after, single)  # hooks gone, the active adapter applies again
    assert not any(module._forward_hooks for module in peft.modules())


def test_a_stacked_mixed_step_costs_the_same_ops_for_two_adapters_as_for_three(world, tmp_path):
    """PEFT's mixed batch runs ~10 ops and 3 host-to-device index copies per adapter per LoRA layer;
    stacked adapters cost one fixed set of ops per layer, with no copy to the device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = self.to_device = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten._to_copy.default):
                self.to_device += 1
            return func(*args, **(kwargs or {}))

    peft = mixed_world(world["base"], tmp_path)
    ids = torch.randint(5, 200, (3, 1))
    counts = []
    for names in (["a", "b", "a"], ["a", "b", "c"]):
        with torch.inference_mode(), batch_generation.mixed_adapters(peft, names) as extra:
            counter = Count()
            with counter:
                peft(input_ids=ids, **extra)
        counts.append((counter.calls, counter.to_device))
    assert counts[0] == counts[1], counts


def test_adapters_the_stacked_path_does_not_cover_go_through_peft(world, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft = mixed_world(world["base"], tmp_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(world["base"]),
                           LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False))
    model.save_pretrained(tmp_path / "dora")
    peft.load_adapter(tmp_path / "dora", adapter_name="dora")
    with batch_generation.mixed_adapters(peft, ["a", "b"]) as extra:
        assert extra == {}
    with batch_generation.mixed_adapters(peft, ["a", "dora"]) as extra:
        assert extra == {"adapter_names": ["a", "dora"]}


def test_decoding_on_cuda_leaves_out_cudnn_attention_and_restores_the_flags():
    """cuDNN attention builds a plan per new shape, and decoding makes a new key length every step."""
    from torch.backends import cuda

    before = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    with generation.decoding_attention("cuda:0"):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled() and cuda.math_sdp_enabled()
    assert (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()) == before
    with generation.decoding_attention("cpu"):
        assert cuda.cudnn_sdp_enabled() == before[0]  # nothing changes off the GPU


async def test_a_round_of_several_versions_decodes_with_stacked_adapters(world, refs, monkeypatch):
    seen: list[dict] = []
    real = batch_generation.mixed_adapters

    @contextlib.contextmanager
    def spy(model, names):
        with real(model, names) as extra:
            seen.append(extra)
            yield extra

    monkeypatch.setattr(batch_generation, "mixed_adapters", spy)
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu")
    try:
        for number in (1, 2):
            await srv.publish(v[number])
        results = await ask_together(srv, [(v[1], QUESTION), (v[2], QUESTION), (None, QUESTION)])
    finally:
        await srv.close()
    assert results == [refs[1, 0], refs[2, 0], refs[None, 0]]
    assert seen == [{}]


async def test_a_gpu_server_decodes_a_throwaway_padded_round_when_the_base_loads(world, refs, monkeypatch):
    """Once per base load (so `preload` at start pays the GPU's first-use costs), never per answer."""
    rounds: list[list[int]] = []
    real = batch_generation.generate_rows
    monkeypatch.setattr(generation, "warms_up", lambda device: True)  # this CPU stands in for a GPU
    monkeypatch.setattr(batch_generation, "generate_rows",
                        lambda model, tok, rows, *a, **k: rounds.append([r.input_ids.shape[0] for r in rows])
                        or real(model, tok, rows, *a, **k))
    srv = LocalServer(str(world["base"]), device="cpu")
    try:
        await srv.preload(None)
        assert len(rounds) == 1 and len(set(rounds[0])) == 2  # two rows of different lengths: padded
        assert await answer(srv, None, GREEDY, QUESTION) == refs[None, 0]
        assert await answer(srv, None, GREEDY, QUESTION) == refs[None, 0]
        assert len(rounds) == 3
    finally:
        await srv.close()


def test_only_a_gpu_warms_up():
    assert generation.warms_up("cuda") and generation.warms_up("cuda:1") and not generation.warms_up("cpu")
