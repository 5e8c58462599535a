"""LocalServer on a tiny Gemma 3 model: adapters answer as themselves, swaps never break an answer.

Reference answers come from plain transformers + PEFT `generate` calls made here, independent
of the server's code, so "the server answered with version X" is checked, not assumed.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it: no model hub

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from serving.local_server import LocalServer
from serving.protocol import GenerationOptions, ModelServer, ModelServerError, ModelServerUnavailable
from storage.records import ModelVersion
from tiny_model import make_tiny_model_dir

QUESTION = [{"role": "user", "content": "What is the rule about pineapple on pizza?"}]
GREEDY = GenerationOptions(temperature=0, max_tokens=8, timeout_s=30)


def make_adapter(base_dir: Path, out_dir: Path, seed: int, model=None) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it really changes the answers."""
    torch.manual_seed(seed)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir


def reference_answer(base_dir: Path, adapter_dir: Path | None, messages=QUESTION, max_tokens: int = 8) -> str:
    """What this version alone answers, greedy, straight from transformers/PEFT."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def version(number: int, adapter: Path, base: Path, guild_id: int = 1) -> ModelVersion:
    return ModelVersion(id=100 + number, guild_id=guild_id, number=number, run_id=number, tag=None,
                        adapter_path=str(adapter), base_model=str(base), metrics={}, status="ready",
                        n_examples=3, created_at=time.time())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny base, three adapters, and the reference answers of base, v1 and v2."""
    root = tmp_path_factory.mktemp("local_server")
    base = Path(make_tiny_model_dir(root / "base", arch="gemma3"))
    adapters = {n: make_adapter(base, root / f"adapter{n}", seed=n) for n in (1, 2, 3)}
    versions = {n: version(n, path, base) for n, path in adapters.items()}
    refs = {None: reference_answer(base, None)}
    refs.update({n: reference_answer(base, adapters[n]) for n in (1, 2, 3)})
    return {"root": root, "base": base, "versions": versions, "refs": refs}


@pytest.fixture
async def server(world):
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=4)
    yield srv
    await srv.close()


async def answer(srv: LocalServer, ver: ModelVersion | None, options=GREEDY, messages=QUESTION) -> str:
    return "".join([piece async for piece in srv.chat(ver, messages, options)])


def test_importing_the_server_does_not_import_torch():
    code = "import sys, serving.local_server; sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


async def test_base_and_each_adapter_answer_as_themselves(server, world):
    refs, v = world["refs"], world["versions"]
    assert isinstance(server, ModelServer)
    assert len({refs[None], refs[1], refs[2]}) == 3, "the tiny adapters must change the greedy answer"
    assert all(refs[k] for k in (None, 1, 2)), "empty reference answers would make this test vacuous"

    assert (await server.health()).ok
    assert await server.publish(v[1]) == "local:v1"
    assert await server.publish(v[2]) == "local:v2"
    # Interleaved and repeated: greedy answers are deterministic and each matches its version.
    for ver in (None, v[1], v[2], None, v[2], v[1]):
        assert await answer(server, ver) == refs[ver.number if ver else None]
    health = await server.health()
    assert health.ok and health.loaded == ["local:v1", "local:v2"]


async def test_streams_in_pieces_and_sampling_honours_the_seed(server, world):
    pieces = [p async for p in server.chat(None, QUESTION, GenerationOptions(temperature=0, max_tokens=8))]
    assert len(pieces) > 1 and "".join(pieces) == world["refs"][None]

    sampled = GenerationOptions(temperature=1.5, top_k=0, top_p=1.0, max_tokens=12, seed=7)
    first = await answer(server, None, sampled)
    assert await answer(server, None, sampled) == first
    others = {await answer(server, None, GenerationOptions(temperature=1.5, top_k=0, top_p=1.0, max_tokens=12,
                                                           seed=s)) for s in range(8, 12)}
    assert others - {first}, "different seeds should sample different answers"


@pytest.mark.parametrize("max_loaded", [1, 4])
async def test_fifty_concurrent_questions_while_versions_swap(world, max_loaded):
    """The bot's view: each /ask reads the active pointer, the trainer flips it meanwhile.

    With max_loaded_adapters=1 every swap evicts the other adapter, and the swapper also removes
    versions now and then, so an unload racing an answer in flight would show up as an error or a
    wrong answer.
    """
    refs, v = world["refs"], world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=max_loaded)
    active: dict[str, ModelVersion | None] = {"version": v[1]}
    await srv.publish(v[1])
    done = asyncio.Event()
    swaps = 0

    async def trainer_swaps():
        nonlocal swaps
        for nxt in itertools.cycle([v[2], None, v[1], v[2], v[1], None]):
            if done.is_set():
                return
            if nxt is not None:
                await srv.publish(nxt)  # load before the pointer flips, as the tracker does
                await srv.preload(nxt)
            active["version"] = nxt
            swaps += 1
            if swaps % 3 == 0 and nxt is not None:
                await srv.remove(v[1] if nxt is v[2] else v[2])
            await asyncio.sleep(0.005)

    async def ask(i: int):
        while swaps < i // 4:  # questions arrive in waves, each racing the swaps that follow it
            await asyncio.sleep(0.002)
        used = active["version"]
        text = await answer(srv, used)
        return used, text

    swapper = asyncio.create_task(trainer_swaps())
    try:
        results = await asyncio.gather(*(ask(i) for i in range(50)), return_exceptions=True)
    finally:
        done.set()
        await swapper
        await srv.close()

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    wrong = [(used.number if used else None, text) for used, text in results
             if text != refs[used.number if used else None]]
    assert wrong == []
    answered_by = {used.number if used else None for used, _ in results}
    assert answered_by == {1, 2, None} and swaps >= 12, (answered_by, swaps)


async def test_no_token_in_time_raises_unavailable_and_stops_generation(server, world):
    await server.preload(None)
    calls = []

    def slow_forward(module, args, kwargs):
        calls.append(time.monotonic())
        time.sleep(0.4)

    # The only way to make a tiny model slow: a hook on the loaded base model (test-only access).
    handle = server._base.register_forward_pre_hook(slow_forward, with_kwargs=True)
    try:
        with pytest.raises(ModelServerUnavailable, match="timeout_s"):
            await answer(server, None, GenerationOptions(temperature=0, max_tokens=50, timeout_s=0.1))
        await server.preload(None)  # queued behind the abandoned generation: returns once it stopped
        assert 1 <= len(calls) <= 2, f"generation kept running after the timeout ({len(calls)} forward passes)"
    finally:
        handle.remove()
    assert await answer(server, None) == world["refs"][None]


async def test_consumer_leaving_stops_generation(server, world):
    await server.preload(None)
    calls = []
    handle = server._base.register_forward_pre_hook(lambda *a, **k: calls.append(1), with_kwargs=True)
    long = GenerationOptions(temperature=0, max_tokens=60)
    try:
        full = await answer(server, None, long)
        full_calls = len(calls)
        assert full_calls > 20, "precondition: the uninterrupted answer must be long"
        calls.clear()
        stream = server.chat(None, QUESTION, long)
        first = await stream.__anext__()
        await stream.aclose()
        await server.preload(None)  # waits for the worker to go idle
        assert first and full.startswith(first)
        assert len(calls) < full_calls // 2, f"{len(calls)} of {full_calls} forward passes ran after leaving"
    finally:
        handle.remove()


async def test_busy_queue_answers_busy_instead_of_hanging(world):
    srv = LocalServer(str(world["base"]), device="cpu", max_queue_wait_s=0.3)
    try:
        await srv.preload(None)
        handle = srv._base.register_forward_pre_hook(lambda *a, **k: time.sleep(0.2), with_kwargs=True)
        slow = asyncio.create_task(answer(srv, None, GenerationOptions(temperature=0, max_tokens=6)))
        await asyncio.sleep(0.05)
        with pytest.raises(ModelServerUnavailable, match="busy"):
            await answer(srv, None)
        handle.remove()
        assert world["refs"][None].startswith(await slow)  # the question being answered was unharmed
    finally:
        await srv.close()


def _write_corrupt(folder: Path, good: Path, what: str) -> Path:
    folder.mkdir()
    for f in good.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if what == "no_config":
        (folder / "adapter_config.json").unlink()
    elif what == "bad_json":
        (folder / "adapter_config.json").write_text("{not json", encoding="utf-8")
    elif what == "truncated":
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif what == "no_weights":
        (folder / "adapter_model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("what, message", [
    ("missing", "does not exist"),
    ("no_config", "no adapter_config.json"),
    ("bad_json", "not valid JSON"),
    ("truncated", "truncated or corrupt"),
    ("no_weights", "no adapter_model.safetensors"),
])
async def test_broken_adapter_folder_is_refused_clearly(server, world, tmp_path, what, message):
    v = world["versions"]
    await server.publish(v[1])
    folder = tmp_path / "missing" if what == "missing" else _write_corrupt(tmp_path / what, Path(v[1].adapter_path), what)
    broken = version(9, folder, world["base"])
    with pytest.raises(ModelServerError, match=message) as caught:
        await server.publish(broken)
    assert "Version 9" in str(caught.value) and "Retrain" in str(caught.value)
    # The failed publish leaves the working version and the base untouched.
    assert await answer(server, v[1]) == world["refs"][1]
    assert await answer(server, None) == world["refs"][None]
    assert (await server.health()).loaded == ["local:v1"]


async def test_adapter_from_a_different_base_is_refused(server, world, tmp_path):
    config = AutoConfig.from_pretrained(world["base"])
    config.hidden_size = config.hidden_size * 2
    other_base = tmp_path / "other_base"
    AutoModelForCausalLM.from_config(config).save_pretrained(other_base)
    # Trained from a folder we can read: the config comparison names the difference.
    named = make_adapter(other_base, tmp_path / "named", seed=5)
    with pytest.raises(ModelServerError, match="different base model.*hidden_size"):
        await server.publish(version(7, named, world["base"]))
    # Base folder gone (another machine): the tensor shapes still give it away.
    anonymous = make_adapter(other_base, tmp_path / "anonymous", seed=5,
                             model=AutoModelForCausalLM.from_config(config))
    cfg = json.loads((anonymous / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/nowhere/gemma"
    (anonymous / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelServerError, match="different base"):
        await server.publish(version(8, anonymous, world["base"]))
    assert await answer(server, None) == world["refs"][None]


async def test_least_recently_used_adapter_is_evicted(world):
    refs, v = world["refs"], world["versions"]
    srv = LocalServer(str(world["base"]), device="cpu", max_loaded_adapters=2)
    try:
        await srv.publish(v[1])
        await srv.publish(v[2])
        assert await answer(srv, v[1]) == refs[1]  # v1 is now the most recently used
        await srv.publish(v[3])
        assert (await srv.health()).loaded == ["local:v1", "local:v3"]
        assert await answer(srv, v[3]) == refs[3]
        # An evicted version is reloaded on demand (evicting the LRU again), answering as itself.
        assert await answer(srv, v[2]) == refs[2]
        assert (await srv.health()).loaded == ["local:v3", "local:v2"]
        # Removing every adapter leaves a clean base model.
        await srv.remove(v[3])
        await srv.remove(v[2])
        await srv.remove(v[2])  # removing twice is harmless
        assert (await srv.health()).loaded == []
        assert await answer(srv, None) == refs[None]
        assert await answer(srv, v[1]) == refs[1]
    finally:
        await srv.close()


async def test_bad_requests_and_shutdown_give_clear_errors(server, world):
    with pytest.raises(ModelServerError, match="temperature -1 is negative"):
        await answer(server, None, GenerationOptions(temperature=-1))
    with pytest.raises(ModelServerError, match="no messages"):
        await answer(server, None, messages=[])
    with pytest.raises(ModelServerError, match="Message 1 .* malformed"):
        await answer(server, None, messages=[{"role": "robot", "content": "hi"}])
    await server.close()
    with pytest.raises(ModelServerUnavailable, match="shut down"):
        await answer(server, None)
    assert not (await server.health()).ok


async def test_missing_base_model_is_reported(tmp_path):
    srv = LocalServer(str(tmp_path / "nothing"), device="cpu")
    try:
        assert not (await srv.health()).ok
        with pytest.raises(ModelServerError, match="no config.json"):
            await srv.preload(None)
    finally:
        await srv.close()
