"""Start-up order of `guildtune bot`/`up` (guildtune.runtime.run_services): the bot is online in
Discord before the model server exists, /ask answers "warming up" (ephemeral) meanwhile, and
answers normally once the server is ready. Driven through the stand-in Discord and Ollama."""
import asyncio

import pytest

import guildtune.runtime as runtime
from tests.bot_harness import TOKEN, make_settings
from tests.discord_standin import FakeDiscord
from serving.protocol import ModelServerError
from tests.ollama_standin import standin_reply


async def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_bot_is_online_and_warming_up_until_the_model_server_is_ready(tmp_path, monkeypatch, standin):
    settings = make_settings(tmp_path, {"discord_token": TOKEN, "ollama_host": standin.url})
    release = asyncio.Event()
    made = []
    real_make_server = runtime.make_server

    async def slow_make_server(s):  # a first start converting the embedded GGUF
        await release.wait()
        server = await real_make_server(s)
        made.append(server)
        return server

    monkeypatch.setattr(runtime, "make_server", slow_make_server)
    async with FakeDiscord() as fake:
        fake.token = TOKEN  # the token this Discord accepts (start_bot sets it; run_services logs in itself)
        guild = fake.add_guild("Guild")
        channel = fake.add_channel(guild, "general")
        member = fake.add_member(guild, "alice")
        stop = asyncio.Event()
        services = asyncio.create_task(runtime.run_services(settings, bot=True, trainer=True, stop=stop))
        try:
            await wait_until(lambda: fake.gateway.live and fake.syncs, "the bot to connect and register commands")
            await asyncio.sleep(0.3)  # READY waits briefly for guilds
            early = await fake.slash(guild, channel, member, "ask", {"question": "When is raid night?"})
            assert early.ephemeral and "warming up" in early.text and "Try again in a minute" in early.text
            assert not made and not services.done()

            release.set()
            await wait_until(lambda: made, "the model server to be made")
            question = "When is raid night?"
            for _ in range(100):
                rec = await fake.slash(guild, channel, member, "ask", {"question": question}, timeout=15)
                await rec.settle(15)
                if "warming up" not in rec.text:
                    break
                await asyncio.sleep(0.05)
            assert standin_reply("gemma3:270m", [{"role": "user", "content": question}]) in rec.text
            assert not rec.ephemeral
        finally:
            stop.set()
            await asyncio.wait_for(services, 30)


async def test_a_model_server_that_cannot_be_made_stops_the_services_with_its_error(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, {"discord_token": TOKEN})

    async def broken_make_server(s):
        raise ModelServerError("the base model folder /nowhere does not exist")

    monkeypatch.setattr(runtime, "make_server", broken_make_server)
    async with FakeDiscord():
        with pytest.raises(ModelServerError, match="/nowhere"):
            await asyncio.wait_for(runtime.run_services(settings, bot=True, trainer=True, stop=asyncio.Event()), 30)
