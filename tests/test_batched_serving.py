"""LocalServer answering concurrent questions together: batched answers equal each version alone.

Reference answers come from plain transformers + PEFT, one question at a time
(`reference_answer` in test_local_server.py), so "batched == sequential" is checked against code
that shares nothing with the server. Forward passes of the base model are counted to prove that
a round really decoded several questions at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from serving.local_server import LocalServer
from serving.protocol import GenerationOptions, ModelServerError
from test_local_server import QUESTION, answer, reference_answer, version, world  # noqa: F401  (fixture)

QUESTIONS = [
    QUESTION,
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are the helpful assistant of this Discord community."},
     {"role": "user", "content": "When does the raid start, and what should everyone bring along?"}],
]
GREEDY = GenerationOptions(temperature=0, max_tokens=8, timeout_s=30)


@pytest.fixture(scope="module")
def refs(world):
    """Greedy answers of (version number or None, question index), each computed alone."""
    base, versions = world["base"], world["versions"]
    out = {}
    for number in (None, 1, 2, 3):
        adapter = Path(versions[number].adapter_path) if number else None
        for index, messages in enumerate(QUESTIONS):
            out[number, index] = reference_answer(base, adapter, messages)
    out["long", 1] = reference_answer(base, Path(versions[1].adapter_path), QUESTION, max_tokens=40)
    return out


def hold(srv: LocalServer) -> threading.Event:
    """Keep the model thread busy until the returned event is set, so questions pile up waiting."""
    gate = threading.Event()
    srv._worker.submit(gate.wait)
    return gate


async def until_waiting(srv: LocalServer, count: int) -> None:
    for _ in range(500):
        if len(srv._worker._waiting) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(srv._worker._waiting)} of {count} questions are waiting")


def count_forwards(srv: LocalServer) -> list[int]:
    calls: list[int] = []
    srv._base.register_forward_pre_hook(lambda *a, **k: calls.append(1), with_kwargs=True)
    return calls


async def ask_together(srv: LocalServer, asks: list[tuple], options=GREEDY) -> list:
    """Queue every (version, messages) while the model thread is held, then release it at once."""
    gate = hold(srv)
    tasks = [asyncio.create_task(answer(srv, ver, options, messages)) for ver, messages in asks]
    try:
        await until_waiting(srv, len(asks))
    finally:
        gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("batching, most_rounds", [("mixed", 1), ("grouped", 4)])
async def test_concurrent_chats_of_three_adapters_equal_each_version_alone(world, refs, batching, most_rounds):
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", batching=batching)
    try:
        for n in (1, 2, 3):
            await srv.publish(v[n])
        calls = count_forwards(srv)
        asks = [(v[n] if n else None, n, q) for q in range(len(QUESTIONS)) for n in (1, 2, None, 3)]
        results = await ask_together(srv, [(ver, QUESTIONS[q]) for ver, _, q in asks])
    finally:
        await srv.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [refs[n, q] for _, n, q in asks]
    # Decoded together: one round per version at most (grouped), one round for all (mixed),
    # where one at a time would take 12 answers x 8 tokens = 96 forward passes.
    assert len(calls) <= most_rounds * GREEDY.max_tokens, len(calls)


async def test_each_answer_streams_in_order_while_others_stream_too(world, refs):
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu")
    events: list[tuple[int, str]] = []

    async def consume(i: int, ver, messages):
        async for piece in srv.chat(ver, messages, GenerationOptions(temperature=0, max_tokens=8)):
            events.append((i, piece))

    try:
        await srv.publish(v[1])
        await srv.publish(v[2])
        asks = [(v[1], 0), (v[2], 2), (None, 1)]
        gate = hold(srv)
        tasks = [asyncio.create_task(consume(i, ver, QUESTIONS[q])) for i, (ver, q) in enumerate(asks)]
        await until_waiting(srv, len(asks))
        gate.set()
        await asyncio.gather(*tasks)
    finally:
        await srv.close()
    for i, (ver, q) in enumerate(asks):
        mine = [piece for who, piece in events if who == i]
        assert len(mine) > 1 and "".join(mine) == refs[ver.number if ver else None, q]
    # Interleaved, not one after the other: every answer's first piece comes before any answer's last.
    firsts = [next(k for k, (who, _) in enumerate(events) if who == i) for i in range(len(asks))]
    lasts = [max(k for k, (who, _) in enumerate(events) if who == i) for i in range(len(asks))]
    assert max(firsts) < min(lasts), events


@pytest.mark.parametrize("max_loaded", [1, 4])
async def test_swap_during_a_batched_round_waits_for_it_and_changes_no_answer(world, refs, max_loaded):
    """Publish v2 (with max_loaded=1 that evicts v1), flip, remove v1: all while 6 answers from v1 decode."""
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=max_loaded)
    long = GenerationOptions(temperature=0, max_tokens=40, timeout_s=30)
    finished: list[float] = []
    started = asyncio.Event()

    async def ask_v1():
        pieces = []
        async for piece in srv.chat(v[1], QUESTION, long):
            pieces.append(piece)
            started.set()
        finished.append(time.monotonic())
        return "".join(pieces)

    try:
        await srv.publish(v[1])
        gate = hold(srv)
        tasks = [asyncio.create_task(ask_v1()) for _ in range(6)]
        await until_waiting(srv, 6)
        gate.set()
        await started.wait()  # the round is decoding
        await srv.publish(v[2])
        active = v[2]  # the pointer flips: new questions go to v2
        await srv.remove(v[1])
        swapped_at = time.monotonic()
        after = await answer(srv, active)
        results = await asyncio.gather(*tasks)
        loaded = (await srv.health()).loaded
    finally:
        await srv.close()
    assert results == [refs["long", 1]] * 6
    assert max(finished) <= swapped_at, "the swap went through while answers from v1 were still decoding"
    assert after == refs[2, 0]
    assert loaded == ["local:v2"]


async def test_cancelled_consumer_frees_its_row(world, refs):
    """A leaves after its first piece: its row stops, so the round ends with B, not 60 tokens later,
    and C (waiting for a slot, max_batch_size=2) is answered right after."""
    srv = LocalServer(str(world["base"]), device="cpu", max_batch_size=2)
    long = GenerationOptions(temperature=0, max_tokens=60, timeout_s=30)
    try:
        await srv.preload(None)
        calls = count_forwards(srv)
        gate = hold(srv)
        stream_a = srv.chat(None, QUESTION, long)
        first_a = asyncio.create_task(stream_a.__anext__())
        await until_waiting(srv, 1)
        b = asyncio.create_task(answer(srv, None, GREEDY, QUESTIONS[1]))
        await until_waiting(srv, 2)
        c = asyncio.create_task(answer(srv, None, GREEDY, QUESTIONS[2]))
        await until_waiting(srv, 3)
        gate.set()
        first = await first_a
        await stream_a.aclose()
        assert len(srv._questions) == 2  # A is gone from the server's books
        answers = [await b, await c]
    finally:
        await srv.close()
    assert refs[None, 0].startswith(first)
    assert answers == [refs[None, 1], refs[None, 2]]
    # Round 1 (A+B) ran about 8 steps, round 2 (C) 8: far from A's 60.
    assert len(calls) <= 2 * GREEDY.max_tokens + 4, len(calls)


async def test_round_holds_no_more_adapters_than_fit_and_a_broken_one_fails_alone(world, refs, tmp_path):
    v = world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=2)
    broken = version(9, tmp_path / "gone", world["base"])
    try:
        await srv.preload(None)
        asks = [(v[1], 0), (v[2], 0), (v[3], 0), (broken, 0), (None, 1), (v[1], 2)]
        results = await ask_together(srv, [(ver, QUESTIONS[q]) for ver, q in asks])
        loaded = (await srv.health()).loaded
    finally:
        await srv.close()
    assert isinstance(results[3], ModelServerError) and "Version 9" in str(results[3])
    served = [i for i, (ver, _) in enumerate(asks) if ver is not broken]
    assert [results[i] for i in served] == [refs[asks[i][0].number if asks[i][0] else None, asks[i][1]]
                                            for i in served]
    assert len(loaded) <= 2


async def test_seeded_sampling_is_the_same_alone_and_beside_other_questions(world):
    srv = LocalServer(str(world["base"]), device="cpu")
    seeded = GenerationOptions(temperature=1.5, top_k=0, top_p=1.0, max_tokens=12, seed=7)
    try:
        alone = await answer(srv, None, seeded)
        gate = hold(srv)
        crowd = [asyncio.create_task(answer(srv, None, GREEDY, QUESTIONS[1])) for _ in range(3)]
        mine = asyncio.create_task(answer(srv, None, seeded))
        crowd.append(asyncio.create_task(answer(srv, None, seeded)))
        await until_waiting(srv, 5)
        gate.set()
        together = [await mine, await crowd[-1]]
        await asyncio.gather(*crowd)
    finally:
        await srv.close()
    assert together == [alone, alone]


def test_bad_batching_settings_are_refused():
    with pytest.raises(ValueError, match="batching must be one of mixed, grouped, off"):
        LocalServer("/nowhere", batching="parallel")
    with pytest.raises(ValueError, match="max_batch_size"):
        LocalServer("/nowhere", max_batch_size=0)


async def test_a_crash_inside_a_round_fails_that_round_and_the_server_keeps_answering(world, refs):
    srv = LocalServer(str(world["base"]), device="cpu")
    try:
        await srv.preload(None)

        def crash(*args, **kwargs):
            raise RuntimeError("simulated kernel failure")

        handle = srv._base.register_forward_pre_hook(crash, with_kwargs=True)
        results = await ask_together(srv, [(None, QUESTIONS[0]), (None, QUESTIONS[1])])
        handle.remove()
        after = await answer(srv, None, GREEDY, QUESTIONS[2])
    finally:
        await srv.close()
    assert all(isinstance(r, ModelServerError) and "RuntimeError: simulated kernel failure" in str(r)
               for r in results), results
    assert after == refs[None, 2]


def test_wide_output_layer_computes_the_same_logits_and_is_used_only_for_vocabulary_sized_heads():
    import torch

    from serving.generation import WideOutputLinear, speed_up_output_layer

    torch.manual_seed(0)
    plain = torch.nn.Linear(32, 70000, bias=False)
    x = torch.randn(3, 2, 32)
    expected = plain(x)

    class Model(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def get_output_embeddings(self):
            return self.head

    model = Model(plain)
    assert speed_up_output_layer(model) and type(plain) is WideOutputLinear
    assert torch.allclose(plain(x), expected, atol=1e-5) and plain(x).shape == (3, 2, 70000)
    assert not speed_up_output_layer(model)  # already switched
    small = torch.nn.Linear(32, 512)
    assert not speed_up_output_layer(Model(small)) and type(small) is torch.nn.Linear
