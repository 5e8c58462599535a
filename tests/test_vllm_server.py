"""VllmServer against the stand-in vLLM (tests/vllm_standin.py): publish under versioned names,
streaming chat, preload/remove, health, the shared adapter folder, and each refusal vLLM makes
turned into a message that says what to do; and one /ask through the bot answered by vLLM."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from ollama_standin import standin_reply
from serving.protocol import GenerationOptions, ModelServer, ModelServerError, ModelServerUnavailable
from serving.vllm_server import VllmServer
from storage.records import ModelVersion
from tests.bot_harness import start_world
from vllm_standin import VllmStandIn

GUILD = 4242
BASE = "google/gemma-3-270m-it"
QUESTION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who runs the raid?"}]


@pytest.fixture
async def vllm():
    standin = VllmStandIn(BASE)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def server(vllm):
    s = VllmServer(vllm.url, timeout_s=10)
    yield s
    await s.close()


def version(adapter_path, number=1, guild=GUILD):
    return ModelVersion(id=number, guild_id=guild, number=number, run_id=number, tag=None,
                        adapter_path=str(adapter_path), base_model="", metrics={}, status="ready",
                        n_examples=3, created_at=time.time())


async def answer(server, v, options=GenerationOptions(temperature=0.0, seed=7)):
    return "".join([piece async for piece in server.chat(v, QUESTION, options)])


def loads(standin):
    return [body for _, path, body in standin.requests if path == "/v1/load_lora_adapter"]


def adapter_with_rank(src, dst: Path, r: int) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, "r": r}))
    return dst


async def test_publish_loads_a_versioned_name_and_chat_streams_from_it(vllm, server, tiny_adapter):
    assert isinstance(server, ModelServer)
    _, adapter = tiny_adapter
    v1 = version(adapter)
    assert await server.publish(v1) == f"guildtune-{GUILD}-v1"
    assert loads(vllm) == [{"lora_name": f"guildtune-{GUILD}-v1", "lora_path": str(Path(adapter).resolve())}]
    await server.publish(v1)  # the bot's tracker publishes again after the trainer did: no second load
    await server.preload(v1)
    assert vllm.load_count == 1

    pieces = [p async for p in server.chat(v1, QUESTION, GenerationOptions(temperature=0.2, top_k=5, top_p=0.5,
                                                                           max_tokens=100, seed=3))]
    assert len(pieces) > 3  # streamed, not one blob
    assert "".join(pieces) == standin_reply(f"guildtune-{GUILD}-v1", QUESTION)
    chat = [b for _, path, b in vllm.requests if path == "/v1/chat/completions"][-1]
    assert chat["model"] == f"guildtune-{GUILD}-v1" and chat["stream"] is True and chat["messages"] == QUESTION
    assert (chat["temperature"], chat["top_k"], chat["top_p"], chat["max_tokens"], chat["seed"]) == (0.2, 5, 0.5, 100, 3)
    assert server.last_stats["done_reason"] == "stop" and server.last_stats["eval_count"] == len(pieces)

    assert await answer(server, None) == standin_reply(BASE, QUESTION)  # no version: the base model
    v2 = version(adapter, number=2)
    await server.publish(v2)  # a new version is a new name, never a reload of the old one
    health = await server.health()
    assert health.ok and health.loaded == [f"guildtune-{GUILD}-v1", f"guildtune-{GUILD}-v2"]
    assert BASE in health.detail and vllm.url in health.detail

    await server.remove(v1)
    await server.remove(v1)  # already gone: fine
    assert list(vllm.adapters) == [f"guildtune-{GUILD}-v2"]
    assert await answer(server, v2) == standin_reply(f"guildtune-{GUILD}-v2", QUESTION)


async def test_adapters_are_copied_to_the_shared_folder_and_given_by_the_vllm_hosts_path(vllm, tiny_adapter, tmp_path):
    _, adapter = tiny_adapter
    shared = tmp_path / "shared"
    (tmp_path / "as-seen-by-vllm").symlink_to(shared, target_is_directory=True)  # the same folder, mounted elsewhere
    seen = str(tmp_path / "as-seen-by-vllm")
    server = VllmServer(vllm.url, adapter_dir=shared, server_adapter_dir=seen + "/")
    try:
        name = await server.publish(version(adapter))
        assert vllm.adapters == {name: f"{seen}/{name}"}
        copied = sorted(p.name for p in (shared / name).iterdir())
        assert copied == sorted(p.name for p in Path(adapter).iterdir() if p.is_file())
        assert [p.name for p in shared.iterdir()] == [name]  # no staging leftovers
        assert await answer(server, version(adapter)) == standin_reply(name, QUESTION)

        other = adapter_with_rank(adapter, tmp_path / "other", 4)  # different files, same version number
        with pytest.raises(ModelServerError, match="already holds a different adapter.*never reused"):
            await server.publish(version(other))

        await server.remove(version(adapter))
        assert not (shared / name).exists() and vllm.adapters == {}
    finally:
        await server.close()


async def test_a_name_vllm_already_has_is_reused_only_for_the_same_adapter(vllm, server, tiny_adapter, tmp_path):
    _, adapter = tiny_adapter
    name, path = f"guildtune-{GUILD}-v1", str(Path(adapter).resolve())
    async with httpx.AsyncClient(base_url=vllm.url) as http:  # the trainer's process loaded it first
        assert (await http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})).status_code == 200
        again = await http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        assert again.status_code == 400 and "has already been loaded" in again.json()["error"]["message"]
    assert await server.publish(version(adapter)) == name and vllm.load_count == 1

    moved = shutil.copytree(adapter, tmp_path / "elsewhere")
    with pytest.raises(ModelServerError, match=rf"already serves an adapter named {name} from {path}.*never reused"):
        await server.publish(version(moved))


async def test_rank_above_max_lora_rank_is_refused_with_the_fix(vllm, server, tiny_adapter, tmp_path):
    wide = adapter_with_rank(tiny_adapter[1], tmp_path / "r32", 32)
    with pytest.raises(ModelServerError, match=r"LoRA rank 32 is greater than max_lora_rank 16\..*--max-lora-rank"):
        await server.publish(version(wide))
    assert vllm.adapters == {}


async def test_runtime_updates_off_is_named_in_publish_and_health(tiny_adapter):
    standin = VllmStandIn(BASE, runtime_lora_updating=False)
    await standin.start()
    server = VllmServer(standin.url)
    try:
        with pytest.raises(ModelServerError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            await server.publish(version(tiny_adapter[1]))
        health = await server.health()
        assert not health.ok and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in health.detail
        assert await answer(server, None) == standin_reply(BASE, QUESTION)  # the base still answers
    finally:
        await server.close()
        await standin.stop()


async def test_missing_adapter_files_are_refused_with_where_to_put_them(vllm, tiny_adapter, tmp_path):
    _, adapter = tiny_adapter
    server = VllmServer(vllm.url, adapter_dir=tmp_path / "shared", server_adapter_dir="/mnt/not-mounted")
    try:
        with pytest.raises(ModelServerError, match=r"found no adapter at /mnt/not-mounted/guildtune-4242-v1 "
                                                   r"\(Loading lora .* No adapter found.*GUILDTUNE_VLLM_SERVER_ADAPTER_DIR"):
            await server.publish(version(adapter))
        with pytest.raises(ModelServerError, match="has no adapter_config.json"):
            await server.publish(version(tmp_path / "empty"))
    finally:
        await server.close()
    assert vllm.adapters == {}


async def test_after_a_vllm_restart_an_answer_loads_its_adapter_again(vllm, server, tiny_adapter, tmp_path):
    v1 = version(tiny_adapter[1])
    await server.publish(v1)
    await vllm.restart()  # runtime-loaded adapters are forgotten
    async with httpx.AsyncClient(base_url=vllm.url) as http:
        unknown = await http.post("/v1/chat/completions", json={"model": server.name_for(v1), "messages": QUESTION})
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]["message"]
    assert await answer(server, v1) == standin_reply(server.name_for(v1), QUESTION)
    assert vllm.load_count == 2

    gone = version(tmp_path / "deleted", number=9)  # a version whose files are gone cannot come back
    with pytest.raises(ModelServerError, match="guildtune-4242-v9 cannot be published|has no adapter_config"):
        await answer(server, gone)


async def test_api_key_is_sent_and_a_wrong_one_is_named_without_showing_it(tiny_adapter):
    standin = VllmStandIn(BASE, api_key="sk-vllm-secret")
    await standin.start()
    wrong = VllmServer(standin.url, api_key="sk-wrong-key")
    right = VllmServer(standin.url + "/v1", api_key="sk-vllm-secret")
    try:
        with pytest.raises(ModelServerError, match="refused the API key.*VLLM_API_KEY") as caught:
            await answer(wrong, None)
        assert "sk-" not in str(caught.value)
        assert not (await wrong.health()).ok
        name = await right.publish(version(tiny_adapter[1]))
        assert await answer(right, version(tiny_adapter[1])) == standin_reply(name, QUESTION)
    finally:
        await wrong.close()
        await right.close()
        await standin.stop()


async def test_server_down_mid_stream_failure_and_slow_answers(vllm, server, tiny_adapter):
    vllm.fail_next_chat = "CUDA error: an illegal memory access was encountered"
    got = []
    with pytest.raises(ModelServerError, match=f"failed while answering with {BASE}: CUDA error"):
        async for piece in server.chat(None, QUESTION, GenerationOptions()):
            got.append(piece)
    assert len(got) == 1  # what streamed before the failure was delivered
    vllm.delay_s = 0.3
    with pytest.raises(ModelServerUnavailable, match=rf"did not finish answering with {BASE} within 0.5s"):
        await answer(server, None, GenerationOptions(timeout_s=0.5))
    vllm.delay_s = 0
    await vllm.go_down()
    with pytest.raises(ModelServerUnavailable, match=rf"vLLM at {vllm.url} is not reachable.*VLLM_BASE_URL"):
        await answer(server, None)
    with pytest.raises(ModelServerUnavailable, match="not reachable"):
        await server.publish(version(tiny_adapter[1]))
    assert not (await server.health()).ok
    await vllm.come_back()
    assert (await server.health()).ok


async def test_ask_in_discord_is_answered_by_the_guilds_vllm_adapter(tmp_path, tiny_adapter):
    standin = VllmStandIn(BASE)
    await standin.start()
    server = VllmServer(standin.url, adapter_dir=tmp_path / "vllm-adapters")

    def use_vllm(w):
        w.server = server

    try:
        async with start_world(tmp_path, before_start=use_vllm) as w:
            before = await w.ask(w.member, "Who won?")
            assert f"[{BASE}]" in before.text and "base model" in before.text
            base_dir, adapter = tiny_adapter
            v = await w.db.versions.create(w.guild.id, run_id=None, adapter_path=adapter, base_model=base_dir,
                                           metrics={}, n_examples=3)
            await w.db.versions.activate(w.guild.id, v.id)
            await w.bot.tracker.refresh()  # what the trainer's swap triggers (or the next poll)
            after = await w.ask(w.member, "Who won?")
            assert f"[guildtune-{w.guild.id}-v1]" in after.text and "model v1" in after.text
            assert list(standin.adapters) == [f"guildtune-{w.guild.id}-v1"]
            assert [a.version_id for a in await w.db.answers.list(w.guild.id)] == [v.id, None]
    finally:
        await server.close()
        await standin.stop()


async def test_settings_pick_vllm_with_its_key_and_folder_and_keep_the_key_out_of_child_processes(tmp_path, tiny_adapter):
    from guildtune.runtime import daemon_options, make_server
    from guildtune.settings import load_settings

    standin = VllmStandIn(BASE, api_key="sk-vllm-secret")
    await standin.start()
    settings = load_settings(_env_file=None, GUILDTUNE_SERVER="vllm", VLLM_BASE_URL=standin.url.removeprefix("http://"),
                             VLLM_API_KEY="sk-vllm-secret", GUILDTUNE_VLLM_ADAPTER_DIR=str(tmp_path / "shared"),
                             GUILDTUNE_TAG_PREFIX="gt", GUILDTUNE_DATA_DIR=str(tmp_path / "data"))
    server = await make_server(settings)
    try:
        assert isinstance(server, VllmServer) and (await server.health()).ok
        assert await server.publish(version(tiny_adapter[1])) == f"gt-{GUILD}-v1"
        assert (tmp_path / "shared" / f"gt-{GUILD}-v1" / "adapter_config.json").is_file()
    finally:
        await server.close()
        await standin.stop()
    env = daemon_options(settings).job.to_env()  # what a training job process is handed
    assert "sk-vllm-secret" not in repr(env) and "VLLM_API_KEY" not in env and "DISCORD_TOKEN" not in env
    assert "sk-vllm-secret" not in repr(settings)


def test_a_job_process_inherits_no_secret_from_the_environment():
    from trainer.launch import inherited_environment

    parent = {"PATH": "/usr/bin", "DISCORD_TOKEN": "discord-secret", "VLLM_API_KEY": "sk-vllm-secret",
              "GUILDTUNE_DB": "/data/g.db", "HF_HOME": "/cache"}
    assert inherited_environment(parent) == {"PATH": "/usr/bin", "HF_HOME": "/cache"}
