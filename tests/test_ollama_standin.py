"""The stand-in Ollama follows the documented API and refuses what Ollama refuses.

These tests pin the stand-in's behaviour with the real `ollama.AsyncClient` (and raw HTTP where the
client cannot send a malformed request), so the OllamaServer tests run against a faithful server.
"""
import hashlib
import json

import httpx
import ollama
import pytest
import torch
from safetensors.torch import save as save_safetensors

from ollama_standin import OllamaStandIn, check_go_template, reply_pieces, standin_reply
from serving.ollama_templates import FORMATS



@pytest.fixture
async def client(standin):
    c = ollama.AsyncClient(host=standin.url)
    yield c
    await c.close()


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def lora_bytes(dtype=torch.float32) -> bytes:
    return save_safetensors({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8, dtype=dtype),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2, dtype=dtype),
    })


async def upload_adapter(client, tmp_path) -> dict[str, str]:
    cfg = write(tmp_path, "a/adapter_config.json", json.dumps({"peft_type": "LORA", "r": 2}).encode())
    weights = write(tmp_path, "a/adapter_model.safetensors", lora_bytes())
    return {"adapter_config.json": await client.create_blob(cfg),
            "adapter_model.safetensors": await client.create_blob(weights)}


async def upload_model_files(client, tmp_path, architecture: str, dtype=torch.float16) -> dict[str, str]:
    files = {
        "config.json": json.dumps({"architectures": [architecture], "model_type": "x"}).encode(),
        "tokenizer.json": b'{"model": {"type": "WordLevel"}}',
        "model.safetensors": save_safetensors({"model.embed_tokens.weight": torch.ones(4, 8, dtype=dtype)}),
    }
    return {name: await client.create_blob(write(tmp_path, f"m/{name}", data)) for name, data in files.items()}


async def test_blob_upload_is_verified_by_digest(standin, client, tmp_path):
    path = write(tmp_path, "w.bin", b"weights")
    digest = await client.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
    async with httpx.AsyncClient(base_url=standin.url) as http:
        assert (await http.head(f"/api/blobs/{digest}")).status_code == 200
        assert (await http.head(f"/api/blobs/sha256:{'0' * 64}")).status_code == 404
        wrong = await http.post(f"/api/blobs/sha256:{'a' * 64}", content=b"other bytes")
        assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
        bad = await http.post("/api/blobs/sha256:xyz", content=b"x")
        assert bad.status_code == 400 and "invalid digest format" in bad.json()["error"]
        again = await http.post(f"/api/blobs/{digest}", content=b"weights")
        assert again.status_code == 200  # already stored
    assert f"sha256:{'a' * 64}" not in standin.blobs


async def test_create_from_base_with_llama_adapter_streams_progress(standin, client, tmp_path):
    adapters = await upload_adapter(client, tmp_path)
    statuses = [p.status async for p in await client.create(
        model="g-1:v1", from_="llama3.2:1b", adapters=adapters, template=FORMATS["llama3"].template,
        parameters={"stop": ["<|eot_id|>"]}, system="be kind", stream=True)]
    assert statuses[-1] == "success" and len(statuses) > 2
    shown = await client.show("g-1:v1")
    assert shown.template == FORMATS["llama3"].template
    assert "<|eot_id|>" in shown.parameters and 'SYSTEM """be kind"""' in shown.modelfile
    assert shown.modelinfo["general.architecture"] == "llama"


async def test_adapter_on_gemma3_base_is_refused_like_ollama(standin, client, tmp_path):
    adapters = await upload_adapter(client, tmp_path)
    with pytest.raises(ollama.ResponseError) as err:
        await client.create(model="g-1:v1", from_="gemma3:270m", adapters=adapters)
    assert err.value.status_code == 400 and err.value.error == "unsupported architecture"
    assert standin.find("g-1:v1") is None


async def test_adapters_refused_by_newer_ollama(tmp_path):
    server = OllamaStandIn(adapters_supported=False)
    await server.start()
    try:
        async with ollama.AsyncClient(host=server.url) as c:
            adapters = await upload_adapter(c, tmp_path)
            with pytest.raises(ollama.ResponseError, match="no longer supported"):
                await c.create(model="g-1:v1", from_="llama3.2:1b", adapters=adapters)
    finally:
        await server.stop()


async def test_create_from_files_checks_architecture_and_quantize(standin, client, tmp_path):
    files = await upload_model_files(client, tmp_path, "Gemma3ForCausalLM")
    done = await client.create(model="merged:v1", files=files, quantize="q4_K_M")
    assert done.status == "success"
    assert standin.find("merged:v1").architecture == "gemma3"
    qwen3 = await upload_model_files(client, tmp_path / "q", "Qwen3ForCausalLM")
    with pytest.raises(ollama.ResponseError, match="unsupported architecture"):
        await client.create(model="q3:v1", files=qwen3)
    int_weights = await upload_model_files(client, tmp_path / "i", "LlamaForCausalLM", dtype=torch.int8)
    with pytest.raises(ollama.ResponseError, match="only supported for F16 and F32"):
        await client.create(model="i8:v1", files=int_weights, quantize="q8_0")


async def test_malformed_creates_are_rejected_with_400(standin, client, tmp_path):
    cases = [
        ({"model": "x:v1"}, "neither 'from' or 'files' was specified"),
        ({"model": "x:v1", "files": {"model.safetensors": f"sha256:{'1' * 64}"}}, "blob not found"),
        ({"model": "x:v1", "files": {"model.safetensors": "md5:1234"}}, "invalid digest"),
        ({"model": "x:v1", "files": {"../etc/passwd": f"sha256:{'1' * 64}"}}, "file path must be relative"),
        ({"model": "x:v1", "from": "nope:1b"}, "model 'nope:1b' not found"),
        ({"model": "bad name!", "from": "gemma3:270m"}, "invalid model name"),
        ({"model": "x:v1", "from": "gemma3:270m", "template": "{{ if .System }}"}, "template: unexpected EOF"),
        ({"model": "x:v1", "from": "gemma3:270m", "parameters": {"stopp": ["x"]}}, "unknown parameter"),
    ]
    async with httpx.AsyncClient(base_url=standin.url) as http:
        for body, message in cases:
            response = await http.post("/api/create", json=body)
            assert response.status_code == 400, body
            assert message in response.json()["error"], (body, response.text)
        assert (await http.post("/api/create", content=b"")).json()["error"] == "missing request body"
    assert [m for m in standin.models if m.startswith("x:")] == []


async def test_create_failing_mid_stream_is_an_error_line_and_stores_nothing(standin, client, tmp_path):
    adapters = await upload_adapter(client, tmp_path)
    standin.fail_next_create = "llama runner process has terminated"
    with pytest.raises(ollama.ResponseError) as err:
        async for _ in await client.create(model="g-1:v1", from_="llama3.2:1b", adapters=adapters, stream=True):
            pass
    assert err.value.status_code == -1 and "terminated" in err.value.error
    assert standin.find("g-1:v1") is None


async def test_chat_streams_a_reply_naming_the_model_and_ends_with_counts(standin, client):
    messages = [{"role": "user", "content": "what is the rule?"}]
    parts = [p async for p in await client.chat(model="gemma3:270m", messages=messages, stream=True)]
    text = "".join(p.message.content for p in parts)
    assert text == standin_reply("gemma3:270m", messages)
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    assert final.eval_count == len(reply_pieces(text)) and final.prompt_eval_count == 4
    assert final.eval_duration > 0
    short = await client.chat(model="gemma3:270m", messages=messages, options={"num_predict": 2})
    assert short.done_reason == "length" and len(reply_pieces(short.message.content)) == 2


async def test_preload_keep_alive_ps_and_unload(standin, client):
    loaded = await client.chat(model="gemma3:270m", messages=[], keep_alive=-1)
    assert loaded.done and loaded.done_reason == "load"
    assert [m.model for m in (await client.ps()).models] == ["gemma3:270m"]
    unloaded = await client.chat(model="gemma3:270m", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and (await client.ps()).models == []
    with pytest.raises(ollama.ResponseError, match="invalid duration"):
        await client.chat(model="gemma3:270m", messages=[], keep_alive="soon")


async def test_unknown_models_are_404_and_copy_delete_tags_work(standin, client):
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model="missing:v1", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and err.value.error == "model 'missing:v1' not found"
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("missing:v1")
    assert err.value.status_code == 404
    await client.copy("gemma3:270m", "mine:v9")
    assert "mine:v9" in [m.model for m in (await client.list()).models]
    await client.delete("mine:v9")
    assert "mine:v9" not in [m.model for m in (await client.list()).models]


async def test_chat_failing_mid_stream_and_server_going_down(standin, client):
    standin.fail_next_chat = "out of memory"
    with pytest.raises(ollama.ResponseError) as err:
        async for _ in await client.chat(model="gemma3:270m", messages=[{"role": "user", "content": "q"}],
                                         stream=True):
            pass
    assert err.value.status_code == -1 and err.value.error == "out of memory"
    await standin.go_down()
    with pytest.raises(ConnectionError):
        await client.list()
    await standin.come_back()
    assert len((await client.list()).models) == len(standin.models)


def test_shipped_templates_parse_and_bad_ones_do_not():
    for fmt in FORMATS.values():
        check_go_template(fmt.template)
    for bad in ("{{ range .Messages }}", "{{ end }}", "{{ .Content }", "{{ else }}"):
        with pytest.raises(ValueError):
            check_go_template(bad)


def gguf_bytes(tmp_path, *, general_type="adapter", arch="qwen2", b_rank=2) -> bytes:
    import gguf
    import numpy as np

    path = tmp_path / f"{general_type}-{arch}-{b_rank}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(general_type)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 4.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 8), dtype=np.float16))  # dims [8, 2]
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((8, b_rank), dtype=np.float16))  # dims [rank, 8]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


async def test_gguf_adapter_is_accepted_and_loads_only_where_ollamas_runner_applies_lora(standin, client, tmp_path):
    digest = await client.create_blob(write(tmp_path, "a.gguf", gguf_bytes(tmp_path)))
    await client.create(model="q:v1", from_="qwen2.5:0.5b", adapters={"adapter.gguf": digest})
    await client.chat(model="q:v1", messages=[])  # llama.cpp's runner applies it
    await client.create(model="g:v1", from_="gemma3:270m", adapters={"adapter.gguf": digest})  # create succeeds...
    with pytest.raises(ollama.ResponseError, match="loras are not yet implemented") as err:
        await client.chat(model="g:v1", messages=[])  # ...but Ollama's own engine cannot load it
    assert err.value.status_code == 500
    await client.create(model="l:v1", from_="llama3.2:1b", adapters={"adapter.gguf": digest})
    with pytest.raises(ollama.ResponseError, match="model arch and LoRA arch mismatch"):
        await client.chat(model="l:v1", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("adapters, error", [
    ({"adapter.gguf": "model"}, "expect general.type to be 'adapter'"),
    ({"adapter.gguf": "bad-rank"}, "lora_a tensor is not transposed"),
    ({"a.gguf": "adapter", "b.gguf": "adapter"}, "only one adapter is currently supported"),
    ({"adapter.gguf": "adapter", "adapter_model.safetensors": "lora"}, "mixed model file types"),
])
async def test_gguf_adapters_ollama_or_llama_cpp_would_refuse_are_400(standin, client, tmp_path, adapters, error):
    blobs = {"adapter": gguf_bytes(tmp_path), "model": gguf_bytes(tmp_path, general_type="model"),
             "bad-rank": gguf_bytes(tmp_path, b_rank=3), "lora": lora_bytes()}
    files = {rel: await client.create_blob(write(tmp_path, rel, blobs[kind])) for rel, kind in adapters.items()}
    with pytest.raises(ollama.ResponseError, match=error) as err:
        await client.create(model="q:v1", from_="qwen2.5:0.5b", adapters=files)
    assert err.value.status_code == 400 and standin.find("q:v1") is None
