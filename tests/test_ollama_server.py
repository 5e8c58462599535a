"""OllamaServer against the stand-in Ollama: publish (safetensors adapter, GGUF adapter and merged
paths), chat, preload, prune/remove, and every failure turned into a clear ModelServerError."""
import asyncio
import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from ollama_standin import OllamaStandIn, standin_reply
from serving.ollama_server import OllamaServer
from serving.ollama_templates import FORMATS
from serving.protocol import GenerationOptions, ModelServer, ModelServerError, ModelServerUnavailable
from storage.records import ModelVersion

from tiny_model import make_tiny_model_dir, make_tiny_qwen2_dir

GUILD = 4242
QUESTION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who runs the raid?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Base folders and trained-looking LoRA adapters (B non-zero) for llama, gemma3 and qwen2."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("llama", "gemma3", "qwen2"):
        base = (make_tiny_qwen2_dir(root / "qwen2-base") if arch == "qwen2"
                else make_tiny_model_dir(root / f"{arch}-base", arch))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(1)
        peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
        peft_model.save_pretrained(root / f"{arch}-adapter")
        out[arch] = (str(base), str(root / f"{arch}-adapter"))
    return out


def version(tiny, arch, number=1, guild=GUILD):
    base, adapter = tiny[arch]
    return ModelVersion(id=number, guild_id=guild, number=number, run_id=number, tag=None,
                        adapter_path=adapter, base_model=base, metrics={}, status="ready",
                        n_examples=3, created_at=time.time())



def make_server(standin, base_tag, **kw):
    return OllamaServer(host=standin.url, base_tag=base_tag, timeout_s=30, **kw)


@pytest.fixture
async def llama_server(standin):
    server = make_server(standin, "llama3.2:1b")
    yield server
    await server.close()


@pytest.fixture
async def gemma_server(standin):
    server = make_server(standin, "gemma3:270m")
    yield server
    await server.close()


def create_requests(standin):
    return [body for method, path, body in standin.requests if path == "/api/create"]


async def answer(server, v, options=GenerationOptions(temperature=0.0, seed=7)):
    return "".join([piece async for piece in server.chat(v, QUESTION, options)])


async def test_llama_version_is_created_from_the_clean_base_with_its_adapter(standin, llama_server, tiny):
    assert isinstance(llama_server, ModelServer)
    tag = await llama_server.publish(version(tiny, "llama"), system="You answer for the guild.")
    assert tag == f"guildtune-{GUILD}:v1"
    (create,) = create_requests(standin)
    assert create["from"] == "llama3.2:1b" and "files" not in create
    assert sorted(create["adapters"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert create["template"] == FORMATS["llama3"].template
    assert create["parameters"] == {"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    assert create["system"] == "You answer for the guild."
    stored_adapter = standin.blobs[create["adapters"]["adapter_model.safetensors"]]
    assert stored_adapter == open(f"{tiny['llama'][1]}/adapter_model.safetensors", "rb").read()

    pieces = [p async for p in llama_server.chat(version(tiny, "llama"), QUESTION, GenerationOptions(
        temperature=0.2, top_k=5, top_p=0.5, max_tokens=100, seed=3))]
    assert len(pieces) > 3  # streamed, not one blob
    assert "".join(pieces) == standin_reply(tag, QUESTION)
    chat = [b for _, path, b in standin.requests if path == "/api/chat"][-1]
    assert chat["options"] == {"temperature": 0.2, "top_k": 5, "top_p": 0.5, "num_predict": 100, "seed": 3}
    assert chat["messages"] == QUESTION
    assert llama_server.last_stats["done_reason"] == "stop" and llama_server.last_stats["eval_count"] == len(pieces)


def uploaded_bytes(standin):
    return sum(size for method, path, size in standin.requests if path.startswith("/api/blobs/"))


async def test_gemma3_version_is_a_gguf_adapter_where_ollamas_runner_applies_lora(tiny, tmp_path):
    standin = OllamaStandIn(engine_applies_lora=True)
    await standin.start()
    server = make_server(standin, "gemma3:270m", work_dir=tmp_path)
    try:
        tag = await server.publish(version(tiny, "gemma3", number=2))
        (create,) = create_requests(standin)
        assert create["from"] == "gemma3:270m" and "files" not in create
        assert list(create["adapters"]) == ["adapter.gguf"]
        assert create["template"] == FORMATS["gemma"].template and create["parameters"] == {"stop": ["<end_of_turn>"]}
        gguf_blob = standin.blobs[create["adapters"]["adapter.gguf"]]
        assert gguf_blob[:4] == b"GGUF" and standin.find(tag).adapter_architecture == "gemma3"
        assert uploaded_bytes(standin) == len(gguf_blob)  # one small file, no model weights
        assert standin.is_loaded(tag)  # loaded once before it counted as published
        assert await answer(server, version(tiny, "gemma3", number=2)) == standin_reply(tag, QUESTION)
        assert list(tmp_path.iterdir()) == []  # the staging folder is cleaned up
    finally:
        await server.close()
        await standin.stop()


async def test_qwen2_version_is_a_gguf_adapter_on_ollamas_llama_cpp_runner(standin, tiny):
    server = make_server(standin, "qwen2.5:0.5b")
    try:
        tag = await server.publish(version(tiny, "qwen2"))
        (create,) = create_requests(standin)
        assert create["from"] == "qwen2.5:0.5b" and list(create["adapters"]) == ["adapter.gguf"]
        assert create["template"] == FORMATS["chatml"].template
        assert await answer(server, version(tiny, "qwen2")) == standin_reply(tag, QUESTION)
    finally:
        await server.close()


async def test_gemma3_on_ollamas_own_engine_is_merged_after_one_refused_load(standin, tiny, tmp_path):
    """Ollama's own engine (Gemma 3) creates the tag with a LoRA but cannot load it: merged instead."""
    server = make_server(standin, "gemma3:270m", quantize="q4_K_M", work_dir=tmp_path)
    try:
        tag = await server.publish(version(tiny, "gemma3", number=2))
        first = create_requests(standin)
        await server.publish(version(tiny, "gemma3", number=3))
    finally:
        await server.close()
    assert tag == f"guildtune-{GUILD}:v2"
    assert [("adapters" in c, "files" in c) for c in first] == [(True, False), (False, True)]
    assert [("adapters" in c, "files" in c) for c in create_requests(standin)[2:]] == [(False, True)]  # remembered
    create = first[1]
    assert "from" not in create and create["quantize"] == "q4_K_M"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(create["files"])
    assert create["template"] == FORMATS["gemma"].template
    assert create["parameters"] == {"stop": ["<end_of_turn>"]}
    assert standin.find(tag).architecture == "gemma3" and not standin.find(tag).adapter_architecture
    assert list(tmp_path.iterdir()) == []  # the staging folders are cleaned up

    # The uploaded weights are base + (alpha/r)·B·A, in bf16.
    merged = load_safetensors(standin.blobs[create["files"]["model.safetensors"]])
    base_dir, adapter_dir = tiny["gemma3"]
    base = load_file(f"{base_dir}/model.safetensors")
    lora = load_file(f"{adapter_dir}/adapter_model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    a = lora[f"base_model.model.{key.replace('.weight', '.lora_A.weight')}"]
    b = lora[f"base_model.model.{key.replace('.weight', '.lora_B.weight')}"]
    expected = base[key] + 2.0 * (b @ a)
    assert merged[key].dtype == torch.bfloat16
    assert torch.allclose(merged[key].float(), expected, atol=2e-2)
    assert not torch.allclose(merged[key].float(), base[key], atol=1e-3)
    config = json.loads(standin.blobs[create["files"]["config.json"]])
    assert config["architectures"] == ["Gemma3ForCausalLM"]


async def test_gguf_adapter_for_another_base_fails_the_publish_and_leaves_no_tag(standin, tiny):
    server = make_server(standin, "qwen2.5:0.5b")  # a Qwen base tag, a Gemma-trained adapter
    try:
        with pytest.raises(ModelServerError, match="LoRA arch mismatch.*set GUILDTUNE_OLLAMA_BASE"):
            await server.publish(version(tiny, "gemma3"))
    finally:
        await server.close()
    assert standin.find(f"guildtune-{GUILD}:v1") is None


async def test_adapter_refused_by_ollama_falls_back_to_the_merged_import(tiny):
    standin = OllamaStandIn(adapters_supported=False)  # a newer Ollama without adapter support
    await standin.start()
    server = make_server(standin, "llama3.2:1b")
    try:
        tag = await server.publish(version(tiny, "llama"))
        assert [("adapters" in c, "files" in c) for c in create_requests(standin)] == [(True, False), (False, True)]
        assert await answer(server, version(tiny, "llama")) == standin_reply(tag, QUESTION)
    finally:
        await server.close()
        await standin.stop()


async def test_preload_loads_the_new_tag_and_health_reports_it(standin, llama_server, tiny):
    v = version(tiny, "llama")
    tag = await llama_server.publish(v)
    await llama_server.preload(v)
    assert standin.load_events == [tag] and standin.is_loaded(tag)
    health = await llama_server.health()
    assert health.ok and health.loaded == [tag] and standin.url in health.detail
    await answer(llama_server, v)
    assert standin.load_events == [tag]  # the answer after preload did not load again


async def test_no_version_answers_from_the_base_tag(standin, gemma_server):
    assert await answer(gemma_server, None) == standin_reply("gemma3:270m", QUESTION)


async def test_remove_deletes_only_that_versions_tag(standin, llama_server, tiny):
    for n in (1, 2, 3, 4):
        await llama_server.publish(version(tiny, "llama", number=n))
    await llama_server.publish(version(tiny, "llama", number=1, guild=7))  # another guild
    await llama_server.remove(version(tiny, "llama", number=3))
    await llama_server.remove(version(tiny, "llama", number=3))  # already gone: fine
    assert [n for n in (1, 2, 3, 4) if standin.find(f"guildtune-{GUILD}:v{n}") is not None] == [1, 2, 4]
    assert standin.find("guildtune-7:v1") is not None
    with pytest.raises(ModelServerError, match="no model 'guildtune-4242:v3'.*roll back"):
        await answer(llama_server, version(tiny, "llama", number=3))


async def test_server_down_is_unavailable_with_a_clear_message(standin, llama_server, tiny):
    await standin.go_down()
    expected = rf"Ollama at {standin.url} is not reachable: start it with `ollama serve` or set OLLAMA_HOST"
    with pytest.raises(ModelServerUnavailable, match=expected):
        await answer(llama_server, None)
    with pytest.raises(ModelServerUnavailable, match=expected):
        await llama_server.publish(version(tiny, "llama"))
    with pytest.raises(ModelServerUnavailable, match=expected):
        await llama_server.preload(None)
    health = await llama_server.health()
    assert not health.ok and "not reachable" in health.detail
    await standin.come_back()
    assert (await llama_server.health()).ok


async def test_mid_stream_chat_error_and_slow_answers(standin, llama_server):
    standin.fail_next_chat = "llama runner process has terminated"
    got = []
    with pytest.raises(ModelServerError, match="failed while answering with llama3.2:1b: llama runner"):
        async for piece in llama_server.chat(None, QUESTION, GenerationOptions()):
            got.append(piece)
    assert len(got) == 1  # what streamed before the failure was delivered
    standin.delay_s = 0.3
    with pytest.raises(ModelServerUnavailable, match=r"did not finish answering with llama3.2:1b within 0.5s"):
        await answer(llama_server, None, GenerationOptions(timeout_s=0.5))


async def test_failed_publish_leaves_no_tag_and_the_old_version_answers(standin, llama_server, tiny, tmp_path):
    v1 = version(tiny, "llama", number=1)
    old_tag = await llama_server.publish(v1)
    standin.fail_next_create = "error converting adapter: out of disk space"
    with pytest.raises(ModelServerError, match="out of disk space"):
        await llama_server.publish(version(tiny, "llama", number=2))
    assert standin.find(f"guildtune-{GUILD}:v2") is None
    # A new adapter (blobs not stored yet) whose upload arrives corrupted.
    shutil.copytree(tiny["llama"][1], tmp_path / "v2")
    config = json.loads((tmp_path / "v2/adapter_config.json").read_text())
    (tmp_path / "v2/adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8}))
    v2 = ModelVersion(**{**version(tiny, "llama", number=2).__dict__, "adapter_path": str(tmp_path / "v2")})
    standin.corrupt_next_blob = True
    with pytest.raises(ModelServerError, match="refused publishing guildtune-4242:v2: digest mismatch"):
        await llama_server.publish(v2)
    assert standin.find(f"guildtune-{GUILD}:v2") is None
    assert await answer(llama_server, v1) == standin_reply(old_tag, QUESTION)


async def test_malformed_publishes_are_refused_with_the_fix(standin, tiny, tmp_path):
    missing_base = make_server(standin, "llama3.3:70b")
    bad_quant = make_server(standin, "gemma3:270m", quantize="q1_fancy")
    try:
        with pytest.raises(ModelServerError, match=r"no base model 'llama3.3:70b': run `ollama pull llama3.3:70b`"):
            await missing_base.publish(version(tiny, "llama"))
        with pytest.raises(ModelServerError, match="refused publishing .*unsupported quantization type q1_fancy"):
            await bad_quant.publish(version(tiny, "gemma3"))
        empty = ModelVersion(**{**version(tiny, "llama").__dict__, "adapter_path": str(tmp_path)})
        with pytest.raises(ModelServerError, match="has no adapter_config.json"):
            await missing_base.publish(empty)
    finally:
        await missing_base.close()
        await bad_quant.close()
    assert not [m for m in standin.models if m.startswith("guildtune-")]


async def test_slow_publish_times_out_and_leaves_no_tag(standin, tiny):
    standin.delay_s = 0.4
    server = make_server(standin, "llama3.2:1b", publish_timeout_s=0.6)
    try:
        with pytest.raises(ModelServerUnavailable, match=r"did not finish publishing guildtune-4242:v1 within 0.6s"):
            await server.publish(version(tiny, "llama"))
    finally:
        await server.close()
    await asyncio.sleep(1.0)  # whatever the server was still doing has finished by now
    assert standin.find(f"guildtune-{GUILD}:v1") is None


async def test_llama_adapter_on_lm_head_is_merged_since_ollama_cannot_map_it(standin, llama_server, tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, _ = tiny["llama"]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "lm_head"])).save_pretrained(tmp_path / "a")
    v = ModelVersion(**{**version(tiny, "llama").__dict__, "adapter_path": str(tmp_path / "a")})
    tag = await llama_server.publish(v)
    (create,) = create_requests(standin)
    assert "files" in create and "adapters" not in create
    assert create["template"] == FORMATS["llama3"].template
    assert standin.find(tag).architecture == "llama"


async def test_adapter_weights_a_lora_file_cannot_carry_are_merged_without_blaming_ollama(standin, tiny, tmp_path):
    from safetensors.torch import save_file

    shutil.copytree(tiny["gemma3"][1], tmp_path / "a")
    weights = load_file(tmp_path / "a/adapter_model.safetensors")
    weights["base_model.model.model.norm.weight"] = torch.ones(64)  # not a LoRA A/B tensor
    save_file(weights, tmp_path / "a/adapter_model.safetensors")
    v = ModelVersion(**{**version(tiny, "gemma3").__dict__, "adapter_path": str(tmp_path / "a")})
    server = make_server(standin, "gemma3:270m", work_dir=tmp_path / "stage")
    try:
        await server.publish(v)
    finally:
        await server.close()
    assert [("adapters" in c, "files" in c) for c in create_requests(standin)] == [(False, True)]
    assert server.lora_refused == set()  # this adapter's problem, not Ollama's
